//! `/metrics`: Prometheus (OpenMetrics) text.

use actix_web::{web, HttpResponse};
use middlewares::Viewer;

use crate::state::AppState;

#[utoipa::path(get, path = "/metrics", tag = "health",
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "Per-consumer counters, in-flight gauge, target and publish latency histograms, broker/store up, live replicas", content_type = "application/openmetrics-text")))]
pub async fn metrics(_: Viewer, state: web::Data<AppState>) -> HttpResponse {
    let store_up = state.store_up().await;
    state
        .metrics
        .set_live_replicas(state.registry.supervisor().live_replicas().get());
    let body = state.metrics.render(state.broker.is_up(), store_up);
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(body)
}

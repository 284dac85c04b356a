//! Liveness and readiness.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::state::AppState;

#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "The process is up", example = json!({"status": "ok"}))))]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Ready when every broker connection (publishing and consuming) is up and
/// the store answers a ping. A publish connection the broker merely blocks
/// (a resource alarm) is up: consumers keep draining, publishes answer 503.
/// `connections` names the node (`host:port` of `AMQP_URL`) each broker
/// connection is on, `null` while it reconnects.
#[utoipa::path(get, path = "/ready", tag = "health",
    responses(
        (status = 200, description = "Broker and store are up", example = json!({"status": "ready", "broker": "up", "store": "up", "connections": [{"name": "workerrmq-a1-publish", "node": "127.0.0.1:5672"}, {"name": "workerrmq-a1-consume", "node": "127.0.0.1:5672"}]})),
        (status = 503, description = "Something is down; the body names it", body = crate::error::ErrorBody)))]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let broker_up = state.broker.is_up();
    let store_up = state.store_up().await;
    let word = |up: bool| if up { "up" } else { "down" };
    let connections: Vec<_> = state
        .broker
        .connection_nodes()
        .into_iter()
        .map(|c| json!({ "name": c.name, "node": c.node }))
        .collect();
    if broker_up && store_up {
        return HttpResponse::Ok().json(json!({
            "status": "ready", "broker": "up", "store": "up", "connections": connections
        }));
    }
    let (code, message) = match (broker_up, store_up) {
        (false, false) => (
            "broker_unavailable",
            "the broker and the store are both unreachable",
        ),
        (false, true) => (
            "broker_unavailable",
            "a broker connection (publishing or consuming) is down; the gateway is reconnecting",
        ),
        _ => ("store_unavailable", "the store (MongoDB) does not answer"),
    };
    HttpResponse::ServiceUnavailable().json(json!({
        "error": code,
        "message": message,
        "status": "unavailable",
        "broker": word(broker_up),
        "store": word(store_up),
        "connections": connections,
    }))
}

//! `/getReplicas`: the live gateway replicas, from their heartbeats.

use actix_web::{web, HttpResponse};
use middlewares::Viewer;

use crate::error::ApiError;
use crate::state::AppState;

#[utoipa::path(get, path = "/getReplicas", tag = "replicas",
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "Every replica seen within the last 10 s, ordered by instance id", body = Vec<services::fleet::ReplicaView>)))]
pub async fn get_replicas(_: Viewer, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.registry.replicas().await?))
}

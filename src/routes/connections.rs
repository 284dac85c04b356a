//! `/getConnections`: the vhost's AMQP connections, from the management API.

use actix_web::{web, HttpResponse};
use middlewares::Viewer;

use crate::error::ApiError;
use crate::state::AppState;

#[utoipa::path(get, path = "/getConnections", tag = "connections",
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, body = Vec<services::ConnectionInfo>),
        (status = 503, description = "The management API is unreachable", body = crate::error::ErrorBody)))]
pub async fn get_connections(
    _: Viewer,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.management.connections().await?))
}

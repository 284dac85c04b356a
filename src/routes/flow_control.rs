//! `/pauseConsumer` and `/resumeConsumer`: stop a consumer taking
//! deliveries, leaving its messages waiting in the queue, and start it
//! again. The flag is stored, so every replica follows within seconds and
//! a restarted gateway keeps the consumer paused. Both are idempotent.

use actix_web::{web, HttpResponse};
use gateway::ConsumerId;
use middlewares::Admin;
use serde::{Deserialize, Serialize};
use services::FieldError;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::Json;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsumerFlowRequest {
    /// As `/createConsumer` answered it.
    #[schema(example = "0b6f6c4e-2f1a-4c55-9d0e-6f0d2b1f9a3e")]
    pub consumer_id: String,
}

impl ConsumerFlowRequest {
    fn consumer_id(&self) -> Result<ConsumerId, FieldError> {
        ConsumerId::parse(&self.consumer_id).ok_or_else(|| {
            FieldError::new(
                "consumerId",
                "not a consumer id; use the UUID /createConsumer answered with",
            )
        })
    }
}

/// The answer to `/pauseConsumer` and `/resumeConsumer`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerFlowChanged {
    #[schema(example = "Consumer has been paused.")]
    pub message: String,
    pub consumer_id: String,
}

fn not_found(id: &ConsumerId) -> ApiError {
    ApiError::NotFound(format!("no consumer with id `{id}`"))
}

#[utoipa::path(post, path = "/pauseConsumer", tag = "consumers", request_body = ConsumerFlowRequest,
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Paused, here once its in-flight deliveries are settled, on every replica within 5 s; kept across restarts. Pausing a paused consumer changes nothing", body = ConsumerFlowChanged),
        (status = 400, description = "`consumerId` is missing or not a consumer id", body = crate::error::ErrorBody),
        (status = 404, description = "No consumer with this id", body = crate::error::ErrorBody)))]
pub async fn pause_consumer(
    _: Admin,
    state: web::Data<AppState>,
    Json(body): Json<ConsumerFlowRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = body.consumer_id()?;
    if !state.registry.pause(&id).await? {
        return Err(not_found(&id));
    }
    Ok(HttpResponse::Ok().json(ConsumerFlowChanged {
        message: "Consumer has been paused.".into(),
        consumer_id: id.to_string(),
    }))
}

#[utoipa::path(post, path = "/resumeConsumer", tag = "consumers", request_body = ConsumerFlowRequest,
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Consuming again, here at once, on every replica within 5 s. Resuming a running consumer changes nothing", body = ConsumerFlowChanged),
        (status = 400, description = "`consumerId` is missing or not a consumer id", body = crate::error::ErrorBody),
        (status = 404, description = "No consumer with this id", body = crate::error::ErrorBody)))]
pub async fn resume_consumer(
    _: Admin,
    state: web::Data<AppState>,
    Json(body): Json<ConsumerFlowRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = body.consumer_id()?;
    if !state.registry.resume(&id).await? {
        return Err(not_found(&id));
    }
    Ok(HttpResponse::Ok().json(ConsumerFlowChanged {
        message: "Consumer has been resumed.".into(),
        consumer_id: id.to_string(),
    }))
}

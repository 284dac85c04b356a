//! `/getDeadLetters/{queueName}` (peek) and `/replayDeadLetters`.

use actix_web::{web, HttpResponse};
use gateway::{DeadLetter, QueueName};
use middlewares::{Admin, Viewer};
use serde::Deserialize;
use serde_json::{json, Value};
use services::Role;
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::extract::{Json, Query};
use crate::state::AppState;

const DEFAULT_PEEK: usize = 50;
const MAX_PEEK: usize = 1_000;
const DEFAULT_REPLAY: usize = 1_000;
const MAX_REPLAY: usize = 100_000;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PeekQuery {
    /// 1 to 1000, default 50.
    pub limit: Option<usize>,
}

/// The payload as JSON when it is JSON, else as text.
fn payload_value(letter: &DeadLetter) -> Value {
    serde_json::from_slice(&letter.payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&letter.payload).into_owned()))
}

#[utoipa::path(get, path = "/getDeadLetters/{queueName}", tag = "dead letters",
    security(("basic" = []), ("bearer" = [])),
    params(("queueName" = String, Path), PeekQuery),
    responses(
        (status = 200, description = "Oldest first; the messages stay in the dead-letter queue. `payload` only for the admin and publisher roles"),
        (status = 404, body = crate::openapi::ErrorBodySchema)))]
pub async fn get_dead_letters(
    caller: Viewer,
    state: web::Data<AppState>,
    path: web::Path<String>,
    Query(query): Query<PeekQuery>,
) -> Result<HttpResponse, ApiError> {
    let queue = QueueName::parse(path.into_inner())?;
    let limit = query.limit.unwrap_or(DEFAULT_PEEK);
    if !(1..=MAX_PEEK).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "query `limit`: between 1 and {MAX_PEEK}"
        )));
    }
    let letters = state.dead_letters.peek(&queue, limit).await?;
    // Payloads are what the messages are about (personal data, in the
    // seed's queues); viewers watch the gateway, so they get the metadata.
    let with_payload = caller.principal.role.allows(Role::Publisher);
    let rows: Vec<Value> = letters
        .iter()
        .map(|l| {
            let mut row = json!({
                "messageId": l.message_id,
                "attempts": l.attempts,
                "lastError": l.last_error,
                "deadLetteredAt": l.dead_lettered_at,
                "contentType": l.content_type,
            });
            if with_payload {
                row["payload"] = payload_value(l);
            }
            row
        })
        .collect();
    Ok(HttpResponse::Ok().json(rows))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayRequest {
    pub queue_name: String,
    /// Default 1000.
    pub limit: Option<usize>,
}

#[utoipa::path(post, path = "/replayDeadLetters", tag = "dead letters", request_body = ReplayRequest,
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Moved back to the main queue with attempts reset", example = json!({"replayed": 3})),
        (status = 404, body = crate::openapi::ErrorBodySchema)))]
pub async fn replay_dead_letters(
    _: Admin,
    state: web::Data<AppState>,
    Json(body): Json<ReplayRequest>,
) -> Result<HttpResponse, ApiError> {
    let queue = QueueName::parse(body.queue_name)?;
    let limit = body.limit.unwrap_or(DEFAULT_REPLAY);
    if !(1..=MAX_REPLAY).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "field `limit`: between 1 and {MAX_REPLAY}"
        )));
    }
    if state.topology.queue_counts(queue.as_str()).await?.is_none() {
        return Err(ApiError::NotFound(format!("no queue named `{queue}`")));
    }
    let replayed = state.dead_letters.replay(&queue, limit).await?;
    Ok(HttpResponse::Ok().json(json!({ "replayed": replayed })))
}

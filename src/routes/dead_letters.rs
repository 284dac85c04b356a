//! `/getDeadLetters/{queueName}` (peek) and `/replayDeadLetters`.

use actix_web::{web, HttpResponse};
use gateway::{DeadLetter, QueueName};
use middlewares::{Admin, Viewer};
use serde::Deserialize;
use serde_json::{json, Value};
use services::{FieldError, Role};
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
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// The payload as JSON when it is JSON, else as text.
fn payload_value(letter: &DeadLetter) -> Value {
    serde_json::from_slice(&letter.payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&letter.payload).into_owned()))
}

#[utoipa::path(get, path = "/getDeadLetters/{queueName}", tag = "dead letters",
    security(("basic" = []), ("bearer" = [])),
    params(("queueName" = String, Path, min_length = 1, max_length = 240, pattern = r"^(?!amq\.)(?!.*\.retry\.)(?!.*\.dlq$)[^\u0000-\u001f\u007f-\u009f]+$"), PeekQuery),
    responses(
        (status = 200, description = "Oldest first; the messages stay in the dead-letter queue. `payload` only for the admin and publisher roles"),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_dead_letters(
    caller: Viewer,
    state: web::Data<AppState>,
    path: web::Path<String>,
    Query(query): Query<PeekQuery>,
) -> Result<HttpResponse, ApiError> {
    let queue = QueueName::parse(path.into_inner())?;
    let limit = query.limit.unwrap_or(DEFAULT_PEEK);
    if !(1..=MAX_PEEK).contains(&limit) {
        return Err(FieldError::new("limit", format!("between 1 and {MAX_PEEK}")).into());
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
    #[schema(
        min_length = 1,
        max_length = 240,
        pattern = r"^(?!amq\.)(?!.*\.retry\.)(?!.*\.dlq$)[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub queue_name: String,
    /// 1 to 100000, default 1000.
    #[schema(minimum = 1, maximum = 100000)]
    pub limit: Option<usize>,
}

#[utoipa::path(post, path = "/replayDeadLetters", tag = "dead letters", request_body = ReplayRequest,
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Moved back to the main queue with attempts reset", example = json!({"replayed": 3})),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn replay_dead_letters(
    _: Admin,
    state: web::Data<AppState>,
    Json(body): Json<ReplayRequest>,
) -> Result<HttpResponse, ApiError> {
    let queue = QueueName::parse(body.queue_name)?;
    let limit = body.limit.unwrap_or(DEFAULT_REPLAY);
    if !(1..=MAX_REPLAY).contains(&limit) {
        return Err(FieldError::new("limit", format!("between 1 and {MAX_REPLAY}")).into());
    }
    if state.topology.queue_counts(queue.as_str()).await?.is_none() {
        return Err(ApiError::NotFound(format!("no queue named `{queue}`")));
    }
    let replayed = state.dead_letters.replay(&queue, limit).await?;
    Ok(HttpResponse::Ok().json(json!({ "replayed": replayed })))
}

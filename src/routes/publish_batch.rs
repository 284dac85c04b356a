//! `/messagePublishBatch`: up to 1,000 messages in one request, each with
//! the fields of `/messagePublish` and each answered on its own, in the
//! order given. They are published pipelined on one channel, so the
//! messages of a queue are enqueued in that order (`crate::publishing`,
//! `gateway::Publisher::publish_batch`). The body has a limit of its own,
//! `MAX_BATCH_BODY_BYTES`.

use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use gateway::Traceparent;
use middlewares::Publisher;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use services::FieldError;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{parse_part, Json};
use crate::publishing::{
    caller_trace, Answer, ParsedPublish, PublishLimits, PublishRequest, Publishing, Refusal,
};
use crate::state::AppState;

/// Messages one request may carry.
const MAX_MESSAGES: usize = 1_000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBatchRequest {
    /// 1 to 1,000 messages, each with the fields of `/messagePublish`. Each
    /// is read on its own: one that does not fit is answered 400 in its
    /// result, and the others are published.
    #[schema(value_type = Vec<PublishRequest>, min_items = 1, max_items = 1000)]
    messages: Vec<Box<RawValue>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PublishBatchAnswer {
    /// One per message, in the order sent.
    results: Vec<MessageResult>,
    /// Messages the broker confirmed (202).
    accepted: usize,
    /// The others.
    rejected: usize,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageResult {
    /// The message's place in `messages`, from 0.
    index: usize,
    /// The id it was published with; null when it was refused before it had
    /// one.
    message_id: Option<String>,
    /// 202 once the broker confirmed it; else what `/messagePublish` would
    /// have answered: 400 (the field named, as `messages[3].message`), 403 a
    /// built-in queue without the admin role, 404 nothing would receive it,
    /// 503 the broker is unavailable.
    status: u16,
    /// Why it was not published; only when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody>,
}

impl MessageResult {
    fn new(index: usize, answer: Answer) -> Self {
        let refused = match answer.outcome {
            Ok(()) => None,
            Err(Refusal::Field(err)) => {
                Some(ApiError::from(err.within(&format!("messages[{index}]"))))
            }
            Err(Refusal::Api(err)) => Some(err),
        };
        Self {
            index,
            message_id: answer.message_id,
            status: refused
                .as_ref()
                .map_or(202, |err| err.status_code().as_u16()),
            error: refused.as_ref().map(ApiError::body),
        }
    }
}

#[utoipa::path(post, path = "/messagePublishBatch", tag = "messages", request_body = PublishBatchRequest,
    params(("traceparent" = Option<String>, Header,
        description = "W3C Trace Context of the caller's span, carried by every message of the batch (see /messagePublish). Without it each message starts a trace of its own.",
        min_length = 55, pattern = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.*)?$",
        example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")),
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Every message answered in its result, in the order sent", body = PublishBatchAnswer,
            example = json!({"results": [
                {"index": 0, "messageId": "order-1", "status": 202},
                {"index": 1, "messageId": null, "status": 400, "error": {"error": "bad_request", "message": "field `messages[1].message`: required, any JSON value but null"}}],
                "accepted": 1, "rejected": 1})),
        (status = 400, description = "Not an object with `messages`, none or over 1,000 messages, or a malformed traceparent", body = crate::error::ErrorBody),
        (status = 413, description = "The body is larger than MAX_BATCH_BODY_BYTES", body = crate::error::ErrorBody)))]
pub async fn message_publish_batch(
    caller: Publisher,
    state: web::Data<AppState>,
    req: HttpRequest,
    Json(body): Json<PublishBatchRequest>,
) -> Result<HttpResponse, ApiError> {
    let count = body.messages.len();
    if !(1..=MAX_MESSAGES).contains(&count) {
        return Err(FieldError::new(
            "messages",
            format!("1 to {MAX_MESSAGES} messages a request; this one has {count}"),
        )
        .into());
    }
    let trace = caller_trace(&req)?;
    let limits = PublishLimits::of(&state);
    let parsed = body
        .messages
        .iter()
        .map(|raw| {
            let trace = trace.unwrap_or_else(Traceparent::start);
            parse_part::<PublishRequest>(raw)
                .and_then(|message| ParsedPublish::parse(message, trace, &limits))
        })
        .collect();
    let answers = Publishing::new(&state, caller.principal.role)
        .publish_each(parsed)
        .await;
    let results: Vec<MessageResult> = answers
        .into_iter()
        .enumerate()
        .map(|(index, answer)| MessageResult::new(index, answer))
        .collect();
    let accepted = results.iter().filter(|r| r.error.is_none()).count();
    Ok(HttpResponse::Ok().json(PublishBatchAnswer {
        rejected: results.len() - accepted,
        accepted,
        results,
    }))
}

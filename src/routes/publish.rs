//! `/messagePublish`: a message onto a queue (default exchange) or an
//! exchange, answered 202 only after the broker confirmed it. Parsing,
//! who may publish where and the broker's answer are `crate::publishing`'s,
//! shared with `/messagePublishBatch`.

use actix_web::{web, HttpRequest, HttpResponse};
use gateway::Traceparent;
use middlewares::Publisher;
use serde_json::json;

use crate::error::ApiError;
use crate::extract::Json;
use crate::publishing::{caller_trace, ParsedPublish, PublishLimits, PublishRequest, Publishing};
use crate::state::AppState;

#[utoipa::path(post, path = "/messagePublish", tag = "messages", request_body = PublishRequest,
    params(("traceparent" = Option<String>, Header,
        description = "W3C Trace Context of the caller's span. Carried in the message's `traceparent` AMQP header; every call to a target sends the same trace id with a span id of its own. Without it the gateway starts a trace. Version 00 is `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lower-case, ids not all zeros.",
        min_length = 55, pattern = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.*)?$",
        example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")),
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 202, description = "The broker confirmed the message", example = json!({"message": "Message has been published successfully.", "messageId": "3f1c…"})),
        (status = 400, description = "Invalid destination, message, id, headers (over MAX_HEADER_BYTES encoded) or traceparent", body = crate::error::ErrorBody),
        (status = 403, description = "A built-in queue, and the caller is not an admin", body = crate::error::ErrorBody),
        (status = 404, description = "No queue would receive it", body = crate::error::ErrorBody),
        (status = 503, description = "Broker down", body = crate::error::ErrorBody)))]
pub async fn message_publish(
    caller: Publisher,
    state: web::Data<AppState>,
    req: HttpRequest,
    Json(body): Json<PublishRequest>,
) -> Result<HttpResponse, ApiError> {
    let trace = caller_trace(&req)?.unwrap_or_else(Traceparent::start);
    let message = ParsedPublish::parse(body, trace, &PublishLimits::of(&state))?;
    let answer = Publishing::new(&state, caller.principal.role)
        .publish_each(vec![Ok(message)])
        .await
        .pop()
        .ok_or_else(|| ApiError::Internal("a publish of one message had no answer".into()))?;
    answer.outcome?;
    Ok(HttpResponse::Accepted().json(json!({
        "message": "Message has been published successfully.",
        "messageId": answer.message_id,
    })))
}

//! `/getAttempts` (a filtered, paged list of attempt records) and
//! `/getMessageHistory/{queueName}/{messageId}` (one message's timeline).
//! Viewers get every field but the answer's body.

use actix_web::{web, HttpResponse};
use gateway::{AttemptOutcome, ErrorKind, QueueName};
use middlewares::Viewer;
use serde::Deserialize;
use serde_json::json;
use services::attempts::query::{parse_time, state_of, DEFAULT_LIMIT, MAX_LIMIT};
use services::attempts::{AttemptFilter, FilterError, PageCursor, StatusFilter};
use services::{FieldError, Role};
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::extract::Query;
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AttemptsQuery {
    /// One consumer's attempts.
    pub consumer_id: Option<String>,
    /// One queue's.
    pub queue_name: Option<String>,
    /// One message's.
    pub message_id: Option<String>,
    /// `delivered`, `retry_scheduled`, `dead_lettered` or `handed_back`.
    pub outcome: Option<String>,
    /// A status code (`503`) or a class (`5xx`, `4xx`).
    pub status: Option<String>,
    /// One of the error kinds (`timeout`, `connect`, `http_status`, …).
    pub error_kind: Option<String>,
    /// Started at or after (RFC 3339).
    pub since: Option<String>,
    /// Started before (RFC 3339).
    pub until: Option<String>,
    /// 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

impl AttemptsQuery {
    fn parse(self) -> Result<(AttemptFilter, Option<PageCursor>, u32), FilterError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(FilterError {
                parameter: "limit",
                problem: format!("between 1 and {MAX_LIMIT}"),
            });
        }
        let outcome = self
            .outcome
            .map(|raw| {
                AttemptOutcome::parse(raw.trim()).ok_or_else(|| FilterError {
                    parameter: "outcome",
                    problem: format!(
                        "one of {}",
                        AttemptOutcome::ALL.map(AttemptOutcome::as_str).join(", ")
                    ),
                })
            })
            .transpose()?;
        let error_kind = self
            .error_kind
            .map(|raw| {
                ErrorKind::parse(raw.trim()).ok_or_else(|| FilterError {
                    parameter: "errorKind",
                    problem: format!(
                        "one of {}",
                        ErrorKind::ALL.map(ErrorKind::as_str).join(", ")
                    ),
                })
            })
            .transpose()?;
        let filter = AttemptFilter {
            consumer_id: self.consumer_id,
            queue_name: self.queue_name,
            message_id: self.message_id,
            outcome,
            status: self
                .status
                .as_deref()
                .map(StatusFilter::parse)
                .transpose()?,
            error_kind,
            since: self
                .since
                .as_deref()
                .map(|raw| parse_time("since", raw))
                .transpose()?,
            until: self
                .until
                .as_deref()
                .map(|raw| parse_time("until", raw))
                .transpose()?,
        };
        let cursor = self.cursor.as_deref().map(PageCursor::parse).transpose()?;
        Ok((filter, cursor, limit))
    }
}

fn field_error(err: FilterError) -> ApiError {
    FieldError::new(err.parameter, err.problem).into()
}

#[utoipa::path(get, path = "/getAttempts", tag = "delivery history",
    security(("basic" = []), ("bearer" = [])),
    params(AttemptsQuery),
    responses(
        (status = 200, description = "Newest first. `nextCursor` (null on the last page) gives the next page; following it never returns a record twice nor skips one. `response.body` only for the admin and publisher roles", example = json!({"attempts": [{"attemptId": "0193…", "consumerId": "…", "queueName": "orders", "messageId": "order-1234", "attempt": 1, "trigger": "delivery", "replica": "a1b2c3d4", "startedAt": "2026-12-07T10:00:00.123Z", "durationMs": 12, "outcome": "retry_scheduled", "request": {"method": "POST", "url": "https://hooks.example.com/in?token=***", "headers": ["content-type", "webhook-id"], "bodyBytes": 17, "bodySha256": "…"}, "response": {"status": 503, "headers": {"content-type": "text/plain"}, "body": "busy", "bodyTruncated": false}, "error": {"kind": "http_status", "message": "target answered 503 Service Unavailable"}, "traceId": "4bf92f3577b34da6a3ce929d0e0e4736"}], "nextCursor": null})),
        (status = 400, description = "A parameter is out of bounds or malformed (named)", body = crate::error::ErrorBody)))]
pub async fn get_attempts(
    caller: Viewer,
    state: web::Data<AppState>,
    Query(query): Query<AttemptsQuery>,
) -> Result<HttpResponse, ApiError> {
    let (filter, cursor, limit) = query.parse().map_err(field_error)?;
    let page = state.attempts.page(&filter, cursor.as_ref(), limit).await?;
    let with_body = caller.principal.role.allows(Role::Publisher);
    let attempts: Vec<_> = page.attempts.iter().map(|a| a.to_json(with_body)).collect();
    Ok(HttpResponse::Ok().json(json!({
        "attempts": attempts,
        "nextCursor": page.next.map(|c| c.encode()),
    })))
}

#[utoipa::path(get, path = "/getMessageHistory/{queueName}/{messageId}", tag = "delivery history",
    security(("basic" = []), ("bearer" = [])),
    params(
        ("queueName" = String, Path, min_length = 1, max_length = 240, pattern = r"^(?!amq\.)(?!.*\.retry\.)(?!.*\.dlq$)[^\u0000-\u001f\u007f-\u009f]+$"),
        ("messageId" = String, Path, min_length = 1, max_length = 255)),
    responses(
        (status = 200, description = "Every attempt at the message, oldest first, across retries, replicas and replays. `state` by the last one: `delivered`, `retrying`, `dead_lettered`, `in_flight` (handed back to its queue) or `unknown` (no attempt recorded)", example = json!({"queueName": "orders", "messageId": "order-1234", "state": "delivered", "attempts": []})),
        (status = 404, description = "No queue by that name", body = crate::error::ErrorBody)))]
pub async fn get_message_history(
    caller: Viewer,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (queue, message_id) = path.into_inner();
    let queue = QueueName::parse(queue)?;
    if message_id.is_empty() || message_id.len() > 255 {
        return Err(FieldError::new("messageId", "1 to 255 bytes").into());
    }
    if state.topology.queue_counts(queue.as_str()).await?.is_none() {
        return Err(ApiError::NotFound(format!("no queue named `{queue}`")));
    }
    let timeline = state.attempts.timeline(queue.as_str(), &message_id).await?;
    let with_body = caller.principal.role.allows(Role::Publisher);
    let attempts: Vec<_> = timeline.iter().map(|a| a.to_json(with_body)).collect();
    Ok(HttpResponse::Ok().json(json!({
        "queueName": queue.as_str(),
        "messageId": message_id,
        "state": state_of(&timeline),
        "attempts": attempts,
    })))
}

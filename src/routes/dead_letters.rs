//! `/getDeadLetters/{queueName}` (peek) and `/replayDeadLetters`, with
//! the replay's filter parsed into `gateway::ReplayFilter` before anything
//! moves.

use actix_web::{web, HttpResponse};
use gateway::{
    DeadLetter, ErrorKind, QueueName, ReplayFilter, ReplayFilterError, ReplayFilterInput,
    ReplayMode,
};
use middlewares::{Admin, Viewer};
use serde::{Deserialize, Serialize};
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
                "lastErrorKind": l.last_error_kind,
                "lastStatus": l.last_status,
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
    /// How many to replay (on a dry run, to count): 1 to 100000, default 1000.
    #[schema(minimum = 1, maximum = 100000)]
    pub limit: Option<usize>,
    /// Which dead letters to replay; every one when absent.
    #[schema(value_type = Option<ReplayFilterRequest>, nullable)]
    pub filter: Option<ReplayFilterRequest>,
    /// Count the matching dead letters and move none.
    #[serde(default)]
    pub dry_run: bool,
}

/// Every condition given must hold; none given takes every dead letter. A
/// dead letter the broker put there itself (expired or dropped from the
/// main queue) has no time, status or kind: only a filter without those
/// takes it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayFilterRequest {
    /// RFC 3339: dead-lettered at or after it.
    #[schema(format = DateTime, example = "2026-12-07T10:00:00Z")]
    pub since: Option<String>,
    /// RFC 3339: dead-lettered before it; later than `since`.
    #[schema(format = DateTime, example = "2026-12-07T11:00:00Z")]
    pub until: Option<String>,
    /// The target's status at the last failure: a code (`503`) or a class (`5xx`).
    #[schema(example = "5xx")]
    pub status: Option<String>,
    /// The last failure's kind.
    #[schema(value_type = Option<ErrorKindName>)]
    pub error_kind: Option<String>,
    /// 1 to 1000 message ids, each 1 to 255 bytes.
    #[schema(value_type = Option<Vec<MessageIdText>>, min_items = 1, max_items = 1000)]
    pub message_ids: Option<Vec<String>>,
}

/// A message id as publishers give it: 1 to 255 bytes.
pub struct MessageIdText;

impl utoipa::PartialSchema for MessageIdText {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(1))
            .max_length(Some(255))
            .into()
    }
}

impl ToSchema for MessageIdText {}

/// The names of `gateway::ErrorKind`, as the API writes them; the list is
/// the gateway's own, so the spec cannot fall behind it.
pub struct ErrorKindName;

impl utoipa::PartialSchema for ErrorKindName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(ErrorKind::ALL.map(ErrorKind::as_str)))
            .into()
    }
}

impl ToSchema for ErrorKindName {}

/// What a replay did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayAnswer {
    /// Dead letters the filter took, up to `limit`.
    pub matched: usize,
    /// Of those, how many are now in the main queue; 0 on a dry run.
    pub replayed: usize,
}

impl ReplayFilterRequest {
    fn parse(self) -> Result<ReplayFilter, FieldError> {
        let input = ReplayFilterInput {
            since: self.since,
            until: self.until,
            status: self.status,
            error_kind: self.error_kind,
            message_ids: self.message_ids,
        };
        ReplayFilter::parse(input).map_err(|err| {
            let field = match err {
                ReplayFilterError::Since => "since",
                ReplayFilterError::Until | ReplayFilterError::UntilNotAfterSince => "until",
                ReplayFilterError::Status(_) => "status",
                ReplayFilterError::ErrorKind => "errorKind",
                ReplayFilterError::MessageIdCount(_) | ReplayFilterError::MessageId(_) => {
                    "messageIds"
                }
            };
            FieldError::new(field, err.to_string()).within("filter")
        })
    }
}

#[utoipa::path(post, path = "/replayDeadLetters", tag = "dead letters", request_body = ReplayRequest,
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The matching dead letters, oldest first and up to `limit`, are back in the main queue with attempts reset, each once, even with replays of the same queue running at once on other replicas; their next attempt is recorded with trigger `replay`. The others stay in the dead-letter queue, in their order (a quorum dead-letter queue may reorder them; none is lost or doubled). A dry run moves nothing and answers `replayed: 0`", body = ReplayAnswer, example = json!({"matched": 3, "replayed": 3})),
        (status = 400, description = "A field is out of bounds or malformed (named: `limit`, `filter.since`, `filter.until`, `filter.status`, `filter.errorKind`, `filter.messageIds`)", body = crate::error::ErrorBody),
        (status = 404, description = "No queue by that name, or it has no dead-letter queue", body = crate::error::ErrorBody)))]
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
    let filter = match body.filter {
        Some(filter) => filter.parse()?,
        None => ReplayFilter::everything(),
    };
    let mode = if body.dry_run {
        ReplayMode::DryRun
    } else {
        ReplayMode::Move
    };
    if state.topology.queue_counts(queue.as_str()).await?.is_none() {
        return Err(ApiError::NotFound(format!("no queue named `{queue}`")));
    }
    let report = state
        .dead_letters
        .replay(&queue, filter, limit, mode)
        .await?;
    Ok(HttpResponse::Ok().json(ReplayAnswer {
        matched: report.matched,
        replayed: report.replayed,
    }))
}

//! `/createQueue`, `/getQueues`, `/getQueue/{queueName}`, `/deleteQueue`.

use actix_web::{web, HttpResponse};
use gateway::{DeclareOutcome, QueueName, QueueSpec, QueueType};
use middlewares::{Admin, Viewer};
use serde::Deserialize;
use serde_json::json;
use services::FieldError;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::Json;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateQueueRequest {
    /// 1 to 240 bytes (room for the companions' suffixes); not
    /// `amq.`-prefixed, not ending in `.dlq`, no `.retry.`, no control
    /// characters.
    #[schema(
        min_length = 1,
        max_length = 240,
        pattern = r"^(?!amq\.)(?!.*\.retry\.)(?!.*\.dlq$)[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub queue_name: String,
    /// Default true.
    pub durable: Option<bool>,
    /// `classic` or `quorum` (needs `durable`); `DEFAULT_QUEUE_TYPE`
    /// (`classic` unless set) when left out. A quorum queue's companions
    /// (`.dlq`, delay queues) are quorum queues too.
    pub queue_type: Option<QueueTypeName>,
    /// 0 to 4294967295.
    #[schema(format = Int64, minimum = 0, maximum = 4294967295_u64)]
    pub message_ttl_ms: Option<u32>,
    /// 1 to 4294967295.
    #[schema(format = Int64, minimum = 1, maximum = 4294967295_u64)]
    pub max_length: Option<u32>,
    /// Default true: also create `<queue>.dlq` and route expired or
    /// overflowing messages there.
    pub dead_letter: Option<bool>,
    /// Default false: the broker delivers to one consumer at a time, and
    /// another takes over when it goes (`x-single-active-consumer`). What
    /// an ordered consumer needs.
    pub single_active_consumer: Option<bool>,
}

/// The queue types a caller may ask for.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueueTypeName {
    Classic,
    Quorum,
}

impl From<QueueTypeName> for QueueType {
    fn from(name: QueueTypeName) -> Self {
        match name {
            QueueTypeName::Classic => QueueType::Classic,
            QueueTypeName::Quorum => QueueType::Quorum,
        }
    }
}

impl CreateQueueRequest {
    /// The spec to declare; `default_type` (`DEFAULT_QUEUE_TYPE`) when the
    /// request names no type.
    fn into_spec(self, default_type: QueueType) -> Result<QueueSpec, ApiError> {
        let req = self;
        let spec = QueueSpec {
            name: QueueName::parse(req.queue_name)?,
            durable: req.durable.unwrap_or(true),
            queue_type: req.queue_type.map_or(default_type, QueueType::from),
            message_ttl_ms: req.message_ttl_ms,
            max_length: req.max_length,
            dead_letter: req.dead_letter.unwrap_or(true),
            single_active_consumer: req.single_active_consumer.unwrap_or(false),
        };
        if spec.queue_type == QueueType::Quorum && !spec.durable {
            return Err(FieldError::new(
                "durable",
                "quorum queues (`queueType`, or DEFAULT_QUEUE_TYPE when it is left out) are always durable; drop `durable: false`",
            )
            .into());
        }
        if spec.max_length == Some(0) {
            return Err(FieldError::new("maxLength", "must be at least 1").into());
        }
        Ok(spec)
    }
}

#[utoipa::path(post, path = "/createQueue", tag = "queues", request_body = CreateQueueRequest,
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 201, description = "Created", example = json!({"message": "Queue has been created successfully.", "queueName": "orders"})),
        (status = 200, description = "Already there with the same arguments; nothing changed"),
        (status = 400, description = "Invalid name or arguments", body = crate::error::ErrorBody),
        (status = 409, description = "Exists with other arguments", body = crate::error::ErrorBody)))]
pub async fn create_queue(
    _: Admin,
    state: web::Data<AppState>,
    Json(body): Json<CreateQueueRequest>,
) -> Result<HttpResponse, ApiError> {
    let spec = body.into_spec(state.settings.default_queue_type)?;
    let outcome = state.topology.declare_queue(&spec).await?;
    let body = json!({
        "message": "Queue has been created successfully.",
        "queueName": spec.name,
    });
    Ok(match outcome {
        DeclareOutcome::Created => HttpResponse::Created().json(body),
        DeclareOutcome::AlreadyExisted => HttpResponse::Ok().json(body),
    })
}

#[utoipa::path(get, path = "/getQueues", tag = "queues",
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "The vhost's queues, companions folded into their main queue", body = Vec<services::QueueRow>)))]
pub async fn get_queues(_: Viewer, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.management.queues().await?))
}

#[utoipa::path(get, path = "/getQueue/{queueName}", tag = "queues",
    security(("basic" = []), ("bearer" = [])),
    params(("queueName" = String, Path, min_length = 1, max_length = 240, pattern = r"^(?!amq\.)(?!.*\.retry\.)(?!.*\.dlq$)[^\u0000-\u001f\u007f-\u009f]+$")),
    responses(
        (status = 200, body = services::QueueRow),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_queue(
    _: Viewer,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = QueueName::parse(path.into_inner())?;
    state
        .management
        .queues()
        .await?
        .into_iter()
        .find(|row| row.queue_name == name.as_str())
        .map(|row| HttpResponse::Ok().json(row))
        .ok_or_else(|| ApiError::NotFound(format!("no queue named `{name}`")))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteQueueRequest {
    #[schema(
        min_length = 1,
        max_length = 240,
        pattern = r"^(?!amq\.)(?!.*\.retry\.)(?!.*\.dlq$)[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub queue_name: String,
    /// Refuse while the queue or its dead letters hold messages.
    pub if_empty: Option<bool>,
}

#[utoipa::path(post, path = "/deleteQueue", tag = "queues", request_body = DeleteQueueRequest,
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Deleted with its dead-letter companion"),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "Consumers are registered on it, or `ifEmpty` and it holds messages", body = crate::error::ErrorBody)))]
pub async fn delete_queue(
    _: Admin,
    state: web::Data<AppState>,
    Json(body): Json<DeleteQueueRequest>,
) -> Result<HttpResponse, ApiError> {
    let name = QueueName::parse(body.queue_name)?;
    let registered = state.store.count_consumers_on(name.as_str()).await?;
    if registered > 0 {
        return Err(ApiError::Conflict(format!(
            "{registered} consumer(s) are registered on `{name}`; delete them first (POST /deleteConsumer with queueName)"
        )));
    }
    let if_empty = body.if_empty.unwrap_or(false);
    if if_empty {
        // The broker checks the queue and its dead letters; messages waiting
        // in delay queues would return to a deleted queue and be dropped.
        let retrying = state
            .management
            .queues()
            .await?
            .into_iter()
            .find(|row| row.queue_name == name.as_str())
            .map_or(0, |row| row.retrying_messages);
        if retrying > 0 {
            return Err(ApiError::Conflict(format!(
                "`{name}` has {retrying} message(s) waiting for a retry"
            )));
        }
    }
    state.topology.delete_queue(&name, if_empty).await?;
    Ok(HttpResponse::Ok().json(json!({
        "message": "Queue has been deleted successfully.",
        "queueName": name,
    })))
}

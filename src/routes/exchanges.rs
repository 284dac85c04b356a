//! `/createExchange` and `/bindQueue`.

use actix_web::{web, HttpResponse};
use gateway::{DeclareOutcome, ExchangeKind, ExchangeName, ExchangeSpec, QueueName, RoutingKey};
use middlewares::Admin;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::Json;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateExchangeRequest {
    /// 1 to 255 bytes; not `amq.`-prefixed, no control characters.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^(?!amq\.)[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub exchange_name: String,
    #[serde(rename = "type")]
    pub kind: ExchangeType,
    /// Default true.
    pub durable: Option<bool>,
}

/// The exchange types a caller may ask for.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl From<ExchangeType> for ExchangeKind {
    fn from(kind: ExchangeType) -> Self {
        match kind {
            ExchangeType::Direct => ExchangeKind::Direct,
            ExchangeType::Fanout => ExchangeKind::Fanout,
            ExchangeType::Topic => ExchangeKind::Topic,
            ExchangeType::Headers => ExchangeKind::Headers,
        }
    }
}

#[utoipa::path(post, path = "/createExchange", tag = "exchanges", request_body = CreateExchangeRequest,
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 201, description = "Created"),
        (status = 200, description = "Already there with the same arguments"),
        (status = 409, description = "Exists with another type or durability", body = crate::error::ErrorBody)))]
pub async fn create_exchange(
    _: Admin,
    state: web::Data<AppState>,
    Json(body): Json<CreateExchangeRequest>,
) -> Result<HttpResponse, ApiError> {
    let spec = ExchangeSpec {
        name: ExchangeName::parse(body.exchange_name)?,
        kind: body.kind.into(),
        durable: body.durable.unwrap_or(true),
    };
    let outcome = state.topology.declare_exchange(&spec).await?;
    let body = json!({
        "message": "Exchange has been created successfully.",
        "exchangeName": spec.name,
    });
    Ok(match outcome {
        DeclareOutcome::Created => HttpResponse::Created().json(body),
        DeclareOutcome::AlreadyExisted => HttpResponse::Ok().json(body),
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BindQueueRequest {
    #[schema(
        min_length = 1,
        max_length = 240,
        pattern = r"^(?!amq\.)(?!.*\.retry\.)(?!.*\.dlq$)[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub queue_name: String,
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^(?!amq\.)[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub exchange_name: String,
    /// Default "". At most 255 bytes.
    #[schema(max_length = 255)]
    pub routing_key: Option<String>,
}

#[utoipa::path(post, path = "/bindQueue", tag = "exchanges", request_body = BindQueueRequest,
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 201, description = "Bound"),
        (status = 404, description = "No such queue or exchange", body = crate::error::ErrorBody)))]
pub async fn bind_queue(
    _: Admin,
    state: web::Data<AppState>,
    Json(body): Json<BindQueueRequest>,
) -> Result<HttpResponse, ApiError> {
    let queue = QueueName::parse(body.queue_name)?;
    let exchange = ExchangeName::parse(body.exchange_name)?;
    let key = RoutingKey::parse(body.routing_key.unwrap_or_default())?;
    state.topology.bind_queue(&queue, &exchange, &key).await?;
    Ok(HttpResponse::Created().json(json!({
        "message": "Queue has been bound successfully.",
        "queueName": queue,
        "exchangeName": exchange,
        "routingKey": key,
    })))
}

//! `/messagePublish`: a message onto a queue (default exchange) or an
//! exchange, answered 202 only after the broker confirmed it.

use actix_web::{web, HttpResponse};
use gateway::{
    AMQPValue, BasicProperties, ExchangeName, FieldTable, OutgoingMessage, PublishOutcome,
    QueueName, RoutingKey,
};
use middlewares::Publisher;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::Json;
use crate::state::AppState;

/// Header names the gateway sets itself on forwarded and retried messages.
const RESERVED_HEADER_PREFIX: &str = "x-workerrmq-";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishRequest {
    /// Publish straight to this queue, or
    pub queue_name: Option<String>,
    /// to this exchange, with `routingKey`.
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
    /// Any JSON; it is published serialized, as `application/json`.
    #[schema(value_type = Object)]
    pub message: Option<Value>,
    /// Default: a new UUID. Becomes `webhook-id` when forwarded.
    pub message_id: Option<String>,
    /// String, number or boolean values.
    #[schema(value_type = Option<Object>)]
    pub headers: Option<Map<String, Value>>,
    /// Default true (delivery mode 2).
    pub persistent: Option<bool>,
}

enum Destination {
    Queue(QueueName),
    Exchange(ExchangeName, RoutingKey),
}

struct ParsedPublish {
    destination: Destination,
    payload: Vec<u8>,
    message_id: String,
    headers: FieldTable,
    persistent: bool,
}

impl TryFrom<PublishRequest> for ParsedPublish {
    type Error = ApiError;

    fn try_from(req: PublishRequest) -> Result<Self, ApiError> {
        let destination = match (req.queue_name, req.exchange) {
            (Some(queue), None) => {
                if req.routing_key.is_some() {
                    return Err(ApiError::BadRequest(
                        "field `routingKey`: only with `exchange`; a queue is addressed by `queueName` alone".into(),
                    ));
                }
                Destination::Queue(QueueName::parse(queue)?)
            }
            (None, Some(exchange)) => Destination::Exchange(
                ExchangeName::parse(exchange)?,
                RoutingKey::parse(req.routing_key.unwrap_or_default())?,
            ),
            (Some(_), Some(_)) => {
                return Err(ApiError::BadRequest(
                    "give either `queueName` or `exchange`, not both".into(),
                ))
            }
            (None, None) => {
                return Err(ApiError::BadRequest(
                    "give `queueName`, or `exchange` with an optional `routingKey`".into(),
                ))
            }
        };
        let message = match req.message {
            Some(Value::Null) | None => {
                return Err(ApiError::BadRequest(
                    "field `message`: required, any JSON value but null".into(),
                ))
            }
            Some(message) => message,
        };
        let payload = serde_json::to_vec(&message)
            .map_err(|e| ApiError::BadRequest(format!("field `message`: {e}")))?;
        let message_id = match req.message_id {
            Some(id) if id.is_empty() || id.len() > 255 => {
                return Err(ApiError::BadRequest(
                    "field `messageId`: 1 to 255 bytes".into(),
                ))
            }
            Some(id) => id,
            None => uuid::Uuid::new_v4().to_string(),
        };
        Ok(ParsedPublish {
            destination,
            payload,
            message_id,
            headers: headers_table(req.headers.unwrap_or_default())?,
            persistent: req.persistent.unwrap_or(true),
        })
    }
}

fn headers_table(headers: Map<String, Value>) -> Result<FieldTable, ApiError> {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        if name.is_empty() || name.len() > 255 {
            return Err(ApiError::BadRequest(format!(
                "field `headers`: header names are 1 to 255 bytes, `{name}` is not"
            )));
        }
        if name
            .to_ascii_lowercase()
            .starts_with(RESERVED_HEADER_PREFIX)
        {
            return Err(ApiError::BadRequest(format!(
                "field `headers.{name}`: the `{RESERVED_HEADER_PREFIX}` prefix is reserved for the gateway"
            )));
        }
        let amqp = match &value {
            Value::String(s) => AMQPValue::LongString(s.as_bytes().to_vec().into()),
            Value::Bool(b) => AMQPValue::Boolean(*b),
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => AMQPValue::LongLongInt(i),
                (None, Some(f)) => AMQPValue::Double(f),
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "field `headers.{name}`: number out of range"
                    )))
                }
            },
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "field `headers.{name}`: must be a string, number or boolean"
                )))
            }
        };
        table.insert(name.into(), amqp);
    }
    Ok(table)
}

#[utoipa::path(post, path = "/messagePublish", tag = "messages", request_body = PublishRequest,
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 202, description = "The broker confirmed the message", example = json!({"message": "Message has been published successfully.", "messageId": "3f1c…"})),
        (status = 404, description = "No queue would receive it", body = crate::openapi::ErrorBodySchema),
        (status = 503, description = "Broker down", body = crate::openapi::ErrorBodySchema)))]
pub async fn message_publish(
    _: Publisher,
    state: web::Data<AppState>,
    Json(body): Json<PublishRequest>,
) -> Result<HttpResponse, ApiError> {
    let message = ParsedPublish::try_from(body)?;
    let (exchange, routing_key) = match &message.destination {
        Destination::Queue(queue) => ("", queue.as_str()),
        Destination::Exchange(exchange, key) => {
            // Publishing to a missing exchange would close the shared
            // publish channel; ask on a throwaway channel first.
            if !state.topology.exchange_exists(exchange.as_str()).await? {
                return Err(ApiError::NotFound(format!(
                    "no exchange named `{exchange}`"
                )));
            }
            (exchange.as_str(), key.as_str())
        }
    };
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(if message.persistent { 2 } else { 1 })
        .with_message_id(message.message_id.clone().into())
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_app_id("workerrmq".into())
        .with_headers(message.headers);
    let started = std::time::Instant::now();
    let outcome = state
        .publisher
        .publish(OutgoingMessage {
            exchange,
            routing_key,
            payload: &message.payload,
            properties,
            mandatory: true,
        })
        .await;
    state
        .metrics
        .publish_seconds
        .observe(started.elapsed().as_secs_f64());
    let label = match &outcome {
        Ok(PublishOutcome::Confirmed) => "confirmed",
        Ok(PublishOutcome::Unroutable) => "unroutable",
        Err(_) => "failed",
    };
    state
        .metrics
        .publishes
        .get_or_create(&crate::metrics::PublishLabels { outcome: label })
        .inc();
    match outcome? {
        PublishOutcome::Confirmed => Ok(HttpResponse::Accepted().json(json!({
            "message": "Message has been published successfully.",
            "messageId": message.message_id,
        }))),
        PublishOutcome::Unroutable => Err(ApiError::NotFound(match &message.destination {
            Destination::Queue(queue) => format!("no queue named `{queue}`; create it first (POST /createQueue)"),
            Destination::Exchange(exchange, key) => format!(
                "nothing bound to exchange `{exchange}` with routing key `{}` would receive the message",
                key.as_str()
            ),
        })),
    }
}

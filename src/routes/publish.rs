//! `/messagePublish`: a message onto a queue (default exchange) or an
//! exchange, answered 202 only after the broker confirmed it. The payload
//! is the `message` JSON exactly as sent (big integers keep every digit);
//! headers are capped at `MAX_HEADER_BYTES` encoded, so no publish can
//! exceed the broker's frame size and cost the connection; the built-in
//! queues take raw events from admins only.
//!
//! The caller's W3C `traceparent` header (or a trace started here) goes
//! into the message's `traceparent` AMQP header, so every call to a target
//! can be a span of that trace (`gateway::trace`).

use actix_web::{web, HttpRequest, HttpResponse};
use gateway::{
    AMQPValue, BasicProperties, ExchangeName, FieldTable, OutgoingMessage, PublishOutcome,
    QueueName, RoutingKey, Traceparent,
};
use middlewares::Publisher;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use services::{BuiltinHandler, FieldError, Role};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::Json;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishRequest {
    /// Publish straight to this queue, or
    #[schema(
        min_length = 1,
        max_length = 240,
        pattern = r"^(?!amq\.)(?!.*\.retry\.)(?!.*\.dlq$)[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub queue_name: Option<String>,
    /// to this exchange, with `routingKey`.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^(?!amq\.)[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub exchange: Option<String>,
    #[schema(max_length = 255)]
    pub routing_key: Option<String>,
    /// Any JSON but null; published exactly as sent, as `application/json`.
    #[schema(value_type = Value, required = true)]
    pub message: Option<Box<RawValue>>,
    /// Default: a new UUID. Becomes `webhook-id` when forwarded. 1 to 255
    /// bytes.
    #[schema(min_length = 1, max_length = 255)]
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

/// What a publish may carry, from the settings.
struct PublishLimits {
    max_header_bytes: usize,
}

impl ParsedPublish {
    fn parse(
        req: PublishRequest,
        trace: Traceparent,
        limits: &PublishLimits,
    ) -> Result<Self, ApiError> {
        let destination = match (req.queue_name, req.exchange) {
            (Some(queue), None) => {
                if req.routing_key.is_some() {
                    return Err(FieldError::new(
                        "routingKey",
                        "only with `exchange`; a queue is addressed by `queueName` alone",
                    )
                    .into());
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
        // The raw text, not a re-serialized `Value`: numbers beyond 64 bits
        // would come out as floats.
        let payload = match req.message {
            Some(raw) if raw.get() != "null" => raw.get().as_bytes().to_vec(),
            _ => {
                return Err(FieldError::new("message", "required, any JSON value but null").into())
            }
        };
        let message_id = match req.message_id {
            Some(id) if id.is_empty() || id.len() > 255 => {
                return Err(FieldError::new("messageId", "1 to 255 bytes").into())
            }
            // It becomes the `webhook-id` header of every forward: anything
            // a header cannot carry would dead-letter the message later.
            Some(id) if !id.bytes().all(|b| b.is_ascii_graphic() || b == b' ') => {
                return Err(FieldError::new(
                    "messageId",
                    "printable ASCII only (it becomes the webhook-id header)",
                )
                .into())
            }
            Some(id) => id,
            None => uuid::Uuid::new_v4().to_string(),
        };
        let mut headers = headers_table(req.headers.unwrap_or_default())?;
        let encoded = gateway::encoded_headers_len(&headers);
        if encoded > limits.max_header_bytes {
            return Err(FieldError::new(
                "headers",
                format!(
                    "{encoded} bytes once encoded for AMQP; this gateway accepts at most {} (MAX_HEADER_BYTES)",
                    limits.max_header_bytes
                ),
            )
            .into());
        }
        // Added past the check: MAX_HEADER_BYTES caps the caller's own
        // headers, and its ceiling leaves 4 KiB of the frame for the rest.
        headers.insert(
            gateway::trace::HEADER.into(),
            AMQPValue::LongString(trace.to_string().into_bytes().into()),
        );
        Ok(ParsedPublish {
            destination,
            payload,
            message_id,
            headers,
            persistent: req.persistent.unwrap_or(true),
        })
    }
}

fn headers_table(headers: Map<String, Value>) -> Result<FieldTable, FieldError> {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        if name.is_empty() || name.len() > 255 {
            return Err(FieldError::new(
                "headers",
                format!("header names are 1 to 255 bytes, `{name}` is not"),
            ));
        }
        // One source of trace context, the request header, so a message
        // never carries two that disagree.
        if name.eq_ignore_ascii_case(gateway::trace::HEADER) {
            return Err(FieldError::new(
                format!("headers.{name}"),
                "give the trace context as the `traceparent` request header",
            ));
        }
        if gateway::headers::is_reserved(&name) {
            return Err(FieldError::new(
                format!("headers.{name}"),
                format!(
                    "the `{}` prefix is reserved for the gateway",
                    gateway::headers::PREFIX
                ),
            ));
        }
        let amqp = match &value {
            Value::String(s) => AMQPValue::LongString(s.as_bytes().to_vec().into()),
            Value::Bool(b) => AMQPValue::Boolean(*b),
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => AMQPValue::LongLongInt(i),
                (None, Some(f)) => AMQPValue::Double(f),
                _ => {
                    return Err(FieldError::new(
                        format!("headers.{name}"),
                        "number out of range",
                    ))
                }
            },
            _ => {
                return Err(FieldError::new(
                    format!("headers.{name}"),
                    "must be a string, number or boolean",
                ))
            }
        };
        table.insert(name.into(), amqp);
    }
    Ok(table)
}

/// The publish's trace context: the caller's `traceparent` header, or a
/// new trace when there is none. A malformed one is refused rather than
/// replaced: the caller asked for that trace, and would look for the
/// message under it in vain.
fn trace_context(req: &HttpRequest) -> Result<Traceparent, FieldError> {
    let mut values = req.headers().get_all(gateway::trace::HEADER);
    let Some(value) = values.next() else {
        return Ok(Traceparent::start());
    };
    if values.next().is_some() {
        return Err(FieldError::new(
            gateway::trace::HEADER,
            "given more than once; W3C Trace Context allows one",
        ));
    }
    let text = value.to_str().map_err(|_| {
        FieldError::new(
            gateway::trace::HEADER,
            "not a W3C trace context (visible ASCII only)",
        )
    })?;
    Traceparent::parse(text).map_err(|err| {
        FieldError::new(
            gateway::trace::HEADER,
            format!("not a W3C trace context: {err}"),
        )
    })
}

/// Raw events on the built-in queues would skip the seed routes' checks
/// (a publisher could send `user.delete`), so only admins publish there.
fn check_builtin_queue(
    state: &AppState,
    role: Role,
    exchange: &str,
    routing_key: &str,
) -> Result<(), ApiError> {
    if role.allows(Role::Admin) || !exchange.is_empty() {
        return Ok(());
    }
    let prefix = &state.settings.builtin_queue_prefix;
    let is_builtin_queue = [
        BuiltinHandler::User,
        BuiltinHandler::Report,
        BuiltinHandler::Scrape,
    ]
    .into_iter()
    .any(|handler| builtin::queue_name(prefix, handler) == routing_key);
    if is_builtin_queue {
        return Err(ApiError::Forbidden(format!(
            "publishing straight to the built-in queue `{routing_key}` needs the admin role; publishers use POST /users, /reports or /jobs/scrape"
        )));
    }
    Ok(())
}

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
    let limits = PublishLimits {
        max_header_bytes: state.settings.max_header_bytes,
    };
    let trace = trace_context(&req)?;
    let message = ParsedPublish::parse(body, trace, &limits)?;
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
    check_builtin_queue(&state, caller.principal.role, exchange, routing_key)?;
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

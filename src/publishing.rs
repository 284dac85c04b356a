//! What `/messagePublish` and `/messagePublishBatch` share: a publish
//! request parsed into a message the broker can take (`ParsedPublish`, valid
//! once built), who may publish where, and each message's answer from the
//! broker, counted in the publish metrics. Both routes publish through
//! `Publishing::publish_each`, a single message as a batch of one.
//!
//! The payload is the `message` JSON exactly as sent (big integers keep
//! every digit); headers are capped at `MAX_HEADER_BYTES` encoded, so no
//! publish can exceed the broker's frame size and cost the connection; the
//! built-in queues take raw events from admins only. The caller's W3C
//! `traceparent` header (or a trace started here) goes into the message's
//! `traceparent` AMQP header, so every call to a target can be a span of
//! that trace (`gateway::trace`).

use std::collections::HashMap;
use std::time::Instant;

use actix_web::HttpRequest;
use gateway::{
    AMQPValue, BasicProperties, BrokerError, ExchangeName, FieldTable, OwnedMessage,
    PublishOutcome, QueueName, RoutingKey, Traceparent,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use services::{BuiltinHandler, FieldError, Role};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::state::AppState;

/// One message to publish: the body of `/messagePublish`, and each item of
/// `/messagePublishBatch`.
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

impl Destination {
    /// `(exchange, routing key)` as the broker takes them.
    fn address(&self) -> (&str, &str) {
        match self {
            Destination::Queue(queue) => ("", queue.as_str()),
            Destination::Exchange(exchange, key) => (exchange.as_str(), key.as_str()),
        }
    }

    /// Why the broker returned a message sent here.
    fn unroutable(&self) -> String {
        match self {
            Destination::Queue(queue) => {
                format!("no queue named `{queue}`; create it first (POST /createQueue)")
            }
            Destination::Exchange(exchange, key) => format!(
                "nothing bound to exchange `{exchange}` with routing key `{}` would receive the message",
                key.as_str()
            ),
        }
    }
}

/// A message ready for the broker: destination, payload, id and headers
/// all checked.
pub struct ParsedPublish {
    destination: Destination,
    payload: Vec<u8>,
    message_id: String,
    headers: FieldTable,
    persistent: bool,
}

/// What a publish may carry, from the settings.
pub struct PublishLimits {
    pub max_header_bytes: usize,
}

impl PublishLimits {
    pub fn of(state: &AppState) -> Self {
        Self {
            max_header_bytes: state.settings.max_header_bytes,
        }
    }
}

impl ParsedPublish {
    /// Every problem names its field as the request spells it
    /// (`message`, `headers.x-tenant`).
    pub fn parse(
        req: PublishRequest,
        trace: Traceparent,
        limits: &PublishLimits,
    ) -> Result<Self, FieldError> {
        let name = |field: &'static str| {
            move |err: gateway::NameError| FieldError::new(field, err.to_string())
        };
        let destination = match (req.queue_name, req.exchange) {
            (Some(queue), None) => {
                if req.routing_key.is_some() {
                    return Err(FieldError::new(
                        "routingKey",
                        "only with `exchange`; a queue is addressed by `queueName` alone",
                    ));
                }
                Destination::Queue(QueueName::parse(queue).map_err(name("queueName"))?)
            }
            (None, Some(exchange)) => Destination::Exchange(
                ExchangeName::parse(exchange).map_err(name("exchange"))?,
                RoutingKey::parse(req.routing_key.unwrap_or_default())
                    .map_err(name("routingKey"))?,
            ),
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "exchange",
                    "give either `queueName` or `exchange`, not both",
                ))
            }
            (None, None) => {
                return Err(FieldError::new(
                    "queueName",
                    "give `queueName`, or `exchange` with an optional `routingKey`",
                ))
            }
        };
        // The raw text, not a re-serialized `Value`: numbers beyond 64 bits
        // would come out as floats.
        let payload = match req.message {
            Some(raw) if raw.get() != "null" => raw.get().as_bytes().to_vec(),
            _ => {
                return Err(FieldError::new(
                    "message",
                    "required, any JSON value but null",
                ))
            }
        };
        let message_id = match req.message_id {
            Some(id) if id.is_empty() || id.len() > 255 => {
                return Err(FieldError::new("messageId", "1 to 255 bytes"))
            }
            // It becomes the `webhook-id` header of every forward: anything
            // a header cannot carry would dead-letter the message later.
            Some(id) if !id.bytes().all(|b| b.is_ascii_graphic() || b == b' ') => {
                return Err(FieldError::new(
                    "messageId",
                    "printable ASCII only (it becomes the webhook-id header)",
                ))
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
            ));
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

    fn into_outgoing(self) -> (OwnedMessage, Destination, String) {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(if self.persistent { 2 } else { 1 })
            .with_message_id(self.message_id.clone().into())
            .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
            .with_app_id("workerrmq".into())
            .with_headers(self.headers);
        let (exchange, routing_key) = self.destination.address();
        let message = OwnedMessage {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            payload: self.payload,
            properties,
            mandatory: true,
        };
        (message, self.destination, self.message_id)
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

/// The caller's `traceparent` header, `None` without one. A malformed one is
/// refused rather than replaced: the caller asked for that trace, and would
/// look for the message under it in vain.
pub fn caller_trace(req: &HttpRequest) -> Result<Option<Traceparent>, FieldError> {
    let mut values = req.headers().get_all(gateway::trace::HEADER);
    let Some(value) = values.next() else {
        return Ok(None);
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
    Traceparent::parse(text).map(Some).map_err(|err| {
        FieldError::new(
            gateway::trace::HEADER,
            format!("not a W3C trace context: {err}"),
        )
    })
}

/// Why a message was not published: a field that does not fit, named as the
/// message spells it (a batch puts `messages[i].` in front), or any other
/// answer of the API's.
#[derive(Debug)]
pub enum Refusal {
    Field(FieldError),
    Api(ApiError),
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Field(err) => err.into(),
            Refusal::Api(err) => err,
        }
    }
}

impl From<FieldError> for Refusal {
    fn from(err: FieldError) -> Self {
        Refusal::Field(err)
    }
}

impl From<ApiError> for Refusal {
    fn from(err: ApiError) -> Self {
        Refusal::Api(err)
    }
}

/// One message's answer: its id when it had one, and whether the broker
/// confirmed it.
pub struct Answer {
    pub message_id: Option<String>,
    pub outcome: Result<(), Refusal>,
}

/// Publishes parsed messages for one caller. Each exchange is asked after
/// once per request.
pub struct Publishing<'a> {
    state: &'a AppState,
    role: Role,
    exchanges: HashMap<String, bool>,
}

impl<'a> Publishing<'a> {
    pub fn new(state: &'a AppState, role: Role) -> Self {
        Self {
            state,
            role,
            exchanges: HashMap::new(),
        }
    }

    /// Publishes every message that parsed, in order and pipelined (see
    /// `gateway::Publisher::publish_batch`), and answers each one in its
    /// place: confirmed, or why not.
    pub async fn publish_each(
        &mut self,
        messages: Vec<Result<ParsedPublish, FieldError>>,
    ) -> Vec<Answer> {
        let mut answers = Vec::with_capacity(messages.len());
        let mut outgoing = Vec::new();
        let mut sent = Vec::new();
        for parsed in messages {
            let parsed = match parsed {
                Ok(parsed) => parsed,
                Err(err) => {
                    answers.push(Answer {
                        message_id: None,
                        outcome: Err(err.into()),
                    });
                    continue;
                }
            };
            if let Err(err) = self.admit(&parsed.destination).await {
                answers.push(Answer {
                    message_id: Some(parsed.message_id),
                    outcome: Err(err.into()),
                });
                continue;
            }
            let (message, destination, message_id) = parsed.into_outgoing();
            sent.push((answers.len(), destination));
            outgoing.push(message);
            // Replaced by the broker's answer; never taken for a 202.
            answers.push(Answer {
                message_id: Some(message_id),
                outcome: Err(ApiError::broker_down().into()),
            });
        }
        if outgoing.is_empty() {
            return answers;
        }
        let started = Instant::now();
        let published = self.state.publisher.publish_batch(outgoing).await;
        let took = started.elapsed().as_secs_f64();
        let metrics = &self.state.metrics;
        // A broker that is down fails every message of a batch alike: the
        // log gets the cause once a request.
        let mut down_logged = false;
        for ((index, destination), outcome) in sent.into_iter().zip(published) {
            metrics.publish_seconds.observe(took);
            let label = match &outcome {
                Ok(PublishOutcome::Confirmed) => "confirmed",
                Ok(PublishOutcome::Unroutable) => "unroutable",
                Err(_) => "failed",
            };
            metrics
                .publishes
                .get_or_create(&crate::metrics::PublishLabels { outcome: label })
                .inc();
            answers[index].outcome = match outcome {
                Ok(PublishOutcome::Confirmed) => Ok(()),
                Ok(PublishOutcome::Unroutable) => {
                    Err(ApiError::NotFound(destination.unroutable()).into())
                }
                Err(err @ BrokerError::FrameTooLarge { .. }) => {
                    Err(FieldError::new("headers", err.to_string()).into())
                }
                Err(BrokerError::Unavailable { .. }) if down_logged => {
                    Err(ApiError::broker_down().into())
                }
                Err(err) => {
                    down_logged |= matches!(err, BrokerError::Unavailable { .. });
                    Err(ApiError::from(err).into())
                }
            };
        }
        answers
    }

    /// Whether this caller may publish there, and whether it is there to
    /// publish to.
    async fn admit(&mut self, destination: &Destination) -> Result<(), ApiError> {
        match destination {
            Destination::Queue(queue) => check_builtin_queue(self.state, self.role, queue.as_str()),
            Destination::Exchange(exchange, _) => {
                let name = exchange.as_str();
                let exists = match self.exchanges.get(name) {
                    Some(exists) => *exists,
                    None => {
                        // Publishing to a missing exchange would close the
                        // shared publish channel; ask on a throwaway
                        // channel first.
                        let exists = self.state.topology.exchange_exists(name).await?;
                        self.exchanges.insert(name.to_owned(), exists);
                        exists
                    }
                };
                if exists {
                    Ok(())
                } else {
                    Err(ApiError::NotFound(format!(
                        "no exchange named `{exchange}`"
                    )))
                }
            }
        }
    }
}

/// Raw events on the built-in queues would skip the seed routes' checks
/// (a publisher could send `user.delete`), so only admins publish there.
fn check_builtin_queue(state: &AppState, role: Role, queue: &str) -> Result<(), ApiError> {
    if role.allows(Role::Admin) {
        return Ok(());
    }
    let prefix = &state.settings.builtin_queue_prefix;
    let is_builtin_queue = [
        BuiltinHandler::User,
        BuiltinHandler::Report,
        BuiltinHandler::Scrape,
    ]
    .into_iter()
    .any(|handler| builtin::queue_name(prefix, handler) == queue);
    if is_builtin_queue {
        return Err(ApiError::Forbidden(format!(
            "publishing straight to the built-in queue `{queue}` needs the admin role; publishers use POST /users, /reports or /jobs/scrape"
        )));
    }
    Ok(())
}

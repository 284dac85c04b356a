//! `/testConsumerRules`: a dry run of a filter and transform over sample
//! messages, or over the first messages of a queue (peeked, put back in
//! their order). Nothing is sent, acked or counted.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use gateway::{ConsumerId, QueueName};
use middlewares::Admin;
use rules::{ConsumerRules, Message, Verdict};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use services::FieldError;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::Json;
use crate::state::AppState;

/// Most messages one dry run looks at.
const MAX_MESSAGES: usize = 100;
/// Messages peeked when `fromQueue.limit` is not given.
const DEFAULT_FROM_QUEUE: usize = 10;

/// The rules to test (given, or a consumer's; a given one replaces the
/// consumer's) and the messages: `samples`, or `fromQueue`. With
/// `consumerId` and neither, the consumer's queue's first 10 messages.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestRulesRequest {
    /// Whose rules (and queue) to test.
    pub consumer_id: Option<String>,
    /// A CEL filter, as `/createConsumer` takes it.
    #[schema(max_length = 4096)]
    pub filter: Option<String>,
    /// A CEL transform, as `/createConsumer` takes it.
    #[schema(max_length = 4096)]
    pub transform: Option<String>,
    /// 1 to 100 messages made up for the test.
    #[schema(min_items = 1, max_items = 100)]
    pub samples: Option<Vec<SampleMessage>>,
    /// The queue's first messages, peeked: they stay in the queue, in order.
    pub from_queue: Option<FromQueue>,
}

/// A message made up for a dry run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SampleMessage {
    /// The payload, any JSON value; a rule sees it as `body`.
    #[schema(value_type = Value)]
    pub payload: Value,
    /// Message headers; names are read in lower case.
    #[schema(value_type = Option<Object>)]
    pub headers: Option<BTreeMap<String, Value>>,
    pub routing_key: Option<String>,
    pub exchange: Option<String>,
    pub message_id: Option<String>,
    /// Default `application/json`.
    pub content_type: Option<String>,
}

/// Which queue to peek at, and how many of its first messages.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FromQueue {
    #[schema(min_length = 1, max_length = 240)]
    pub queue_name: String,
    /// 1 to 100; default 10.
    #[schema(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
}

/// One message's result.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestResult {
    /// The peeked message's id (`fromQueue` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Whether the filter let it through (true without a filter).
    pub matched: bool,
    /// What would be sent; `null` when filtered out or a rule failed.
    #[schema(value_type = Option<Object>)]
    pub request: Option<Value>,
    /// Why a rule failed on it; `null` when none did.
    pub error: Option<String>,
}

/// A message to run the rules over, owned.
struct Trial {
    message_id: Option<String>,
    payload: Vec<u8>,
    headers: Vec<(String, Value)>,
    routing_key: String,
    exchange: String,
    content_type: Option<String>,
}

#[utoipa::path(post, path = "/testConsumerRules", tag = "consumers", request_body = TestRulesRequest,
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "One result per message, in order; nothing was sent, acked or counted, peeked messages are back in their queue", body = Object,
            example = json!({"results": [{"matched": true, "request": {"body": {"id": "o-1"}, "headers": {"content-type": "application/json", "x-tenant": "acme"}}, "error": null}]})),
        (status = 400, description = "A rule does not compile (named, with the position), or the messages asked for are out of bounds", body = crate::error::ErrorBody),
        (status = 404, description = "No such consumer or queue", body = crate::error::ErrorBody),
        (status = 409, description = "The queue to peek is not a classic queue (a quorum queue counts a peek as a delivery attempt) or has an ordered consumer; test with `samples`", body = crate::error::ErrorBody)))]
pub async fn test_consumer_rules(
    _: Admin,
    state: web::Data<AppState>,
    Json(body): Json<TestRulesRequest>,
) -> Result<HttpResponse, ApiError> {
    let consumer = match &body.consumer_id {
        Some(raw) => {
            let id = ConsumerId::parse(raw).ok_or_else(|| {
                FieldError::new(
                    "consumerId",
                    "not a consumer id; use the UUID /createConsumer answered with",
                )
            })?;
            Some(
                state
                    .registry
                    .definition(&id)
                    .await?
                    .ok_or_else(|| ApiError::NotFound(format!("no consumer with id `{id}`")))?,
            )
        }
        None => None,
    };
    let filter = body
        .filter
        .clone()
        .or_else(|| consumer.as_ref().and_then(|c| c.filter.clone()));
    let transform = body
        .transform
        .clone()
        .or_else(|| consumer.as_ref().and_then(|c| c.transform.clone()));
    if filter.is_none() && transform.is_none() {
        return Err(FieldError::new(
            "filter",
            "give a `filter` or a `transform`, or the `consumerId` of a consumer with rules",
        )
        .into());
    }
    let target_has_auth = consumer.as_ref().is_some_and(|c| c.target_has_auth());
    let rules = ConsumerRules::compile(filter.as_deref(), transform.as_deref(), target_has_auth)
        .map_err(|err| FieldError::new(err.field.as_str(), err.describe()))?;
    let trials = match (body.samples, body.from_queue) {
        (Some(_), Some(_)) => {
            return Err(
                FieldError::new("fromQueue", "give `samples` or `fromQueue`, not both").into(),
            )
        }
        (Some(samples), None) => samples_of(samples)?,
        (None, Some(from)) => {
            let limit = from.limit.unwrap_or(DEFAULT_FROM_QUEUE);
            if !(1..=MAX_MESSAGES).contains(&limit) {
                return Err(
                    FieldError::new("limit", format!("between 1 and {MAX_MESSAGES}"))
                        .within("fromQueue")
                        .into(),
                );
            }
            let queue = QueueName::parse(from.queue_name)
                .map_err(|e| FieldError::new("queueName", e.to_string()).within("fromQueue"))?;
            peeked(&state, &queue, limit).await?
        }
        (None, None) => match &consumer {
            Some(consumer) => {
                let queue = QueueName::parse(consumer.queue_name.clone())?;
                peeked(&state, &queue, DEFAULT_FROM_QUEUE).await?
            }
            None => {
                return Err(FieldError::new(
                    "samples",
                    "give `samples` or `fromQueue` (or a `consumerId`, for its queue)",
                )
                .into())
            }
        },
    };
    let results: Vec<TestResult> = trials.iter().map(|t| run(&rules, t)).collect();
    Ok(HttpResponse::Ok().json(json!({ "results": results })))
}

fn samples_of(samples: Vec<SampleMessage>) -> Result<Vec<Trial>, FieldError> {
    if !(1..=MAX_MESSAGES).contains(&samples.len()) {
        return Err(FieldError::new(
            "samples",
            format!("1 to {MAX_MESSAGES} messages"),
        ));
    }
    Ok(samples
        .into_iter()
        .map(|s| Trial {
            message_id: s.message_id,
            payload: match s.payload {
                // A string is the payload's text, as a non-JSON message has.
                Value::String(text) => text.into_bytes(),
                other => other.to_string().into_bytes(),
            },
            headers: s
                .headers
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            routing_key: s.routing_key.unwrap_or_default(),
            exchange: s.exchange.unwrap_or_default(),
            content_type: Some(
                s.content_type
                    .unwrap_or_else(|| "application/json".to_owned()),
            ),
        })
        .collect())
}

/// Refuses a peek that would change what happens to the messages: a
/// quorum queue counts each one handed back as a delivery (`x-delivery-count`,
/// which the consumers count as an attempt), and on a queue with an ordered
/// consumer the messages held meanwhile would be overtaken by their key's
/// next ones.
async fn check_peekable(state: &AppState, queue: &QueueName) -> Result<(), ApiError> {
    let Some(raw) = state.management.queue(queue.as_str()).await? else {
        return Err(ApiError::NotFound(format!("no queue named `{queue}`")));
    };
    if let Some(kind) = raw.queue_type.as_deref().filter(|t| *t != "classic") {
        return Err(ApiError::Conflict(format!(
            "`{queue}` is a {kind} queue, which counts every peeked message as a delivery attempt; test with `samples` instead"
        )));
    }
    if let Some(ordered) = state.registry.other_ordered_on(queue.as_str(), "").await? {
        return Err(ApiError::Conflict(format!(
            "`{queue}` has an ordered consumer (`{ordered}`), which would deliver the peeked messages' successors first; test with `samples` instead"
        )));
    }
    Ok(())
}

async fn peeked(state: &AppState, queue: &QueueName, limit: usize) -> Result<Vec<Trial>, ApiError> {
    check_peekable(state, queue).await?;
    let peeked = gateway::peek::peek_queue(&state.broker, queue, limit).await?;
    Ok(peeked
        .into_iter()
        .map(|p| Trial {
            message_id: p.message_id,
            payload: p.payload,
            headers: p.envelope.headers,
            routing_key: p.envelope.routing_key,
            exchange: p.envelope.exchange,
            content_type: p.content_type,
        })
        .collect())
}

fn run(rules: &ConsumerRules, trial: &Trial) -> TestResult {
    let message = Message {
        payload: &trial.payload,
        headers: &trial.headers,
        routing_key: &trial.routing_key,
        exchange: &trial.exchange,
        message_id: trial.message_id.as_deref().unwrap_or(""),
        content_type: trial.content_type.as_deref(),
    };
    let result = |matched, request, error| TestResult {
        message_id: trial.message_id.clone(),
        matched,
        request,
        error,
    };
    match rules.apply(&message) {
        Ok(Verdict::Filtered) => result(false, None, None),
        Ok(Verdict::Send(shape)) => {
            let (body, content_type, added) = match shape {
                Some(t) => match t.body {
                    Some(body) => (body, "application/json".to_owned(), t.headers),
                    None => (as_sent(&trial.payload), content_type_of(trial), t.headers),
                },
                None => (as_sent(&trial.payload), content_type_of(trial), Vec::new()),
            };
            let mut headers = serde_json::Map::new();
            headers.insert("content-type".into(), Value::String(content_type));
            for (name, value) in added {
                headers.insert(name, Value::String(value));
            }
            result(true, Some(json!({"body": body, "headers": headers})), None)
        }
        Err(err) => result(
            err.field == rules::RuleField::Transform,
            None,
            Some(err.to_string()),
        ),
    }
}

fn content_type_of(trial: &Trial) -> String {
    trial
        .content_type
        .clone()
        .unwrap_or_else(|| "application/json".to_owned())
}

/// The body as sent: its JSON when it is JSON, else its text.
fn as_sent(payload: &[u8]) -> Value {
    serde_json::from_slice(payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
}

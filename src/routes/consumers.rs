//! `/createConsumer`, `/getConsumers`, `/getConsumer/{consumerId}`,
//! `/deleteConsumer`.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use gateway::{CircuitBreakerPolicy, ConsumerId, QueueName, RetryPolicy};
use middlewares::{Admin, Viewer};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use services::targets::{DebugHeaders, DebugUrl, Http2Mode};
use services::{
    AttemptLogSettings, BatchSettings, BuiltinHandler, ConsumerDefinition, ConsumerView,
    FieldError, HttpTarget, MissingKeyName, OnRuleError, OrderingKeySettings, OrderingSettings,
    Role, SigningSecret, TargetSpec,
};
use utoipa::ToSchema;

use super::target_auth::{self, TargetAuthRequest, TargetTlsRequest};
use crate::error::ApiError;
use crate::extract::Json;
use crate::redact;
use crate::state::AppState;

const DEFAULT_PREFETCH: u16 = 10;
const MAX_PREFETCH: u16 = 1_000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateConsumerRequest {
    #[schema(
        min_length = 1,
        max_length = 240,
        pattern = r"^(?!amq\.)(?!.*\.retry\.)(?!.*\.dlq$)[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub queue_name: String,
    /// 1 to 100 characters; default `<queueName>-consumer`.
    #[schema(min_length = 1, max_length = 100)]
    pub consumer_name: Option<String>,
    /// Default: `{"type":"http","url": DEFAULT_TARGET_URL}`.
    pub target: Option<TargetRequest>,
    /// Deliveries worked on at once, 1 to 1000; default 10.
    #[schema(minimum = 1, maximum = 1000)]
    pub prefetch: Option<u16>,
    /// Target calls at once per replica, 1 to `prefetch`; default
    /// `prefetch`. Deliveries beyond it wait in the prefetch window.
    #[schema(minimum = 1, maximum = 1000)]
    pub concurrency: Option<u16>,
    /// Deliveries started per second by the consumer as a whole, 0.1 to
    /// 100000; each live replica takes an equal share. Default: no limit.
    #[schema(minimum = 0.1, maximum = 100000)]
    pub rate_limit_per_sec: Option<f64>,
    pub retry: Option<RetryRequest>,
    /// On when absent, with the defaults; `null` or `{"enabled": false}`
    /// turns it off.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<CircuitBreakerRequest>, nullable)]
    pub circuit_breaker: Option<Option<CircuitBreakerRequest>>,
    /// `whsec_` + base64 of 24 to 64 random bytes; never shown again.
    #[schema(value_type = Option<String>, pattern = "^whsec_")]
    pub signing_secret: Option<SecretString>,
    /// Batch delivery (HTTP targets): up to `maxMessages` messages in one
    /// request. Absent or `null`: one request per message.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<BatchRequest>, nullable)]
    pub batch: Option<Option<BatchRequest>>,
    pub attempt_log: Option<AttemptLogRequest>,
    /// Ordered delivery per key. Absent or `null`: off.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<OrderingRequest>, nullable)]
    pub ordering: Option<Option<OrderingRequest>>,
    /// A CEL expression yielding a bool, over `body` (the JSON payload,
    /// `null` when it is not JSON), `headers` (lower-case names),
    /// `routingKey`, `exchange`, `messageId`, `contentType`: only messages
    /// it yields `true` for go to the target; the others are acked and
    /// counted in `stats.filtered`. At most 4096 bytes. Not with `batch`.
    #[schema(max_length = 4096)]
    pub filter: Option<String>,
    /// A CEL expression over the same variables yielding a map with an
    /// optional `body` (any JSON value, sent as JSON) and optional
    /// `headers` (string to string, added to the request; not
    /// `webhook-*`, `x-workerrmq-*`, `host`, `content-length`,
    /// `traceparent`). The signature covers the new body. At most 4096
    /// bytes. Not with `batch`.
    #[schema(max_length = 4096)]
    pub transform: Option<String>,
    /// When a rule fails on a message at run time: `dead_letter` (default,
    /// kind `rule`), `deliver` (unchanged) or `drop` (acked, counted in
    /// `stats.filtered`).
    pub on_rule_error: Option<OnRuleError>,
}

/// One key's messages go to the target one at a time and in publish order
/// (the next only once the one before is delivered or dead-lettered), up
/// to `concurrency` keys at once; retries wait in place, never in delay
/// queues. Needs a queue created with `singleActiveConsumer: true`, and
/// one ordered consumer per queue; not with `batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderingRequest {
    /// Required to turn ordering on; on update, unset keeps the key.
    pub key: Option<OrderingKeySettings>,
    /// `unordered` (default): a message without the key is delivered at
    /// once; `dead_letter`: it is dead-lettered.
    pub missing_key: Option<MissingKeyName>,
}

/// Absent: `current` kept; `null`: off; an object: its fields over
/// `current`'s. Checked with the rest of the definition
/// (`ConsumerDefinition::ordering`).
fn ordering_of(
    request: Option<Option<OrderingRequest>>,
    current: Option<&OrderingSettings>,
) -> Result<Option<OrderingSettings>, FieldError> {
    let Some(request) = request else {
        return Ok(current.cloned());
    };
    let Some(request) = request else {
        return Ok(None);
    };
    let key = request
        .key
        .or_else(|| current.map(|c| c.key.clone()))
        .ok_or_else(|| {
            FieldError::new("key", "required to turn ordered delivery on").within("ordering")
        })?;
    Ok(Some(OrderingSettings {
        key,
        missing_key: request
            .missing_key
            .or(current.map(|c| c.missing_key))
            .unwrap_or_default(),
    }))
}

/// Delivery history for this consumer: each attempt leaves a record
/// (`/getAttempts`, `/getMessageHistory`) unless `enabled` is false; the
/// record keeps the first `ATTEMPT_BODY_BYTES` of the answer's body unless
/// `responseBody` is false. Unset fields keep their values (on create: true).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttemptLogRequest {
    pub enabled: Option<bool>,
    pub response_body: Option<bool>,
}

/// `request`'s fields over `current`'s.
fn attempt_log_of(
    request: Option<AttemptLogRequest>,
    current: Option<AttemptLogSettings>,
) -> Option<AttemptLogSettings> {
    let Some(request) = request else {
        return current;
    };
    let current = current.unwrap_or_default();
    Some(AttemptLogSettings {
        enabled: request.enabled.unwrap_or(current.enabled),
        response_body: request.response_body.unwrap_or(current.response_body),
    })
}

/// Up to `maxMessages` messages go in one request, sent when the batch is
/// full or when its oldest message has waited `maxWaitMs`. The body is a
/// JSON array of `{"id", "attempt", "contentType", "payload" |
/// "payloadBase64"}`; `webhook-id` is the batch's id and the signature
/// covers the whole body; `x-workerrmq-batch-size` says how many. A 2xx
/// delivers the batch, except the ids its body lists in `{"retry": [...],
/// "reject": [...]}`; 408, 429 and 5xx retry every message; any other status
/// dead-letters them all. Both fields are needed to turn batching on; on
/// update, an unset field keeps its value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 1000, and at most `prefetch`.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_messages: Option<u64>,
    /// 0 to 10000.
    #[schema(minimum = 0, maximum = 10000)]
    pub max_wait_ms: Option<u64>,
}

/// Absent: `current` kept; `null`: off; an object: its fields over
/// `current`'s, both needed when there is none. Checked against the
/// prefetch with the rest of the definition (`ConsumerDefinition::batch`).
fn batch_of(
    request: Option<Option<BatchRequest>>,
    current: Option<BatchSettings>,
) -> Result<Option<BatchSettings>, FieldError> {
    let Some(request) = request else {
        return Ok(current);
    };
    let Some(request) = request else {
        return Ok(None);
    };
    let required =
        |field: &str| FieldError::new(field, "required to turn batch delivery on").within("batch");
    Ok(Some(BatchSettings {
        max_messages: request
            .max_messages
            .or(current.map(|c| c.max_messages))
            .ok_or_else(|| required("maxMessages"))?,
        max_wait_ms: request
            .max_wait_ms
            .or(current.map(|c| c.max_wait_ms))
            .ok_or_else(|| required("maxWaitMs"))?,
    }))
}

/// Where deliveries go: an HTTP endpoint, or a built-in handler. `Debug`
/// shows neither header values nor the URL's query (credentials, often).
#[derive(Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum TargetRequest {
    Http {
        /// http(s), with a host on FORWARD_ALLOWED_HOSTS when that is set;
        /// no credentials in the URL.
        #[schema(min_length = 1)]
        url: String,
        /// POST (default), PUT or PATCH.
        method: Option<String>,
        headers: Option<BTreeMap<String, String>>,
        /// 1 to 300000; default 10000.
        #[serde(rename = "timeoutMs")]
        #[schema(minimum = 1, maximum = 300000)]
        timeout_ms: Option<u64>,
        /// `never` (HTTP/1.1), `auto` (default: HTTP/2 where TLS
        /// negotiates it), `always` (also h2c with prior knowledge to an
        /// http URL; a target that does not speak HTTP/2 fails, retried).
        http2: Option<Http2Mode>,
        /// How the gateway authenticates to the target; write-only
        /// secrets. Not with an `authorization` (or the `header` auth's
        /// name) in `headers`.
        #[schema(value_type = Option<TargetAuthRequest>)]
        auth: Option<Box<serde_json::Value>>,
        /// Mutual TLS and a private CA.
        #[schema(value_type = Option<TargetTlsRequest>)]
        tls: Option<Box<serde_json::Value>>,
    },
    Builtin {
        handler: BuiltinHandlerName,
    },
}

impl std::fmt::Debug for TargetRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetRequest::Http {
                url,
                method,
                headers,
                timeout_ms,
                http2,
                auth,
                tls,
            } => f
                .debug_struct("Http")
                .field("url", &DebugUrl(url))
                .field("method", method)
                .field("headers", &DebugHeaders(headers.as_ref()))
                .field("timeout_ms", timeout_ms)
                .field("http2", http2)
                .field("auth", &auth.as_deref().map(target_auth::auth_type))
                .field("tls", &tls.is_some())
                .finish(),
            TargetRequest::Builtin { handler } => {
                f.debug_struct("Builtin").field("handler", handler).finish()
            }
        }
    }
}

/// The built-in handlers a consumer may hand deliveries to.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BuiltinHandlerName {
    User,
    Report,
    Scrape,
}

impl From<BuiltinHandlerName> for BuiltinHandler {
    fn from(name: BuiltinHandlerName) -> Self {
        match name {
            BuiltinHandlerName::User => BuiltinHandler::User,
            BuiltinHandlerName::Report => BuiltinHandler::Report,
            BuiltinHandlerName::Scrape => BuiltinHandler::Scrape,
        }
    }
}

/// Unset fields keep their defaults; `maxDelayMs` must be at least
/// `initialDelayMs`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryRequest {
    /// 1 to 100; default 5.
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
    /// 1 to 86400000; default 1000.
    #[schema(minimum = 1, maximum = 86400000)]
    pub initial_delay_ms: Option<u64>,
    /// 1 to 10; default 2.
    #[schema(minimum = 1, maximum = 10)]
    pub multiplier: Option<f64>,
    /// Up to 86400000; default 300000.
    #[schema(minimum = 1, maximum = 86400000)]
    pub max_delay_ms: Option<u64>,
}

/// Keeps `null` apart from absent: `Some(None)` for `null`.
pub(super) fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// After `failureThreshold` retryable failures in a row (408, 429, 5xx,
/// connection error, timeout) the consumer stops taking deliveries and
/// hands the failing ones back unspent; after `openMs` it tries one; a
/// failed probe doubles the wait, up to `maxOpenMs`. Unset fields keep
/// their defaults.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakerRequest {
    /// `false` turns the breaker off; default `true`.
    pub enabled: Option<bool>,
    /// 1 to 10000; default 10.
    #[schema(minimum = 1, maximum = 10000)]
    pub failure_threshold: Option<u32>,
    /// 1 to 86400000; default 30000.
    #[schema(minimum = 1, maximum = 86400000)]
    pub open_ms: Option<u64>,
    /// `openMs` to 86400000; default 600000.
    #[schema(minimum = 1, maximum = 86400000)]
    pub max_open_ms: Option<u64>,
}

impl CircuitBreakerRequest {
    fn into_policy(
        self,
        defaults: CircuitBreakerPolicy,
    ) -> Result<Option<CircuitBreakerPolicy>, FieldError> {
        if self.enabled == Some(false) {
            return Ok(None);
        }
        let policy = CircuitBreakerPolicy {
            failure_threshold: self.failure_threshold.unwrap_or(defaults.failure_threshold),
            open_ms: self.open_ms.unwrap_or(defaults.open_ms),
            max_open_ms: self.max_open_ms.unwrap_or(defaults.max_open_ms),
        };
        policy
            .validate()
            .map_err(services::circuit_breaker_field_error)?;
        Ok(Some(policy))
    }
}

/// Absent: `current` kept (for a new consumer: on, with the defaults);
/// `null`: off; an object: its fields over `current`'s (or the defaults).
fn circuit_breaker_of(
    request: Option<Option<CircuitBreakerRequest>>,
    current: Option<CircuitBreakerPolicy>,
) -> Result<Option<CircuitBreakerPolicy>, FieldError> {
    match request {
        None => Ok(current),
        Some(None) => Ok(None),
        Some(Some(request)) => request.into_policy(current.unwrap_or_default()),
    }
}

impl RetryRequest {
    /// Unset fields keep `defaults`'.
    fn into_policy(self, defaults: RetryPolicy) -> Result<RetryPolicy, ApiError> {
        let policy = RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(defaults.max_attempts),
            initial_delay_ms: self.initial_delay_ms.unwrap_or(defaults.initial_delay_ms),
            multiplier: self.multiplier.unwrap_or(defaults.multiplier),
            max_delay_ms: self.max_delay_ms.unwrap_or(defaults.max_delay_ms),
        };
        policy.validate().map_err(services::retry_field_error)?;
        Ok(policy)
    }
}

/// The API's name for the broken bound: `retry.maxAttempts`, …
/// The settable parts of a consumer, as `/createConsumer` and
/// `/updateConsumer` both take them: `None` keeps what the base has;
/// `Some(None)` (an explicit `null`) clears what may be cleared.
pub(super) struct ConsumerSettings {
    pub(super) consumer_name: Option<String>,
    pub(super) target: Option<TargetRequest>,
    pub(super) prefetch: Option<u16>,
    pub(super) concurrency: Option<u16>,
    pub(super) rate_limit_per_sec: Option<Option<f64>>,
    pub(super) retry: Option<RetryRequest>,
    pub(super) circuit_breaker: Option<Option<CircuitBreakerRequest>>,
    pub(super) signing_secret: Option<Option<SecretString>>,
    pub(super) batch: Option<Option<BatchRequest>>,
    pub(super) attempt_log: Option<AttemptLogRequest>,
    pub(super) ordering: Option<Option<OrderingRequest>>,
    pub(super) filter: Option<Option<String>>,
    pub(super) transform: Option<Option<String>>,
    pub(super) on_rule_error: Option<OnRuleError>,
}

/// Writes `settings` over `base`, checking the result as a whole: the one
/// validation both create and update run. Returns the changed definition;
/// `base` itself is never half-changed.
pub(super) fn apply_settings(
    state: &AppState,
    settings: ConsumerSettings,
    base: &ConsumerDefinition,
) -> Result<ConsumerDefinition, ApiError> {
    let mut next = base.clone();
    if let Some(name) = settings.consumer_name {
        next.consumer_name = name.trim().to_owned();
    }
    if next.consumer_name.is_empty() || next.consumer_name.chars().count() > 100 {
        return Err(FieldError::new("consumerName", "1 to 100 characters").into());
    }
    if let Some(target) = settings.target {
        next.target = parse_target(state, target)?;
    }
    if let Some(prefetch) = settings.prefetch {
        next.prefetch = prefetch;
    }
    if !(1..=MAX_PREFETCH).contains(&next.prefetch) {
        return Err(FieldError::new("prefetch", format!("between 1 and {MAX_PREFETCH}")).into());
    }
    if let Some(concurrency) = settings.concurrency {
        next.concurrency = Some(concurrency);
    }
    if let Some(rate) = settings.rate_limit_per_sec {
        next.rate_limit_per_sec = rate;
    }
    // Checked as the engine will run them: the concurrency against the
    // prefetch as it will be, given or kept.
    next.limits()?;
    if let Some(retry) = settings.retry {
        next.retry = retry.into_policy(base.retry)?;
    }
    next.circuit_breaker = circuit_breaker_of(settings.circuit_breaker, base.circuit_breaker)?;
    // Checked against the prefetch and target as they will be.
    next.batch = batch_of(settings.batch, base.batch)?;
    next.batch()?;
    next.attempt_log = attempt_log_of(settings.attempt_log, base.attempt_log);
    // Checked against the batch setting as it will be.
    next.ordering = ordering_of(settings.ordering, base.ordering.as_ref())?;
    next.ordering(state.registry.max_hold())?;
    if let Some(filter) = settings.filter {
        next.filter = filter;
    }
    if let Some(transform) = settings.transform {
        next.transform = transform;
    }
    if let Some(on_rule_error) = settings.on_rule_error {
        next.on_rule_error = Some(on_rule_error);
    }
    // Compiled as the engine will run them: against the batch setting and
    // the target as they will be.
    next.rules()?;
    if let Some(secret) = settings.signing_secret {
        // Replaced at once, as asked: keeping the old one valid for a while
        // is what `/rotateSigningSecret` is for.
        next.previous_signing_secret = None;
        next.previous_signing_expires_at = None;
        next.signing_secret = secret
            .map(|raw| {
                SigningSecret::parse(raw.expose_secret())
                    .map(SigningSecret::into_encoded)
                    .map_err(ApiError::from)
            })
            .transpose()?;
    }
    Ok(next)
}

fn parse_definition(
    state: &AppState,
    request: CreateConsumerRequest,
) -> Result<ConsumerDefinition, ApiError> {
    let queue = QueueName::parse(request.queue_name)?;
    let target = match request.target {
        Some(target) => parse_target(state, target)?,
        None => default_target(state)?,
    };
    let base = ConsumerDefinition {
        consumer_id: ConsumerId::new().to_string(),
        consumer_name: format!("{queue}-consumer"),
        queue_name: queue.to_string(),
        target,
        prefetch: DEFAULT_PREFETCH,
        retry: RetryPolicy::default(),
        signing_secret: None,
        previous_signing_secret: None,
        previous_signing_expires_at: None,
        created_at: services::store::DateTime::now(),
        paused: false,
        concurrency: None,
        rate_limit_per_sec: None,
        circuit_breaker: Some(CircuitBreakerPolicy::default()),
        revision: 0,
        batch: None,
        attempt_log: None,
        ordering: None,
        filter: None,
        transform: None,
        on_rule_error: None,
    };
    let settings = ConsumerSettings {
        consumer_name: request.consumer_name,
        target: None,
        prefetch: request.prefetch,
        concurrency: request.concurrency,
        rate_limit_per_sec: request.rate_limit_per_sec.map(Some),
        retry: request.retry,
        circuit_breaker: request.circuit_breaker,
        signing_secret: request.signing_secret.map(Some),
        batch: request.batch,
        attempt_log: request.attempt_log,
        ordering: request.ordering,
        filter: request.filter.map(Some),
        transform: request.transform.map(Some),
        on_rule_error: request.on_rule_error,
    };
    apply_settings(state, settings, &base)
}

fn parse_target(state: &AppState, request: TargetRequest) -> Result<TargetSpec, ApiError> {
    let allowed = state.settings.forward_allowed_hosts.as_deref();
    Ok(match request {
        TargetRequest::Http {
            url,
            method,
            headers,
            timeout_ms,
            http2,
            auth,
            tls,
        } => TargetSpec::Http(
            HttpTarget::parse(
                &url,
                method.as_deref(),
                headers.unwrap_or_default(),
                timeout_ms,
                allowed,
            )?
            .with_http2(http2.unwrap_or_default())
            .with_auth(
                auth.map(|raw| target_auth::parse_auth(*raw, allowed))
                    .transpose()?,
            )?
            .with_tls(tls.map(|raw| target_auth::parse_tls(*raw)).transpose()?),
        ),
        TargetRequest::Builtin { handler } => TargetSpec::Builtin {
            handler: handler.into(),
        },
    })
}

/// `DEFAULT_TARGET_URL`, for a consumer created without a target.
fn default_target(state: &AppState) -> Result<TargetSpec, ApiError> {
    let allowed = state.settings.forward_allowed_hosts.as_deref();
    let default = state.settings.default_target_url.as_ref().ok_or_else(|| {
        FieldError::new(
            "target",
            "required, since DEFAULT_TARGET_URL is not set on this gateway",
        )
    })?;
    Ok(TargetSpec::Http(
        HttpTarget::parse(default.as_str(), None, BTreeMap::new(), None, allowed)
            .map_err(|e| ApiError::BadRequest(format!("DEFAULT_TARGET_URL: {}", e.problem)))?,
    ))
}

#[utoipa::path(post, path = "/createConsumer", tag = "consumers", request_body = CreateConsumerRequest,
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 201, description = "Stored and started", example = json!({"message": "Consumer has been created successfully.", "consumerId": "0b6f…"})),
        (status = 400, description = "Invalid target, secret, prefetch, concurrency, rateLimitPerSec, retry policy, batch, ordering, filter or transform (with the position in it)", body = crate::error::ErrorBody),
        (status = 404, description = "No such queue", body = crate::error::ErrorBody),
        (status = 409, description = "This gateway already runs MAX_CONSUMERS consumers; or ordering on a queue without singleActiveConsumer, or with an ordered consumer already", body = crate::error::ErrorBody)))]
pub async fn create_consumer(
    _: Admin,
    state: web::Data<AppState>,
    Json(body): Json<CreateConsumerRequest>,
) -> Result<HttpResponse, ApiError> {
    let definition = parse_definition(&state, body)?;
    if state
        .topology
        .queue_counts(&definition.queue_name)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!(
            "no queue named `{}`; create it first (POST /createQueue)",
            definition.queue_name
        )));
    }
    check_ordered_queue(&state, &definition).await?;
    let view = state
        .registry
        .create_within(definition, state.settings.max_consumers)
        .await?;
    Ok(HttpResponse::Created().json(json!({
        "message": "Consumer has been created successfully.",
        "consumerId": view.consumer_id,
        "consumer": view,
    })))
}

/// An ordered consumer keeps order across replicas only on a queue with a
/// single active consumer, and alone on it: another consumer's deliveries
/// would run beside its own. 409 otherwise, naming what is missing.
pub(super) async fn check_ordered_queue(
    state: &AppState,
    definition: &ConsumerDefinition,
) -> Result<(), ApiError> {
    if definition.ordering.is_none() {
        return Ok(());
    }
    let queue = &definition.queue_name;
    let single_active = state
        .management
        .queue(queue)
        .await?
        .is_some_and(|raw| raw.single_active_consumer());
    if !single_active {
        return Err(ApiError::Conflict(format!(
            "ordering needs a queue with a single active consumer, and `{queue}` has none; create the queue with `singleActiveConsumer: true`"
        )));
    }
    let other_ordered = state
        .registry
        .other_ordered_on(queue, &definition.consumer_id)
        .await?;
    if let Some(other) = other_ordered {
        return Err(ApiError::Conflict(format!(
            "`{queue}` already has an ordered consumer (`{other}`); a queue takes one"
        )));
    }
    Ok(())
}

/// Admins see targets as stored; everyone else with their secrets masked.
fn as_seen_by(caller: &Viewer, view: ConsumerView) -> ConsumerView {
    if caller.principal.role.allows(Role::Admin) {
        view
    } else {
        redact::consumer_for_viewer(view)
    }
}

#[utoipa::path(get, path = "/getConsumers", tag = "consumers",
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "Every registered consumer with this gateway's live stats; below admin, target URL query values read `***`")))]
pub async fn get_consumers(
    caller: Viewer,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let views: Vec<ConsumerView> = state
        .registry
        .list()
        .await?
        .into_iter()
        .map(|view| as_seen_by(&caller, view))
        .collect();
    Ok(HttpResponse::Ok().json(views))
}

#[utoipa::path(get, path = "/getConsumer/{consumerId}", tag = "consumers",
    security(("basic" = []), ("bearer" = [])),
    params(("consumerId" = String, Path)),
    responses((status = 200), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_consumer(
    caller: Viewer,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let raw = path.into_inner();
    let not_found = || ApiError::NotFound(format!("no consumer with id `{raw}`"));
    let id = ConsumerId::parse(&raw).ok_or_else(not_found)?;
    let view = state.registry.get(&id).await?.ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(as_seen_by(&caller, view)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteConsumerRequest {
    /// One consumer, or
    pub consumer_id: Option<String>,
    /// every consumer on this queue.
    #[schema(
        min_length = 1,
        max_length = 240,
        pattern = r"^(?!amq\.)(?!.*\.retry\.)(?!.*\.dlq$)[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub queue_name: Option<String>,
}

#[utoipa::path(post, path = "/deleteConsumer", tag = "consumers", request_body = DeleteConsumerRequest,
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Stopped; in-flight deliveries were settled or handed back", example = json!({"message": "Consumer has been deleted successfully.", "deleted": 1})),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete_consumer(
    _: Admin,
    state: web::Data<AppState>,
    Json(body): Json<DeleteConsumerRequest>,
) -> Result<HttpResponse, ApiError> {
    let deleted = match (body.consumer_id, body.queue_name) {
        (Some(raw), None) => {
            let id = ConsumerId::parse(&raw)
                .ok_or_else(|| ApiError::NotFound(format!("no consumer with id `{raw}`")))?;
            if state.registry.delete(&id).await? {
                1
            } else {
                return Err(ApiError::NotFound(format!("no consumer with id `{raw}`")));
            }
        }
        (None, Some(queue)) => {
            let queue = QueueName::parse(queue)?;
            let n = state.registry.delete_on_queue(&queue).await?;
            if n == 0 {
                return Err(ApiError::NotFound(format!(
                    "no consumer on queue `{queue}`"
                )));
            }
            n
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give either `consumerId` or `queueName`".into(),
            ))
        }
    };
    Ok(HttpResponse::Ok().json(json!({
        "message": "Consumer has been deleted successfully.",
        "deleted": deleted,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_request_shows_no_secret_in_debug() {
        let request: CreateConsumerRequest = serde_json::from_value(serde_json::json!({
            "queueName": "orders",
            "target": {
                "type": "http",
                "url": "https://api.example.com/hook?token=urlSecret",
                "headers": { "authorization": "Bearer headerSecret" }
            },
            "signingSecret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        }))
        .expect("a valid request");
        let shown = format!("{request:?}");
        for secret in ["urlSecret", "headerSecret", "MfKQ9r8"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert_eq!(
            request.signing_secret.as_ref().map(|s| s.expose_secret()),
            Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        );
    }

    #[test]
    fn circuit_breaker_is_on_by_default_and_null_or_disabled_turns_it_off() {
        let parse = |body: serde_json::Value| {
            let request: CreateConsumerRequest =
                serde_json::from_value(body).expect("a create request");
            circuit_breaker_of(
                request.circuit_breaker,
                Some(CircuitBreakerPolicy::default()),
            )
        };
        assert_eq!(
            parse(json!({ "queueName": "q" })),
            Ok(Some(CircuitBreakerPolicy::default()))
        );
        assert_eq!(
            parse(json!({ "queueName": "q", "circuitBreaker": null })),
            Ok(None)
        );
        assert_eq!(
            parse(json!({ "queueName": "q", "circuitBreaker": { "enabled": false } })),
            Ok(None)
        );
        assert_eq!(
            parse(
                json!({ "queueName": "q", "circuitBreaker": { "failureThreshold": 3, "openMs": 2000 } })
            ),
            Ok(Some(CircuitBreakerPolicy {
                failure_threshold: 3,
                open_ms: 2_000,
                max_open_ms: 600_000
            }))
        );
        let cases = [
            (
                json!({ "failureThreshold": 0 }),
                "circuitBreaker.failureThreshold",
            ),
            (json!({ "openMs": 0 }), "circuitBreaker.openMs"),
            (
                json!({ "openMs": 5000, "maxOpenMs": 4000 }),
                "circuitBreaker.maxOpenMs",
            ),
        ];
        for (body, field) in cases {
            let err = parse(json!({ "queueName": "q", "circuitBreaker": body }))
                .expect_err("out of bounds");
            assert_eq!(err.field, field, "{body}");
        }
    }

    #[test]
    fn retry_policy_errors_name_the_api_field() {
        let request = |json: serde_json::Value| -> RetryRequest {
            serde_json::from_value(json).expect("a retry request")
        };
        let cases = [
            (serde_json::json!({ "maxAttempts": 0 }), "retry.maxAttempts"),
            (
                serde_json::json!({ "initialDelayMs": 0 }),
                "retry.initialDelayMs",
            ),
            (serde_json::json!({ "multiplier": 0.5 }), "retry.multiplier"),
            (serde_json::json!({ "maxDelayMs": 10 }), "retry.maxDelayMs"),
        ];
        for (body, field) in cases {
            let err = request(body.clone())
                .into_policy(RetryPolicy::default())
                .expect_err("out of bounds");
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("field `{field}`: ")),
                "{body} → {message}"
            );
        }
    }
}

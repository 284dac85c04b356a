//! `/updateConsumer`: change a running consumer's settings. The new
//! definition is checked as `/createConsumer` checks one, stored with the
//! next revision, and applied here at once; every other replica applies it
//! on its next reconcile pass. Each applies it by draining the old worker
//! first, so no delivery is lost or run twice because of an update.

use actix_web::{web, HttpResponse};
use gateway::ConsumerId;
use middlewares::Admin;
use secrecy::SecretString;
use serde::Deserialize;
use services::{FieldError, OnRuleError, UpdateOutcome};
use utoipa::ToSchema;

use super::consumers::{
    apply_settings, check_ordered_queue, present, AttemptLogRequest, BatchRequest,
    CircuitBreakerRequest, ConsumerSettings, OrderingRequest, RetryRequest, TargetRequest,
};
use crate::error::ApiError;
use crate::extract::Json;
use crate::state::AppState;

/// Only the fields given change; the queue cannot.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateConsumerRequest {
    /// As `/createConsumer` answered it.
    #[schema(example = "0b6f6c4e-2f1a-4c55-9d0e-6f0d2b1f9a3e")]
    pub consumer_id: String,
    /// 1 to 100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub consumer_name: Option<String>,
    /// Replaces the target as a whole.
    pub target: Option<TargetRequest>,
    /// 1 to 1000. A new prefetch applies on a new channel, opened once the
    /// deliveries in flight are settled.
    #[schema(minimum = 1, maximum = 1000)]
    pub prefetch: Option<u16>,
    /// 1 to the prefetch (the new one when both are given).
    #[schema(minimum = 1, maximum = 1000)]
    pub concurrency: Option<u16>,
    /// 0.1 to 100000; `null` removes the limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>, nullable, minimum = 0.1, maximum = 100000)]
    pub rate_limit_per_sec: Option<Option<f64>>,
    /// Unset fields keep their current values.
    pub retry: Option<RetryRequest>,
    /// Unset fields keep their current values; `null` or
    /// `{"enabled": false}` turns the breaker off. An unchanged policy keeps
    /// the circuit's state.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<CircuitBreakerRequest>, nullable)]
    pub circuit_breaker: Option<Option<CircuitBreakerRequest>>,
    /// `whsec_` + base64 of 24 to 64 random bytes; `null` stops signing.
    /// Never shown again.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, nullable, pattern = "^whsec_")]
    pub signing_secret: Option<Option<SecretString>>,
    /// Unset fields keep their current values; `null` turns batch delivery
    /// off. `maxMessages` is checked against the prefetch as it will be.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<BatchRequest>, nullable)]
    pub batch: Option<Option<BatchRequest>>,
    /// Unset fields keep their current values.
    pub attempt_log: Option<AttemptLogRequest>,
    /// Unset fields keep their current values; `null` turns ordering off.
    /// Turning it on is checked as on create (the queue's single active
    /// consumer, one ordered consumer per queue).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<OrderingRequest>, nullable)]
    pub ordering: Option<Option<OrderingRequest>>,
    /// The CEL filter (see `/createConsumer`); `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, nullable, max_length = 4096)]
    pub filter: Option<Option<String>>,
    /// The CEL transform (see `/createConsumer`); `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, nullable, max_length = 4096)]
    pub transform: Option<Option<String>>,
    /// `dead_letter`, `deliver` or `drop`; unset keeps the current one.
    pub on_rule_error: Option<OnRuleError>,
}

impl UpdateConsumerRequest {
    fn into_parts(self) -> Result<(ConsumerId, ConsumerSettings), FieldError> {
        let id = ConsumerId::parse(&self.consumer_id).ok_or_else(|| {
            FieldError::new(
                "consumerId",
                "not a consumer id; use the UUID /createConsumer answered with",
            )
        })?;
        Ok((
            id,
            ConsumerSettings {
                consumer_name: self.consumer_name,
                target: self.target,
                prefetch: self.prefetch,
                concurrency: self.concurrency,
                rate_limit_per_sec: self.rate_limit_per_sec,
                retry: self.retry,
                circuit_breaker: self.circuit_breaker,
                signing_secret: self.signing_secret,
                batch: self.batch,
                attempt_log: self.attempt_log,
                ordering: self.ordering,
                filter: self.filter,
                transform: self.transform,
                on_rule_error: self.on_rule_error,
            },
        ))
    }
}

#[utoipa::path(post, path = "/updateConsumer", tag = "consumers", request_body = UpdateConsumerRequest,
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Stored and applied here, once the old settings' in-flight deliveries were settled; every replica applies it within 5 s. The whole new definition, as /getConsumer shows it (never the secret)"),
        (status = 400, description = "A field is missing, unknown or out of bounds (named); nothing changed", body = crate::error::ErrorBody),
        (status = 404, description = "No consumer with this id", body = crate::error::ErrorBody),
        (status = 409, description = "Another update was stored meanwhile, or ordering on a queue without singleActiveConsumer or with another ordered consumer; nothing changed", body = crate::error::ErrorBody)))]
pub async fn update_consumer(
    _: Admin,
    state: web::Data<AppState>,
    Json(body): Json<UpdateConsumerRequest>,
) -> Result<HttpResponse, ApiError> {
    let (id, settings) = body.into_parts()?;
    let not_found = || ApiError::NotFound(format!("no consumer with id `{id}`"));
    let base = state
        .registry
        .definition(&id)
        .await?
        .ok_or_else(not_found)?;
    let mut next = apply_settings(&state, settings, &base)?;
    check_ordered_queue(&state, &next).await?;
    next.revision = base.revision + 1;
    match state.registry.update(next).await? {
        UpdateOutcome::Updated(view) => Ok(HttpResponse::Ok().json(view)),
        UpdateOutcome::NotFound => Err(not_found()),
        // Stored only over the revision it was checked against, so a
        // concurrent update is never silently undone.
        UpdateOutcome::Conflict => Err(ApiError::Conflict(format!(
            "consumer `{id}` was updated meanwhile; nothing changed, read it and try again"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_shows_no_secret_in_debug() {
        let request: UpdateConsumerRequest = serde_json::from_value(serde_json::json!({
            "consumerId": "c1",
            "target": {
                "type": "http",
                "url": "https://api.example.com/hook",
                "headers": { "authorization": "Bearer headerSecret" }
            },
            "signingSecret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        }))
        .expect("a valid update");
        let shown = format!("{request:?}");
        assert!(!shown.contains("headerSecret"), "{shown}");
        assert!(!shown.contains("MfKQ9r8"), "{shown}");
    }
}

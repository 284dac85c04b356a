//! `/rotateSigningSecret`: give a consumer a new signing secret while the
//! old one stays valid for a grace period (`services::signing`), so
//! receivers can move to the new one without a failed delivery. Stored as
//! the next revision, like an update: every replica signs with both within
//! 5 s.

use actix_web::{web, HttpResponse};
use gateway::ConsumerId;
use middlewares::Admin;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use services::signing::{self, GracePeriod, RotationError};
use services::{FieldError, SigningSecret, TargetSpec, UpdateOutcome};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::Json;
use crate::state::AppState;

/// Which consumer, and how its old secret fades out.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateSigningSecretRequest {
    /// As `/createConsumer` answered it.
    #[schema(example = "0b6f6c4e-2f1a-4c55-9d0e-6f0d2b1f9a3e")]
    pub consumer_id: String,
    /// How long the replaced secret still signs too, in milliseconds:
    /// 0 to 604800000 (7 days); default 86400000 (24 hours). 0 replaces it
    /// at once.
    #[schema(minimum = 0, maximum = 604800000)]
    pub grace_period_ms: Option<u64>,
    /// The new secret, `whsec_` + base64 of 24 to 64 random bytes; absent:
    /// the gateway makes one (32 random bytes).
    #[schema(value_type = Option<String>, pattern = "^whsec_")]
    pub signing_secret: Option<SecretString>,
    /// Rotate even while the secret replaced by the last rotation is still
    /// valid, which stops that one at once.
    #[serde(default)]
    pub force: bool,
}

/// The new secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigningSecretRotated {
    /// The consumer rotated.
    pub consumer_id: String,
    /// The new secret; it is never shown again.
    #[serde(serialize_with = "credentials::secret_serde::expose")]
    #[schema(value_type = String, example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub signing_secret: SecretString,
    /// Until when requests are also signed with the old secret (RFC 3339);
    /// `null` when there was none, or the grace period is 0.
    pub previous_expires_at: Option<String>,
}

#[utoipa::path(post, path = "/rotateSigningSecret", tag = "consumers", request_body = RotateSigningSecretRequest,
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Stored and applied here; every replica signs with the new secret (and the old one until `previousExpiresAt`) within 5 s. The new secret is shown this once", body = SigningSecretRotated),
        (status = 400, description = "A field is missing, unknown or out of bounds (named), or the consumer has a built-in handler; nothing changed", body = crate::error::ErrorBody),
        (status = 404, description = "No consumer with this id", body = crate::error::ErrorBody),
        (status = 409, description = "The secret replaced by the last rotation is still valid (rotate with `force: true` to stop it), or the consumer was updated meanwhile; nothing changed", body = crate::error::ErrorBody)))]
pub async fn rotate_signing_secret(
    _: Admin,
    state: web::Data<AppState>,
    Json(body): Json<RotateSigningSecretRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = ConsumerId::parse(&body.consumer_id).ok_or_else(|| {
        FieldError::new(
            "consumerId",
            "not a consumer id; use the UUID /createConsumer answered with",
        )
    })?;
    let grace = GracePeriod::parse(body.grace_period_ms)?;
    let next = match &body.signing_secret {
        Some(raw) => SigningSecret::parse(raw.expose_secret())?,
        None => signing::generate(),
    };
    let base = state
        .registry
        .definition(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    if !matches!(base.target, TargetSpec::Http(_)) {
        return Err(FieldError::new(
            "consumerId",
            "this consumer hands its messages to a built-in handler, which is not signed",
        )
        .into());
    }
    let mut rotated = signing::rotated(&base, next, grace, body.force, chrono::Utc::now())
        .map_err(|err| match err {
            RotationError::StillInGrace { .. } => ApiError::Conflict(err.to_string()),
        })?;
    rotated.revision = base.revision + 1;
    let answer = SigningSecretRotated {
        consumer_id: id.to_string(),
        signing_secret: rotated
            .signing_secret
            .clone()
            .expect("a rotated consumer has a secret"),
        previous_expires_at: rotated.previous_signing_expires_at.map(|at| {
            at.to_chrono()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        }),
    };
    match state.registry.update(rotated).await? {
        UpdateOutcome::Updated(_) => {
            tracing::info!(consumer_id = %id, grace_ms = body.grace_period_ms, "signing secret rotated");
            Ok(HttpResponse::Ok().json(answer))
        }
        UpdateOutcome::NotFound => Err(not_found(&id)),
        UpdateOutcome::Conflict => Err(ApiError::Conflict(format!(
            "consumer `{id}` was updated meanwhile; nothing changed, try again"
        ))),
    }
}

fn not_found(id: &ConsumerId) -> ApiError {
    ApiError::NotFound(format!("no consumer with id `{id}`"))
}

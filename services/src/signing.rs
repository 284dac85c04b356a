//! A consumer's signing keys and their rotation.
//!
//! A rotation keeps the secret it replaces valid for a grace period: until
//! then every request carries two Standard Webhooks signatures in
//! `webhook-signature`, the new one first, so receivers verify with either
//! while they move to the new secret, and nothing fails in between. Each
//! request decides at signing time whether the previous key still counts,
//! so the second signature stops when the grace period ends, with no
//! update or restart.
//!
//! Secrets are never shown: an answer names each by its fingerprint.

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::consumers::ConsumerDefinition;
use crate::targets::SigningSecret;
use crate::FieldError;

/// The longest grace period a rotation may give the old secret: 7 days.
pub const MAX_GRACE_PERIOD: Duration = Duration::from_secs(7 * 24 * 3600);
/// The grace period when a rotation names none: 24 hours.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// The keys a forwarder signs with: the current one always, the previous
/// one until it expires.
#[derive(Debug, Clone)]
pub struct SigningKeys {
    current: SigningSecret,
    previous: Option<(SigningSecret, DateTime<Utc>)>,
}

impl SigningKeys {
    /// Signs with `current` only.
    pub fn new(current: SigningSecret) -> Self {
        Self {
            current,
            previous: None,
        }
    }

    /// Also signs with `previous` while the time is before `expires_at`.
    pub fn with_previous(self, previous: SigningSecret, expires_at: DateTime<Utc>) -> Self {
        Self {
            previous: Some((previous, expires_at)),
            ..self
        }
    }

    /// The `webhook-signature` value for a request signed at `now`: one
    /// `v1,…` signature per live key, the current one first, separated by a
    /// space (Standard Webhooks).
    pub fn signature(
        &self,
        message_id: &str,
        timestamp: i64,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> String {
        let mut value = self.current.sign(message_id, timestamp, body);
        if let Some((previous, expires_at)) = &self.previous {
            if now < *expires_at {
                value.push(' ');
                value.push_str(&previous.sign(message_id, timestamp, body));
            }
        }
        value
    }
}

/// How long the replaced secret stays valid after a rotation
/// (`gracePeriodMs`, 0 to 7 days).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GracePeriod(Duration);

impl GracePeriod {
    /// `gracePeriodMs` as given, or the default of 24 hours.
    pub fn parse(ms: Option<u64>) -> Result<Self, FieldError> {
        let Some(ms) = ms else {
            return Ok(Self(DEFAULT_GRACE_PERIOD));
        };
        let period = Duration::from_millis(ms);
        if period > MAX_GRACE_PERIOD {
            return Err(FieldError::new(
                "gracePeriodMs",
                format!("between 0 and {} (7 days)", MAX_GRACE_PERIOD.as_millis()),
            ));
        }
        Ok(Self(period))
    }
}

/// Why a consumer's secret was not rotated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RotationError {
    /// An earlier rotation's old secret is still valid; rotating again would
    /// drop it before its grace period ends.
    #[error("the secret replaced by the last rotation is valid until {expires_at}; wait until then, or rotate with `force: true`, which stops it at once")]
    StillInGrace {
        /// When the earlier rotation's grace period ends (RFC 3339).
        expires_at: String,
    },
}

/// A new random secret: `whsec_` and base64 of 32 random bytes.
pub fn generate() -> SigningSecret {
    let key: [u8; 32] = rand::random();
    let encoded = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    SigningSecret::parse(&encoded).expect("32 bytes in base64 is a valid secret")
}

/// `definition` with `next` as its signing secret and the secret it had
/// (if any) valid until `now + grace`. Refused while an earlier rotation's
/// grace period runs, unless `force`, which drops that older secret.
pub fn rotated(
    definition: &ConsumerDefinition,
    next: SigningSecret,
    grace: GracePeriod,
    force: bool,
    now: DateTime<Utc>,
) -> Result<ConsumerDefinition, RotationError> {
    if let Some(expires_at) = live_previous_expiry(definition, now) {
        if !force {
            return Err(RotationError::StillInGrace {
                expires_at: rfc3339(expires_at),
            });
        }
    }
    let mut rotated = definition.clone();
    let replaced = rotated.signing_secret.take();
    rotated.signing_secret = Some(next.into_encoded());
    match replaced {
        Some(old) if !grace.0.is_zero() => {
            let expires_at = now
                + chrono::Duration::from_std(grace.0)
                    .expect("at most 7 days fits a chrono duration");
            rotated.previous_signing_secret = Some(old);
            rotated.previous_signing_expires_at = Some(expires_at.into());
        }
        _ => {
            rotated.previous_signing_secret = None;
            rotated.previous_signing_expires_at = None;
        }
    }
    Ok(rotated)
}

/// When the secret replaced by the last rotation stops being valid, if it
/// still is at `now`.
fn live_previous_expiry(
    definition: &ConsumerDefinition,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    definition.previous_signing_secret.as_ref()?;
    let expires_at = definition.previous_signing_expires_at?.to_chrono();
    (now < expires_at).then_some(expires_at)
}

/// A consumer's signing as `/getConsumer` shows it: fingerprints, never
/// secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigningView {
    /// Names the current secret: `sha256:` and the first 16 hex digits of
    /// the SHA-256 of the secret as given.
    pub fingerprint: String,
    /// The secret replaced by the last rotation, while it is still valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_fingerprint: Option<String>,
    /// When that secret stops being valid (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_expires_at: Option<String>,
}

impl SigningView {
    /// `None` for a consumer that does not sign.
    pub fn of(definition: &ConsumerDefinition, now: DateTime<Utc>) -> Option<Self> {
        let current = definition.signing_secret.as_ref()?;
        let previous =
            live_previous_expiry(definition, now).zip(definition.previous_signing_secret.as_ref());
        Some(Self {
            fingerprint: fingerprint(current),
            previous_fingerprint: previous.map(|(_, secret)| fingerprint(secret)),
            previous_expires_at: previous.map(|(at, _)| rfc3339(at)),
        })
    }
}

/// The keys `definition` signs with, checked: the store is outside this
/// process. `None` for a consumer that does not sign.
pub fn keys_of(definition: &ConsumerDefinition) -> Result<Option<SigningKeys>, FieldError> {
    let Some(current) = &definition.signing_secret else {
        return Ok(None);
    };
    let mut keys = SigningKeys::new(SigningSecret::parse(current.expose_secret())?);
    if let (Some(previous), Some(expires_at)) = (
        &definition.previous_signing_secret,
        definition.previous_signing_expires_at,
    ) {
        let previous = SigningSecret::parse(previous.expose_secret())
            .map_err(|e| FieldError::new("previousSigningSecret", e.problem))?;
        keys = keys.with_previous(previous, expires_at.to_chrono());
    }
    Ok(Some(keys))
}

fn fingerprint(secret: &SecretString) -> String {
    let digest = Sha256::digest(secret.expose_secret().as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn signed(secret: Option<&str>) -> ConsumerDefinition {
        let mut definition = crate::consumers::tests::definition();
        definition.signing_secret = secret.map(SecretString::from);
        definition
    }

    #[test]
    fn a_rotation_keeps_the_old_secret_for_its_grace_period() {
        let now = Utc::now();
        let next = generate();
        let next_encoded = next.clone().into_encoded();
        let grace = GracePeriod::parse(Some(2_000)).unwrap();
        let rotated = rotated(&signed(Some(OLD)), next, grace, false, now).unwrap();
        let keys = keys_of(&rotated).unwrap().unwrap();
        let old = SigningSecret::parse(OLD).unwrap();
        let new = SigningSecret::parse(next_encoded.expose_secret()).unwrap();
        let both = keys.signature("msg_1", 1, b"{}", now);
        assert_eq!(
            both,
            format!(
                "{} {}",
                new.sign("msg_1", 1, b"{}"),
                old.sign("msg_1", 1, b"{}")
            )
        );
        let later = now + chrono::Duration::milliseconds(2_000);
        assert_eq!(
            keys.signature("msg_1", 1, b"{}", later),
            new.sign("msg_1", 1, b"{}")
        );

        let view = SigningView::of(&rotated, now).unwrap();
        assert!(view.previous_fingerprint.is_some() && view.previous_expires_at.is_some());
        assert_ne!(Some(view.fingerprint.clone()), view.previous_fingerprint);
        assert_eq!(
            SigningView::of(&rotated, later)
                .unwrap()
                .previous_fingerprint,
            None
        );
    }

    #[test]
    fn a_second_rotation_inside_the_grace_period_needs_force() {
        let now = Utc::now();
        let grace = GracePeriod::parse(None).unwrap();
        let once = rotated(&signed(Some(OLD)), generate(), grace, false, now).unwrap();
        let refused = rotated(&once, generate(), grace, false, now).unwrap_err();
        assert!(matches!(refused, RotationError::StillInGrace { .. }));
        let forced = rotated(&once, generate(), grace, true, now).unwrap();
        // The oldest secret is gone; the one just replaced is the previous.
        assert_eq!(
            forced
                .previous_signing_secret
                .as_ref()
                .map(|s| s.expose_secret().to_owned()),
            once.signing_secret
                .as_ref()
                .map(|s| s.expose_secret().to_owned())
        );
        // Once the grace period is over, no force is needed.
        let after = now + chrono::Duration::from_std(DEFAULT_GRACE_PERIOD).unwrap();
        assert!(rotated(&once, generate(), grace, false, after).is_ok());
    }

    #[test]
    fn an_unsigned_consumer_or_no_grace_keeps_no_previous_secret() {
        let now = Utc::now();
        let grace = GracePeriod::parse(Some(0)).unwrap();
        let rotated_now = rotated(&signed(Some(OLD)), generate(), grace, false, now).unwrap();
        assert!(rotated_now.previous_signing_secret.is_none());
        let first = rotated(
            &signed(None),
            generate(),
            GracePeriod::parse(None).unwrap(),
            false,
            now,
        )
        .unwrap();
        assert!(first.signing_secret.is_some() && first.previous_signing_secret.is_none());
    }

    #[test]
    fn grace_periods_are_bounded_and_fingerprints_hide_the_secret() {
        assert_eq!(
            GracePeriod::parse(Some(604_800_001)).unwrap_err().field,
            "gracePeriodMs"
        );
        assert!(GracePeriod::parse(Some(604_800_000)).is_ok());
        let view = SigningView::of(&signed(Some(OLD)), Utc::now()).unwrap();
        assert!(view.fingerprint.starts_with("sha256:") && view.fingerprint.len() == 23);
        assert!(!view.fingerprint.contains("MfKQ"));
    }
}

//! The API-key format, in one place: `wrmq_<keyId>_<secret>`, where `keyId`
//! is 128 random bits in lowercase hex (it names the key in the store and in
//! listings) and `secret` is 256 random bits, base64url without padding.
//!
//! The store keeps only the SHA-256 of the secret. A plain digest (no bcrypt,
//! no pepper) is enough because the secret is 256 random bits: nobody can
//! search that space, whatever the hash costs, so a leaked digest gives away
//! nothing usable. bcrypt's slowness only helps low-entropy passwords; here
//! it would only let a flood of bearer requests burn the CPU. A server-side
//! pepper (HMAC) would add a secret every replica must share, and losing or
//! rotating it would invalidate every key, for no gain at this entropy.

use std::fmt;

use base64::Engine;
use rand::rngs::SysRng;
use rand::{rand_core::UnwrapErr, Rng};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of every API key the gateway mints.
pub const API_KEY_PREFIX: &str = "wrmq_";
const KEY_ID_BYTES: usize = 16;
const SECRET_BYTES: usize = 32;

/// Why a presented API key or key id was refused before any lookup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    /// The whole key does not have the `wrmq_<keyId>_<secret>` shape.
    #[error("an API key looks like `wrmq_<keyId>_<secret>`")]
    Malformed,
    /// A key id on its own (as in a revoke path) is not 32 lowercase hex characters.
    #[error("a key id is 32 lowercase hexadecimal characters")]
    MalformedKeyId,
}

/// Names a key: public, shown in listings, used to revoke it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// Accepts only the canonical form, so one key has exactly one id to look up.
    pub fn parse(raw: &str) -> Result<KeyId, ApiKeyError> {
        let well_formed = raw.len() == KEY_ID_BYTES * 2
            && raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if well_formed {
            Ok(KeyId(raw.to_owned()))
        } else {
            Err(ApiKeyError::MalformedKeyId)
        }
    }

    /// The id as stored and shown in listings.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A whole API key. Made only by `mint` or `parse`, so holding one means
/// the format is right; `Debug` never shows the secret.
pub struct ApiKey {
    key_id: KeyId,
    secret: SecretString,
}

impl ApiKey {
    /// A new key from the operating system's random source.
    pub fn mint() -> ApiKey {
        let mut id = [0u8; KEY_ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        // Panics only if the OS has no randomness to give, as `OsRng` did.
        let mut os = UnwrapErr(SysRng);
        os.fill_bytes(&mut id);
        os.fill_bytes(&mut secret);
        let key_id = id.iter().map(|b| format!("{b:02x}")).collect();
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        ApiKey {
            key_id: KeyId(key_id),
            secret: SecretString::from(secret),
        }
    }

    /// Reads a presented key (the value after `Bearer `).
    pub fn parse(raw: &str) -> Result<ApiKey, ApiKeyError> {
        let rest = raw
            .strip_prefix(API_KEY_PREFIX)
            .ok_or(ApiKeyError::Malformed)?;
        let (key_id, secret) = rest.split_once('_').ok_or(ApiKeyError::Malformed)?;
        let key_id = KeyId::parse(key_id).map_err(|_| ApiKeyError::Malformed)?;
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(secret)
            .map_err(|_| ApiKeyError::Malformed)?;
        if decoded.len() != SECRET_BYTES {
            return Err(ApiKeyError::Malformed);
        }
        Ok(ApiKey {
            key_id,
            secret: SecretString::from(secret.to_owned()),
        })
    }

    /// The public part, which names the key in the store.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// What the store keeps to check this key against.
    pub fn digest(&self) -> SecretDigest {
        SecretDigest(Sha256::digest(self.secret.expose_secret().as_bytes()).into())
    }

    /// The key as the caller must present it: shown once, when minted.
    pub fn reveal(&self) -> SecretString {
        SecretString::from(format!(
            "{API_KEY_PREFIX}{}_{}",
            self.key_id,
            self.secret.expose_secret()
        ))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("key_id", &self.key_id)
            .field("secret", &"***")
            .finish()
    }
}

/// SHA-256 of a key's secret. Compared in constant time, so how long a
/// refusal takes tells nothing about how much of the digest matched.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    /// Whether both digests are the same, compared in constant time.
    pub fn matches(&self, other: &SecretDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// Lowercase hex, as the store keeps it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads a digest back from the store's hex; `None` unless exactly 64 hex characters.
    pub fn from_hex(hex: &str) -> Option<SecretDigest> {
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).ok()?;
        }
        Some(SecretDigest(bytes))
    }
}

impl fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretDigest(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_key_parses_back_to_the_same_id_and_digest() {
        let key = ApiKey::mint();
        let shown = key.reveal();
        let parsed = ApiKey::parse(shown.expose_secret()).expect("a minted key parses");
        assert_eq!(parsed.key_id(), key.key_id());
        assert!(parsed.digest().matches(&key.digest()));
        assert!(!format!("{key:?}").contains(key.secret.expose_secret()));
    }

    #[test]
    fn debug_never_shows_the_secret_or_its_digest() {
        let key = ApiKey::mint();
        let revealed = key.reveal();
        let digest = key.digest();
        for shown in [
            format!("{key:?}"),
            format!("{revealed:?}"),
            format!("{digest:?}"),
        ] {
            assert!(!shown.contains(key.secret.expose_secret()), "{shown}");
            assert!(!shown.contains(&digest.to_hex()), "{shown}");
        }
    }

    #[test]
    fn malformed_keys_are_refused() {
        let key = ApiKey::mint();
        let id = key.key_id().to_string();
        for raw in [
            "wrmq_abc_def".to_owned(),
            format!("other_{id}_{}", "A".repeat(43)),
            format!("wrmq_{id}_"),
            format!("wrmq_{id}_short"),
            format!("wrmq_{}_{}", id.to_uppercase(), "A".repeat(43)),
            format!("wrmq_{id}_{}", "!".repeat(43)),
        ] {
            assert_eq!(
                ApiKey::parse(&raw).err(),
                Some(ApiKeyError::Malformed),
                "{raw}"
            );
        }
    }

    #[test]
    fn another_secret_does_not_match() {
        let key = ApiKey::mint();
        let id = key.key_id().to_string();
        let forged = ApiKey::parse(&format!("wrmq_{id}_{}", "A".repeat(43))).expect("well formed");
        assert!(!forged.digest().matches(&key.digest()));
    }

    #[test]
    fn digests_round_trip_through_hex() {
        let digest = ApiKey::mint().digest();
        let back = SecretDigest::from_hex(&digest.to_hex()).expect("valid hex");
        assert!(back.matches(&digest));
        assert!(SecretDigest::from_hex("zz").is_none());
        assert!(SecretDigest::from_hex(&"é".repeat(32)).is_none());
    }
}

//! Sealing the secrets the gateway must keep in clear to use them (signing
//! secrets, target credentials): AES-256-GCM under `SECRETS_KEY`.
//!
//! A sealed value is one self-describing string,
//! `enc:v1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`, so it stays a
//! string wherever the plain value was one and a reader can tell which key
//! sealed it: the key id is the first 4 bytes of the key's SHA-256 in hex,
//! which names the key without telling anything about it. The nonce is 96
//! random bits per seal (at the few thousand seals a gateway makes, a
//! repeat is out of reach); the prefix and key id are the associated data,
//! so they cannot be changed either.
//!
//! A value without the prefix is plain, as versions before sealing stored
//! it: `open` hands it back and says so, and the start-up migration seals
//! it. One under `SECRETS_KEY_PREVIOUS` opens too, and is sealed again
//! under the current key.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};
use aes_gcm::Aes256Gcm;
use base64::Engine;
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use rand::Rng;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

/// What every sealed value starts with; the version is that of the format.
pub const SEALED_PREFIX: &str = "enc:v1:";

const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;
const KEY_ID_BYTES: usize = 4;

/// One AES-256 key (`SECRETS_KEY`, `SECRETS_KEY_PREVIOUS`). `Debug` shows
/// its id only.
#[derive(Clone)]
pub struct SecretsKey {
    cipher: Aes256Gcm,
    id: String,
}

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretsKey").field("id", &self.id).finish()
    }
}

/// Why a configured key is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsKeyError {
    /// Not base64 at all.
    #[error("is not base64 (generate one with `openssl rand -base64 32`)")]
    NotBase64,
    /// Base64, but not of 32 bytes.
    #[error("is {bytes} bytes once decoded; it must be 32 random bytes, base64 (`openssl rand -base64 32`)")]
    WrongLength {
        /// How many bytes it decoded to.
        bytes: usize,
    },
}

impl SecretsKey {
    /// A key from its base64 (standard or URL-safe, padded or not).
    pub fn from_base64(raw: &str) -> Result<Self, SecretsKeyError> {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        let raw = raw.trim();
        let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(raw).ok())
            .ok_or(SecretsKeyError::NotBase64)?;
        let bytes: [u8; KEY_BYTES] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SecretsKeyError::WrongLength { bytes: bytes.len() })?;
        Ok(Self::from_bytes(&bytes))
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; KEY_BYTES]) -> Self {
        let digest = Sha256::digest(bytes);
        let id = digest[..KEY_ID_BYTES]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            cipher: Aes256Gcm::new(bytes.into()),
            id,
        }
    }

    /// A new random key and its base64, as `SECRETS_KEY` takes it.
    pub fn generate() -> (Self, SecretString) {
        let mut bytes = [0u8; KEY_BYTES];
        // Panics only if the OS has no randomness to give.
        UnwrapErr(SysRng).fill_bytes(&mut bytes);
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
        (Self::from_bytes(&bytes), SecretString::from(encoded))
    }

    /// The id sealed values name this key by.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Which key a stored value was under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedUnder {
    /// The current key: nothing to do.
    Current,
    /// `SECRETS_KEY_PREVIOUS`: to be sealed again under the current key.
    Previous,
    /// Not sealed (stored by a version before sealing): to be sealed.
    Plain,
}

/// A stored value, opened.
pub struct Opened {
    /// The secret in clear.
    pub secret: SecretString,
    /// Which key it was under.
    pub under: SealedUnder,
}

/// Why a stored value does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Sealed under a key that is neither `SECRETS_KEY` nor `SECRETS_KEY_PREVIOUS`.
    #[error("a stored secret is sealed under key {key_id}, which is neither SECRETS_KEY ({current}) nor SECRETS_KEY_PREVIOUS{previous}")]
    UnknownKey {
        /// The key id the value names.
        key_id: String,
        /// The current key's id.
        current: String,
        /// The previous key's id, as ` (<id>)`, or ` (not set)`.
        previous: String,
    },
    /// Under a known key id, but it does not open: altered, or cut short.
    #[error(
        "a stored secret under key {key_id} does not open with that key: it was altered or damaged"
    )]
    Rejected {
        /// The key id the value names.
        key_id: String,
    },
    /// Starts like a sealed value but is not one.
    #[error("a stored secret starts like a sealed value ({SEALED_PREFIX}) but is malformed")]
    Malformed,
}

/// Seals with `SECRETS_KEY`; opens what that key or `SECRETS_KEY_PREVIOUS`
/// sealed.
#[derive(Debug, Clone)]
pub struct SecretsCipher {
    current: SecretsKey,
    previous: Option<SecretsKey>,
}

impl SecretsCipher {
    /// Seals under `current`; opens under either.
    pub fn new(current: SecretsKey, previous: Option<SecretsKey>) -> Self {
        Self { current, previous }
    }

    /// The current key's id.
    pub fn key_id(&self) -> &str {
        self.current.id()
    }

    /// `plain` sealed under the current key, with a fresh nonce.
    pub fn seal(&self, plain: &str) -> String {
        let mut nonce = [0u8; NONCE_BYTES];
        UnwrapErr(SysRng).fill_bytes(&mut nonce);
        let header = format!("{SEALED_PREFIX}{}:", self.current.id);
        let sealed = self
            .current
            .cipher
            .encrypt(
                <&Nonce<Aes256Gcm>>::from(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: header.as_bytes(),
                },
            )
            // AES-GCM fails only past 64 GiB per message.
            .unwrap_or_default();
        let mut body = Vec::with_capacity(NONCE_BYTES + sealed.len());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&sealed);
        format!(
            "{header}{}",
            base64::engine::general_purpose::STANDARD.encode(body)
        )
    }

    /// Whether `stored` is a sealed value (of any key).
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(SEALED_PREFIX)
    }

    /// The secret in `stored`, and which key it was under; a plain value
    /// comes back as it is.
    pub fn open(&self, stored: &str) -> Result<Opened, OpenError> {
        let Some(rest) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(Opened {
                secret: SecretString::from(stored.to_owned()),
                under: SealedUnder::Plain,
            });
        };
        let (key_id, body) = rest.split_once(':').ok_or(OpenError::Malformed)?;
        let (key, under) = if key_id == self.current.id {
            (&self.current, SealedUnder::Current)
        } else {
            match &self.previous {
                Some(previous) if key_id == previous.id => (previous, SealedUnder::Previous),
                _ => {
                    return Err(OpenError::UnknownKey {
                        key_id: key_id.to_owned(),
                        current: self.current.id.clone(),
                        previous: match &self.previous {
                            Some(p) => format!(" ({})", p.id),
                            None => " (not set)".to_owned(),
                        },
                    })
                }
            }
        };
        let body = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| OpenError::Malformed)?;
        if body.len() < NONCE_BYTES {
            return Err(OpenError::Malformed);
        }
        let (nonce, sealed) = body.split_at(NONCE_BYTES);
        let nonce = <&Nonce<Aes256Gcm>>::try_from(nonce).map_err(|_| OpenError::Malformed)?;
        let header = &stored[..SEALED_PREFIX.len() + key_id.len() + 1];
        let plain = key
            .cipher
            .decrypt(
                nonce,
                Payload {
                    msg: sealed,
                    aad: header.as_bytes(),
                },
            )
            .map_err(|_| OpenError::Rejected {
                key_id: key_id.to_owned(),
            })?;
        let plain = String::from_utf8(plain).map_err(|_| OpenError::Rejected {
            key_id: key_id.to_owned(),
        })?;
        Ok(Opened {
            secret: SecretString::from(plain),
            under,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn cipher() -> SecretsCipher {
        SecretsCipher::new(SecretsKey::generate().0, None)
    }

    #[test]
    fn a_sealed_value_opens_to_what_was_sealed_and_shows_nothing_of_it() {
        let cipher = cipher();
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let sealed = cipher.seal(secret);
        assert!(sealed.starts_with(&format!("enc:v1:{}:", cipher.key_id())));
        assert!(!sealed.contains("MfKQ9r8"));
        let opened = cipher.open(&sealed).expect("it opens");
        assert_eq!(opened.secret.expose_secret(), secret);
        assert_eq!(opened.under, SealedUnder::Current);
        assert_ne!(cipher.seal(secret), sealed, "a fresh nonce every time");
        assert_eq!(
            cipher.open("").expect("empty opens").secret.expose_secret(),
            ""
        );
    }

    #[test]
    fn another_key_does_not_open_it_and_names_the_key() {
        let sealed = cipher().seal("s3cret");
        let other = cipher();
        match other.open(&sealed) {
            Err(OpenError::UnknownKey { current, .. }) => assert_eq!(current, other.key_id()),
            other => panic!("{:?}", other.map(|o| o.under)),
        }
    }

    #[test]
    fn an_altered_value_is_rejected() {
        let cipher = cipher();
        let sealed = cipher.seal("s3cret");
        let (header, body) = sealed.rsplit_once(':').expect("a sealed value");
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("base64");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let altered = format!(
            "{header}:{}",
            base64::engine::general_purpose::STANDARD.encode(&bytes)
        );
        assert!(matches!(
            cipher.open(&altered),
            Err(OpenError::Rejected { .. })
        ));
        assert_eq!(
            cipher.open("enc:v1:nothing").err(),
            Some(OpenError::Malformed)
        );
        assert_eq!(
            cipher
                .open(&format!("enc:v1:{}:AAAA", cipher.key_id()))
                .err(),
            Some(OpenError::Malformed)
        );
    }

    #[test]
    fn the_previous_key_opens_what_it_sealed_and_says_so() {
        let (old, _) = SecretsKey::generate();
        let sealed_before = SecretsCipher::new(old.clone(), None).seal("rotated");
        let (new, _) = SecretsKey::generate();
        let cipher = SecretsCipher::new(new, Some(old));
        let opened = cipher
            .open(&sealed_before)
            .expect("the previous key opens it");
        assert_eq!(opened.secret.expose_secret(), "rotated");
        assert_eq!(opened.under, SealedUnder::Previous);
        let resealed = cipher.seal("rotated");
        assert_eq!(
            cipher.open(&resealed).expect("it opens").under,
            SealedUnder::Current
        );
    }

    #[test]
    fn a_plain_value_comes_back_as_plain() {
        let opened = cipher().open("from-an-older-version").expect("plain");
        assert_eq!(opened.under, SealedUnder::Plain);
        assert_eq!(opened.secret.expose_secret(), "from-an-older-version");
    }

    #[test]
    fn a_key_is_32_bytes_of_base64() {
        let (key, encoded) = SecretsKey::generate();
        let again = SecretsKey::from_base64(encoded.expose_secret()).expect("its own base64");
        assert_eq!(again.id(), key.id());
        assert_eq!(
            SecretsKey::from_base64("not base64!").err(),
            Some(SecretsKeyError::NotBase64)
        );
        assert_eq!(
            SecretsKey::from_base64("c2hvcnQ=").err(),
            Some(SecretsKeyError::WrongLength { bytes: 5 })
        );
        assert!(!format!("{key:?}").contains(encoded.expose_secret()));
    }
}

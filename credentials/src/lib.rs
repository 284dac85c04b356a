//! `credentials` owns what a credential is, apart from HTTP and from MongoDB:
//! the roles, the API-key format (`wrmq_<keyId>_<secret>`) and the digest it
//! is checked against, bcrypt for passwords run at most one per core, and the
//! `CredentialStore` trait through which the authenticator (`middlewares`)
//! reads accounts and keys that the store (`services`) keeps, and the seal
//! (`SECRETS_KEY`) the secrets the store keeps in clear-to-use form are
//! stored under.
//!
//! It is its own small crate so both sides can share these types while
//! dependencies still point one way: `middlewares` needs no MongoDB,
//! `services` needs no actix.

pub mod api_key;
pub mod password;
pub mod role;
pub mod sealing;
pub mod secret_serde;
pub mod store;

pub use api_key::{ApiKey, ApiKeyError, KeyId, SecretDigest, API_KEY_PREFIX};
pub use role::Role;
pub use sealing::{OpenError, SealedUnder, SecretsCipher, SecretsKey, SecretsKeyError};
pub use secrecy::{ExposeSecret, SecretString};
pub use store::{AccountCredential, ApiKeyCredential, CredentialStore, CredentialStoreUnavailable};

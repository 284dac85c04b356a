//! What the authenticator needs from the store, and nothing more: find an
//! account or an API key, and note that a key was used. `services::Store`
//! implements it over MongoDB; the authenticator only sees this trait.

use std::time::SystemTime;

use crate::{KeyId, Role, SecretDigest};

/// The store could not answer. The text is for the log only: it may name
/// hosts or carry driver details, so it never goes into a response.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the credential store is unavailable: {0}")]
pub struct CredentialStoreUnavailable(pub String);

/// An operator account: a name and password checked with bcrypt.
#[derive(Debug, Clone)]
pub struct AccountCredential {
    pub username: String,
    pub role: Role,
    pub bcrypt_hash: String,
}

/// An API key as stored. `digest` is `None` for a key stored before keys
/// were checked by digest (it held a bcrypt hash): such a key is refused,
/// and an operator mints a new one.
#[derive(Debug, Clone)]
pub struct ApiKeyCredential {
    pub key_id: KeyId,
    pub name: String,
    pub role: Role,
    pub digest: Option<SecretDigest>,
}

#[async_trait::async_trait]
pub trait CredentialStore: Send + Sync + 'static {
    async fn find_account(
        &self,
        username: &str,
    ) -> Result<Option<AccountCredential>, CredentialStoreUnavailable>;

    async fn find_api_key(
        &self,
        key_id: &KeyId,
    ) -> Result<Option<ApiKeyCredential>, CredentialStoreUnavailable>;

    /// Records that the key was used at `at` (shown as `lastUsedAt`).
    async fn touch_api_key(
        &self,
        key_id: &KeyId,
        at: SystemTime,
    ) -> Result<(), CredentialStoreUnavailable>;
}

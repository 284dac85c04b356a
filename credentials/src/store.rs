//! What the authenticator needs from the store, and nothing more: find an
//! account or an API key, and note that a key was used. `services::Store`
//! implements it over MongoDB; the authenticator only sees this trait.

use std::time::SystemTime;

use crate::{KeyId, Role, SecretDigest};

/// The store could not answer. The cause is for the log only: it may name
/// hosts or carry driver details, so it never goes into a response.
#[derive(Debug, thiserror::Error)]
#[error("the credential store is unavailable")]
pub struct CredentialStoreUnavailable(#[source] Box<dyn std::error::Error + Send + Sync + 'static>);

impl CredentialStoreUnavailable {
    /// The store's own error (the driver's) as the cause.
    pub fn new(cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self(cause.into())
    }
}

/// An operator account: a name and password checked with bcrypt.
#[derive(Clone)]
pub struct AccountCredential {
    /// The login name, matched exactly.
    pub username: String,
    /// What the account may do.
    pub role: Role,
    /// Not the password, but enough to guess it offline: never in `Debug`.
    pub bcrypt_hash: String,
}

impl std::fmt::Debug for AccountCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountCredential")
            .field("username", &self.username)
            .field("role", &self.role)
            .field("bcrypt_hash", &"***")
            .finish()
    }
}

/// An API key as stored. `digest` is `None` for a key stored before keys
/// were checked by digest (it held a bcrypt hash): such a key is refused,
/// and an operator mints a new one.
#[derive(Debug, Clone)]
pub struct ApiKeyCredential {
    /// The public part of the key, which it was found by.
    pub key_id: KeyId,
    /// A label the operator chose, to tell keys apart in listings.
    pub name: String,
    /// What a request made with the key may do.
    pub role: Role,
    /// SHA-256 of the secret; `None` for a key from before digests (refused).
    pub digest: Option<SecretDigest>,
}

/// The lookups the authenticator needs. A missing account or key is `Ok(None)`, not an error: only
/// a store that cannot answer is one.
#[async_trait::async_trait]
pub trait CredentialStore: Send + Sync + 'static {
    /// The account named `username`, if there is one.
    async fn find_account(
        &self,
        username: &str,
    ) -> Result<Option<AccountCredential>, CredentialStoreUnavailable>;

    /// The key named `key_id`, if the store has it.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ApiKey;

    #[test]
    fn debug_never_shows_a_hash_or_a_digest() {
        let hash = "$2b$12$abcdefghijklmnopqrstuuOq6sm8S1rHk4R0F3g7l0h6bB4q0lS5S";
        let account = AccountCredential {
            username: "ops".into(),
            role: Role::Admin,
            bcrypt_hash: hash.into(),
        };
        let shown = format!("{account:?}");
        assert!(!shown.contains(hash), "{shown}");
        assert!(shown.contains("ops"), "{shown}");

        let key = ApiKey::mint();
        let digest = key.digest();
        let credential = ApiKeyCredential {
            key_id: key.key_id().clone(),
            name: "ci".into(),
            role: Role::Viewer,
            digest: Some(digest.clone()),
        };
        let shown = format!("{credential:?}");
        assert!(!shown.contains(&digest.to_hex()), "{shown}");
    }
}

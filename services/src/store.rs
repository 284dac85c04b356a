//! The MongoDB store: operator accounts and API keys (also seen by the
//! authenticator through `credentials::CredentialStore`) and, with the
//! consumer engine, the consumer registry. Short timeouts everywhere: a
//! store that is down must turn into a quick 503, never a hung request.

use std::time::{Duration, SystemTime};

use credentials::{
    password, AccountCredential, ApiKey, ApiKeyCredential, CredentialStore,
    CredentialStoreUnavailable, KeyId, SecretDigest, SecretString,
};
use futures_util::TryStreamExt;

use mongodb::bson::doc;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

/// What the store was doing when it failed ("reading consumer `x`").
pub type Doing = std::borrow::Cow<'static, str>;

/// A store failure: what was being done, with the driver's error beneath.
/// The driver's text names hosts, collections and key values: it is for
/// the log (`gateway::Chain`), never for an answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// MongoDB did not answer, or failed the operation: worth retrying later.
    #[error("the store is unavailable ({doing})")]
    Unavailable {
        /// What the gateway was asking of the store.
        doing: Doing,
        /// The driver's error.
        #[source]
        source: mongodb::error::Error,
    },
    /// A unique index refused the write (MongoDB's code 11000).
    #[error("a record with that key already exists ({doing})")]
    Duplicate {
        /// What the gateway was asking of the store.
        doing: Doing,
        /// The driver's error.
        #[source]
        source: mongodb::error::Error,
    },
    /// A record could not be turned into a document (a bug, or a value
    /// BSON cannot hold).
    #[error("cannot encode the record ({doing})")]
    Encode {
        /// What the gateway was asking of the store.
        doing: Doing,
        /// BSON's error.
        #[source]
        source: Box<mongodb::bson::ser::Error>,
    },
    /// The bootstrap admin's password could not be hashed.
    #[error("cannot set up the bootstrap admin")]
    Hash(#[source] password::HashError),
    /// A record's sealed secrets do not open under `SECRETS_KEY` (nor
    /// `SECRETS_KEY_PREVIOUS`), or the record does not fit its type.
    #[error("cannot read the record's sealed secrets ({doing})")]
    Sealed {
        /// What the gateway was asking of the store.
        doing: Doing,
        /// Why they do not open.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl StoreError {
    /// Classifies the driver's error; `doing` says what was asked.
    pub fn mongo(doing: impl Into<Doing>, source: mongodb::error::Error) -> Self {
        let doing = doing.into();
        if is_duplicate_key(&source) {
            StoreError::Duplicate { doing, source }
        } else {
            StoreError::Unavailable { doing, source }
        }
    }

    /// An `Encode` error for `source`; `doing` says what was being written.
    pub fn encode(doing: impl Into<Doing>, source: mongodb::bson::ser::Error) -> Self {
        StoreError::Encode {
            doing: doing.into(),
            source: Box::new(source),
        }
    }
}

/// `?` where no more is known than that MongoDB was asked something; say
/// what with `StoreContext::doing` where it is known.
impl From<mongodb::error::Error> for StoreError {
    fn from(err: mongodb::error::Error) -> Self {
        StoreError::mongo("talking to MongoDB", err)
    }
}

/// Context for driver results: `collection.find_one(..).await.doing(|| …)`.
pub trait StoreContext<T> {
    /// Wraps the driver's error with `what` the gateway was doing; `what` is built only on failure.
    fn doing<D: Into<Doing>>(self, what: impl FnOnce() -> D) -> Result<T, StoreError>;
}

impl<T> StoreContext<T> for Result<T, mongodb::error::Error> {
    fn doing<D: Into<Doing>>(self, what: impl FnOnce() -> D) -> Result<T, StoreError> {
        self.map_err(|err| StoreError::mongo(what(), err))
    }
}

/// MongoDB's duplicate-key error, told by its code (11000) wherever the
/// driver puts it; never by its text.
pub fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    const DUPLICATE_KEY: i32 = 11000;
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(e) => e
            .write_errors
            .iter()
            .flatten()
            .any(|w| w.code == DUPLICATE_KEY),
        _ => false,
    }
}

pub use credentials::Role;

/// No `Debug`: the hash is enough to guess the password offline.
#[derive(Serialize, Deserialize)]
struct AccountDoc {
    #[serde(rename = "_id")]
    username: String,
    #[serde(rename = "passwordHash")]
    password_hash: String,
    role: Role,
    #[serde(rename = "updatedAt")]
    updated_at: DateTime,
}

/// An API key as stored: never the key itself, only the SHA-256 of its
/// secret. Documents written before keys were checked by digest carry a
/// bcrypt `secretHash` instead and no `secretSha256`; they are listed (so
/// they can be deleted) but refused. `Debug` shows no digest.
#[derive(Clone, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// The key's public id, in hex.
    #[serde(rename = "_id")]
    pub key_id: String,
    /// A label the operator chose, to tell keys apart.
    pub name: String,
    /// What a request made with the key may do.
    pub role: Role,
    /// SHA-256 of the key's secret, in lowercase hex; absent on keys from before digests, which are
    /// refused.
    #[serde(
        rename = "secretSha256",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub secret_sha256: Option<String>,
    /// When the key was minted.
    #[serde(rename = "createdAt")]
    pub created_at: DateTime,
    /// When the key was last accepted; written at most once per `touch_interval` per replica.
    #[serde(
        rename = "lastUsedAt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub last_used_at: Option<DateTime>,
}

impl std::fmt::Debug for ApiKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyRecord")
            .field("key_id", &self.key_id)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("secret_sha256", &self.secret_sha256.as_ref().map(|_| "***"))
            .field("created_at", &self.created_at)
            .field("last_used_at", &self.last_used_at)
            .finish()
    }
}

impl ApiKeyRecord {
    /// The record for a freshly minted key.
    pub fn new(key: &ApiKey, name: String, role: Role) -> Self {
        Self {
            key_id: key.key_id().to_string(),
            name,
            role,
            secret_sha256: Some(key.digest().to_hex()),
            created_at: DateTime::now(),
            last_used_at: None,
        }
    }
}

/// The gateway's MongoDB database: accounts, API keys, consumers and replica records. Cheap to
/// clone: clones share the client.
#[derive(Clone)]
pub struct Store {
    db: Database,
    /// Seals the secrets the store keeps in clear-to-use form (`SECRETS_KEY`).
    secrets: std::sync::Arc<credentials::SecretsCipher>,
}

impl Store {
    /// Builds the client; does not wait for the server (the driver connects
    /// lazily), so a store that is down does not stop start-up.
    /// Secrets the collections keep (consumers' signing secrets and target
    /// credentials) are sealed with `secrets`.
    pub async fn connect(
        uri: &str,
        database: &str,
        secrets: credentials::SecretsCipher,
    ) -> Result<Store, StoreError> {
        let mut options = ClientOptions::parse(uri)
            .await
            .doing(|| "reading MONGODB_URI")?;
        options.app_name = Some("workerrmq".into());
        options.server_selection_timeout = Some(Duration::from_secs(2));
        options.connect_timeout = Some(Duration::from_secs(2));
        let client = Client::with_options(options).doing(|| "creating the MongoDB client")?;
        Ok(Store {
            db: client.database(database),
            secrets: std::sync::Arc::new(secrets),
        })
    }

    /// What seals the secrets the store keeps.
    pub fn secrets(&self) -> &std::sync::Arc<credentials::SecretsCipher> {
        &self.secrets
    }

    /// The database, for the collections other modules own.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Asks the server to answer a `ping`; what `/ready` checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .run_command(doc! { "ping": 1 })
            .await
            .doing(|| "pinging MongoDB")?;
        Ok(())
    }

    fn accounts(&self) -> Collection<AccountDoc> {
        self.db.collection("accounts")
    }

    fn api_keys(&self) -> Collection<ApiKeyRecord> {
        self.db.collection("api_keys")
    }

    /// Creates the indexes the gateway's queries need; creating one that exists is a no-op, so
    /// every start-up runs it.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        // Deleting a consumer by queue and deleting a queue both look
        // consumers up by queue name; without this index each is a scan
        // of every definition (seconds apiece at 10,000 on SecantusDB).
        self.db
            .collection::<mongodb::bson::Document>("consumers")
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "queueName": 1 })
                    .options(IndexOptions::builder().unique(false).build())
                    .build(),
            )
            .await
            .doing(|| "creating the index of consumers by queue")?;
        self.api_keys()
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "name": 1 })
                    .options(IndexOptions::builder().unique(false).build())
                    .build(),
            )
            .await
            .doing(|| "creating the index of API keys by name")?;
        Ok(())
    }

    /// Makes sure the bootstrap admin exists with this password. Hashing is
    /// skipped when the stored hash already matches, so restarts stay fast.
    pub async fn ensure_admin(
        &self,
        username: &str,
        password: &SecretString,
    ) -> Result<(), StoreError> {
        let existing = self
            .accounts()
            .find_one(doc! { "_id": username })
            .await
            .doing(|| format!("reading account `{username}`"))?;
        if let Some(account) = existing {
            let matches = password::verify(password, &account.password_hash).await;
            if matches && account.role == Role::Admin {
                return Ok(());
            }
        }
        let hash = password::hash(password).await.map_err(StoreError::Hash)?;
        self.accounts()
            .replace_one(
                doc! { "_id": username },
                AccountDoc {
                    username: username.to_owned(),
                    password_hash: hash,
                    role: Role::Admin,
                    updated_at: DateTime::now(),
                },
            )
            .upsert(true)
            .await
            .doing(|| format!("writing account `{username}`"))?;
        Ok(())
    }

    /// Stores a minted key; `Duplicate` if its id is taken.
    pub async fn insert_api_key(&self, record: &ApiKeyRecord) -> Result<(), StoreError> {
        self.api_keys()
            .insert_one(record)
            .await
            .doing(|| format!("storing API key `{}`", record.key_id))?;
        Ok(())
    }

    /// Every key, oldest first.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let cursor = self
            .api_keys()
            .find(doc! {})
            .sort(doc! { "createdAt": 1, "_id": 1 })
            .await
            .doing(|| "listing API keys")?;
        cursor.try_collect().await.doing(|| "listing API keys")
    }

    /// Removes the key; `false` when there was none with this id.
    pub async fn delete_api_key(&self, key_id: &KeyId) -> Result<bool, StoreError> {
        let deleted = self
            .api_keys()
            .delete_one(doc! { "_id": key_id.as_str() })
            .await
            .doing(|| format!("deleting API key `{}`", key_id.as_str()))?;
        Ok(deleted.deleted_count > 0)
    }
}

/// The authenticator's view of the store. Implemented here rather than by
/// an adapter in the binary: `credentials` is a small crate with no actix
/// and no MongoDB, so `services` can depend on it and `middlewares` on it,
/// without either depending on the other.
#[async_trait::async_trait]
impl CredentialStore for Store {
    async fn find_account(
        &self,
        username: &str,
    ) -> Result<Option<AccountCredential>, CredentialStoreUnavailable> {
        let account = self
            .accounts()
            .find_one(doc! { "_id": username })
            .await
            .map_err(unavailable)?;
        Ok(account.map(|a| AccountCredential {
            username: a.username,
            role: a.role,
            bcrypt_hash: a.password_hash,
        }))
    }

    async fn find_api_key(
        &self,
        key_id: &KeyId,
    ) -> Result<Option<ApiKeyCredential>, CredentialStoreUnavailable> {
        let record = self
            .api_keys()
            .find_one(doc! { "_id": key_id.as_str() })
            .await
            .map_err(unavailable)?;
        Ok(record.map(|k| ApiKeyCredential {
            key_id: key_id.clone(),
            name: k.name,
            role: k.role,
            digest: k.secret_sha256.as_deref().and_then(SecretDigest::from_hex),
        }))
    }

    async fn touch_api_key(
        &self,
        key_id: &KeyId,
        at: SystemTime,
    ) -> Result<(), CredentialStoreUnavailable> {
        self.api_keys()
            .update_one(
                doc! { "_id": key_id.as_str() },
                doc! { "$max": { "lastUsedAt": DateTime::from_system_time(at) } },
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

fn unavailable(err: mongodb::error::Error) -> CredentialStoreUnavailable {
    CredentialStoreUnavailable::new(err)
}

pub use mongodb::bson::DateTime;

impl Store {
    /// How many registered consumers read from `queue`.
    pub async fn count_consumers_on(&self, queue: &str) -> Result<u64, StoreError> {
        self.db
            .collection::<mongodb::bson::Document>("consumers")
            .count_documents(doc! { "queueName": queue })
            .await
            .doing(|| format!("counting the consumers of queue `{queue}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_key_record_shows_no_digest() {
        let key = ApiKey::mint();
        let record = ApiKeyRecord::new(&key, "ci".into(), Role::Publisher);
        let shown = format!("{record:?}");
        assert!(!shown.contains(&key.digest().to_hex()), "{shown}");
        assert!(shown.contains("ci"), "{shown}");
    }
}

//! The MongoDB store: operator accounts, API keys and (with the consumer
//! engine) the consumer registry. Short timeouts everywhere: a store that is
//! down must turn into a quick 503, never a hung request.

use std::time::Duration;

use mongodb::bson::doc;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Duplicate(String),
}

impl From<mongodb::error::Error> for StoreError {
    fn from(err: mongodb::error::Error) -> Self {
        if is_duplicate_key(&err) {
            StoreError::Duplicate(err.to_string())
        } else {
            StoreError::Unavailable(err.to_string())
        }
    }
}

fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == 11000,
        ErrorKind::Command(e) => e.code == 11000,
        _ => err.to_string().contains("E11000"),
    }
}

/// What an account or API key may do. Ordered: each role can do everything
/// the ones below it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Publisher,
    Admin,
}

impl Role {
    pub fn allows(self, required: Role) -> bool {
        self >= required
    }

    pub fn parse(raw: &str) -> Option<Role> {
        match raw {
            "viewer" => Some(Role::Viewer),
            "publisher" => Some(Role::Publisher),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A stored secret to check a presented one against.
#[derive(Debug, Clone)]
pub struct Credential {
    pub principal: String,
    pub role: Role,
    pub bcrypt_hash: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct AccountDoc {
    #[serde(rename = "_id")]
    username: String,
    #[serde(rename = "passwordHash")]
    password_hash: String,
    role: Role,
    #[serde(rename = "updatedAt")]
    updated_at: DateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    #[serde(rename = "_id")]
    pub key_id: String,
    pub name: String,
    pub role: Role,
    #[serde(rename = "secretHash")]
    pub secret_hash: String,
    #[serde(rename = "createdAt")]
    pub created_at: DateTime,
}

#[derive(Clone)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Builds the client; does not wait for the server (the driver connects
    /// lazily), so a store that is down does not stop start-up.
    pub async fn connect(uri: &str, database: &str) -> Result<Store, StoreError> {
        let mut options = ClientOptions::parse(uri).await?;
        options.app_name = Some("workerrmq".into());
        options.server_selection_timeout = Some(Duration::from_secs(2));
        options.connect_timeout = Some(Duration::from_secs(2));
        let client = Client::with_options(options)?;
        Ok(Store {
            db: client.database(database),
        })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.run_command(doc! { "ping": 1 }).await?;
        Ok(())
    }

    fn accounts(&self) -> Collection<AccountDoc> {
        self.db.collection("accounts")
    }

    fn api_keys(&self) -> Collection<ApiKeyRecord> {
        self.db.collection("api_keys")
    }

    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        self.api_keys()
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "name": 1 })
                    .options(IndexOptions::builder().unique(false).build())
                    .build(),
            )
            .await?;
        Ok(())
    }

    /// Makes sure the bootstrap admin exists with this password. Hashing is
    /// skipped when the stored hash already matches, so restarts stay fast.
    pub async fn ensure_admin(&self, username: &str, password: &str) -> Result<(), StoreError> {
        let existing = self.accounts().find_one(doc! { "_id": username }).await?;
        if let Some(account) = existing {
            let (password, hash) = (password.to_owned(), account.password_hash.clone());
            let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(false);
            if matches && account.role == Role::Admin {
                return Ok(());
            }
        }
        let hash = hash_secret(password).await?;
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
            .await?;
        Ok(())
    }

    pub async fn find_account(&self, username: &str) -> Result<Option<Credential>, StoreError> {
        Ok(self
            .accounts()
            .find_one(doc! { "_id": username })
            .await?
            .map(|a| Credential {
                principal: a.username,
                role: a.role,
                bcrypt_hash: a.password_hash,
            }))
    }

    pub async fn insert_api_key(&self, record: &ApiKeyRecord) -> Result<(), StoreError> {
        self.api_keys().insert_one(record).await?;
        Ok(())
    }

    pub async fn find_api_key(&self, key_id: &str) -> Result<Option<Credential>, StoreError> {
        Ok(self
            .api_keys()
            .find_one(doc! { "_id": key_id })
            .await?
            .map(|k| Credential {
                principal: format!("apikey:{}", k.name),
                role: k.role,
                bcrypt_hash: k.secret_hash,
            }))
    }
}

/// bcrypt is slow on purpose; keep it off the async workers.
pub async fn hash_secret(secret: &str) -> Result<String, StoreError> {
    let secret = secret.to_owned();
    tokio::task::spawn_blocking(move || bcrypt::hash(secret, bcrypt::DEFAULT_COST))
        .await
        .map_err(|e| StoreError::Unavailable(format!("hashing task failed: {e}")))?
        .map_err(|e| StoreError::Unavailable(format!("hashing failed: {e}")))
}

pub use mongodb::bson::DateTime;

impl Store {
    /// How many registered consumers read from `queue`.
    pub async fn count_consumers_on(&self, queue: &str) -> Result<u64, StoreError> {
        Ok(self
            .db
            .collection::<mongodb::bson::Document>("consumers")
            .count_documents(doc! { "queueName": queue })
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::Role;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.allows(Role::Publisher));
        assert!(Role::Publisher.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Publisher));
        assert!(!Role::Publisher.allows(Role::Admin));
        assert_eq!(Role::parse("admin"), Some(Role::Admin));
        assert_eq!(Role::parse("root"), None);
    }
}

//! The `consumers` collection with its secrets sealed (`SECRETS_KEY`,
//! `credentials::sealing`): every write seals the values at
//! `SECRET_FIELDS`, every read opens them, so the rest of the registry only
//! ever sees definitions in clear and the store only ever holds them sealed.
//!
//! The fields are listed by path, so a new secret field is one line here:
//! `a.b` is a field, `a.*` every value of the sub-document `a` (a target's
//! headers, which usually carry credentials). A path a document does not
//! have is skipped.
//!
//! `seal_stored` is the start-up migration: plain values stored by versions
//! before sealing, and values under `SECRETS_KEY_PREVIOUS`, are sealed
//! under `SECRETS_KEY`; a value under any other key stops start-up.

use std::sync::Arc;

use credentials::{OpenError, SealedUnder, SecretsCipher};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Collection;
use secrecy::ExposeSecret;

use super::ConsumerDefinition;
use crate::{StoreContext, StoreError};

/// Every secret a consumer definition stores, by path.
pub const SECRET_FIELDS: &[&str] = &[
    "signingSecret",
    "previousSigningSecret",
    "target.headers.*",
    "target.auth.password",
    "target.auth.token",
    "target.auth.value",
    "target.auth.clientSecret",
    "target.tls.clientKeyPem",
    // A transform may add a header with a literal credential.
    "transform",
];

/// A failure of the sealed collection: the store's, or a stored secret
/// that does not open.
#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    /// The store failed the operation.
    #[error(transparent)]
    Mongo(#[from] mongodb::error::Error),
    /// A document could not be turned into a definition, or back.
    #[error("a consumer definition does not fit the document it is stored as")]
    Shape(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored secret does not open under the configured keys.
    #[error(transparent)]
    Open(#[from] OpenError),
}

impl<T> StoreContext<T> for Result<T, SealedError> {
    fn doing<D: Into<crate::store::Doing>>(
        self,
        what: impl FnOnce() -> D,
    ) -> Result<T, StoreError> {
        self.map_err(|err| match err {
            SealedError::Mongo(err) => StoreError::mongo(what(), err),
            other => StoreError::Sealed {
                doing: what().into(),
                source: Box::new(other),
            },
        })
    }
}

/// Calls `f` on every string at `path` (split on `.`) under `value`.
fn visit<E>(
    value: &mut Bson,
    path: &[&str],
    f: &mut impl FnMut(&mut String) -> Result<(), E>,
) -> Result<(), E> {
    match (path.split_first(), value) {
        (None, Bson::String(s)) => f(s),
        (Some((&"*", rest)), Bson::Document(doc)) => {
            for (_, inner) in doc.iter_mut() {
                visit(inner, rest, f)?;
            }
            Ok(())
        }
        (Some((field, rest)), Bson::Document(doc)) => match doc.get_mut(*field) {
            Some(inner) => visit(inner, rest, f),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Calls `f` on every secret string of `doc`, a whole definition.
fn each_secret<E>(
    doc: &mut Document,
    mut f: impl FnMut(&mut String) -> Result<(), E>,
) -> Result<(), E> {
    for path in SECRET_FIELDS {
        let segments: Vec<&str> = path.split('.').collect();
        let (first, rest) = segments.split_first().expect("paths are not empty");
        if let Some(value) = doc.get_mut(*first) {
            visit(value, rest, &mut f)?;
        }
    }
    Ok(())
}

/// Seals every secret of `doc`, a whole definition in clear.
pub fn seal_document(doc: &mut Document, cipher: &SecretsCipher) {
    let _ = each_secret::<std::convert::Infallible>(doc, |s| {
        *s = cipher.seal(s);
        Ok(())
    });
}

/// Opens every secret of `doc` in place; says whether any was plain or
/// under the previous key (and so is to be sealed again).
pub fn open_document(doc: &mut Document, cipher: &SecretsCipher) -> Result<bool, OpenError> {
    let mut stale = false;
    each_secret(doc, |s| {
        let opened = cipher.open(s)?;
        stale |= opened.under != SealedUnder::Current;
        *s = opened.secret.expose_secret().to_owned();
        Ok(())
    })?;
    Ok(stale)
}

/// Seals the secrets in an update's `$set` (and `$setOnInsert`), whose keys
/// may be dotted paths (`target.headers.x-api-key`) or whole fields.
pub fn seal_update(update: &mut Document, cipher: &SecretsCipher) {
    for operator in ["$set", "$setOnInsert"] {
        let Ok(set) = update.get_document_mut(operator) else {
            continue;
        };
        for (key, value) in set.iter_mut() {
            let key: Vec<&str> = key.split('.').collect();
            for path in SECRET_FIELDS {
                let path: Vec<&str> = path.split('.').collect();
                let covers = key.len() <= path.len()
                    && key.iter().zip(&path).all(|(k, p)| *p == "*" || k == p);
                if covers {
                    let _ =
                        visit::<std::convert::Infallible>(value, &path[key.len()..], &mut |s| {
                            *s = cipher.seal(s);
                            Ok(())
                        });
                }
            }
        }
    }
}

/// The `consumers` collection, sealing on the way in and opening on the
/// way out; the methods are the driver's, for definitions in clear.
#[derive(Clone)]
pub struct SealedConsumers {
    raw: Collection<Document>,
    cipher: Arc<SecretsCipher>,
}

impl SealedConsumers {
    /// The collection `raw`, sealed with `cipher`.
    pub fn new(raw: Collection<Document>, cipher: Arc<SecretsCipher>) -> Self {
        Self { raw, cipher }
    }

    fn encode(&self, definition: &ConsumerDefinition) -> Result<Document, SealedError> {
        let mut doc =
            mongodb::bson::to_document(definition).map_err(|e| SealedError::Shape(Box::new(e)))?;
        seal_document(&mut doc, &self.cipher);
        Ok(doc)
    }

    fn decode(&self, mut doc: Document) -> Result<ConsumerDefinition, SealedError> {
        open_document(&mut doc, &self.cipher)?;
        mongodb::bson::from_document(doc).map_err(|e| SealedError::Shape(Box::new(e)))
    }

    /// Stores `definition`, its secrets sealed.
    pub async fn insert_one(&self, definition: &ConsumerDefinition) -> Result<(), SealedError> {
        let doc = self.encode(definition)?;
        self.raw.insert_one(doc).await?;
        Ok(())
    }

    /// The first definition matching `filter`, in clear.
    pub async fn find_one(
        &self,
        filter: Document,
    ) -> Result<Option<ConsumerDefinition>, SealedError> {
        match self.raw.find_one(filter).await? {
            Some(doc) => self.decode(doc).map(Some),
            None => Ok(None),
        }
    }

    /// Every definition matching `filter`, in clear; one that does not
    /// open is an error for the whole read.
    pub async fn find(&self, filter: Document) -> Result<Vec<ConsumerDefinition>, SealedError> {
        let docs: Vec<Document> = self.raw.find(filter).await?.try_collect().await?;
        docs.into_iter().map(|doc| self.decode(doc)).collect()
    }

    /// Every definition matching `filter`, in clear, and apart the ids of
    /// those that do not open (sealed under a key this replica lacks) or do
    /// not fit, with why: one such record does not hide the others.
    pub async fn find_readable(
        &self,
        filter: Document,
    ) -> Result<(Vec<ConsumerDefinition>, Vec<(String, SealedError)>), SealedError> {
        let docs: Vec<Document> = self.raw.find(filter).await?.try_collect().await?;
        let mut readable = Vec::with_capacity(docs.len());
        let mut unreadable = Vec::new();
        for doc in docs {
            let id = doc.get_str("_id").unwrap_or_default().to_owned();
            match self.decode(doc) {
                Ok(definition) => readable.push(definition),
                Err(err) => unreadable.push((id, err)),
            }
        }
        Ok((readable, unreadable))
    }

    /// The ids of the definitions matching `filter`: no secret is read.
    pub async fn ids(&self, filter: Document) -> Result<Vec<String>, SealedError> {
        let docs: Vec<Document> = self
            .raw
            .find(filter)
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(docs
            .into_iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
            .collect())
    }

    /// Applies `update` (its `$set` secrets sealed) to the first match.
    pub async fn update_one(
        &self,
        filter: Document,
        mut update: Document,
    ) -> Result<mongodb::results::UpdateResult, SealedError> {
        seal_update(&mut update, &self.cipher);
        Ok(self.raw.update_one(filter, update).await?)
    }

    /// Deletes the first match.
    pub async fn delete_one(
        &self,
        filter: Document,
    ) -> Result<mongodb::results::DeleteResult, SealedError> {
        Ok(self.raw.delete_one(filter).await?)
    }

    /// The collection's size, from its metadata.
    pub async fn estimated_document_count(&self) -> Result<u64, mongodb::error::Error> {
        self.raw.estimated_document_count().await
    }
}

/// What the start-up migration did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resealed {
    /// Definitions read.
    pub read: usize,
    /// Definitions whose secrets were plain or under the previous key, now
    /// sealed under the current one.
    pub resealed: usize,
}

/// Why the migration stopped.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// A stored secret does not open under `SECRETS_KEY` nor
    /// `SECRETS_KEY_PREVIOUS`: the gateway must not start.
    #[error("SECRETS_KEY does not open the secrets of consumer `{consumer_id}`: {source}; start with the key they were sealed under (as SECRETS_KEY, or as SECRETS_KEY_PREVIOUS next to a new SECRETS_KEY)")]
    WrongKey {
        /// The consumer whose secret does not open.
        consumer_id: String,
        /// Why.
        #[source]
        source: OpenError,
    },
    /// The store failed; worth trying again.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Seals under the current key every secret stored plain or under the
/// previous key. A value changed meanwhile (a concurrent update) is left
/// to that update, which sealed it.
pub async fn seal_stored(
    raw: &Collection<Document>,
    cipher: &SecretsCipher,
) -> Result<Resealed, MigrationError> {
    let docs: Vec<Document> = raw
        .find(doc! {})
        .await
        .doing(|| "reading consumers to seal their secrets")?
        .try_collect()
        .await
        .doing(|| "reading consumers to seal their secrets")?;
    let mut done = Resealed {
        read: docs.len(),
        ..Resealed::default()
    };
    for stored in docs {
        let id = stored.get("_id").cloned().unwrap_or(Bson::Null);
        let mut opened = stored.clone();
        let stale =
            open_document(&mut opened, cipher).map_err(|source| MigrationError::WrongKey {
                consumer_id: id.to_string().trim_matches('"').to_owned(),
                source,
            })?;
        if !stale {
            continue;
        }
        seal_document(&mut opened, cipher);
        // Only the secret fields, and only if the definition is still at
        // the revision read: an update since then sealed its own secrets
        // (every change of a definition moves its revision).
        let mut set = Document::new();
        for field in secret_roots() {
            if let Some(value) = opened.get(field) {
                set.insert(field, value.clone());
            }
        }
        let filter = match stored.get("revision") {
            Some(revision) => doc! { "_id": id.clone(), "revision": revision.clone() },
            None => doc! { "_id": id.clone(), "revision": { "$exists": false } },
        };
        let updated = raw
            .update_one(filter, doc! { "$set": set })
            .await
            .doing(|| format!("sealing the secrets of consumer {id}"))?;
        done.resealed += usize::try_from(updated.matched_count).unwrap_or(0);
    }
    Ok(done)
}

/// The top-level fields that hold secrets.
fn secret_roots() -> Vec<&'static str> {
    let mut roots: Vec<&str> = SECRET_FIELDS
        .iter()
        .map(|path| path.split('.').next().unwrap_or(path))
        .collect();
    roots.dedup();
    roots
}

#[cfg(test)]
mod tests {
    use super::*;
    use credentials::SecretsKey;

    fn cipher() -> SecretsCipher {
        SecretsCipher::new(SecretsKey::generate().0, None)
    }

    fn definition() -> Document {
        doc! {
            "_id": "c1",
            "queueName": "orders",
            "signingSecret": "whsec_abc",
            "target": {
                "type": "http",
                "url": "https://example.com/hook",
                "headers": { "x-api-key": "k3y", "authorization": "Bearer t0ken" },
                "auth": { "type": "basic", "username": "svc", "password": "pa55" },
            },
        }
    }

    #[test]
    fn every_listed_field_is_sealed_and_nothing_else() {
        let cipher = cipher();
        let mut doc = definition();
        seal_document(&mut doc, &cipher);
        let text = doc.to_string();
        for secret in ["whsec_abc", "k3y", "t0ken", "pa55"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        for kept in ["orders", "https://example.com/hook", "svc", "x-api-key"] {
            assert!(text.contains(kept), "{kept} not in {text}");
        }
        assert_eq!(open_document(&mut doc, &cipher), Ok(false));
        assert_eq!(doc, definition());
    }

    #[test]
    fn plain_and_previous_values_are_stale_and_unknown_keys_refused() {
        let (old, _) = SecretsKey::generate();
        let (new, _) = SecretsKey::generate();
        let mut plain = definition();
        assert_eq!(open_document(&mut plain, &cipher()), Ok(true));
        let mut under_old = definition();
        seal_document(&mut under_old, &SecretsCipher::new(old.clone(), None));
        let mut other = under_old.clone();
        assert_eq!(
            open_document(&mut under_old, &SecretsCipher::new(new.clone(), Some(old))),
            Ok(true)
        );
        assert_eq!(under_old, definition());
        assert!(matches!(
            open_document(&mut other, &SecretsCipher::new(new, None)),
            Err(OpenError::UnknownKey { .. })
        ));
    }

    #[test]
    fn the_migration_rewrites_whole_secret_fields() {
        assert_eq!(
            secret_roots(),
            [
                "signingSecret",
                "previousSigningSecret",
                "target",
                "transform"
            ]
        );
    }

    #[test]
    fn an_update_seals_whole_fields_and_dotted_paths() {
        let cipher = cipher();
        let mut update = doc! {
            "$set": {
                "signingSecret": "whsec_new",
                "target": { "headers": { "x-api-key": "k3y" }, "url": "https://e.com" },
                "target.headers.x-other": "0ther",
                "previousSigningSecret": "whsec_old",
                "paused": true,
            },
            "$unset": { "batch": "" },
        };
        seal_update(&mut update, &cipher);
        let text = update.to_string();
        for secret in ["whsec_new", "k3y", "0ther", "whsec_old"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("https://e.com"), "{text}");
        let set = update.get_document("$set").expect("$set");
        let opened = cipher
            .open(set.get_str("target.headers.x-other").expect("sealed"))
            .expect("it opens");
        assert_eq!(opened.secret.expose_secret(), "0ther");
        assert_eq!(set.get_bool("paused"), Ok(true));
    }
}

//! The `user` handler: `user.create|update|delete` on the `users`
//! collection (`_id` = `user_id`, unique `email`), the `user_id` counter,
//! and the read behind `GET /users/{email}`.

use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, IndexModel};

use gateway::{Attempt, DeliveryTarget, IncomingMessage};

use super::events::{normalize_email, NewUser, UserChanges, UserEvent, UserRef};
use super::{
    has_applied, is_duplicate, not_applied, now_iso, outcome, public_projection, record_applied,
    store_error, to_json, Failure,
};
use services::{Store, StoreError};

pub(crate) const USERS: &str = "users";
const COUNTERS: &str = "counters";
const USER_ID_COUNTER: &str = "user_id";
/// Tries at a fresh `user_id` when users stored with explicit ids got
/// ahead of the counter.
const ALLOCATION_TRIES: usize = 5;

/// The `user` handler: the delivery target that applies user events to
/// `users`.
pub struct UserHandler {
    users: Collection<Document>,
    counters: Collection<Document>,
}

#[async_trait::async_trait]
impl DeliveryTarget for UserHandler {
    async fn deliver(&self, message: &IncomingMessage) -> Attempt {
        let envelope = match UserEvent::parse(&message.payload) {
            Ok(envelope) => envelope,
            Err(reason) => return outcome(Err(Failure::Reject(reason.to_string()))),
        };
        let key = envelope.key(&message.message_id);
        let result = match &envelope.event {
            UserEvent::Create(user) => self.create(user, key).await,
            UserEvent::Update { user, changes } => self.update(user, changes, key).await,
            UserEvent::Delete { user } => self.delete(user).await,
        };
        outcome(result)
    }
}

impl UserHandler {
    /// A handler on the store's `users` collection and its `user_id` counter.
    pub fn new(store: Store) -> Self {
        Self {
            users: store.database().collection(USERS),
            counters: store.database().collection(COUNTERS),
        }
    }

    /// Inserts the user. The insert is the whole change, so "already
    /// applied" is told by the stored user's `created_by_event`.
    async fn create(&self, user: &NewUser, key: &str) -> Result<(), Failure> {
        if let Some(existing) = self.by_email(&user.email).await? {
            return created_by(&existing, key);
        }
        let fecha_creacion = user.fecha_creacion.clone().unwrap_or_else(now_iso);
        for _ in 0..ALLOCATION_TRIES {
            let user_id = match user.user_id {
                Some(id) => id,
                None => self.next_user_id().await?,
            };
            let document = user_document(user, user_id, &fecha_creacion, key);
            match self.users.insert_one(document).await {
                Ok(_) => {
                    tracing::info!(user_id, "user created");
                    return Ok(());
                }
                Err(err) if is_duplicate(&err) => {
                    // Either the e-mail (a concurrent or earlier create) or
                    // the id is taken.
                    if let Some(existing) = self.by_email(&user.email).await? {
                        return created_by(&existing, key);
                    }
                    if user.user_id.is_some() {
                        return Err(Failure::Reject(format!(
                            "a user with user_id {user_id} already exists"
                        )));
                    }
                    self.catch_up_counter().await?;
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(Failure::Retry(
            "could not find a free user_id; will try again".into(),
        ))
    }

    /// Sets only the given fields, once per key.
    async fn update(
        &self,
        user: &UserRef,
        changes: &UserChanges,
        key: &str,
    ) -> Result<(), Failure> {
        let mut filter = user_filter(user);
        filter.insert("applied_events", not_applied(key));
        let mut update = doc! { "$push": record_applied(key) };
        let set = changes_document(changes);
        if !set.is_empty() {
            update.insert("$set", set);
        }
        match self.users.update_one(filter, update).await {
            Ok(result) if result.matched_count > 0 => {
                tracing::info!("user updated");
                Ok(())
            }
            Ok(_) => match self.users.find_one(user_filter(user)).await? {
                Some(existing) if has_applied(&existing, key) => Ok(()),
                // Its create may still be retrying; if it never comes, the
                // update ends in the dead-letter queue after the last attempt.
                Some(_) => Err(Failure::Retry(
                    "the user changed under this update; will try again".into(),
                )),
                None => Err(Failure::Retry(format!(
                    "no user {} yet (its user.create may still be on its way)",
                    describe(user)
                ))),
            },
            Err(err) if is_duplicate(&err) => Err(Failure::Reject(
                "another user already has this email".into(),
            )),
            Err(err) => Err(err.into()),
        }
    }

    /// Deleting a user that is not there is done already.
    async fn delete(&self, user: &UserRef) -> Result<(), Failure> {
        let deleted = self
            .users
            .delete_one(user_filter(user))
            .await?
            .deleted_count;
        tracing::info!(deleted, "user deleted");
        Ok(())
    }

    async fn by_email(&self, email: &str) -> Result<Option<Document>, mongodb::error::Error> {
        self.users
            .find_one(doc! { "email": email })
            .projection(doc! { "created_by_event": 1 })
            .await
    }

    /// The next value of the `user_id` counter, created on first use.
    ///
    /// The increment itself never upserts: concurrent upserting
    /// find-and-modifies on a missing counter can consume a value without
    /// returning it (seen on SecantusDB), so the counter is created
    /// separately, by an upsert that changes nothing when it exists.
    async fn next_user_id(&self) -> Result<i64, Failure> {
        for _ in 0..ALLOCATION_TRIES {
            let counter = self
                .counters
                .find_one_and_update(
                    doc! { "_id": USER_ID_COUNTER },
                    doc! { "$inc": { "seq": 1_i64 } },
                )
                .return_document(ReturnDocument::After)
                .await?;
            if let Some(counter) = counter {
                return number(counter.get("seq"))
                    .ok_or_else(|| Failure::Retry("the user_id counter is not a number".into()));
            }
            let created = self
                .counters
                .update_one(
                    doc! { "_id": USER_ID_COUNTER },
                    doc! { "$setOnInsert": { "seq": 0_i64 } },
                )
                .upsert(true)
                .await;
            match created {
                // Made by a concurrent create just now: as good.
                Err(err) if !is_duplicate(&err) => return Err(err.into()),
                _ => {}
            }
        }
        Err(Failure::Retry(
            "the user_id counter could not be read; will try again".into(),
        ))
    }

    /// Moves the counter past the highest stored `user_id`.
    async fn catch_up_counter(&self) -> Result<(), Failure> {
        let highest = self
            .users
            .find_one(doc! {})
            .sort(doc! { "_id": -1 })
            .projection(doc! { "_id": 1 })
            .await?
            .and_then(|d| number(d.get("_id")))
            .unwrap_or(0);
        self.counters
            .update_one(
                doc! { "_id": USER_ID_COUNTER },
                doc! { "$max": { "seq": highest } },
            )
            .upsert(true)
            .await?;
        Ok(())
    }
}

/// A user found by e-mail was made by this event (done) or another (refuse).
fn created_by(existing: &Document, key: &str) -> Result<(), Failure> {
    if existing.get_str("created_by_event") == Ok(key) {
        Ok(())
    } else {
        Err(Failure::Reject(
            "a user with this email already exists".into(),
        ))
    }
}

fn user_filter(user: &UserRef) -> Document {
    match user {
        UserRef::Id(id) => doc! { "_id": *id },
        UserRef::Email(email) => doc! { "email": email },
    }
}

fn describe(user: &UserRef) -> String {
    match user {
        UserRef::Id(id) => format!("with user_id {id}"),
        UserRef::Email(_) => "with this email".into(),
    }
}

fn optional(value: &Option<String>) -> Bson {
    value.clone().map_or(Bson::Null, Bson::String)
}

fn user_document(user: &NewUser, user_id: i64, fecha_creacion: &str, key: &str) -> Document {
    doc! {
        "_id": user_id,
        "user_id": user_id,
        "nombre": &user.nombre,
        "apellido": &user.apellido,
        "email": &user.email,
        "fecha_nacimiento": optional(&user.fecha_nacimiento),
        "fecha_creacion": fecha_creacion,
        "calificacion": user.calificacion,
        "numero_reportes": user.numero_reportes,
        "url_foto_perfil": optional(&user.url_foto_perfil),
        "biografia": optional(&user.biografia),
        "created_by_event": key,
        "applied_events": [key],
    }
}

fn changes_document(changes: &UserChanges) -> Document {
    let mut set = Document::new();
    let texts = [
        ("nombre", &changes.nombre),
        ("apellido", &changes.apellido),
        ("email", &changes.email),
        ("fecha_nacimiento", &changes.fecha_nacimiento),
        ("fecha_creacion", &changes.fecha_creacion),
        ("url_foto_perfil", &changes.url_foto_perfil),
        ("biografia", &changes.biografia),
    ];
    for (field, value) in texts {
        if let Some(value) = value {
            set.insert(field, value.as_str());
        }
    }
    if let Some(calificacion) = changes.calificacion {
        set.insert("calificacion", calificacion);
    }
    if let Some(numero_reportes) = changes.numero_reportes {
        set.insert("numero_reportes", numero_reportes);
    }
    set
}

/// An integer however the store typed it.
pub(crate) fn number(value: Option<&Bson>) -> Option<i64> {
    match value? {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        Bson::Double(f) if f.fract() == 0.0 => Some(*f as i64),
        _ => None,
    }
}

/// `GET /users/{email}`: the stored user with the seed's field names.
pub async fn find_user_by_email(
    store: &Store,
    email: &str,
) -> Result<Option<serde_json::Value>, StoreError> {
    Ok(store
        .database()
        .collection::<Document>(USERS)
        .find_one(doc! { "email": normalize_email(email) })
        .projection(public_projection())
        .await
        .map_err(store_error)?
        .map(to_json))
}

/// The unique e-mail index the `user` handler relies on.
pub async fn ensure_indexes(store: &Store) -> Result<(), StoreError> {
    store
        .database()
        .collection::<Document>(USERS)
        .create_index(
            IndexModel::builder()
                .keys(doc! { "email": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await
        .map_err(store_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_sets_only_what_it_names() {
        let set = changes_document(&UserChanges {
            biografia: Some("b".into()),
            calificacion: Some(4.0),
            ..UserChanges::default()
        });
        assert_eq!(set, doc! { "biografia": "b", "calificacion": 4.0 });
    }

    #[test]
    fn numbers_are_read_whatever_their_bson_type() {
        assert_eq!(number(Some(&Bson::Int32(3))), Some(3));
        assert_eq!(number(Some(&Bson::Double(4.0))), Some(4));
        assert_eq!(number(Some(&Bson::String("5".into()))), None);
        assert_eq!(number(None), None);
    }
}

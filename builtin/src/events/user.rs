//! `user.create`, `user.update`, `user.delete`.

use serde::Deserialize;

use super::fields::{
    count, email, missing, optional_date, optional_text, positive, rating, required_text, typed,
};
use super::{envelope, Envelope, EventError};

/// A user to store, as a `user.create` gives it, validated and with the
/// defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct NewUser {
    /// `None`: the handler takes the next one from the store's counter.
    pub user_id: Option<i64>,
    /// First name, trimmed; required and not blank.
    pub nombre: String,
    /// Surname, trimmed; required and not blank.
    pub apellido: String,
    /// Trimmed and lower-cased, so uniqueness does not depend on case.
    pub email: String,
    /// Date of birth, an ISO-8601 date or date-time stored as given (trimmed).
    pub fecha_nacimiento: Option<String>,
    /// `None`: the time the handler stores the user.
    pub fecha_creacion: Option<String>,
    /// The user's rating: zero or more, `DEFAULT_CALIFICACION` when not given.
    /// Report penalties lower it.
    pub calificacion: f64,
    /// How many reports the user has authored: zero or more, 0 when not given.
    /// Each applied `report.create` adds one.
    pub numero_reportes: i64,
    /// Profile picture address, stored as given; nothing fetches or checks it.
    pub url_foto_perfil: Option<String>,
    /// Free-text biography, stored as given.
    pub biografia: Option<String>,
}

/// The rating a new user starts with when `user.create` gives none; also the
/// value a penalty starts from when a stored user has none.
pub const DEFAULT_CALIFICACION: f64 = 5.0;

/// Which user an update or delete is about.
#[derive(Debug, Clone, PartialEq)]
pub enum UserRef {
    /// By `user_id`, the document's `_id`.
    Id(i64),
    /// By e-mail address, trimmed and lower-cased.
    Email(String),
}

/// The fields an update sets; the others are left as they are.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UserChanges {
    /// New first name, trimmed; not blank.
    pub nombre: Option<String>,
    /// New surname, trimmed; not blank.
    pub apellido: Option<String>,
    /// Only when the user is named by `user_id`.
    pub email: Option<String>,
    /// New date of birth, an ISO-8601 date or date-time.
    pub fecha_nacimiento: Option<String>,
    /// New creation time, an ISO-8601 date or date-time.
    pub fecha_creacion: Option<String>,
    /// New rating, zero or more.
    pub calificacion: Option<f64>,
    /// New count of authored reports, zero or more.
    pub numero_reportes: Option<i64>,
    /// New profile picture address, stored as given.
    pub url_foto_perfil: Option<String>,
    /// New biography, stored as given.
    pub biografia: Option<String>,
}

/// A message on the users queue, by its `event_type`.
#[derive(Debug, Clone, PartialEq)]
pub enum UserEvent {
    /// `user.create`: store a new user; an e-mail address already taken by
    /// another event's user is refused.
    Create(NewUser),
    /// `user.update`: set the given fields on an existing user.
    Update {
        /// The user to change: by `user_id` when given, else by `email`.
        user: UserRef,
        /// The fields to set; the rest are left as stored.
        changes: UserChanges,
    },
    /// `user.delete`: remove a user; one already gone counts as deleted.
    Delete {
        /// The user to remove: by `user_id` when given, else by `email`.
        user: UserRef,
    },
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(tag = "event_type")]
enum Kind {
    #[serde(rename = "user.create")]
    Create,
    #[serde(rename = "user.update")]
    Update,
    #[serde(rename = "user.delete")]
    Delete,
}
const KNOWN: &str = "user.create, user.update, user.delete";

#[derive(Debug, Default, Deserialize)]
struct UserFields {
    user_id: Option<i64>,
    nombre: Option<String>,
    apellido: Option<String>,
    email: Option<String>,
    fecha_nacimiento: Option<String>,
    fecha_creacion: Option<String>,
    calificacion: Option<f64>,
    numero_reportes: Option<i64>,
    url_foto_perfil: Option<String>,
    biografia: Option<String>,
}

impl UserEvent {
    /// Reads and validates one message of the users queue; the error is the
    /// reason it is dead-lettered with.
    pub fn parse(payload: &[u8]) -> Result<Envelope<UserEvent>, EventError> {
        let (kind, event_id, body) = envelope::<Kind>(payload, KNOWN)?;
        let fields: UserFields = typed(body)?;
        if let Some(id) = fields.user_id {
            positive("user_id", id)?;
        }
        let event = match kind {
            Kind::Create => UserEvent::Create(NewUser {
                user_id: fields.user_id,
                nombre: required_text("nombre", fields.nombre)?,
                apellido: required_text("apellido", fields.apellido)?,
                email: email(required_text("email", fields.email)?)?,
                fecha_nacimiento: optional_date("fecha_nacimiento", fields.fecha_nacimiento)?,
                fecha_creacion: optional_date("fecha_creacion", fields.fecha_creacion)?,
                calificacion: rating(fields.calificacion)?.unwrap_or(DEFAULT_CALIFICACION),
                numero_reportes: count(fields.numero_reportes)?.unwrap_or(0),
                url_foto_perfil: fields.url_foto_perfil,
                biografia: fields.biografia,
            }),
            Kind::Update => {
                let (user, email_change) = match (fields.user_id, fields.email) {
                    (Some(id), email_change) => (UserRef::Id(id), email_change),
                    (None, Some(raw)) => (UserRef::Email(email(raw)?), None),
                    (None, None) => return Err(missing("user_id` or `email").into()),
                };
                UserEvent::Update {
                    user,
                    changes: UserChanges {
                        nombre: optional_text("nombre", fields.nombre)?,
                        apellido: optional_text("apellido", fields.apellido)?,
                        email: email_change.map(email).transpose()?,
                        fecha_nacimiento: optional_date(
                            "fecha_nacimiento",
                            fields.fecha_nacimiento,
                        )?,
                        fecha_creacion: optional_date("fecha_creacion", fields.fecha_creacion)?,
                        calificacion: rating(fields.calificacion)?,
                        numero_reportes: count(fields.numero_reportes)?,
                        url_foto_perfil: fields.url_foto_perfil,
                        biografia: fields.biografia,
                    },
                }
            }
            Kind::Delete => UserEvent::Delete {
                user: match (fields.user_id, fields.email) {
                    (Some(id), _) => UserRef::Id(id),
                    (None, Some(raw)) => UserRef::Email(email(raw)?),
                    (None, None) => return Err(missing("user_id` or `email").into()),
                },
            },
        };
        Ok(Envelope { event, event_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn user(value: Value) -> Result<Envelope<UserEvent>, EventError> {
        UserEvent::parse(&serde_json::to_vec(&value).unwrap())
    }

    #[test]
    fn a_user_create_gets_the_defaults() {
        let parsed = user(json!({
            "event_type": "user.create", "event_id": "e1", "nombre": " Ana ",
            "apellido": "Díaz", "email": " Ana@Example.COM ", "extra": [1, 2],
            "fecha_nacimiento": "1990-01-01T00:00:00"
        }))
        .unwrap();
        assert_eq!(parsed.event_id.as_deref(), Some("e1"));
        assert_eq!(parsed.key("m1"), "e1");
        let UserEvent::Create(new) = parsed.event else {
            panic!("not a create")
        };
        assert_eq!(new.email, "ana@example.com");
        assert_eq!(new.nombre, "Ana");
        assert_eq!((new.calificacion, new.numero_reportes), (5.0, 0));
        assert_eq!(new.user_id, None);
        assert_eq!(new.fecha_nacimiento.as_deref(), Some("1990-01-01T00:00:00"));
    }

    #[test]
    fn without_event_id_the_message_id_is_the_key() {
        let parsed = user(json!({"event_type": "user.delete", "user_id": 3})).unwrap();
        assert_eq!(parsed.key("m1"), "m1");
        assert_eq!(
            parsed.event,
            UserEvent::Delete {
                user: UserRef::Id(3)
            }
        );
    }

    #[test]
    fn invalid_user_events_are_refused_with_a_reason() {
        let cases = [
            (
                json!({"event_type": "user.create", "nombre": "a", "apellido": "b"}),
                "email",
            ),
            (
                json!({"event_type": "user.create", "nombre": "a", "email": "a@b"}),
                "apellido",
            ),
            (
                json!({"event_type": "user.create", "nombre": "a", "apellido": "b", "email": "nope"}),
                "email",
            ),
            (
                json!({"event_type": "user.create", "nombre": "a", "apellido": "b", "email": "a@b", "fecha_nacimiento": "yesterday"}),
                "fecha_nacimiento",
            ),
            (
                json!({"event_type": "user.create", "nombre": "a", "apellido": "b", "email": "a@b", "user_id": "7"}),
                "user_id",
            ),
            (
                json!({"event_type": "user.create", "nombre": "a", "apellido": "b", "email": "a@b", "calificacion": -1}),
                "calificacion",
            ),
            (
                json!({"event_type": "user.update", "nombre": "x"}),
                "user_id",
            ),
            (json!({"user_id": 1}), "event_type"),
            (
                json!({"event_type": "user.delete", "event_id": 5, "user_id": 1}),
                "event_id",
            ),
        ];
        for (value, expected) in cases {
            match user(value.clone()).unwrap_err() {
                EventError::Field(err) => assert!(err.field.contains(expected), "{value}: {err}"),
                other => panic!("{value}: {other}"),
            }
        }
        assert_eq!(
            user(json!({"event_type": "user.explode", "user_id": 1})).unwrap_err(),
            EventError::UnknownType {
                got: "user.explode".into(),
                known: KNOWN
            }
        );
        assert!(matches!(
            UserEvent::parse(b"not json"),
            Err(EventError::NotJson(_))
        ));
        assert_eq!(
            UserEvent::parse(b"[1]").unwrap_err(),
            EventError::NotAnObject
        );
    }

    #[test]
    fn an_update_names_its_user_and_only_the_given_fields() {
        let parsed =
            user(json!({"event_type": "user.update", "email": "A@b.c", "biografia": "hi"}))
                .unwrap();
        assert_eq!(
            parsed.event,
            UserEvent::Update {
                user: UserRef::Email("a@b.c".into()),
                changes: UserChanges {
                    biografia: Some("hi".into()),
                    ..UserChanges::default()
                }
            }
        );
        let parsed =
            user(json!({"event_type": "user.update", "user_id": 2, "email": "New@b.c"})).unwrap();
        let UserEvent::Update { user, changes } = parsed.event else {
            panic!("not an update")
        };
        assert_eq!(user, UserRef::Id(2));
        assert_eq!(changes.email.as_deref(), Some("new@b.c"));
    }
}

//! The built-in handlers' messages, parsed and validated before anything is
//! stored: user events (`user`), report events (`report`) and scrape jobs
//! (`scrape_job`), with the field rules they share (`fields`). Pure code, so
//! the seed routes validate a request with the very rules its consumer will
//! apply, and a message that can never be applied is refused with a reason
//! (it is dead-lettered) instead of half-applied.
//!
//! Lenient where leniency is harmless: extra fields are ignored, dates may be
//! RFC 3339, `YYYY-MM-DDTHH:MM:SS[.f]` or `YYYY-MM-DD`, and are stored as the
//! ISO string they were given.

mod fields;
mod report;
mod scrape_job;
mod user;

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use services::FieldError;

pub use fields::{iso_date, normalize_email};
pub use report::{NewReport, ReportEvent, DEFAULT_VISIBILIDAD};
pub use scrape_job::{ScrapeJob, MAX_URLS};
pub use user::{NewUser, UserChanges, UserEvent, UserRef, DEFAULT_CALIFICACION};

/// Why a message cannot be applied. Its text is the reason a rejected
/// delivery carries, so serde's error is said in it as well as kept as the
/// source.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EventError {
    /// The payload does not parse as JSON.
    #[error("the message is not JSON: {0}")]
    NotJson(#[source] Arc<serde_json::Error>),
    /// The payload is a JSON array, string, number, boolean or null.
    #[error("the message is JSON but not an object")]
    NotAnObject,
    /// `event_type` is a string this handler has no event for.
    #[error("unknown event_type `{got}`; this handler knows {known}")]
    UnknownType {
        /// The `event_type` received, cut to 40 characters (and `…`) when longer.
        got: String,
        /// The event types the handler accepts, comma-separated.
        known: &'static str,
    },
    /// A type mismatch serde could not pin on one field.
    #[error("the message does not have the expected shape: {0}")]
    Shape(#[source] Arc<serde_json::Error>),
    /// One field is missing, of the wrong type or invalid; the error names it.
    #[error(transparent)]
    Field(#[from] FieldError),
}

/// serde's errors compare by what they say.
impl PartialEq for EventError {
    fn eq(&self, other: &Self) -> bool {
        use EventError::*;
        match (self, other) {
            (NotJson(a), NotJson(b)) | (Shape(a), Shape(b)) => a.to_string() == b.to_string(),
            (NotAnObject, NotAnObject) => true,
            (
                UnknownType { got, known },
                UnknownType {
                    got: other_got,
                    known: other_known,
                },
            ) => got == other_got && known == other_known,
            (Field(a), Field(b)) => a == b,
            _ => false,
        }
    }
}

/// An event and the id it names itself by, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<T> {
    /// The parsed and validated event.
    pub event: T,
    /// `event_id`: the idempotency key, when the producer set one.
    pub event_id: Option<String>,
}

impl<T> Envelope<T> {
    /// The key a handler records as applied: `event_id`, else the AMQP
    /// message id (stable across the gateway's retries).
    pub fn key<'a>(&'a self, message_id: &'a str) -> &'a str {
        self.event_id.as_deref().unwrap_or(message_id)
    }
}

/// The payload as a JSON object.
fn object(payload: &[u8]) -> Result<Map<String, Value>, EventError> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(EventError::NotAnObject),
        Err(e) => Err(EventError::NotJson(Arc::new(e))),
    }
}

/// The event's kind (a `#[serde(tag = "event_type")]` enum of unit
/// variants, `known` being its tags), `event_id` and the whole object.
fn envelope<K: DeserializeOwned>(
    payload: &[u8],
    known: &'static str,
) -> Result<(K, Option<String>, Value), EventError> {
    let map = object(payload)?;
    let got = match map.get("event_type") {
        Some(Value::String(t)) => t.clone(),
        None | Some(Value::Null) => return Err(fields::missing("event_type").into()),
        Some(_) => return Err(FieldError::new("event_type", "must be a string").into()),
    };
    let event_id = fields::event_id(map.get("event_id"))?;
    let body = Value::Object(map);
    // The tag is a string here, so the only way left to fail is a tag the
    // enum does not have.
    let kind = K::deserialize(&body).map_err(|_| EventError::UnknownType {
        got: fields::quote(&got),
        known,
    })?;
    Ok((kind, event_id, body))
}

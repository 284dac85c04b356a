//! The built-in handlers — `user`, `report`, `scrape` — that a consumer with
//! `target {type:"builtin"}` hands its deliveries to, the reads the seed
//! routes make of what they stored, and the start-up step that gives each
//! built-in queue its consumer.
//!
//! Outcomes follow the delivery contract: applied → `Delivered`; a message
//! that can never be applied (not JSON, unknown `event_type`, missing or
//! invalid field) → `Reject`, so it is dead-lettered with the reason; the
//! store down or something the event needs not there yet → `Retry`.
//!
//! Idempotency without transactions: each changed document keeps the last
//! `APPLIED_KEEP` keys applied to it (`applied_events`), and every change is
//! one update whose filter says "this key is not applied yet" and which
//! pushes the key. The change and its record are one atomic single-document
//! write, so a redelivered event changes nothing the second time.

pub mod events;
pub mod report;
pub mod scrape;
pub mod setup;
pub mod user;

use std::sync::Arc;

use gateway::{Attempt, DeliveryOutcome, DeliveryTarget};
use mongodb::bson::{doc, Bson, Document};

use services::consumers::BuiltinTargets;
use services::targets::BuiltinHandler;
use services::{Store, StoreError};

pub use report::ReportHandler;
pub use scrape::{ScrapeHandler, ScrapeSettings};
pub use user::UserHandler;

/// How many applied keys a document remembers. Redeliveries come within
/// minutes (the retry policy's span), long before 100 later events.
pub(crate) const APPLIED_KEEP: i32 = 100;

/// The queue each handler reads, before `BUILTIN_QUEUE_PREFIX`.
pub fn base_queue_name(handler: BuiltinHandler) -> &'static str {
    match handler {
        BuiltinHandler::User => "users_queue",
        BuiltinHandler::Report => "reports_queue",
        BuiltinHandler::Scrape => "scrape_jobs",
    }
}

/// `<prefix><users_queue|reports_queue|scrape_jobs>`.
pub fn queue_name(prefix: &str, handler: BuiltinHandler) -> String {
    format!("{prefix}{}", base_queue_name(handler))
}

/// Builds the built-in targets; handed to the consumer registry.
pub struct BuiltinHandlers {
    user: Arc<UserHandler>,
    report: Arc<ReportHandler>,
    scrape: Arc<ScrapeHandler>,
}

impl BuiltinHandlers {
    /// The three handlers on `store`; fails only when the scraper's HTTP client
    /// cannot be built.
    pub fn new(store: Store, scrape: ScrapeSettings) -> Result<Self, reqwest::Error> {
        Ok(Self {
            user: Arc::new(UserHandler::new(store.clone())),
            report: Arc::new(ReportHandler::new(store.clone())),
            scrape: Arc::new(ScrapeHandler::new(store, scrape)?),
        })
    }
}

impl BuiltinTargets for BuiltinHandlers {
    fn target(&self, handler: BuiltinHandler) -> Option<Arc<dyn DeliveryTarget>> {
        Some(match handler {
            BuiltinHandler::User => self.user.clone(),
            BuiltinHandler::Report => self.report.clone(),
            BuiltinHandler::Scrape => self.scrape.clone(),
        })
    }
}

/// Why an event was not applied, as the handlers decide it.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Never applicable: dead-letter with this reason.
    Reject(String),
    /// Worth another attempt later.
    Retry(String),
}

impl From<mongodb::error::Error> for Failure {
    fn from(err: mongodb::error::Error) -> Self {
        // The driver's text names hosts and ports; the reason travels into
        // `lastError` and dead-letter headers, which viewers read.
        tracing::warn!(error = %gateway::Chain(&err), "store call failed; the delivery will be retried");
        Failure::Retry("the store is unavailable".into())
    }
}

pub(crate) use services::store::is_duplicate_key as is_duplicate;

/// The outcome of one attempt, logged without the payload.
pub(crate) fn outcome(result: Result<(), Failure>) -> Attempt {
    let handler = |reason| gateway::Failure::new(gateway::ErrorKind::Handler, reason);
    match result {
        Ok(()) => DeliveryOutcome::Delivered,
        Err(Failure::Reject(reason)) => {
            tracing::warn!(%reason, "built-in handler refused the message");
            DeliveryOutcome::reject(handler(reason))
        }
        Err(Failure::Retry(reason)) => {
            tracing::warn!(%reason, "built-in handler will try the message again");
            DeliveryOutcome::retry(handler(reason))
        }
    }
    .into()
}

/// `{"applied_events": {"$ne": key}}`'s value: the key is not applied yet.
pub(crate) fn not_applied(key: &str) -> Bson {
    Bson::Document(doc! { "$ne": key })
}

/// The `$push` that records `key`, keeping the last `APPLIED_KEEP`.
pub(crate) fn record_applied(key: &str) -> Document {
    doc! { "applied_events": { "$each": [key], "$slice": -APPLIED_KEEP } }
}

/// Whether `document.applied_events` holds `key`.
pub(crate) fn has_applied(document: &Document, key: &str) -> bool {
    document
        .get_array("applied_events")
        .is_ok_and(|keys| keys.iter().any(|k| k.as_str() == Some(key)))
}

/// The handlers' own bookkeeping, never shown by the seed routes.
pub(crate) fn public_projection() -> Document {
    doc! { "_id": 0, "applied_events": 0, "created_by_event": 0 }
}

/// Now, as the ISO string the seed's documents store dates in.
pub(crate) fn now_iso() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A stored document as the JSON a seed route answers with.
pub(crate) fn to_json(document: Document) -> serde_json::Value {
    Bson::Document(document).into_relaxed_extjson()
}

pub(crate) fn store_error(err: mongodb::error::Error) -> StoreError {
    StoreError::from(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_take_the_prefix() {
        assert_eq!(queue_name("", BuiltinHandler::User), "users_queue");
        assert_eq!(
            queue_name("t1_", BuiltinHandler::Report),
            "t1_reports_queue"
        );
        assert_eq!(queue_name("t1_", BuiltinHandler::Scrape), "t1_scrape_jobs");
    }

    #[test]
    fn applied_keys_are_found() {
        let document = doc! { "applied_events": ["a", "b"] };
        assert!(has_applied(&document, "b"));
        assert!(!has_applied(&document, "c"));
        assert!(!has_applied(&doc! {}, "a"));
    }
}

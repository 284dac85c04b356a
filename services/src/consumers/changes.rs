//! The consumers' change mark: one document in `meta` (`_id: "consumers"`)
//! whose `version` moves after every write to `consumers`, so a reconcile
//! pass that finds it where it was skips reading every definition. At
//! 10,000 consumers that read takes seconds on SecantusDB, and every
//! replica would take it every `RECONCILE_EVERY`.
//!
//! A write marks its change once it has landed; one task per replica folds
//! the marks of writes close together into one `$inc`, at most one every
//! `MARK_SPACING`. A pass reads the
//! version before the definitions, so a write the read missed leaves the
//! version past the one the pass recorded. A change whose mark was lost
//! (the process died between the write and the `$inc`, the store refused
//! the `$inc`) or made to the store by hand is picked up by the full read
//! every `FULL_READ_EVERY`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::Collection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{Store, StoreContext, StoreError};

/// The longest a pass goes without reading every definition.
pub const FULL_READ_EVERY: Duration = Duration::from_secs(30);
/// After the store refused an `$inc`, the wait before the next try.
const MARK_RETRY: Duration = Duration::from_secs(1);
/// The least time between two marks: passes come every
/// `RECONCILE_EVERY`, so marking a burst of writes once each would only
/// double the burst's writes.
const MARK_SPACING: Duration = Duration::from_millis(250);
const MARK_ID: &str = "consumers";

pub struct ChangeMark {
    collection: Collection<Document>,
    pending: Notify,
}

impl ChangeMark {
    pub fn new(store: &Store) -> Self {
        Self {
            collection: store.database().collection("meta"),
            pending: Notify::new(),
        }
    }

    /// Call after a write to `consumers` has landed.
    pub fn changed(&self) {
        // A permit is kept when the task is busy: one more `$inc` follows.
        self.pending.notify_one();
    }

    /// The version now; 0 before the first change.
    pub async fn version(&self) -> Result<i64, StoreError> {
        let mark = self
            .collection
            .find_one(doc! { "_id": MARK_ID })
            .await
            .doing(|| "reading the consumer change mark")?;
        Ok(mark
            .and_then(|mark| match mark.get("version") {
                Some(mongodb::bson::Bson::Int64(v)) => Some(*v),
                Some(mongodb::bson::Bson::Int32(v)) => Some(i64::from(*v)),
                _ => None,
            })
            .unwrap_or(0))
    }

    async fn bump(&self) -> Result<(), StoreError> {
        self.collection
            .update_one(
                doc! { "_id": MARK_ID },
                doc! { "$inc": { "version": 1_i64 } },
            )
            .upsert(true)
            .await
            .doing(|| "writing the consumer change mark")?;
        Ok(())
    }

    /// Writes the marks until shutdown.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let mark = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    () = mark.pending.notified() => {}
                }
                let pause = match mark.bump().await {
                    Ok(()) => MARK_SPACING,
                    Err(err) => {
                        tracing::debug!(error = %gateway::Chain(&err), "consumer change mark not written; will try again");
                        mark.pending.notify_one();
                        MARK_RETRY
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        })
    }
}

/// The version and time of the last pass that read every definition.
#[derive(Default)]
pub struct LastFullRead(Mutex<Option<(i64, Instant)>>);

impl LastFullRead {
    /// Whether a pass that found `version` at `now` must read everything:
    /// the first pass, a moved version, `FULL_READ_EVERY` gone by, or a
    /// stored consumer that could not start here (what it lacked may be
    /// here now).
    pub fn due(&self, version: i64, now: Instant, some_unstartable: bool) -> bool {
        let last = *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match last {
            None => true,
            Some((seen, at)) => {
                seen != version
                    || now.saturating_duration_since(at) >= FULL_READ_EVERY
                    || some_unstartable
            }
        }
    }

    /// A pass that found `version` before reading every definition at `at`.
    pub fn record(&self, version: i64, at: Instant) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((version, at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_pass_reads_everything() {
        assert!(LastFullRead::default().due(0, Instant::now(), false));
    }

    #[test]
    fn a_pass_on_an_unmoved_version_skips_the_read() {
        let last = LastFullRead::default();
        let at = Instant::now();
        last.record(7, at);
        assert!(!last.due(7, at + Duration::from_secs(2), false));
    }

    #[test]
    fn a_moved_version_reads_everything() {
        let last = LastFullRead::default();
        let at = Instant::now();
        last.record(7, at);
        assert!(last.due(8, at + Duration::from_secs(2), false));
    }

    #[test]
    fn the_full_read_comes_back_after_its_interval_whatever_the_version() {
        let last = LastFullRead::default();
        let at = Instant::now();
        last.record(7, at);
        assert!(!last.due(7, at + FULL_READ_EVERY - Duration::from_millis(1), false));
        assert!(last.due(7, at + FULL_READ_EVERY, false));
    }

    #[test]
    fn a_consumer_that_could_not_start_keeps_every_pass_reading() {
        let last = LastFullRead::default();
        let at = Instant::now();
        last.record(7, at);
        assert!(last.due(7, at + Duration::from_secs(2), true));
    }
}

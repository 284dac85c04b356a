//! The attempt writer: one task per replica that drains the buffer into
//! the `attempts` collection in bulk (unordered inserts of up to
//! `MAX_BULK` records, at least every `FLUSH_EVERY`). A failed insert keeps
//! its documents and is tried again, before anything newer; records an
//! earlier try did store are recognised by their `_id` (duplicate keys are
//! not a failure). Shutdown: `flush_for` writes what it can within a grace.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::options::InsertManyOptions;
use mongodb::Collection;
use tokio_util::sync::CancellationToken;

use super::buffer::AttemptBuffer;
use super::stored::StoredAttempt;
use super::AttemptLogMetrics;

/// Most records in one bulk insert.
pub const MAX_BULK: usize = 1_000;
/// Longest a record waits in the buffer while the store is up.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Pause after a failed insert, so a store that is down is not hammered.
const FAILED_PAUSE: Duration = Duration::from_secs(1);

/// Drains `buffer` into `collection`.
pub struct AttemptWriter {
    buffer: Arc<AttemptBuffer>,
    collection: Collection<StoredAttempt>,
    replica: String,
    metrics: AttemptLogMetrics,
    /// Documents of a bulk insert that failed, tried again first. Their
    /// records left the buffer, so while they wait the buffer has room for
    /// fewer: `MAX_BULK` at most.
    failed: Mutex<Vec<StoredAttempt>>,
}

impl AttemptWriter {
    /// A writer of `buffer`'s records, made on `replica`, into `collection`.
    pub fn new(
        buffer: Arc<AttemptBuffer>,
        collection: Collection<StoredAttempt>,
        replica: String,
        metrics: AttemptLogMetrics,
    ) -> Self {
        Self {
            buffer,
            collection,
            replica,
            metrics,
            failed: Mutex::new(Vec::new()),
        }
    }

    /// Writes until `shutdown`; then returns, leaving the rest to
    /// `flush_for`.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.buffer.filled() => {}
                _ = tokio::time::sleep(FLUSH_EVERY) => {}
            }
            while !self.is_idle() {
                let wrote = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    wrote = self.write_once() => wrote,
                };
                if !wrote {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(FAILED_PAUSE) => {}
                    }
                    break;
                }
            }
        }
    }

    /// Writes what waits, within `grace`; returns how many records are left
    /// unwritten.
    pub async fn flush_for(&self, grace: Duration) -> usize {
        let flushing = async {
            while !self.is_idle() {
                if !self.write_once().await {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(grace, flushing).await;
        let left = self.buffer.len() + self.failed().len();
        if left > 0 {
            tracing::warn!(
                left,
                "attempt records not written before shutdown; they are lost"
            );
        }
        left
    }

    fn is_idle(&self) -> bool {
        self.buffer.is_empty() && self.failed().is_empty()
    }

    fn failed(&self) -> std::sync::MutexGuard<'_, Vec<StoredAttempt>> {
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One bulk insert: the documents of a failed one, else the oldest
    /// records; whether it went through.
    async fn write_once(&self) -> bool {
        let mut documents = std::mem::take(&mut *self.failed());
        if documents.is_empty() {
            documents = self
                .buffer
                .take(MAX_BULK)
                .into_iter()
                .map(|record| StoredAttempt::of(record, &self.replica))
                .collect();
        }
        if documents.is_empty() {
            return true;
        }
        self.metrics.buffered.set(self.buffer.len() as i64);
        let n = documents.len() as u64;
        let result = self
            .collection
            .insert_many(&documents)
            .with_options(InsertManyOptions::builder().ordered(false).build())
            .await;
        match result {
            Ok(_) => {
                self.metrics.written.inc_by(n);
                self.metrics.bulk_inserts.inc();
                true
            }
            Err(err) if only_duplicates(&err) => {
                self.metrics.bulk_inserts.inc();
                true
            }
            Err(err) => {
                tracing::warn!(error = %gateway::Chain(&err), records = n, "could not store attempt records; trying again");
                *self.failed() = documents;
                false
            }
        }
    }
}

/// Whether every failed write of a bulk insert was a duplicate `_id`: an
/// earlier try stored them (at least once, never twice).
fn only_duplicates(err: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    const DUPLICATE_KEY: i32 = 11000;
    match err.kind.as_ref() {
        ErrorKind::InsertMany(failure) => {
            failure.write_concern_error.is_none()
                && failure
                    .write_errors
                    .as_ref()
                    .is_some_and(|errors| errors.iter().all(|e| e.code == DUPLICATE_KEY))
        }
        _ => false,
    }
}

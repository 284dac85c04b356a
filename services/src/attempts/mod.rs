//! Delivery history: every attempt a consumer makes, in the `attempts`
//! collection.
//!
//! - `buffer`: where the delivery path hands records, bounded, never
//!   waiting (`gateway::AttemptLog`).
//! - `writer`: the task that drains it in bulk, and the shutdown flush.
//! - `stored`: a record as stored and answered.
//! - `query`: the filters, pages and timelines the API reads.
//!
//! `AttemptHistory` ties them to the store: the indexes (one per way of
//! reading, and the TTL index that is the retention), the writer's start,
//! and the reads.

mod buffer;
pub mod query;
mod stored;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::doc;
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

pub use buffer::AttemptBuffer;
pub use query::{AttemptFilter, AttemptPage, FilterError, PageCursor, StatusFilter};
pub use stored::{StoredAttempt, StoredError, StoredRequest, StoredResponse};
pub use writer::{AttemptWriter, FLUSH_EVERY, MAX_BULK};

use crate::{Store, StoreContext, StoreError};

/// The collection's name.
pub const COLLECTION: &str = "attempts";

/// How attempts are kept, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptLogConfig {
    /// `ATTEMPT_LOG`: `false` records nothing.
    pub enabled: bool,
    /// `ATTEMPT_BODY_BYTES`: bytes of each answer's body kept.
    pub body_bytes: usize,
    /// `ATTEMPT_LOG_BUFFER`: records held for the writer at most.
    pub buffer: usize,
    /// `ATTEMPT_RETENTION`: how long a record is kept.
    pub retention: Duration,
}

impl Default for AttemptLogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            body_bytes: 4096,
            buffer: 100_000,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The attempt log's Prometheus counters.
#[derive(Debug, Clone, Default)]
pub struct AttemptLogMetrics {
    /// Records dropped because the buffer was full.
    pub dropped: Counter,
    /// Records stored.
    pub written: Counter,
    /// Bulk inserts that went through.
    pub bulk_inserts: Counter,
    /// Records waiting in the buffer after the last take.
    pub buffered: Gauge,
}

impl AttemptLogMetrics {
    /// Adds the counters to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "workerrmq_attempt_log_dropped",
            "Attempt records dropped because the buffer was full (the store was slow or down)",
            self.dropped.clone(),
        );
        registry.register(
            "workerrmq_attempt_log_written",
            "Attempt records stored",
            self.written.clone(),
        );
        registry.register(
            "workerrmq_attempt_log_bulk_inserts",
            "Bulk inserts of attempt records",
            self.bulk_inserts.clone(),
        );
        registry.register(
            "workerrmq_attempt_log_buffered",
            "Attempt records waiting to be stored",
            self.buffered.clone(),
        );
    }
}

/// The `attempts` collection: written by this replica's writer, read by the
/// API.
#[derive(Clone)]
pub struct AttemptHistory {
    collection: Collection<StoredAttempt>,
}

impl AttemptHistory {
    /// Over `store`'s `attempts` collection.
    pub fn new(store: &Store) -> Self {
        Self {
            collection: store.database().collection(COLLECTION),
        }
    }

    /// The indexes every read uses, and the retention (a TTL index on
    /// `startedAt`). A changed retention replaces the TTL index.
    pub async fn ensure_indexes(&self, retention: Duration) -> Result<(), StoreError> {
        let index = |keys, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_owned()).build())
                .build()
        };
        self.collection
            .create_indexes([
                index(
                    doc! { "consumerId": 1, "startedAt": -1, "_id": -1 },
                    "by_consumer",
                ),
                index(
                    doc! { "queueName": 1, "messageId": 1, "startedAt": 1 },
                    "by_message",
                ),
                index(doc! { "startedAt": -1, "_id": -1 }, "by_time"),
            ])
            .await
            .doing(|| "creating the attempt indexes")?;
        let ttl = IndexModel::builder()
            .keys(doc! { "startedAt": 1 })
            .options(
                IndexOptions::builder()
                    .name("retention".to_owned())
                    .expire_after(retention)
                    .build(),
            )
            .build();
        if self.collection.create_index(ttl.clone()).await.is_err() {
            // Another retention than before: the index is replaced.
            let _ = self.collection.drop_index("retention").await;
            self.collection
                .create_index(ttl)
                .await
                .doing(|| "creating the attempt retention index")?;
        }
        Ok(())
    }

    /// Starts the writer of `buffer` on its own task (until `shutdown`);
    /// `replica` names this gateway in each record. The returned writer
    /// flushes what is left at shutdown.
    pub fn start_writer(
        &self,
        buffer: Arc<AttemptBuffer>,
        replica: String,
        metrics: AttemptLogMetrics,
        shutdown: CancellationToken,
    ) -> Arc<AttemptWriter> {
        let writer = Arc::new(AttemptWriter::new(
            buffer,
            self.collection.clone(),
            replica,
            metrics,
        ));
        let running = writer.clone();
        tokio::spawn(async move { running.run(shutdown).await });
        writer
    }

    /// A page of `/getAttempts`.
    pub async fn page(
        &self,
        filter: &AttemptFilter,
        cursor: Option<&PageCursor>,
        limit: u32,
    ) -> Result<AttemptPage, StoreError> {
        query::page(&self.collection, filter, cursor, limit).await
    }

    /// One message's attempts in `queue`, oldest first.
    pub async fn timeline(
        &self,
        queue: &str,
        message_id: &str,
    ) -> Result<Vec<StoredAttempt>, StoreError> {
        query::timeline(&self.collection, queue, message_id).await
    }
}

//! The replica heartbeat: each gateway upserts its `ReplicaRecord`
//! (`crate::fleet`: instance id, version, start time, broker node, its
//! consumers' counters) into the `replicas` collection every `BEAT_EVERY`
//! and counts the replicas seen within `LIVE_WITHIN` (itself included, so
//! at least 1) into the supervisor's `LiveReplicas`, by which rate-limited
//! consumers share out their rate. `ReplicaRecords` reads the live ones
//! back for `/getReplicas` and the fleet-wide consumer counters.
//!
//! A replica that stops beating drops out of the count within
//! `LIVE_WITHIN`; one that shuts down cleanly removes its record at once.
//! While the store is unreachable the last count stands.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use gateway::LiveReplicas;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::Collection;
use tokio_util::sync::CancellationToken;

use crate::fleet::{ConsumerCounts, ReplicaRecord};
use crate::{Store, StoreContext, StoreError};

/// How often a replica writes its heartbeat record.
pub const BEAT_EVERY: Duration = Duration::from_secs(2);
/// A replica whose last beat is older than this is not counted as live.
pub const LIVE_WITHIN: Duration = Duration::from_secs(10);
/// Records not refreshed for this long are deleted.
const FORGET_AFTER: Duration = Duration::from_secs(3_600);
const COLLECTION: &str = "replicas";

/// The broker node this replica's connection is on (`host:port`), asked at
/// every beat; `None` when not connected or not known.
pub type BrokerNode = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// The consumers a beat reports: the heartbeat needs their counters, not
/// the registry or the supervisor behind them.
pub trait ConsumerCounters: Send + Sync {
    /// Consumers registered here, paused ones included.
    fn registered(&self) -> usize;
    /// By consumer id, every consumer here whose counts are
    /// `ConsumerCounts::worth_reporting`; the others are `IDLE`.
    fn worth_reporting(&self) -> HashMap<String, ConsumerCounts>;
}

/// Writes this replica's record to the `replicas` collection every `BEAT_EVERY`, and counts the
/// live replicas for the rate limits' shares.
pub struct ReplicaHeartbeat {
    collection: Collection<Document>,
    instance_id: String,
    started_at: DateTime,
    live: LiveReplicas,
    consumers: Arc<dyn ConsumerCounters>,
    broker_node: BrokerNode,
}

impl ReplicaHeartbeat {
    /// A heartbeat for `instance_id`; `live` is the count it keeps current, `consumers` what its
    /// beats report.
    pub fn new(
        store: &Store,
        instance_id: String,
        live: LiveReplicas,
        consumers: Arc<dyn ConsumerCounters>,
        broker_node: BrokerNode,
    ) -> Self {
        Self {
            collection: store.database().collection(COLLECTION),
            instance_id,
            started_at: DateTime::now(),
            live,
            consumers,
            broker_node,
        }
    }

    /// What this replica's record says now.
    fn record(&self, now: DateTime) -> ReplicaRecord {
        ReplicaRecord {
            instance_id: self.instance_id.clone(),
            last_seen_at: now,
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            started_at: Some(self.started_at),
            broker_node: (self.broker_node)(),
            consumer_count: Some(u64::try_from(self.consumers.registered()).unwrap_or(u64::MAX)),
            consumers: self.consumers.worth_reporting(),
        }
    }

    /// Records this replica as alive now and returns how many are.
    pub async fn beat(&self) -> Result<usize, StoreError> {
        let now = DateTime::now();
        let mut fields = mongodb::bson::to_document(&self.record(now))
            .map_err(|e| StoreError::encode("writing this replica's heartbeat", e))?;
        fields.remove("_id");
        self.collection
            .update_one(doc! { "_id": &self.instance_id }, doc! { "$set": fields })
            .upsert(true)
            .await
            .doing(|| "writing this replica's heartbeat")?;
        let live = self
            .collection
            .count_documents(doc! { "lastSeenAt": { "$gte": before(now, LIVE_WITHIN) } })
            .await
            .doing(|| "counting live replicas")?;
        // Records of replicas long gone (killed, never shut down) would
        // otherwise pile up; any replica may sweep them.
        self.collection
            .delete_many(doc! { "lastSeenAt": { "$lt": before(now, FORGET_AFTER) } })
            .await
            .doing(|| "forgetting replicas long gone")?;
        Ok(usize::try_from(live).unwrap_or(usize::MAX).max(1))
    }

    /// Beats now and every `BEAT_EVERY` until shutdown, then removes this
    /// replica's record so the others take over its share at once.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match self.beat().await {
                    Ok(live) => {
                        if live != self.live.get() {
                            tracing::info!(live, "live replica count changed");
                        }
                        self.live.set(live);
                    }
                    Err(err) => {
                        tracing::debug!(error = %gateway::Chain(&err), "replica heartbeat failed; will try again")
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(BEAT_EVERY) => {}
                }
            }
            let _ = self
                .collection
                .delete_one(doc! { "_id": &self.instance_id })
                .await;
        })
    }
}

/// How long a read of the live records is reused. They change once a
/// `BEAT_EVERY`; without this, creating 10,000 consumers read them 10,000
/// times.
const REUSE_FOR: Duration = Duration::from_secs(1);

/// Reads the heartbeat records back.
#[derive(Clone)]
pub struct ReplicaRecords {
    collection: Collection<Document>,
    recent: Arc<Mutex<Option<LastRead>>>,
}

/// When the live records were read, and what they said.
type LastRead = (Instant, Vec<ReplicaRecord>);

impl ReplicaRecords {
    /// Reads of `store`'s `replicas` collection.
    pub fn new(store: &Store) -> Self {
        Self {
            collection: store.database().collection(COLLECTION),
            recent: Arc::default(),
        }
    }

    /// The records of the replicas seen within `LIVE_WITHIN`, as read at
    /// most `REUSE_FOR` ago.
    pub async fn live(&self) -> Result<Vec<ReplicaRecord>, StoreError> {
        if let Ok(recent) = self.recent.lock() {
            if let Some((at, records)) = recent.as_ref() {
                if at.elapsed() < REUSE_FOR {
                    return Ok(records.clone());
                }
            }
        }
        let records = self.read_live().await?;
        if let Ok(mut recent) = self.recent.lock() {
            *recent = Some((Instant::now(), records.clone()));
        }
        Ok(records)
    }

    /// A record that does not read as one (the store is outside this
    /// process) is skipped.
    async fn read_live(&self) -> Result<Vec<ReplicaRecord>, StoreError> {
        let since = before(DateTime::now(), LIVE_WITHIN);
        let documents: Vec<Document> = self
            .collection
            .find(doc! { "lastSeenAt": { "$gte": since } })
            .await
            .doing(|| "reading live replicas")?
            .try_collect()
            .await
            .doing(|| "reading live replicas")?;
        Ok(documents
            .into_iter()
            .filter_map(|document| {
                let id = document.get("_id").cloned();
                mongodb::bson::from_document(document)
                    .map_err(|err| {
                        tracing::debug!(error = %gateway::Chain(&err), ?id, "unreadable replica record skipped")
                    })
                    .ok()
            })
            .collect())
    }
}

fn before(now: DateTime, span: Duration) -> DateTime {
    DateTime::from_millis(
        now.timestamp_millis()
            .saturating_sub(i64::try_from(span.as_millis()).unwrap_or(i64::MAX)),
    )
}

//! The replica heartbeat: each gateway upserts `{_id: instanceId,
//! lastSeenAt}` into the `replicas` collection every `BEAT_EVERY` and
//! counts the replicas seen within `LIVE_WITHIN` (itself included, so at
//! least 1) into the supervisor's `LiveReplicas`, by which rate-limited
//! consumers share out their rate.
//!
//! A replica that stops beating drops out of the count within
//! `LIVE_WITHIN`; one that shuts down cleanly removes its record at once.
//! While the store is unreachable the last count stands.

use std::time::Duration;

use gateway::LiveReplicas;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::Collection;
use tokio_util::sync::CancellationToken;

use crate::{Store, StoreError};

pub const BEAT_EVERY: Duration = Duration::from_secs(2);
pub const LIVE_WITHIN: Duration = Duration::from_secs(10);
/// Records not refreshed for this long are deleted.
const FORGET_AFTER: Duration = Duration::from_secs(3_600);

pub struct ReplicaHeartbeat {
    collection: Collection<Document>,
    instance_id: String,
    live: LiveReplicas,
}

impl ReplicaHeartbeat {
    pub fn new(store: &Store, instance_id: String, live: LiveReplicas) -> Self {
        Self {
            collection: store.database().collection("replicas"),
            instance_id,
            live,
        }
    }

    /// Records this replica as alive now and returns how many are.
    pub async fn beat(&self) -> Result<usize, StoreError> {
        let now = DateTime::now();
        self.collection
            .update_one(
                doc! { "_id": &self.instance_id },
                doc! { "$set": { "lastSeenAt": now } },
            )
            .upsert(true)
            .await?;
        let since = DateTime::from_millis(
            now.timestamp_millis() - i64::try_from(LIVE_WITHIN.as_millis()).unwrap_or(i64::MAX),
        );
        let live = self
            .collection
            .count_documents(doc! { "lastSeenAt": { "$gte": since } })
            .await?;
        // Records of replicas long gone (killed, never shut down) would
        // otherwise pile up; any replica may sweep them.
        let long_gone = DateTime::from_millis(
            now.timestamp_millis() - i64::try_from(FORGET_AFTER.as_millis()).unwrap_or(i64::MAX),
        );
        self.collection
            .delete_many(doc! { "lastSeenAt": { "$lt": long_gone } })
            .await?;
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
                        tracing::debug!(error = %err, "replica heartbeat failed; will try again")
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

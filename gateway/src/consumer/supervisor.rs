//! `ConsumerSupervisor`: the running consumers of this gateway, one tokio
//! task each (`worker`), tracked in a `DashMap`: starting, stopping with a
//! drain, and what `/getConsumers` reads of them.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::settle::Settler;
use super::spec::{ConsumerId, ConsumerSpec};
use super::stats::ConsumerStats;
use super::target::DeliveryTarget;
use super::worker::{ConsumerWorker, DRAIN_TIMEOUT};
use crate::metrics::{ConsumerLabels, DeliveryMetrics};
use crate::{Broker, Publisher, Topology};

struct RunningConsumer {
    spec: Arc<ConsumerSpec>,
    stats: Arc<ConsumerStats>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub struct ConsumerSupervisor {
    broker: Broker,
    topology: Topology,
    publisher: Arc<Publisher>,
    instance_id: String,
    consumers: DashMap<ConsumerId, RunningConsumer>,
    metrics: Arc<DeliveryMetrics>,
    /// Set by `stop_all`: a reconcile pass or start-up step still running
    /// then must not start consumers that would never be drained.
    closing: std::sync::atomic::AtomicBool,
    /// Where consumer tasks run: the runtime the supervisor was made on, not
    /// whichever one calls `start`. A consumer created by an HTTP request
    /// would otherwise live on that actix worker's runtime and be dropped,
    /// undrained, when the worker stops at SIGTERM.
    runtime: tokio::runtime::Handle,
}

impl ConsumerSupervisor {
    /// Must be called within the runtime the consumers are to run on.
    pub fn new(
        broker: Broker,
        publisher: Arc<Publisher>,
        instance_id: String,
        metrics: Arc<DeliveryMetrics>,
    ) -> Self {
        Self {
            topology: Topology::new(broker.clone()),
            broker,
            publisher,
            instance_id,
            consumers: DashMap::new(),
            metrics,
            closing: std::sync::atomic::AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Starts the consumer unless one with its id already runs here.
    /// Returns whether it was started.
    pub fn start(&self, spec: ConsumerSpec, target: Arc<dyn DeliveryTarget>) -> bool {
        if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        let entry = match self.consumers.entry(spec.id.clone()) {
            dashmap::Entry::Occupied(_) => return false,
            dashmap::Entry::Vacant(v) => v,
        };
        let spec = Arc::new(spec);
        let stats = Arc::new(ConsumerStats::registered(&self.metrics, &labels_of(&spec)));
        let cancel = CancellationToken::new();
        let worker = ConsumerWorker {
            spec: spec.clone(),
            broker: self.broker.clone(),
            target,
            settler: Arc::new(Settler::new(
                self.publisher.clone(),
                self.topology.clone(),
                spec.retry,
                stats.clone(),
            )),
            stats: stats.clone(),
            consumer_tag: format!("workerrmq-{}-{}", self.instance_id, spec.id),
        };
        // No parent: a consumer created by a request outlives its span.
        let span = tracing::info_span!(parent: None, "consumer", consumer_id = %spec.id, queue = %spec.queue);
        let task = self
            .runtime
            .spawn(worker.run(cancel.clone()).instrument(span));
        entry.insert(RunningConsumer {
            spec,
            stats,
            cancel,
            task,
        });
        true
    }

    /// Stops the consumer and waits until its in-flight deliveries are
    /// settled or handed back. Returns whether it was running here.
    pub async fn stop(&self, id: &ConsumerId) -> bool {
        let Some((_, running)) = self.consumers.remove(id) else {
            return false;
        };
        running.cancel.cancel();
        // The task bounds its own drain; this bound only guards a stuck one.
        if tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(5), running.task)
            .await
            .is_err()
        {
            tracing::warn!(consumer_id = %id, "consumer did not stop in time");
        }
        self.metrics.forget(&labels_of(&running.spec));
        true
    }

    /// Stops every consumer at once (SIGTERM).
    pub async fn stop_all(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let ids: Vec<ConsumerId> = self.ids();
        futures_util::future::join_all(ids.iter().map(|id| self.stop(id))).await;
    }

    pub fn ids(&self) -> Vec<ConsumerId> {
        self.consumers.iter().map(|e| e.key().clone()).collect()
    }

    pub fn is_running(&self, id: &ConsumerId) -> bool {
        self.consumers.contains_key(id)
    }

    pub fn stats(&self, id: &ConsumerId) -> Option<Arc<ConsumerStats>> {
        self.consumers.get(id).map(|c| c.stats.clone())
    }

    /// Every running consumer's spec and stats.
    pub fn all(&self) -> Vec<(Arc<ConsumerSpec>, Arc<ConsumerStats>)> {
        self.consumers
            .iter()
            .map(|e| (e.spec.clone(), e.stats.clone()))
            .collect()
    }
}

fn labels_of(spec: &ConsumerSpec) -> ConsumerLabels {
    ConsumerLabels {
        consumer_id: spec.id.to_string(),
        queue: spec.queue.to_string(),
    }
}

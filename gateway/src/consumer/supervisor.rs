//! `ConsumerSupervisor`: the consumers registered on this gateway, tracked
//! in a `DashMap`, each running as one tokio task (`worker`) unless paused:
//! starting, pausing and resuming, replacing a changed definition,
//! stopping with a drain, and what `/getConsumers` reads of them.
//!
//! A paused consumer stays registered (its spec, target and counters kept)
//! with no worker: pausing stops the worker with the same drain as a stop
//! (basic.cancel, in-flight deliveries settled, the rest handed back), and
//! resuming starts a new one; a changed definition is applied the same
//! way, the old worker drained before the new one starts. Transitions of
//! one consumer take turns on its own lock, so a pause draining and a
//! resume (or an update) cannot interleave.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::attempts::{AttemptLog, AttemptRecorder};
use super::breaker::{CircuitBreaker, CircuitBreakerPolicy, CircuitSnapshot};
use super::limits::LiveReplicas;
use super::settle::Settler;
use super::spec::{ConsumerId, ConsumerSpec};
use super::stats::{ConsumerState, ConsumerStats};
use super::target::DeliveryTarget;
use super::worker::{ConsumerWorker, DRAIN_TIMEOUT};
use crate::companion_types::CompanionTypes;
use crate::metrics::{ConsumerLabels, DeliveryMetrics};
use crate::{Broker, Publisher, Topology};

/// Whether a registered consumer takes deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Deliveries are taken.
    Consuming,
    /// The AMQP consumer is cancelled; messages wait in the queue.
    Paused,
}

struct RegisteredConsumer {
    spec: Arc<ConsumerSpec>,
    stats: Arc<ConsumerStats>,
    target: Arc<dyn DeliveryTarget>,
    /// Kept here, not in the worker, so an open circuit stays open across
    /// a pause and a reconnect.
    breaker: Option<Arc<CircuitBreaker>>,
    /// `None` while paused.
    worker: Option<RunningWorker>,
    /// The stored definition's revision this runs; an update bumps it.
    revision: u64,
    /// Held through a pause, resume or stop of this consumer; holds when
    /// an explicit `set_flow` last changed it, so `follow` can tell a stale
    /// reading of the store from a fresh one.
    transitions: Arc<tokio::sync::Mutex<Option<Instant>>>,
}

struct RunningWorker {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningWorker {
    /// Cancels the worker and waits until its in-flight deliveries are
    /// settled or handed back.
    async fn stop(self, id: &ConsumerId) {
        self.cancel.cancel();
        // The task bounds its own drain; this bound only guards a stuck one.
        if tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(5), self.task)
            .await
            .is_err()
        {
            tracing::warn!(consumer_id = %id, "consumer did not stop in time");
        }
    }
}

/// The consumers registered on this replica and their workers: starts, updates, pauses and stops
/// them, and drains them at shutdown.
pub struct ConsumerSupervisor {
    broker: Broker,
    topology: Topology,
    publisher: Arc<Publisher>,
    instance_id: String,
    consumers: DashMap<ConsumerId, RegisteredConsumer>,
    metrics: Arc<DeliveryMetrics>,
    /// The type of the companions the consumers declare on demand.
    companion_types: CompanionTypes,
    /// Set by `stop_all`: a reconcile pass or start-up step still running
    /// then must not start consumers that would never be drained.
    closing: std::sync::atomic::AtomicBool,
    /// Where consumer tasks run: the runtime the supervisor was made on, not
    /// whichever one calls `start`. A consumer created by an HTTP request
    /// would otherwise live on that actix worker's runtime and be dropped,
    /// undrained, when the worker stops at SIGTERM.
    runtime: tokio::runtime::Handle,
    /// Each rate-limited consumer takes its share of the rate by this.
    live_replicas: LiveReplicas,
    /// Where attempts are recorded (for consumers with `spec.record_attempts`);
    /// `None`: `ATTEMPT_LOG=off`.
    attempt_log: Option<Arc<dyn AttemptLog>>,
}

impl ConsumerSupervisor {
    /// Must be called within the runtime the consumers are to run on.
    /// Companions of the queues consumed take their main queue's type as
    /// `types` tells it (classic, unless set).
    pub fn with_companion_types(mut self, types: CompanionTypes) -> Self {
        self.companion_types = types;
        self
    }

    /// Consumers that record their attempts hand them to `log`.
    pub fn with_attempt_log(mut self, log: Arc<dyn AttemptLog>) -> Self {
        self.attempt_log = Some(log);
        self
    }

    /// A supervisor with no consumers; its consumers' tasks will run on the current runtime.
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
            companion_types: CompanionTypes::default(),
            closing: std::sync::atomic::AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
            live_replicas: LiveReplicas::new(),
            attempt_log: None,
        }
    }

    /// Registers the consumer unless one with its id already is, running
    /// or `Flow::Paused` (registered, but takes no delivery). Returns
    /// whether it was registered.
    pub fn start(
        &self,
        spec: ConsumerSpec,
        target: Arc<dyn DeliveryTarget>,
        flow: Flow,
        revision: u64,
    ) -> bool {
        if self.is_closing() {
            return false;
        }
        let entry = match self.consumers.entry(spec.id.clone()) {
            dashmap::Entry::Occupied(_) => return false,
            dashmap::Entry::Vacant(v) => v,
        };
        let spec = Arc::new(spec);
        let labels = labels_of(&spec);
        let stats = Arc::new(ConsumerStats::registered(&self.metrics, &labels));
        let breaker = spec
            .circuit_breaker
            .map(|policy| self.new_breaker(&labels, policy));
        let worker = match flow {
            Flow::Consuming => Some(self.spawn_worker(&spec, &stats, &target, &breaker)),
            Flow::Paused => {
                stats.set_state(ConsumerState::Paused);
                None
            }
        };
        entry.insert(RegisteredConsumer {
            spec,
            stats,
            target,
            breaker,
            worker,
            revision,
            transitions: Arc::new(tokio::sync::Mutex::new(None)),
        });
        true
    }

    /// The stored revision the consumer runs here; `None` when it is not
    /// registered here.
    pub fn revision(&self, id: &ConsumerId) -> Option<u64> {
        self.consumers.get(id).map(|c| c.revision)
    }

    /// Runs the consumer with a changed definition, unless it already runs
    /// `revision` or a later one. The old worker stops first with its
    /// drain (in-flight deliveries finish under the old settings and are
    /// settled, the rest handed back), so the new one, on a new channel
    /// with the new prefetch, never sees a delivery the old one still
    /// holds. Paused stays paused; the counters stay, and so does the
    /// breaker's state when its policy did not change. Returns whether the
    /// consumer is registered here.
    pub async fn replace(
        &self,
        spec: ConsumerSpec,
        target: Arc<dyn DeliveryTarget>,
        revision: u64,
    ) -> bool {
        let id = spec.id.clone();
        let Some(gate) = self.consumers.get(&id).map(|c| c.transitions.clone()) else {
            return false;
        };
        let _turn = gate.lock().await;
        let old_worker = {
            let Some(mut consumer) = self.consumers.get_mut(&id) else {
                return false;
            };
            if consumer.revision >= revision {
                return true;
            }
            consumer.worker.take()
        };
        let was_consuming = old_worker.is_some();
        if let Some(worker) = old_worker {
            worker.stop(&id).await;
        }
        let Some(mut consumer) = self.consumers.get_mut(&id) else {
            return false;
        };
        let labels = labels_of(&spec);
        let breaker = match (&consumer.breaker, spec.circuit_breaker) {
            (Some(kept), Some(policy)) if consumer.spec.circuit_breaker == Some(policy) => {
                Some(kept.clone())
            }
            (_, policy) => policy.map(|policy| self.new_breaker(&labels, policy)),
        };
        let spec = Arc::new(spec);
        consumer.spec = spec.clone();
        consumer.target = target;
        consumer.breaker = breaker;
        consumer.revision = revision;
        if was_consuming && !self.is_closing() {
            self.restart_worker(&mut consumer);
        }
        tracing::info!(consumer_id = %id, revision, "consumer definition applied");
        true
    }

    /// A breaker whose openings count in this consumer's series.
    fn new_breaker(
        &self,
        labels: &ConsumerLabels,
        policy: CircuitBreakerPolicy,
    ) -> Arc<CircuitBreaker> {
        let openings = self.metrics.circuit_openings.get_or_create_owned(labels);
        Arc::new(CircuitBreaker::new(policy, openings))
    }

    /// Gives a registered consumer without a worker (paused, or between
    /// two definitions) a new one, with its current spec, counters and
    /// breaker.
    fn restart_worker(&self, consumer: &mut RegisteredConsumer) {
        consumer.stats.set_state(ConsumerState::Reconnecting);
        let worker = self.spawn_worker(
            &consumer.spec,
            &consumer.stats,
            &consumer.target,
            &consumer.breaker,
        );
        consumer.worker = Some(worker);
    }

    fn spawn_worker(
        &self,
        spec: &Arc<ConsumerSpec>,
        stats: &Arc<ConsumerStats>,
        target: &Arc<dyn DeliveryTarget>,
        breaker: &Option<Arc<CircuitBreaker>>,
    ) -> RunningWorker {
        let cancel = CancellationToken::new();
        if spec.ordering.is_some() {
            stats.run_ordered(&self.metrics, &labels_of(spec));
        }
        let worker = ConsumerWorker {
            spec: spec.clone(),
            broker: self.broker.clone(),
            target: target.clone(),
            settler: Arc::new(Settler::new(
                self.publisher.clone(),
                self.topology.clone(),
                spec.retry,
                stats.clone(),
                self.companion_types.clone(),
            )),
            stats: stats.clone(),
            breaker: breaker.clone(),
            consumer_tag: format!("workerrmq-{}-{}", self.instance_id, spec.id),
            // An ordered consumer's queue has a single active consumer: the
            // one replica taking deliveries takes the whole rate.
            live_replicas: if spec.ordering.is_some() {
                LiveReplicas::new()
            } else {
                self.live_replicas.clone()
            },
            recorder: self
                .attempt_log
                .clone()
                .filter(|_| spec.record_attempts)
                .map(|log| AttemptRecorder {
                    log,
                    consumer_id: spec.id.clone(),
                }),
        };
        // No parent: a consumer created by a request outlives its span.
        let span = tracing::info_span!(parent: None, "consumer", consumer_id = %spec.id, queue = %spec.queue);
        let task = self
            .runtime
            .spawn(worker.run(cancel.clone()).instrument(span));
        RunningWorker { cancel, task }
    }

    /// Pauses or resumes the consumer as asked here (the API). A pause
    /// returns once the in-flight deliveries are settled or handed back.
    /// Returns whether the consumer is registered here.
    pub async fn set_flow(&self, id: &ConsumerId, flow: Flow) -> bool {
        self.transition(id, flow, None).await
    }

    /// Pauses or resumes the consumer as the store said at `read_at`,
    /// unless `set_flow` changed it since: that store reading may predate
    /// the change. Returns whether the consumer is registered here.
    pub async fn follow(&self, id: &ConsumerId, flow: Flow, read_at: Instant) -> bool {
        self.transition(id, flow, Some(read_at)).await
    }

    async fn transition(&self, id: &ConsumerId, flow: Flow, read_at: Option<Instant>) -> bool {
        let Some(gate) = self.consumers.get(id).map(|c| c.transitions.clone()) else {
            return false;
        };
        let mut changed_at = gate.lock().await;
        match read_at {
            Some(read_at) if changed_at.is_some_and(|at| at > read_at) => return true,
            Some(_) => {}
            None => *changed_at = Some(Instant::now()),
        }
        match flow {
            Flow::Paused => {
                let worker = {
                    let Some(mut consumer) = self.consumers.get_mut(id) else {
                        return false;
                    };
                    consumer.stats.set_state(ConsumerState::Paused);
                    consumer.worker.take()
                };
                if let Some(worker) = worker {
                    worker.stop(id).await;
                    tracing::info!(consumer_id = %id, "consumer paused");
                }
                // Again: a session starting while the cancel arrived may
                // have reported itself running.
                if let Some(consumer) = self.consumers.get(id) {
                    consumer.stats.set_state(ConsumerState::Paused);
                }
            }
            Flow::Consuming => {
                let Some(mut consumer) = self.consumers.get_mut(id) else {
                    return false;
                };
                if consumer.worker.is_none() && !self.is_closing() {
                    self.restart_worker(&mut consumer);
                    tracing::info!(consumer_id = %id, "consumer resumed");
                }
            }
        }
        true
    }

    /// Unregisters the consumer, after its in-flight deliveries are settled
    /// or handed back. Returns whether it was registered here.
    pub async fn stop(&self, id: &ConsumerId) -> bool {
        let Some(gate) = self.consumers.get(id).map(|c| c.transitions.clone()) else {
            return false;
        };
        let _turn = gate.lock().await;
        let Some((_, consumer)) = self.consumers.remove(id) else {
            return false;
        };
        if let Some(worker) = consumer.worker {
            worker.stop(id).await;
        }
        consumer.stats.set_state(ConsumerState::Stopped);
        self.metrics.forget(&labels_of(&consumer.spec));
        true
    }

    /// Stops every consumer at once (SIGTERM).
    pub async fn stop_all(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let ids: Vec<ConsumerId> = self.ids();
        futures_util::future::join_all(ids.iter().map(|id| self.stop(id))).await;
    }

    fn is_closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The live replica count rate limits are shared by; whoever counts
    /// replicas keeps it current.
    pub fn live_replicas(&self) -> &LiveReplicas {
        &self.live_replicas
    }

    /// The `INSTANCE_ID` this supervisor's consumers run under.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Every registered consumer, paused ones included.
    pub fn ids(&self) -> Vec<ConsumerId> {
        self.consumers.iter().map(|e| e.key().clone()).collect()
    }

    /// How many consumers are registered here, paused ones included.
    pub fn registered(&self) -> usize {
        self.consumers.len()
    }

    /// Whether the consumer is registered here, running or paused.
    pub fn is_registered(&self, id: &ConsumerId) -> bool {
        self.consumers.contains_key(id)
    }

    /// The live stats of consumer `id`, if it is registered here.
    pub fn stats(&self, id: &ConsumerId) -> Option<Arc<ConsumerStats>> {
        self.consumers.get(id).map(|c| c.stats.clone())
    }

    /// The consumer's circuit here; `None` when it has no breaker or is not
    /// registered here.
    pub fn circuit(&self, id: &ConsumerId) -> Option<CircuitSnapshot> {
        self.consumers
            .get(id)
            .and_then(|c| c.breaker.as_ref().map(|b| b.snapshot(Instant::now())))
    }

    /// Every registered consumer's spec and stats.
    pub fn all(&self) -> Vec<(Arc<ConsumerSpec>, Arc<ConsumerStats>)> {
        self.consumers
            .iter()
            .map(|e| (e.spec.clone(), e.stats.clone()))
            .collect()
    }
}

fn labels_of(spec: &ConsumerSpec) -> ConsumerLabels {
    ConsumerLabels {
        consumer_id: spec.id.to_string().into(),
        queue: spec.queue.to_string().into(),
    }
}

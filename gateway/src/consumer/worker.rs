//! One consumer's task: its session loop on its own channel, and the
//! handling of each delivery up to the moment it is settled.
//!
//! The worker takes a place on a consume connection (`ConsumerLease`) and
//! keeps it across reconnects. Each session opens a channel with the
//! consumer's prefetch and works on up to `prefetch` deliveries at once,
//! each settled on its own (`settle`); when the channel or connection breaks
//! the consumer goes to `reconnecting` and starts over with backoff, and the
//! broker redelivers what it had not settled. Cancelling it stops new
//! deliveries, lets in-flight ones finish within `DRAIN_TIMEOUT`, and closes
//! the channel, which hands any still unsettled ones back to the queue.
//!
//! A batch consumer (`spec.batch`) gathers deliveries in a `Batcher` instead
//! and sends each batch as one request (`batch`); deliveries gathered but
//! not yet sent when the session ends are handed back.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::batch::{self, BatchRun, Batcher};
use super::breaker::{self, Admission, CircuitBreaker, Gate, GateEnd};
use super::limits::{CallSlot, DeliveryGate, LiveReplicas};
use super::settle::{attempt_of, delivery_attempt, hand_back, AckWindow, Settled, Settler};
use super::spec::ConsumerSpec;
use super::stats::{ConsumerState, ConsumerStats};
use super::target::{Batch, DeliveryOutcome, DeliveryTarget, IncomingMessage};
use crate::connection::reconnect_backoff;
use crate::{Broker, BrokerError, ConsumerLease};

/// How long a stopping consumer waits for in-flight deliveries.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Most deliveries acked by one `multiple` ack.
const ACK_BATCH: usize = 50;
/// Longest an ack waits for company while other deliveries are in flight.
const ACK_DELAY: Duration = Duration::from_millis(5);

/// Deliveries settled behind a slow one are acked on their own after this,
/// so one slow target call cannot hold the prefetch window.
const STRAGGLER_WAIT: Duration = Duration::from_millis(250);

pub(super) struct ConsumerWorker {
    pub spec: Arc<ConsumerSpec>,
    pub broker: Broker,
    pub target: Arc<dyn DeliveryTarget>,
    pub settler: Arc<Settler>,
    pub stats: Arc<ConsumerStats>,
    pub breaker: Option<Arc<CircuitBreaker>>,
    pub consumer_tag: String,
    pub live_replicas: LiveReplicas,
}

enum SessionEnd {
    Cancelled,
    /// The circuit breaker opened, or its probe closed it: start over.
    Circuit,
}

impl ConsumerWorker {
    pub async fn run(self, cancel: CancellationToken) {
        let new_backoff = || reconnect_backoff(Duration::from_millis(250), Duration::from_secs(5));
        let mut backoff = new_backoff();
        // Held until the consumer stops: its place on a consume connection.
        let lease = self.broker.consumer_lease();
        let mut link = lease.subscribe();
        loop {
            let Some(admission) =
                breaker::admission(self.breaker.as_deref(), &self.stats, &cancel).await
            else {
                break;
            };
            if admission == Admission::All {
                self.stats.set_state(ConsumerState::Reconnecting);
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                ready = link.wait_for(|l| l.connection.is_some()) => if ready.is_err() { break },
            }
            let gate = Gate::new(self.breaker.clone(), admission);
            match self
                .session(&lease, &cancel, gate, &mut backoff, new_backoff)
                .await
            {
                Ok(SessionEnd::Cancelled) => break,
                Ok(SessionEnd::Circuit) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "consumer session ended; resuming");
                    self.stats.record_error(err.to_string());
                    let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        // Whoever cancelled it (a stop, a pause) says what it is now.
        if !cancel.is_cancelled() {
            self.stats.set_state(ConsumerState::Stopped);
        }
        tracing::info!("consumer stopped");
    }

    async fn session<B: Iterator<Item = Duration>>(
        &self,
        lease: &ConsumerLease,
        cancel: &CancellationToken,
        mut gate: Gate,
        backoff: &mut B,
        new_backoff: impl Fn() -> B,
    ) -> Result<SessionEnd, BrokerError> {
        let channel = lease.channel().await?;
        channel
            .basic_qos(
                gate.prefetch(self.spec.prefetch),
                BasicQosOptions::default(),
            )
            .await?;
        let mut deliveries = channel
            .basic_consume(
                self.spec.queue.as_str().into(),
                self.consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // A half-open probe is not running yet: the state stays
        // `circuit_open` until the probe closes the circuit.
        if gate.admission() == Admission::All {
            self.stats.set_state(ConsumerState::Running);
        }
        *backoff = new_backoff();
        tracing::info!(prefetch = self.spec.prefetch, admission = ?gate.admission(), "consuming");

        // Deliveries that arrived while the circuit was open: never handed
        // to the target, handed back to the queue when the session ends.
        let mut held: Vec<Delivery> = Vec::new();
        let mut in_flight: JoinSet<(u64, Settled)> = JoinSet::new();
        // Batch consumers only: the batch being gathered, and those sent.
        let mut batcher = self
            .spec
            .batch
            .map(|policy| Batcher::new(policy, gate.prefetch(self.spec.prefetch)));
        let mut batches: JoinSet<Vec<(u64, Settled)>> = JoinSet::new();
        let mut acks = AckWindow::new(self.stats.clone());
        let ack_rule = AckRule {
            batch: usize::from(self.spec.prefetch / 2).clamp(1, ACK_BATCH),
            prefetch: usize::from(self.spec.prefetch),
        };
        let mut flush_timer = Box::pin(tokio::time::sleep(ACK_DELAY));
        let mut timer_armed = false;
        let mut straggler_check = tokio::time::interval(STRAGGLER_WAIT);
        // Concurrency and rate: a delivery is taken only once this opens.
        let mut limits = DeliveryGate::new(
            self.spec.concurrency,
            self.spec.rate_limit,
            &self.live_replicas,
        );
        let end = loop {
            // A gathered batch goes out once the limits let one more
            // request start: a batch is one request to them.
            if let Some(gathered) = batcher.as_mut() {
                if gathered.ready() && limits.is_open() {
                    let deliveries = gathered.take();
                    batches.spawn(self.handle_batch(deliveries, limits.start()));
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break Ok(SessionEnd::Cancelled),
                ended = gate.ended() => {
                    if let GateEnd::Opened = ended {
                        self.stats.set_state(ConsumerState::CircuitOpen);
                    }
                    break Ok(SessionEnd::Circuit);
                }
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    let mut joined = vec![done];
                    while let Some(done) = in_flight.try_join_next() {
                        joined.push(done);
                    }
                    if let Err(err) = settle_joined(&mut acks, joined) {
                        break Err(err);
                    }
                    let idle = in_flight.is_empty() && batches.is_empty();
                    if let Err(err) = ack_or_arm(&mut acks, &channel, ack_rule, idle, flush_timer.as_mut(), &mut timer_armed).await {
                        break Err(err);
                    }
                }
                Some(done) = batches.join_next(), if !batches.is_empty() => {
                    if let Err(err) = settle_joined_batch(&mut acks, done) {
                        break Err(err);
                    }
                    let idle = in_flight.is_empty() && batches.is_empty();
                    if let Err(err) = ack_or_arm(&mut acks, &channel, ack_rule, idle, flush_timer.as_mut(), &mut timer_armed).await {
                        break Err(err);
                    }
                }
                _ = batch::expired(batcher.as_mut()), if batcher.as_ref().is_some_and(Batcher::waiting) => {}
                _ = &mut flush_timer, if timer_armed => {
                    timer_armed = false;
                    if let Err(err) = acks.flush(&channel).await {
                        break Err(BrokerError::from(err));
                    }
                }
                _ = straggler_check.tick(), if acks.stragglers() > 0 => {
                    if let Err(err) = acks.ack_stragglers(&channel, STRAGGLER_WAIT).await {
                        break Err(BrokerError::from(err));
                    }
                }
                _ = limits.opened(), if !limits.is_open() => {}
                // One delivery at a time takes a call slot; a batch
                // consumer gathers until its batch is full instead.
                next = deliveries.next(), if batcher.as_ref().map_or(limits.is_open(), |b| !b.is_full()) => match next {
                    Some(Ok(delivery)) => {
                        acks.track(delivery.delivery_tag);
                        if !gate.admit() {
                            held.push(delivery);
                        } else if let Some(gathered) = batcher.as_mut() {
                            gathered.push(delivery);
                            // Whatever else the broker already sent joins
                            // this batch, so a busy queue fills it at once.
                            let filled = gathered.fill(&mut deliveries, consumer_ended, |more| {
                                acks.track(more.delivery_tag);
                                if gate.admit() {
                                    Some(more)
                                } else {
                                    held.push(more);
                                    None
                                }
                            });
                            if let Err(err) = filled {
                                break Err(err);
                            }
                        } else {
                            in_flight.spawn(self.handle(delivery, limits.start()));
                        }
                    }
                    Some(Err(err)) => break Err(BrokerError::from(err)),
                    None => break Err(consumer_ended()),
                },
            }
        };

        if end.is_ok() {
            // No new deliveries; let the ones in hand finish.
            let _ = channel
                .basic_cancel(
                    self.consumer_tag.as_str().into(),
                    BasicCancelOptions::default(),
                )
                .await;
            // Not a multiple ack's business: they are in flight to the
            // window until nacked here.
            // Nor are the deliveries gathered for a batch not yet sent.
            let gathered = batcher.as_mut().map(Batcher::take).unwrap_or_default();
            for delivery in held.drain(..).chain(gathered) {
                hand_back(&delivery.acker).await;
                acks.settled(delivery.delivery_tag, Settled::HandedBack);
            }
            let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
                while let Some(done) = in_flight.join_next().await {
                    if settle_joined(&mut acks, vec![done]).is_err() {
                        break;
                    }
                }
                while let Some(done) = batches.join_next().await {
                    if settle_joined_batch(&mut acks, done).is_err() {
                        break;
                    }
                }
            })
            .await;
            let acked = async {
                acks.flush(&channel).await?;
                acks.ack_stragglers(&channel, Duration::ZERO).await
            };
            if let Err(err) = acked.await {
                tracing::warn!(error = %err, "final ack failed; the broker will redeliver");
            }
            if drained.is_err() {
                tracing::warn!(
                    unsettled = in_flight.len(),
                    unsettled_batches = batches.len(),
                    "drain timed out; handing the rest back to the queue"
                );
            }
        }
        in_flight.abort_all();
        batches.abort_all();
        // Closing the channel returns every unsettled delivery to the queue.
        if channel.status().connected() {
            let _ = channel.close(200, "consumer stopped".into()).await;
        }
        end
    }

    /// A delivery as the target sees it. The payload moves out of the
    /// delivery (settling reads it from the message).
    fn incoming(&self, delivery: &mut Delivery) -> IncomingMessage {
        IncomingMessage {
            queue: self.spec.queue.clone(),
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            content_type: delivery
                .properties
                .content_type()
                .as_ref()
                .map(|ct| ct.to_string()),
            attempt: delivery_attempt(&delivery.properties),
            payload: bytes::Bytes::from(std::mem::take(&mut delivery.data)),
        }
    }

    fn handle(
        &self,
        mut delivery: Delivery,
        call_slot: Option<CallSlot>,
    ) -> impl std::future::Future<Output = (u64, Settled)> + Send + 'static {
        let message = self.incoming(&mut delivery);
        let span = tracing::info_span!(
            "delivery",
            consumer_id = %self.spec.id,
            queue = %self.spec.queue,
            message_id = %message.message_id,
            attempt = message.attempt,
        );
        let target = self.target.clone();
        let settler = self.settler.clone();
        let stats = self.stats.clone();
        let breaker = self.breaker.clone();
        async move {
            let _in_flight = InFlightGuard::new(stats.clone());
            // Past its attempts only through the broker's redeliveries (a
            // message that crashed the gateway, say): it does not reach
            // the target again.
            if message.attempt > settler.policy.max_attempts {
                let reason = format!(
                    "gave up after {} attempt(s): the broker redelivered it without an outcome ({} {})",
                    message.attempt,
                    crate::headers::DELIVERY_COUNT,
                    message.attempt - attempt_of(&delivery.properties)
                );
                let settled = settler
                    .settle(&delivery, &message, DeliveryOutcome::Reject { reason })
                    .await;
                tracing::info!(?settled, "dead-lettered after the broker's redeliveries");
                return (delivery.delivery_tag, settled);
            }
            let started = std::time::Instant::now();
            // A target that panics gets a retry like any failure, so a
            // poison message ends in the dead-letter queue after its
            // attempts instead of spinning, and its tag is always settled.
            let outcome = std::panic::AssertUnwindSafe(target.deliver(&message))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    tracing::error!("the delivery's handler panicked");
                    DeliveryOutcome::Retry {
                        reason: "the handler panicked".into(),
                        retry_after: None,
                    }
                });
            drop(call_slot);
            stats.target_answered(started.elapsed());
            let settled = breaker::settle_through(
                breaker.as_deref(),
                &settler,
                &stats,
                &delivery,
                &message,
                outcome,
            )
            .await;
            batch::log_settled(settled);
            (delivery.delivery_tag, settled)
        }
        .instrument(span)
    }

    /// One batch: one request for every delivery in it, each settled by its
    /// own outcome.
    fn handle_batch(
        &self,
        mut deliveries: Vec<Delivery>,
        call_slot: Option<CallSlot>,
    ) -> impl std::future::Future<Output = Vec<(u64, Settled)>> + Send + 'static {
        let batch = Batch {
            id: uuid::Uuid::new_v4().to_string(),
            queue: self.spec.queue.clone(),
            messages: deliveries.iter_mut().map(|d| self.incoming(d)).collect(),
        };
        let span = tracing::info_span!(
            "batch",
            consumer_id = %self.spec.id,
            queue = %self.spec.queue,
            batch_id = %batch.id,
            size = batch.messages.len(),
        );
        let parts = BatchRun {
            target: self.target.clone(),
            settler: self.settler.clone(),
            stats: self.stats.clone(),
            breaker: self.breaker.clone(),
        };
        let stats = self.stats.clone();
        async move {
            let _in_flight: Vec<InFlightGuard> = (0..deliveries.len())
                .map(|_| InFlightGuard::new(stats.clone()))
                .collect();
            batch::run(parts, batch, deliveries, call_slot).await
        }
        .instrument(span)
    }
}

/// When acks go out: `batch` ready at most per frame, and the channel's
/// prefetch window (0: unlimited).
#[derive(Clone, Copy)]
struct AckRule {
    batch: usize,
    prefetch: usize,
}

fn consumer_ended() -> BrokerError {
    BrokerError::Unavailable("the broker ended the consumer (was the queue deleted?)".into())
}

/// Acks at once when `window.batch` are ready, when nothing else is in
/// flight (`idle`), or when half the prefetch window or more is still at
/// the target; otherwise arms the timer to ack within `ACK_DELAY`.
///
/// The half-window rule is for slow targets: there the window is mostly
/// taken by calls in progress, the broker sends the next delivery only
/// for an ack, and an ack that waits for company idles its slot for the
/// whole wait. With a fast target few calls are in progress and acks
/// still go out in batches. Bench `slow-target` (20 ms target at prefetch
/// 100, ratio to prefetch ÷ latency): 0.73 when acks always waited, 0.77
/// acking at once only when the window was entirely full, 0.84 with this
/// rule, where the minimal bridge (every ack at once) gets 0.83 on the
/// same sink; `forward` stayed at 0.99–1.02 of the minimal bridge.
async fn ack_or_arm(
    acks: &mut AckWindow,
    channel: &lapin::Channel,
    window: AckRule,
    idle: bool,
    flush_timer: std::pin::Pin<&mut tokio::time::Sleep>,
    timer_armed: &mut bool,
) -> Result<(), BrokerError> {
    let ready = acks.ready();
    let target_bound = window.prefetch > 0 && acks.in_flight() * 2 >= window.prefetch;
    if ready >= window.batch || (ready > 0 && idle) || (target_bound && ready > 0) {
        acks.flush(channel).await?;
        *timer_armed = false;
    } else if ready > 0 && !*timer_armed {
        flush_timer.reset(tokio::time::Instant::now() + ACK_DELAY);
        *timer_armed = true;
    }
    Ok(())
}

/// Records a finished batch task, as `settle_joined` does one delivery's.
fn settle_joined_batch(
    acks: &mut AckWindow,
    done: Result<Vec<(u64, Settled)>, tokio::task::JoinError>,
) -> Result<(), BrokerError> {
    let settled =
        done.map_err(|err| BrokerError::Unavailable(format!("a batch task failed: {err}")))?;
    for (tag, settled) in settled {
        acks.settled(tag, settled);
    }
    Ok(())
}

/// Records finished delivery tasks. A task that did not finish (it cannot
/// panic: `handle` catches the target's panics) leaves its tag unsettled
/// for good, so the session ends: closing the channel requeues it.
fn settle_joined(
    acks: &mut AckWindow,
    joined: Vec<Result<(u64, Settled), tokio::task::JoinError>>,
) -> Result<(), BrokerError> {
    for done in joined {
        match done {
            Ok((tag, settled)) => acks.settled(tag, settled),
            Err(err) => {
                return Err(BrokerError::Unavailable(format!(
                    "a delivery task failed: {err}"
                )))
            }
        }
    }
    Ok(())
}

/// Counts a delivery as in flight until it is settled, or its task is
/// aborted.
struct InFlightGuard(Arc<ConsumerStats>);

impl InFlightGuard {
    fn new(stats: Arc<ConsumerStats>) -> Self {
        stats.delivery_started();
        Self(stats)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.delivery_finished();
    }
}

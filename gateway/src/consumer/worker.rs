//! One consumer's task: its session loop on its own channel, and the
//! handling of each delivery up to the moment it is settled.
//!
//! The worker takes a place on a consume connection (`ConsumerLease`) and
//! keeps it across reconnects. Each session (`ConsumerWorker::session`)
//! reads top to bottom:
//! 1. `open_channel`: a channel with the consumer's prefetch;
//! 2. `start_consuming`: basic.consume under the consumer's tag;
//! 3. `Session::run_until_stop`: up to `prefetch` deliveries at once, each
//!    settled on its own (`settle`), until a cancel, the circuit breaker or
//!    a failure ends it;
//! 4. `Session::drain`, when it ended on purpose, then `Session::close`.
//!
//! A delivery's path (`handle`): the target, then, only for a consumer
//! configured with a circuit breaker, the breaker's stage
//! (`breaker::settle_unless_open`), then `Settler::settle`, which makes the
//! outcome safe and logs it; its ack goes out from the session's
//! `AckWindow`.
//!
//! Stopping (a stop, a pause, an update, SIGTERM through
//! `ConsumerSupervisor::stop_all`) cancels the worker: the session stops
//! taking deliveries (basic.cancel), hands back the ones never sent to the
//! target, lets in-flight ones finish and settle within `DRAIN_TIMEOUT`,
//! acks what is settled, and closes the channel, which hands any still
//! unsettled ones back to the queue. When the channel or connection breaks
//! instead, there is nothing to drain: the consumer goes to `reconnecting`
//! and starts over with backoff, and the broker redelivers what it had not
//! settled.
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

use super::attempts::AttemptRecorder;
use super::batch::{self, BatchRun, Batcher};
use super::breaker::{self, Admission, CircuitBreaker, Gate, GateEnd};
use super::delivery::{DeliveryRun, InFlightGuard, Step};
use super::limits::{CallSlot, DeliveryGate, LiveReplicas};
use super::ordered::{self, Event, OrderedSession};
use super::settle::{delivery_attempt, delivery_span, AckWindow, Settled, Settler};
use super::spec::ConsumerSpec;
use super::stats::{ConsumerState, ConsumerStats};
use super::target::{Batch, DeliveryTarget, Envelope, IncomingMessage};
use crate::connection::reconnect_backoff;
use crate::trace::{self, Traceparent};
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
    /// `None`: this consumer's attempts are not recorded.
    pub recorder: Option<AttemptRecorder>,
}

enum SessionEnd {
    Cancelled,
    /// The circuit breaker opened, or its probe closed it: start over.
    Circuit,
}

impl ConsumerWorker {
    /// Runs the consumer until `cancel`. The worker moves into the future
    /// once (an `async fn` taking `self` would hold it twice: as its
    /// argument and as the local it moves into).
    #[allow(clippy::manual_async_fn)]
    pub fn run(self, cancel: CancellationToken) -> impl std::future::Future<Output = ()> + Send {
        async move { self.run_until_cancelled(&cancel).await }
    }

    async fn run_until_cancelled(&self, cancel: &CancellationToken) {
        let new_backoff = || reconnect_backoff(Duration::from_millis(250), Duration::from_secs(5));
        let mut backoff = new_backoff();
        // Held until the consumer stops: its place on a consume connection.
        let lease = self.broker.consumer_lease();
        let mut link = lease.subscribe();
        loop {
            let Some(admission) =
                breaker::admission(self.breaker.as_deref(), &self.stats, cancel).await
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
                .session(&lease, cancel, gate, &mut backoff, new_backoff)
                .await
            {
                Ok(SessionEnd::Cancelled) => break,
                Ok(SessionEnd::Circuit) => {}
                Err(err) => {
                    tracing::warn!(error = %crate::Chain(&err), "consumer session ended; resuming");
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

    /// One session on one channel, top to bottom: open the channel, start
    /// consuming, run until something stops it, and, when it stopped on
    /// purpose, drain; the channel is closed however it ended.
    async fn session<B: Iterator<Item = Duration>>(
        &self,
        lease: &ConsumerLease,
        cancel: &CancellationToken,
        gate: Gate,
        backoff: &mut B,
        new_backoff: impl Fn() -> B,
    ) -> Result<SessionEnd, BrokerError> {
        // The steps a session passes through once are boxed: a future holds
        // room for its largest state, and lapin's calls are large, while an
        // idle consumer (10,000 of them, say) waits in `run_until_stop`.
        let channel = Box::pin(self.open_channel(lease, &gate)).await?;
        // The session owns the channel from here, so the future keeps one
        // copy of it, not two.
        let mut session = Session::new(self, channel, gate);
        let mut deliveries = Box::pin(self.start_consuming(&session.channel)).await?;
        let admission = session.gate.admission();
        // A half-open probe is not running yet: the state stays
        // `circuit_open` until the probe closes the circuit.
        if admission == Admission::All {
            self.stats.set_state(ConsumerState::Running);
        }
        // Consuming again: the next broken session starts a fresh backoff.
        *backoff = new_backoff();
        tracing::info!(prefetch = self.spec.prefetch, ?admission, "consuming");

        let end = session.run_until_stop(&mut deliveries, cancel).await;
        // A failed session (its channel, its consumer, an ack) is not
        // drained: its acks may not go out, and `close` hands every
        // unsettled delivery back anyway.
        if end.is_ok() {
            Box::pin(session.drain()).await;
        }
        Box::pin(session.close()).await;
        end
    }

    /// A channel of this consumer's consume connection, with the session's
    /// prefetch (1 for a half-open probe).
    async fn open_channel(
        &self,
        lease: &ConsumerLease,
        gate: &Gate,
    ) -> Result<lapin::Channel, BrokerError> {
        let channel = lease.channel().await?;
        channel
            .basic_qos(
                gate.prefetch(self.spec.prefetch),
                BasicQosOptions::default(),
            )
            .await?;
        Ok(channel)
    }

    /// Subscribes to the queue under this consumer's tag, the one `drain`
    /// cancels.
    async fn start_consuming(
        &self,
        channel: &lapin::Channel,
    ) -> Result<lapin::Consumer, BrokerError> {
        let deliveries = channel
            .basic_consume(
                self.spec.queue.as_str().into(),
                self.consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(deliveries)
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
            trace: trace_of(&delivery.properties),
            replayed: crate::headers::value(&delivery.properties, crate::headers::REPLAYED_AT)
                .is_some(),
            envelope: self.spec.envelope.then(|| Arc::new(Envelope::of(delivery))),
            added_headers: Vec::new(),
            payload: bytes::Bytes::from(std::mem::take(&mut delivery.data)),
        }
    }

    /// What each delivery's attempt uses.
    fn delivery_run(&self) -> DeliveryRun {
        DeliveryRun {
            target: self.target.clone(),
            settler: self.settler.clone(),
            stats: self.stats.clone(),
            breaker: self.breaker.clone(),
            recorder: self.recorder.clone(),
        }
    }

    /// A plain consumer's delivery: one attempt, always settled (a retry
    /// waits in a delay queue).
    fn handle(
        &self,
        mut delivery: Delivery,
        call_slot: Option<CallSlot>,
    ) -> impl std::future::Future<Output = (u64, Settled)> + Send + 'static {
        let message = self.incoming(&mut delivery);
        let span = delivery_span(&self.spec.id, &message);
        let run = self.delivery_run();
        async move {
            let settled = match run.attempt(&delivery, &message, call_slot, None).await {
                Step::Settled(settled) => settled,
                // Without an in-place budget an attempt is always settled;
                // were it not, the broker takes it back when the channel
                // closes.
                Step::Hold { .. } => Settled::HandedBack,
            };
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
            consumer_id: self.spec.id.clone(),
            target: self.target.clone(),
            settler: self.settler.clone(),
            stats: self.stats.clone(),
            breaker: self.breaker.clone(),
            recorder: self.recorder.clone(),
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

/// One session's deliveries, from the first taken to the last settled or
/// handed back. Lives as long as its channel.
struct Session<'w> {
    worker: &'w ConsumerWorker,
    channel: lapin::Channel,
    /// Which deliveries go to the target (the circuit breaker's say).
    gate: Gate,
    /// Concurrency and rate: a delivery is taken only once this opens.
    limits: DeliveryGate,
    /// Deliveries that arrived while the circuit was open: never handed
    /// to the target, handed back to the queue when the session ends.
    held: Vec<Delivery>,
    in_flight: JoinSet<(u64, Settled)>,
    /// Ordered consumers only: their deliveries by key, and those at the
    /// target or held for a retry in place (these are not in `in_flight`).
    ordered: Option<Box<OrderedSession>>,
    /// Batch consumers only: the batch being gathered, and those sent.
    batcher: Option<Batcher>,
    batches: JoinSet<Vec<(u64, Settled)>>,
    acks: AckWindow,
    ack_rule: AckRule,
    flush_timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    timer_armed: bool,
    straggler_check: tokio::time::Interval,
}

impl<'w> Session<'w> {
    fn new(worker: &'w ConsumerWorker, channel: lapin::Channel, gate: Gate) -> Self {
        let spec = &worker.spec;
        Self {
            worker,
            channel,
            limits: DeliveryGate::new(spec.concurrency, spec.rate_limit, &worker.live_replicas),
            held: Vec::new(),
            in_flight: JoinSet::new(),
            ordered: spec
                .ordering
                .clone()
                .map(|policy| Box::new(OrderedSession::new(policy, worker.stats.clone()))),
            batcher: spec
                .batch
                .map(|policy| Batcher::new(policy, gate.prefetch(spec.prefetch))),
            batches: JoinSet::new(),
            acks: AckWindow::new(worker.stats.clone()),
            ack_rule: AckRule {
                batch: usize::from(spec.prefetch / 2).clamp(1, ACK_BATCH),
                prefetch: usize::from(spec.prefetch),
            },
            flush_timer: Box::pin(tokio::time::sleep(ACK_DELAY)),
            timer_armed: false,
            // An ordered session looks every `ACK_DELAY`: a delivery waiting
            // for its key's turn holds the acks behind it for long.
            straggler_check: tokio::time::interval(if spec.ordering.is_some() {
                ACK_DELAY
            } else {
                STRAGGLER_WAIT
            }),
            gate,
        }
    }

    /// Takes deliveries and settles them until the consumer is cancelled
    /// (`Ok(Cancelled)`), the circuit breaker wants the session over
    /// (`Ok(Circuit)`), or the channel, the consumer or an ack fails
    /// (`Err`).
    async fn run_until_stop(
        &mut self,
        deliveries: &mut lapin::Consumer,
        cancel: &CancellationToken,
    ) -> Result<SessionEnd, BrokerError> {
        loop {
            self.send_gathered_batch();
            self.send_ready_ordered();
            tokio::select! {
                _ = cancel.cancelled() => return Ok(SessionEnd::Cancelled),
                ended = self.gate.ended() => {
                    if let GateEnd::Opened = ended {
                        self.worker.stats.set_state(ConsumerState::CircuitOpen);
                    }
                    return Ok(SessionEnd::Circuit);
                }
                Some(done) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    let mut joined = vec![done];
                    while let Some(done) = self.in_flight.try_join_next() {
                        joined.push(done);
                    }
                    settle_joined(&mut self.acks, joined)?;
                    self.ack_or_arm().await?;
                }
                Some(done) = self.batches.join_next(), if !self.batches.is_empty() => {
                    settle_joined_batch(&mut self.acks, done)?;
                    self.ack_or_arm().await?;
                }
                event = ordered::next_event(self.ordered.as_deref_mut()), if self.ordered.as_ref().is_some_and(|o| o.busy()) => {
                    self.on_ordered(event).await?;
                }
                _ = batch::expired(self.batcher.as_mut()), if self.batcher.as_ref().is_some_and(Batcher::waiting) => {}
                _ = &mut self.flush_timer, if self.timer_armed => {
                    self.timer_armed = false;
                    self.acks.flush(&self.channel).await?;
                }
                _ = self.straggler_check.tick(), if self.acks.stragglers() > 0 => {
                    self.acks.ack_stragglers(&self.channel, self.straggler_wait()).await?;
                }
                _ = self.limits.opened(), if !self.limits.is_open() => {}
                // Boxed on arrival: the select keeps room for its largest
                // output while it waits, and a `Delivery` inline would cost
                // every idle consumer ~400 bytes for a moment's use.
                next = deliveries.next().map(|next| next.map(|r| r.map(Box::new))), if self.taking() => match next {
                    Some(Ok(delivery)) => self.take(*delivery, deliveries)?,
                    Some(Err(err)) => return Err(BrokerError::from(err)),
                    None => return Err(consumer_ended()),
                },
            }
        }
    }

    /// A gathered batch goes out once the limits let one more request
    /// start: a batch is one request to them.
    fn send_gathered_batch(&mut self) {
        if let Some(gathered) = self.batcher.as_mut() {
            if gathered.ready() && self.limits.is_open() {
                let deliveries = gathered.take();
                let call_slot = self.limits.start();
                self.batches
                    .spawn(self.worker.handle_batch(deliveries, call_slot));
            }
        }
    }

    /// An ordered consumer's next ready delivery goes out once the limits
    /// let one more call start.
    fn send_ready_ordered(&mut self) {
        if let Some(ordered) = self.ordered.as_mut() {
            if ordered.has_ready() && self.limits.is_open() {
                let call_slot = self.limits.start();
                ordered.dispatch(call_slot, &self.worker.delivery_run(), &self.worker.spec.id);
            }
        }
    }

    /// An ordered attempt ended, or a held retry is due.
    async fn on_ordered(&mut self, event: Event) -> Result<(), BrokerError> {
        let Some(ordered) = self.ordered.as_deref_mut() else {
            return Ok(());
        };
        match event {
            Event::Finished(done) => {
                ordered
                    .finished(done, &mut self.acks)
                    .await
                    .map_err(|err| BrokerError::unavailable("running a delivery task", err))?;
                self.ack_or_arm().await
            }
            Event::Tick => {
                ordered.release_due();
                Ok(())
            }
        }
    }

    /// How long a delivery settled behind an unsettled one waits for its
    /// own ack. Deliveries waiting for their key's turn (or held for a
    /// retry) are normal in an ordered session, not slow ones: what settled
    /// behind them goes at the next check, or the prefetch window would
    /// fill with settled deliveries.
    fn straggler_wait(&self) -> Duration {
        match &self.ordered {
            Some(ordered) if ordered.waiting() => Duration::ZERO,
            _ => STRAGGLER_WAIT,
        }
    }

    /// Whether to take the next delivery: one at a time takes a call slot;
    /// a batch consumer gathers until its batch is full instead; an ordered
    /// one takes deliveries while none waits for a slot (a delivery whose
    /// key is busy waits in its lane without one).
    fn taking(&self) -> bool {
        if let Some(ordered) = &self.ordered {
            return self.limits.is_open() && !ordered.has_ready();
        }
        self.batcher
            .as_ref()
            .map_or(self.limits.is_open(), |b| !b.is_full())
    }

    /// A delivery the broker sent: to the target, into the batch being
    /// gathered, or held while the circuit is open.
    fn take(
        &mut self,
        delivery: Delivery,
        deliveries: &mut lapin::Consumer,
    ) -> Result<(), BrokerError> {
        self.acks.track(delivery.delivery_tag);
        if !self.gate.admit() {
            self.held.push(delivery);
            return Ok(());
        }
        if let Some(ordered) = self.ordered.as_mut() {
            let worker = self.worker;
            ordered.arrive(
                delivery,
                |d| worker.incoming(d),
                &worker.delivery_run(),
                &worker.spec.id,
            );
            return Ok(());
        }
        let Some(gathered) = self.batcher.as_mut() else {
            let call_slot = self.limits.start();
            self.in_flight
                .spawn(self.worker.handle(delivery, call_slot));
            return Ok(());
        };
        gathered.push(delivery);
        // Whatever else the broker already sent joins this batch, so a
        // busy queue fills it at once.
        let (acks, gate, held) = (&mut self.acks, &mut self.gate, &mut self.held);
        gathered.fill(deliveries, consumer_ended, |more| {
            acks.track(more.delivery_tag);
            if gate.admit() {
                Some(more)
            } else {
                held.push(more);
                None
            }
        })
    }

    /// Acks now, or arms the flush timer (`ack_or_arm`).
    async fn ack_or_arm(&mut self) -> Result<(), BrokerError> {
        let idle = self.in_flight.is_empty()
            && self.batches.is_empty()
            && self.ordered.as_ref().is_none_or(|o| !o.busy());
        ack_or_arm(
            &mut self.acks,
            &self.channel,
            self.ack_rule,
            idle,
            self.flush_timer.as_mut(),
            &mut self.timer_armed,
        )
        .await
    }

    /// The shutdown story of a session stopped on purpose (a stop, a pause,
    /// an update, SIGTERM, or the circuit breaker): take no more
    /// deliveries, hand back the ones never sent to the target, let the
    /// in-flight ones finish and settle within `DRAIN_TIMEOUT`, and ack
    /// what is settled. What does not finish in time goes back to the queue
    /// when `close` closes the channel.
    async fn drain(&mut self) {
        self.stop_taking().await;
        if self.ordered.is_some() {
            return self.drain_ordered().await;
        }
        self.hand_back_unsent().await;
        let finished = self.finish_in_flight().await;
        self.ack_settled().await;
        if !finished {
            tracing::warn!(
                unsettled = self.in_flight.len(),
                unsettled_batches = self.batches.len(),
                "drain timed out; handing the rest back to the queue"
            );
        }
    }

    /// An ordered session's drain (`ordered`): the attempts at the target
    /// end first, then everything not final goes back in delivery order.
    async fn drain_ordered(&mut self) {
        let Some(ordered) = self.ordered.as_mut() else {
            return;
        };
        let finished = ordered.drain(&mut self.acks, DRAIN_TIMEOUT).await;
        if finished {
            // Held while the circuit was open: they came after every
            // delivery above, so they go back after them.
            for delivery in std::mem::take(&mut self.held) {
                self.acks.hand_back(&delivery).await;
            }
        } else {
            tracing::warn!(
                unsettled = ordered.at_target(),
                "drain timed out; handing the rest back to the queue"
            );
        }
        self.ack_settled().await;
    }

    /// basic.cancel: the broker sends this consumer nothing more; what it
    /// sent already is still ours to settle.
    async fn stop_taking(&self) {
        let _ = self
            .channel
            .basic_cancel(
                self.worker.consumer_tag.as_str().into(),
                BasicCancelOptions::default(),
            )
            .await;
    }

    /// Deliveries never sent to the target: held while the circuit was
    /// open, or gathered for a batch not yet sent. They stay in flight to
    /// the ack window, holding back a `multiple` ack behind them, until
    /// they are handed back here.
    async fn hand_back_unsent(&mut self) {
        let gathered = self.batcher.as_mut().map(Batcher::take).unwrap_or_default();
        for delivery in self.held.drain(..).chain(gathered) {
            self.acks.hand_back(&delivery).await;
        }
    }

    /// Lets the deliveries and batches at the target finish and settle, for
    /// up to `DRAIN_TIMEOUT`; returns whether they all did.
    async fn finish_in_flight(&mut self) -> bool {
        let (in_flight, batches, acks) = (&mut self.in_flight, &mut self.batches, &mut self.acks);
        tokio::time::timeout(DRAIN_TIMEOUT, async {
            while let Some(done) = in_flight.join_next().await {
                if settle_joined(acks, vec![done]).is_err() {
                    break;
                }
            }
            while let Some(done) = batches.join_next().await {
                if settle_joined_batch(acks, done).is_err() {
                    break;
                }
            }
        })
        .await
        .is_ok()
    }

    /// The last acks, stragglers included, before the channel closes:
    /// closing would hand those deliveries back to be delivered again.
    async fn ack_settled(&mut self) {
        let acked = async {
            self.acks.flush(&self.channel).await?;
            self.acks
                .ack_stragglers(&self.channel, Duration::ZERO)
                .await
        };
        if let Err(err) = acked.await {
            tracing::warn!(error = %crate::Chain(&err), "final ack failed; the broker will redeliver");
        }
    }

    /// However the session ended: the tasks still at the target are
    /// aborted, unsettled, and closing the channel returns every unsettled
    /// delivery to the queue.
    async fn close(mut self) {
        self.in_flight.abort_all();
        if let Some(ordered) = self.ordered.as_mut() {
            ordered.abort();
        }
        self.batches.abort_all();
        if self.channel.status().connected() {
            let _ = self.channel.close(200, "consumer stopped".into()).await;
        }
    }
}

/// When acks go out: `batch` ready at most per frame, and the channel's
/// prefetch window (0: unlimited).
#[derive(Clone, Copy)]
struct AckRule {
    batch: usize,
    prefetch: usize,
}

/// The message's trace context. One published straight to the broker may
/// carry none, or a malformed one: it then goes to the target without one
/// rather than failing, as W3C asks of a receiver.
fn trace_of(properties: &lapin::BasicProperties) -> Option<Traceparent> {
    let value = crate::headers::text(properties, trace::HEADER)?;
    match Traceparent::parse(&value) {
        Ok(trace) => Some(trace),
        Err(err) => {
            tracing::debug!(error = %err, "ignoring the message's malformed traceparent header");
            None
        }
    }
}

fn consumer_ended() -> BrokerError {
    BrokerError::unavailable("consuming", crate::Lost::ConsumerEnded)
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
    let settled = done.map_err(|err| BrokerError::unavailable("running a batch task", err))?;
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
            Err(err) => return Err(BrokerError::unavailable("running a delivery task", err)),
        }
    }
    Ok(())
}

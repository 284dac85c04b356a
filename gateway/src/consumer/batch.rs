//! Batch delivery, opt-in per consumer: up to `maxMessages` deliveries go to
//! the target in one request, sent when the batch is full or when its oldest
//! delivery has waited `maxWait` (the bounds are `BatchPolicy`'s, in
//! `batch_policy`).
//!
//! - `Batcher`: the deliveries a session gathers for the next batch. The
//!   worker stops taking deliveries while it is full, so a batch never holds
//!   more than the prefetch allows.
//! - `run`: one batch's request and the settling of every message in it,
//!   through the circuit breaker only for a consumer configured with one.
//!   Nothing is acked or logged as settled here: each message is settled
//!   (and logged) by `settle`, and its outcome goes back to the worker's
//!   `AckWindow`, so a message's ack waits for its batch's outcome.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, Stream, StreamExt};
use lapin::message::Delivery;
use tokio::time::{Instant, Sleep};
use tracing::Instrument;

use super::attempts::{AttemptRecorder, Made, Started};
use super::batch_policy::BatchPolicy;
use super::breaker::{self, CircuitBreaker};
use super::limits::CallSlot;
use super::settle::{delivery_span, Settled, Settler};
use super::spec::ConsumerId;
use super::stats::ConsumerStats;
use super::target::{Batch, BatchOutcome, DeliveryOutcome, DeliveryTarget, ErrorKind, Failure};
use crate::BrokerError;

/// The deliveries gathered for the next batch.
pub(super) struct Batcher {
    capacity: usize,
    max_wait: Duration,
    pending: Vec<Delivery>,
    /// Fires `max_wait` after the first delivery of the batch.
    timer: Pin<Box<Sleep>>,
    /// The oldest delivery has waited long enough: send what there is.
    due: bool,
}

impl Batcher {
    /// At most `prefetch` per batch: a half-open probe session runs with
    /// prefetch 1, and its one delivery must not wait for company.
    pub fn new(policy: BatchPolicy, prefetch: u16) -> Self {
        let capacity = usize::from(policy.max_messages().min(prefetch).max(1));
        Self {
            capacity,
            max_wait: policy.max_wait(),
            pending: Vec::with_capacity(capacity),
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            due: false,
        }
    }

    pub fn push(&mut self, delivery: Delivery) {
        if self.pending.is_empty() {
            if self.max_wait.is_zero() {
                self.due = true;
            } else {
                self.timer.as_mut().reset(Instant::now() + self.max_wait);
                self.due = false;
            }
        }
        self.pending.push(delivery);
    }

    /// Adds the deliveries `stream` already holds, without waiting, until
    /// the batch is full. `admit` sees each first and returns the ones for
    /// the target (it keeps the others). A broken or ended stream is an
    /// error (`ended` says how to report the end).
    pub fn fill<S>(
        &mut self,
        stream: &mut S,
        ended: fn() -> BrokerError,
        mut admit: impl FnMut(Delivery) -> Option<Delivery>,
    ) -> Result<(), BrokerError>
    where
        S: Stream<Item = Result<Delivery, lapin::Error>> + Unpin,
    {
        while !self.is_full() {
            match stream.next().now_or_never() {
                Some(Some(Ok(delivery))) => {
                    if let Some(delivery) = admit(delivery) {
                        self.push(delivery);
                    }
                }
                Some(Some(Err(err))) => return Err(BrokerError::from(err)),
                Some(None) => return Err(ended()),
                None => break,
            }
        }
        Ok(())
    }

    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.capacity
    }

    /// Whether the batch should go out (once the limits let it).
    pub fn ready(&self) -> bool {
        !self.pending.is_empty() && (self.due || self.is_full())
    }

    /// Whether the timer is worth waiting for.
    pub fn waiting(&self) -> bool {
        !self.pending.is_empty() && !self.due
    }

    /// Resolves when the oldest delivery has waited `max_wait`.
    /// Cancel-safe: the timer keeps its deadline.
    pub async fn expired(&mut self) {
        self.timer.as_mut().await;
        self.due = true;
    }

    /// The batch to send; the next one starts empty.
    pub fn take(&mut self) -> Vec<Delivery> {
        self.due = false;
        std::mem::replace(&mut self.pending, Vec::with_capacity(self.capacity))
    }
}

/// `batcher.expired()`, or never without a batcher.
pub(super) async fn expired(batcher: Option<&mut Batcher>) {
    match batcher {
        Some(batcher) => batcher.expired().await,
        None => std::future::pending().await,
    }
}

/// What `run` needs of its consumer.
pub(super) struct BatchRun {
    pub consumer_id: ConsumerId,
    pub target: Arc<dyn DeliveryTarget>,
    pub settler: Arc<Settler>,
    pub stats: Arc<ConsumerStats>,
    pub breaker: Option<Arc<CircuitBreaker>>,
    /// `None`: this consumer's attempts are not recorded.
    pub recorder: Option<AttemptRecorder>,
}

/// Sends one batch and settles each of its messages by the outcome; returns
/// each delivery's tag with what it became, for the `AckWindow`.
pub(super) async fn run(
    parts: BatchRun,
    batch: Batch,
    deliveries: Vec<Delivery>,
    call_slot: Option<CallSlot>,
) -> Vec<(u64, Settled)> {
    let started = Started::now();
    // A target that panics gets a retry like any failure (see the worker).
    let outcome = std::panic::AssertUnwindSafe(parts.target.deliver_batch(&batch))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            tracing::error!("the batch's handler panicked");
            BatchOutcome::all(
                DeliveryOutcome::retry(Failure::new(ErrorKind::Handler, "the handler panicked")),
                batch.messages.len(),
            )
        });
    drop(call_slot);
    let answered_after = started.clock.elapsed();
    parts.stats.target_answered(answered_after);
    tracing::debug!(request = ?outcome.request, "batch answered");
    // The breaker's stage, for a consumer configured with one: one verdict
    // for the whole request. `None`: no breaker, straight to settling.
    let circuit_open = parts
        .breaker
        .as_ref()
        .map(|breaker| breaker.record_request(&outcome.request));
    let Batch { id, messages, .. } = batch;
    let BatchOutcome {
        messages: outcomes,
        sent,
        answer,
        ..
    } = outcome;
    let mut outcomes = outcomes.into_iter();
    let (started, sent, answer, id) = (&started, sent.as_ref(), answer.as_ref(), id.as_str());
    let settling = deliveries.iter().zip(&messages).map(|(delivery, message)| {
        // A target that answered for fewer messages than it was sent: the
        // rest are tried again.
        let outcome = outcomes.next().unwrap_or_else(|| {
            DeliveryOutcome::retry(Failure::new(
                ErrorKind::Request,
                "the target gave no outcome for this message",
            ))
        });
        let span = delivery_span(&parts.consumer_id, message);
        let settler = &parts.settler;
        let recorder = parts.recorder.as_ref();
        async move {
            let error = recorder.and_then(|_| outcome.failure().cloned());
            let settled = match circuit_open {
                Some(open) => {
                    breaker::settle_unless_open(open, settler, delivery, message, outcome).await
                }
                None => settler.settle(delivery, message, outcome).await,
            };
            if let Some(recorder) = recorder {
                let made = Made {
                    started,
                    answered_after: Some(answered_after),
                    batch_id: Some(id),
                    request: sent,
                    answer,
                    error,
                    circuit_open: circuit_open.unwrap_or(false),
                };
                recorder.record(message, made, settled);
            }
            (delivery.delivery_tag, settled)
        }
        .instrument(span)
    });
    // Each copy waits for its own confirm; together, not one by one.
    futures_util::future::join_all(settling).await
}

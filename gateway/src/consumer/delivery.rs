//! One attempt of one delivery, from the call to its settling: the target,
//! then, only for a consumer configured with a circuit breaker, the
//! breaker's stage, then `Settler::settle`, and the attempt's record.
//!
//! A plain consumer's attempt always ends settled. An ordered consumer's
//! may end `Step::Hold` instead: a retryable failure with attempts left is
//! retried in place, by the session holding the delivery unacked (see
//! `ordering`), so nothing is settled and the delivery stays in flight to
//! the ack window.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use lapin::message::Delivery;

use super::attempts::{AttemptRecorder, Made, Started};
use super::breaker::{self, CircuitBreaker};
use super::limits::CallSlot;
use super::settle::{attempt_of, Settled, Settler};
use super::stats::ConsumerStats;
use super::target::{
    Attempt, DeliveryOutcome, DeliveryTarget, ErrorKind, Failure, IncomingMessage,
};

/// The parts an attempt uses, cloned into each delivery's task.
#[derive(Clone)]
pub(super) struct DeliveryRun {
    pub target: Arc<dyn DeliveryTarget>,
    pub settler: Arc<Settler>,
    pub stats: Arc<ConsumerStats>,
    pub breaker: Option<Arc<CircuitBreaker>>,
    /// `None`: this consumer's attempts are not recorded.
    pub recorder: Option<AttemptRecorder>,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// The outcome is safe (or the delivery was handed back).
    Settled(Settled),
    /// Retry in place after `delay`: nothing settled (ordered consumers
    /// only).
    Hold { delay: Duration },
}

/// An ordered consumer's budget for retrying in place: the delivery may be
/// held until `taken_at + max_hold`.
#[derive(Debug, Clone, Copy)]
pub(super) struct InPlace {
    pub taken_at: Instant,
    pub max_hold: Duration,
}

impl DeliveryRun {
    /// One attempt of `delivery`, settled unless `in_place` lets a
    /// retryable failure wait in place (`Step::Hold`).
    pub async fn attempt(
        &self,
        delivery: &Delivery,
        message: &IncomingMessage,
        call_slot: Option<CallSlot>,
        in_place: Option<InPlace>,
    ) -> Step {
        let _in_flight = InFlightGuard::new(self.stats.clone());
        let started = Started::now();
        // Past its attempts only through the broker's redeliveries (a
        // message that crashed the gateway, say): it does not reach the
        // target again.
        if message.attempt > self.settler.policy.max_attempts {
            let failure = Failure::new(
                ErrorKind::DeliveryLimit,
                format!(
                    "gave up after {} attempt(s): the broker redelivered it without an outcome ({} {})",
                    message.attempt,
                    crate::headers::DELIVERY_COUNT,
                    message.attempt - attempt_of(&delivery.properties)
                ),
            );
            tracing::info!("past its attempts through the broker's redeliveries: dead-lettering it without a call");
            return Step::Settled(self.dead_letter_uncalled(delivery, message, failure).await);
        }
        // A target that panics gets a retry like any failure, so a poison
        // message ends in the dead-letter queue after its attempts instead
        // of spinning, and its tag is always settled.
        let attempt = std::panic::AssertUnwindSafe(self.target.deliver(message))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!("the delivery's handler panicked");
                DeliveryOutcome::retry(Failure::new(ErrorKind::Handler, "the handler panicked"))
                    .into()
            });
        drop(call_slot);
        let answered_after = started.clock.elapsed();
        // A delivery the rules took was never at the target.
        if !matches!(attempt.outcome, DeliveryOutcome::Filtered { .. }) {
            self.stats.target_answered(answered_after);
        }
        let Attempt {
            outcome,
            request,
            answer,
        } = attempt;
        // Only a consumer configured with a circuit breaker passes its
        // stage; the others settle straight away.
        let circuit_open = self
            .breaker
            .as_ref()
            .is_some_and(|breaker| breaker.record_request(&outcome));
        // An ordered consumer's retryable failure may wait in place: the
        // delivery stays unsettled, and its record says a retry is due.
        let held = match in_place.filter(|_| !circuit_open) {
            Some(in_place) => self.retry_in_place(in_place, message, outcome),
            None => Err(outcome),
        };
        let (step, error) = match held {
            Ok((delay, failure)) => (Step::Hold { delay }, Some(failure)),
            Err(outcome) => {
                let error = self
                    .recorder
                    .as_ref()
                    .and_then(|_| outcome.failure().cloned());
                let settled = match &self.breaker {
                    Some(_) => {
                        breaker::settle_unless_open(
                            circuit_open,
                            &self.settler,
                            delivery,
                            message,
                            outcome,
                        )
                        .await
                    }
                    None => self.settler.settle(delivery, message, outcome).await,
                };
                (Step::Settled(settled), error)
            }
        };
        if let Some(recorder) = &self.recorder {
            let made = Made {
                started: &started,
                answered_after: Some(answered_after),
                batch_id: None,
                request: request.as_ref(),
                answer: answer.as_ref(),
                error,
                circuit_open,
            };
            let recorded = match step {
                Step::Settled(settled) => settled,
                Step::Hold { delay } => Settled::Retried {
                    delay_ms: delay.as_millis() as u64,
                },
            };
            recorder.record(message, made, recorded);
        }
        step
    }

    /// Dead-letters `delivery` without calling the target (past its
    /// attempts, or without the key an ordered consumer needs), and records
    /// it.
    pub async fn dead_letter_uncalled(
        &self,
        delivery: &Delivery,
        message: &IncomingMessage,
        failure: Failure,
    ) -> Settled {
        let started = Started::now();
        let settled = self
            .settler
            .settle(delivery, message, DeliveryOutcome::reject(failure.clone()))
            .await;
        if let Some(recorder) = &self.recorder {
            let made = Made {
                started: &started,
                answered_after: None,
                batch_id: None,
                request: None,
                answer: None,
                error: Some(failure),
                circuit_open: false,
            };
            recorder.record(message, made, settled);
        }
        settled
    }

    /// For a retryable failure with attempts left: the wait before the next
    /// try (and the failure, for the record), when it ends within the hold
    /// budget; otherwise the outcome to
    /// settle with (unchanged, or a dead-lettering for the hold limit).
    fn retry_in_place(
        &self,
        in_place: InPlace,
        message: &IncomingMessage,
        outcome: DeliveryOutcome,
    ) -> Result<(Duration, Failure), DeliveryOutcome> {
        let policy = &self.settler.policy;
        let DeliveryOutcome::Retry {
            failure,
            retry_after,
        } = outcome
        else {
            return Err(outcome);
        };
        if message.attempt >= policy.max_attempts {
            return Err(DeliveryOutcome::Retry {
                failure,
                retry_after,
            });
        }
        let delay = policy.delay_before(message.attempt + 1, retry_after);
        if in_place.taken_at.elapsed() + delay <= in_place.max_hold {
            self.stats.record_error(&failure.reason);
            self.stats.retried();
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "retry in place scheduled"
            );
            return Ok((delay, failure));
        }
        Err(DeliveryOutcome::reject(Failure {
            kind: ErrorKind::HoldLimit,
            status: failure.status,
            reason: format!(
                "a retry in {} ms would hold the delivery past ORDERED_MAX_HOLD_MS ({} ms): {}",
                delay.as_millis(),
                in_place.max_hold.as_millis(),
                failure.reason
            ),
        }))
    }
}

/// Counts a delivery as in flight until its attempt is over, or its task is
/// aborted.
pub(super) struct InFlightGuard(Arc<ConsumerStats>);

impl InFlightGuard {
    pub fn new(stats: Arc<ConsumerStats>) -> Self {
        stats.delivery_started();
        Self(stats)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.delivery_finished();
    }
}

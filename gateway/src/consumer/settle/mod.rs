//! Settling a delivery: **the one place a delivery is acked** (the acks
//! themselves go out from `ack_window`, part of this module; nothing outside
//! it acks a delivery).
//!
//! At-least-once rests on one rule: the original leaves its queue only once
//! its outcome is safe.
//! - `Delivered` → ack.
//! - `Retry` with attempts left → publish a copy to the delay queue
//!   `<queue>.retry.<ms>`, wait for the broker's confirm, then ack.
//! - `Reject`, or `Retry` out of attempts → publish a copy to `<queue>.dlq`
//!   with attempts, last error and time, wait for the confirm, then ack.
//!
//! `Settler::settle` makes the outcome safe and says so; `AckWindow` sends
//! the acks. Acks are coalesced with `multiple` up to the highest delivery
//! tag below which *every* delivery on the channel has a safe outcome, so
//! a slow delivery holds back the acks after it, never the other way round.
//!
//! Copies are published by the gateway's own user, so they never carry the
//! original's `user_id` (the broker refuses a `user_id` other than the
//! publishing connection's user). A copy whose bookkeeping headers would not
//! fit in one frame is dead-lettered without them, its reason in one short
//! `x-workerrmq-last-error` (see `copies`). While the broker blocks
//! publishing, a copy waits for the block to lift (`BLOCKED_WAIT`).
//!
//! If a copy cannot be confirmed, the original is handed back (nack with
//! requeue) so it comes again; if even that fails the channel is gone and
//! the broker redelivers it anyway.

mod ack_window;
mod copies;

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use lapin::message::Delivery;
use lapin::options::BasicNackOptions;
use lapin::types::AMQPValue;
use lapin::BasicProperties;

pub(crate) use ack_window::AckWindow;
pub(crate) use copies::kept_properties;
use copies::{dead_letter_copy, retry_copy, CopyFit};

use super::stats::ConsumerStats;
use super::target::{DeliveryOutcome, IncomingMessage};
use super::RetryPolicy;
use crate::{headers, BrokerError, OutgoingMessage, PublishOutcome, Publisher, Topology};

/// Pause before handing back a delivery whose copy failed, so a broken
/// delay queue cannot turn into a hot redelivery loop.
const HAND_BACK_PAUSE: Duration = Duration::from_secs(1);
/// Well inside the 10 minutes a delay queue lives unused.
const REDECLARE_EVERY: Duration = Duration::from_secs(60);
/// How long a copy waits for the broker to unblock publishing before its
/// original is handed back. Well inside the broker's consumer timeout.
const BLOCKED_WAIT: Duration = Duration::from_secs(60);
const BLOCKED_CHECK: Duration = Duration::from_millis(200);

/// What a delivery became once its outcome is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// The target took it: ack.
    Acked,
    /// A confirmed copy waits in a delay queue: ack.
    Retried { delay_ms: u64 },
    /// A confirmed copy is in the dead-letter queue: ack.
    DeadLettered,
    /// Already nacked back to the queue; nothing to ack.
    HandedBack,
}

pub(crate) struct Settler {
    pub publisher: Arc<Publisher>,
    pub topology: Topology,
    pub policy: RetryPolicy,
    pub stats: Arc<ConsumerStats>,
    /// Companion queues this consumer declared, and when. Publishing does
    /// not count as use for a delay queue's `x-expires`; declaring does, so
    /// a queue in use is declared again every `REDECLARE_EVERY`.
    declared: DashMap<String, Instant>,
}

impl Settler {
    pub fn new(
        publisher: Arc<Publisher>,
        topology: Topology,
        policy: RetryPolicy,
        stats: Arc<ConsumerStats>,
    ) -> Self {
        Self {
            publisher,
            topology,
            policy,
            stats,
            declared: DashMap::new(),
        }
    }

    /// Makes the outcome safe. Does not ack: `AckWindow` does, once every
    /// earlier delivery is settled too.
    pub async fn settle(
        &self,
        delivery: &Delivery,
        message: &IncomingMessage,
        outcome: DeliveryOutcome,
    ) -> Settled {
        let frame_max = self.publisher.frame_max();
        let result = match outcome {
            DeliveryOutcome::Delivered => Ok(Settled::Acked),
            DeliveryOutcome::Retry {
                reason,
                retry_after,
            } if message.attempt < self.policy.max_attempts => {
                self.stats.record_error(&reason);
                let delay = self.policy.delay_before(message.attempt + 1, retry_after);
                match retry_copy(&delivery.properties, message, &reason, frame_max) {
                    CopyFit::Fits(properties) => self
                        .copy_to_delay_queue(delivery, message, properties, delay)
                        .await
                        .map(|()| Settled::Retried {
                            delay_ms: delay.as_millis() as u64,
                        }),
                    // Without its attempt count a retry would start over,
                    // for ever: the message ends here instead.
                    CopyFit::Trimmed(_) => {
                        let reason = format!(
                            "could not schedule a retry, the message's headers leave no room for the gateway's: {reason}"
                        );
                        self.dead_letter(delivery, message, &reason, frame_max)
                            .await
                    }
                }
            }
            DeliveryOutcome::Retry { reason, .. } => {
                let reason = format!("gave up after {} attempt(s): {reason}", message.attempt);
                self.stats.record_error(&reason);
                self.dead_letter(delivery, message, &reason, frame_max)
                    .await
            }
            DeliveryOutcome::Reject { reason } => {
                self.stats.record_error(&reason);
                self.dead_letter(delivery, message, &reason, frame_max)
                    .await
            }
        };
        match result {
            Ok(settled) => settled,
            Err(err) => {
                tracing::warn!(error = %err, "could not store the retry or dead-letter copy; handing the message back");
                self.stats
                    .record_error(format!("could not store the copy: {err}"));
                tokio::time::sleep(HAND_BACK_PAUSE).await;
                hand_back(&delivery.acker).await;
                Settled::HandedBack
            }
        }
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        message: &IncomingMessage,
        reason: &str,
        frame_max: Option<u32>,
    ) -> Result<Settled, BrokerError> {
        let properties = match dead_letter_copy(&delivery.properties, message, reason, frame_max) {
            CopyFit::Fits(properties) => properties,
            CopyFit::Trimmed(properties) => {
                tracing::warn!(
                    frame_max,
                    "the dead-letter copy would not fit a frame with the gateway's headers; dead-lettering it without them"
                );
                properties
            }
        };
        let queue_name = message.queue.dead_letter_queue();
        let dlq = queue_name.clone();
        self.publish_copy(&queue_name, &delivery.data, properties, || async {
            self.topology.declare_dead_letter_queue(&dlq).await
        })
        .await
        .map(|()| Settled::DeadLettered)
    }

    async fn copy_to_delay_queue(
        &self,
        delivery: &Delivery,
        message: &IncomingMessage,
        properties: BasicProperties,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        let delay_ms = delay.as_millis() as u64;
        let queue_name = message.queue.retry_queue(delay_ms);
        self.publish_copy(&queue_name, &delivery.data, properties, || async {
            self.topology
                .declare_retry_queue(&message.queue, delay_ms)
                .await
                .map(|_| ())
        })
        .await
    }

    /// Publishes a confirmed copy to a companion queue, declaring it first
    /// if this consumer has not yet (or if it vanished since).
    async fn publish_copy<F, Fut>(
        &self,
        queue_name: &str,
        payload: &[u8],
        properties: BasicProperties,
        declare: F,
    ) -> Result<(), BrokerError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), BrokerError>>,
    {
        for _ in 0..2 {
            let fresh = self
                .declared
                .get(queue_name)
                .is_some_and(|at| at.elapsed() < REDECLARE_EVERY);
            if !fresh {
                declare().await?;
                self.declared.insert(queue_name.to_owned(), Instant::now());
            }
            let outcome = self
                .publish_when_unblocked(OutgoingMessage {
                    exchange: "",
                    routing_key: queue_name,
                    payload,
                    properties: properties.clone(),
                    mandatory: true,
                })
                .await?;
            match outcome {
                PublishOutcome::Confirmed => return Ok(()),
                // The companion was deleted under us: declare it again.
                PublishOutcome::Unroutable => {
                    self.declared.remove(queue_name);
                }
            }
        }
        Err(BrokerError::NotFound(format!(
            "the companion queue `{queue_name}` could not be declared"
        )))
    }

    /// A blocked publish connection (a broker alarm) is waited out for up to
    /// `BLOCKED_WAIT`: handing the original back at once would only bring it
    /// round again, to the target, while the alarm lasts.
    async fn publish_when_unblocked(
        &self,
        message: OutgoingMessage<'_>,
    ) -> Result<PublishOutcome, BrokerError> {
        let started = Instant::now();
        loop {
            match self.publisher.publish(message.clone()).await {
                Err(BrokerError::Blocked) if started.elapsed() < BLOCKED_WAIT => {
                    tokio::time::sleep(BLOCKED_CHECK).await;
                }
                other => return other,
            }
        }
    }
}

/// Returns a delivery to its queue, to come again. Failure means the
/// channel is gone, and the broker returns it anyway.
pub(crate) async fn hand_back(acker: &lapin::acker::Acker) {
    let _ = acker
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await;
}

/// Reads the attempt number a copy carries; an original is attempt 1.
pub(crate) fn attempt_of(properties: &BasicProperties) -> u32 {
    let n = match headers::value(properties, headers::ATTEMPT) {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => i64::from(*n),
        _ => 1,
    };
    n.clamp(1, i64::from(u32::MAX)) as u32
}

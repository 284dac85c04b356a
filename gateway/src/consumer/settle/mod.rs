//! Settling a delivery: **the one place a delivery is acked**, or handed
//! back to its queue. Nothing outside this module acks or nacks.
//!
//! Where the acks go out, exactly:
//! - `AckWindow::flush` (`ack_window`): one `multiple` ack for the settled
//!   front of a consumer channel.
//! - `AckWindow::ack_stragglers` (`ack_window`): deliveries settled behind a
//!   slow one, one by one.
//! - `settle_replayed` (`replay`): a dead letter replayed to its main queue,
//!   once the broker confirmed the copy there.
//!
//! What makes a consumer's delivery safe to ack is `Settler::settle`; the
//! nacks (`hand_back`) go out from it (a copy not confirmed), from
//! `Settler::hand_back_unspent` (the circuit breaker is open), from
//! `AckWindow::hand_back` (a delivery never sent to the target) and from
//! `settle_replayed` (a replay copy not confirmed). Every settled outcome is
//! logged by `log_settled`, in the delivery's span (`delivery_span`).
//!
//! At-least-once rests on one rule: the original leaves its queue only once
//! its outcome is safe.
//! - `Delivered` → ack.
//! - `Filtered` (the consumer's rules took it, no call made) → ack.
//! - `Retry` with attempts left → publish a copy to the delay queue
//!   `<queue>.retry.<ms>`, wait for the broker's confirm, then ack.
//! - `Reject`, or `Retry` out of attempts → publish a copy to `<queue>.dlq`
//!   with attempts, last error and time, wait for the confirm, then ack.
//! - A dead letter replayed → publish a fresh copy to the main queue, wait
//!   for the confirm, then ack the dead letter.
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
mod replay;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::BasicNackOptions;
use lapin::types::AMQPValue;
use lapin::BasicProperties;

pub(crate) use ack_window::AckWindow;
pub(crate) use copies::kept_properties;
use copies::{dead_letter_copy, retry_copy, CopyFit};
pub(crate) use replay::{settle_replayed, Replayed};

use super::spec::ConsumerId;
use super::stats::ConsumerStats;
use super::target::{DeliveryOutcome, Failure, IncomingMessage};
use super::RetryPolicy;
use crate::companion_types::CompanionTypes;
use crate::{
    headers, BrokerError, OutgoingMessage, PublishOutcome, Publisher, QueueName, QueueType,
    Topology,
};

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
    /// The consumer's rules took it without a call (its filter refused
    /// it, or they failed under `onRuleError: "drop"`): ack.
    Filtered,
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
    /// a queue in use is declared again every `REDECLARE_EVERY`. A plain
    /// map under a lock: a consumer touches it once per copy, and a
    /// `DashMap`'s shards cost ~1 KiB per consumer before its first copy.
    declared: std::sync::Mutex<HashMap<String, Instant>>,
    /// How to learn the type the companions take (the main queue's).
    companion_types: CompanionTypes,
    /// The main queue's type once learnt; until then the default is used.
    main_type: std::sync::OnceLock<QueueType>,
}

impl Settler {
    pub fn new(
        publisher: Arc<Publisher>,
        topology: Topology,
        policy: RetryPolicy,
        stats: Arc<ConsumerStats>,
        companion_types: CompanionTypes,
    ) -> Self {
        Self {
            publisher,
            topology,
            policy,
            stats,
            declared: std::sync::Mutex::new(HashMap::new()),
            companion_types,
            main_type: std::sync::OnceLock::new(),
        }
    }

    fn declared(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // Entries are whole even after a panic elsewhere: a poisoned lock
        // is still a usable map.
        self.declared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The type `main`'s companions are declared with.
    async fn companion_type(&self, main: &QueueName) -> QueueType {
        if let Some(known) = self.main_type.get() {
            return *known;
        }
        match self.companion_types.known(main).await {
            Some(known) => *self.main_type.get_or_init(|| known),
            None => self.companion_types.default_type(),
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
        log_settled(self.make_safe(delivery, message, outcome).await)
    }

    /// A retryable failure while the circuit breaker is open: back to the
    /// queue as it came, no copy made, so its attempt is not spent.
    pub async fn hand_back_unspent(&self, delivery: &Delivery, reason: &str) -> Settled {
        self.stats.record_error(format!("circuit open: {reason}"));
        hand_back(&delivery.acker).await;
        log_settled(Settled::HandedBack)
    }

    async fn make_safe(
        &self,
        delivery: &Delivery,
        message: &IncomingMessage,
        outcome: DeliveryOutcome,
    ) -> Settled {
        let frame_max = self.publisher.frame_max();
        let result = match outcome {
            DeliveryOutcome::Delivered => Ok(Settled::Acked),
            DeliveryOutcome::Filtered { error } => {
                if let Some(failure) = error {
                    self.stats.record_error(&failure.reason);
                }
                Ok(Settled::Filtered)
            }
            DeliveryOutcome::Retry {
                failure,
                retry_after,
            } if message.attempt < self.policy.max_attempts => {
                self.stats.record_error(&failure.reason);
                let delay = self.policy.delay_before(message.attempt + 1, retry_after);
                match retry_copy(
                    &delivery.properties,
                    message,
                    &failure,
                    delay.as_millis() as u64,
                    frame_max,
                ) {
                    CopyFit::Fits(properties) => self
                        .copy_to_delay_queue(message, properties, delay)
                        .await
                        .map(|()| Settled::Retried {
                            delay_ms: delay.as_millis() as u64,
                        }),
                    // Without its attempt count a retry would start over,
                    // for ever: the message ends here instead.
                    CopyFit::Trimmed(_) => {
                        let failure = failure.with_reason(format!(
                            "could not schedule a retry, the message's headers leave no room for the gateway's: {}",
                            failure.reason
                        ));
                        self.dead_letter(delivery, message, &failure, frame_max)
                            .await
                    }
                }
            }
            DeliveryOutcome::Retry { failure, .. } => {
                let failure = failure.with_reason(format!(
                    "gave up after {} attempt(s): {}",
                    message.attempt, failure.reason
                ));
                self.stats.record_error(&failure.reason);
                self.dead_letter(delivery, message, &failure, frame_max)
                    .await
            }
            DeliveryOutcome::Reject { failure } => {
                self.stats.record_error(&failure.reason);
                self.dead_letter(delivery, message, &failure, frame_max)
                    .await
            }
        };
        match result {
            Ok(settled) => settled,
            Err(err) => {
                tracing::warn!(error = %crate::Chain(&err), "could not store the retry or dead-letter copy; handing the message back");
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
        failure: &Failure,
        frame_max: Option<u32>,
    ) -> Result<Settled, BrokerError> {
        let properties = match dead_letter_copy(&delivery.properties, message, failure, frame_max) {
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
        self.publish_copy(&queue_name, &message.payload, properties, || async {
            let queue_type = self.companion_type(&message.queue).await;
            self.topology
                .declare_dead_letter_queue(&dlq, queue_type)
                .await
        })
        .await
        .map(|()| Settled::DeadLettered)
    }

    async fn copy_to_delay_queue(
        &self,
        message: &IncomingMessage,
        properties: BasicProperties,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        let delay_ms = delay.as_millis() as u64;
        let queue_name = message.queue.retry_queue(delay_ms);
        self.publish_copy(&queue_name, &message.payload, properties, || async {
            let queue_type = self.companion_type(&message.queue).await;
            self.topology
                .declare_retry_queue(&message.queue, delay_ms, queue_type)
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
                .declared()
                .get(queue_name)
                .is_some_and(|at| at.elapsed() < REDECLARE_EVERY);
            if !fresh {
                declare().await?;
                self.declared()
                    .insert(queue_name.to_owned(), Instant::now());
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
                    self.declared().remove(queue_name);
                }
            }
        }
        Err(BrokerError::not_found(
            format!("publishing a copy to `{queue_name}`"),
            format!("the companion queue `{queue_name}` could not be declared"),
        ))
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

/// The span a delivery is handled and settled in: every line
/// `log_settled` writes carries which consumer, queue and message it is
/// about, for a single delivery and for each message of a batch alike.
pub(crate) fn delivery_span(consumer_id: &ConsumerId, message: &IncomingMessage) -> tracing::Span {
    tracing::info_span!(
        "delivery",
        consumer_id = %consumer_id,
        queue = %message.queue,
        message_id = %message.message_id,
        attempt = message.attempt,
    )
}

/// One line per settled delivery, in its `delivery_span`.
fn log_settled(settled: Settled) -> Settled {
    match settled {
        Settled::Acked => tracing::debug!("delivered"),
        Settled::Retried { delay_ms } => tracing::info!(delay_ms, "retry scheduled"),
        Settled::DeadLettered => tracing::info!("dead-lettered"),
        Settled::Filtered => tracing::debug!("filtered by the consumer's rules"),
        Settled::HandedBack => tracing::warn!("handed back to the queue"),
    }
    settled
}

/// Returns a delivery to its queue, to come again. Failure means the
/// channel is gone, and the broker returns it anyway. Private to `settle`:
/// a nack, like an ack, is this module's business.
async fn hand_back(acker: &lapin::Acker) {
    let _ = acker
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await;
}

/// Reads the attempt number a copy carries; an original is attempt 1.
pub(crate) fn attempt_of(properties: &BasicProperties) -> u32 {
    whole_number(properties, headers::ATTEMPT).map_or(1, |n| n.clamp(1, i64::from(u32::MAX)) as u32)
}

/// The attempt a delivery is: the gateway's count (`attempt_of`) plus the
/// deliveries the broker made of this very message before without an
/// outcome (`x-delivery-count`, quorum queues). A message that kills the
/// gateway, or that the broker takes back on a consumer timeout, so counts
/// its attempts like one the target failed, and reaches `maxAttempts`.
pub(crate) fn delivery_attempt(properties: &BasicProperties) -> u32 {
    let redeliveries = whole_number(properties, headers::DELIVERY_COUNT)
        .map_or(0, |n| n.clamp(0, i64::from(u32::MAX)) as u32);
    attempt_of(properties).saturating_add(redeliveries)
}

fn whole_number(properties: &BasicProperties, header: &str) -> Option<i64> {
    let n = match headers::value(properties, header)? {
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        _ => return None,
    };
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldTable;

    fn with(headers: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (name, value) in headers {
            table.insert((*name).into(), value.clone());
        }
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn broker_redeliveries_count_as_attempts() {
        assert_eq!(delivery_attempt(&BasicProperties::default()), 1);
        assert_eq!(
            delivery_attempt(&with(&[(
                headers::DELIVERY_COUNT,
                AMQPValue::LongLongInt(2)
            )])),
            3
        );
        assert_eq!(
            delivery_attempt(&with(&[
                (headers::ATTEMPT, AMQPValue::LongLongInt(3)),
                (headers::DELIVERY_COUNT, AMQPValue::LongInt(1)),
            ])),
            4
        );
        assert_eq!(
            delivery_attempt(&with(&[(
                headers::DELIVERY_COUNT,
                AMQPValue::LongLongInt(-5)
            )])),
            1,
            "nonsense counts nothing"
        );
    }

    #[test]
    fn copies_do_not_carry_the_brokers_count() {
        let original = with(&[
            (headers::DELIVERY_COUNT, AMQPValue::LongLongInt(4)),
            ("app", AMQPValue::LongLongInt(1)),
        ]);
        let copy = kept_properties(&original, None, original.headers().clone().unwrap());
        let table = copy.headers().clone().unwrap();
        assert!(!table.contains_key(headers::DELIVERY_COUNT));
        assert!(table.contains_key("app"));
    }
}

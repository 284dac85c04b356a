//! Settling a delivery: **the one place a delivery is acked.**
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
//! If a copy cannot be confirmed, the original is handed back (nack with
//! requeue) so it comes again; if even that fails the channel is gone and
//! the broker redelivers it anyway.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use lapin::Channel;

use super::stats::ConsumerStats;
use super::target::{DeliveryOutcome, IncomingMessage};
use super::{headers, RetryPolicy};
use crate::{BrokerError, OutgoingMessage, PublishOutcome, Publisher, Topology};

/// Longest error text carried in a header.
const MAX_REASON_BYTES: usize = 1_000;
/// Pause before handing back a delivery whose copy failed, so a broken
/// delay queue cannot turn into a hot redelivery loop.
const HAND_BACK_PAUSE: Duration = Duration::from_secs(1);
/// Well inside the 10 minutes a delay queue lives unused.
const REDECLARE_EVERY: Duration = Duration::from_secs(60);

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
        let result = match outcome {
            DeliveryOutcome::Delivered => Ok(Settled::Acked),
            DeliveryOutcome::Retry {
                reason,
                retry_after,
            } if message.attempt < self.policy.max_attempts => {
                self.stats.record_error(&reason);
                let delay = self.policy.delay_before(message.attempt + 1, retry_after);
                self.copy_to_delay_queue(delivery, message, &reason, delay)
                    .await
                    .map(|()| Settled::Retried {
                        delay_ms: delay.as_millis() as u64,
                    })
            }
            DeliveryOutcome::Retry { reason, .. } => {
                let reason = format!("gave up after {} attempt(s): {reason}", message.attempt);
                self.stats.record_error(&reason);
                self.copy_to_dead_letters(delivery, message, &reason)
                    .await
                    .map(|()| Settled::DeadLettered)
            }
            DeliveryOutcome::Reject { reason } => {
                self.stats.record_error(&reason);
                self.copy_to_dead_letters(delivery, message, &reason)
                    .await
                    .map(|()| Settled::DeadLettered)
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

    async fn copy_to_delay_queue(
        &self,
        delivery: &Delivery,
        message: &IncomingMessage,
        reason: &str,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        let delay_ms = delay.as_millis() as u64;
        let queue_name = message.queue.retry_queue(delay_ms);
        let properties = copy_properties(
            &delivery.properties,
            message,
            &[
                (
                    headers::ATTEMPT,
                    AMQPValue::LongLongInt(i64::from(message.attempt) + 1),
                ),
                (headers::LAST_ERROR, text(reason)),
            ],
        );
        self.publish_copy(&queue_name, &delivery.data, properties, || async {
            self.topology
                .declare_retry_queue(&message.queue, delay_ms)
                .await
                .map(|_| ())
        })
        .await
    }

    async fn copy_to_dead_letters(
        &self,
        delivery: &Delivery,
        message: &IncomingMessage,
        reason: &str,
    ) -> Result<(), BrokerError> {
        let queue_name = message.queue.dead_letter_queue();
        let properties = copy_properties(
            &delivery.properties,
            message,
            &[
                (
                    headers::ATTEMPT,
                    AMQPValue::LongLongInt(i64::from(message.attempt)),
                ),
                (headers::LAST_ERROR, text(reason)),
                (
                    headers::DEAD_LETTERED_AT,
                    text(&chrono::Utc::now().to_rfc3339()),
                ),
                (headers::ORIGINAL_QUEUE, text(message.queue.as_str())),
            ],
        );
        let dlq = queue_name.clone();
        self.publish_copy(&queue_name, &delivery.data, properties, || async {
            self.topology.declare_dead_letter_queue(&dlq).await
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
                .publisher
                .publish(OutgoingMessage {
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

fn text(value: &str) -> AMQPValue {
    let mut end = value.len().min(MAX_REASON_BYTES);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    AMQPValue::LongString(LongString::from(value.as_bytes()[..end].to_vec()))
}

/// The original's properties, persistent, with the stable message id and
/// the gateway's bookkeeping headers, and without a per-message
/// `expiration`: a copy must not quietly vanish from a delay or dead-letter
/// queue (RabbitMQ's own dead-lettering drops it too).
fn copy_properties(
    original: &BasicProperties,
    message: &IncomingMessage,
    extra: &[(&str, AMQPValue)],
) -> BasicProperties {
    let mut table: FieldTable = original.headers().clone().unwrap_or_default();
    for (name, value) in extra {
        table.insert((*name).into(), value.clone());
    }
    let mut copy = BasicProperties::default()
        .with_message_id(message.message_id.clone().into())
        .with_delivery_mode(2)
        .with_headers(table);
    if let Some(v) = original.content_type() {
        copy = copy.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        copy = copy.with_content_encoding(v.clone());
    }
    if let Some(v) = original.priority() {
        copy = copy.with_priority(*v);
    }
    if let Some(v) = original.correlation_id() {
        copy = copy.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        copy = copy.with_reply_to(v.clone());
    }
    if let Some(v) = original.timestamp() {
        copy = copy.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        copy = copy.with_type(v.clone());
    }
    if let Some(v) = original.user_id() {
        copy = copy.with_user_id(v.clone());
    }
    if let Some(v) = original.app_id() {
        copy = copy.with_app_id(v.clone());
    }
    if let Some(v) = original.cluster_id() {
        copy = copy.with_cluster_id(v.clone());
    }
    copy
}

/// Reads the attempt number a copy carries; an original is attempt 1.
pub(crate) fn attempt_of(properties: &BasicProperties) -> u32 {
    let Some(table) = properties.headers() else {
        return 1;
    };
    let value = table
        .inner()
        .iter()
        .find(|(k, _)| k.as_str() == headers::ATTEMPT)
        .map(|(_, v)| v);
    let n = match value {
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

/// Acks flow from here only. Tracks the delivery tags of one channel in
/// arrival order; acks with `multiple` up to the highest tag below which
/// every delivery is settled, and, so that one slow delivery cannot hold
/// the rest of the prefetch window hostage, acks deliveries settled behind
/// it one by one once they have waited `straggler` long.
pub(crate) struct AckWindow {
    outstanding: VecDeque<Entry>,
    stats: Arc<ConsumerStats>,
}

struct Entry {
    tag: u64,
    state: EntryState,
}

#[derive(Clone, Copy)]
enum EntryState {
    InFlight,
    /// Safe, waiting for its ack.
    Settled(Settled, Instant),
    /// Acked on its own, or handed back: nothing more to send.
    Done,
}

impl AckWindow {
    pub fn new(stats: Arc<ConsumerStats>) -> Self {
        Self {
            outstanding: VecDeque::new(),
            stats,
        }
    }

    /// A delivery arrived on the channel.
    pub fn track(&mut self, tag: u64) {
        self.outstanding.push_back(Entry {
            tag,
            state: EntryState::InFlight,
        });
    }

    /// A delivery's outcome is safe (or it was handed back).
    pub fn settled(&mut self, tag: u64, settled: Settled) {
        // Tags grow on a channel, so the deque is sorted.
        if let Ok(i) = self.outstanding.binary_search_by_key(&tag, |e| e.tag) {
            self.outstanding[i].state = match settled {
                Settled::HandedBack => EntryState::Done,
                other => EntryState::Settled(other, Instant::now()),
            };
        }
    }

    /// Settled deliveries at the front, ready for one `multiple` ack.
    pub fn ready(&self) -> usize {
        self.outstanding
            .iter()
            .take_while(|e| !matches!(e.state, EntryState::InFlight))
            .filter(|e| matches!(e.state, EntryState::Settled(..)))
            .count()
    }

    /// Settled deliveries waiting behind one still in flight.
    pub fn stragglers(&self) -> usize {
        self.outstanding
            .iter()
            .skip_while(|e| !matches!(e.state, EntryState::InFlight))
            .filter(|e| matches!(e.state, EntryState::Settled(..)))
            .count()
    }

    /// One ack, with `multiple`, for everything settled at the front.
    pub async fn flush(&mut self, channel: &Channel) -> Result<(), lapin::Error> {
        let mut up_to = None;
        let mut acked = Vec::new();
        while let Some(entry) = self.outstanding.front() {
            match entry.state {
                EntryState::InFlight => break,
                EntryState::Settled(settled, _) => {
                    up_to = Some(entry.tag);
                    acked.push(settled);
                }
                EntryState::Done => {}
            }
            self.outstanding.pop_front();
        }
        let Some(up_to) = up_to else {
            return Ok(());
        };
        // Tags below `up_to` that were handed back or acked on their own are
        // no longer outstanding; `multiple` passes over them.
        channel
            .basic_ack(up_to, BasicAckOptions { multiple: true })
            .await?;
        for settled in acked {
            self.count(settled);
        }
        Ok(())
    }

    /// Acks, one by one, deliveries settled at least `waited` ago that sit
    /// behind one still in flight.
    pub async fn ack_stragglers(
        &mut self,
        channel: &Channel,
        waited: Duration,
    ) -> Result<(), lapin::Error> {
        let mut behind_gap = false;
        for i in 0..self.outstanding.len() {
            let entry = &self.outstanding[i];
            match entry.state {
                EntryState::InFlight => behind_gap = true,
                EntryState::Settled(settled, at) if behind_gap && at.elapsed() >= waited => {
                    channel
                        .basic_ack(entry.tag, BasicAckOptions { multiple: false })
                        .await?;
                    self.outstanding[i].state = EntryState::Done;
                    self.count(settled);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn count(&self, settled: Settled) {
        match settled {
            Settled::Acked => self.stats.acked(),
            Settled::Retried { .. } => self.stats.retried(),
            Settled::DeadLettered => self.stats.dead_lettered(),
            Settled::HandedBack => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> AckWindow {
        AckWindow::new(Arc::new(ConsumerStats::default()))
    }

    #[test]
    fn only_the_settled_front_is_ready_for_a_multiple_ack() {
        let mut w = window();
        for tag in 1..=5 {
            w.track(tag);
        }
        w.settled(2, Settled::Acked);
        w.settled(3, Settled::Acked);
        assert_eq!((w.ready(), w.stragglers()), (0, 2), "1 is still in flight");
        w.settled(1, Settled::Acked);
        assert_eq!((w.ready(), w.stragglers()), (3, 0));
        w.settled(5, Settled::DeadLettered);
        assert_eq!((w.ready(), w.stragglers()), (3, 1), "4 is still in flight");
        w.settled(4, Settled::Retried { delay_ms: 10 });
        assert_eq!((w.ready(), w.stragglers()), (5, 0));
    }

    #[test]
    fn a_handed_back_delivery_is_passed_but_never_acked() {
        let mut w = window();
        w.track(7);
        w.settled(7, Settled::HandedBack);
        assert_eq!(w.ready(), 0);
        w.track(8);
        w.settled(8, Settled::Acked);
        assert_eq!(w.ready(), 1);
    }
}

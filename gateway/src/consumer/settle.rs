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
//! If a copy cannot be confirmed, the original is handed back (nack with
//! requeue) so it comes again; if even that fails the channel is gone and
//! the broker redelivers it anyway.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashSet;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;

use super::stats::ConsumerStats;
use super::target::{DeliveryOutcome, IncomingMessage};
use super::{headers, RetryPolicy};
use crate::{BrokerError, OutgoingMessage, PublishOutcome, Publisher, Topology};

/// Longest error text carried in a header.
const MAX_REASON_BYTES: usize = 1_000;
/// Pause before handing back a delivery whose copy failed, so a broken
/// delay queue cannot turn into a hot redelivery loop.
const HAND_BACK_PAUSE: Duration = Duration::from_secs(1);

/// What the settled delivery became, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    Acked,
    Retried { delay_ms: u64 },
    DeadLettered,
    HandedBack,
}

pub(crate) struct Settler {
    pub publisher: Arc<Publisher>,
    pub topology: Topology,
    pub policy: RetryPolicy,
    pub stats: Arc<ConsumerStats>,
    /// Companion queues this consumer already declared.
    declared: DashSet<String>,
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
            declared: DashSet::new(),
        }
    }

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
            Ok(settled) => {
                // The outcome is safe now; only here does the original go.
                match delivery.acker.ack(BasicAckOptions::default()).await {
                    Ok(()) => {
                        match settled {
                            Settled::Acked => self.stats.acked(),
                            Settled::Retried { .. } => self.stats.retried(),
                            Settled::DeadLettered => self.stats.dead_lettered(),
                            Settled::HandedBack => {}
                        }
                        settled
                    }
                    Err(err) => {
                        // The channel broke: the broker redelivers the original.
                        self.stats.record_error(format!("ack failed: {err}"));
                        Settled::HandedBack
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not store the retry or dead-letter copy; handing the message back");
                self.stats
                    .record_error(format!("could not store the copy: {err}"));
                tokio::time::sleep(HAND_BACK_PAUSE).await;
                let _ = delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await;
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
            if !self.declared.contains(queue_name) {
                declare().await?;
                self.declared.insert(queue_name.to_owned());
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

fn text(value: &str) -> AMQPValue {
    let mut end = value.len().min(MAX_REASON_BYTES);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    AMQPValue::LongString(LongString::from(value[..end].as_bytes().to_vec()))
}

/// The original's properties, persistent, with the stable message id and
/// the gateway's bookkeeping headers.
fn copy_properties(
    original: &BasicProperties,
    message: &IncomingMessage,
    extra: &[(&str, AMQPValue)],
) -> BasicProperties {
    let mut table: FieldTable = original.headers().clone().unwrap_or_default();
    for (name, value) in extra {
        table.insert((*name).into(), value.clone());
    }
    original
        .clone()
        .with_message_id(message.message_id.clone().into())
        .with_delivery_mode(2)
        .with_headers(table)
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

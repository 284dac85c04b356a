//! What a consumer hands each delivery (or batch of deliveries) to, and
//! what it answers.

use std::time::Duration;

use crate::QueueName;

/// A delivery as a target sees it.
#[derive(Debug, Clone)]
pub struct IncomingMessage {
    /// The main queue the delivery came from.
    pub queue: QueueName,
    /// Stable across retries: the message's own id, or one the gateway
    /// assigned at the first delivery and carried on every copy.
    pub message_id: String,
    /// The delivery's own bytes, taken from it: cloning is a reference
    /// count, so the request body and any copy the settler publishes
    /// share them.
    pub payload: bytes::Bytes,
    /// The message's `content_type` property, if it had one.
    pub content_type: Option<String>,
    /// 1-based.
    pub attempt: u32,
    /// The message's trace context (its `traceparent` header), when it
    /// carries a valid one; each call to the target is a child span of it.
    pub trace: Option<crate::Traceparent>,
}

/// The verdict on one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Done: ack.
    Delivered,
    /// Worth trying again later (408, 429, 5xx, timeout, store down).
    /// `retry_after` is the target's own hint, clamped by the policy.
    Retry {
        /// Why the attempt failed, kept as the message's last error.
        reason: String,
        /// How long the target asked to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// Will never succeed (other 4xx, invalid message): dead-letter now.
    Reject {
        /// Why, kept as the message's last error.
        reason: String,
    },
}

/// Deliveries handed over in one request (batch delivery).
#[derive(Debug, Clone)]
pub struct Batch {
    /// Fresh for every request, retries included: what `webhook-id` says.
    pub id: String,
    /// The main queue the deliveries came from.
    pub queue: QueueName,
    /// The deliveries, in the order they were taken.
    pub messages: Vec<IncomingMessage>,
}

/// The verdict on one batch request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// The request's own: what the circuit breaker counts, once per batch.
    pub request: DeliveryOutcome,
    /// Each message's, in the order the batch holds them.
    pub messages: Vec<DeliveryOutcome>,
}

impl BatchOutcome {
    /// The same outcome for the request and for each of its `n` messages.
    pub fn all(outcome: DeliveryOutcome, n: usize) -> Self {
        Self {
            messages: vec![outcome.clone(); n],
            request: outcome,
        }
    }
}

/// Where a consumer hands its deliveries: an HTTP endpoint or a built-in handler. Its answer
/// decides the ack, the retry or the dead-lettering.
#[async_trait::async_trait]
pub trait DeliveryTarget: Send + Sync + 'static {
    /// Hands over one delivery and says what became of it. Must not panic on any input: a failure
    /// is an outcome.
    async fn deliver(&self, message: &IncomingMessage) -> DeliveryOutcome;

    /// Hands over a whole batch. By default one message after another, for
    /// targets with no batch form of their own; the request's verdict is
    /// then the first failure worth retrying, else a success.
    async fn deliver_batch(&self, batch: &Batch) -> BatchOutcome {
        let mut messages = Vec::with_capacity(batch.messages.len());
        for message in &batch.messages {
            messages.push(self.deliver(message).await);
        }
        let request = messages
            .iter()
            .find(|o| matches!(o, DeliveryOutcome::Retry { .. }))
            .cloned()
            .unwrap_or(DeliveryOutcome::Delivered);
        BatchOutcome { request, messages }
    }
}

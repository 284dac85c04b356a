//! What a consumer hands each delivery to, and what it answers.

use std::time::Duration;

use crate::QueueName;

/// A delivery as a target sees it.
#[derive(Debug, Clone)]
pub struct IncomingMessage {
    pub queue: QueueName,
    /// Stable across retries: the message's own id, or one the gateway
    /// assigned at the first delivery and carried on every copy.
    pub message_id: String,
    pub payload: Vec<u8>,
    pub content_type: Option<String>,
    /// 1-based.
    pub attempt: u32,
}

/// The verdict on one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Done: ack.
    Delivered,
    /// Worth trying again later (408, 429, 5xx, timeout, store down).
    /// `retry_after` is the target's own hint, clamped by the policy.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Will never succeed (other 4xx, invalid message): dead-letter now.
    Reject { reason: String },
}

#[async_trait::async_trait]
pub trait DeliveryTarget: Send + Sync + 'static {
    async fn deliver(&self, message: &IncomingMessage) -> DeliveryOutcome;
}

//! What a consumer hands each delivery (or batch of deliveries) to, and
//! what it answers.

use std::time::Duration;

pub use super::failure::{ErrorKind, Failure};
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
    /// Whether this is the first attempt after a replay from the
    /// dead-letter queue.
    pub replayed: bool,
    /// Where it was published and its headers, for a consumer with rules
    /// (`ConsumerSpec::envelope`); `None` for the others, which never read
    /// them, so their deliveries copy nothing more.
    pub envelope: Option<std::sync::Arc<Envelope>>,
    /// Headers a consumer's transform adds to the request; empty (no
    /// allocation) otherwise.
    pub added_headers: Vec<(String, String)>,
}

/// Where a message was published, and its headers: what a consumer's rules
/// may read besides the payload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Envelope {
    /// The exchange it was published to (`""`: the default exchange).
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Its headers, names in lower case, values as JSON (a byte array as
    /// text when it is UTF-8, else an array of numbers).
    pub headers: Vec<(String, serde_json::Value)>,
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
        failure: Failure,
        /// How long the target asked to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// Will never succeed (other 4xx, invalid message): dead-letter now.
    Reject {
        /// Why, kept as the message's last error.
        failure: Failure,
    },
    /// No call made: the consumer's rules took it (its filter refused it,
    /// or they failed under `onRuleError: "drop"`). Acked and counted as
    /// `filtered`.
    Filtered {
        /// Why the rules failed, when they did; `None`: the filter refused it.
        error: Option<Failure>,
    },
}

impl DeliveryOutcome {
    /// A retry for `failure`, with no hint of when.
    pub fn retry(failure: Failure) -> Self {
        Self::Retry {
            failure,
            retry_after: None,
        }
    }

    /// A dead-lettering for `failure`.
    pub fn reject(failure: Failure) -> Self {
        Self::Reject { failure }
    }

    /// Why the attempt failed; `None` when it was delivered.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Self::Delivered => None,
            Self::Filtered { error } => error.as_ref(),
            Self::Retry { failure, .. } | Self::Reject { failure } => Some(failure),
        }
    }
}

/// What the target said, for the attempt's record: the status, a short
/// allow-list of headers and the first bytes of the body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// Only allow-listed headers (`content-type`, `retry-after`, …): the
    /// rest may carry what the target did not mean to be kept.
    pub headers: Vec<(String, String)>,
    /// The body's first bytes (lossy UTF-8), as many as the consumer keeps.
    pub body: String,
    /// Whether the body was longer than what was kept.
    pub body_truncated: bool,
}

/// The request a target sends, as it may be kept: no secret in it. The same
/// for every attempt of a consumer (what changes from one to the next, the
/// message id, attempt and trace, the record holds on its own).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestShape {
    /// The HTTP method.
    pub method: String,
    /// The URL with userinfo and query values masked (`***`).
    pub url: String,
    /// The names of the headers sent, never their values: the target's own
    /// may be credentials, and so is the signature.
    pub headers: Vec<String>,
}

/// One attempt's verdict with what was sent and what came back, when the
/// target knows (an HTTP target does; a built-in handler answers only the
/// verdict).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The verdict.
    pub outcome: DeliveryOutcome,
    /// What was sent.
    pub request: Option<std::sync::Arc<RequestShape>>,
    /// What the target answered, if it answered.
    pub answer: Option<Answer>,
}

impl From<DeliveryOutcome> for Attempt {
    fn from(outcome: DeliveryOutcome) -> Self {
        Self {
            outcome,
            request: None,
            answer: None,
        }
    }
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
    /// What was sent, when the target knows (see `Attempt`).
    pub sent: Option<std::sync::Arc<RequestShape>>,
    /// The one answer to the request, kept on each message's record.
    pub answer: Option<Answer>,
}

impl BatchOutcome {
    /// The same outcome for the request and for each of its `n` messages.
    pub fn all(outcome: DeliveryOutcome, n: usize) -> Self {
        Self {
            messages: vec![outcome.clone(); n],
            request: outcome,
            sent: None,
            answer: None,
        }
    }
}

/// Where a consumer hands its deliveries: an HTTP endpoint or a built-in handler. Its answer
/// decides the ack, the retry or the dead-lettering.
#[async_trait::async_trait]
pub trait DeliveryTarget: Send + Sync + 'static {
    /// Hands over one delivery and says what became of it. Must not panic on any input: a failure
    /// is an outcome.
    async fn deliver(&self, message: &IncomingMessage) -> Attempt;

    /// Hands over a whole batch. By default one message after another, for
    /// targets with no batch form of their own; the request's verdict is
    /// then the first failure worth retrying, else a success.
    async fn deliver_batch(&self, batch: &Batch) -> BatchOutcome {
        let mut messages = Vec::with_capacity(batch.messages.len());
        for message in &batch.messages {
            messages.push(self.deliver(message).await.outcome);
        }
        let request = messages
            .iter()
            .find(|o| matches!(o, DeliveryOutcome::Retry { .. }))
            .cloned()
            .unwrap_or(DeliveryOutcome::Delivered);
        BatchOutcome {
            request,
            messages,
            sent: None,
            answer: None,
        }
    }
}

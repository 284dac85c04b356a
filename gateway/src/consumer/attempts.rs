//! Attempt records: once an attempt is settled, the engine hands one
//! `AttemptRecord` to the `AttemptLog` (the store's buffered writer lives in
//! `services`). The engine only builds the record; keeping it must never
//! wait, so a slow or stopped store cannot hold up a delivery or its ack.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::settle::Settled;
use super::spec::ConsumerId;
use super::target::{Answer, Failure, IncomingMessage, RequestShape};
use crate::QueueName;

/// What made the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A delivery from the queue (a first try or a retry).
    Delivery,
    /// The first attempt after a replay from the dead-letter queue.
    Replay,
}

impl Trigger {
    /// The name the API writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivery => "delivery",
            Self::Replay => "replay",
        }
    }
}

/// What became of the message after the attempt, once that was safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The target took it; acked.
    Delivered,
    /// A copy waits in a delay queue for the next attempt.
    RetryScheduled,
    /// A copy is in the dead-letter queue.
    DeadLettered,
    /// Acked without a call: the consumer's filter refused it, or its
    /// rules failed under `onRuleError: "drop"` (the record's error says
    /// why).
    Filtered,
    /// Back to its queue as it came (the circuit was open, or its copy could
    /// not be stored): it comes again.
    HandedBack,
}

impl AttemptOutcome {
    /// Every outcome.
    pub const ALL: [AttemptOutcome; 5] = [
        Self::Delivered,
        Self::RetryScheduled,
        Self::DeadLettered,
        Self::Filtered,
        Self::HandedBack,
    ];

    /// The name the API writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::RetryScheduled => "retry_scheduled",
            Self::DeadLettered => "dead_lettered",
            Self::Filtered => "filtered",
            Self::HandedBack => "handed_back",
        }
    }

    /// The outcome named `name`; `None` outside the set.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == name)
    }

    pub(super) fn of(settled: Settled) -> Self {
        match settled {
            Settled::Acked => Self::Delivered,
            Settled::Retried { .. } => Self::RetryScheduled,
            Settled::DeadLettered => Self::DeadLettered,
            Settled::Filtered => Self::Filtered,
            Settled::HandedBack => Self::HandedBack,
        }
    }
}

/// One attempt, as the engine saw it. The log adds its id and the replica.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// The consumer that made it.
    pub consumer_id: ConsumerId,
    /// The main queue.
    pub queue: QueueName,
    /// The message's stable id.
    pub message_id: String,
    /// 1-based.
    pub attempt: u32,
    /// Delivery or replay.
    pub trigger: Trigger,
    /// For a batch consumer: the request's id, shared by its messages.
    pub batch_id: Option<String>,
    /// When the attempt started.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// From the start to the target's answer (zero when no call was made).
    pub duration: Duration,
    /// What became of the message.
    pub outcome: AttemptOutcome,
    /// What was sent; `None` for a built-in handler or when no call was
    /// made.
    pub request: Option<Arc<RequestShape>>,
    /// The message body (a reference count, not a copy): the log measures
    /// and hashes it off the delivery path.
    pub body: bytes::Bytes,
    /// What the target answered, if it did.
    pub answer: Option<Answer>,
    /// Why it failed, if it did.
    pub error: Option<Failure>,
    /// The W3C trace id the message carried, if any.
    pub trace_id: Option<String>,
}

/// Where attempt records go. `record` is called on the delivery path: it
/// must return at once, whatever the store is doing.
pub trait AttemptLog: Send + Sync + 'static {
    /// Keeps `record` (or drops it and counts the drop, when full).
    fn record(&self, record: AttemptRecord);
}

/// Builds each attempt's record for one consumer, when its log is on.
#[derive(Clone)]
pub(super) struct AttemptRecorder {
    pub log: Arc<dyn AttemptLog>,
    pub consumer_id: ConsumerId,
}

/// An attempt under way: when it started, and what the target said.
pub(super) struct Started {
    pub at: chrono::DateTime<chrono::Utc>,
    pub clock: Instant,
}

impl Started {
    pub fn now() -> Self {
        Self {
            at: chrono::Utc::now(),
            clock: Instant::now(),
        }
    }
}

/// What an attempt's record is made of, besides the message.
pub(super) struct Made<'a> {
    pub started: &'a Started,
    /// Till the answer; `None`: no call was made.
    pub answered_after: Option<Duration>,
    pub batch_id: Option<&'a str>,
    pub request: Option<&'a Arc<RequestShape>>,
    pub answer: Option<&'a Answer>,
    pub error: Option<Failure>,
    /// Whether the circuit breaker was open after the answer (a retryable
    /// failure then goes back unspent).
    pub circuit_open: bool,
}

impl AttemptRecorder {
    pub fn record(&self, message: &IncomingMessage, made: Made<'_>, settled: Settled) {
        self.log.record(AttemptRecord {
            consumer_id: self.consumer_id.clone(),
            queue: message.queue.clone(),
            message_id: message.message_id.clone(),
            attempt: message.attempt,
            trigger: if message.replayed {
                Trigger::Replay
            } else {
                Trigger::Delivery
            },
            batch_id: made.batch_id.map(str::to_owned),
            started_at: made.started.at,
            duration: made.answered_after.unwrap_or_default(),
            outcome: AttemptOutcome::of(settled),
            request: made.request.cloned(),
            body: message.payload.clone(),
            answer: made.answer.cloned(),
            error: match (settled, made.error) {
                (Settled::HandedBack, Some(failure)) => {
                    Some(failure.handed_back(made.circuit_open))
                }
                (_, error) => error,
            },
            trace_id: message.trace.map(|t| t.trace_id().to_string()),
        });
    }
}

//! What a consumer is to the engine: its id and the spec it runs with. The
//! supervisor starts workers from a spec; the worker reads it while it runs.

use std::fmt;

use super::batch_policy::BatchPolicy;
use super::limits::{Concurrency, RatePerSec};
use super::ordering::OrderingPolicy;
use super::{CircuitBreakerPolicy, RetryPolicy};
use crate::QueueName;

/// Names a registered consumer: a UUID the gateway mints, the same on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ConsumerId(String);

impl ConsumerId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// Accepts only the ids this gateway mints (UUIDs), so anything else is
    /// a clean 404 rather than a lookup.
    pub fn parse(raw: &str) -> Option<Self> {
        uuid::Uuid::parse_str(raw)
            .ok()
            .map(|u| Self(u.hyphenated().to_string()))
    }

    /// The hyphenated UUID.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ConsumerId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ConsumerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything a worker needs to run one consumer; the supervisor starts workers from it.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Which consumer this is.
    pub id: ConsumerId,
    /// The main queue consumed.
    pub queue: QueueName,
    /// Deliveries worked on at once; at least 1.
    pub prefetch: u16,
    /// How failures are retried, and when they are dead-lettered instead.
    pub retry: RetryPolicy,
    /// Target calls at once on this replica; at most `prefetch`.
    pub concurrency: Concurrency,
    /// Deliveries started per second by the consumer on all replicas.
    pub rate_limit: Option<RatePerSec>,
    /// `None`: no breaker, every failure is retried.
    pub circuit_breaker: Option<CircuitBreakerPolicy>,
    /// `None`: one request per delivery.
    pub batch: Option<BatchPolicy>,
    /// Whether each attempt leaves a record (`attemptLog.enabled`).
    pub record_attempts: bool,
    /// `None`: deliveries go to the target as they come, retries through
    /// delay queues; `Some`: one key at a time, in order, retried in place.
    pub ordering: Option<OrderingPolicy>,
    /// Whether each delivery carries its `Envelope` (exchange, routing
    /// key, headers): only a consumer with rules reads it.
    pub envelope: bool,
}

//! Prometheus metric families of the delivery path. Each consumer's
//! `ConsumerStats` holds handles into these families, so `/getConsumers`
//! and `/metrics` read the very same counters.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Shared strings: each consumer has eleven series, and every family
/// keeps its own copy of the labels (about 0.8 KiB a consumer as
/// `String`s, 8 MiB at 10,000 consumers).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    /// The consumer's id.
    pub consumer_id: Arc<str>,
    /// The main queue it consumes.
    pub queue: Arc<str>,
}

/// One series per consumer and state: 1 for the state it is in, 0 for the
/// others, so `workerrmq_consumer_state{state="circuit_open"} == 1` finds
/// the consumers whose circuit is open.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerStateLabels {
    /// The consumer's id.
    pub consumer_id: Arc<str>,
    /// The main queue it consumes.
    pub queue: Arc<str>,
    /// One of `GAUGED_STATES`.
    pub state: &'static str,
}

/// The states the gauge reports, by their API names.
pub const GAUGED_STATES: [&str; 4] = ["running", "paused", "circuit_open", "reconnecting"];

impl ConsumerStateLabels {
    /// The series of `labels`' consumer for `state`.
    pub fn of(labels: &ConsumerLabels, state: &'static str) -> Self {
        Self {
            consumer_id: labels.consumer_id.clone(),
            queue: labels.queue.clone(),
            state,
        }
    }
}

/// 0.5 ms to ~16 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The per-consumer delivery series of `/metrics`, shared by every consumer of the replica.
pub struct DeliveryMetrics {
    /// Deliveries handed to a target.
    pub delivered: Family<ConsumerLabels, Counter>,
    /// Deliveries acked after a successful outcome.
    pub acked: Family<ConsumerLabels, Counter>,
    /// Deliveries sent to a delay queue for another attempt.
    pub retried: Family<ConsumerLabels, Counter>,
    /// Deliveries moved to the dead-letter queue.
    pub dead_lettered: Family<ConsumerLabels, Counter>,
    /// Deliveries acked without a call by the consumer's rules (`filter`,
    /// or `onRuleError: "drop"`).
    pub filtered: Family<ConsumerLabels, Counter>,
    /// Deliveries being worked on now.
    pub in_flight: Family<ConsumerLabels, Gauge>,
    /// Times a consumer's circuit breaker opened.
    pub circuit_openings: Family<ConsumerLabels, Counter>,
    /// 1 for the state each consumer is in, 0 for the others.
    pub state: Family<ConsumerStateLabels, Gauge>,
    /// Time from handing a delivery to its target until the target answered.
    pub target_seconds: Family<ConsumerLabels, Histogram, fn() -> Histogram>,
    /// Ordered consumers: keys with a message at the target.
    pub keys_in_flight: Family<ConsumerLabels, Gauge>,
    /// Ordered consumers: keys whose head waits for a retry in place.
    pub keys_held: Family<ConsumerLabels, Gauge>,
    /// Ordered consumers: how long the longest-held delivery waiting for a
    /// retry has been held, in milliseconds.
    pub oldest_held_ms: Family<ConsumerLabels, Gauge>,
}

impl Default for DeliveryMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl DeliveryMetrics {
    /// Empty families; series appear as consumers register.
    pub fn new() -> Self {
        Self {
            delivered: Family::default(),
            acked: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            filtered: Family::default(),
            in_flight: Family::default(),
            circuit_openings: Family::default(),
            state: Family::default(),
            target_seconds: Family::new_with_constructor(latency_histogram),
            keys_in_flight: Family::default(),
            keys_held: Family::default(),
            oldest_held_ms: Family::default(),
        }
    }

    /// Adds every family to `registry`; call once at startup.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "workerrmq_deliveries",
            "Deliveries handed to a target",
            self.delivered.clone(),
        );
        registry.register(
            "workerrmq_acked",
            "Deliveries acked after a successful outcome",
            self.acked.clone(),
        );
        registry.register(
            "workerrmq_retried",
            "Deliveries sent to a delay queue for another attempt",
            self.retried.clone(),
        );
        registry.register(
            "workerrmq_dead_lettered",
            "Deliveries moved to the dead-letter queue",
            self.dead_lettered.clone(),
        );
        registry.register(
            "workerrmq_filtered",
            "Deliveries acked without a call by the consumer's rules (filter, or onRuleError drop)",
            self.filtered.clone(),
        );
        registry.register(
            "workerrmq_in_flight",
            "Deliveries being worked on now",
            self.in_flight.clone(),
        );
        registry.register(
            "workerrmq_circuit_openings",
            "Times a consumer's circuit breaker opened",
            self.circuit_openings.clone(),
        );
        registry.register(
            "workerrmq_consumer_state",
            "1 for the state each consumer is in (running, paused, circuit_open, reconnecting), 0 for the others",
            self.state.clone(),
        );
        registry.register(
            "workerrmq_target_round_trip_seconds",
            "Time from handing a delivery to its target until the target answered",
            self.target_seconds.clone(),
        );
        registry.register(
            "workerrmq_ordered_keys_in_flight",
            "Ordered consumers: keys with a message at the target",
            self.keys_in_flight.clone(),
        );
        registry.register(
            "workerrmq_ordered_keys_held",
            "Ordered consumers: keys whose message waits for a retry in place",
            self.keys_held.clone(),
        );
        registry.register(
            "workerrmq_ordered_oldest_held_ms",
            "Ordered consumers: how long the longest-held message waiting for a retry has been held, in milliseconds",
            self.oldest_held_ms.clone(),
        );
    }

    /// Drops a stopped consumer's series.
    pub fn forget(&self, labels: &ConsumerLabels) {
        self.delivered.remove(labels);
        self.acked.remove(labels);
        self.retried.remove(labels);
        self.dead_lettered.remove(labels);
        self.filtered.remove(labels);
        self.in_flight.remove(labels);
        self.circuit_openings.remove(labels);
        for state in GAUGED_STATES {
            self.state.remove(&ConsumerStateLabels::of(labels, state));
        }
        self.target_seconds.remove(labels);
        self.keys_in_flight.remove(labels);
        self.keys_held.remove(labels);
        self.oldest_held_ms.remove(labels);
    }
}

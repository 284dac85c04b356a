//! Live per-consumer counters, lock-free on the delivery path. The counters
//! are handles into the Prometheus families (`crate::metrics`), so the API
//! and `/metrics` always agree.

use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::metrics::{
    latency_histogram, ConsumerLabels, ConsumerStateLabels, DeliveryMetrics, GAUGED_STATES,
};

/// What a consumer is doing on this replica, as the API and `/metrics` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsumerState {
    /// Consuming: deliveries flow.
    Running,
    /// Registered, its AMQP consumer cancelled: messages wait in the queue.
    Paused,
    /// Waiting for a broker connection (also before the first one).
    Reconnecting,
    /// Not running on this replica: stopped, its worker ended on its own, or stored but not
    /// started here.
    Stopped,
    /// Its circuit breaker opened: no deliveries taken until a probe
    /// succeeds.
    #[serde(rename = "circuit_open")]
    CircuitOpen,
}

/// One consumer's live counters and state on this replica, shared by its worker and the API. Writes
/// also go to the consumer's `/metrics` series.
pub struct ConsumerStats {
    state: AtomicU8,
    /// `workerrmq_consumer_state`, in `GAUGED_STATES` order.
    state_gauges: [Gauge; 4],
    delivered: Counter,
    acked: Counter,
    retried: Counter,
    dead_lettered: Counter,
    filtered: Counter,
    in_flight: Gauge,
    target_seconds: Histogram,
    last_delivery_at_ms: AtomicI64,
    /// The last error with when it happened.
    last_error: Mutex<Option<(String, chrono::DateTime<chrono::Utc>)>>,
    /// Set once the consumer first runs ordered: only ordered consumers
    /// carry these series.
    ordering: OnceLock<OrderingGauges>,
}

/// An ordered consumer's keys, live: what `stats` and `/metrics` show.
pub struct OrderingGauges {
    keys_in_flight: Gauge,
    keys_held: Gauge,
    oldest_held_ms: Gauge,
}

/// An ordered consumer's keys at one moment.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct KeysSnapshot {
    /// Keys with a message at the target now.
    pub keys_in_flight: u64,
    /// Keys whose head waits for a retry in place.
    pub keys_held: u64,
    /// How long the longest-held of those has been held, unacked.
    pub oldest_held_ms: u64,
}

impl OrderingGauges {
    fn registered(metrics: &DeliveryMetrics, labels: &ConsumerLabels) -> Self {
        Self {
            keys_in_flight: metrics.keys_in_flight.get_or_create_owned(labels),
            keys_held: metrics.keys_held.get_or_create_owned(labels),
            oldest_held_ms: metrics.oldest_held_ms.get_or_create_owned(labels),
        }
    }

    pub(crate) fn set(&self, in_flight: usize, held: usize, oldest_held: Duration) {
        self.keys_in_flight
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
        self.keys_held.set(i64::try_from(held).unwrap_or(i64::MAX));
        self.oldest_held_ms
            .set(i64::try_from(oldest_held.as_millis()).unwrap_or(i64::MAX));
    }

    fn snapshot(&self) -> KeysSnapshot {
        KeysSnapshot {
            keys_in_flight: self.keys_in_flight.get().max(0) as u64,
            keys_held: self.keys_held.get().max(0) as u64,
            oldest_held_ms: self.oldest_held_ms.get().max(0) as u64,
        }
    }
}

impl Default for ConsumerStats {
    /// Counters attached to no registry (a consumer not running here).
    fn default() -> Self {
        Self {
            state: AtomicU8::new(STOPPED),
            state_gauges: Default::default(),
            delivered: Counter::default(),
            acked: Counter::default(),
            retried: Counter::default(),
            dead_lettered: Counter::default(),
            filtered: Counter::default(),
            in_flight: Gauge::default(),
            target_seconds: latency_histogram(),
            last_delivery_at_ms: AtomicI64::new(0),
            last_error: Mutex::new(None),
            ordering: OnceLock::new(),
        }
    }
}

/// A consumer's counters at one moment, as `/getConsumer` shows them.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatsSnapshot {
    /// Deliveries taken from the broker since this replica started it.
    pub delivered: u64,
    /// Deliveries acked after their target took them.
    pub acked: u64,
    /// Deliveries sent to a delay queue to be tried again.
    pub retried: u64,
    /// Deliveries moved to `<queue>.dlq`.
    pub dead_lettered: u64,
    /// Deliveries acked without a call by the consumer's rules: refused
    /// by its `filter`, or dropped under `onRuleError: "drop"`.
    pub filtered: u64,
    /// Deliveries taken and not yet settled.
    pub in_flight: u64,
    /// The reason of the last failed attempt, if any.
    pub last_error: Option<String>,
    /// When `last_error` happened (RFC 3339), so a console can tell a
    /// fresh failure from an old one.
    pub last_error_at: Option<String>,
    /// When the last delivery was taken (RFC 3339).
    pub last_delivery_at: Option<String>,
    /// An ordered consumer's keys; `None` for one never run ordered.
    pub keys: Option<KeysSnapshot>,
}

const RECONNECTING: u8 = 0;
const RUNNING: u8 = 1;
const STOPPED: u8 = 2;
const PAUSED: u8 = 3;
const CIRCUIT_OPEN: u8 = 4;

impl ConsumerStats {
    /// Stats for a consumer just registered (state `Reconnecting`), counting into `metrics` under
    /// `labels`.
    pub fn registered(metrics: &DeliveryMetrics, labels: &ConsumerLabels) -> Self {
        let state_gauges = GAUGED_STATES.map(|state| {
            metrics
                .state
                .get_or_create_owned(&ConsumerStateLabels::of(labels, state))
        });
        state_gauges[3].set(1);
        Self {
            state: AtomicU8::new(RECONNECTING),
            state_gauges,
            delivered: metrics.delivered.get_or_create_owned(labels),
            acked: metrics.acked.get_or_create_owned(labels),
            retried: metrics.retried.get_or_create_owned(labels),
            dead_lettered: metrics.dead_lettered.get_or_create_owned(labels),
            filtered: metrics.filtered.get_or_create_owned(labels),
            in_flight: metrics.in_flight.get_or_create_owned(labels),
            target_seconds: metrics.target_seconds.get_or_create_owned(labels),
            last_delivery_at_ms: AtomicI64::new(0),
            last_error: Mutex::new(None),
            ordering: OnceLock::new(),
        }
    }

    /// Gives the consumer its ordering series, once: it runs ordered.
    pub(crate) fn run_ordered(&self, metrics: &DeliveryMetrics, labels: &ConsumerLabels) {
        self.ordering
            .get_or_init(|| OrderingGauges::registered(metrics, labels));
    }

    /// The ordering series, once the consumer ran ordered.
    pub(crate) fn ordering(&self) -> Option<&OrderingGauges> {
        self.ordering.get()
    }

    /// The state now.
    pub fn state(&self) -> ConsumerState {
        match self.state.load(Ordering::Relaxed) {
            RECONNECTING => ConsumerState::Reconnecting,
            RUNNING => ConsumerState::Running,
            PAUSED => ConsumerState::Paused,
            CIRCUIT_OPEN => ConsumerState::CircuitOpen,
            _ => ConsumerState::Stopped,
        }
    }

    pub(crate) fn set_state(&self, state: ConsumerState) {
        let raw = match state {
            ConsumerState::Reconnecting => RECONNECTING,
            ConsumerState::Running => RUNNING,
            ConsumerState::Stopped => STOPPED,
            ConsumerState::Paused => PAUSED,
            ConsumerState::CircuitOpen => CIRCUIT_OPEN,
        };
        self.state.store(raw, Ordering::Relaxed);
        let gauged = match state {
            ConsumerState::Running => Some(0),
            ConsumerState::Paused => Some(1),
            ConsumerState::CircuitOpen => Some(2),
            ConsumerState::Reconnecting => Some(3),
            ConsumerState::Stopped => None,
        };
        for (n, gauge) in self.state_gauges.iter().enumerate() {
            gauge.set(i64::from(gauged == Some(n)));
        }
    }

    pub(crate) fn delivery_started(&self) {
        self.delivered.inc();
        self.in_flight.inc();
        self.last_delivery_at_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    pub(crate) fn delivery_finished(&self) {
        self.in_flight.dec();
    }

    pub(crate) fn target_answered(&self, took: Duration) {
        self.target_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn acked(&self) {
        self.acked.inc();
    }

    pub(crate) fn retried(&self) {
        self.retried.inc();
    }

    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.inc();
    }

    pub(crate) fn filtered(&self) {
        self.filtered.inc();
    }

    pub(crate) fn record_error(&self, error: impl Into<String>) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some((error.into(), chrono::Utc::now()));
        }
    }

    /// The counters now, and the last error and delivery times.
    pub fn snapshot(&self) -> StatsSnapshot {
        let last_ms = self.last_delivery_at_ms.load(Ordering::Relaxed);
        let last_error = self.last_error.lock().ok().and_then(|e| e.clone());
        StatsSnapshot {
            delivered: self.delivered.get(),
            acked: self.acked.get(),
            retried: self.retried.get(),
            dead_lettered: self.dead_lettered.get(),
            filtered: self.filtered.get(),
            in_flight: self.in_flight.get().max(0) as u64,
            last_error_at: last_error.as_ref().map(|(_, at)| at.to_rfc3339()),
            last_error: last_error.map(|(error, _)| error),
            last_delivery_at: (last_ms > 0)
                .then(|| chrono::DateTime::from_timestamp_millis(last_ms))
                .flatten()
                .map(|t| t.to_rfc3339()),
            keys: self.ordering.get().map(OrderingGauges::snapshot),
        }
    }
}

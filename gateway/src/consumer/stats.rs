//! Live per-consumer counters, lock-free on the delivery path.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsumerState {
    Running,
    Reconnecting,
    Stopped,
}

#[derive(Default)]
pub struct ConsumerStats {
    state: AtomicU8,
    delivered: AtomicU64,
    acked: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    in_flight: AtomicI64,
    last_delivery_at_ms: AtomicI64,
    last_error: Mutex<Option<String>>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatsSnapshot {
    pub delivered: u64,
    pub acked: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub in_flight: u64,
    pub last_error: Option<String>,
    pub last_delivery_at: Option<String>,
}

impl ConsumerStats {
    pub fn state(&self) -> ConsumerState {
        match self.state.load(Ordering::Relaxed) {
            0 => ConsumerState::Reconnecting,
            1 => ConsumerState::Running,
            _ => ConsumerState::Stopped,
        }
    }

    pub(crate) fn set_state(&self, state: ConsumerState) {
        let raw = match state {
            ConsumerState::Reconnecting => 0,
            ConsumerState::Running => 1,
            ConsumerState::Stopped => 2,
        };
        self.state.store(raw, Ordering::Relaxed);
    }

    pub(crate) fn delivery_started(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.last_delivery_at_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    pub(crate) fn delivery_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn acked(&self) {
        self.acked.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_error(&self, error: impl Into<String>) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error.into());
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let last_ms = self.last_delivery_at_ms.load(Ordering::Relaxed);
        StatsSnapshot {
            delivered: self.delivered.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed).max(0) as u64,
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
            last_delivery_at: (last_ms > 0)
                .then(|| chrono::DateTime::from_timestamp_millis(last_ms))
                .flatten()
                .map(|t| t.to_rfc3339()),
        }
    }
}

//! The circuit breaker of one consumer on this replica: when its target
//! keeps failing in a way worth retrying, stop taking deliveries and leave
//! the messages in the queue, instead of spending their attempts.
//!
//! - Closed: deliveries flow. `failure_threshold` retryable failures in a
//!   row (408, 429, 5xx, connection error, timeout: a `Retry` outcome) open
//!   it; a success resets the count; a permanent failure (`Reject`) is the
//!   target answering on purpose, so it neither counts nor resets.
//! - Open: the worker ends its session like a pause does (basic.cancel,
//!   held deliveries finish). A retryable failure from then on is handed
//!   back to the queue (nack, requeue) without a retry copy, so its attempt
//!   count is unchanged. After the wait (`open_ms` at first) it half-opens.
//! - Half-open: one session with prefetch 1 tries exactly one delivery. A
//!   success (or a permanent failure: the target answered) closes the
//!   circuit; a retryable failure opens it again for twice the last wait,
//!   capped at `max_open_ms`.
//!
//! The state lives with the registered consumer, so it outlives a pause and
//! a reconnect; each replica keeps its own.
//!
//! It is a stage only a consumer configured with one (`circuitBreaker`)
//! passes through: between the target's answer and the settling, each
//! request's verdict is recorded (`CircuitBreaker::record_request`) and
//! `settle_unless_open` decides between settling and handing back. A
//! consumer without one goes from the answer straight to `Settler::settle`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::settle::{Settled, Settler};
use super::stats::{ConsumerState, ConsumerStats};
use super::target::{DeliveryOutcome, IncomingMessage};

/// Bounds of `failure_threshold`.
pub const FAILURE_THRESHOLD: std::ops::RangeInclusive<u32> = 1..=10_000;
/// The longest an open circuit may wait before a probe: one day.
pub const MAX_OPEN_MS: u64 = 86_400_000;

/// When a consumer opens its circuit, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreakerPolicy {
    /// Retryable failures in a row that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open the first time before a probe, in milliseconds.
    pub open_ms: u64,
    /// The cap on the wait, which doubles with every failed probe, in milliseconds.
    pub max_open_ms: u64,
}

impl Default for CircuitBreakerPolicy {
    fn default() -> Self {
        Self {
            failure_threshold: 10,
            open_ms: 30_000,
            max_open_ms: 600_000,
        }
    }
}

/// Which bound of a `CircuitBreakerPolicy` is broken. Callers name the
/// field in their own vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CircuitBreakerPolicyError {
    /// `failure_threshold` is outside its bounds.
    #[error("between {} and {}, not {value}", FAILURE_THRESHOLD.start(), FAILURE_THRESHOLD.end())]
    FailureThreshold {
        /// The threshold asked for.
        value: u32,
    },
    /// `open_ms` is 0 or more than a day.
    #[error("between 1 and {MAX_OPEN_MS} ms, not {value}")]
    OpenMs {
        /// The wait asked for, in milliseconds.
        value: u64,
    },
    /// `max_open_ms` is below `open_ms` or more than a day.
    #[error("at least openMs ({open_ms} ms) and at most {MAX_OPEN_MS} ms, not {value}")]
    MaxOpenMs {
        /// The cap asked for, in milliseconds.
        value: u64,
        /// The first wait, the least the cap may be.
        open_ms: u64,
    },
}

impl CircuitBreakerPolicy {
    /// Checks every field against its bounds; the first one broken is the error.
    pub fn validate(&self) -> Result<(), CircuitBreakerPolicyError> {
        if !FAILURE_THRESHOLD.contains(&self.failure_threshold) {
            return Err(CircuitBreakerPolicyError::FailureThreshold {
                value: self.failure_threshold,
            });
        }
        if !(1..=MAX_OPEN_MS).contains(&self.open_ms) {
            return Err(CircuitBreakerPolicyError::OpenMs {
                value: self.open_ms,
            });
        }
        if !(self.open_ms..=MAX_OPEN_MS).contains(&self.max_open_ms) {
            return Err(CircuitBreakerPolicyError::MaxOpenMs {
                value: self.max_open_ms,
                open_ms: self.open_ms,
            });
        }
        Ok(())
    }
}

/// Where a circuit is; see the module comment for the transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Deliveries flow.
    Closed,
    /// No deliveries are taken until the wait is over.
    Open,
    /// One delivery is tried to decide whether to close again.
    HalfOpen,
}

/// The circuit as `/getConsumer` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CircuitSnapshot {
    /// Where the circuit is now.
    pub state: CircuitState,
    /// Retryable failures since the last success.
    pub consecutive_failures: u32,
    /// When the circuit last opened (RFC 3339); absent while closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<String>,
    /// When the next probe may go out (RFC 3339); absent while closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_probe_at: Option<String>,
}

/// What one attempt says about the target's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Retryable,
    Permanent,
}

impl Verdict {
    pub fn of(outcome: &DeliveryOutcome) -> Self {
        match outcome {
            DeliveryOutcome::Delivered | DeliveryOutcome::Filtered { .. } => Verdict::Success,
            DeliveryOutcome::Retry { .. } => Verdict::Retryable,
            DeliveryOutcome::Reject { .. } => Verdict::Permanent,
        }
    }
}

struct Inner {
    state: CircuitState,
    consecutive_failures: u32,
    /// How long the last opening waits (doubles on a failed probe).
    wait: Duration,
    opened: Option<Opened>,
}

#[derive(Clone, Copy)]
struct Opened {
    at: Instant,
    at_wall: chrono::DateTime<chrono::Utc>,
    probe_at: Instant,
}

/// One consumer's circuit on this replica. Kept with the registered consumer, so its state outlives
/// a pause or a reconnect.
pub struct CircuitBreaker {
    policy: CircuitBreakerPolicy,
    inner: Mutex<Inner>,
    openings: Counter,
    changes: watch::Sender<CircuitState>,
}

impl CircuitBreaker {
    /// `openings` counts every time the circuit opens (`/metrics`).
    pub fn new(policy: CircuitBreakerPolicy, openings: Counter) -> Self {
        Self {
            policy,
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                consecutive_failures: 0,
                wait: Duration::from_millis(policy.open_ms),
                opened: None,
            }),
            openings,
            changes: watch::channel(CircuitState::Closed).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is plain data: a panic elsewhere cannot leave it torn.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the circuit is now.
    pub fn state(&self) -> CircuitState {
        self.lock().state
    }

    /// Notified of every change of state.
    pub fn subscribe(&self) -> watch::Receiver<CircuitState> {
        self.changes.subscribe()
    }

    /// Records one request's verdict (a single delivery, or a whole batch:
    /// one request, one verdict); returns whether the circuit is open after
    /// it.
    pub(super) fn record_request(&self, outcome: &DeliveryOutcome) -> bool {
        // No call was made: nothing said of the target's health.
        if matches!(outcome, DeliveryOutcome::Filtered { .. }) {
            return self.state() == CircuitState::Open;
        }
        self.record(Verdict::of(outcome), Instant::now()) == CircuitState::Open
    }

    /// Records one attempt's verdict; returns the state after it.
    pub fn record(&self, verdict: Verdict, now: Instant) -> CircuitState {
        let mut inner = self.lock();
        let before = inner.state;
        match (inner.state, verdict) {
            (CircuitState::Closed, Verdict::Success) => inner.consecutive_failures = 0,
            (CircuitState::Closed, Verdict::Retryable) => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                if inner.consecutive_failures >= self.policy.failure_threshold {
                    inner.wait = Duration::from_millis(self.policy.open_ms);
                    self.open(&mut inner, now);
                }
            }
            (CircuitState::Closed, Verdict::Permanent) => {}
            (CircuitState::HalfOpen, Verdict::Success | Verdict::Permanent) => {
                inner.state = CircuitState::Closed;
                inner.consecutive_failures = 0;
                inner.wait = Duration::from_millis(self.policy.open_ms);
                inner.opened = None;
            }
            (CircuitState::HalfOpen, Verdict::Retryable) => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                inner.wait = (inner.wait * 2).min(Duration::from_millis(self.policy.max_open_ms));
                self.open(&mut inner, now);
            }
            // Deliveries that were in flight when it opened: the probe
            // decides, not they.
            (CircuitState::Open, Verdict::Retryable) => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
            }
            (CircuitState::Open, _) => {}
        }
        let after = inner.state;
        drop(inner);
        if after != before {
            self.changes.send_replace(after);
        }
        after
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        inner.state = CircuitState::Open;
        inner.opened = Some(Opened {
            at: now,
            at_wall: chrono::Utc::now(),
            probe_at: now + inner.wait,
        });
        self.openings.inc();
        tracing::warn!(
            consecutive_failures = inner.consecutive_failures,
            wait_ms = inner.wait.as_millis() as u64,
            "circuit opened: no deliveries until the probe"
        );
    }

    /// When an open circuit may try its probe.
    pub fn probe_at(&self) -> Option<Instant> {
        let inner = self.lock();
        match inner.state {
            CircuitState::Open => inner.opened.map(|o| o.probe_at),
            _ => None,
        }
    }

    /// Half-opens an open circuit whose wait is over. Returns the state.
    pub fn half_open(&self, now: Instant) -> CircuitState {
        let mut inner = self.lock();
        if inner.state == CircuitState::Open && inner.opened.is_some_and(|o| now >= o.probe_at) {
            inner.state = CircuitState::HalfOpen;
            drop(inner);
            self.changes.send_replace(CircuitState::HalfOpen);
            tracing::info!("circuit half-open: trying one delivery");
            return CircuitState::HalfOpen;
        }
        inner.state
    }

    /// The circuit as of `now`, for `/getConsumer`.
    pub fn snapshot(&self, now: Instant) -> CircuitSnapshot {
        let inner = self.lock();
        let opened = inner.opened.filter(|_| inner.state != CircuitState::Closed);
        let wall = |at: Instant, o: &Opened| {
            let since = at.saturating_duration_since(o.at);
            (o.at_wall + chrono::Duration::from_std(since).unwrap_or_default()).to_rfc3339()
        };
        CircuitSnapshot {
            state: inner.state,
            consecutive_failures: inner.consecutive_failures,
            opened_at: opened.map(|o| o.at_wall.to_rfc3339()),
            next_probe_at: opened
                .filter(|_| inner.state == CircuitState::Open)
                .map(|o| wall(o.probe_at.max(now), &o)),
        }
    }
}

/// The breaker's stage on the way to settling, for a consumer configured
/// with one (`circuitBreaker`); others settle straight away. With the
/// circuit `open` (as `CircuitBreaker::record_request` left it), a
/// retryable failure goes back to the queue unspent; anything else is
/// settled as usual.
pub(super) async fn settle_unless_open(
    open: bool,
    settler: &Settler,
    delivery: &Delivery,
    message: &IncomingMessage,
    outcome: DeliveryOutcome,
) -> Settled {
    match outcome {
        DeliveryOutcome::Retry { failure, .. } if open => {
            settler.hand_back_unspent(delivery, &failure.reason).await
        }
        outcome => settler.settle(delivery, message, outcome).await,
    }
}

/// How a session takes deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    /// Every delivery, up to the prefetch.
    All,
    /// Prefetch 1, and one delivery only: the half-open probe.
    Probe,
}

/// Decides, delivery by delivery, which ones a session hands to the target.
pub(super) struct Gate {
    breaker: Option<Arc<CircuitBreaker>>,
    admission: Admission,
    probe_taken: bool,
    changes: Option<watch::Receiver<CircuitState>>,
}

/// Why the breaker wants the session over.
pub(super) enum GateEnd {
    /// Opened: stop taking deliveries.
    Opened,
    /// The probe closed it: consume again with the full prefetch.
    Closed,
}

impl Gate {
    pub fn new(breaker: Option<Arc<CircuitBreaker>>, admission: Admission) -> Self {
        let changes = breaker.as_ref().map(|b| {
            let mut rx = b.subscribe();
            rx.mark_unchanged();
            rx
        });
        Self {
            breaker,
            admission,
            probe_taken: false,
            changes,
        }
    }

    pub fn prefetch(&self, prefetch: u16) -> u16 {
        match self.admission {
            Admission::All => prefetch,
            Admission::Probe => 1,
        }
    }

    pub fn admission(&self) -> Admission {
        self.admission
    }

    /// Whether this delivery goes to the target now; if not, the session
    /// holds it and hands it back when it ends.
    pub fn admit(&mut self) -> bool {
        let Some(breaker) = &self.breaker else {
            return true;
        };
        match (self.admission, breaker.state()) {
            (_, CircuitState::Closed) => true,
            (Admission::Probe, CircuitState::HalfOpen) if !self.probe_taken => {
                self.probe_taken = true;
                true
            }
            _ => false,
        }
    }

    /// Resolves when the breaker wants this session over; never without a
    /// breaker.
    pub async fn ended(&mut self) -> GateEnd {
        let Some(changes) = self.changes.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
            let state = *changes.borrow_and_update();
            match (self.admission, state) {
                (_, CircuitState::Open) => return GateEnd::Opened,
                (Admission::Probe, CircuitState::Closed) => return GateEnd::Closed,
                _ => {}
            }
        }
    }
}

/// Before a session: waits out an open circuit (state `circuit_open`),
/// then half-opens it. Returns how the session takes deliveries, or `None`
/// when cancelled meanwhile.
pub(super) async fn admission(
    breaker: Option<&CircuitBreaker>,
    stats: &ConsumerStats,
    cancel: &CancellationToken,
) -> Option<Admission> {
    let Some(breaker) = breaker else {
        return Some(Admission::All);
    };
    loop {
        match breaker.state() {
            CircuitState::Closed => return Some(Admission::All),
            CircuitState::HalfOpen => return Some(Admission::Probe),
            CircuitState::Open => {
                stats.set_state(ConsumerState::CircuitOpen);
                let probe_at = breaker.probe_at().unwrap_or_else(Instant::now);
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep_until(probe_at.into()) => {}
                }
                breaker.half_open(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, open_ms: u64, max_open_ms: u64) -> CircuitBreaker {
        CircuitBreaker::new(
            CircuitBreakerPolicy {
                failure_threshold: threshold,
                open_ms,
                max_open_ms,
            },
            Counter::default(),
        )
    }

    #[test]
    fn opens_after_the_threshold_of_consecutive_retryable_failures() {
        let b = breaker(3, 1_000, 10_000);
        let t0 = Instant::now();
        assert_eq!(b.record(Verdict::Retryable, t0), CircuitState::Closed);
        assert_eq!(b.record(Verdict::Retryable, t0), CircuitState::Closed);
        assert_eq!(b.record(Verdict::Retryable, t0), CircuitState::Open);
        assert_eq!(b.openings.get(), 1);
        assert_eq!(b.probe_at(), Some(t0 + Duration::from_millis(1_000)));
        let view = b.snapshot(t0);
        assert_eq!(view.state, CircuitState::Open);
        assert_eq!(view.consecutive_failures, 3);
        assert!(view.opened_at.is_some() && view.next_probe_at.is_some());
    }

    #[test]
    fn successes_reset_the_count_and_permanent_failures_do_not_count() {
        let b = breaker(2, 1_000, 10_000);
        let t0 = Instant::now();
        b.record(Verdict::Retryable, t0);
        b.record(Verdict::Success, t0);
        assert_eq!(b.record(Verdict::Retryable, t0), CircuitState::Closed);
        for _ in 0..5 {
            assert_eq!(b.record(Verdict::Permanent, t0), CircuitState::Closed);
        }
        assert_eq!(b.snapshot(t0).consecutive_failures, 1);
        assert_eq!(b.record(Verdict::Retryable, t0), CircuitState::Open);
    }

    #[test]
    fn a_failed_probe_doubles_the_wait_up_to_the_cap_and_a_good_one_closes() {
        let b = breaker(1, 1_000, 3_000);
        let mut now = Instant::now();
        b.record(Verdict::Retryable, now);
        // Not before its time.
        assert_eq!(
            b.half_open(now + Duration::from_millis(999)),
            CircuitState::Open
        );
        let mut waits = Vec::new();
        for _ in 0..3 {
            let probe_at = b.probe_at().expect("open");
            waits.push((probe_at - now).as_millis());
            now = probe_at;
            assert_eq!(b.half_open(now), CircuitState::HalfOpen);
            assert_eq!(b.record(Verdict::Retryable, now), CircuitState::Open);
        }
        let probe_at = b.probe_at().expect("open");
        waits.push((probe_at - now).as_millis());
        assert_eq!(waits, [1_000, 2_000, 3_000, 3_000]);
        assert_eq!(b.openings.get(), 4);

        assert_eq!(b.half_open(probe_at), CircuitState::HalfOpen);
        assert_eq!(b.record(Verdict::Success, probe_at), CircuitState::Closed);
        let view = b.snapshot(probe_at);
        assert_eq!(view.consecutive_failures, 0);
        assert_eq!(view.opened_at, None);
        // A later opening starts from openMs again.
        b.record(Verdict::Retryable, probe_at);
        assert_eq!(b.probe_at(), Some(probe_at + Duration::from_millis(1_000)));
    }

    #[test]
    fn the_probe_gate_admits_exactly_one_delivery() {
        let b = Arc::new(breaker(1, 1, 1));
        let now = Instant::now();
        b.record(Verdict::Retryable, now);
        let mut gate = Gate::new(Some(b.clone()), Admission::All);
        assert!(!gate.admit(), "open: nothing goes to the target");
        b.half_open(now + Duration::from_millis(1));
        let mut gate = Gate::new(Some(b.clone()), Admission::Probe);
        assert_eq!(gate.prefetch(50), 1);
        assert!(gate.admit());
        assert!(!gate.admit());
        let mut open = Gate::new(None, Admission::All);
        assert!(open.admit());
    }

    #[test]
    fn bounds_are_checked() {
        let ok = CircuitBreakerPolicy::default();
        assert_eq!(ok.validate(), Ok(()));
        let bad = [
            CircuitBreakerPolicy {
                failure_threshold: 0,
                ..ok
            },
            CircuitBreakerPolicy { open_ms: 0, ..ok },
            CircuitBreakerPolicy {
                open_ms: 5_000,
                max_open_ms: 4_000,
                ..ok
            },
        ];
        for policy in bad {
            assert!(policy.validate().is_err(), "{policy:?}");
        }
    }
}

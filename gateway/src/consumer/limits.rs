//! How fast one consumer takes deliveries on this replica: `Concurrency`
//! (target calls at once) and `RatePerSec` (deliveries started per second
//! for the consumer as a whole, each replica taking its share of
//! `LiveReplicas`), enforced by the worker's `DeliveryGate`.
//!
//! The gate sits in front of the delivery stream: while it is closed the
//! worker does not take the next delivery, which stays with the broker's
//! prefetch window (unacked, requeued if the channel closes). So limits
//! never make the consumer hold more than `prefetch` deliveries.
//!
//! The rate is a small GCRA-style pacer rather than a crate such as
//! `governor`: the share changes at runtime with the live replica count,
//! and the worker needs a deadline to put in its `select!` loop, not a
//! future that sleeps on its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Why a limit was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitError {
    /// The concurrency is 0 or above the prefetch.
    #[error("between 1 and prefetch ({prefetch}); got {got}")]
    Concurrency {
        /// The consumer's prefetch, the upper bound.
        prefetch: u16,
        /// The concurrency asked for.
        got: u16,
    },
    /// The rate is outside `RatePerSec::MIN`..=`RatePerSec::MAX` (or not a number).
    #[error("between {min} and {max} deliveries per second; got {got}", min = RatePerSec::MIN, max = RatePerSec::MAX)]
    Rate {
        /// The rate asked for.
        got: f64,
    },
}

/// Target calls at once per replica: 1 to the consumer's prefetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency(u16);

impl Concurrency {
    /// A concurrency of `value`, refused unless 1 to `prefetch`.
    pub fn within(value: u16, prefetch: u16) -> Result<Self, LimitError> {
        if value == 0 || value > prefetch {
            return Err(LimitError::Concurrency {
                prefetch,
                got: value,
            });
        }
        Ok(Self(value))
    }

    /// As many as the prefetch: the default, no limit beyond it.
    pub fn of_prefetch(prefetch: u16) -> Self {
        Self(prefetch.max(1))
    }

    /// Target calls allowed at once.
    pub fn get(self) -> u16 {
        self.0
    }
}

/// Deliveries started per second by the consumer as a whole.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatePerSec(f64);

impl RatePerSec {
    /// The slowest rate accepted: one delivery every ten seconds.
    pub const MIN: f64 = 0.1;
    /// The fastest rate accepted.
    pub const MAX: f64 = 100_000.0;

    /// A rate of `value` deliveries per second, refused outside `MIN`..=`MAX`.
    pub fn new(value: f64) -> Result<Self, LimitError> {
        // NaN fails both comparisons, so it is refused too.
        if (Self::MIN..=Self::MAX).contains(&value) {
            Ok(Self(value))
        } else {
            Err(LimitError::Rate { got: value })
        }
    }

    /// Deliveries per second.
    pub fn get(self) -> f64 {
        self.0
    }
}

/// How many gateway replicas are alive, as this one last counted them
/// (at least 1). Shared by every consumer of the gateway; kept current
/// by whoever counts (the store heartbeat).
#[derive(Debug, Clone)]
pub struct LiveReplicas(Arc<AtomicUsize>);

impl LiveReplicas {
    /// One replica, until the first count says otherwise.
    pub fn new() -> Self {
        Self(Arc::new(AtomicUsize::new(1)))
    }

    /// Records a new count; 0 is taken as 1 (this replica is alive).
    pub fn set(&self, count: usize) {
        self.0.store(count.max(1), Ordering::Relaxed);
    }

    /// The last count, at least 1.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed).max(1)
    }
}

impl Default for LiveReplicas {
    fn default() -> Self {
        Self::new()
    }
}

/// How early a delivery may start ahead of its even spacing: lets high
/// rates run in small bursts (timers tick in milliseconds) while low rates
/// stay evenly spaced.
const BURST_TOLERANCE: Duration = Duration::from_millis(10);

/// Spaces deliveries `live replicas / rate` seconds apart (generic cell
/// rate algorithm: `due` is when the next one would start on an even
/// schedule).
#[derive(Debug)]
struct Pacer {
    rate: RatePerSec,
    replicas: LiveReplicas,
    due: Option<Instant>,
}

impl Pacer {
    fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.replicas.get() as f64 / self.rate.get())
    }

    /// When the next delivery may start; `None`: now.
    fn ready_at(&self, now: Instant) -> Option<Instant> {
        let at = self.due?.checked_sub(BURST_TOLERANCE)?;
        (at > now).then_some(at)
    }

    fn started(&mut self, now: Instant) {
        let from = self.due.map_or(now, |due| due.max(now));
        self.due = Some(from + self.interval());
    }
}

/// Held by a delivery while it calls its target; dropping it lets the
/// next delivery in.
#[derive(Debug)]
pub(super) struct CallSlot(#[allow(dead_code)] OwnedSemaphorePermit);

/// Opens when the next delivery may start: a call slot is free and the
/// rate allows it.
#[derive(Debug)]
pub(super) struct DeliveryGate {
    slots: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
    pacer: Option<Pacer>,
}

impl DeliveryGate {
    pub fn new(
        concurrency: Concurrency,
        rate: Option<RatePerSec>,
        replicas: &LiveReplicas,
    ) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(usize::from(concurrency.get()))),
            held: None,
            pacer: rate.map(|rate| Pacer {
                rate,
                replicas: replicas.clone(),
                due: None,
            }),
        }
    }

    pub fn is_open(&self) -> bool {
        self.held.is_some()
            && self
                .pacer
                .as_ref()
                .is_none_or(|p| p.ready_at(Instant::now()).is_none())
    }

    /// Resolves when the gate may have opened. Cancel-safe: a slot taken
    /// is kept for the next call.
    pub async fn opened(&mut self) {
        if self.held.is_none() {
            // The semaphore is never closed.
            if let Ok(permit) = self.slots.clone().acquire_owned().await {
                self.held = Some(permit);
            }
            return;
        }
        if let Some(at) = self.pacer.as_ref().and_then(|p| p.ready_at(Instant::now())) {
            tokio::time::sleep_until(at).await;
        }
    }

    /// A delivery starts now: it takes the held slot. `None` when the gate
    /// was not open (the caller did not wait for it).
    pub fn start(&mut self) -> Option<CallSlot> {
        let slot = self.held.take()?;
        if let Some(pacer) = &mut self.pacer {
            pacer.started(Instant::now());
        }
        Some(CallSlot(slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_is_between_one_and_the_prefetch() {
        assert!(Concurrency::within(0, 10).is_err());
        assert!(Concurrency::within(11, 10).is_err());
        assert_eq!(Concurrency::within(10, 10).map(Concurrency::get), Ok(10));
        assert_eq!(Concurrency::within(1, 10).map(Concurrency::get), Ok(1));
    }

    #[test]
    fn rate_is_bounded_and_never_nan() {
        for bad in [0.0, -1.0, 0.09, 100_000.5, f64::NAN, f64::INFINITY] {
            assert!(RatePerSec::new(bad).is_err(), "{bad}");
        }
        for good in [0.1, 1.0, 20.0, 100_000.0] {
            assert!(RatePerSec::new(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn the_pace_is_shared_among_live_replicas() {
        let replicas = LiveReplicas::new();
        let mut pacer = Pacer {
            rate: RatePerSec::new(20.0).unwrap(),
            replicas: replicas.clone(),
            due: None,
        };
        let now = Instant::now();
        assert_eq!(pacer.ready_at(now), None);
        pacer.started(now);
        assert_eq!(
            pacer.ready_at(now),
            Some(now + Duration::from_millis(50) - BURST_TOLERANCE)
        );
        replicas.set(2);
        let mut later = Pacer { due: None, ..pacer };
        later.started(now);
        assert_eq!(
            later.ready_at(now),
            Some(now + Duration::from_millis(100) - BURST_TOLERANCE)
        );
        replicas.set(0);
        assert_eq!(replicas.get(), 1);
    }
}

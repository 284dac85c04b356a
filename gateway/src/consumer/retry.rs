//! Backoff policy. Waiting happens in the broker (a delay queue per
//! distinct delay), never by holding an unacked delivery; every delay is
//! snapped up to a fixed ladder, so whatever the targets answer a queue has
//! a bounded number of delay queues.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The delays a retry may wait, in milliseconds: 1, 2, 5, 10, 30 s,
/// 1, 2, 5, 10, 30 min, 1, 2, 6, 12, 24 h. A computed delay (or a target's
/// `Retry-After`) waits the first step at least as long, capped at the
/// policy's `max_delay_ms`; so the delay queues of one main queue are these
/// steps plus, at most, the cap itself.
pub const DELAY_LADDER_MS: [u64; 15] = [
    1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_800_000, 3_600_000,
    7_200_000, 21_600_000, 43_200_000, 86_400_000,
];

/// The longest delay a policy may ask for: the ladder's top step.
pub const MAX_DELAY_MS: u64 = DELAY_LADDER_MS[DELAY_LADDER_MS.len() - 1];
/// Bounds of `max_attempts`.
pub const MAX_ATTEMPTS: std::ops::RangeInclusive<u32> = 1..=100;
/// Bounds of `multiplier`.
pub const MULTIPLIER: std::ops::RangeInclusive<f64> = 1.0..=10.0;

/// How a failing delivery is retried before it is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Attempts in all, the first included; a delivery still failing after the last is
    /// dead-lettered.
    pub max_attempts: u32,
    /// The wait before the first retry, in milliseconds.
    pub initial_delay_ms: u64,
    /// Each retry waits this many times longer than the one before.
    pub multiplier: f64,
    /// The longest any retry waits, in milliseconds, a target's `Retry-After` included.
    pub max_delay_ms: u64,
}

/// Which bound of a `RetryPolicy` is broken. Callers name the field in
/// their own vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum RetryPolicyError {
    /// `max_attempts` is outside `MAX_ATTEMPTS`.
    #[error("between {} and {}, not {value}", MAX_ATTEMPTS.start(), MAX_ATTEMPTS.end())]
    MaxAttempts {
        /// The number asked for.
        value: u32,
    },
    /// `initial_delay_ms` is 0 or above `MAX_DELAY_MS`.
    #[error("between 1 and {MAX_DELAY_MS} ms, not {value}")]
    InitialDelay {
        /// The delay asked for, in milliseconds.
        value: u64,
    },
    /// `multiplier` is outside `MULTIPLIER` (or not a number).
    #[error("between {} and {}, not {value}", MULTIPLIER.start(), MULTIPLIER.end())]
    Multiplier {
        /// The multiplier asked for.
        value: f64,
    },
    /// `max_delay_ms` is below the initial delay or above `MAX_DELAY_MS`.
    #[error("at least the initial delay ({initial_delay_ms} ms) and at most {MAX_DELAY_MS} ms, not {value}")]
    MaxDelay {
        /// The cap asked for, in milliseconds.
        value: u64,
        /// The initial delay, the least the cap may be.
        initial_delay_ms: u64,
    },
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_delay_ms: 1_000,
            multiplier: 2.0,
            max_delay_ms: 300_000,
        }
    }
}

impl RetryPolicy {
    /// Checks the bounds an operator could get wrong.
    pub fn validate(&self) -> Result<(), RetryPolicyError> {
        if !MAX_ATTEMPTS.contains(&self.max_attempts) {
            return Err(RetryPolicyError::MaxAttempts {
                value: self.max_attempts,
            });
        }
        if !(1..=MAX_DELAY_MS).contains(&self.initial_delay_ms) {
            return Err(RetryPolicyError::InitialDelay {
                value: self.initial_delay_ms,
            });
        }
        if !MULTIPLIER.contains(&self.multiplier) {
            return Err(RetryPolicyError::Multiplier {
                value: self.multiplier,
            });
        }
        if !(self.initial_delay_ms..=MAX_DELAY_MS).contains(&self.max_delay_ms) {
            return Err(RetryPolicyError::MaxDelay {
                value: self.max_delay_ms,
                initial_delay_ms: self.initial_delay_ms,
            });
        }
        Ok(())
    }

    /// Delay before attempt `next_attempt` (2 for the first retry): the
    /// exponential backoff, or a target's `Retry-After` raised to at least
    /// `initial_delay_ms` (so `Retry-After: 0` cannot burn every attempt at
    /// once); then snapped up to the ladder and capped at `max_delay_ms`.
    pub fn delay_before(&self, next_attempt: u32, retry_after: Option<Duration>) -> Duration {
        let wanted_ms = match retry_after {
            Some(hint) => {
                // Up to the next whole millisecond: a sub-millisecond wait
                // is still a wait.
                let ms = hint.as_nanos().div_ceil(1_000_000);
                u64::try_from(ms).unwrap_or(u64::MAX)
            }
            None => self.backoff_ms(next_attempt),
        };
        Duration::from_millis(self.snapped(wanted_ms.max(self.initial_delay_ms)))
    }

    /// `initial_delay_ms × multiplier^(next_attempt − 2)`, whole ms.
    fn backoff_ms(&self, next_attempt: u32) -> u64 {
        let exponent = i32::try_from(next_attempt.saturating_sub(2)).unwrap_or(i32::MAX);
        let ms = (self.initial_delay_ms as f64) * self.multiplier.powi(exponent);
        // `as` saturates: an overflowing (or NaN) product becomes the cap.
        if ms.is_finite() {
            ms.round() as u64
        } else {
            u64::MAX
        }
    }

    /// The first ladder step at least `ms`, capped at `max_delay_ms`.
    fn snapped(&self, ms: u64) -> u64 {
        let step = DELAY_LADDER_MS
            .iter()
            .copied()
            .find(|&step| step >= ms)
            .unwrap_or(MAX_DELAY_MS);
        step.min(self.max_delay_ms)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn ms(policy: &RetryPolicy, next_attempt: u32, retry_after: Option<Duration>) -> u64 {
        policy.delay_before(next_attempt, retry_after).as_millis() as u64
    }

    #[test]
    fn the_ladder_rises_and_ends_at_a_day() {
        assert!(DELAY_LADDER_MS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(DELAY_LADDER_MS[0], 1_000);
        assert_eq!(MAX_DELAY_MS, 24 * 3_600_000);
    }

    #[test]
    fn delays_grow_by_the_multiplier_snapped_up_to_the_ladder_and_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_delay_ms: 1000,
            multiplier: 2.0,
            max_delay_ms: 7_000,
        };
        let delays: Vec<u64> = (2..8).map(|n| ms(&policy, n, None)).collect();
        // 1000, 2000, 4000, 8000, 16000, 32000 before the ladder.
        assert_eq!(delays, [1_000, 2_000, 5_000, 7_000, 7_000, 7_000]);
    }

    #[test]
    fn short_delays_wait_the_first_step_unless_the_cap_is_lower() {
        let fast = RetryPolicy {
            initial_delay_ms: 200,
            max_delay_ms: 10_000,
            ..RetryPolicy::default()
        };
        assert_eq!(ms(&fast, 2, None), 1_000);
        assert_eq!(ms(&fast, 4, None), 1_000, "800 ms snaps up to 1 s");
        let faster = RetryPolicy {
            initial_delay_ms: 100,
            max_delay_ms: 300,
            ..RetryPolicy::default()
        };
        assert_eq!(ms(&faster, 2, None), 300, "never beyond maxDelayMs");
    }

    #[test]
    fn retry_after_is_honoured_snapped_up_and_clamped() {
        let policy = RetryPolicy {
            max_delay_ms: 3_000,
            ..RetryPolicy::default()
        };
        assert_eq!(ms(&policy, 2, Some(Duration::from_secs(2))), 2_000);
        assert_eq!(ms(&policy, 2, Some(Duration::from_millis(1_001))), 2_000);
        assert_eq!(ms(&policy, 2, Some(Duration::from_secs(60))), 3_000);
        assert_eq!(
            ms(&policy, 2, Some(Duration::ZERO)),
            policy.initial_delay_ms,
            "Retry-After: 0 still waits the initial delay"
        );
        assert_eq!(ms(&policy, 2, Some(Duration::MAX)), 3_000);
    }

    #[test]
    fn any_retry_after_lands_on_a_ladder_step_or_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 100,
            initial_delay_ms: 1,
            multiplier: 3.0,
            max_delay_ms: 50_000_000,
        };
        let mut seen = BTreeSet::new();
        // Sub-millisecond values, as an HTTP date minus "now" gives.
        for i in 0..200_000u64 {
            let hint = Duration::from_nanos(i * 432_000_123);
            seen.insert(ms(&policy, 2, Some(hint)));
        }
        for n in 2..60 {
            seen.insert(ms(&policy, n, None));
        }
        let allowed: BTreeSet<u64> = DELAY_LADDER_MS
            .iter()
            .copied()
            .filter(|&step| step < policy.max_delay_ms)
            .chain([policy.max_delay_ms])
            .collect();
        assert!(seen.is_subset(&allowed), "{seen:?}");
        assert_eq!(seen, allowed, "every step is reachable");
    }

    #[test]
    fn huge_exponents_stay_at_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 100,
            multiplier: 10.0,
            ..RetryPolicy::default()
        };
        assert_eq!(ms(&policy, u32::MAX, None), policy.max_delay_ms);
    }

    #[test]
    fn nonsense_policies_are_refused_with_the_bound_broken() {
        assert_eq!(RetryPolicy::default().validate(), Ok(()));
        let bad = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert_eq!(
            bad.validate(),
            Err(RetryPolicyError::MaxAttempts { value: 0 })
        );
        let bad = RetryPolicy {
            initial_delay_ms: 0,
            ..RetryPolicy::default()
        };
        assert_eq!(
            bad.validate(),
            Err(RetryPolicyError::InitialDelay { value: 0 })
        );
        let bad = RetryPolicy {
            multiplier: f64::NAN,
            ..RetryPolicy::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(RetryPolicyError::Multiplier { .. })
        ));
        let bad = RetryPolicy {
            max_delay_ms: 10,
            ..RetryPolicy::default()
        };
        assert_eq!(
            bad.validate(),
            Err(RetryPolicyError::MaxDelay {
                value: 10,
                initial_delay_ms: 1_000
            })
        );
        let bad = RetryPolicy {
            max_delay_ms: MAX_DELAY_MS + 1,
            ..RetryPolicy::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(RetryPolicyError::MaxDelay { .. })
        ));
    }
}

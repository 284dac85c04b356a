//! Backoff policy. Waiting happens in the broker (a delay queue per
//! distinct delay), never by holding an unacked delivery.

use std::time::Duration;

use backon::BackoffBuilder;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_delay_ms: u64,
    pub multiplier: f64,
    pub max_delay_ms: u64,
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
    /// Checks the bounds an operator could get wrong; the message names the
    /// field.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100).contains(&self.max_attempts) {
            return Err("retry.maxAttempts: between 1 and 100".into());
        }
        if self.initial_delay_ms == 0 || self.initial_delay_ms > 86_400_000 {
            return Err("retry.initialDelayMs: between 1 and 86400000".into());
        }
        if !(1.0..=10.0).contains(&self.multiplier) {
            return Err("retry.multiplier: between 1 and 10".into());
        }
        if self.max_delay_ms < self.initial_delay_ms || self.max_delay_ms > 86_400_000 {
            return Err("retry.maxDelayMs: at least initialDelayMs and at most 86400000".into());
        }
        Ok(())
    }

    /// Delay before attempt `next_attempt` (2 for the first retry), honouring
    /// a target's `Retry-After` between `initial_delay_ms` (so `Retry-After:
    /// 0` cannot burn every attempt at once) and `max_delay_ms`. Whole
    /// milliseconds, as each distinct value is a delay queue.
    pub fn delay_before(&self, next_attempt: u32, retry_after: Option<Duration>) -> Duration {
        let max = Duration::from_millis(self.max_delay_ms);
        if let Some(hint) = retry_after {
            let min = Duration::from_millis(self.initial_delay_ms);
            return Duration::from_millis(hint.clamp(min, max).as_millis() as u64);
        }
        let nth = next_attempt.saturating_sub(2) as usize;
        let delay = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.initial_delay_ms))
            .with_factor(self.multiplier as f32)
            .with_max_delay(max)
            .without_max_times()
            .build()
            .nth(nth)
            .unwrap_or(max);
        Duration::from_millis(delay.as_secs_f64().mul_add(1000.0, 0.5) as u64).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_by_the_multiplier_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_delay_ms: 1000,
            multiplier: 2.0,
            max_delay_ms: 5000,
        };
        let ms = |n| policy.delay_before(n, None).as_millis();
        assert_eq!(
            [ms(2), ms(3), ms(4), ms(5), ms(6)],
            [1000, 2000, 4000, 5000, 5000]
        );
    }

    #[test]
    fn retry_after_is_honoured_and_clamped() {
        let policy = RetryPolicy {
            max_delay_ms: 3000,
            ..RetryPolicy::default()
        };
        assert_eq!(
            policy.delay_before(2, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            policy.delay_before(2, Some(Duration::from_secs(60))),
            Duration::from_secs(3)
        );
        assert_eq!(
            policy.delay_before(2, Some(Duration::ZERO)),
            Duration::from_millis(policy.initial_delay_ms),
            "Retry-After: 0 still waits the initial delay"
        );
    }

    #[test]
    fn nonsense_policies_are_refused() {
        assert!(RetryPolicy::default().validate().is_ok());
        let bad = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("maxAttempts"));
        let bad = RetryPolicy {
            max_delay_ms: 10,
            ..RetryPolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("maxDelayMs"));
    }
}

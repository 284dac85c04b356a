//! A batch consumer's bounds, `maxMessages` and `maxWait`: only ever built
//! checked, and never above the prefetch, or a batch could never fill. Apart
//! from `batch`, so that the consumer's spec can name them without taking in
//! the delivery code.

use std::time::Duration;

/// Bounds of `maxMessages`.
pub const MAX_MESSAGES: std::ops::RangeInclusive<u64> = 1..=1_000;
/// Bounds of `maxWaitMs`.
pub const MAX_WAIT_MS: std::ops::RangeInclusive<u64> = 0..=10_000;

/// How a batch consumer gathers its deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    max_messages: u16,
    max_wait: Duration,
}

/// Which bound of a `BatchPolicy` is broken. Callers name the field in
/// their own vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BatchPolicyError {
    /// `max_messages` is outside 1–1000.
    #[error("between {} and {}, not {value}", MAX_MESSAGES.start(), MAX_MESSAGES.end())]
    MaxMessages {
        /// The number asked for.
        value: u64,
    },
    /// `max_wait_ms` is outside 0–10000.
    #[error("between {} and {} ms, not {value}", MAX_WAIT_MS.start(), MAX_WAIT_MS.end())]
    MaxWaitMs {
        /// The number of milliseconds asked for.
        value: u64,
    },
    /// `max_messages` is above the consumer's prefetch, so a batch could never fill.
    #[error("at most the prefetch ({prefetch}), not {value}: a batch larger than the prefetch could never fill")]
    AbovePrefetch {
        /// The number asked for.
        value: u64,
        /// The consumer's prefetch, the most a batch may hold.
        prefetch: u16,
    },
}

impl BatchPolicy {
    /// `max_messages` 1–1000 and at most `prefetch`; `max_wait_ms` 0–10000.
    pub fn new(
        max_messages: u64,
        max_wait_ms: u64,
        prefetch: u16,
    ) -> Result<Self, BatchPolicyError> {
        if !MAX_MESSAGES.contains(&max_messages) {
            return Err(BatchPolicyError::MaxMessages {
                value: max_messages,
            });
        }
        if !MAX_WAIT_MS.contains(&max_wait_ms) {
            return Err(BatchPolicyError::MaxWaitMs { value: max_wait_ms });
        }
        if max_messages > u64::from(prefetch) {
            return Err(BatchPolicyError::AbovePrefetch {
                value: max_messages,
                prefetch,
            });
        }
        Ok(Self {
            // Within 1..=1000, checked above.
            max_messages: max_messages as u16,
            max_wait: Duration::from_millis(max_wait_ms),
        })
    }

    /// The most deliveries one request carries.
    pub fn max_messages(self) -> u16 {
        self.max_messages
    }

    /// How long the first delivery of a batch waits for others before the batch goes out anyway.
    pub fn max_wait(self) -> Duration {
        self.max_wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked_and_the_batch_fits_the_prefetch() {
        assert!(BatchPolicy::new(1, 0, 1).is_ok());
        assert!(BatchPolicy::new(1_000, 10_000, 1_000).is_ok());
        assert_eq!(
            BatchPolicy::new(0, 5, 10),
            Err(BatchPolicyError::MaxMessages { value: 0 })
        );
        assert_eq!(
            BatchPolicy::new(1_001, 5, 1_000),
            Err(BatchPolicyError::MaxMessages { value: 1_001 })
        );
        assert_eq!(
            BatchPolicy::new(10, 10_001, 10),
            Err(BatchPolicyError::MaxWaitMs { value: 10_001 })
        );
        assert_eq!(
            BatchPolicy::new(50, 5, 10),
            Err(BatchPolicyError::AbovePrefetch {
                value: 50,
                prefetch: 10
            })
        );
        let policy = BatchPolicy::new(100, 5, 500).unwrap();
        assert_eq!(policy.max_messages(), 100);
        assert_eq!(policy.max_wait(), Duration::from_millis(5));
    }
}

//! `CreateCap`: whether one more consumer fits under `MAX_CONSUMERS`,
//! without counting the store on every create.
//!
//! Counting the stored definitions costs a walk of the collection on the
//! store we test with (100 ms at 3,000 definitions, growing with them), and
//! creates used to take that count one at a time. Here the store is counted
//! at most every `COUNT_FRESH_FOR`, or when the estimate says the cap is
//! reached (so a refusal always rests on a fresh count); in between, the
//! estimate is that count plus the creates this gateway has made since and
//! the ones on their way into the store. A create holds its place from the
//! check until its insert ends (`Reservation`), so concurrent creates here
//! cannot overshoot the cap together, and inserts no longer wait for each
//! other. As before, creates through two replicas at the same moment can
//! each see room for one more.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const COUNT_FRESH_FOR: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Counts {
    /// The store's count at `read_at`.
    stored: usize,
    read_at: Option<Instant>,
    /// Creates stored by this gateway since `read_at`.
    stored_since: usize,
    /// Creates between their check and the end of their insert. One that
    /// landed just before a count is counted twice until the next one:
    /// the estimate errs towards the cap, never past it.
    in_flight: usize,
}

impl Counts {
    fn estimate(&self, running: usize) -> usize {
        (self.stored + self.stored_since + self.in_flight).max(running)
    }
}

/// Why a create does not fit.
#[derive(Debug, PartialEq, Eq)]
pub enum CapError<E> {
    AtCapacity {
        registered: usize,
    },
    /// The store could not be counted.
    Count(E),
}

#[derive(Debug, Default)]
pub struct CreateCap {
    /// One count of the store at a time, and checks wait for it.
    checking: tokio::sync::Mutex<()>,
    counts: Arc<Mutex<Counts>>,
}

impl CreateCap {
    fn counts(counts: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
        // Plain numbers: a panic elsewhere cannot leave them half-written.
        counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a place for one more consumer if `limit` allows: `running` is
    /// how many this gateway runs now, `count_stored` counts the store.
    pub async fn reserve<E, F, Fut>(
        &self,
        limit: usize,
        running: usize,
        count_stored: F,
    ) -> Result<Reservation, CapError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<usize, E>>,
    {
        let _one_check_at_a_time = self.checking.lock().await;
        let must_count = {
            let counts = Self::counts(&self.counts);
            counts
                .read_at
                .is_none_or(|at| at.elapsed() >= COUNT_FRESH_FOR)
                || counts.estimate(running) >= limit
        };
        if must_count {
            let stored = count_stored().await.map_err(CapError::Count)?;
            let mut counts = Self::counts(&self.counts);
            counts.stored = stored;
            counts.read_at = Some(Instant::now());
            counts.stored_since = 0;
        }
        let mut counts = Self::counts(&self.counts);
        let registered = counts.estimate(running);
        if registered >= limit {
            return Err(CapError::AtCapacity { registered });
        }
        counts.in_flight += 1;
        Ok(Reservation {
            counts: self.counts.clone(),
            stored: false,
        })
    }
}

/// A create's place under the cap, from its check to the end of its
/// insert. Dropped without `stored` (the insert failed, or the request
/// went away first), the place is given back.
#[derive(Debug)]
pub struct Reservation {
    counts: Arc<Mutex<Counts>>,
    stored: bool,
}

impl Reservation {
    /// The definition is in the store.
    pub fn stored(mut self) {
        self.stored = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut counts = CreateCap::counts(&self.counts);
        counts.in_flight = counts.in_flight.saturating_sub(1);
        if self.stored {
            counts.stored_since += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A store count that says `stored` and counts how often it was asked.
    struct FakeStore {
        stored: AtomicUsize,
        asked: AtomicUsize,
    }

    impl FakeStore {
        fn new(stored: usize) -> Self {
            Self {
                stored: AtomicUsize::new(stored),
                asked: AtomicUsize::new(0),
            }
        }

        async fn count(&self) -> Result<usize, String> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            Ok(self.stored.load(Ordering::SeqCst))
        }
    }

    #[tokio::test]
    async fn creates_under_the_cap_count_the_store_once_and_the_cap_holds() {
        let cap = CreateCap::default();
        let store = FakeStore::new(0);
        for _ in 0..5 {
            let place = cap.reserve(5, 0, || store.count()).await.expect("room");
            store.stored.fetch_add(1, Ordering::SeqCst);
            place.stored();
        }
        assert_eq!(store.asked.load(Ordering::SeqCst), 1, "one count for five");
        // At the cap: a fresh count decides, and it refuses.
        let refused = cap.reserve(5, 0, || store.count()).await.unwrap_err();
        assert_eq!(refused, CapError::AtCapacity { registered: 5 });
        assert_eq!(store.asked.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn places_on_their_way_into_the_store_count_and_a_failed_insert_gives_its_back() {
        let cap = CreateCap::default();
        let store = FakeStore::new(0);
        let first = cap.reserve(2, 0, || store.count()).await.expect("room");
        let second = cap.reserve(2, 0, || store.count()).await.expect("room");
        assert!(
            matches!(
                cap.reserve(2, 0, || store.count()).await,
                Err(CapError::AtCapacity { registered: 2 })
            ),
            "two inserts in flight fill a cap of two"
        );
        drop(first); // its insert failed
        second.stored();
        store.stored.fetch_add(1, Ordering::SeqCst);
        cap.reserve(2, 0, || store.count())
            .await
            .expect("the failed insert's place is free again");
    }

    #[tokio::test]
    async fn a_deletion_elsewhere_frees_room_at_the_cap_on_the_fresh_count() {
        let cap = CreateCap::default();
        let store = FakeStore::new(3);
        assert!(cap.reserve(3, 0, || store.count()).await.is_err());
        store.stored.store(2, Ordering::SeqCst);
        cap.reserve(3, 0, || store.count())
            .await
            .expect("room after the deletion");
    }

    #[tokio::test]
    async fn consumers_running_here_count_even_when_the_store_says_fewer() {
        let cap = CreateCap::default();
        let store = FakeStore::new(0);
        let refused = cap.reserve(2, 2, || store.count()).await.unwrap_err();
        assert_eq!(refused, CapError::AtCapacity { registered: 2 });
    }

    #[tokio::test]
    async fn a_store_that_cannot_be_counted_refuses_with_its_error() {
        let cap = CreateCap::default();
        let failed = cap
            .reserve(2, 0, || async { Err::<usize, _>("store down") })
            .await
            .unwrap_err();
        assert_eq!(failed, CapError::Count("store down"));
    }
}

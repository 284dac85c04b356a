//! `TargetSlots`: how many requests the gateway has open to one target
//! origin (scheme, host and port) at once, every consumer together.
//!
//! Without a bound, a hundred consumers at prefetch 100 aimed at one
//! service open up to 10,000 connections to it: the pool keeps only so many
//! idle, the rest are closed after each request and opened again for the
//! next, and the service's accept queue overflows. With one, deliveries
//! past it wait their turn (still unacked, so nothing is lost) and the
//! connections in use stay few enough to be kept alive and reused.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One semaphore per origin, shared by every forwarder aimed at it.
#[derive(Debug)]
pub struct TargetSlots {
    per_origin: DashMap<String, Arc<Semaphore>>,
    limit: usize,
}

impl TargetSlots {
    /// Slots for `limit` requests at once per origin; at least 1.
    pub fn new(limit: usize) -> Self {
        Self {
            per_origin: DashMap::new(),
            limit: limit.max(1),
        }
    }

    /// Requests allowed at once per origin.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The slots of `url`'s origin. An origin's entry stays once made: one
    /// small semaphore per distinct target the gateway has had.
    pub fn of(&self, url: &reqwest::Url) -> OriginSlots {
        let origin = url.origin().ascii_serialization();
        let semaphore = self
            .per_origin
            .entry(origin)
            .or_insert_with(|| Arc::new(Semaphore::new(self.limit)))
            .clone();
        OriginSlots(semaphore)
    }
}

/// The slots of one origin, held by its forwarders.
#[derive(Debug, Clone)]
pub struct OriginSlots(Arc<Semaphore>);

impl OriginSlots {
    /// Waits for a free slot, in arrival order; the slot is given back when
    /// the permit drops (the answer read, or the request given up).
    pub async fn take(&self) -> OwnedSemaphorePermit {
        // The semaphore lives as long as `self` and is never closed.
        self.0
            .clone()
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("target slots are never closed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).expect("a URL")
    }

    #[tokio::test]
    async fn one_origin_shares_its_slots_across_paths_and_others_have_their_own() {
        let slots = TargetSlots::new(2);
        let a = slots.of(&url("http://svc:8080/one"));
        let same = slots.of(&url("http://svc:8080/two?x=1"));
        let other_port = slots.of(&url("http://svc:8081/one"));

        let _first = a.take().await;
        let _second = same.take().await;
        assert_eq!(a.0.available_permits(), 0, "two paths, one origin");
        assert_eq!(other_port.0.available_permits(), 2);

        // A third request to the full origin waits until one is given back.
        let third = tokio::spawn({
            let a = a.clone();
            async move { a.take().await }
        });
        tokio::task::yield_now().await;
        assert!(!third.is_finished(), "waits while both slots are taken");
        drop(_first);
        let permit = tokio::time::timeout(std::time::Duration::from_secs(5), third)
            .await
            .expect("a slot came free")
            .expect("the task ran");
        drop(permit);
    }

    #[test]
    fn a_limit_of_zero_still_lets_one_request_through() {
        assert_eq!(TargetSlots::new(0).limit(), 1);
    }
}

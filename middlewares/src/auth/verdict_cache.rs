//! Remembered verdicts, keyed by the SHA-256 of the whole `Authorization`
//! value (never the secret itself): accepted credentials for a TTL chosen
//! per kind, refused ones for a short while, so neither a hot publisher nor
//! a client repeating one wrong password costs a store lookup or a bcrypt
//! run per request.
//!
//! Bounded: at `capacity` entries, expired ones are dropped; if that is not
//! enough, every entry goes (they are only a cache).

use std::time::{Duration, Instant};

use dashmap::DashMap;

pub type CacheKey = [u8; 32];

struct Entry<T> {
    value: T,
    expires: Instant,
}

pub struct VerdictCache<T> {
    entries: DashMap<CacheKey, Entry<T>>,
    capacity: usize,
}

impl<T: Clone> VerdictCache<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: DashMap::new(),
            capacity,
        }
    }

    pub fn get(&self, key: &CacheKey) -> Option<T> {
        let hit = self.entries.get(key)?;
        (hit.expires > Instant::now()).then(|| hit.value.clone())
    }

    pub fn insert(&self, key: CacheKey, value: T, ttl: Duration) {
        if self.entries.len() >= self.capacity {
            let now = Instant::now();
            self.entries.retain(|_, e| e.expires > now);
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        self.entries.insert(
            key,
            Entry {
                value,
                expires: Instant::now() + ttl,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_size_stays_bounded() {
        let cache = VerdictCache::new(10);
        cache.insert([1; 32], "a", Duration::from_secs(60));
        cache.insert([2; 32], "b", Duration::ZERO);
        assert_eq!(cache.get(&[1; 32]), Some("a"));
        assert_eq!(cache.get(&[2; 32]), None);
        for n in 0..1000u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&n.to_be_bytes());
            cache.insert(key, "x", Duration::from_secs(60));
            assert!(cache.len() <= 10);
        }
    }
}

//! The failed-authentication throttle: a client (by address: the peer's, or
//! behind a trusted proxy the one it forwarded for, `client_address`) that
//! failed more than `max_failures` times within `window` is refused with 429
//! until that window has passed, without a store lookup or a bcrypt run.
//!
//! The window is fixed, opened by a client's first failure. Successes do not
//! reset it: otherwise one valid key would let its holder guess at others.
//! IPv6 clients are counted per /64, the block one host usually controls.
//!
//! Checks under way count as failures until they are judged: a burst of
//! distinct wrong credentials sent at once from one address gets at most
//! `max_failures` checks (bcrypt runs) in all, the rest 429, instead of every
//! one passing the gate before the first failure is recorded.
//!
//! Memory is bounded: at `capacity` clients, expired windows are dropped,
//! then clients not (yet) refused; if every tracked client is refused, a new
//! address is not tracked. Its requests then still meet the negative cache
//! and the per-core bcrypt limit, so a flood from many addresses costs at
//! most the cores it is allowed, never unbounded memory.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// When a client address is refused for failing too often.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleSettings {
    /// Failures allowed per window; the next attempt is refused. 0 turns
    /// the throttle off.
    pub max_failures: u32,
    /// How long a client's failures are counted, from its first one; a refused client waits until
    /// it ends.
    pub window: Duration,
    /// Most clients tracked at once.
    pub capacity: usize,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            max_failures: 10,
            window: Duration::from_secs(60),
            capacity: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    opened: Instant,
    failures: u32,
}

/// Counts failed authentications per client address and refuses the ones over the limit; see the
/// module comment for the rules.
pub struct FailureThrottle {
    settings: ThrottleSettings,
    clients: DashMap<IpAddr, Window>,
    /// Checks under way per client; an entry lives only while one runs, so
    /// this holds at most one entry per request in flight.
    checking: DashMap<IpAddr, u32>,
}

/// A check under way for one client; it stops counting when dropped.
pub struct CheckSlot<'a> {
    throttle: &'a FailureThrottle,
    client: Option<IpAddr>,
}

impl Drop for CheckSlot<'_> {
    fn drop(&mut self) {
        let Some(key) = self.client else { return };
        let emptied = match self.throttle.checking.get_mut(&key) {
            Some(mut n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        };
        if emptied {
            self.throttle.checking.remove_if(&key, |_, n| *n == 0);
        }
    }
}

/// When the failures so far cannot tell how long to wait (the client is
/// refused for checks under way, not for failures), come back after this.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

impl FailureThrottle {
    /// An empty throttle.
    pub fn new(settings: ThrottleSettings) -> Self {
        Self {
            settings,
            clients: DashMap::new(),
            checking: DashMap::new(),
        }
    }

    /// Takes a slot for one check by `client`, or says how long it must
    /// wait: refused when its failures in the window plus its checks under
    /// way reach `max_failures`.
    pub fn begin_check(&self, client: Option<IpAddr>) -> Result<CheckSlot<'_>, Duration> {
        let free = CheckSlot {
            throttle: self,
            client: None,
        };
        let Some(client) = client else {
            return Ok(free);
        };
        if self.settings.max_failures == 0 {
            return Ok(free);
        }
        if let Some(wait) = self.refused_for(client) {
            return Err(wait);
        }
        let key = client_key(client);
        let now = Instant::now();
        let failures = self
            .clients
            .get(&key)
            .filter(|w| w.opened + self.settings.window > now)
            .map_or(0, |w| w.failures);
        let mut checking = self.checking.entry(key).or_insert(0);
        if failures.saturating_add(*checking) >= self.settings.max_failures {
            return Err(BUSY_RETRY_AFTER);
        }
        *checking += 1;
        Ok(CheckSlot {
            throttle: self,
            client: Some(key),
        })
    }

    /// How long `client` must still wait, when it is refused now.
    pub fn refused_for(&self, client: IpAddr) -> Option<Duration> {
        self.refused_at(client, Instant::now())
    }

    fn refused_at(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        if self.settings.max_failures == 0 {
            return None;
        }
        let window = *self.clients.get(&client_key(client))?;
        let ends = window.opened + self.settings.window;
        (window.failures >= self.settings.max_failures && ends > now).then(|| ends - now)
    }

    /// Counts one refused credential from `client`, opening a new window if the last one has ended.
    pub fn record_failure(&self, client: IpAddr) {
        self.record_failure_at(client, Instant::now());
    }

    fn record_failure_at(&self, client: IpAddr, now: Instant) {
        if self.settings.max_failures == 0 {
            return;
        }
        let key = client_key(client);
        if let Some(mut window) = self.clients.get_mut(&key) {
            if window.opened + self.settings.window > now {
                window.failures = window.failures.saturating_add(1);
            } else {
                *window = Window {
                    opened: now,
                    failures: 1,
                };
            }
            return;
        }
        if !self.make_room(now) {
            return;
        }
        self.clients.insert(
            key,
            Window {
                opened: now,
                failures: 1,
            },
        );
    }

    /// Whether one more client fits, after dropping what can be dropped.
    fn make_room(&self, now: Instant) -> bool {
        if self.clients.len() < self.settings.capacity {
            return true;
        }
        let window = self.settings.window;
        self.clients.retain(|_, w| w.opened + window > now);
        if self.clients.len() < self.settings.capacity {
            return true;
        }
        let max = self.settings.max_failures;
        self.clients.retain(|_, w| w.failures >= max);
        self.clients.len() < self.settings.capacity
    }

    /// How many client addresses are tracked now; for tests of the memory bound.
    pub fn tracked(&self) -> usize {
        self.clients.len()
    }
}

/// IPv4 (also when mapped into IPv6) as is; other IPv6 by its /64.
fn client_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(max_failures: u32, capacity: usize) -> FailureThrottle {
        FailureThrottle::new(ThrottleSettings {
            max_failures,
            window: Duration::from_secs(60),
            capacity,
        })
    }

    fn ip(raw: &str) -> IpAddr {
        raw.parse().expect("an address")
    }

    #[test]
    fn the_attempt_after_the_limit_is_refused_until_the_window_ends() {
        let t = throttle(10, 100);
        let start = Instant::now();
        for _ in 0..10 {
            assert_eq!(t.refused_at(ip("10.0.0.1"), start), None);
            t.record_failure_at(ip("10.0.0.1"), start);
        }
        let wait = t.refused_at(ip("10.0.0.1"), start + Duration::from_secs(1));
        assert_eq!(wait, Some(Duration::from_secs(59)));
        assert_eq!(t.refused_at(ip("10.0.0.2"), start), None);
        assert_eq!(
            t.refused_at(ip("10.0.0.1"), start + Duration::from_secs(60)),
            None
        );
    }

    #[test]
    fn failures_in_an_old_window_do_not_count() {
        let t = throttle(2, 100);
        let start = Instant::now();
        t.record_failure_at(ip("10.0.0.1"), start);
        let later = start + Duration::from_secs(61);
        t.record_failure_at(ip("10.0.0.1"), later);
        assert_eq!(t.refused_at(ip("10.0.0.1"), later), None);
    }

    #[test]
    fn an_ipv6_host_is_one_client_per_64() {
        let t = throttle(2, 100);
        let now = Instant::now();
        t.record_failure_at(ip("2001:db8::1"), now);
        t.record_failure_at(ip("2001:db8::ffff:2"), now);
        assert!(t.refused_at(ip("2001:db8::3"), now).is_some());
        assert!(t.refused_at(ip("2001:db8:0:1::3"), now).is_none());
        t.record_failure_at(ip("::ffff:10.0.0.9"), now);
        t.record_failure_at(ip("10.0.0.9"), now);
        assert!(t.refused_at(ip("10.0.0.9"), now).is_some());
    }

    #[test]
    fn a_flood_of_addresses_cannot_grow_it_past_its_capacity() {
        let t = throttle(2, 50);
        let now = Instant::now();
        // Two clients that are refused stay refused through the flood.
        for _ in 0..2 {
            t.record_failure_at(ip("192.0.2.1"), now);
            t.record_failure_at(ip("192.0.2.2"), now);
        }
        for n in 0..10_000u32 {
            t.record_failure_at(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n)), now);
            assert!(t.tracked() <= 50);
        }
        assert!(t.refused_at(ip("192.0.2.1"), now).is_some());
        assert!(t.refused_at(ip("192.0.2.2"), now).is_some());
    }

    #[test]
    fn checks_under_way_count_until_they_are_judged() {
        let t = throttle(3, 100);
        let client = Some(ip("10.0.0.1"));
        let first = t.begin_check(client).expect("a slot");
        let second = t.begin_check(client).expect("a slot");
        t.record_failure(ip("10.0.0.1"));
        assert!(
            t.begin_check(client).is_err(),
            "one failure and two checks under way reach the limit of 3"
        );
        assert!(
            t.begin_check(Some(ip("10.0.0.2"))).is_ok(),
            "others are not held up"
        );
        drop(first);
        drop(second);
        let third = t.begin_check(client).expect("the slots came back");
        drop(third);
        assert!(t.checking.is_empty(), "no entry outlives its checks");
    }

    #[test]
    fn zero_turns_it_off() {
        let t = throttle(0, 100);
        let now = Instant::now();
        for _ in 0..100 {
            t.record_failure_at(ip("10.0.0.1"), now);
        }
        assert_eq!(t.refused_at(ip("10.0.0.1"), now), None);
        assert_eq!(t.tracked(), 0);
    }
}

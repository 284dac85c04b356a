//! What authentication costs, for `/metrics`: bcrypt runs (the expensive
//! part) and how many ran at once, refused credentials, and requests
//! turned away by the throttle.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The authentication counters and gauges, registered on the `/metrics` registry.
#[derive(Default)]
pub struct AuthMetrics {
    /// bcrypt verifications run; the cache and the throttle exist to keep this low.
    pub bcrypt_runs: Counter,
    /// Requests whose credentials were refused (401).
    pub failures: Counter,
    /// Requests refused with 429 by the failure throttle.
    pub throttled: Counter,
    bcrypt_slots: Gauge,
    bcrypt_peak: Gauge,
}

impl AuthMetrics {
    /// Adds every authentication metric to `registry`; call once at startup.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "workerrmq_auth_bcrypt_verifications",
            "bcrypt verifications run to check a request's password",
            self.bcrypt_runs.clone(),
        );
        registry.register(
            "workerrmq_auth_failures",
            "Requests whose credentials were refused (401)",
            self.failures.clone(),
        );
        registry.register(
            "workerrmq_auth_throttled",
            "Requests refused with 429 after too many failed authentications from their address",
            self.throttled.clone(),
        );
        registry.register(
            "workerrmq_auth_bcrypt_slots",
            "bcrypt runs allowed at once (one per core)",
            self.bcrypt_slots.clone(),
        );
        registry.register(
            "workerrmq_auth_bcrypt_peak_concurrency",
            "The most bcrypt runs this process has had going at once",
            self.bcrypt_peak.clone(),
        );
    }

    /// Reads the process-wide bcrypt figures; call before rendering.
    pub fn refresh(&self) {
        let as_gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.bcrypt_slots
            .set(as_gauge(credentials::password::max_concurrent()));
        self.bcrypt_peak
            .set(as_gauge(credentials::password::peak_concurrency()));
    }
}

//! What authentication costs, for `/metrics`: bcrypt runs (the expensive
//! part), refused credentials, and requests turned away by the throttle.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

#[derive(Default)]
pub struct AuthMetrics {
    pub bcrypt_runs: Counter,
    pub failures: Counter,
    pub throttled: Counter,
}

impl AuthMetrics {
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
    }
}

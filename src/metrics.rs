//! The gateway's Prometheus registry: the delivery families from
//! `gateway::metrics`, the auth counters from `middlewares`, publish
//! counters and latency, broker/store up.

use std::sync::Arc;

use gateway::metrics::{latency_histogram, DeliveryMetrics};
use middlewares::AuthMetrics;
use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    /// confirmed, unroutable or failed.
    pub outcome: &'static str,
}

pub struct AppMetrics {
    registry: Registry,
    pub delivery: Arc<DeliveryMetrics>,
    pub auth: Arc<AuthMetrics>,
    pub attempt_log: services::attempts::AttemptLogMetrics,
    pub publishes: Family<PublishLabels, Counter>,
    pub publish_seconds: Histogram,
    broker_up: Gauge,
    store_up: Gauge,
    live_replicas: Gauge,
}

impl Default for AppMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AppMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let delivery = Arc::new(DeliveryMetrics::new());
        delivery.register(&mut registry);
        let auth = Arc::new(AuthMetrics::default());
        auth.register(&mut registry);
        let attempt_log = services::attempts::AttemptLogMetrics::default();
        attempt_log.register(&mut registry);
        let publishes = Family::<PublishLabels, Counter>::default();
        registry.register(
            "workerrmq_publishes",
            "Publishes through /messagePublish by outcome",
            publishes.clone(),
        );
        let publish_seconds = latency_histogram();
        registry.register(
            "workerrmq_publish_seconds",
            "Time from publish to the broker's confirm",
            publish_seconds.clone(),
        );
        let broker_up = Gauge::default();
        registry.register(
            "workerrmq_broker_up",
            "1 when the broker connection is up",
            broker_up.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "workerrmq_store_up",
            "1 when the store answered a ping",
            store_up.clone(),
        );
        let live_replicas = Gauge::default();
        registry.register(
            "workerrmq_live_replicas",
            "Gateway replicas seen alive in the store; rate limits are shared among them",
            live_replicas.clone(),
        );
        Self {
            registry,
            delivery,
            auth,
            attempt_log,
            publishes,
            publish_seconds,
            broker_up,
            store_up,
            live_replicas,
        }
    }

    pub fn set_live_replicas(&self, live: usize) {
        self.live_replicas
            .set(i64::try_from(live).unwrap_or(i64::MAX));
    }

    pub fn render(&self, broker_up: bool, store_up: bool) -> String {
        self.broker_up.set(i64::from(broker_up));
        self.store_up.set(i64::from(store_up));
        self.auth.refresh();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

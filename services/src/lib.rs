//! `services` owns what a delivery is handed to and what the API reads:
//! the MongoDB store (accounts, API keys, consumer registry), the RabbitMQ
//! management-API client, the HTTP forwarder and the built-in handlers.

// Documented in its own crate.
#[allow(missing_docs)]
pub mod builtin;
pub mod consumers;
pub mod fleet;
pub mod forwarder;
pub mod management;
pub mod network;
pub mod replicas;
pub mod store;
pub mod targets;
pub mod validation;

pub use builtin::{BuiltinHandlers, ScrapeSettings};
pub use consumers::{
    batch_field_error, circuit_breaker_field_error, retry_field_error, BatchSettings,
    BuiltinTargets, CappedCreateError, ConsumerDefinition, ConsumerRegistry, ConsumerView,
    RegistryError, UpdateOutcome,
};
pub use forwarder::HttpForwarder;
pub use management::{ConnectionInfo, ManagementClient, ManagementError, QueueRow};
pub use store::{ApiKeyRecord, Role, Store, StoreContext, StoreError};
pub use targets::{BuiltinHandler, HttpTarget, SigningSecret, TargetSpec, TargetUrl};
pub use validation::FieldError;

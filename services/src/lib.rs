//! `services` owns what a delivery is handed to and what the API reads:
//! the MongoDB store (accounts, API keys, consumer registry), the RabbitMQ
//! management-API client, the HTTP forwarder and the fleet. The built-in
//! handlers live in their own crate (`builtin`) and reach the registry
//! through `BuiltinTargets`.

pub mod attempts;
pub mod consumers;
pub mod fleet;
pub mod forwarder;
pub mod management;
pub mod masking;
pub mod network;
pub mod replicas;
pub mod ruled;
pub mod signing;
pub mod store;
pub mod targets;
pub mod validation;

pub use consumers::{
    batch_field_error, circuit_breaker_field_error, retry_field_error, AttemptLogSettings,
    BatchSettings, BuiltinTargets, CappedCreateError, ConsumerDefinition, ConsumerRegistry,
    ConsumerView, MissingKeyName, OrderingKeySettings, OrderingSettings, RegistryError,
    UpdateOutcome, DEFAULT_ORDERED_MAX_HOLD,
};
pub use forwarder::{AttemptDetail, HttpForwarder};
pub use management::{ConnectionInfo, ManagementClient, ManagementError, QueueRow};
pub use ruled::{OnRuleError, RuledTarget};
pub use store::{ApiKeyRecord, Role, Store, StoreContext, StoreError};
pub use targets::{BuiltinHandler, HttpTarget, SigningSecret, TargetSpec, TargetUrl};
pub use validation::FieldError;

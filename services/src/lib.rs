//! `services` owns what a delivery is handed to and what the API reads:
//! the MongoDB store (accounts, API keys, consumer registry), the RabbitMQ
//! management-API client, and, with the consumer engine, the HTTP forwarder
//! and the built-in handlers.

pub mod management;
pub mod store;

pub use management::{ConnectionInfo, ManagementClient, ManagementError, QueueRow};
pub use store::{ApiKeyRecord, Credential, Role, Store, StoreError};

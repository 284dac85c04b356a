//! The `workerrmq` binary's library: configuration, start-up, the HTTP
//! routes (thin: parse, call, map), the application state and the mapping
//! from failures to the contract's error answers.

pub mod configuration;
pub(crate) mod error;
pub(crate) mod extract;
pub(crate) mod metrics;
pub(crate) mod openapi;
pub(crate) mod publishing;
pub mod redact;
pub(crate) mod routes;
pub mod startup;
pub(crate) mod state;
pub mod telemetry;

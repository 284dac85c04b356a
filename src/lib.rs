//! The `workerrmq` binary's library: configuration, start-up, the HTTP
//! routes (thin: parse, call, map), the application state and the mapping
//! from failures to the contract's error answers.

pub mod configuration;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod redact;
pub mod routes;
pub mod startup;
pub mod state;
pub mod telemetry;

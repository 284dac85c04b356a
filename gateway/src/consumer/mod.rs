//! The consumer engine: one tokio task per consumer, each on its own
//! channel with its own prefetch, handing every delivery to a
//! `DeliveryTarget` and settling it by the outcome.
//!
//! - `supervisor`: the `ConsumerSupervisor` (a `DashMap` of running
//!   consumers) and each consumer's task loop, which reconnects on its own.
//! - `target`: what a delivery is handed to, and the `DeliveryOutcome` it
//!   answers with.
//! - `retry`: the backoff policy, as waiting in broker-side delay queues.
//! - `settle`: **where a delivery is acked** (`AckWindow::flush`) — after
//!   a 2xx, or after the broker confirmed its retry or dead-letter copy.
//!   Nowhere else.
//! - `stats`: live counters read by `/getConsumers` and `/metrics`.

mod retry;
mod settle;
pub mod stats;
mod supervisor;
mod target;

pub use retry::{RetryPolicy, RetryPolicyError, DELAY_LADDER_MS};
pub(crate) use settle::{attempt_of, hand_back};
pub use stats::{ConsumerState, ConsumerStats, StatsSnapshot};
pub use supervisor::{ConsumerId, ConsumerSpec, ConsumerSupervisor};
pub use target::{DeliveryOutcome, DeliveryTarget, IncomingMessage};

/// Headers the gateway puts on the copies it republishes.
pub mod headers {
    /// 1-based number of the attempt this copy is for.
    pub const ATTEMPT: &str = "x-workerrmq-attempt";
    pub const LAST_ERROR: &str = "x-workerrmq-last-error";
    pub const DEAD_LETTERED_AT: &str = "x-workerrmq-dead-lettered-at";
    /// The main queue a dead letter came from.
    pub const ORIGINAL_QUEUE: &str = "x-workerrmq-queue";
}

//! The consumer engine: one tokio task per consumer, each on its own
//! channel with its own prefetch, handing every delivery to a
//! `DeliveryTarget` and settling it by the outcome.
//!
//! - `spec`: a consumer's id and the spec the engine runs it with.
//! - `supervisor`: the `ConsumerSupervisor` (a `DashMap` of registered
//!   consumers): start, pause and resume, stop with a drain, what the API
//!   reads.
//! - `worker`: each consumer's task loop on its own channel of a consume
//!   connection, which reconnects on its own; its sessions, step by step,
//!   and the drain when one is stopped.
//! - `target`: what a delivery is handed to, and the `DeliveryOutcome` it
//!   answers with; `failure`: why an attempt failed, as a kind from a
//!   closed set.
//! - `envelope`: a delivery's exchange, routing key and headers, made for
//!   consumers with rules only.
//! - `delivery`: one attempt of one delivery, from the call to its settling
//!   and its record.
//! - `ordering`: ordered delivery per key (opt-in): where a message's key
//!   is read, and the per-key lanes; `ordered`: an ordered consumer's part
//!   of a session (lanes, retries held in place, its shutdown).
//! - `batch`: batch delivery (opt-in): gathering deliveries into one
//!   request, and settling each message by the batch's answer.
//! - `limits`: concurrency and rate limits, and the gate the worker
//!   passes before taking each delivery.
//! - `breaker`: the circuit breaker, a stage between the target's answer
//!   and the settling that only consumers configured with one pass through:
//!   stop taking deliveries while a target keeps failing, hand the failures
//!   back unspent, probe, close.
//! - `retry`: the backoff policy, as waiting in broker-side delay queues
//!   (an ordered consumer waits in place instead, `ordered`).
//! - `settle`: **where a delivery is acked**, and nowhere else: a consumer's
//!   deliveries in `AckWindow::flush` and `AckWindow::ack_stragglers`, after
//!   a 2xx or after the broker confirmed their retry or dead-letter copy; a
//!   replayed dead letter in `settle_replayed`, after its copy in the main
//!   queue is confirmed. Also where deliveries are handed back, what the
//!   copies carry, and the one log line per settled delivery.
//! - `attempts`: the record of each settled attempt, handed to the
//!   `AttemptLog` without waiting.
//! - `stats`: live counters read by `/getConsumers` and `/metrics`.

mod attempts;
mod batch;
mod batch_policy;
mod breaker;
mod delivery;
mod envelope;
mod failure;
mod limits;
mod ordered;
mod ordering;
mod retry;
mod settle;
mod spec;
pub mod stats;
mod supervisor;
mod target;
mod worker;

pub use attempts::{AttemptLog, AttemptOutcome, AttemptRecord, Trigger};
pub use batch_policy::{BatchPolicy, BatchPolicyError};
pub use breaker::{
    CircuitBreaker, CircuitBreakerPolicy, CircuitBreakerPolicyError, CircuitSnapshot, CircuitState,
};
pub use limits::{Concurrency, LimitError, LiveReplicas, RatePerSec};
pub use ordering::{KeySource, MissingKey, OrderingError, OrderingPolicy};
pub use retry::{RetryPolicy, RetryPolicyError, DELAY_LADDER_MS};
pub(crate) use settle::{attempt_of, kept_properties, settle_replayed, Replayed};
pub use spec::{ConsumerId, ConsumerSpec};
pub use stats::{ConsumerState, ConsumerStats, KeysSnapshot, StatsSnapshot};
pub use supervisor::{ConsumerSupervisor, Flow};
pub use target::{
    Answer, Attempt, Batch, BatchOutcome, DeliveryOutcome, DeliveryTarget, Envelope, ErrorKind,
    Failure, IncomingMessage, RequestShape,
};

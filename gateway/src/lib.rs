//! `gateway` owns everything that speaks AMQP: the broker connections and
//! their reconnect loops, topology (queues with their retry and dead-letter
//! companions, exchanges, bindings), the confirming publisher and the
//! consumer supervisor. It knows nothing of HTTP routes or MongoDB.

pub mod addresses;
pub mod companion_types;
pub mod connection;
pub mod consumer;
pub mod dead_letters;
pub mod error;
pub mod headers;
pub mod message_size;
pub mod metrics;
pub mod names;
pub mod peek;
pub mod publisher;
pub mod status_filter;
pub mod topology;
pub mod trace;

pub use addresses::{AmqpUrl, AmqpUrlParts, AmqpUrls, AmqpUrlsError};
pub use companion_types::{CompanionTypes, QueueTypeSource};
pub use connection::{Broker, BrokerSettings, ConnectionNode, ConsumerLease};
pub use consumer::{
    Answer, Attempt, AttemptLog, AttemptOutcome, AttemptRecord, Batch, BatchOutcome, BatchPolicy,
    BatchPolicyError, CircuitBreakerPolicy, CircuitBreakerPolicyError, CircuitSnapshot,
    CircuitState, Concurrency, ConsumerId, ConsumerSpec, ConsumerSupervisor, DeliveryOutcome,
    DeliveryTarget, Envelope, ErrorKind, Failure, Flow, IncomingMessage, KeySource, LimitError,
    LiveReplicas, MissingKey, OrderingError, OrderingPolicy, RatePerSec, RequestShape, RetryPolicy,
    RetryPolicyError, Trigger,
};
pub use dead_letters::{
    DeadLetter, DeadLetters, ReplayFilter, ReplayFilterError, ReplayFilterInput, ReplayMode,
    ReplayReport,
};
pub use error::{with_causes, AmqpContext, BrokerError, Chain, Lost};
pub use message_size::encoded_headers_len;
pub use names::{ExchangeName, NameError, QueueName, RoutingKey};
pub use publisher::{BatchAnswers, OutgoingMessage, OwnedMessage, PublishOutcome, Publisher};
pub use status_filter::{BadStatusFilter, StatusFilter};
pub use topology::{
    DeclareOutcome, ExchangeKind, ExchangeSpec, QueueCounts, QueueSpec, QueueType, Topology,
};
pub use trace::{Traceparent, TraceparentError};

/// Re-exported so callers can build message properties and field tables
/// without depending on lapin themselves.
pub use lapin::{types::AMQPValue, types::FieldTable, BasicProperties};

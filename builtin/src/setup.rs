//! The start-up step for the built-in handlers: their indexes, and (with
//! `BUILTIN_CONSUMERS`) each built-in queue declared with its dead-letter
//! companion and given one stored built-in consumer.
//!
//! Safe for several replicas starting at once: a built-in consumer's id is
//! derived from its queue name (UUID v5), so the registry's insert of the
//! second replica is a duplicate key, which means "already there". Tried
//! once during start-up; when the broker or store is down, retried in the
//! background until it succeeds.

use std::sync::Arc;
use std::time::Duration;

use gateway::{BrokerError, QueueName, QueueSpec, QueueType, RetryPolicy, Topology};
use tokio_util::sync::CancellationToken;

use super::queue_name;
use services::consumers::{ConsumerDefinition, ConsumerRegistry, RegistryError};
use services::targets::{BuiltinHandler, TargetSpec};
use services::{Store, StoreError};

const RETRY_EVERY: Duration = Duration::from_secs(2);
const HANDLERS: [BuiltinHandler; 3] = [
    BuiltinHandler::User,
    BuiltinHandler::Report,
    BuiltinHandler::Scrape,
];

/// Built-in consumers wait out a store outage of minutes: 1, 2, 5, 10, 30 s
/// then a minute per wait (the delay ladder), ten attempts, about five
/// minutes in all, before a message is dead-lettered.
pub const BUILTIN_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 10,
    initial_delay_ms: 1_000,
    multiplier: 2.0,
    max_delay_ms: 60_000,
};

/// Why one pass of the built-in handlers' setup did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A built-in queue could not be declared; worth another pass.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// An index could not be made or a consumer not registered; worth another
    /// pass.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Retrying will not help (an invalid consumer definition).
    #[error(transparent)]
    Invalid(services::FieldError),
    /// Retrying will not help: the prefix makes an invalid queue name.
    #[error("BUILTIN_QUEUE_PREFIX")]
    Prefix(#[source] gateway::NameError),
}

/// The id of the built-in consumer on `queue`, the same on every replica.
pub fn builtin_consumer_id(queue: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("workerrmq:builtin-consumer:{queue}").as_bytes(),
    )
    .to_string()
}

fn prefetch(handler: BuiltinHandler) -> u16 {
    match handler {
        BuiltinHandler::User | BuiltinHandler::Report => 10,
        // Each job already fetches several URLs at once.
        BuiltinHandler::Scrape => 2,
    }
}

fn handler_name(handler: BuiltinHandler) -> &'static str {
    match handler {
        BuiltinHandler::User => "user",
        BuiltinHandler::Report => "report",
        BuiltinHandler::Scrape => "scrape",
    }
}

/// What the start-up step needs; `bootstrap` runs it.
pub struct BuiltinSetup {
    /// Declares the built-in queues and their dead-letter companions.
    pub topology: Topology,
    /// Where the built-in consumers are stored; its reconciler runs them.
    pub registry: Arc<ConsumerRegistry>,
    /// Where the handlers' indexes are made.
    pub store: Store,
    /// `BUILTIN_QUEUE_PREFIX`.
    pub prefix: String,
    /// `BUILTIN_CONSUMERS`: declare the queues and register the consumers,
    /// not only the indexes.
    pub declare_consumers: bool,
    /// `DEFAULT_QUEUE_TYPE`: the built-in queues' type.
    pub queue_type: QueueType,
}

impl BuiltinSetup {
    /// One full pass; every step is idempotent.
    pub async fn run_once(&self) -> Result<(), SetupError> {
        super::user::ensure_indexes(&self.store).await?;
        if !self.declare_consumers {
            return Ok(());
        }
        for handler in HANDLERS {
            let queue =
                QueueName::parse(queue_name(&self.prefix, handler)).map_err(SetupError::Prefix)?;
            self.declare(&queue).await?;
            self.register(handler, &queue).await?;
        }
        Ok(())
    }

    async fn declare(&self, queue: &QueueName) -> Result<(), SetupError> {
        let spec = QueueSpec {
            name: queue.clone(),
            durable: true,
            queue_type: self.queue_type,
            message_ttl_ms: None,
            max_length: None,
            dead_letter: true,
            single_active_consumer: false,
        };
        // No "does it exist?" first: that is a passive declare, which fails
        // on a fresh broker and lapin logs the failure at ERROR.
        match self.topology.ensure_queue(&spec).await {
            Ok(()) => {
                tracing::info!(%queue, "built-in queue declared");
                Ok(())
            }
            // Someone made it with other arguments: use it as it is.
            Err(conflict @ BrokerError::Conflict { .. }) => {
                tracing::warn!(%queue, reason = %gateway::Chain(&conflict), "built-in queue exists with other arguments; consuming from it as it is");
                Ok(())
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn register(&self, handler: BuiltinHandler, queue: &QueueName) -> Result<(), SetupError> {
        let definition = ConsumerDefinition {
            consumer_id: builtin_consumer_id(queue.as_str()),
            consumer_name: format!("builtin-{}", handler_name(handler)),
            queue_name: queue.to_string(),
            target: TargetSpec::Builtin { handler },
            prefetch: prefetch(handler),
            retry: BUILTIN_RETRY,
            signing_secret: None,
            previous_signing_secret: None,
            previous_signing_expires_at: None,
            created_at: services::store::DateTime::now(),
            paused: false,
            concurrency: None,
            rate_limit_per_sec: None,
            // A built-in handler fails on the store, not on a remote
            // endpoint; its retries wait in the broker as before.
            circuit_breaker: None,
            batch: None,
            attempt_log: None,
            ordering: None,
            filter: None,
            transform: None,
            on_rule_error: None,
            revision: 0,
        };
        match self.registry.create(definition).await {
            Ok(view) => {
                tracing::info!(consumer_id = %view.consumer_id, %queue, "built-in consumer registered");
                Ok(())
            }
            // Registered before, or by another replica just now; the
            // reconciler runs it.
            Err(RegistryError::Store(StoreError::Duplicate { .. })) => Ok(()),
            Err(RegistryError::Store(err)) => Err(err.into()),
            Err(RegistryError::Invalid(reason)) => Err(SetupError::Invalid(reason)),
        }
    }

    /// Runs a pass now; if the broker or store is not there, keeps trying
    /// in the background until one succeeds or `shutdown`.
    pub async fn bootstrap(self, shutdown: CancellationToken) {
        match self.run_once().await {
            Ok(()) => return,
            Err(err @ (SetupError::Invalid(_) | SetupError::Prefix(_))) => {
                tracing::error!(error = %gateway::Chain(&err), "built-in handlers cannot be set up");
                return;
            }
            Err(err) => {
                tracing::warn!(error = %gateway::Chain(&err), "built-in handlers not set up yet; will keep trying in the background")
            }
        }
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_EVERY) => {}
                    _ = shutdown.cancelled() => return,
                }
                match self.run_once().await {
                    Ok(()) => {
                        tracing::info!("built-in handlers set up");
                        return;
                    }
                    Err(err @ (SetupError::Invalid(_) | SetupError::Prefix(_))) => {
                        tracing::error!(error = %gateway::Chain(&err), "built-in handlers cannot be set up");
                        return;
                    }
                    Err(err) => {
                        tracing::debug!(error = %gateway::Chain(&err), "built-in handlers still not set up")
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_consumer_ids_are_stable_per_queue() {
        let a = builtin_consumer_id("users_queue");
        assert_eq!(a, builtin_consumer_id("users_queue"));
        assert_ne!(a, builtin_consumer_id("t1_users_queue"));
        assert!(gateway::ConsumerId::parse(&a).is_some_and(|id| id.as_str() == a));
    }

    #[test]
    fn the_builtin_retry_policy_is_valid() {
        assert!(BUILTIN_RETRY.validate().is_ok());
    }
}

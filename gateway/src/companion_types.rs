//! Which queue type a main queue's companions (`<queue>.dlq`, the delay
//! queues `<queue>.retry.<ms>`) are declared with: the main queue's own, so
//! a quorum queue's retries and dead letters are replicated like it.
//!
//! The consumer engine declares companions on demand, on whichever replica
//! first needs one, for queues it may not have created; AMQP cannot tell a
//! queue's type, so it asks a `QueueTypeSource` (the management API, in
//! `services`) and falls back to `DEFAULT_QUEUE_TYPE` when that cannot say.
//! A companion that exists already is used with the type it has
//! (`Topology` retries the declare with the other type on a mismatch).

use std::sync::Arc;

use crate::{QueueName, QueueType};

/// Tells the type of an existing queue.
#[async_trait::async_trait]
pub trait QueueTypeSource: Send + Sync {
    /// `None` when it cannot tell (no such queue, the source unreachable).
    async fn queue_type(&self, queue: &QueueName) -> Option<QueueType>;
}

/// The companion type of a main queue: its own type when the source knows
/// it, else the default.
#[derive(Clone)]
pub struct CompanionTypes {
    default: QueueType,
    source: Option<Arc<dyn QueueTypeSource>>,
}

impl CompanionTypes {
    /// `source` is asked a main queue's type; without one, every companion gets `default`.
    pub fn new(default: QueueType, source: Option<Arc<dyn QueueTypeSource>>) -> Self {
        Self { default, source }
    }

    /// The type used when the main queue's own is unknown.
    pub fn default_type(&self) -> QueueType {
        self.default
    }

    /// The main queue's type; `None` when the source could not say (the
    /// caller uses the default for now and asks again later).
    pub async fn known(&self, main: &QueueName) -> Option<QueueType> {
        match &self.source {
            Some(source) => source.queue_type(main).await,
            None => None,
        }
    }
}

impl Default for CompanionTypes {
    /// Classic companions, no source: how the gateway worked before.
    fn default() -> Self {
        Self::new(QueueType::Classic, None)
    }
}

impl std::fmt::Debug for CompanionTypes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompanionTypes")
            .field("default", &self.default)
            .field("source", &self.source.is_some())
            .finish()
    }
}

//! Queues, their companions, exchanges and bindings.
//!
//! Every operation runs on its own short-lived channel: a broker refusal
//! (PRECONDITION_FAILED, NOT_FOUND) closes the channel it happened on, and
//! must never break the channel other requests or consumers use.
//!
//! A queue created with `dead_letter` gets `<queue>.dlq` and dead-letter
//! arguments pointing at it, so messages that expire or overflow end up
//! there too. Delay queues (`<queue>.retry.<ms>`) are declared on demand by
//! the consumer engine.
//!
//! Companions take the main queue's type (`companion_types`). Quorum delay
//! queues hand their messages back with at-least-once dead-lettering
//! (`x-dead-letter-strategy: at-least-once`, which needs `x-overflow:
//! reject-publish`): the broker keeps a message in the delay queue until the
//! main queue has confirmed it, so a retry survives a node crash at the
//! instant it expires. Classic dead-lettering, the only kind classic queues
//! have, is at-most-once.

use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Channel;

use crate::{Broker, BrokerError, Chain, ExchangeName, QueueName, RoutingKey};

/// The kind of queue the broker keeps: the companions of a queue are declared with its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// A classic queue (one node).
    Classic,
    /// A quorum queue, replicated across nodes (always durable).
    Quorum,
}

impl QueueType {
    /// `classic` or `quorum` (any case); `None` for anything else.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "classic" => Some(Self::Classic),
            "quorum" => Some(Self::Quorum),
            _ => None,
        }
    }

    /// The `x-queue-type` value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Classic => Self::Quorum,
            Self::Quorum => Self::Classic,
        }
    }
}

/// A queue an operator asks for.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    /// Its name.
    pub name: QueueName,
    /// Whether it survives a broker restart.
    pub durable: bool,
    /// Classic or quorum.
    pub queue_type: QueueType,
    /// How long a message may wait in it before the broker drops it (`x-message-ttl`).
    pub message_ttl_ms: Option<u32>,
    /// The most messages it holds (`x-max-length`); beyond, the oldest are dropped.
    pub max_length: Option<u32>,
    /// Whether it gets `<queue>.dlq`, where messages dropped or rejected from it go.
    pub dead_letter: bool,
    /// Whether the broker delivers to one consumer at a time
    /// (`x-single-active-consumer`).
    pub single_active_consumer: bool,
}

impl QueueSpec {
    fn arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            args.insert("x-queue-type".into(), long_string("quorum"));
        }
        if let Some(ttl) = self.message_ttl_ms {
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl.into()));
        }
        if let Some(max) = self.max_length {
            args.insert("x-max-length".into(), AMQPValue::LongLongInt(max.into()));
        }
        if self.single_active_consumer {
            args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
        if self.dead_letter {
            args.insert("x-dead-letter-exchange".into(), long_string(""));
            args.insert(
                "x-dead-letter-routing-key".into(),
                long_string(&self.name.dead_letter_queue()),
            );
        }
        args
    }
}

/// Arguments every companion of a main queue of `queue_type` has.
fn companion_arguments(queue_type: QueueType) -> FieldTable {
    let mut args = FieldTable::default();
    if queue_type == QueueType::Quorum {
        args.insert("x-queue-type".into(), long_string("quorum"));
    }
    args
}

/// A delay queue's arguments: hold each message `delay_ms`, then
/// dead-letter it back to `main`; quorum ones at-least-once.
fn retry_queue_arguments(main: &QueueName, delay_ms: u64, queue_type: QueueType) -> FieldTable {
    let mut args = companion_arguments(queue_type);
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(delay_ms as i64),
    );
    args.insert("x-dead-letter-exchange".into(), long_string(""));
    args.insert(
        "x-dead-letter-routing-key".into(),
        long_string(main.as_str()),
    );
    if queue_type == QueueType::Quorum {
        args.insert(
            "x-dead-letter-strategy".into(),
            long_string("at-least-once"),
        );
        // At-least-once is ignored under the default `drop-head`.
        args.insert("x-overflow".into(), long_string("reject-publish"));
    }
    // Messages leave after `delay_ms`; the margin keeps the queue alive
    // well past the last one even on a slow broker.
    let expires = delay_ms.saturating_mul(2).saturating_add(600_000);
    args.insert("x-expires".into(), AMQPValue::LongLongInt(expires as i64));
    args
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// What a declare did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclareOutcome {
    /// The object was not there and now is.
    Created,
    /// It was already there with the same arguments: nothing changed.
    AlreadyExisted,
}

/// How an exchange routes, as AMQP defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    /// By exact routing key.
    Direct,
    /// To every bound queue, ignoring the key.
    Fanout,
    /// By routing-key pattern (`*` one word, `#` zero or more).
    Topic,
    /// By message headers instead of the key.
    Headers,
}

/// An exchange an operator asks for.
#[derive(Debug, Clone)]
pub struct ExchangeSpec {
    /// Its name.
    pub name: ExchangeName,
    /// How it routes.
    pub kind: ExchangeKind,
    /// Whether it survives a broker restart.
    pub durable: bool,
}

/// Message and consumer counts as the broker sees them right now.
#[derive(Debug, Clone, Copy)]
pub struct QueueCounts {
    /// Messages ready to deliver.
    pub messages: u32,
    /// Consumers attached, from every client.
    pub consumers: u32,
}

/// Declares, inspects and binds queues and exchanges, each operation on a short-lived channel of
/// its own, so a refusal (which closes the channel) touches nothing else.
#[derive(Clone)]
pub struct Topology {
    broker: Broker,
}

impl Topology {
    /// Topology operations over `broker`'s connections.
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }

    /// Runs `op` on a fresh channel and closes it afterwards. When the
    /// broker refuses, it has closed the channel already.
    async fn on_fresh_channel<T, F, Fut>(&self, doing: String, op: F) -> Result<T, BrokerError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, lapin::Error>>,
    {
        let channel = self
            .broker
            .channel()
            .await
            .map_err(|e| e.while_doing(doing.clone()))?;
        let result = op(channel.clone()).await;
        if channel.status().connected() {
            let _ = channel.close(200, "done".into()).await;
        }
        result.map_err(|err| BrokerError::amqp(doing, err))
    }

    /// `None` when there is no such queue.
    pub async fn queue_counts(&self, name: &str) -> Result<Option<QueueCounts>, BrokerError> {
        let doing = format!("looking up queue `{name}`");
        let name = name.to_owned();
        let passive = self
            .on_fresh_channel(doing, |ch| async move {
                ch.queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
            })
            .await;
        match passive {
            Ok(queue) => Ok(Some(QueueCounts {
                messages: queue.message_count(),
                consumers: queue.consumer_count(),
            })),
            Err(BrokerError::NotFound { .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// Whether an exchange named `name` exists (a passive declare).
    pub async fn exchange_exists(&self, name: &str) -> Result<bool, BrokerError> {
        let doing = format!("looking up exchange `{name}`");
        let name = name.to_owned();
        let passive = self
            .on_fresh_channel(doing, |ch| async move {
                ch.exchange_declare(
                    name.as_str().into(),
                    lapin::ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
            })
            .await;
        match passive {
            Ok(()) => Ok(true),
            Err(BrokerError::NotFound { .. }) => Ok(false),
            Err(other) => Err(other),
        }
    }

    /// Declares the queue and, with `dead_letter`, its `.dlq` companion.
    /// Declaring the same queue with the same arguments again changes
    /// nothing; with other arguments the broker refuses (`Conflict`).
    pub async fn declare_queue(&self, spec: &QueueSpec) -> Result<DeclareOutcome, BrokerError> {
        let existed = self.queue_counts(spec.name.as_str()).await?.is_some();
        self.ensure_queue(spec).await?;
        Ok(if existed {
            DeclareOutcome::AlreadyExisted
        } else {
            DeclareOutcome::Created
        })
    }

    /// `declare_queue` without asking first whether the queue exists. That
    /// question is a passive declare, which the broker answers for a missing
    /// queue by closing the channel, and lapin logs every such close at
    /// ERROR: callers that need no `DeclareOutcome` (start-up) use this.
    pub async fn ensure_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        let declared = spec.clone();
        let doing = format!("declaring queue `{}`", spec.name);
        self.on_fresh_channel(doing, |ch| async move {
            let spec = declared;
            ch.queue_declare(
                spec.name.as_str().into(),
                QueueDeclareOptions {
                    durable: spec.durable,
                    ..QueueDeclareOptions::default()
                },
                spec.arguments(),
            )
            .await?;
            Ok(())
        })
        .await?;
        if spec.dead_letter {
            self.declare_dead_letter_queue(&spec.name.dead_letter_queue(), spec.queue_type)
                .await?;
        }
        Ok(())
    }

    /// Declares `<queue>.dlq` as `/createQueue` does, for consumers on
    /// queues that were created without `deadLetter`. `queue_type` is the
    /// main queue's; a `.dlq` that exists with the other type is used as
    /// it is.
    pub async fn declare_dead_letter_queue(
        &self,
        name: &str,
        queue_type: QueueType,
    ) -> Result<(), BrokerError> {
        self.declare_companion(name, queue_type, companion_arguments)
            .await
            .map(|_| ())
    }

    /// Declares a delay queue that hands every message back to `main` after
    /// `delay_ms`. It deletes itself once unused for a while, so delays that
    /// are no longer configured do not pile up as queues. `queue_type` is
    /// the main queue's; one that exists with the other type is used as it
    /// is. Returns its name and the type it has.
    pub async fn declare_retry_queue(
        &self,
        main: &QueueName,
        delay_ms: u64,
        queue_type: QueueType,
    ) -> Result<(String, QueueType), BrokerError> {
        let name = main.retry_queue(delay_ms);
        let declared = self
            .declare_companion(&name, queue_type, |t| {
                retry_queue_arguments(main, delay_ms, t)
            })
            .await?;
        Ok((name, declared))
    }

    /// Declares a companion with `queue_type`'s arguments; when the broker
    /// says it exists with other ones, once more with the other type's (a
    /// companion another replica declared while it took the default).
    async fn declare_companion(
        &self,
        name: &str,
        queue_type: QueueType,
        arguments: impl Fn(QueueType) -> FieldTable,
    ) -> Result<QueueType, BrokerError> {
        match self.declare_durable(name, arguments(queue_type)).await {
            Err(conflict @ BrokerError::Conflict { .. }) => {
                let other = queue_type.other();
                tracing::debug!(queue = name, reason = %Chain(&conflict), wanted = queue_type.as_str(), "companion exists with other arguments; declaring it as {}", other.as_str());
                self.declare_durable(name, arguments(other))
                    .await
                    .map(|()| other)
                    .map_err(|_| conflict)
            }
            other => other.map(|()| queue_type),
        }
    }

    async fn declare_durable(&self, name: &str, args: FieldTable) -> Result<(), BrokerError> {
        let doing = format!("declaring queue `{name}`");
        let name = name.to_owned();
        self.on_fresh_channel(doing, |ch| async move {
            ch.queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await
            .map(|_| ())
        })
        .await
    }

    /// Deletes the queue and its dead-letter companion. With `if_empty`,
    /// refuses (`Conflict`) while either still holds messages.
    pub async fn delete_queue(&self, name: &QueueName, if_empty: bool) -> Result<(), BrokerError> {
        let doing = format!("deleting queue `{name}`");
        let Some(main) = self.queue_counts(name.as_str()).await? else {
            return Err(BrokerError::not_found(
                doing,
                format!("no queue named `{name}`"),
            ));
        };
        let dlq = name.dead_letter_queue();
        let dlq_counts = self.queue_counts(&dlq).await?;
        if if_empty {
            let dead = dlq_counts.map_or(0, |c| c.messages);
            if main.messages > 0 || dead > 0 {
                return Err(BrokerError::conflict(
                    doing,
                    format!(
                        "queue `{name}` still holds {} message(s) and {dead} dead letter(s)",
                        main.messages
                    ),
                ));
            }
        }
        let main_name = name.as_str().to_owned();
        let has_dlq = dlq_counts.is_some();
        self.on_fresh_channel(doing, |ch| async move {
            ch.queue_delete(main_name.as_str().into(), QueueDeleteOptions::default())
                .await?;
            if has_dlq {
                ch.queue_delete(dlq.as_str().into(), QueueDeleteOptions::default())
                    .await?;
            }
            Ok(())
        })
        .await
    }

    /// Declares the exchange; declaring one that is already there with the same kind and durability
    /// changes nothing.
    pub async fn declare_exchange(
        &self,
        spec: &ExchangeSpec,
    ) -> Result<DeclareOutcome, BrokerError> {
        let existed = self.exchange_exists(spec.name.as_str()).await?;
        let doing = format!("declaring exchange `{}`", spec.name);
        let spec = spec.clone();
        self.on_fresh_channel(doing, |ch| async move {
            let kind = match spec.kind {
                ExchangeKind::Direct => lapin::ExchangeKind::Direct,
                ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
                ExchangeKind::Topic => lapin::ExchangeKind::Topic,
                ExchangeKind::Headers => lapin::ExchangeKind::Headers,
            };
            ch.exchange_declare(
                spec.name.as_str().into(),
                kind,
                ExchangeDeclareOptions {
                    durable: spec.durable,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
        })
        .await?;
        Ok(if existed {
            DeclareOutcome::AlreadyExisted
        } else {
            DeclareOutcome::Created
        })
    }

    /// Binds `queue` to `exchange` with `routing_key`; `NotFound` when either is missing.
    pub async fn bind_queue(
        &self,
        queue: &QueueName,
        exchange: &ExchangeName,
        routing_key: &RoutingKey,
    ) -> Result<(), BrokerError> {
        let doing = format!("binding queue `{queue}` to exchange `{exchange}`");
        if self.queue_counts(queue.as_str()).await?.is_none() {
            return Err(BrokerError::not_found(
                doing,
                format!("no queue named `{queue}`"),
            ));
        }
        if !self.exchange_exists(exchange.as_str()).await? {
            return Err(BrokerError::not_found(
                doing,
                format!("no exchange named `{exchange}`"),
            ));
        }
        let (queue, exchange, key) = (
            queue.as_str().to_owned(),
            exchange.as_str().to_owned(),
            routing_key.as_str().to_owned(),
        );
        self.on_fresh_channel(doing, |ch| async move {
            ch.queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
        })
        .await
    }
}

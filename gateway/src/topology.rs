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

use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Channel;

use crate::{Broker, BrokerError, ExchangeName, QueueName, RoutingKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Classic,
    Quorum,
}

#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: QueueName,
    pub durable: bool,
    pub queue_type: QueueType,
    pub message_ttl_ms: Option<u32>,
    pub max_length: Option<u32>,
    pub dead_letter: bool,
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

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclareOutcome {
    Created,
    /// It was already there with the same arguments: nothing changed.
    AlreadyExisted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

#[derive(Debug, Clone)]
pub struct ExchangeSpec {
    pub name: ExchangeName,
    pub kind: ExchangeKind,
    pub durable: bool,
}

/// Message and consumer counts as the broker sees them right now.
#[derive(Debug, Clone, Copy)]
pub struct QueueCounts {
    pub messages: u32,
    pub consumers: u32,
}

#[derive(Clone)]
pub struct Topology {
    broker: Broker,
}

impl Topology {
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }

    /// Runs `op` on a fresh channel and closes it afterwards. When the
    /// broker refuses, it has closed the channel already.
    async fn on_fresh_channel<T, F, Fut>(&self, op: F) -> Result<T, BrokerError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, lapin::Error>>,
    {
        let channel = self.broker.channel().await?;
        let result = op(channel.clone()).await;
        if channel.status().connected() {
            let _ = channel.close(200, "done").await;
        }
        result.map_err(BrokerError::from)
    }

    /// `None` when there is no such queue.
    pub async fn queue_counts(&self, name: &str) -> Result<Option<QueueCounts>, BrokerError> {
        let name = name.to_owned();
        let passive = self
            .on_fresh_channel(|ch| async move {
                ch.queue_declare(
                    &name,
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
            Err(BrokerError::NotFound(_)) => Ok(None),
            Err(other) => Err(other),
        }
    }

    pub async fn exchange_exists(&self, name: &str) -> Result<bool, BrokerError> {
        let name = name.to_owned();
        let passive = self
            .on_fresh_channel(|ch| async move {
                ch.exchange_declare(
                    &name,
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
            Err(BrokerError::NotFound(_)) => Ok(false),
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
        let spec = spec.clone();
        self.on_fresh_channel(|ch| async move {
            ch.queue_declare(
                spec.name.as_str(),
                QueueDeclareOptions {
                    durable: spec.durable,
                    ..QueueDeclareOptions::default()
                },
                spec.arguments(),
            )
            .await?;
            if spec.dead_letter {
                declare_dead_letter_on(&ch, &spec.name.dead_letter_queue()).await?;
            }
            Ok(())
        })
        .await
    }

    /// Declares `<queue>.dlq` as `/createQueue` does, for consumers on
    /// queues that were created without `deadLetter`.
    pub async fn declare_dead_letter_queue(&self, name: &str) -> Result<(), BrokerError> {
        let name = name.to_owned();
        self.on_fresh_channel(|ch| async move { declare_dead_letter_on(&ch, &name).await })
            .await
    }

    /// Declares a delay queue that hands every message back to `main` after
    /// `delay_ms`. It deletes itself once unused for a while, so delays that
    /// are no longer configured do not pile up as queues.
    pub async fn declare_retry_queue(
        &self,
        main: &QueueName,
        delay_ms: u64,
    ) -> Result<String, BrokerError> {
        let name = main.retry_queue(delay_ms);
        let mut args = FieldTable::default();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(delay_ms as i64),
        );
        args.insert("x-dead-letter-exchange".into(), long_string(""));
        args.insert(
            "x-dead-letter-routing-key".into(),
            long_string(main.as_str()),
        );
        // Messages leave after `delay_ms`; the margin keeps the queue alive
        // well past the last one even on a slow broker.
        let expires = delay_ms.saturating_mul(2).saturating_add(600_000);
        args.insert("x-expires".into(), AMQPValue::LongLongInt(expires as i64));
        let declared = name.clone();
        self.on_fresh_channel(|ch| async move {
            ch.queue_declare(
                &declared,
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await
            .map(|_| ())
        })
        .await?;
        Ok(name)
    }

    /// Deletes the queue and its dead-letter companion. With `if_empty`,
    /// refuses (`Conflict`) while either still holds messages.
    pub async fn delete_queue(&self, name: &QueueName, if_empty: bool) -> Result<(), BrokerError> {
        let Some(main) = self.queue_counts(name.as_str()).await? else {
            return Err(BrokerError::NotFound(format!("no queue named `{name}`")));
        };
        let dlq = name.dead_letter_queue();
        let dlq_counts = self.queue_counts(&dlq).await?;
        if if_empty {
            let dead = dlq_counts.map_or(0, |c| c.messages);
            if main.messages > 0 || dead > 0 {
                return Err(BrokerError::Conflict(format!(
                    "queue `{name}` still holds {} message(s) and {dead} dead letter(s)",
                    main.messages
                )));
            }
        }
        let main_name = name.as_str().to_owned();
        let has_dlq = dlq_counts.is_some();
        self.on_fresh_channel(|ch| async move {
            ch.queue_delete(&main_name, QueueDeleteOptions::default())
                .await?;
            if has_dlq {
                ch.queue_delete(&dlq, QueueDeleteOptions::default()).await?;
            }
            Ok(())
        })
        .await
    }

    pub async fn declare_exchange(
        &self,
        spec: &ExchangeSpec,
    ) -> Result<DeclareOutcome, BrokerError> {
        let existed = self.exchange_exists(spec.name.as_str()).await?;
        let spec = spec.clone();
        self.on_fresh_channel(|ch| async move {
            let kind = match spec.kind {
                ExchangeKind::Direct => lapin::ExchangeKind::Direct,
                ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
                ExchangeKind::Topic => lapin::ExchangeKind::Topic,
                ExchangeKind::Headers => lapin::ExchangeKind::Headers,
            };
            ch.exchange_declare(
                spec.name.as_str(),
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

    pub async fn bind_queue(
        &self,
        queue: &QueueName,
        exchange: &ExchangeName,
        routing_key: &RoutingKey,
    ) -> Result<(), BrokerError> {
        if self.queue_counts(queue.as_str()).await?.is_none() {
            return Err(BrokerError::NotFound(format!("no queue named `{queue}`")));
        }
        if !self.exchange_exists(exchange.as_str()).await? {
            return Err(BrokerError::NotFound(format!(
                "no exchange named `{exchange}`"
            )));
        }
        let (queue, exchange, key) = (
            queue.as_str().to_owned(),
            exchange.as_str().to_owned(),
            routing_key.as_str().to_owned(),
        );
        self.on_fresh_channel(|ch| async move {
            ch.queue_bind(
                &queue,
                &exchange,
                &key,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
        })
        .await
    }
}

async fn declare_dead_letter_on(channel: &Channel, name: &str) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            name,
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|_| ())
}

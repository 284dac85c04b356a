//! Reading and replaying `<queue>.dlq`.
//!
//! Peeking takes messages with `basic.get` without acking and then closes
//! the channel, which puts every one of them back where it was. Replaying
//! publishes a fresh copy to the main queue (attempts reset) and hands the
//! dead letter with the copy's fate to `consumer::settle_replayed`, which
//! acks it only once the copy is confirmed: none lost, none doubled. No ack
//! goes out from here.

use std::sync::Arc;

use lapin::options::BasicGetOptions;
use lapin::types::FieldTable;
use lapin::BasicProperties;

use crate::consumer::{kept_properties, settle_replayed, Replayed};
use crate::headers;
use crate::{Broker, BrokerError, Chain, OutgoingMessage, Publisher, QueueName};

/// A dead letter as the API shows it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The message's id, if it had one.
    pub message_id: Option<String>,
    /// Attempts made before it was dead-lettered.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was dead-lettered (RFC 3339).
    pub dead_lettered_at: Option<String>,
    /// The message's `content_type` property, if it had one.
    pub content_type: Option<String>,
    /// The message body as published.
    pub payload: Vec<u8>,
}

/// Peeks at and replays the dead letters of a queue (`<queue>.dlq`).
pub struct DeadLetters {
    broker: Broker,
    publisher: Arc<Publisher>,
}

impl DeadLetters {
    /// Reads through `broker`'s connections; replays publish through `publisher`.
    pub fn new(broker: Broker, publisher: Arc<Publisher>) -> Self {
        Self { broker, publisher }
    }

    /// Up to `limit` dead letters of `queue`, oldest first; nothing moves.
    pub async fn peek(
        &self,
        queue: &QueueName,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        let dlq = queue.dead_letter_queue();
        let doing = format!("reading dead letters from `{dlq}`");
        let channel = self
            .broker
            .channel()
            .await
            .map_err(|e| e.while_doing(doing.clone()))?;
        let mut letters = Vec::new();
        let mut failure = None;
        while letters.len() < limit {
            match channel
                .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false })
                .await
            {
                Ok(Some(message)) => letters.push(dead_letter_of(
                    &message.delivery.properties,
                    message.delivery.data.clone(),
                )),
                Ok(None) => break,
                Err(err) => {
                    failure = Some(BrokerError::amqp(doing.clone(), err));
                    break;
                }
            }
        }
        // Closing the channel returns every message we took, unacked.
        if channel.status().connected() {
            let _ = channel.close(200, "peek done".into()).await;
        }
        match failure {
            Some(BrokerError::NotFound { source, .. }) => Err(BrokerError::NotFound {
                doing: doing.into(),
                reason: format!("`{queue}` has no dead-letter queue `{dlq}`"),
                source,
            }),
            Some(err) => Err(err),
            None => Ok(letters),
        }
    }

    /// Moves up to `limit` dead letters back to `queue`; returns how many.
    pub async fn replay(&self, queue: &QueueName, limit: usize) -> Result<usize, BrokerError> {
        let dlq = queue.dead_letter_queue();
        let doing = format!("replaying dead letters from `{dlq}` into `{queue}`");
        let channel = self
            .broker
            .channel()
            .await
            .map_err(|e| e.while_doing(doing.clone()))?;
        let mut replayed = 0;
        let result = async {
            while replayed < limit {
                let got = channel
                    .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false })
                    .await
                    .map_err(|err| match BrokerError::amqp(doing.clone(), err) {
                        BrokerError::NotFound { doing, source, .. } => BrokerError::NotFound {
                            doing,
                            reason: format!("`{queue}` has no dead-letter queue `{dlq}`"),
                            source,
                        },
                        other => other,
                    })?;
                let Some(message) = got else {
                    break;
                };
                let delivery = message.delivery;
                let copy = self
                    .publisher
                    .publish(OutgoingMessage {
                        exchange: "",
                        routing_key: queue.as_str(),
                        payload: &delivery.data,
                        properties: fresh_properties(&delivery.properties),
                        mandatory: true,
                    })
                    .await;
                match settle_replayed(&delivery, copy).await? {
                    Replayed::Moved => replayed += 1,
                    Replayed::Unroutable => {
                        return Err(BrokerError::not_found(
                            doing.clone(),
                            format!("no queue named `{queue}` to replay into"),
                        ));
                    }
                }
            }
            Ok(())
        }
        .await;
        if channel.status().connected() {
            let _ = channel.close(200, "replay done".into()).await;
        }
        match result {
            Err(err) if replayed == 0 => Err(err),
            Err(err) => {
                tracing::warn!(error = %Chain(&err), replayed, "replay stopped early");
                Ok(replayed)
            }
            Ok(()) => Ok(replayed),
        }
    }
}

fn dead_letter_of(properties: &BasicProperties, payload: Vec<u8>) -> DeadLetter {
    DeadLetter {
        message_id: properties.message_id().as_ref().map(|s| s.to_string()),
        attempts: crate::consumer::attempt_of(properties),
        last_error: headers::text(properties, headers::LAST_ERROR),
        dead_lettered_at: headers::text(properties, headers::DEAD_LETTERED_AT),
        content_type: properties.content_type().as_ref().map(|s| s.to_string()),
        payload,
    }
}

/// The dead letter's properties without the gateway's bookkeeping, so the
/// replayed message starts again at attempt 1, and, as every copy, without
/// a `user_id` (the gateway publishes it as itself) or an `expiration`. It
/// carries the replay's time instead, so its next attempt is recorded as
/// the replay's.
fn fresh_properties(properties: &BasicProperties) -> BasicProperties {
    let mut table = FieldTable::default();
    table.insert(
        headers::REPLAYED_AT.into(),
        lapin::types::AMQPValue::LongString(chrono::Utc::now().to_rfc3339().into()),
    );
    if let Some(old) = properties.headers() {
        for (name, value) in old.inner() {
            if !headers::is_reserved(name.as_str()) && name.as_str() != "x-death" {
                table.insert(name.clone(), value.clone());
            }
        }
    }
    kept_properties(properties, None, table)
}

//! Peeking at a main queue's first messages for a rules dry run
//! (`/testConsumerRules`): taken with `basic.get` without acking, then put
//! back by closing the channel, as `dead_letters` peeks. A classic queue
//! puts each back at its original position, so the queue keeps its order,
//! and none is lost or doubled. While held they are invisible to the
//! queue's consumers, which take the next ones meanwhile. The route peeks
//! classic queues only: a quorum queue counts each message handed back as
//! a delivery, and an ordered consumer would overtake the held ones.

use lapin::options::BasicGetOptions;

use crate::consumer::Envelope;
use crate::{Broker, BrokerError, QueueName};

/// A message as it sits in its queue, with what rules read of it.
#[derive(Debug, Clone)]
pub struct Peeked {
    /// The message's id, if it had one.
    pub message_id: Option<String>,
    /// Its `content_type` property.
    pub content_type: Option<String>,
    /// Its body as published.
    pub payload: Vec<u8>,
    /// Its exchange, routing key and headers.
    pub envelope: Envelope,
}

/// Up to `limit` messages at the head of `queue`, oldest first; nothing moves.
pub async fn peek_queue(
    broker: &Broker,
    queue: &QueueName,
    limit: usize,
) -> Result<Vec<Peeked>, BrokerError> {
    let doing = format!("peeking at `{queue}`");
    let channel = broker
        .channel()
        .await
        .map_err(|e| e.while_doing(doing.clone()))?;
    let mut taken = Vec::new();
    let mut failure = None;
    while taken.len() < limit {
        match channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
        {
            Ok(Some(message)) => {
                let delivery = &message.delivery;
                taken.push(Peeked {
                    message_id: delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|id| id.to_string()),
                    content_type: delivery
                        .properties
                        .content_type()
                        .as_ref()
                        .map(|ct| ct.to_string()),
                    payload: delivery.data.clone(),
                    envelope: Envelope::of(delivery),
                })
            }
            Ok(None) => break,
            Err(err) => {
                failure = Some(BrokerError::amqp(doing.clone(), err));
                break;
            }
        }
    }
    // Closing the channel returns every message taken, unacked.
    if channel.status().connected() {
        let _ = channel.close(200, "peek done".into()).await;
    }
    match failure {
        Some(err) => Err(err),
        None => Ok(taken),
    }
}

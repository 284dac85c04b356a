//! Publishing with publisher confirms on one shared channel.
//!
//! Many requests publish concurrently on the same confirm-mode channel; each
//! awaits its own confirm, so they never queue behind each other. The lock
//! only guards swapping in a fresh channel after the old one broke.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::{BasicProperties, Channel};
use tokio::sync::Mutex;

use crate::{Broker, BrokerError};

pub struct OutgoingMessage<'a> {
    /// `""` is the default exchange, which routes by queue name.
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub payload: &'a [u8],
    pub properties: BasicProperties,
    /// Ask the broker to hand the message back when no queue would take it.
    pub mandatory: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// The broker confirmed it: the message is its responsibility now.
    Confirmed,
    /// A mandatory publish that no queue would receive; nothing was stored.
    Unroutable,
}

pub struct Publisher {
    broker: Broker,
    channel: Mutex<Option<Channel>>,
}

impl Publisher {
    pub fn new(broker: Broker) -> Self {
        Self {
            broker,
            channel: Mutex::new(None),
        }
    }

    async fn confirm_channel(&self) -> Result<Channel, BrokerError> {
        let mut current = self.channel.lock().await;
        if let Some(channel) = current.as_ref() {
            if channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        let channel = self.broker.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        *current = Some(channel.clone());
        Ok(channel)
    }

    /// Publishes and waits for the broker's confirm. `Ok(Confirmed)` is the
    /// only answer after which the caller may consider the message safe.
    pub async fn publish(
        &self,
        message: OutgoingMessage<'_>,
    ) -> Result<PublishOutcome, BrokerError> {
        let channel = self.confirm_channel().await?;
        let confirm = channel
            .basic_publish(
                message.exchange,
                message.routing_key,
                BasicPublishOptions {
                    mandatory: message.mandatory,
                    ..BasicPublishOptions::default()
                },
                message.payload,
                message.properties,
            )
            .await?;
        match confirm.await? {
            Confirmation::Ack(None) => Ok(PublishOutcome::Confirmed),
            Confirmation::Ack(Some(_returned)) => Ok(PublishOutcome::Unroutable),
            Confirmation::Nack(_) => Err(BrokerError::Nacked),
            Confirmation::NotRequested => Err(BrokerError::Unavailable(
                "the publish channel is not in confirm mode".into(),
            )),
        }
    }
}

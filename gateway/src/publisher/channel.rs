//! One publish channel in confirm mode and the publishes in flight on it,
//! with each `basic.return` matched to the publish it belongs to.
//!
//! `basic.return` carries no delivery tag, and lapin hands a returned
//! message to whichever confirm completes next. RabbitMQ sends a message's
//! return before its ack, and lapin's `on_return` (our patch, see
//! vendor/lapin/PATCH.md) calls us with it in frame order, before that ack
//! is read. So a return marks its publish here, found by what the return
//! carries (exchange, routing key, message id), and the publish reads the
//! mark once its own confirm is in: marked means unroutable. For that to
//! name one publish, no two publishes with the same key are in flight on a
//! channel at once (`claim`); a second one waits for another channel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use lapin::message::BasicReturnMessage;
use lapin::options::ConfirmSelectOptions;
use lapin::{BasicProperties, Channel};

use crate::error::AmqpContext;
use crate::{Broker, BrokerError};

/// What a returned message and its publish have in common.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ReturnKey {
    exchange: String,
    routing_key: String,
    message_id: Option<String>,
}

impl ReturnKey {
    pub(crate) fn of_publish(
        exchange: &str,
        routing_key: &str,
        properties: &BasicProperties,
    ) -> Self {
        Self {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            message_id: properties.message_id().as_ref().map(|id| id.to_string()),
        }
    }

    /// Where the publish went, for an error's context: `publishing_to`.
    pub(crate) fn destination(&self) -> (&str, &str) {
        (&self.exchange, &self.routing_key)
    }

    fn of_return(message: &BasicReturnMessage) -> Self {
        Self::of_publish(
            message.delivery.exchange.as_str(),
            message.delivery.routing_key.as_str(),
            &message.properties,
        )
    }
}

/// Publishes in flight, each with whether the broker returned it.
#[derive(Default)]
struct InFlight(HashMap<ReturnKey, bool>);

impl InFlight {
    fn claim(&mut self, key: &ReturnKey) -> bool {
        if self.0.contains_key(key) {
            return false;
        }
        self.0.insert(key.clone(), false);
        true
    }

    /// `false` when no publish in flight has this key.
    fn mark_returned(&mut self, key: &ReturnKey) -> bool {
        match self.0.get_mut(key) {
            Some(returned) => {
                *returned = true;
                true
            }
            None => false,
        }
    }

    fn release(&mut self, key: &ReturnKey) -> bool {
        self.0.remove(key).unwrap_or(false)
    }
}

pub(crate) struct PublishChannel {
    channel: Channel,
    in_flight: Arc<Mutex<InFlight>>,
}

fn lock(in_flight: &Mutex<InFlight>) -> MutexGuard<'_, InFlight> {
    // Every update is one map operation: a panic elsewhere cannot leave it
    // half done.
    in_flight
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PublishChannel {
    /// A new channel on the publish connection, listening for returns,
    /// in confirm mode.
    pub(crate) async fn open(broker: &Broker) -> Result<Self, BrokerError> {
        let channel = broker.publish_channel().await?;
        let in_flight = Arc::new(Mutex::new(InFlight::default()));
        let marks = in_flight.clone();
        channel.on_return(move |message| {
            let key = ReturnKey::of_return(message);
            // Every publish keeps its key until its confirm is in, and the
            // return comes first: a stray return cannot happen.
            if !lock(&marks).mark_returned(&key) {
                tracing::error!(
                    exchange = %key.exchange,
                    routing_key = %key.routing_key,
                    message_id = ?key.message_id,
                    "the broker returned a message no publish in flight matches"
                );
            }
        });
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .doing(|| "putting a publish channel in confirm mode")?;
        Ok(Self { channel, in_flight })
    }

    pub(crate) fn channel(&self) -> &Channel {
        &self.channel
    }

    pub(crate) fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Takes `key` for one publish; `false` while another publish with the
    /// same key is in flight here.
    pub(crate) fn claim(&self, key: &ReturnKey) -> bool {
        lock(&self.in_flight).claim(key)
    }

    /// Gives `key` back once its publish's confirm is in (or the channel
    /// is gone); says whether the broker returned the message.
    pub(crate) fn release(&self, key: &ReturnKey) -> bool {
        lock(&self.in_flight).release(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_the_destination_and_the_message_id() {
        let with_id = BasicProperties::default().with_message_id("m-1".into());
        let a = ReturnKey::of_publish("", "orders", &with_id);
        assert_eq!(a, ReturnKey::of_publish("", "orders", &with_id));
        assert_ne!(a, ReturnKey::of_publish("", "other", &with_id));
        assert_ne!(a, ReturnKey::of_publish("x", "orders", &with_id));
        assert_ne!(
            a,
            ReturnKey::of_publish("", "orders", &BasicProperties::default())
        );
    }

    #[test]
    fn in_flight_keys_are_claimed_once_and_marked_by_their_own_return() {
        let mut in_flight = InFlight::default();
        let id = |id: &str| BasicProperties::default().with_message_id(id.into());
        let a = ReturnKey::of_publish("", "q", &id("a"));
        let b = ReturnKey::of_publish("", "q", &id("b"));
        assert!(in_flight.claim(&a));
        assert!(in_flight.claim(&b));
        assert!(!in_flight.claim(&a), "one publish per key at a time");
        assert!(in_flight.mark_returned(&b));
        assert!(!in_flight.release(&a), "a was not returned");
        assert!(in_flight.release(&b), "b was");
        assert!(
            !in_flight.mark_returned(&b),
            "a released key is no longer in flight"
        );
        assert!(in_flight.claim(&a), "free again once released");
    }
}

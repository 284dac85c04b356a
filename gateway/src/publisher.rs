//! Publishing with publisher confirms, on a small pool of channels.
//!
//! Each channel carries at most one publish at a time. lapin (2.5) hands a
//! `basic.return` to whichever confirm on the channel completes next, so
//! with several mandatory publishes in flight on one channel an unroutable
//! message can be reported confirmed and a stored one unroutable. One
//! publish per channel makes the answer belong to its publish; a pool keeps
//! concurrent publishes from queueing behind each other. A channel the
//! broker closes (say, ACCESS_REFUSED) takes only its own publish with it.
//!
//! The pool lives on the gateway's publish connection. Two things never
//! reach it: a message whose properties would not fit in one frame (the
//! broker would close the connection, `FrameTooLarge`), and any message
//! while the broker blocks the connection (`connection.blocked`: a memory or
//! disk alarm), which is answered `Blocked` at once instead of hanging until
//! the alarm clears.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::{BasicProperties, Channel};
use tokio::sync::Mutex;

use crate::{Broker, BrokerError};

/// Channels in the pool, opened on first use.
const POOL_SIZE: usize = 64;
/// A confirm that does not come (a broker in trouble) ends in an answer
/// rather than a hung request.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a publish waiting for its confirm looks whether the broker
/// has blocked the connection meanwhile.
const BLOCKED_CHECK: Duration = Duration::from_millis(50);

#[derive(Clone)]
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
    slots: Vec<Mutex<Option<Channel>>>,
    next: AtomicUsize,
}

impl Publisher {
    pub fn new(broker: Broker) -> Self {
        Self {
            broker,
            slots: (0..POOL_SIZE).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The frame size copies must fit (see `crate::message_size`); `None` while
    /// the publish connection is down.
    pub fn frame_max(&self) -> Option<u32> {
        self.broker.publish_frame_max()
    }

    /// Publishes and waits for the broker's confirm. `Ok(Confirmed)` is the
    /// only answer after which the caller may consider the message safe.
    pub async fn publish(
        &self,
        message: OutgoingMessage<'_>,
    ) -> Result<PublishOutcome, BrokerError> {
        if self.broker.publishing_blocked() {
            return Err(BrokerError::Blocked);
        }
        if let Some(frame_max) = self.broker.publish_frame_max() {
            crate::message_size::check_fits(&message.properties, frame_max)?;
        }
        // Any free slot; if none is free, wait for the next one in turn.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut slot = None;
        for i in 0..POOL_SIZE {
            if let Ok(guard) = self.slots[(start + i) % POOL_SIZE].try_lock() {
                slot = Some(guard);
                break;
            }
        }
        let mut slot = match slot {
            Some(guard) => guard,
            None => self.slots[start % POOL_SIZE].lock().await,
        };
        let channel = match slot.as_ref() {
            Some(channel) if channel.status().connected() => channel.clone(),
            _ => {
                // Opening a channel waits for the broker too, which a
                // blocked connection does not reach.
                let channel = self
                    .unless_blocked(async {
                        let channel = self.broker.publish_channel().await?;
                        channel
                            .confirm_select(ConfirmSelectOptions::default())
                            .await?;
                        Ok(channel)
                    })
                    .await?;
                *slot = Some(channel.clone());
                channel
            }
        };
        let confirmed = self
            .unless_blocked(async {
                Ok(channel
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
                    .await?
                    .await?)
            })
            .await;
        let confirmation = match confirmed {
            Ok(confirmation) => confirmation,
            Err(err) => {
                // A late confirm would land on the next publish: drop the
                // channel rather than reuse it. Closing waits for the
                // broker, which a blocked connection does not reach: not here.
                // A message abandoned this way may still be stored once the
                // block lifts; the caller was told it is not (at least once).
                *slot = None;
                tokio::spawn(async move {
                    let _ = channel.close(200, "publish abandoned").await;
                });
                return Err(err);
            }
        };
        match confirmation {
            Confirmation::Ack(None) => Ok(PublishOutcome::Confirmed),
            Confirmation::Ack(Some(_returned)) => Ok(PublishOutcome::Unroutable),
            Confirmation::Nack(_) => Err(BrokerError::Nacked),
            Confirmation::NotRequested => Err(BrokerError::Unavailable(
                "the publish channel is not in confirm mode".into(),
            )),
        }
    }

    /// Runs a step that waits for the broker, giving up when the broker
    /// blocks the publish connection meanwhile, or after `CONFIRM_TIMEOUT`.
    async fn unless_blocked<T>(
        &self,
        step: impl std::future::Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        let blocked = async {
            let mut check = tokio::time::interval(BLOCKED_CHECK);
            while !self.broker.publishing_blocked() {
                check.tick().await;
            }
        };
        tokio::select! {
            result = tokio::time::timeout(CONFIRM_TIMEOUT, step) => result.unwrap_or_else(|_| {
                Err(BrokerError::Unavailable(
                    "the broker did not answer in time".into(),
                ))
            }),
            () = blocked => Err(BrokerError::Blocked),
        }
    }
}

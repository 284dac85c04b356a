//! Publishing with publisher confirms, many publishes in flight on a few
//! shared channels; a batch is published in order on one channel, every
//! message sent before the first confirm is awaited.
//!
//! A publish is answered only from its own confirm, and as unroutable only
//! for its own `basic.return`: `channel` matches each return to its publish
//! (lapin alone would hand it to whichever confirm completes next). A
//! publish runs in a task of its own up to its confirm, even when its
//! caller stops waiting (a client that went away, a blocked connection), so
//! the key its return would be matched by stays taken until then. A channel
//! the broker closes (say, ACCESS_REFUSED) fails the publishes in flight on
//! it, which are answered `Unavailable`; the next publish opens a new one.
//!
//! A single publish is a batch of one. A batch keeps to the channel its
//! first message claimed, so the broker enqueues its messages in the order
//! given (AMQP orders what one channel carries); a message whose key is
//! taken on that channel (the same message id to the same place, earlier
//! in the batch or by another publish) waits for the confirms before it.
//!
//! The channels live on the gateway's publish connection. Two things never
//! reach them: a message whose properties would not fit in one frame (the
//! broker would close the connection, `FrameTooLarge`), and any message
//! while the broker blocks the connection (`connection.blocked`: a memory or
//! disk alarm), which is answered `Blocked` at once instead of hanging until
//! the alarm clears.

mod channel;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Confirmation, PublisherConfirm};
use tokio::sync::{Mutex, Notify};

use crate::error::AmqpContext;
use crate::{Broker, BrokerError, Lost};
use channel::{PublishChannel, ReturnKey};

/// Channels publishes are spread over, opened on first use. Each carries
/// any number of publishes at once; more than one spreads the work over
/// the broker's channel processes.
const CHANNELS: usize = 4;
/// A confirm that does not come (a broker in trouble) ends in an answer
/// rather than a hung request. A batch has this long for all of it.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a publish waiting for its confirm looks whether the broker
/// has blocked the connection meanwhile.
const BLOCKED_CHECK: Duration = Duration::from_millis(50);

/// A message to publish, borrowed from whoever holds it.
#[derive(Clone)]
pub struct OutgoingMessage<'a> {
    /// `""` is the default exchange, which routes by queue name.
    pub exchange: &'a str,
    /// How the exchange routes it; for the default exchange, the queue's name.
    pub routing_key: &'a str,
    /// The message body.
    pub payload: &'a [u8],
    /// Headers, content type, message id and the other AMQP properties.
    pub properties: BasicProperties,
    /// Ask the broker to hand the message back when no queue would take it.
    pub mandatory: bool,
}

/// A message to publish, owned: what a batch hands over, since its publish
/// task may outlive the caller (see the module comment).
pub struct OwnedMessage {
    /// `""` is the default exchange, which routes by queue name.
    pub exchange: String,
    /// How the exchange routes it; for the default exchange, the queue's name.
    pub routing_key: String,
    /// The message body.
    pub payload: Vec<u8>,
    /// Headers, content type, message id and the other AMQP properties.
    pub properties: BasicProperties,
    /// Ask the broker to hand the message back when no queue would take it.
    pub mandatory: bool,
}

impl From<OutgoingMessage<'_>> for OwnedMessage {
    fn from(message: OutgoingMessage<'_>) -> Self {
        Self {
            exchange: message.exchange.to_owned(),
            routing_key: message.routing_key.to_owned(),
            payload: message.payload.to_vec(),
            properties: message.properties,
            mandatory: message.mandatory,
        }
    }
}

/// What became of a publish the broker answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// The broker confirmed it: the message is its responsibility now.
    Confirmed,
    /// A mandatory publish that no queue would receive; nothing was stored.
    Unroutable,
}

/// Publishes with confirms over a few shared channels of the publish connection: each publish is
/// answered from its own confirm or return (see the module comment).
pub struct Publisher {
    channels: Arc<Channels>,
}

struct Channels {
    broker: Broker,
    slots: Vec<Mutex<Option<Arc<PublishChannel>>>>,
    next: AtomicUsize,
    /// Fired whenever a publish gives its key back, for a publish waiting
    /// because its key was taken on every channel.
    released: Notify,
}

/// One answer per message of a batch, in its order.
pub type BatchAnswers = Vec<Result<PublishOutcome, BrokerError>>;

impl Publisher {
    /// A publisher on `broker`'s publish connection; channels open on first use.
    pub fn new(broker: Broker) -> Self {
        Self {
            channels: Arc::new(Channels {
                broker,
                slots: (0..CHANNELS).map(|_| Mutex::new(None)).collect(),
                next: AtomicUsize::new(0),
                released: Notify::new(),
            }),
        }
    }

    /// The frame size copies must fit (see `crate::message_size`); `None` while
    /// the publish connection is down.
    pub fn frame_max(&self) -> Option<u32> {
        self.channels.broker.publish_frame_max()
    }

    /// Publishes and waits for the broker's confirm. `Ok(Confirmed)` is the
    /// only answer after which the caller may consider the message safe.
    pub async fn publish(
        &self,
        message: OutgoingMessage<'_>,
    ) -> Result<PublishOutcome, BrokerError> {
        self.publish_batch(vec![message.into()])
            .await
            .pop()
            .unwrap_or_else(|| Err(BrokerError::unavailable("publishing", Lost::NoAnswer)))
    }

    /// Publishes `messages` in this order on one channel, all of them sent
    /// before the first confirm is awaited, and answers each from its own
    /// confirm or return: one answer per message, in order. A message that
    /// would not fit a frame is answered `FrameTooLarge` and not sent; the
    /// others go regardless.
    pub async fn publish_batch(&self, messages: Vec<OwnedMessage>) -> BatchAnswers {
        let count = messages.len();
        if self.channels.broker.publishing_blocked() {
            return (0..count).map(|_| Err(BrokerError::Blocked)).collect();
        }
        let frame_max = self.channels.broker.publish_frame_max();
        let mut answers: Vec<Option<Result<PublishOutcome, BrokerError>>> =
            (0..count).map(|_| None).collect();
        let mut sent = Vec::with_capacity(count);
        let mut jobs = Vec::with_capacity(count);
        for (index, message) in messages.into_iter().enumerate() {
            let fits = frame_max.map_or(Ok(()), |frame_max| {
                crate::message_size::check_fits(&message.properties, frame_max)
            });
            match fits {
                Ok(()) => {
                    sent.push(index);
                    jobs.push(message);
                }
                Err(err) => answers[index] = Some(Err(err)),
            }
        }
        if !jobs.is_empty() {
            let channels = self.channels.clone();
            let task = tokio::spawn(async move { channels.publish_in_order(jobs).await });
            // Blocked, the caller is answered now; the task still runs to
            // its confirms or its deadline (`CONFIRM_TIMEOUT`, its own).
            // A message left this way may be stored once the block lifts;
            // the caller was not told it is safe, and a retry may store it
            // twice (at least once).
            let published = self
                .unless_blocked(async {
                    task.await
                        .map_err(|err| BrokerError::unavailable("publishing", err))
                })
                .await;
            match published {
                Ok(published) => {
                    for (index, answer) in sent.into_iter().zip(published) {
                        answers[index] = Some(answer);
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %crate::Chain(&err), "publishing a batch");
                    let blocked = matches!(err, BrokerError::Blocked);
                    for index in sent {
                        answers[index] = Some(Err(if blocked {
                            BrokerError::Blocked
                        } else {
                            BrokerError::unavailable("publishing", Lost::NoAnswer)
                        }));
                    }
                }
            }
        }
        answers
            .into_iter()
            .map(|answer| {
                answer
                    .unwrap_or_else(|| Err(BrokerError::unavailable("publishing", Lost::NoAnswer)))
            })
            .collect()
    }

    /// Runs a step that waits for the broker, giving up when the broker
    /// blocks the publish connection meanwhile. Looked at every
    /// `BLOCKED_CHECK`: lapin tells no one of a `connection.blocked`.
    async fn unless_blocked<T>(
        &self,
        step: impl std::future::Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        let blocked = async {
            loop {
                tokio::time::sleep(BLOCKED_CHECK).await;
                if self.channels.broker.publishing_blocked() {
                    return;
                }
            }
        };
        tokio::select! {
            biased;
            result = step => result,
            () = blocked => Err(BrokerError::Blocked),
        }
    }
}

/// A batch on its way: the answers so far, by the message's place.
struct InOrder<'a> {
    keys: &'a [ReturnKey],
    answers: Vec<Option<Result<PublishOutcome, BrokerError>>>,
    /// Sent, confirm awaited, in the order sent.
    pending: VecDeque<(usize, PublisherConfirm)>,
    /// The channel the first message claimed; the rest follow it.
    channel: Option<Arc<PublishChannel>>,
}

impl Channels {
    /// Publishes every job in order on one channel, then awaits their
    /// confirms, all within `CONFIRM_TIMEOUT`; one answer per job, in order.
    async fn publish_in_order(&self, jobs: Vec<OwnedMessage>) -> BatchAnswers {
        let keys: Vec<ReturnKey> = jobs
            .iter()
            .map(|job| ReturnKey::of_publish(&job.exchange, &job.routing_key, &job.properties))
            .collect();
        let mut batch = InOrder {
            keys: &keys,
            answers: (0..jobs.len()).map(|_| None).collect(),
            pending: VecDeque::new(),
            channel: None,
        };
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        let finished = tokio::time::timeout_at(deadline, self.send_and_settle(jobs, &mut batch))
            .await
            .is_ok();
        if !finished {
            if let Some(channel) = &batch.channel {
                // A confirm (or return) may still come, and with its key
                // given back it could be matched to a later publish: close
                // the channel instead, keys and all; the next publish opens
                // another.
                let lapin_channel = channel.channel().clone();
                tokio::spawn(async move {
                    let _ = lapin_channel
                        .close(200, "publish not confirmed in time".into())
                        .await;
                });
            }
        }
        batch
            .answers
            .into_iter()
            .zip(&keys)
            .map(|(answer, key)| {
                answer.unwrap_or_else(|| {
                    Err(BrokerError::unavailable(
                        format!("waiting for the confirm of {}", publishing_to(key)),
                        Lost::NoAnswer,
                    ))
                })
            })
            .collect()
    }

    async fn send_and_settle(&self, jobs: Vec<OwnedMessage>, batch: &mut InOrder<'_>) {
        let keys = batch.keys;
        for (index, job) in jobs.into_iter().enumerate() {
            let key = &keys[index];
            let channel = match batch.channel.clone() {
                Some(channel) => {
                    self.claim_on(&channel, key, batch).await;
                    channel
                }
                None => match self.claim(key).await {
                    Ok(channel) => {
                        batch.channel = Some(channel.clone());
                        channel
                    }
                    Err(err) => {
                        batch.answers[index] = Some(Err(err));
                        continue;
                    }
                },
            };
            let OwnedMessage {
                exchange,
                routing_key,
                payload,
                properties,
                mandatory,
            } = job;
            // The key holds the names too: errors name the destination from
            // it, so the job's strings move into lapin's own type uncopied.
            let sent = channel
                .channel()
                .basic_publish(
                    ShortString::from(exchange),
                    ShortString::from(routing_key),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    &payload,
                    properties,
                )
                .await
                .doing(|| publishing_to(key));
            match sent {
                Ok(confirm) => batch.pending.push_back((index, confirm)),
                Err(err) => {
                    // The channel is gone, keys and all.
                    channel.release(key);
                    self.released.notify_waiters();
                    batch.answers[index] = Some(Err(err));
                }
            }
        }
        if let Some(channel) = batch.channel.clone() {
            self.settle(&channel, batch).await;
        }
    }

    /// Takes `key` on the batch's own channel: while another publish holds
    /// it there, the batch's confirms so far come in first (they may be
    /// that publish), then it waits for the key to be given back.
    async fn claim_on(&self, channel: &PublishChannel, key: &ReturnKey, batch: &mut InOrder<'_>) {
        loop {
            if channel.claim(key) {
                return;
            }
            if !batch.pending.is_empty() {
                self.settle(channel, batch).await;
                continue;
            }
            let released = self.released.notified();
            tokio::pin!(released);
            // Listening before looking again, as in `claim`.
            released.as_mut().enable();
            if channel.claim(key) {
                return;
            }
            released.await;
        }
    }

    /// Awaits the confirms of what the batch has sent, in order.
    async fn settle(&self, channel: &PublishChannel, batch: &mut InOrder<'_>) {
        let keys = batch.keys;
        while let Some((index, confirm)) = batch.pending.pop_front() {
            let key = &keys[index];
            let confirmed = confirm
                .await
                .doing(|| format!("waiting for the confirm of {}", publishing_to(key)));
            // The return, if any, came before the confirm: the mark is
            // final. An error means the channel is gone, keys and all.
            let returned = channel.release(key);
            self.released.notify_waiters();
            batch.answers[index] = Some(confirmed.and_then(|confirmation| {
                match (confirmation, returned) {
                    // lapin may attach someone else's return to this
                    // confirm; only our own mark counts.
                    (Confirmation::Ack(_), false) => Ok(PublishOutcome::Confirmed),
                    (Confirmation::Ack(_), true) => Ok(PublishOutcome::Unroutable),
                    (Confirmation::Nack(_), _) => Err(BrokerError::Nacked),
                    (Confirmation::NotRequested, _) => Err(BrokerError::unavailable(
                        publishing_to(key),
                        Lost::NotConfirming,
                    )),
                }
            }));
        }
    }

    /// A channel on which `key` is now taken by this publish. Every other
    /// publish with the same key in flight on every channel (the same
    /// message id to the same place, twice at once): wait for one to end.
    async fn claim(&self, key: &ReturnKey) -> Result<Arc<PublishChannel>, BrokerError> {
        if let Some(channel) = self.try_claim(key).await? {
            return Ok(channel);
        }
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Listening before looking again: a key given back from here
            // on wakes this publish, one given back before it finds.
            released.as_mut().enable();
            if let Some(channel) = self.try_claim(key).await? {
                return Ok(channel);
            }
            released.await;
        }
    }

    /// One pass over the channels, from the next in turn.
    async fn try_claim(&self, key: &ReturnKey) -> Result<Option<Arc<PublishChannel>>, BrokerError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..CHANNELS {
            let channel = self.channel((start + i) % CHANNELS).await?;
            if channel.claim(key) {
                return Ok(Some(channel));
            }
        }
        Ok(None)
    }

    /// The channel in `slot`, opening a new one when there is none yet or
    /// the last one was closed.
    async fn channel(&self, slot: usize) -> Result<Arc<PublishChannel>, BrokerError> {
        let mut slot = self.slots[slot].lock().await;
        match slot.as_ref() {
            Some(channel) if channel.is_open() => Ok(channel.clone()),
            _ => {
                let channel = Arc::new(PublishChannel::open(&self.broker).await?);
                *slot = Some(channel.clone());
                Ok(channel)
            }
        }
    }
}

/// What a publish was, for errors; built only when one happens.
fn publishing_to(key: &ReturnKey) -> String {
    let (exchange, routing_key) = key.destination();
    if exchange.is_empty() {
        format!("publishing to queue `{routing_key}`")
    } else {
        format!("publishing to exchange `{exchange}` with routing key `{routing_key}`")
    }
}

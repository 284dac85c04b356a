//! Reading and replaying `<queue>.dlq`.
//!
//! Peeking takes messages with `basic.get` without acking and then closes
//! the channel, which puts every one of them back (where it was, in a
//! classic queue: see below). Replaying walks the dead-letter queue the
//! same way: a dead letter the `ReplayFilter` takes gets a fresh copy in
//! the main queue (attempts reset) and is handed with the copy's fate to
//! `consumer::settle_replayed`, which acks it only once the copy is
//! confirmed: none lost, none doubled. One it does not take is held unacked
//! and goes back at the end, with the channel. No ack goes out from here.
//!
//! Held dead letters are invisible to every other channel, so two replays
//! of one queue at once, on one replica or two, see disjoint messages and
//! never move one twice.
//!
//! Where held dead letters go back depends on the dead-letter queue's type
//! (the main queue's, `companion_types`). A classic queue (the default)
//! puts each back at its original position, so those left stay in their
//! order, whatever runs at once. A quorum queue (RabbitMQ 3.10, checked)
//! gives them back ahead of the messages never taken but not always in
//! their order, so after a replay or a peek the order of those left is not
//! promised there; none is lost or doubled either way. Each giving back
//! also raises a quorum dead letter's `x-delivery-count`, which its replay
//! copy sheds (`kept_properties`). Keeping the order there would mean
//! republishing every dead letter not taken, on every replay and peek.

mod filter;

pub use filter::{ReplayFilter, ReplayFilterError, ReplayFilterInput, MAX_MESSAGE_IDS};

use std::sync::Arc;

use lapin::options::BasicGetOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};

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
    /// The last failure's kind (an `ErrorKind` name), what replay filters read.
    pub last_error_kind: Option<String>,
    /// The target's status at the last failure, when it answered.
    pub last_status: Option<u16>,
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

    /// Moves the dead letters of `queue` that `filter` takes back to
    /// `queue`, up to `limit` of them, oldest first; the others stay where
    /// they are. A dry run (`ReplayMode::DryRun`) counts them, up to
    /// `limit`, and moves none.
    ///
    /// The walk looks at the dead letters there when it began (the first
    /// `basic.get` tells how many), not at those dead-lettered meanwhile,
    /// nor at those another replay or peek holds as it passes. It runs on
    /// a task of its own, to its end even if the caller leaves: cut between
    /// a copy's confirm and its dead letter's ack, a replay would deliver
    /// that message twice.
    pub async fn replay(
        &self,
        queue: &QueueName,
        filter: ReplayFilter,
        limit: usize,
        mode: ReplayMode,
    ) -> Result<ReplayReport, BrokerError> {
        let walk = Walk {
            broker: self.broker.clone(),
            publisher: self.publisher.clone(),
            queue: queue.clone(),
            filter,
            limit,
            mode,
        };
        let doing = format!("replaying dead letters into `{queue}`");
        tokio::spawn(walk.run())
            .await
            .map_err(|join| BrokerError::unavailable(doing, join))?
    }
}

/// Whether a replay moves what it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayMode {
    /// Matching dead letters go back to the main queue.
    Move,
    /// Matching dead letters are counted; nothing moves.
    DryRun,
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Dead letters the filter took (up to the limit).
    pub matched: usize,
    /// Of those, how many are now in the main queue (0 on a dry run).
    pub replayed: usize,
}

/// One replay, owned by its task.
struct Walk {
    broker: Broker,
    publisher: Arc<Publisher>,
    queue: QueueName,
    filter: ReplayFilter,
    limit: usize,
    mode: ReplayMode,
}

impl Walk {
    async fn run(self) -> Result<ReplayReport, BrokerError> {
        let dlq = self.queue.dead_letter_queue();
        let doing = format!("replaying dead letters from `{dlq}` into `{}`", self.queue);
        let channel = self
            .broker
            .channel()
            .await
            .map_err(|e| e.while_doing(doing.clone()))?;
        let mut report = ReplayReport::default();
        let result = self.walk(&channel, &doing, &mut report).await;
        // Closing the channel gives back every dead letter held unacked.
        if channel.status().connected() {
            let _ = channel.close(200, "replay done".into()).await;
        }
        match result {
            Err(err) if report.replayed == 0 => Err(err),
            Err(err) => {
                tracing::warn!(
                    error = %Chain(&err),
                    matched = report.matched,
                    replayed = report.replayed,
                    "replay stopped early"
                );
                Ok(report)
            }
            Ok(()) => Ok(report),
        }
    }

    async fn walk(
        &self,
        channel: &Channel,
        doing: &str,
        report: &mut ReplayReport,
    ) -> Result<(), BrokerError> {
        let dlq = self.queue.dead_letter_queue();
        // Of the dead letters there when the walk began, how many are left
        // to look at; known from the first get-ok.
        let mut left: Option<u64> = None;
        while report.matched < self.limit && left != Some(0) {
            let got = channel
                .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(|err| match BrokerError::amqp(doing.to_owned(), err) {
                    BrokerError::NotFound { doing, source, .. } => BrokerError::NotFound {
                        doing,
                        reason: format!("`{}` has no dead-letter queue `{dlq}`", self.queue),
                        source,
                    },
                    other => other,
                })?;
            let Some(message) = got else {
                break;
            };
            let to_look_at = left.get_or_insert(u64::from(message.message_count) + 1);
            *to_look_at -= 1;
            let delivery = message.delivery;
            if !self.filter.matches(&delivery.properties) {
                // Held unacked: it goes back with the channel.
                continue;
            }
            report.matched += 1;
            if self.mode == ReplayMode::DryRun {
                continue;
            }
            let copy = self
                .publisher
                .publish(OutgoingMessage {
                    exchange: "",
                    routing_key: self.queue.as_str(),
                    payload: &delivery.data,
                    properties: fresh_properties(&delivery.properties),
                    mandatory: true,
                })
                .await;
            match settle_replayed(&delivery, copy).await? {
                Replayed::Moved => report.replayed += 1,
                Replayed::Unroutable => {
                    return Err(BrokerError::not_found(
                        doing.to_owned(),
                        format!("no queue named `{}` to replay into", self.queue),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn dead_letter_of(properties: &BasicProperties, payload: Vec<u8>) -> DeadLetter {
    DeadLetter {
        message_id: properties.message_id().as_ref().map(|s| s.to_string()),
        attempts: crate::consumer::attempt_of(properties),
        last_error: headers::text(properties, headers::LAST_ERROR),
        last_error_kind: headers::text(properties, headers::LAST_ERROR_KIND),
        last_status: filter::last_status(properties),
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

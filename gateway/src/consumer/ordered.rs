//! An ordered consumer's part of a session: its deliveries between the
//! moment the broker sent them and the moment they are final, kept in
//! per-key lanes (`ordering::KeyLanes`), at the target, or held for a
//! retry in place. The session (`worker`) takes deliveries, gives call
//! slots and acks; this module decides which delivery may go next.
//!
//! The shutdown story differs from a plain session's in one point: the
//! deliveries still at the target finish first, and only then is
//! everything not final handed back, in delivery order, so that a queue
//! which puts returned messages first (a quorum queue) still has each key's
//! messages in their order.

use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use super::delivery::{DeliveryRun, InPlace, Step};
use super::limits::CallSlot;
use super::ordering::{Key, KeyLanes, MissingKey, OrderingPolicy};
use super::settle::{delivery_span, AckWindow, Settled};
use super::spec::ConsumerId;
use super::stats::ConsumerStats;
use super::target::{ErrorKind, Failure, IncomingMessage};
use tracing::Instrument;

/// How often `oldestHeldMs` is brought up to date while a delivery is held.
const HELD_GAUGE_EVERY: Duration = Duration::from_secs(1);

/// A delivery of an ordered consumer, not yet final.
pub(super) struct Pending {
    pub delivery: Delivery,
    pub message: IncomingMessage,
    pub key: Option<Key>,
    /// When the session took it: the hold budget counts from here.
    pub taken_at: std::time::Instant,
}

type Finished = Result<(Box<Pending>, Step), JoinError>;

/// What woke the ordered part of a session.
pub(super) enum Event {
    /// An attempt ended.
    Finished(Finished),
    /// A held retry is due, or the held gauge is due a refresh.
    Tick,
}

/// One session's ordered deliveries.
pub(super) struct OrderedSession {
    policy: OrderingPolicy,
    lanes: KeyLanes<Box<Pending>>,
    /// Heads waiting for their retry, with when it is due.
    held: Vec<(Instant, Box<Pending>)>,
    in_flight: JoinSet<(Box<Pending>, Step)>,
    stats: Arc<ConsumerStats>,
    /// Wakes the session for the earliest held retry, or to bring
    /// `oldestHeldMs` up to date. One timer, reset only when its instant
    /// changes: a new one at each turn of the session's loop would be
    /// registered and dropped thousands of times a second while a key is
    /// held.
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The instant `timer` is set for; `None` once it fired.
    timer_at: Option<Instant>,
    /// When `oldestHeldMs` is next brought up to date.
    gauge_due: Instant,
}

impl OrderedSession {
    pub fn new(policy: OrderingPolicy, stats: Arc<ConsumerStats>) -> Self {
        Self {
            policy,
            lanes: KeyLanes::default(),
            held: Vec::new(),
            in_flight: JoinSet::new(),
            stats,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            timer_at: None,
            gauge_due: Instant::now(),
        }
    }

    /// A delivery the broker sent: its key decides where it waits. A message
    /// without a key under `missingKey: "dead_letter"` is dead-lettered at
    /// once, without a call.
    pub fn arrive(
        &mut self,
        mut delivery: Delivery,
        incoming: impl FnOnce(&mut Delivery) -> IncomingMessage,
        run: &DeliveryRun,
        consumer_id: &ConsumerId,
    ) {
        let key = self.policy.key.key_of(&delivery.properties, &delivery.data);
        let message = incoming(&mut delivery);
        let pending = Box::new(Pending {
            delivery,
            message,
            key,
            taken_at: std::time::Instant::now(),
        });
        if pending.key.is_none() && self.policy.missing_key == MissingKey::DeadLetter {
            let failure = Failure::new(
                ErrorKind::OrderingKey,
                format!("the message has no ordering key ({})", self.policy.key),
            );
            let run = run.clone();
            let span = delivery_span(consumer_id, &pending.message);
            self.in_flight.spawn(
                async move {
                    let settled = run
                        .dead_letter_uncalled(&pending.delivery, &pending.message, failure)
                        .await;
                    (pending, Step::Settled(settled))
                }
                .instrument(span),
            );
            return;
        }
        let key = pending.key.clone();
        self.lanes.arrive(key.as_ref(), pending);
        self.publish_gauges();
    }

    /// Whether a delivery waits for a call slot.
    pub fn has_ready(&self) -> bool {
        self.lanes.has_ready()
    }

    /// Sends the next ready delivery to the target with `call_slot`.
    pub fn dispatch(
        &mut self,
        call_slot: Option<CallSlot>,
        run: &DeliveryRun,
        consumer_id: &ConsumerId,
    ) {
        let Some(pending) = self.lanes.next_ready() else {
            return;
        };
        let in_place = InPlace {
            taken_at: pending.taken_at,
            max_hold: self.policy.max_hold,
        };
        let run = run.clone();
        let span = delivery_span(consumer_id, &pending.message);
        self.in_flight.spawn(
            async move {
                let step = run
                    .attempt(
                        &pending.delivery,
                        &pending.message,
                        call_slot,
                        Some(in_place),
                    )
                    .await;
                (pending, step)
            }
            .instrument(span),
        );
        self.publish_gauges();
    }

    /// Whether anything is at the target or held.
    pub fn busy(&self) -> bool {
        !self.in_flight.is_empty() || !self.held.is_empty()
    }

    /// Whether a delivery waits for its key's turn or for a retry: the
    /// deliveries taken after it cannot be acked with `multiple` meanwhile.
    pub fn waiting(&self) -> bool {
        !self.held.is_empty() || self.lanes.queued() > 0
    }

    /// Deliveries at the target now.
    pub fn at_target(&self) -> usize {
        self.in_flight.len()
    }

    /// The next thing to do: an attempt ended, or a held retry is due.
    /// Cancel-safe.
    pub async fn next_event(&mut self) -> Event {
        let wake = self
            .held
            .iter()
            .map(|(due, _)| *due)
            .min()
            .map(|due| due.min(self.gauge_due));
        if let Some(at) = wake {
            if self.timer_at != Some(at) {
                self.timer.as_mut().reset(at);
                self.timer_at = Some(at);
            }
        }
        let (in_flight, timer) = (&mut self.in_flight, &mut self.timer);
        tokio::select! {
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => Event::Finished(done),
            _ = timer.as_mut(), if wake.is_some() => {
                self.timer_at = None;
                Event::Tick
            }
        }
    }

    /// Puts due retries first in line.
    pub fn release_due(&mut self) {
        let now = Instant::now();
        if now >= self.gauge_due {
            self.gauge_due = now + HELD_GAUGE_EVERY;
        }
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].0 <= now {
                let (_, mut pending) = self.held.swap_remove(i);
                pending.message.attempt += 1;
                // Only the first attempt after a replay is the replay's.
                pending.message.replayed = false;
                self.lanes.retry_due(pending);
            } else {
                i += 1;
            }
        }
        self.publish_gauges();
    }

    /// An attempt ended: a final outcome goes to the ack window and frees
    /// the key for its next message; a retry in place is held until due.
    /// A head handed back to the queue takes the messages queued behind it
    /// along, so none of them overtakes it. `Err`: the task did not finish
    /// (it cannot panic), and the session must end.
    pub async fn finished(
        &mut self,
        done: Finished,
        acks: &mut AckWindow,
    ) -> Result<(), JoinError> {
        let (pending, step) = done?;
        match step {
            Step::Hold { delay } => {
                self.held.push((Instant::now() + delay, pending));
            }
            Step::Settled(Settled::HandedBack) => {
                acks.settled(pending.delivery.delivery_tag, Settled::HandedBack);
                let mut behind = Vec::new();
                self.lanes.abandon(pending.key.as_ref(), &mut behind);
                for later in behind {
                    acks.hand_back(&later.delivery).await;
                }
            }
            Step::Settled(settled) => {
                acks.settled(pending.delivery.delivery_tag, settled);
                self.lanes.finished(pending.key.as_ref());
            }
        }
        self.publish_gauges();
        Ok(())
    }

    /// The shutdown story: lets the attempts at the target end, for up to
    /// `timeout`, then hands back, in delivery order, everything not final.
    /// When they do not all end in time, nothing is handed back one by one:
    /// closing the channel returns it all together.
    pub async fn drain(&mut self, acks: &mut AckWindow, timeout: Duration) -> bool {
        let ended = tokio::time::timeout(timeout, async {
            while let Some(done) = self.in_flight.join_next().await {
                if self.finished(done, acks).await.is_err() {
                    return false;
                }
            }
            true
        })
        .await
        .unwrap_or(false);
        if ended {
            let mut rest: Vec<Box<Pending>> = self.lanes.take_all();
            rest.extend(self.held.drain(..).map(|(_, pending)| pending));
            rest.sort_by_key(|p| p.delivery.delivery_tag);
            for pending in rest {
                acks.hand_back(&pending.delivery).await;
            }
        }
        self.publish_gauges();
        ended
    }

    /// However the session ended: attempts still running are aborted.
    pub fn abort(&mut self) {
        self.in_flight.abort_all();
        self.held.clear();
        self.lanes.take_all();
        self.publish_gauges();
    }

    /// `keysInFlight`, `keysHeld`, `oldestHeldMs`.
    fn publish_gauges(&self) {
        let Some(gauges) = self.stats.ordering() else {
            return;
        };
        let oldest = self
            .held
            .iter()
            .map(|(_, p)| p.taken_at.elapsed())
            .max()
            .unwrap_or_default();
        gauges.set(self.in_flight.len(), self.held.len(), oldest);
    }
}

/// The ordered part's next event, or never for a plain session.
pub(super) async fn next_event(ordered: Option<&mut OrderedSession>) -> Event {
    match ordered {
        Some(ordered) => ordered.next_event().await,
        None => std::future::pending().await,
    }
}

//! `AckWindow`: the acks of one consumer channel, sent in as few frames as
//! the rule allows. Part of `settle`, the one place deliveries are acked:
//! a consumer's acks go out from `AckWindow::flush` and
//! `AckWindow::ack_stragglers`, nowhere else.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::Channel;

use super::Settled;
use crate::consumer::stats::ConsumerStats;

/// Acks flow from here only. Tracks the delivery tags of one channel in
/// arrival order; acks with `multiple` up to the highest tag below which
/// every delivery is settled, and, so that one slow delivery cannot hold
/// the rest of the prefetch window hostage, acks deliveries settled behind
/// it one by one once they have waited `straggler` long.
pub(crate) struct AckWindow {
    outstanding: VecDeque<Entry>,
    stats: Arc<ConsumerStats>,
}

struct Entry {
    tag: u64,
    state: EntryState,
}

#[derive(Clone, Copy)]
enum EntryState {
    InFlight,
    /// Safe, waiting for its ack.
    Settled(Settled, Instant),
    /// Acked on its own, or handed back: nothing more to send.
    Done,
}

impl AckWindow {
    pub fn new(stats: Arc<ConsumerStats>) -> Self {
        Self {
            outstanding: VecDeque::new(),
            stats,
        }
    }

    /// A delivery arrived on the channel.
    pub fn track(&mut self, tag: u64) {
        self.outstanding.push_back(Entry {
            tag,
            state: EntryState::InFlight,
        });
    }

    /// A delivery's outcome is safe (or it was handed back).
    pub fn settled(&mut self, tag: u64, settled: Settled) {
        // Tags grow on a channel, so the deque is sorted.
        if let Ok(i) = self.outstanding.binary_search_by_key(&tag, |e| e.tag) {
            self.outstanding[i].state = match settled {
                Settled::HandedBack => EntryState::Done,
                other => EntryState::Settled(other, Instant::now()),
            };
        }
    }

    /// Hands a delivery that never reached the target back to its queue
    /// (nack, requeue), so the acks behind it no longer wait for it.
    pub async fn hand_back(&mut self, delivery: &Delivery) {
        super::hand_back(&delivery.acker).await;
        self.settled(delivery.delivery_tag, Settled::HandedBack);
    }

    /// Settled deliveries at the front, ready for one `multiple` ack.
    pub fn ready(&self) -> usize {
        self.outstanding
            .iter()
            .take_while(|e| !matches!(e.state, EntryState::InFlight))
            .filter(|e| matches!(e.state, EntryState::Settled(..)))
            .count()
    }

    /// Deliveries still at their target.
    pub fn in_flight(&self) -> usize {
        self.outstanding
            .iter()
            .filter(|e| matches!(e.state, EntryState::InFlight))
            .count()
    }

    /// Settled deliveries waiting behind one still in flight.
    pub fn stragglers(&self) -> usize {
        self.outstanding
            .iter()
            .skip_while(|e| !matches!(e.state, EntryState::InFlight))
            .filter(|e| matches!(e.state, EntryState::Settled(..)))
            .count()
    }

    /// One ack, with `multiple`, for everything settled at the front.
    pub async fn flush(&mut self, channel: &Channel) -> Result<(), lapin::Error> {
        let mut up_to = None;
        let mut acked = Vec::new();
        while let Some(entry) = self.outstanding.front() {
            match entry.state {
                EntryState::InFlight => break,
                EntryState::Settled(settled, _) => {
                    up_to = Some(entry.tag);
                    acked.push(settled);
                }
                EntryState::Done => {}
            }
            self.outstanding.pop_front();
        }
        let Some(up_to) = up_to else {
            return Ok(());
        };
        // Tags below `up_to` that were handed back or acked on their own are
        // no longer outstanding; `multiple` passes over them.
        channel
            .basic_ack(up_to, BasicAckOptions { multiple: true })
            .await?;
        for settled in acked {
            self.count(settled);
        }
        Ok(())
    }

    /// Acks, one by one, deliveries settled at least `waited` ago that sit
    /// behind one still in flight.
    pub async fn ack_stragglers(
        &mut self,
        channel: &Channel,
        waited: Duration,
    ) -> Result<(), lapin::Error> {
        let mut behind_gap = false;
        let mut due = Vec::new();
        for entry in &mut self.outstanding {
            match entry.state {
                EntryState::InFlight => behind_gap = true,
                EntryState::Settled(settled, at) if behind_gap && at.elapsed() >= waited => {
                    due.push((entry.tag, settled));
                    entry.state = EntryState::Done;
                }
                _ => {}
            }
        }
        // All sent before any is awaited: one after the other, each ack
        // would wait for the connection's writer in turn.
        futures_util::future::try_join_all(
            due.iter()
                .map(|(tag, _)| channel.basic_ack(*tag, BasicAckOptions { multiple: false })),
        )
        .await?;
        for (_, settled) in due {
            self.count(settled);
        }
        self.forget_done();
        Ok(())
    }

    /// Drops the entries with nothing more to send from behind the front.
    /// Behind a delivery held for long (an ordered consumer's retry in
    /// place, say) the window would otherwise keep one entry for every
    /// delivery acked since, and every scan of it would grow with them. A
    /// later `multiple` ack passes over their tags as it does now.
    fn forget_done(&mut self) {
        self.outstanding
            .retain(|e| !matches!(e.state, EntryState::Done));
    }

    fn count(&self, settled: Settled) {
        match settled {
            Settled::Acked => self.stats.acked(),
            Settled::Retried { .. } => self.stats.retried(),
            Settled::DeadLettered => self.stats.dead_lettered(),
            Settled::Filtered => self.stats.filtered(),
            Settled::HandedBack => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> AckWindow {
        AckWindow::new(Arc::new(ConsumerStats::default()))
    }

    #[test]
    fn only_the_settled_front_is_ready_for_a_multiple_ack() {
        let mut w = window();
        for tag in 1..=5 {
            w.track(tag);
        }
        w.settled(2, Settled::Acked);
        w.settled(3, Settled::Acked);
        assert_eq!((w.ready(), w.stragglers()), (0, 2), "1 is still in flight");
        assert_eq!(w.in_flight(), 3, "1, 4 and 5 are at the target");
        w.settled(1, Settled::Acked);
        assert_eq!((w.ready(), w.stragglers()), (3, 0));
        w.settled(5, Settled::DeadLettered);
        assert_eq!((w.ready(), w.stragglers()), (3, 1), "4 is still in flight");
        w.settled(4, Settled::Retried { delay_ms: 10 });
        assert_eq!((w.ready(), w.stragglers()), (5, 0));
    }

    #[test]
    fn entries_done_behind_a_held_one_are_forgotten() {
        let mut w = window();
        for tag in 1..=1_000 {
            w.track(tag);
        }
        for tag in 2..=1_000 {
            w.settled(tag, Settled::HandedBack);
        }
        w.forget_done();
        assert_eq!(w.outstanding.len(), 1, "only the held one is left");
        w.track(1_001);
        w.settled(1_001, Settled::Acked);
        assert_eq!(w.stragglers(), 1);
        w.settled(1, Settled::Acked);
        assert_eq!(w.ready(), 2);
    }

    #[test]
    fn a_handed_back_delivery_is_passed_but_never_acked() {
        let mut w = window();
        w.track(7);
        w.settled(7, Settled::HandedBack);
        assert_eq!(w.ready(), 0);
        w.track(8);
        w.settled(8, Settled::Acked);
        assert_eq!(w.ready(), 1);
    }
}

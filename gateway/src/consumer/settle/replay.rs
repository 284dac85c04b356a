//! Settling a dead letter taken for replay (`crate::dead_letters`, with
//! `basic.get`): the one ack not on a consumer's channel, and it follows
//! the same rule. The dead letter leaves `<queue>.dlq` only once its fresh
//! copy is confirmed in the main queue (none lost); otherwise it goes back
//! where it was (none doubled).

use lapin::message::Delivery;
use lapin::options::BasicAckOptions;

use super::hand_back;
use crate::error::AmqpContext;
use crate::{BrokerError, PublishOutcome};

/// What became of a dead letter taken for replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replayed {
    /// Its copy is confirmed in the main queue; the dead letter is acked.
    Moved,
    /// The main queue refused the copy (there is no such queue); the dead
    /// letter is handed back to the dead-letter queue.
    Unroutable,
}

/// Settles `dead_letter` by what became of its replay `copy`: acked after
/// the broker confirmed the copy, handed back otherwise. A copy that failed
/// is handed back and its error returned. An ack that failed returns its
/// error too: the channel is gone, and the broker returns the dead letter
/// to its queue while its copy is already in the main queue (at least
/// once, never lost).
pub(crate) async fn settle_replayed(
    dead_letter: &Delivery,
    copy: Result<PublishOutcome, BrokerError>,
) -> Result<Replayed, BrokerError> {
    match copy {
        Ok(PublishOutcome::Confirmed) => {
            dead_letter
                .acker
                .ack(BasicAckOptions::default())
                .await
                .doing(|| "acking a replayed dead letter")?;
            Ok(Replayed::Moved)
        }
        Ok(PublishOutcome::Unroutable) => {
            hand_back(&dead_letter.acker).await;
            Ok(Replayed::Unroutable)
        }
        Err(err) => {
            hand_back(&dead_letter.acker).await;
            Err(err)
        }
    }
}

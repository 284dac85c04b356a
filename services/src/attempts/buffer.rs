//! The replica's attempt buffer: what the delivery path hands records to
//! (`AttemptLog::record`, which only takes a lock for a push) and what the
//! writer drains in bulk. Bounded: past its capacity the oldest record is
//! dropped and counted, so a store that is down costs history, never memory
//! without bound nor a delivery's time.

use std::collections::VecDeque;
use std::sync::Mutex;

use gateway::{AttemptLog, AttemptRecord};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;

/// Records waiting for the writer.
pub struct AttemptBuffer {
    queue: Mutex<VecDeque<AttemptRecord>>,
    capacity: usize,
    /// Wakes the writer early once a full bulk insert is waiting.
    full_batch: usize,
    ready: Notify,
    /// `workerrmq_attempt_log_dropped_total`.
    dropped: Counter,
}

impl AttemptBuffer {
    /// Holds up to `capacity` records (at least 1); wakes the writer when
    /// `full_batch` are waiting. Drops are counted in `dropped`.
    pub fn new(capacity: usize, full_batch: usize, dropped: Counter) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            full_batch: full_batch.max(1),
            ready: Notify::new(),
            dropped,
        }
    }

    /// Records dropped because the buffer was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no record waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `max` of the oldest records, taken out.
    pub fn take(&self, max: usize) -> Vec<AttemptRecord> {
        let mut queue = self.lock();
        let n = queue.len().min(max);
        queue.drain(..n).collect()
    }

    /// Until `full_batch` records wait (or a wake-up for shutdown).
    pub async fn filled(&self) {
        self.ready.notified().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<AttemptRecord>> {
        // A panic while holding this lock leaves a queue of whole records:
        // still fine to use.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl AttemptLog for AttemptBuffer {
    fn record(&self, record: AttemptRecord) {
        let waiting = {
            let mut queue = self.lock();
            if queue.len() >= self.capacity {
                queue.pop_front();
                self.dropped.inc();
            }
            queue.push_back(record);
            queue.len()
        };
        if waiting == self.full_batch {
            self.ready.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway::{AttemptOutcome, ConsumerId, QueueName, Trigger};

    fn record(n: u32) -> AttemptRecord {
        AttemptRecord {
            consumer_id: ConsumerId::new(),
            queue: QueueName::parse("orders").unwrap(),
            message_id: format!("m-{n}"),
            attempt: n,
            trigger: Trigger::Delivery,
            batch_id: None,
            started_at: chrono::Utc::now(),
            duration: std::time::Duration::ZERO,
            outcome: AttemptOutcome::Delivered,
            request: None,
            body: bytes_of(n),
            answer: None,
            error: None,
            trace_id: None,
        }
    }

    fn bytes_of(n: u32) -> bytes::Bytes {
        n.to_string().into_bytes().into()
    }

    fn ids(records: &[AttemptRecord]) -> Vec<u32> {
        records.iter().map(|r| r.attempt).collect()
    }

    #[test]
    fn past_capacity_the_oldest_go_and_are_counted() {
        let buffer = AttemptBuffer::new(3, 1000, Counter::default());
        for n in 1..=5 {
            buffer.record(record(n));
        }
        assert_eq!(buffer.dropped(), 2);
        assert_eq!(ids(&buffer.take(10)), [3, 4, 5]);
    }

    #[test]
    fn within_capacity_nothing_is_dropped_and_order_is_kept() {
        let buffer = AttemptBuffer::new(10, 1000, Counter::default());
        for n in 1..=4 {
            buffer.record(record(n));
        }
        assert_eq!(ids(&buffer.take(2)), [1, 2]);
        buffer.record(record(5));
        assert_eq!(buffer.dropped(), 0);
        assert_eq!(ids(&buffer.take(10)), [3, 4, 5]);
    }
}

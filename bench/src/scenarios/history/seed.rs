//! The records `history` reads, made and stored straight into the
//! `attempts` collection in bulk (a million real deliveries would take far
//! too long). Each is the gateway's own: an engine `AttemptRecord` turned
//! into its document by `services::attempts::StoredAttempt::of`, as the
//! attempt writer does, so the store holds exactly what it would hold.
//!
//! The layout (`Layout`): 20 consumers, each on its own queue; message `m`
//! goes to consumer `m % 20`; every message id is unique; one message in 18
//! has three attempts (503, 503, then delivered) and the rest one
//! (delivered, 204), so 2 records in 20 (10%) carry a 5xx answer. Starts are
//! spread over the last 24 hours, well inside the 7-day retention.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use gateway::{
    Answer, AttemptOutcome, AttemptRecord, ConsumerId, Failure, QueueName, RequestShape, Trigger,
};
use mongodb::options::InsertManyOptions;
use mongodb::Collection;
use services::attempts::StoredAttempt;

/// Consumers (and queues) the records belong to.
pub const CONSUMERS: usize = 20;
/// One message in this many has several attempts.
const RETRIED_EVERY: u64 = 18;
/// A retried message's attempts, and when each starts after the first.
const RETRIED_ATTEMPTS: u32 = 3;
const RETRY_OFFSETS_MS: [i64; 3] = [0, 1_000, 3_000];
/// Records per bulk insert (the writer's own `MAX_BULK`).
const BULK: usize = services::attempts::MAX_BULK;
/// Bulk inserts in flight at once.
const INSERTS_AT_ONCE: usize = 2;
/// The replica named in the records.
const REPLICA: &str = "bench-history";

/// Who made the records, and what each message looks like.
pub struct Layout {
    pub records: usize,
    pub consumers: Vec<ConsumerId>,
    pub queues: Vec<QueueName>,
    /// Makes this run's message ids unique.
    run: u64,
    first_start: chrono::DateTime<chrono::Utc>,
    step_ms: i64,
    request: Arc<RequestShape>,
    body: bytes::Bytes,
}

impl Layout {
    /// `records` records for the consumers of `queues` (one each).
    pub fn new(records: usize, queues: &[String]) -> anyhow::Result<Self> {
        let queues = queues
            .iter()
            .map(|q| QueueName::parse(q.as_str()).with_context(|| format!("queue name `{q}`")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // About 20 records a block of 18 messages.
        let messages = (records as i64 * RETRIED_EVERY as i64 / 20).max(1);
        let day_ms = 24 * 3600 * 1000;
        Ok(Self {
            records,
            consumers: (0..queues.len()).map(|_| ConsumerId::new()).collect(),
            queues,
            run: uuid::Uuid::new_v4().as_u64_pair().0,
            first_start: chrono::Utc::now() - chrono::Duration::milliseconds(day_ms),
            step_ms: (day_ms / messages).max(1),
            request: Arc::new(RequestShape {
                method: "POST".into(),
                url: services::masking::masked_url(
                    "http://127.0.0.1:8080/hooks/orders?token=secret",
                ),
                headers: [
                    "content-type",
                    "webhook-id",
                    "webhook-timestamp",
                    gateway::headers::QUEUE,
                    gateway::headers::ATTEMPT,
                ]
                .map(String::from)
                .to_vec(),
            }),
            body: super::super::kib_payload().into(),
        })
    }

    /// Message `m`'s id: a UUID, unique in this run.
    pub fn message_id(&self, m: u64) -> String {
        uuid::Uuid::from_u64_pair(self.run, m).to_string()
    }

    /// How many attempts message `m` has.
    pub fn attempts_of(m: u64) -> u32 {
        if m % RETRIED_EVERY == RETRIED_EVERY - 1 {
            RETRIED_ATTEMPTS
        } else {
            1
        }
    }

    /// The consumer (and queue) of message `m`.
    pub fn owner_of(&self, m: u64) -> usize {
        (m % self.consumers.len() as u64) as usize
    }

    /// Message `m`'s attempt `attempt` (1-based).
    fn record(&self, m: u64, attempt: u32) -> AttemptRecord {
        let owner = self.owner_of(m);
        let failed = attempt < Self::attempts_of(m);
        let offset = RETRY_OFFSETS_MS[(attempt as usize - 1).min(RETRY_OFFSETS_MS.len() - 1)];
        let started_at =
            self.first_start + chrono::Duration::milliseconds(m as i64 * self.step_ms + offset);
        let (outcome, answer, error, took) = if failed {
            (
                AttemptOutcome::RetryScheduled,
                Answer {
                    status: 503,
                    headers: vec![("content-type".into(), "text/plain".into())],
                    body: "busy".into(),
                    body_truncated: false,
                },
                Some(Failure::status(
                    503,
                    "target answered 503 Service Unavailable",
                )),
                Duration::from_millis(4),
            )
        } else {
            (
                AttemptOutcome::Delivered,
                Answer {
                    status: 204,
                    ..Answer::default()
                },
                None,
                Duration::from_millis(2),
            )
        };
        AttemptRecord {
            consumer_id: self.consumers[owner].clone(),
            queue: self.queues[owner].clone(),
            message_id: self.message_id(m),
            attempt,
            trigger: Trigger::Delivery,
            batch_id: None,
            started_at,
            duration: took,
            outcome,
            request: Some(self.request.clone()),
            body: self.body.clone(),
            answer: Some(answer),
            error,
            trace_id: None,
        }
    }
}

/// What was stored.
pub struct Seeded {
    /// Records stored.
    pub records: usize,
    /// Messages whose every attempt was stored: `0..complete_messages`.
    pub complete_messages: u64,
    /// Records with a 5xx answer, per consumer.
    pub server_errors: Vec<usize>,
    pub took: Duration,
}

/// Makes the records in order, `BULK` documents at a time, counting what
/// the reads will check against.
struct Batches<'a> {
    layout: &'a Layout,
    made: usize,
    m: u64,
    attempt: u32,
    complete_messages: u64,
    server_errors: Vec<usize>,
}

impl Iterator for Batches<'_> {
    type Item = Vec<StoredAttempt>;

    fn next(&mut self) -> Option<Vec<StoredAttempt>> {
        let total = self.layout.records;
        if self.made >= total {
            return None;
        }
        let mut batch = Vec::with_capacity(BULK.min(total - self.made));
        while batch.len() < BULK && self.made < total {
            let record = self.layout.record(self.m, self.attempt);
            if record.answer.as_ref().is_some_and(|a| a.status >= 500) {
                self.server_errors[self.layout.owner_of(self.m)] += 1;
            }
            batch.push(StoredAttempt::of(record, REPLICA));
            self.made += 1;
            if self.attempt == Layout::attempts_of(self.m) {
                self.complete_messages = self.m + 1;
                self.m += 1;
                self.attempt = 1;
            } else {
                self.attempt += 1;
            }
        }
        Some(batch)
    }
}

/// Stores `layout.records` records in `collection`, `BULK` at a time,
/// `INSERTS_AT_ONCE` inserts in flight; progress on stderr. Documents are
/// made as they go (a few microseconds each, beside the store's
/// milliseconds per insert), so a million are never all in memory.
pub async fn seed(
    collection: &Collection<StoredAttempt>,
    layout: &Layout,
) -> anyhow::Result<Seeded> {
    let total = layout.records;
    let mut batches = Batches {
        layout,
        made: 0,
        m: 0,
        attempt: 1,
        complete_messages: 0,
        server_errors: vec![0; layout.consumers.len()],
    };
    let started = Instant::now();
    let report_every = (total / 10).max(BULK);
    let mut stored = 0usize;
    let mut next_report = report_every;
    let mut inserts = futures_util::stream::iter(batches.by_ref().map(|batch| async move {
        let n = batch.len();
        collection
            .insert_many(batch)
            .with_options(InsertManyOptions::builder().ordered(false).build())
            .await
            .map(|_| n)
    }))
    .buffer_unordered(INSERTS_AT_ONCE);
    while let Some(inserted) = inserts.next().await {
        stored += inserted.context("inserting attempt records")?;
        if stored >= next_report || stored == total {
            let took = started.elapsed().as_secs_f64();
            eprintln!(
                "   {took:>7.1} s  {stored} records stored ({:.0} records/s)",
                stored as f64 / took.max(1e-9)
            );
            next_report += report_every;
        }
    }
    drop(inserts);
    Ok(Seeded {
        records: stored,
        complete_messages: batches.complete_messages,
        server_errors: batches.server_errors,
        took: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(records: usize) -> Layout {
        let queues: Vec<String> = (0..CONSUMERS).map(|k| format!("bench_hist_q{k}")).collect();
        Layout::new(records, &queues).expect("valid queue names")
    }

    #[test]
    fn one_record_in_ten_answers_5xx_and_ids_are_unique() {
        let layout = layout(3_600);
        let mut records = Vec::new();
        let mut m = 0;
        while records.len() < 3_600 {
            for attempt in 1..=Layout::attempts_of(m) {
                records.push(StoredAttempt::of(layout.record(m, attempt), REPLICA));
            }
            m += 1;
        }
        let server_errors = records
            .iter()
            .filter(|r| r.response.as_ref().is_some_and(|a| a.status >= 500))
            .count();
        assert_eq!(server_errors * 10, records.len());
        let mut ids: Vec<_> = (0..m).map(|m| layout.message_id(m)).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len() as u64, m);
    }

    #[test]
    fn a_retried_message_fails_twice_then_is_delivered() {
        let layout = layout(100);
        let m = RETRIED_EVERY - 1;
        let outcomes: Vec<_> = (1..=Layout::attempts_of(m))
            .map(|a| StoredAttempt::of(layout.record(m, a), REPLICA))
            .map(|r| {
                (
                    r.outcome,
                    r.response.map(|a| a.status),
                    r.error.map(|e| e.kind),
                )
            })
            .collect();
        assert_eq!(
            outcomes,
            [
                (
                    "retry_scheduled".into(),
                    Some(503),
                    Some("http_status".into())
                ),
                (
                    "retry_scheduled".into(),
                    Some(503),
                    Some("http_status".into())
                ),
                ("delivered".into(), Some(204), None),
            ]
        );
    }
}

//! Reading attempt records: the filters `/getAttempts` takes, parsed into
//! values that cannot be wrong (`AttemptFilter`, `StatusFilter`,
//! `PageCursor`), and the pages and timelines read with them.
//!
//! Pages are newest first, ordered by (`startedAt`, `_id`) descending; a
//! cursor is the last record's pair, so following it never returns a record
//! twice nor skips one, whatever arrives meanwhile.

use base64::Engine;
use futures_util::TryStreamExt;
use gateway::{AttemptOutcome, ErrorKind};
use mongodb::bson::{doc, DateTime, Document};
use mongodb::Collection;

use super::stored::StoredAttempt;
use crate::{StoreContext, StoreError};

/// Default and largest page.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page.
pub const MAX_LIMIT: u32 = 1_000;
/// Most attempts one message's timeline shows.
pub const MAX_TIMELINE: i64 = 1_000;

/// Why a filter parameter was refused; names the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{parameter}: {problem}")]
pub struct FilterError {
    /// The query parameter, as the API names it.
    pub parameter: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl FilterError {
    fn new(parameter: &'static str, problem: impl Into<String>) -> Self {
        Self {
            parameter,
            problem: problem.into(),
        }
    }
}

/// `status`: one code, or a class (`4xx`, `5xx`); the rule is gateway's,
/// shared with the replay filter.
pub use gateway::StatusFilter;

impl From<gateway::BadStatusFilter> for FilterError {
    fn from(err: gateway::BadStatusFilter) -> Self {
        FilterError::new("status", err.to_string())
    }
}

fn status_condition(status: StatusFilter) -> Document {
    match status {
        StatusFilter::Code(code) => doc! { "response.status": i32::from(code) },
        StatusFilter::Class(class) => doc! { "response.status": {
            "$gte": i32::from(class * 100), "$lt": i32::from(class * 100 + 100)
        } },
    }
}

/// An RFC 3339 time given as `parameter`.
pub fn parse_time(
    parameter: &'static str,
    raw: &str,
) -> Result<chrono::DateTime<chrono::Utc>, FilterError> {
    chrono::DateTime::parse_from_rfc3339(raw.trim())
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| FilterError::new(parameter, "an RFC 3339 time, e.g. 2026-12-07T10:00:00Z"))
}

/// Where the previous page ended: its last record's start and id. Opaque to
/// callers (base64url of `<millis>.<id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageCursor {
    started_at_ms: i64,
    attempt_id: String,
}

impl PageCursor {
    /// A cursor this gateway handed out; anything else is refused.
    pub fn parse(raw: &str) -> Result<Self, FilterError> {
        let bad = || FilterError::new("cursor", "not a cursor this gateway handed out");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw.trim())
            .map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let (millis, id) = text.split_once('.').ok_or_else(bad)?;
        let started_at_ms: i64 = millis.parse().map_err(|_| bad())?;
        let id = uuid::Uuid::parse_str(id).map_err(|_| bad())?;
        Ok(Self {
            started_at_ms,
            attempt_id: id.hyphenated().to_string(),
        })
    }

    fn after(record: &StoredAttempt) -> Self {
        Self {
            started_at_ms: record.started_at.timestamp_millis(),
            attempt_id: record.attempt_id.clone(),
        }
    }

    /// The cursor as handed out.
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{}.{}", self.started_at_ms, self.attempt_id))
    }

    fn condition(&self) -> Document {
        let at = DateTime::from_millis(self.started_at_ms);
        doc! { "$or": [
            { "startedAt": { "$lt": at } },
            { "startedAt": at, "_id": { "$lt": &self.attempt_id } },
        ] }
    }
}

/// What `/getAttempts` selects; every field optional.
#[derive(Debug, Clone, Default)]
pub struct AttemptFilter {
    /// One consumer's.
    pub consumer_id: Option<String>,
    /// One queue's.
    pub queue_name: Option<String>,
    /// One message's.
    pub message_id: Option<String>,
    /// Of one outcome.
    pub outcome: Option<AttemptOutcome>,
    /// With this status.
    pub status: Option<StatusFilter>,
    /// With this error kind.
    pub error_kind: Option<ErrorKind>,
    /// Started at or after.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Started before.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

impl AttemptFilter {
    fn query(&self) -> Document {
        let mut query = Document::new();
        if let Some(id) = &self.consumer_id {
            query.insert("consumerId", id);
        }
        if let Some(queue) = &self.queue_name {
            query.insert("queueName", queue);
        }
        if let Some(id) = &self.message_id {
            query.insert("messageId", id);
        }
        if let Some(outcome) = self.outcome {
            query.insert("outcome", outcome.as_str());
        }
        if let Some(status) = self.status {
            query.extend(status_condition(status));
        }
        if let Some(kind) = self.error_kind {
            query.insert("error.kind", kind.as_str());
        }
        let mut started = Document::new();
        if let Some(since) = self.since {
            started.insert("$gte", DateTime::from_chrono(since));
        }
        if let Some(until) = self.until {
            started.insert("$lt", DateTime::from_chrono(until));
        }
        if !started.is_empty() {
            query.insert("startedAt", started);
        }
        query
    }
}

/// One page of records, and where the next begins (`None`: no more).
#[derive(Debug)]
pub struct AttemptPage {
    /// Newest first.
    pub attempts: Vec<StoredAttempt>,
    /// For the next page.
    pub next: Option<PageCursor>,
}

/// Records matching `filter`, after `cursor`, up to `limit`.
pub async fn page(
    collection: &Collection<StoredAttempt>,
    filter: &AttemptFilter,
    cursor: Option<&PageCursor>,
    limit: u32,
) -> Result<AttemptPage, StoreError> {
    let mut query = filter.query();
    if let Some(cursor) = cursor {
        query = doc! { "$and": [query, cursor.condition()] };
    }
    // One more than asked: whether there is a next page, without a count.
    let mut attempts: Vec<StoredAttempt> = collection
        .find(query)
        .sort(doc! { "startedAt": -1, "_id": -1 })
        .limit(i64::from(limit) + 1)
        .await
        .doing(|| "reading attempt records")?
        .try_collect()
        .await
        .doing(|| "reading attempt records")?;
    let more = attempts.len() > limit as usize;
    attempts.truncate(limit as usize);
    let next = more
        .then(|| attempts.last().map(PageCursor::after))
        .flatten();
    Ok(AttemptPage { attempts, next })
}

/// One message's attempts in a queue, oldest first.
pub async fn timeline(
    collection: &Collection<StoredAttempt>,
    queue: &str,
    message_id: &str,
) -> Result<Vec<StoredAttempt>, StoreError> {
    collection
        .find(doc! { "queueName": queue, "messageId": message_id })
        .sort(doc! { "startedAt": 1, "_id": 1 })
        .limit(MAX_TIMELINE)
        .await
        .doing(|| "reading a message's attempts")?
        .try_collect()
        .await
        .doing(|| "reading a message's attempts")
}

/// Where a message stands by its last attempt.
pub fn state_of(timeline: &[StoredAttempt]) -> &'static str {
    match timeline.last().map(|a| a.outcome.as_str()) {
        None => "unknown",
        Some("delivered") => "delivered",
        Some("retry_scheduled") => "retrying",
        Some("dead_lettered") => "dead_lettered",
        Some("filtered") => "filtered",
        Some(_) => "in_flight",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_as_codes_or_classes() {
        assert_eq!(StatusFilter::parse("503"), Ok(StatusFilter::Code(503)));
        assert_eq!(StatusFilter::parse("5xx"), Ok(StatusFilter::Class(5)));
        assert!(StatusFilter::Class(5).matches(503));
        assert!(!StatusFilter::Class(5).matches(422));
        for bad in ["", "6xx", "0xx", "99", "600", "5x", "abc", "xx"] {
            assert_eq!(
                StatusFilter::parse(bad).map_err(|e| FilterError::from(e).parameter),
                Err("status"),
                "{bad}"
            );
        }
    }

    #[test]
    fn cursors_round_trip_and_forgeries_are_refused() {
        let cursor = PageCursor {
            started_at_ms: 1_700_000_000_123,
            attempt_id: uuid::Uuid::now_v7().to_string(),
        };
        assert_eq!(PageCursor::parse(&cursor.encode()), Ok(cursor));
        for forged in ["", "abc", "MTIz", "bm90LmEudXVpZA"] {
            assert_eq!(
                PageCursor::parse(forged).map_err(|e| e.parameter),
                Err("cursor"),
                "{forged}"
            );
        }
    }

    #[test]
    fn times_must_be_rfc3339() {
        assert!(parse_time("since", "2026-12-07T10:00:00Z").is_ok());
        assert_eq!(
            parse_time("until", "yesterday").map_err(|e| e.parameter),
            Err("until")
        );
    }
}

//! Which dead letters a replay takes: `ReplayFilter`, parsed once from what
//! the caller sent (`ReplayFilterInput`) into values that cannot be wrong,
//! then matched against each dead letter's headers as the gateway wrote
//! them on its dead-letter copy (`consumer::settle`'s copies): the
//! dead-lettering time, the last failure's status and kind, and the
//! message id.
//!
//! A dead letter the broker put there itself (expired or dropped from the
//! main queue, with `x-death` and none of the gateway's headers) has no
//! time, status or kind, so only a filter without those takes it.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use lapin::types::AMQPValue;
use lapin::BasicProperties;

use crate::headers;
use crate::{BadStatusFilter, ErrorKind, StatusFilter};

/// The most message ids one filter names: the set is held for the walk.
pub const MAX_MESSAGE_IDS: usize = 1_000;
/// AMQP's `message-id` is a short string.
const MAX_MESSAGE_ID_BYTES: usize = 255;

/// A replay filter as the caller wrote it; every field may be absent.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilterInput {
    /// RFC 3339; dead-lettered at or after it.
    pub since: Option<String>,
    /// RFC 3339; dead-lettered before it.
    pub until: Option<String>,
    /// `503` or `5xx`: the target's answer at the last failure.
    pub status: Option<String>,
    /// An `ErrorKind` name: the last failure's kind.
    pub error_kind: Option<String>,
    /// 1 to `MAX_MESSAGE_IDS` message ids.
    pub message_ids: Option<Vec<String>>,
}

/// Which part of a `ReplayFilterInput` is wrong. Callers name the field in
/// their own vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayFilterError {
    /// `since` is not an RFC 3339 time.
    #[error("an RFC 3339 time, e.g. 2026-12-07T10:00:00Z")]
    Since,
    /// `until` is not an RFC 3339 time.
    #[error("an RFC 3339 time, e.g. 2026-12-07T10:00:00Z")]
    Until,
    /// `until` is not later than `since`: nothing could match.
    #[error("later than since")]
    UntilNotAfterSince,
    /// `status` is neither a code nor a class.
    #[error("{0}")]
    Status(BadStatusFilter),
    /// `error_kind` names no `ErrorKind`.
    #[error("one of {}", ErrorKind::ALL.map(ErrorKind::as_str).join(", "))]
    ErrorKind,
    /// `message_ids` is empty or longer than `MAX_MESSAGE_IDS`.
    #[error("1 to {MAX_MESSAGE_IDS} message ids, not {0}")]
    MessageIdCount(usize),
    /// The message id at this index (0-based) is empty or too long.
    #[error("item {0} is not 1 to {MAX_MESSAGE_ID_BYTES} bytes")]
    MessageId(usize),
}

/// Which dead letters a replay takes: those meeting every condition given
/// (none given: every one). Times are the dead-lettering time, `since`
/// inclusive and `until` exclusive, as `/getAttempts` reads its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayFilter {
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    status: Option<StatusFilter>,
    error_kind: Option<ErrorKind>,
    message_ids: Option<HashSet<String>>,
}

impl ReplayFilter {
    /// The filter that takes every dead letter.
    pub fn everything() -> Self {
        Self::default()
    }

    /// The filter `input` describes, or the first thing wrong with it.
    /// Nothing is trimmed: a JSON body says exactly what it means.
    pub fn parse(input: ReplayFilterInput) -> Result<Self, ReplayFilterError> {
        let since = input
            .since
            .as_deref()
            .map(|raw| rfc3339(raw).ok_or(ReplayFilterError::Since))
            .transpose()?;
        let until = input
            .until
            .as_deref()
            .map(|raw| rfc3339(raw).ok_or(ReplayFilterError::Until))
            .transpose()?;
        if let (Some(since), Some(until)) = (since, until) {
            if until <= since {
                return Err(ReplayFilterError::UntilNotAfterSince);
            }
        }
        let status = input
            .status
            .as_deref()
            .map(|raw| StatusFilter::parse(raw).map_err(ReplayFilterError::Status))
            .transpose()?;
        let error_kind = input
            .error_kind
            .as_deref()
            .map(|raw| ErrorKind::parse(raw).ok_or(ReplayFilterError::ErrorKind))
            .transpose()?;
        let message_ids = input.message_ids.map(message_id_set).transpose()?;
        Ok(Self {
            since,
            until,
            status,
            error_kind,
            message_ids,
        })
    }

    /// Whether the dead letter with these properties is one to replay.
    pub fn matches(&self, properties: &BasicProperties) -> bool {
        if let Some(ids) = &self.message_ids {
            let listed = properties
                .message_id()
                .as_ref()
                .is_some_and(|id| ids.contains(id.as_str()));
            if !listed {
                return false;
            }
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(at) = headers::text(properties, headers::DEAD_LETTERED_AT)
                .as_deref()
                .and_then(rfc3339)
            else {
                return false;
            };
            if self.since.is_some_and(|since| at < since)
                || self.until.is_some_and(|until| at >= until)
            {
                return false;
            }
        }
        if let Some(status) = self.status {
            if !last_status(properties).is_some_and(|s| status.matches(s)) {
                return false;
            }
        }
        if let Some(kind) = self.error_kind {
            if headers::text(properties, headers::LAST_ERROR_KIND).as_deref() != Some(kind.as_str())
            {
                return false;
            }
        }
        true
    }
}

fn rfc3339(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn message_id_set(ids: Vec<String>) -> Result<HashSet<String>, ReplayFilterError> {
    if ids.is_empty() || ids.len() > MAX_MESSAGE_IDS {
        return Err(ReplayFilterError::MessageIdCount(ids.len()));
    }
    if let Some(index) = ids
        .iter()
        .position(|id| id.is_empty() || id.len() > MAX_MESSAGE_ID_BYTES)
    {
        return Err(ReplayFilterError::MessageId(index));
    }
    Ok(ids.into_iter().collect())
}

/// The target's status at the last failure. The gateway writes it as a
/// 64-bit integer; any integer a tool may have rewritten it as is read.
pub(crate) fn last_status(properties: &BasicProperties) -> Option<u16> {
    let wide: i64 = match headers::value(properties, headers::LAST_STATUS)? {
        AMQPValue::LongLongInt(v) => *v,
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        _ => return None,
    };
    u16::try_from(wide).ok()
}

#[cfg(test)]
mod tests {
    use lapin::types::FieldTable;

    use super::*;

    fn letter(
        id: Option<&str>,
        at: Option<&str>,
        status: Option<i64>,
        kind: Option<&str>,
    ) -> BasicProperties {
        let mut table = FieldTable::default();
        if let Some(at) = at {
            table.insert(
                headers::DEAD_LETTERED_AT.into(),
                AMQPValue::LongString(at.into()),
            );
        }
        if let Some(status) = status {
            table.insert(headers::LAST_STATUS.into(), AMQPValue::LongLongInt(status));
        }
        if let Some(kind) = kind {
            table.insert(
                headers::LAST_ERROR_KIND.into(),
                AMQPValue::LongString(kind.into()),
            );
        }
        let properties = BasicProperties::default().with_headers(table);
        match id {
            Some(id) => properties.with_message_id(id.into()),
            None => properties,
        }
    }

    fn filter(input: ReplayFilterInput) -> ReplayFilter {
        ReplayFilter::parse(input).expect("a valid filter")
    }

    fn some(raw: &str) -> Option<String> {
        Some(raw.to_owned())
    }

    const AT: &str = "2026-03-01T10:00:00+00:00";

    #[test]
    fn the_empty_filter_takes_every_dead_letter_even_the_brokers_own() {
        let everything = ReplayFilter::everything();
        assert_eq!(filter(ReplayFilterInput::default()), everything);
        assert!(everything.matches(&letter(Some("a"), Some(AT), Some(503), Some("http_status"))));
        assert!(everything.matches(&BasicProperties::default()));
    }

    #[test]
    fn status_takes_a_code_or_a_class_and_never_a_letter_without_one() {
        let code = filter(ReplayFilterInput {
            status: some("503"),
            ..Default::default()
        });
        let class = filter(ReplayFilterInput {
            status: some("5xx"),
            ..Default::default()
        });
        let timeout = letter(None, Some(AT), None, Some("timeout"));
        for (status, by_code, by_class) in
            [(503, true, true), (500, false, true), (422, false, false)]
        {
            let l = letter(None, Some(AT), Some(status), Some("http_status"));
            assert_eq!(code.matches(&l), by_code, "{status}");
            assert_eq!(class.matches(&l), by_class, "{status}");
        }
        assert!(!code.matches(&timeout) && !class.matches(&timeout));
    }

    #[test]
    fn a_status_rewritten_as_another_integer_still_reads() {
        let mut table = FieldTable::default();
        table.insert(headers::LAST_STATUS.into(), AMQPValue::LongInt(503));
        let l = BasicProperties::default().with_headers(table);
        assert_eq!(last_status(&l), Some(503));
        let mut table = FieldTable::default();
        table.insert(headers::LAST_STATUS.into(), AMQPValue::LongLongInt(70_000));
        assert_eq!(
            last_status(&BasicProperties::default().with_headers(table)),
            None
        );
    }

    #[test]
    fn error_kind_takes_that_kind_only() {
        let f = filter(ReplayFilterInput {
            error_kind: some("timeout"),
            ..Default::default()
        });
        assert!(f.matches(&letter(None, Some(AT), None, Some("timeout"))));
        assert!(!f.matches(&letter(None, Some(AT), Some(503), Some("http_status"))));
        assert!(!f.matches(&letter(None, Some(AT), None, None)));
    }

    #[test]
    fn times_are_since_inclusive_and_until_exclusive_on_the_dead_lettering() {
        let f = filter(ReplayFilterInput {
            since: some("2026-03-01T10:00:00Z"),
            until: some("2026-03-01T11:00:00Z"),
            ..Default::default()
        });
        for (at, taken) in [
            ("2026-03-01T10:00:00+00:00", true),
            ("2026-03-01T12:30:00+02:00", true),
            ("2026-03-01T09:59:59.999+00:00", false),
            ("2026-03-01T11:00:00+00:00", false),
        ] {
            assert_eq!(
                f.matches(&letter(None, Some(at), None, None)),
                taken,
                "{at}"
            );
        }
        assert!(
            !f.matches(&letter(None, None, None, None)),
            "no time, no match"
        );
        assert!(!f.matches(&letter(None, Some("garbled"), None, None)));
    }

    #[test]
    fn message_ids_take_the_listed_ones_and_never_a_letter_without_an_id() {
        let f = filter(ReplayFilterInput {
            message_ids: Some(vec!["a".into(), "b".into(), "a".into()]),
            ..Default::default()
        });
        assert!(f.matches(&letter(Some("a"), None, None, None)));
        assert!(f.matches(&letter(Some("b"), None, None, None)));
        assert!(!f.matches(&letter(Some("c"), None, None, None)));
        assert!(!f.matches(&letter(None, None, None, None)));
    }

    #[test]
    fn every_condition_must_hold() {
        let f = filter(ReplayFilterInput {
            status: some("503"),
            error_kind: some("http_status"),
            message_ids: Some(vec!["a".into()]),
            since: some("2026-01-01T00:00:00Z"),
            ..Default::default()
        });
        assert!(f.matches(&letter(Some("a"), Some(AT), Some(503), Some("http_status"))));
        assert!(!f.matches(&letter(Some("b"), Some(AT), Some(503), Some("http_status"))));
        assert!(!f.matches(&letter(Some("a"), Some(AT), Some(502), Some("http_status"))));
        assert!(!f.matches(&letter(
            Some("a"),
            Some("2025-12-31T23:59:59Z"),
            Some(503),
            Some("http_status")
        )));
    }

    #[test]
    fn bad_input_names_what_is_wrong() {
        let parse = |input: ReplayFilterInput| ReplayFilter::parse(input).map(|_| ());
        assert_eq!(
            parse(ReplayFilterInput {
                since: some("yesterday"),
                ..Default::default()
            }),
            Err(ReplayFilterError::Since)
        );
        assert_eq!(
            parse(ReplayFilterInput {
                until: some(" 2026-03-01T10:00:00Z"),
                ..Default::default()
            }),
            Err(ReplayFilterError::Until)
        );
        assert_eq!(
            parse(ReplayFilterInput {
                since: some("2026-03-01T10:00:00Z"),
                until: some("2026-03-01T10:00:00Z"),
                ..Default::default()
            }),
            Err(ReplayFilterError::UntilNotAfterSince)
        );
        assert_eq!(
            parse(ReplayFilterInput {
                status: some("6xx"),
                ..Default::default()
            }),
            Err(ReplayFilterError::Status(BadStatusFilter))
        );
        for kind in ["nope", "Timeout", " timeout", ""] {
            assert_eq!(
                parse(ReplayFilterInput {
                    error_kind: some(kind),
                    ..Default::default()
                }),
                Err(ReplayFilterError::ErrorKind),
                "{kind:?}"
            );
        }
        assert_eq!(
            parse(ReplayFilterInput {
                message_ids: Some(vec![]),
                ..Default::default()
            }),
            Err(ReplayFilterError::MessageIdCount(0))
        );
        assert_eq!(
            parse(ReplayFilterInput {
                message_ids: Some(vec!["x".into(); MAX_MESSAGE_IDS + 1]),
                ..Default::default()
            }),
            Err(ReplayFilterError::MessageIdCount(MAX_MESSAGE_IDS + 1))
        );
        assert_eq!(
            parse(ReplayFilterInput {
                message_ids: Some(vec!["ok".into(), "é".repeat(128)]),
                ..Default::default()
            }),
            Err(ReplayFilterError::MessageId(1)),
            "256 bytes in 128 characters"
        );
        assert!(ReplayFilterError::ErrorKind
            .to_string()
            .contains("http_status"));
    }
}

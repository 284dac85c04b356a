//! The gateway's own message and HTTP headers: one home for the reserved prefix.
//!
//! Every header the gateway writes (on retry and dead-letter copies, and on
//! forwarded HTTP requests) starts with `PREFIX`; publishers may not set
//! such headers themselves, and a replayed dead letter sheds them. Also how
//! a message's headers are read.

use lapin::types::AMQPValue;
use lapin::BasicProperties;

/// The reserved prefix of every header the gateway writes.
pub const PREFIX: &str = "x-workerrmq-";

/// 1-based number of the attempt a copy (or a forwarded request) is for.
pub const ATTEMPT: &str = "x-workerrmq-attempt";
/// Why the last attempt failed, on retry and dead-letter copies.
pub const LAST_ERROR: &str = "x-workerrmq-last-error";
/// The last failure's kind (`ErrorKind::as_str`), on retry and dead-letter
/// copies: what replay filters read.
pub const LAST_ERROR_KIND: &str = "x-workerrmq-last-error-kind";
/// The target's status at the last failure, when it answered.
pub const LAST_STATUS: &str = "x-workerrmq-last-status";
/// On a dead letter replayed to its main queue: when (RFC 3339). Only the
/// next attempt counts as the replay's; copies leave it out.
pub const REPLAYED_AT: &str = "x-workerrmq-replayed-at";
/// When a message was dead-lettered (RFC 3339).
pub const DEAD_LETTERED_AT: &str = "x-workerrmq-dead-lettered-at";
/// The main queue a dead letter came from; on a forwarded request, the
/// queue it was consumed from.
pub const QUEUE: &str = "x-workerrmq-queue";
/// On a batch request: how many messages its body holds.
pub const BATCH_SIZE: &str = "x-workerrmq-batch-size";
/// Set by quorum queues on a redelivery: how many times the broker
/// delivered this message before without an outcome (a nack with requeue,
/// a channel or connection lost). It belongs to the delivery, not to the
/// message: copies do not carry it on.
pub const DELIVERY_COUNT: &str = "x-delivery-count";

/// A header's value, if the message has it.
pub fn value<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    properties
        .headers()
        .as_ref()?
        .inner()
        .iter()
        .find(|(k, _)| k.as_str() == name)
        .map(|(_, v)| v)
}

/// A string header's text (lossy UTF-8); `None` when absent or not a string.
pub fn text(properties: &BasicProperties, name: &str) -> Option<String> {
    match value(properties, name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// The names of the message's headers.
pub fn names(properties: &BasicProperties) -> Vec<String> {
    properties
        .headers()
        .as_ref()
        .map(|t| t.inner().keys().map(|k| k.to_string()).collect())
        .unwrap_or_default()
}

/// Whether `name` (any case) is one of the gateway's own headers.
pub fn is_reserved(name: &str) -> bool {
    // Bytes, not a `str` slice: a name from outside may put a multi-byte
    // character across the prefix's end.
    name.as_bytes()
        .get(..PREFIX.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(PREFIX.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_multibyte_characters_are_judged_without_panicking() {
        assert!(!is_reserved("aéééééé"));
        assert!(!is_reserved("x-workerrmqé"));
        assert!(is_reserved("X-WorkerRMQ-é"));
    }

    #[test]
    fn every_gateway_header_carries_the_prefix() {
        for name in [
            ATTEMPT,
            LAST_ERROR,
            LAST_ERROR_KIND,
            LAST_STATUS,
            REPLAYED_AT,
            DEAD_LETTERED_AT,
            QUEUE,
        ] {
            assert!(name.starts_with(PREFIX), "{name}");
            assert!(is_reserved(name));
        }
        assert!(is_reserved("X-WorkerRMQ-Anything"));
        assert!(!is_reserved("x-workerrmq"));
        assert!(!is_reserved("x-death"));
    }
}

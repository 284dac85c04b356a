//! The properties of the retry and dead-letter copies, made to fit.
//!
//! A copy keeps what the original carried (content type, correlation id,
//! the publisher's headers, …) and adds the gateway's bookkeeping headers.
//! It leaves out `user_id`, which the broker only accepts from a connection
//! of that very user (the gateway publishes copies as itself), and the
//! publisher's per-message `expiration`, so a copy cannot quietly vanish from
//! a delay or dead-letter queue (RabbitMQ's own dead-lettering drops it too).
//! A retry copy carries the gateway's own instead: its delay, the same as the
//! delay queue's `x-message-ttl`. A RabbitMQ 3.10 quorum delay queue expires
//! only from its head, and after its leader's node stopped the new leader's
//! head was seen without the queue-level expiry, holding every retry behind
//! it for good; with the per-message expiry as well, it was not (README,
//! Scale-out).
//!
//! A copy whose header frame would exceed the negotiated `frame_max` would
//! make the broker close the publish connection, and the original would come
//! back after the reconnect to do it again. Such a copy is trimmed instead,
//! step by step, until it fits: the bookkeeping headers give way to one short
//! `x-workerrmq-last-error`; then that goes; then the message id the gateway
//! assigned; and last, should even the original's own headers not fit, they
//! go too. The original fitted the same broker's frames, so one step fits.

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;

use crate::consumer::target::{Failure, IncomingMessage};
use crate::headers;
use crate::message_size::header_frame_size;

/// Longest error text carried in a full copy's header.
const MAX_REASON_BYTES: usize = 1_000;
/// Longest error text in the one header a trimmed copy keeps.
const MAX_SHORT_REASON_BYTES: usize = 200;
/// Ends the reason a trimmed copy carries, so an operator knows why the
/// attempt count and the rest are missing.
pub(crate) const TRIMMED_NOTE: &str = "other gateway headers left out to fit the frame";

/// A copy's properties, and whether they had to be trimmed to fit.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum CopyFit {
    /// Everything the gateway wanted to add fits.
    Fits(BasicProperties),
    /// Without (some of) the gateway's headers.
    Trimmed(BasicProperties),
}

/// The copy for attempt `message.attempt + 1`, on its way to the delay
/// queue of `delay_ms`, expiring after that delay.
pub(super) fn retry_copy(
    original: &BasicProperties,
    message: &IncomingMessage,
    failure: &Failure,
    delay_ms: u64,
    frame_max: Option<u32>,
) -> CopyFit {
    let extra = attempt_and_error(message.attempt + 1, failure);
    let full = with_headers(original, message, &extra).with_expiration(delay_ms.to_string().into());
    fit(full, original, message, &failure.reason, frame_max)
}

/// The copy for `<queue>.dlq`, with attempts, last error and time.
pub(super) fn dead_letter_copy(
    original: &BasicProperties,
    message: &IncomingMessage,
    failure: &Failure,
    frame_max: Option<u32>,
) -> CopyFit {
    let mut extra = attempt_and_error(message.attempt, failure);
    extra.push((
        headers::DEAD_LETTERED_AT,
        text(&chrono::Utc::now().to_rfc3339(), MAX_REASON_BYTES),
    ));
    extra.push((
        headers::QUEUE,
        text(message.queue.as_str(), MAX_REASON_BYTES),
    ));
    let full = with_headers(original, message, &extra);
    fit(full, original, message, &failure.reason, frame_max)
}

/// The attempt count and the last failure: its reason, kind and status
/// (replays filter by the last two).
fn attempt_and_error(attempt: u32, failure: &Failure) -> Vec<(&'static str, AMQPValue)> {
    let mut extra = vec![
        (headers::ATTEMPT, AMQPValue::LongLongInt(i64::from(attempt))),
        (headers::LAST_ERROR, text(&failure.reason, MAX_REASON_BYTES)),
        (
            headers::LAST_ERROR_KIND,
            text(failure.kind.as_str(), MAX_REASON_BYTES),
        ),
    ];
    if let Some(status) = failure.status {
        extra.push((
            headers::LAST_STATUS,
            AMQPValue::LongLongInt(i64::from(status)),
        ));
    }
    extra
}

/// `full` if it fits, else the first trimmed step that does.
fn fit(
    full: BasicProperties,
    original: &BasicProperties,
    message: &IncomingMessage,
    reason: &str,
    frame_max: Option<u32>,
) -> CopyFit {
    let Some(frame_max) = frame_max.map(|m| m as usize) else {
        // Not connected: the publish fails anyway, and is tried again.
        return CopyFit::Fits(full);
    };
    if header_frame_size(&full) <= frame_max {
        return CopyFit::Fits(full);
    }
    let short_reason = text(
        &format!("{reason} [{TRIMMED_NOTE}]"),
        MAX_SHORT_REASON_BYTES,
    );
    let steps = [
        with_headers(
            original,
            message,
            &[(headers::LAST_ERROR, short_reason.clone())],
        ),
        with_headers(original, message, &[]),
        kept_properties(
            original,
            None,
            original.headers().clone().unwrap_or_default(),
        ),
    ];
    for step in steps {
        if header_frame_size(&step) <= frame_max {
            return CopyFit::Trimmed(step);
        }
    }
    let mut only_the_reason = FieldTable::default();
    only_the_reason.insert(headers::LAST_ERROR.into(), short_reason);
    CopyFit::Trimmed(kept_properties(original, None, only_the_reason))
}

/// The original's headers plus `extra`, with the stable message id.
fn with_headers(
    original: &BasicProperties,
    message: &IncomingMessage,
    extra: &[(&str, AMQPValue)],
) -> BasicProperties {
    // The replay mark is for the first attempt after the replay only, and a
    // status from an earlier failure must not outlive a later one without.
    let mut table = FieldTable::default();
    if let Some(own) = original.headers() {
        for (name, value) in own.inner() {
            if name.as_str() != headers::REPLAYED_AT && name.as_str() != headers::LAST_STATUS {
                table.insert(name.clone(), value.clone());
            }
        }
    }
    for (name, value) in extra {
        table.insert((*name).into(), value.clone());
    }
    kept_properties(original, Some(&message.message_id), table)
}

/// The original's properties a copy keeps, persistent, with these headers
/// and message id (the original's own when `None`). Also what a replayed
/// dead letter carries.
pub(crate) fn kept_properties(
    original: &BasicProperties,
    message_id: Option<&str>,
    table: FieldTable,
) -> BasicProperties {
    // A stale broker count on a copy would read as redeliveries of it.
    let table = if table.contains_key(headers::DELIVERY_COUNT) {
        let mut kept = FieldTable::default();
        for (name, value) in table.inner() {
            if name.as_str() != headers::DELIVERY_COUNT {
                kept.insert(name.clone(), value.clone());
            }
        }
        kept
    } else {
        table
    };
    let mut copy = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(table);
    match message_id {
        Some(id) => copy = copy.with_message_id(id.to_owned().into()),
        None => {
            if let Some(v) = original.message_id() {
                copy = copy.with_message_id(v.clone());
            }
        }
    }
    macro_rules! keep {
        ($($get:ident => $set:ident),* $(,)?) => {
            $(if let Some(v) = original.$get() {
                copy = copy.$set(v.to_owned());
            })*
        };
    }
    keep!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        timestamp => with_timestamp,
        kind => with_type,
        app_id => with_app_id,
        cluster_id => with_cluster_id,
    );
    copy
}

fn text(value: &str, max_bytes: usize) -> AMQPValue {
    let mut end = value.len().min(max_bytes);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    AMQPValue::LongString(LongString::from(value.as_bytes()[..end].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QueueName;

    fn message() -> IncomingMessage {
        IncomingMessage {
            queue: QueueName::parse("orders").unwrap(),
            message_id: "m-1".into(),
            payload: bytes::Bytes::new(),
            content_type: None,
            attempt: 2,
            trace: None,
            replayed: false,
            envelope: None,
            added_headers: Vec::new(),
        }
    }

    fn boom() -> Failure {
        Failure::status(503, "target answered 503")
    }

    fn original_with_header_of(len: usize) -> BasicProperties {
        let mut table = FieldTable::default();
        table.insert(
            "big".into(),
            AMQPValue::LongString(LongString::from(vec![b'x'; len])),
        );
        BasicProperties::default()
            .with_headers(table)
            .with_user_id("alice".into())
            .with_expiration("60000".into())
            .with_correlation_id("c-9".into())
    }

    #[test]
    fn copies_drop_user_id_and_expiration_and_keep_the_rest() {
        let CopyFit::Fits(copy) = dead_letter_copy(
            &original_with_header_of(10),
            &message(),
            &boom(),
            Some(131_072),
        ) else {
            panic!("a small copy fits");
        };
        assert_eq!(copy.user_id(), &None);
        assert_eq!(copy.expiration(), &None);
        assert_eq!(
            copy.correlation_id().as_ref().map(|c| c.as_str()),
            Some("c-9")
        );
        assert_eq!(copy.message_id().as_ref().map(|c| c.as_str()), Some("m-1"));
        let names = headers::names(&copy);
        for name in [
            "big",
            headers::ATTEMPT,
            headers::LAST_ERROR,
            headers::LAST_ERROR_KIND,
            headers::LAST_STATUS,
            headers::QUEUE,
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        assert_eq!(
            headers::text(&copy, headers::LAST_ERROR_KIND).as_deref(),
            Some("http_status")
        );
        assert_eq!(
            headers::value(&copy, headers::LAST_STATUS),
            Some(&AMQPValue::LongLongInt(503))
        );
    }

    #[test]
    fn a_retry_copy_sheds_the_replay_mark_and_an_old_status() {
        let mut table = FieldTable::default();
        table.insert(
            headers::REPLAYED_AT.into(),
            text("2026-01-01T00:00:00Z", 100),
        );
        table.insert(headers::LAST_STATUS.into(), AMQPValue::LongLongInt(503));
        let original = BasicProperties::default().with_headers(table);
        let timeout = Failure::new(crate::consumer::ErrorKind::Timeout, "no answer");
        let CopyFit::Fits(copy) = retry_copy(&original, &message(), &timeout, 1_000, Some(131_072))
        else {
            panic!("a small copy fits");
        };
        assert_eq!(headers::value(&copy, headers::REPLAYED_AT), None);
        assert_eq!(headers::value(&copy, headers::LAST_STATUS), None);
        assert_eq!(
            headers::text(&copy, headers::LAST_ERROR_KIND).as_deref(),
            Some("timeout")
        );
    }

    #[test]
    fn a_retry_copy_expires_after_its_delay_not_the_publishers_expiration() {
        let CopyFit::Fits(copy) = retry_copy(
            &original_with_header_of(10),
            &message(),
            &boom(),
            30_000,
            Some(131_072),
        ) else {
            panic!("a small copy fits");
        };
        assert_eq!(
            copy.expiration().as_ref().map(|e| e.as_str()),
            Some("30000")
        );
        assert_eq!(copy.user_id(), &None);
    }

    #[test]
    fn a_copy_over_the_frame_keeps_one_short_reason_header() {
        let frame_max = 4_096u32;
        // The original fits with room for a short header, not for all.
        let original = original_with_header_of(3_500);
        let failure = Failure::new(crate::consumer::ErrorKind::Handler, "e".repeat(900));
        let CopyFit::Trimmed(copy) =
            dead_letter_copy(&original, &message(), &failure, Some(frame_max))
        else {
            panic!("the full copy does not fit");
        };
        assert!(header_frame_size(&copy) <= frame_max as usize);
        let gateway_headers: Vec<String> = headers::names(&copy)
            .into_iter()
            .filter(|n| headers::is_reserved(n))
            .collect();
        assert_eq!(gateway_headers, [headers::LAST_ERROR]);
        assert_eq!(copy.user_id(), &None);
    }

    #[test]
    fn an_original_at_the_limit_is_copied_without_additions() {
        let frame_max = 4_096u32;
        let mut size = 3_900;
        // The largest header whose original (with the message id) fits.
        while header_frame_size(&original_with_header_of(size + 1).with_message_id("m-1".into()))
            <= frame_max as usize
        {
            size += 1;
        }
        let original = original_with_header_of(size).with_message_id("m-1".into());
        let CopyFit::Trimmed(copy) =
            retry_copy(&original, &message(), &boom(), 2_000, Some(frame_max))
        else {
            panic!("no room for bookkeeping");
        };
        assert!(header_frame_size(&copy) <= frame_max as usize);
        assert!(headers::names(&copy)
            .iter()
            .all(|n| !headers::is_reserved(n)));
    }

    #[test]
    fn even_headers_larger_than_the_frame_end_in_a_copy_that_fits() {
        let CopyFit::Trimmed(copy) = dead_letter_copy(
            &original_with_header_of(10_000),
            &message(),
            &boom(),
            Some(4_096),
        ) else {
            panic!("cannot fit");
        };
        assert!(header_frame_size(&copy) <= 4_096);
        assert_eq!(headers::names(&copy), [headers::LAST_ERROR]);
    }
}

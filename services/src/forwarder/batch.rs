//! Batch delivery over HTTP: the request body a batch consumer sends, and
//! how the target's answer settles each message in it.
//!
//! Body: a JSON array, one element per message, `{"id", "attempt",
//! "contentType", "payload"}`; `payload` is the message itself when it
//! parses as JSON, else it goes as `payloadBase64`. The answer: a 2xx
//! delivers the whole batch unless its body names messages to retry or to
//! dead-letter (`{"retry": [ids], "reject": [ids]}`); any other status
//! settles every message as a single delivery's would be.

use std::collections::HashSet;

use base64::Engine;
use gateway::{BatchOutcome, DeliveryOutcome, ErrorKind, Failure, IncomingMessage};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Most of a 2xx answer read for its retry and reject lists: 1,000 ids of
/// 100 bytes fit many times over. A longer answer delivers the batch whole.
pub(super) const MAX_ANSWER_BYTES: usize = 1024 * 1024;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Element<'a> {
    id: &'a str,
    attempt: u32,
    content_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

/// The request body for `messages`.
pub(super) fn body(messages: &[IncomingMessage]) -> Vec<u8> {
    let elements: Vec<Element<'_>> = messages
        .iter()
        .map(|message| {
            // Embedded as it came, not parsed into a tree and written again.
            let json = serde_json::from_slice::<&RawValue>(&message.payload).ok();
            Element {
                id: &message.message_id,
                attempt: message.attempt,
                content_type: message.content_type.as_deref(),
                payload: json,
                payload_base64: json
                    .is_none()
                    .then(|| base64::engine::general_purpose::STANDARD.encode(&message.payload)),
            }
        })
        .collect();
    // Sized up front: a batch body is ~100 KiB, and growing a vector to
    // that by doubling copies it about twice over.
    let capacity = messages
        .iter()
        .map(|m| m.payload.len() * 4 / 3 + m.message_id.len() + ELEMENT_OVERHEAD)
        .sum();
    let mut body = Vec::with_capacity(capacity);
    // Strings, numbers and JSON already checked: nothing here can fail.
    match serde_json::to_writer(&mut body, &elements) {
        Ok(()) => body,
        Err(_) => b"[]".to_vec(),
    }
}

/// An element's bytes besides its payload and id: the keys, the attempt and
/// a content type.
const ELEMENT_OVERHEAD: usize = 96;

/// What a 2xx answer may ask for; anything else in it is ignored.
#[derive(Debug, Default, Deserialize)]
struct Answer {
    #[serde(default)]
    retry: Vec<String>,
    #[serde(default)]
    reject: Vec<String>,
}

/// Each message's outcome after a 2xx answered with `answer` (its body, up
/// to `MAX_ANSWER_BYTES`; `None` when longer). An id named in both lists is
/// dead-lettered; ids the batch does not hold are ignored.
pub(super) fn after_success(
    batch_id: &str,
    messages: &[IncomingMessage],
    answer: Option<&[u8]>,
) -> BatchOutcome {
    let answer: Answer = match answer {
        Some(bytes) if !bytes.iter().all(u8::is_ascii_whitespace) => {
            serde_json::from_slice(bytes).unwrap_or_else(|err| {
                tracing::warn!(batch_id, error = %gateway::Chain(&err), "a 2xx answer that is not a retry/reject object: the batch is delivered whole");
                Answer::default()
            })
        }
        Some(_) => Answer::default(),
        None => {
            tracing::warn!(
                batch_id,
                "a 2xx answer over {MAX_ANSWER_BYTES} bytes: the batch is delivered whole"
            );
            Answer::default()
        }
    };
    let retry: HashSet<&str> = answer.retry.iter().map(String::as_str).collect();
    let reject: HashSet<&str> = answer.reject.iter().map(String::as_str).collect();
    let messages = messages
        .iter()
        .map(|message| {
            let id = message.message_id.as_str();
            if reject.contains(id) {
                DeliveryOutcome::reject(Failure::new(
                    ErrorKind::Handler,
                    "the target rejected it in its batch answer",
                ))
            } else if retry.contains(id) {
                DeliveryOutcome::retry(Failure::new(
                    ErrorKind::Handler,
                    "the target asked for a retry in its batch answer",
                ))
            } else {
                DeliveryOutcome::Delivered
            }
        })
        .collect();
    BatchOutcome {
        request: DeliveryOutcome::Delivered,
        sent: None,
        answer: None,
        messages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway::QueueName;

    fn message(id: &str, payload: &[u8]) -> IncomingMessage {
        IncomingMessage {
            queue: QueueName::parse("orders").unwrap(),
            message_id: id.into(),
            payload: payload.to_vec().into(),
            content_type: Some("application/json".into()),
            attempt: 2,
            trace: None,
            replayed: false,
            envelope: None,
            added_headers: Vec::new(),
        }
    }

    #[test]
    fn json_payloads_are_embedded_and_the_rest_goes_as_base64() {
        let messages = [
            message("a", br#"{"order": 42}"#),
            message("b", b"\xff\x00binary"),
            message("c", b"not json"),
        ];
        let body: serde_json::Value = serde_json::from_slice(&body(&messages)).unwrap();
        assert_eq!(
            body,
            serde_json::json!([
                {"id": "a", "attempt": 2, "contentType": "application/json", "payload": {"order": 42}},
                {"id": "b", "attempt": 2, "contentType": "application/json", "payloadBase64": "/wBiaW5hcnk="},
                {"id": "c", "attempt": 2, "contentType": "application/json", "payloadBase64": "bm90IGpzb24="},
            ])
        );
    }

    #[test]
    fn a_2xx_answer_settles_the_named_ids_and_delivers_the_rest() {
        let messages = [message("a", b"1"), message("b", b"2"), message("c", b"3")];
        let outcome = after_success(
            "batch",
            &messages,
            Some(br#"{"retry": ["b", "zz"], "reject": ["c", "b"]}"#),
        );
        assert_eq!(outcome.request, DeliveryOutcome::Delivered);
        assert_eq!(outcome.messages[0], DeliveryOutcome::Delivered);
        assert!(
            matches!(outcome.messages[1], DeliveryOutcome::Reject { .. }),
            "reject wins"
        );
        assert!(matches!(
            outcome.messages[2],
            DeliveryOutcome::Reject { .. }
        ));
        let only_retry = after_success("batch", &messages, Some(br#"{"retry": ["a"]}"#));
        assert!(matches!(
            only_retry.messages[0],
            DeliveryOutcome::Retry { .. }
        ));
        for whole in [
            None,
            Some(&b""[..]),
            Some(&b"ok"[..]),
            Some(&b"[1]"[..]),
            Some(&b"{}"[..]),
        ] {
            let outcome = after_success("batch", &messages, whole);
            assert!(
                outcome
                    .messages
                    .iter()
                    .all(|o| *o == DeliveryOutcome::Delivered),
                "{whole:?}"
            );
        }
    }
}

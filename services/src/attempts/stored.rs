//! An attempt as stored in the `attempts` collection, and as the API
//! answers it. The engine's `AttemptRecord` becomes one here, off the
//! delivery path: the body is measured and hashed, an id given, the replica
//! named. Nothing stored is a secret: the request keeps header names only
//! and a masked URL (the forwarder's `report`), the error its kind and a
//! reason written never to hold a URL.

use std::fmt::Write as _;

use gateway::AttemptRecord;
use mongodb::bson::DateTime;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One attempt's document. `_id` is a UUID v7 (time-ordered): with
/// `startedAt` it orders the pages of `/getAttempts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredAttempt {
    /// The attempt's id.
    #[serde(rename = "_id")]
    pub attempt_id: String,
    /// The consumer that made it.
    pub consumer_id: String,
    /// The main queue.
    pub queue_name: String,
    /// The message's stable id.
    pub message_id: String,
    /// 1-based.
    pub attempt: u32,
    /// `delivery` or `replay`.
    pub trigger: String,
    /// The batch request it went in, for a batch consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// The gateway replica (`INSTANCE_ID`) that made it.
    pub replica: String,
    /// When it started.
    pub started_at: DateTime,
    /// Till the answer (0 when no call was made).
    pub duration_ms: u64,
    /// `delivered`, `retry_scheduled`, `dead_lettered` or `handed_back`.
    pub outcome: String,
    /// What was sent.
    pub request: StoredRequest,
    /// What came back; `None` without an answer.
    pub response: Option<StoredResponse>,
    /// Why it failed; `None` when delivered.
    pub error: Option<StoredError>,
    /// The message's W3C trace id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// What was sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredRequest {
    /// HTTP method; `None` for a built-in handler or no call.
    pub method: Option<String>,
    /// Masked URL; `None` for a built-in handler or no call.
    pub url: Option<String>,
    /// Header names, never values.
    pub headers: Vec<String>,
    /// The message body's size.
    pub body_bytes: u64,
    /// Its SHA-256, hex: tells two bodies apart without keeping them.
    pub body_sha256: String,
}

/// What came back.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredResponse {
    /// The HTTP status.
    pub status: u16,
    /// Allow-listed headers only.
    pub headers: std::collections::BTreeMap<String, String>,
    /// The body's first `ATTEMPT_BODY_BYTES`; absent for viewers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Whether the body was longer than what is kept.
    pub body_truncated: bool,
}

/// Why it failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredError {
    /// One of the closed set (`gateway::ErrorKind`).
    pub kind: String,
    /// For people; never a URL or a secret.
    pub message: String,
}

impl StoredAttempt {
    /// The document for `record`, made on `replica`.
    pub fn of(record: AttemptRecord, replica: &str) -> Self {
        let digest = Sha256::digest(&record.body);
        let mut body_sha256 = String::with_capacity(64);
        for byte in digest.iter() {
            let _ = write!(body_sha256, "{byte:02x}");
        }
        let (method, url, headers) = match record.request {
            Some(shape) => (
                Some(shape.method.clone()),
                Some(shape.url.clone()),
                shape.headers.clone(),
            ),
            None => (None, None, Vec::new()),
        };
        Self {
            attempt_id: uuid::Uuid::now_v7().to_string(),
            consumer_id: record.consumer_id.to_string(),
            queue_name: record.queue.to_string(),
            message_id: record.message_id,
            attempt: record.attempt,
            trigger: record.trigger.as_str().to_owned(),
            batch_id: record.batch_id,
            replica: replica.to_owned(),
            started_at: DateTime::from_chrono(record.started_at),
            duration_ms: u64::try_from(record.duration.as_millis()).unwrap_or(u64::MAX),
            outcome: record.outcome.as_str().to_owned(),
            request: StoredRequest {
                method,
                url,
                headers,
                body_bytes: record.body.len() as u64,
                body_sha256,
            },
            response: record.answer.map(|answer| StoredResponse {
                status: answer.status,
                headers: answer.headers.into_iter().collect(),
                body: Some(answer.body),
                body_truncated: answer.body_truncated,
            }),
            error: record.error.map(|failure| StoredError {
                kind: failure.kind.as_str().to_owned(),
                message: failure.reason,
            }),
            trace_id: record.trace_id,
        }
    }

    /// As the API answers it: `startedAt` in RFC 3339, and the answer's
    /// body only `with_body` (admins and publishers).
    pub fn to_json(&self, with_body: bool) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            if let Some(id) = object.remove("_id") {
                object.insert("attemptId".into(), id);
            }
            object.insert(
                "startedAt".into(),
                // Always three digits of milliseconds, so the times of a
                // page sort as text too.
                serde_json::Value::String(
                    self.started_at
                        .to_chrono()
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                ),
            );
            if !with_body {
                if let Some(response) = object.get_mut("response").and_then(|r| r.as_object_mut()) {
                    response.remove("body");
                }
            }
        }
        value
    }
}

//! Reading the gateway's answers: `Authorization` header values, the
//! contract's JSON and error bodies, and `/metrics` samples.

use base64::Engine;
use reqwest::{Response, StatusCode};
use serde_json::Value;

/// The value of an `Authorization: Basic` header.
pub fn basic_auth(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// The value of an `Authorization: Bearer` header.
pub fn bearer(api_key: &str) -> String {
    format!("Bearer {api_key}")
}

/// Asserts the contract's error answer — this status and
/// `{"error": code, "message": <non-empty>}` — and returns the body.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> Value {
    let actual = response.status();
    let text = response.text().await.expect("a response body");
    assert_eq!(actual, status, "unexpected status; body: {text}");
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the error body is not JSON ({e}): {text}"));
    assert_eq!(body["error"], code, "unexpected error code: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "the error body has no message: {body}"
    );
    body
}

/// Asserts a 400 `bad_request` whose message names `field` (the request
/// sent is `sent`, shown when it does not) and returns the body.
pub async fn assert_refused_naming(response: Response, field: &str, sent: &Value) -> Value {
    let refused = assert_error(response, StatusCode::BAD_REQUEST, "bad_request").await;
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains(field)),
        "{sent} → {refused}: the message does not name `{field}`"
    );
    refused
}

/// Asserts a 409 `conflict` whose message names every one of `words` (what
/// the caller must change or may do instead) and returns the body.
pub async fn assert_conflict_naming(response: Response, words: &[&str]) -> Value {
    let refused = assert_error(response, StatusCode::CONFLICT, "conflict").await;
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| words.iter().all(|w| m.contains(w))),
        "{refused}: the message does not name every one of {words:?}"
    );
    refused
}

/// Asserts the status and returns the JSON body.
pub async fn assert_json(response: Response, status: StatusCode) -> Value {
    let actual = response.status();
    let text = response.text().await.expect("a response body");
    assert_eq!(actual, status, "unexpected status; body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("the body is not JSON ({e}): {text}"))
}

/// The value of the first `/metrics` sample line starting with `series`
/// (a name with its labels, as the text writes them).
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

//! The header names a transform may not set: the signature's and the
//! gateway's own (the receiver trusts them), the ones the HTTP client owns,
//! the trace's, and `authorization` when the target authenticates itself.

/// Whether a transform may not set `name` (any case).
pub fn is_reserved(name: &str, target_has_auth: bool) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("webhook-")
        || lower.starts_with("x-workerrmq-")
        || matches!(lower.as_str(), "host" | "content-length" | "traceparent")
        || (target_has_auth && lower == "authorization")
}

/// Whether `name` can be an HTTP header name (RFC 9110 token).
pub(crate) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `value` can be an HTTP header value: visible ASCII, spaces and
/// tabs, no line breaks.
pub(crate) fn is_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

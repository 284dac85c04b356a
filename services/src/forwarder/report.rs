//! What a forwarder keeps of an attempt for its record: the request's shape
//! (method, masked URL, header names, never a value) and the answer's
//! status, a short allow-list of headers and the first bytes of its body;
//! and the `ErrorKind` of a request that got no answer.

use std::sync::Arc;

use gateway::{Answer, ErrorKind, RequestShape};
use reqwest::header::HeaderMap;

use crate::masking::masked_url;

/// Answer headers a record keeps: about the answer itself, never a cookie,
/// a token or anything the target may not mean to be kept.
const KEPT_ANSWER_HEADERS: [&str; 6] = [
    "content-type",
    "content-length",
    "retry-after",
    "location",
    "date",
    "server",
];

/// One forwarder's reporting: its request's shape, made once.
#[derive(Debug)]
pub(super) struct Report {
    request: Arc<RequestShape>,
    body_bytes: usize,
}

impl Report {
    /// The shape of the requests to `url`: its method, the URL masked, and the
    /// names of the headers every request carries (the target's own, its
    /// auth's and the gateway's); `bearer` when an OAuth2 token is added to
    /// each.
    pub fn new(
        method: &reqwest::Method,
        url: &reqwest::Url,
        target_headers: &HeaderMap,
        bearer: bool,
        signed: bool,
        body_bytes: usize,
    ) -> Self {
        let mut headers: Vec<String> = ["content-type", "webhook-id", "webhook-timestamp"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        headers.extend(target_headers.keys().map(|name| name.as_str().to_owned()));
        if bearer {
            headers.push("authorization".to_owned());
        }
        headers.push(gateway::headers::QUEUE.to_owned());
        headers.push(gateway::headers::ATTEMPT.to_owned());
        if signed {
            headers.push("webhook-signature".to_owned());
        }
        Self {
            request: Arc::new(RequestShape {
                method: method.as_str().to_owned(),
                url: masked_url(url.as_str()),
                headers,
            }),
            body_bytes,
        }
    }

    /// Bytes of each answer's body the record keeps.
    pub fn body_bytes(&self) -> usize {
        self.body_bytes
    }

    /// The request's shape, shared by every attempt.
    pub fn request(&self) -> Arc<RequestShape> {
        self.request.clone()
    }

    /// The allow-listed headers of an answer.
    pub fn kept_headers(&self, headers: &HeaderMap) -> Vec<(String, String)> {
        KEPT_ANSWER_HEADERS
            .iter()
            .filter_map(|name| {
                let value = headers.get(*name)?.to_str().ok()?;
                Some(((*name).to_owned(), value.to_owned()))
            })
            .collect()
    }

    /// What the record keeps of an answer with `status` and `headers` whose
    /// body (as far as it was read) is `body`; `cut` when it was not read to
    /// its end.
    pub fn answer_of(
        &self,
        status: u16,
        headers: Vec<(String, String)>,
        body: &[u8],
        cut: bool,
    ) -> Answer {
        let kept = body.len().min(self.body_bytes);
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body[..kept]).into_owned(),
            body_truncated: cut || kept < body.len(),
        }
    }
}

/// The kind of failure of a request that got no answer. reqwest says
/// timeout and connect; DNS and TLS failures are connect errors whose
/// causes tell them apart (hyper's "dns error", rustls's errors), by text
/// because neither type is reachable from here.
pub(super) fn kind_of(err: &reqwest::Error) -> ErrorKind {
    if err.is_timeout() {
        return ErrorKind::Timeout;
    }
    let mut causes = String::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        causes.push_str(&e.to_string().to_ascii_lowercase());
        causes.push('\n');
        current = e.source();
    }
    if causes.contains("dns error") || causes.contains("failed to lookup address") {
        ErrorKind::Dns
    } else if causes.contains("certificate")
        || causes.contains("tls")
        || causes.contains("handshake")
    {
        ErrorKind::Tls
    } else if err.is_connect() {
        ErrorKind::Connect
    } else {
        ErrorKind::Request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(body_bytes: usize) -> Report {
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", "s3cr3t".parse().unwrap());
        Report::new(
            &reqwest::Method::POST,
            &reqwest::Url::parse("https://u:p@hooks.example.com/in?token=abc").unwrap(),
            &headers,
            false,
            true,
            body_bytes,
        )
    }

    #[test]
    fn the_request_keeps_names_and_a_masked_url_never_a_value() {
        let shape = report(10).request();
        assert_eq!(shape.url, "https://hooks.example.com/in?token=***");
        assert!(shape.headers.iter().any(|h| h == "x-api-key"));
        assert!(shape.headers.iter().any(|h| h == "webhook-signature"));
        let shown = format!("{shape:?}");
        assert!(!shown.contains("s3cr3t") && !shown.contains("abc") && !shown.contains(":p@"));
    }

    #[test]
    fn the_body_is_cut_at_the_limit_and_says_so() {
        let answer = report(4).answer_of(503, vec![], b"unavailable", false);
        assert_eq!(answer.body, "unav");
        assert!(answer.body_truncated);
        let whole = report(100).answer_of(200, vec![], b"ok", false);
        assert_eq!(whole.body, "ok");
        assert!(!whole.body_truncated);
        let none = report(0).answer_of(200, vec![], b"ok", false);
        assert_eq!(none.body, "");
        assert!(none.body_truncated);
    }

    #[test]
    fn only_allow_listed_answer_headers_are_kept() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "text/plain".parse().unwrap());
        headers.insert("set-cookie", "session=1".parse().unwrap());
        assert_eq!(
            report(0).kept_headers(&headers),
            [("content-type".to_owned(), "text/plain".to_owned())]
        );
    }
}

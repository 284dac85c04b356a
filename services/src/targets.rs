//! Where a consumer sends its deliveries, as stored and as validated.
//!
//! `TargetUrl` and `SigningSecret` can only be built through their
//! constructors, which enforce the rules (http(s) with a host, the
//! `FORWARD_ALLOWED_HOSTS` guard; `whsec_` + base64 of 24 to 64 bytes), so a
//! consumer with an invalid target cannot exist. `auth` (`target.auth`)
//! and `tls` (`target.tls`) own how the gateway proves itself to a target.

mod auth;
mod tls;

pub use auth::{BasicAuth, BearerAuth, HeaderAuth, OAuth2Auth, TargetAuth, TokenUrl};
pub use tls::{CaRoots, ClientIdentity, TargetTls};

use std::collections::BTreeMap;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::network::{host_listed, http_url, url_host};
use crate::FieldError;

/// Header names the forwarder sets itself; a target may not override them.
pub const RESERVED_HEADERS: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-length",
    "host",
];

/// A handler built into the gateway, which a consumer can use instead of an HTTP endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuiltinHandler {
    /// Creates, updates and deletes users.
    User,
    /// Creates, updates and deletes reports.
    Report,
    /// Runs scrape jobs: fetches the URLs a job names and extracts what they hold.
    Scrape,
}

/// A consumer's target, as stored and as shown by `/getConsumers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TargetSpec {
    /// Forwards each delivery over HTTP.
    Http(HttpTarget),
    /// Hands each delivery to a built-in handler.
    Builtin {
        /// Which handler.
        handler: BuiltinHandler,
    },
}

/// `Debug` shows the URL without its query and header names without their
/// values: both often carry the target's credentials.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpTarget {
    /// Where deliveries go: an http(s) URL with a host.
    pub url: String,
    /// `POST`, `PUT` or `PATCH`: a method that carries the body.
    pub method: String,
    /// Headers added to every request (credentials, usually); their values are never shown.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How long a request may take before it counts as failed and is retried, in milliseconds.
    pub timeout_ms: u64,
    /// Which HTTP version the requests go over. Absent in targets stored
    /// before it existed: `auto`.
    #[serde(default)]
    pub http2: Http2Mode,
    /// How the gateway authenticates to the target; absent: it does not
    /// (beyond `headers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Box<TargetAuth>>,
    /// A client certificate and a private CA; absent: plain server-verified
    /// TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Box<TargetTls>>,
}

/// Whether a target is spoken to over HTTP/2 (`target.http2`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Http2Mode {
    /// HTTP/1.1 only.
    Never,
    /// HTTP/2 when an https target offers it (ALPN), else HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/2 always: over TLS as negotiated, and to an http target as h2c
    /// with prior knowledge. A target that does not speak it fails the
    /// attempt (retried).
    Always,
}

impl std::fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTarget")
            .field("url", &DebugUrl(&self.url))
            .field("method", &self.method)
            .field("headers", &DebugHeaders(Some(&self.headers)))
            .field("timeout_ms", &self.timeout_ms)
            .field("http2", &self.http2)
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .finish()
    }
}

/// A target URL for `Debug`: scheme, host, port and path; no userinfo,
/// query or fragment.
pub struct DebugUrl<'a>(pub &'a str);

impl std::fmt::Debug for DebugUrl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match url::Url::parse(self.0) {
            Ok(url) => write!(
                f,
                "\"{}://{}{}\"",
                url.scheme(),
                url.host_str().unwrap_or_default(),
                url.port().map(|p| format!(":{p}")).unwrap_or_default() + url.path()
            ),
            Err(_) => f.write_str("\"***\""),
        }
    }
}

/// Target headers for `Debug`: the names, each value `***`.
pub struct DebugHeaders<'a>(pub Option<&'a BTreeMap<String, String>>);

impl std::fmt::Debug for DebugHeaders<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(headers) => f
                .debug_map()
                .entries(headers.keys().map(|name| (name, "***")))
                .finish(),
            None => f.write_str("None"),
        }
    }
}

/// A target's timeout when none is given, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
const MAX_TIMEOUT_MS: u64 = 300_000;

/// An http(s) URL with a host, allowed by `FORWARD_ALLOWED_HOSTS`. `Debug`
/// leaves out the query, where tokens often are.
#[derive(Clone, PartialEq, Eq)]
pub struct TargetUrl(url::Url);

impl std::fmt::Debug for TargetUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TargetUrl")
            .field(&DebugUrl(self.0.as_str()))
            .finish()
    }
}

impl TargetUrl {
    /// Refuses a URL that is not http(s), has no host, carries credentials, or names a host outside
    /// `allowed_hosts` when that is set.
    pub fn parse(raw: &str, allowed_hosts: Option<&[String]>) -> Result<Self, FieldError> {
        let url = http_url(raw)
            .map_err(|problem| FieldError::new("target.url", format!("the URL {problem}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(FieldError::new(
                "target.url",
                "put credentials in target.headers, not in the URL",
            ));
        }
        if let Some(allowed) = allowed_hosts {
            let host = url_host(&url).unwrap_or_default();
            if !host_listed(allowed, &host) {
                return Err(FieldError::new(
                    "target.url",
                    format!("host `{host}` is not in FORWARD_ALLOWED_HOSTS"),
                ));
            }
        }
        Ok(Self(url))
    }

    /// The parsed URL.
    pub fn as_url(&self) -> &url::Url {
        &self.0
    }
}

impl HttpTarget {
    /// Validates every part of an HTTP target.
    pub fn parse(
        url: &str,
        method: Option<&str>,
        headers: BTreeMap<String, String>,
        timeout_ms: Option<u64>,
        allowed_hosts: Option<&[String]>,
    ) -> Result<Self, FieldError> {
        let url = TargetUrl::parse(url, allowed_hosts)?;
        let method = method.unwrap_or("POST").to_ascii_uppercase();
        if !matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
            return Err(FieldError::new(
                "target.method",
                format!("`{method}` cannot carry a body; use POST, PUT or PATCH"),
            ));
        }
        for (name, value) in &headers {
            let lower = name.to_ascii_lowercase();
            if RESERVED_HEADERS.contains(&lower.as_str()) || gateway::headers::is_reserved(&lower) {
                return Err(FieldError::new(
                    "target.headers",
                    format!("`{name}` is set by the gateway itself"),
                ));
            }
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                FieldError::new(
                    "target.headers",
                    format!("`{name}` is not a valid header name"),
                )
            })?;
            reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                FieldError::new(format!("target.headers.{name}"), "not a valid header value")
            })?;
        }
        let timeout_ms = timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
            return Err(FieldError::new(
                "target.timeoutMs",
                format!("between 1 and {MAX_TIMEOUT_MS}"),
            ));
        }
        Ok(Self {
            url: url.as_url().to_string(),
            method,
            headers,
            timeout_ms,
            http2: Http2Mode::default(),
            auth: None,
            tls: None,
        })
    }

    /// The same target spoken to over `http2`.
    pub fn with_http2(self, http2: Http2Mode) -> Self {
        Self { http2, ..self }
    }

    /// The same target authenticated with `auth`. The header it sets may
    /// not be in `headers` too: one of the two would silently lose.
    pub fn with_auth(self, auth: Option<TargetAuth>) -> Result<Self, FieldError> {
        if let Some(auth) = &auth {
            let name = auth.header_name();
            if self.headers.keys().any(|h| h.eq_ignore_ascii_case(name)) {
                return Err(FieldError::new(
                    "target.headers",
                    format!(
                        "`{name}` is set by target.auth ({}); remove it from target.headers",
                        auth.kind()
                    ),
                ));
            }
        }
        Ok(Self {
            auth: auth.map(Box::new),
            ..self
        })
    }

    /// The same target spoken to with `tls`.
    pub fn with_tls(self, tls: Option<TargetTls>) -> Self {
        Self {
            tls: tls.map(Box::new),
            ..self
        }
    }

    /// As the API shows it to admins: header values, auth secrets and the
    /// TLS key `***`.
    pub fn masked(mut self) -> Self {
        for value in self.headers.values_mut() {
            *value = "***".into();
        }
        self.auth = self.auth.map(|auth| Box::new(auth.masked()));
        self.tls = self.tls.map(|tls| Box::new(tls.masked()));
        self
    }

    /// As the API shows it to viewers: besides `masked`, the auth's type
    /// alone and only that TLS is set.
    pub fn for_viewer(mut self) -> Self {
        self.auth = self.auth.map(|auth| Box::new(auth.type_only()));
        self.tls = self.tls.map(|tls| Box::new(tls.hidden()));
        self
    }
}

/// A Standard Webhooks secret: `whsec_` + base64 of the HMAC key bytes.
/// Both forms are held in `secrecy` boxes: `Debug` shows neither, and they
/// are zeroed when dropped.
#[derive(Debug, Clone)]
pub struct SigningSecret {
    encoded: SecretString,
    key: SecretSlice<u8>,
}

impl PartialEq for SigningSecret {
    fn eq(&self, other: &Self) -> bool {
        self.encoded.expose_secret() == other.encoded.expose_secret()
    }
}

impl Eq for SigningSecret {}

impl SigningSecret {
    /// Reads a `whsec_<base64>` secret, as the Standard Webhooks spec writes it.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let encoded = raw.strip_prefix("whsec_").ok_or_else(|| {
            FieldError::new(
                "signingSecret",
                "must be `whsec_` followed by base64 of 24 to 64 random bytes",
            )
        })?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| {
                FieldError::new(
                    "signingSecret",
                    "the part after `whsec_` is not valid base64",
                )
            })?;
        if !(24..=64).contains(&key.len()) {
            return Err(FieldError::new(
                "signingSecret",
                format!("the key must be 24 to 64 bytes, this one is {}", key.len()),
            ));
        }
        Ok(Self {
            encoded: SecretString::from(raw),
            key: SecretSlice::from(key),
        })
    }

    /// The secret as given, for storing it.
    pub fn into_encoded(self) -> SecretString {
        self.encoded
    }

    /// `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
    pub fn sign(&self, message_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.expose_secret())
            .expect("HMAC accepts keys of any length");
        mac.update(message_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let signature = mac.finalize().into_bytes();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(signature)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls_must_be_http_with_an_allowed_host() {
        assert!(TargetUrl::parse("http://127.0.0.1:9000/hook", None).is_ok());
        assert!(TargetUrl::parse("ftp://x/y", None).is_err());
        assert!(TargetUrl::parse("not a url", None).is_err());
        assert!(TargetUrl::parse("http://u:p@x/", None).is_err());
        let allowed = vec!["api.example.com".to_string()];
        assert!(TargetUrl::parse("https://api.example.com/x", Some(&allowed)).is_ok());
        let err = TargetUrl::parse("http://169.254.169.254/", Some(&allowed)).unwrap_err();
        assert_eq!(err.field, "target.url");
        assert!(err.problem.contains("FORWARD_ALLOWED_HOSTS"), "{err}");
    }

    #[test]
    fn http_targets_refuse_reserved_headers_and_bodyless_methods() {
        let mut headers = BTreeMap::new();
        headers.insert("webhook-id".to_string(), "x".to_string());
        assert!(HttpTarget::parse("http://h/", None, headers, None, None).is_err());
        assert!(HttpTarget::parse("http://h/", Some("GET"), BTreeMap::new(), None, None).is_err());
        assert!(HttpTarget::parse("http://h/", None, BTreeMap::new(), Some(0), None).is_err());
        let ok = HttpTarget::parse("http://h/", Some("put"), BTreeMap::new(), None, None).unwrap();
        assert_eq!(
            (ok.method.as_str(), ok.timeout_ms),
            ("PUT", DEFAULT_TIMEOUT_MS)
        );
    }

    #[test]
    fn signing_secrets_follow_standard_webhooks() {
        assert!(SigningSecret::parse("plain-secret").is_err());
        assert!(SigningSecret::parse("whsec_!!!").is_err());
        assert!(SigningSecret::parse("whsec_c2hvcnQ=").is_err());
        // The Standard Webhooks reference vector.
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let shown = format!("{secret:?}");
        assert!(
            !shown.contains("MfKQ") && !shown.contains("49, "),
            "{shown}"
        );
    }

    #[test]
    fn debug_hides_target_credentials() {
        let headers = BTreeMap::from([(
            "authorization".to_string(),
            "Bearer t0kenSecret".to_string(),
        )]);
        let target = HttpTarget::parse(
            "https://api.example.com/hook?sig=querySecret",
            None,
            headers,
            None,
            None,
        )
        .unwrap();
        let url = TargetUrl::parse("https://api.example.com/hook?sig=querySecret", None).unwrap();
        assert!(!format!("{url:?}").contains("querySecret"), "{url:?}");
        let shown = format!("{:?}", TargetSpec::Http(target));
        assert!(!shown.contains("t0kenSecret"), "{shown}");
        assert!(!shown.contains("querySecret"), "{shown}");
        assert!(
            shown.contains("authorization") && shown.contains("api.example.com/hook"),
            "{shown}"
        );
    }
}

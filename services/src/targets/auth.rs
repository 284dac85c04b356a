//! `target.auth`: how the gateway proves itself to a target (HTTP Basic, a
//! bearer token, a header of the operator's choosing, or an OAuth2
//! client-credentials grant), as checked on create and as stored.
//!
//! Every secret is a `SecretString`: `Debug` never shows it, and it is
//! written in clear only where the store needs it
//! (`credentials::secret_serde`). What the API answers with is `masked`
//! (each secret `***`) or, for viewers, `type_only` (nothing but the type):
//! an empty field is one the answer leaves out, which a stored record never
//! has, since every constructor refuses empty values.

use base64::Engine;
use reqwest::header::{HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::network::{host_listed, http_url, url_host};
use crate::FieldError;

/// The longest value any one field of `target.auth` may have: far above
/// any real token, far below what would bloat every request.
const MAX_FIELD_BYTES: usize = 8 * 1024;

/// How the gateway authenticates to a target (`target.auth`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TargetAuth {
    /// `Authorization: Basic base64(username:password)` (RFC 7617).
    Basic(BasicAuth),
    /// `Authorization: Bearer <token>` (RFC 6750).
    Bearer(BearerAuth),
    /// One header with a secret value, e.g. `x-api-key`.
    Header(HeaderAuth),
    /// A bearer token from an OAuth2 client-credentials grant (RFC 6749
    /// §4.4), fetched and refreshed by the gateway.
    Oauth2(OAuth2Auth),
}

/// HTTP Basic credentials.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// Without `:`, which would end it early.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// Secret.
    #[serde(
        serialize_with = "credentials::secret_serde::expose",
        skip_serializing_if = "hidden"
    )]
    pub password: SecretString,
}

/// A static bearer token.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BearerAuth {
    /// Secret.
    #[serde(
        serialize_with = "credentials::secret_serde::expose",
        skip_serializing_if = "hidden"
    )]
    pub token: SecretString,
}

/// One header carrying a secret.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderAuth {
    /// A valid header name the gateway does not set itself; lower case.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Secret.
    #[serde(
        serialize_with = "credentials::secret_serde::expose",
        skip_serializing_if = "hidden"
    )]
    pub value: SecretString,
}

/// An OAuth2 client-credentials grant, authenticated with
/// `client_secret_basic`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2Auth {
    /// The authorization server's token endpoint: http(s), under the same
    /// network rules as the target.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub token_url: String,
    /// The client's id at the authorization server.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    /// Secret.
    #[serde(
        serialize_with = "credentials::secret_serde::expose",
        skip_serializing_if = "hidden"
    )]
    pub client_secret: SecretString,
    /// The `scope` parameter of the grant, when the server wants one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The `audience` parameter (Auth0, Okta and others), when wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

/// A secret the answer leaves out (see the module comment).
fn hidden(secret: &SecretString) -> bool {
    secret.expose_secret().is_empty()
}

fn same(a: &SecretString, b: &SecretString) -> bool {
    a.expose_secret() == b.expose_secret()
}

impl PartialEq for BasicAuth {
    fn eq(&self, other: &Self) -> bool {
        self.username == other.username && same(&self.password, &other.password)
    }
}

impl PartialEq for BearerAuth {
    fn eq(&self, other: &Self) -> bool {
        same(&self.token, &other.token)
    }
}

impl PartialEq for HeaderAuth {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && same(&self.value, &other.value)
    }
}

impl PartialEq for OAuth2Auth {
    fn eq(&self, other: &Self) -> bool {
        self.token_url == other.token_url
            && self.client_id == other.client_id
            && same(&self.client_secret, &other.client_secret)
            && self.scope == other.scope
            && self.audience == other.audience
    }
}

impl std::fmt::Debug for TargetAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Non-secret parts only: the type, the user, the header's name,
        // the token endpoint's host and the client id.
        match self {
            Self::Basic(basic) => f
                .debug_struct("Basic")
                .field("username", &basic.username)
                .finish_non_exhaustive(),
            Self::Bearer(_) => f.debug_struct("Bearer").finish_non_exhaustive(),
            Self::Header(header) => f
                .debug_struct("Header")
                .field("name", &header.name)
                .finish_non_exhaustive(),
            Self::Oauth2(oauth) => f
                .debug_struct("Oauth2")
                .field("token_url", &super::DebugUrl(&oauth.token_url))
                .field("client_id", &oauth.client_id)
                .field("scope", &oauth.scope)
                .field("audience", &oauth.audience)
                .finish_non_exhaustive(),
        }
    }
}

/// An OAuth2 token endpoint: an http(s) URL with a host, allowed by
/// `FORWARD_ALLOWED_HOSTS` when that is set, without credentials in it.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenUrl(url::Url);

impl std::fmt::Debug for TokenUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TokenUrl")
            .field(&super::DebugUrl(self.0.as_str()))
            .finish()
    }
}

impl TokenUrl {
    /// Refuses what `TargetUrl` refuses, naming `target.auth.tokenUrl`.
    pub fn parse(raw: &str, allowed_hosts: Option<&[String]>) -> Result<Self, FieldError> {
        let field = "target.auth.tokenUrl";
        let url = http_url(raw)
            .map_err(|problem| FieldError::new(field, format!("the URL {problem}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(FieldError::new(
                field,
                "put the client's credentials in clientId and clientSecret, not in the URL",
            ));
        }
        if let Some(allowed) = allowed_hosts {
            let host = url_host(&url).unwrap_or_default();
            if !host_listed(allowed, &host) {
                return Err(FieldError::new(
                    field,
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

/// A non-empty value of at most `MAX_FIELD_BYTES` that can go in a header.
fn header_safe(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.len() > MAX_FIELD_BYTES {
        return Err(FieldError::new(
            field,
            format!("at most {MAX_FIELD_BYTES} bytes"),
        ));
    }
    HeaderValue::from_str(value)
        .map(|_| ())
        .map_err(|_| FieldError::new(field, "not a valid header value (visible ASCII and spaces)"))
}

/// A non-empty value of at most `MAX_FIELD_BYTES`.
fn present(field: &str, value: &str) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.len() > MAX_FIELD_BYTES {
        return Err(FieldError::new(
            field,
            format!("at most {MAX_FIELD_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Headers a `header` auth may not name: the gateway sets them itself.
fn reserved_for_the_gateway(lower: &str) -> bool {
    super::RESERVED_HEADERS.contains(&lower)
        || gateway::headers::is_reserved(lower)
        || matches!(lower, "content-type" | "traceparent")
}

impl TargetAuth {
    /// HTTP Basic: a username without `:` and a password, neither empty.
    pub fn basic(username: String, password: SecretString) -> Result<Self, FieldError> {
        header_safe("target.auth.username", &username)?;
        if username.contains(':') {
            return Err(FieldError::new(
                "target.auth.username",
                "must not contain `:` (RFC 7617)",
            ));
        }
        present("target.auth.password", password.expose_secret())?;
        if password.expose_secret().chars().any(char::is_control) {
            return Err(FieldError::new(
                "target.auth.password",
                "must not contain control characters",
            ));
        }
        Ok(Self::Basic(BasicAuth { username, password }))
    }

    /// A static bearer token.
    pub fn bearer(token: SecretString) -> Result<Self, FieldError> {
        header_safe("target.auth.token", token.expose_secret())?;
        Ok(Self::Bearer(BearerAuth { token }))
    }

    /// One header: a valid name the gateway does not set itself, and a value.
    pub fn header(name: String, value: SecretString) -> Result<Self, FieldError> {
        let lower = name.trim().to_ascii_lowercase();
        HeaderName::from_bytes(lower.as_bytes()).map_err(|_| {
            FieldError::new(
                "target.auth.name",
                format!("`{name}` is not a valid header name"),
            )
        })?;
        if reserved_for_the_gateway(&lower) {
            return Err(FieldError::new(
                "target.auth.name",
                format!("`{name}` is set by the gateway itself"),
            ));
        }
        header_safe("target.auth.value", value.expose_secret())?;
        Ok(Self::Header(HeaderAuth { name: lower, value }))
    }

    /// An OAuth2 client-credentials grant: the token endpoint as
    /// `TokenUrl::parse` takes it, a client id and secret, and optional
    /// `scope` and `audience`.
    pub fn oauth2(
        token_url: &str,
        client_id: String,
        client_secret: SecretString,
        scope: Option<String>,
        audience: Option<String>,
        allowed_hosts: Option<&[String]>,
    ) -> Result<Self, FieldError> {
        let token_url = TokenUrl::parse(token_url, allowed_hosts)?;
        present("target.auth.clientId", &client_id)?;
        present("target.auth.clientSecret", client_secret.expose_secret())?;
        if let Some(scope) = &scope {
            present("target.auth.scope", scope)?;
        }
        if let Some(audience) = &audience {
            present("target.auth.audience", audience)?;
        }
        Ok(Self::Oauth2(OAuth2Auth {
            token_url: token_url.as_url().to_string(),
            client_id,
            client_secret,
            scope,
            audience,
        }))
    }

    /// The type's name, as the API writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Basic(_) => "basic",
            Self::Bearer(_) => "bearer",
            Self::Header(_) => "header",
            Self::Oauth2(_) => "oauth2",
        }
    }

    /// The header this auth sets on each request (lower case).
    pub fn header_name(&self) -> &str {
        match self {
            Self::Header(header) => &header.name,
            _ => "authorization",
        }
    }

    /// The header a `basic`, `bearer` or `header` auth sets, marked
    /// sensitive (HTTP/2 never indexes it); `None` for `oauth2`, whose
    /// value comes from the token endpoint.
    pub fn static_header(&self) -> Result<Option<(HeaderName, HeaderValue)>, FieldError> {
        let (name, value) = match self {
            Self::Basic(basic) => {
                let pair = format!("{}:{}", basic.username, basic.password.expose_secret());
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                (
                    reqwest::header::AUTHORIZATION,
                    HeaderValue::from_str(&format!("Basic {encoded}")),
                )
            }
            Self::Bearer(bearer) => (
                reqwest::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {}", bearer.token.expose_secret())),
            ),
            Self::Header(header) => (
                HeaderName::from_bytes(header.name.as_bytes())
                    .map_err(|_| FieldError::new("target.auth.name", "not a valid header name"))?,
                HeaderValue::from_str(header.value.expose_secret()),
            ),
            Self::Oauth2(_) => return Ok(None),
        };
        let mut value = value.map_err(|_| {
            FieldError::new(
                format!("target.auth.{}", self.kind()),
                "not a valid header value",
            )
        })?;
        value.set_sensitive(true);
        Ok(Some((name, value)))
    }

    /// As the API shows it to admins: each secret `***`.
    pub fn masked(&self) -> Self {
        let mask = || SecretString::from("***");
        match self.clone() {
            Self::Basic(basic) => Self::Basic(BasicAuth {
                password: mask(),
                ..basic
            }),
            Self::Bearer(_) => Self::Bearer(BearerAuth { token: mask() }),
            Self::Header(header) => Self::Header(HeaderAuth {
                value: mask(),
                ..header
            }),
            Self::Oauth2(oauth) => Self::Oauth2(OAuth2Auth {
                client_secret: mask(),
                ..oauth
            }),
        }
    }

    /// As the API shows it to viewers: the type alone, every field left out.
    pub fn type_only(&self) -> Self {
        let blank = || SecretString::from("");
        match self {
            Self::Basic(_) => Self::Basic(BasicAuth {
                username: String::new(),
                password: blank(),
            }),
            Self::Bearer(_) => Self::Bearer(BearerAuth { token: blank() }),
            Self::Header(_) => Self::Header(HeaderAuth {
                name: String::new(),
                value: blank(),
            }),
            Self::Oauth2(_) => Self::Oauth2(OAuth2Auth {
                token_url: String::new(),
                client_id: String::new(),
                client_secret: blank(),
                scope: None,
                audience: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s)
    }

    #[test]
    fn each_type_refuses_what_it_cannot_send_naming_the_field() {
        let field = |r: Result<TargetAuth, FieldError>| r.expect_err("refused").field;
        assert_eq!(
            field(TargetAuth::basic("a:b".into(), secret("p"))),
            "target.auth.username"
        );
        assert_eq!(
            field(TargetAuth::basic("a".into(), secret(""))),
            "target.auth.password"
        );
        assert_eq!(
            field(TargetAuth::bearer(secret("a\nb"))),
            "target.auth.token"
        );
        assert_eq!(
            field(TargetAuth::header("webhook-id".into(), secret("v"))),
            "target.auth.name"
        );
        assert_eq!(
            field(TargetAuth::header(
                "X-WorkerRMQ-Attempt".into(),
                secret("v")
            )),
            "target.auth.name"
        );
        assert_eq!(
            field(TargetAuth::header("bad name".into(), secret("v"))),
            "target.auth.name"
        );
        let oauth = |url: &str| {
            TargetAuth::oauth2(
                url,
                "id".into(),
                secret("s"),
                None,
                None,
                Some(&["auth.example.com".to_string()]),
            )
        };
        assert_eq!(
            field(oauth("ftp://auth.example.com/token")),
            "target.auth.tokenUrl"
        );
        assert_eq!(
            field(oauth("https://other.example.com/token")),
            "target.auth.tokenUrl"
        );
        assert_eq!(
            field(oauth("https://u:p@auth.example.com/token")),
            "target.auth.tokenUrl"
        );
        assert!(oauth("https://auth.example.com/token").is_ok());
    }

    #[test]
    fn static_headers_are_sensitive_and_as_the_rfcs_write_them() {
        let basic = TargetAuth::basic("aladdin".into(), secret("opensesame")).unwrap();
        let (name, value) = basic.static_header().unwrap().unwrap();
        assert_eq!(name, "authorization");
        assert_eq!(value, "Basic YWxhZGRpbjpvcGVuc2VzYW1l");
        assert!(value.is_sensitive());
        let header = TargetAuth::header("X-Api-Key".into(), secret("k")).unwrap();
        let (name, value) = header.static_header().unwrap().unwrap();
        assert_eq!((name.as_str(), value.to_str().unwrap()), ("x-api-key", "k"));
    }

    #[test]
    fn answers_mask_secrets_and_viewers_see_the_type_alone() {
        let auth = TargetAuth::oauth2(
            "https://auth.example.com/token",
            "client".into(),
            secret("clientSecretValue"),
            Some("send".into()),
            None,
            None,
        )
        .unwrap();
        let stored = serde_json::to_value(&auth).unwrap();
        assert_eq!(stored["clientSecret"], "clientSecretValue");
        let back: TargetAuth = serde_json::from_value(stored).unwrap();
        assert_eq!(back, auth);
        let masked = serde_json::to_value(auth.masked()).unwrap();
        assert_eq!(masked["clientSecret"], "***");
        assert_eq!(masked["clientId"], "client");
        assert_eq!(
            serde_json::to_value(auth.type_only()).unwrap(),
            serde_json::json!({"type": "oauth2"})
        );
        assert!(!format!("{auth:?}").contains("clientSecretValue"));
    }
}

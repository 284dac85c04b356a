//! `target.auth` and `target.tls` as `/createConsumer` and
//! `/updateConsumer` take them, and their parsing into the checked
//! `TargetAuth` and `TargetTls`. Both arrive as raw JSON inside the
//! tagged `target` object (where serde loses track of paths) and are read
//! here on their own, so a problem names its field:
//! `target.auth.type`, `target.tls.clientKeyPem`.

use secrecy::SecretString;
use serde::Deserialize;
use services::targets::{TargetAuth, TargetTls};
use services::FieldError;
use utoipa::ToSchema;

/// How the gateway authenticates to the target. Secrets are write-only:
/// answers show `***` (viewers: the type alone).
#[derive(Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TargetAuthRequest {
    /// `Authorization: Basic …` on every request.
    Basic(BasicAuthRequest),
    /// `Authorization: Bearer <token>` on every request.
    Bearer(BearerAuthRequest),
    /// One header (`x-api-key`, …) on every request; not one the gateway
    /// sets itself.
    Header(HeaderAuthRequest),
    /// OAuth2 client credentials (RFC 6749 §4.4, `client_secret_basic`):
    /// the token is fetched, cached across consumers and refreshed by the
    /// gateway, and sent as `Authorization: Bearer …`.
    Oauth2(OAuth2AuthRequest),
}

/// `{"type": "basic", …}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthRequest {
    /// Without `:`.
    #[schema(min_length = 1)]
    pub username: String,
    #[schema(value_type = String, min_length = 1)]
    pub password: SecretString,
}

/// `{"type": "bearer", …}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BearerAuthRequest {
    #[schema(value_type = String, min_length = 1)]
    pub token: SecretString,
}

/// `{"type": "header", …}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderAuthRequest {
    #[schema(min_length = 1)]
    pub name: String,
    #[schema(value_type = String, min_length = 1)]
    pub value: SecretString,
}

/// `{"type": "oauth2", …}`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OAuth2AuthRequest {
    /// http(s); FORWARD_ALLOWED_HOSTS and FORWARD_DENY_PRIVATE apply as to
    /// the target.
    #[schema(min_length = 1)]
    pub token_url: String,
    #[schema(min_length = 1)]
    pub client_id: String,
    #[schema(value_type = String, min_length = 1)]
    pub client_secret: SecretString,
    pub scope: Option<String>,
    pub audience: Option<String>,
}

const AUTH_TYPES: &str = "`basic`, `bearer`, `header` or `oauth2`";

/// Mutual TLS and a private CA: a client certificate with its key (both
/// or neither), and CA certificates the target's may chain to (besides the
/// platform's). Checked on create: the PEM parses, the key is the
/// certificate's. The key is write-only.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetTlsRequest {
    /// PEM: the client certificate, then any intermediates.
    pub client_cert_pem: Option<String>,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1).
    #[schema(value_type = Option<String>)]
    pub client_key_pem: Option<SecretString>,
    /// PEM: CA certificates to trust.
    pub ca_pem: Option<String>,
}

/// Reads `raw` as a `T`, naming the field within `parent` that did not fit.
fn read<T: serde::de::DeserializeOwned>(
    parent: &str,
    raw: serde_json::Value,
) -> Result<T, FieldError> {
    serde_path_to_error::deserialize::<_, T>(raw).map_err(|err| {
        let path = err.path().to_string();
        let problem = err.into_inner().to_string();
        // A missing field is reported at its parent; name the field itself.
        let missing = problem
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        let path = match (path.as_str(), missing) {
            (".", Some(field)) => field.to_owned(),
            (".", None) => String::new(),
            _ => path,
        };
        FieldError::new(path, problem).within(parent)
    })
}

/// `target.auth`, checked; `allowed_hosts` is FORWARD_ALLOWED_HOSTS. The
/// type is read first, then the rest as that type's fields, so each
/// problem names its field.
pub fn parse_auth(
    raw: serde_json::Value,
    allowed_hosts: Option<&[String]>,
) -> Result<TargetAuth, FieldError> {
    let serde_json::Value::Object(mut fields) = raw else {
        return Err(FieldError::new(
            "target.auth",
            format!("an object with a `type`: {AUTH_TYPES}"),
        ));
    };
    let kind = match fields.remove("type") {
        Some(serde_json::Value::String(kind)) => kind,
        Some(_) => {
            return Err(FieldError::new(
                "target.auth.type",
                format!("one of {AUTH_TYPES}"),
            ))
        }
        None => {
            return Err(FieldError::new(
                "target.auth.type",
                format!("required: {AUTH_TYPES}"),
            ))
        }
    };
    let rest = serde_json::Value::Object(fields);
    let request = match kind.as_str() {
        "basic" => TargetAuthRequest::Basic(read("target.auth", rest)?),
        "bearer" => TargetAuthRequest::Bearer(read("target.auth", rest)?),
        "header" => TargetAuthRequest::Header(read("target.auth", rest)?),
        "oauth2" => TargetAuthRequest::Oauth2(read("target.auth", rest)?),
        other => {
            return Err(FieldError::new(
                "target.auth.type",
                format!(
                    "`{}` is not a type this gateway knows; use {AUTH_TYPES}",
                    other.chars().take(40).collect::<String>()
                ),
            ))
        }
    };
    match request {
        TargetAuthRequest::Basic(basic) => TargetAuth::basic(basic.username, basic.password),
        TargetAuthRequest::Bearer(bearer) => TargetAuth::bearer(bearer.token),
        TargetAuthRequest::Header(header) => TargetAuth::header(header.name, header.value),
        TargetAuthRequest::Oauth2(oauth) => TargetAuth::oauth2(
            &oauth.token_url,
            oauth.client_id,
            oauth.client_secret,
            oauth.scope,
            oauth.audience,
            allowed_hosts,
        ),
    }
}

/// `target.tls`, checked.
pub fn parse_tls(raw: serde_json::Value) -> Result<TargetTls, FieldError> {
    let request = read::<TargetTlsRequest>("target.tls", raw)?;
    TargetTls::parse(
        request.client_cert_pem,
        request.client_key_pem,
        request.ca_pem,
    )
}

/// The `type` of a raw `target.auth`, for `Debug` (nothing else of it).
pub fn auth_type(raw: &serde_json::Value) -> Option<&str> {
    raw.get("type").and_then(serde_json::Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn problems_name_the_field_within_target_auth() {
        let field = |raw| parse_auth(raw, None).expect_err("refused").field;
        assert_eq!(field(json!({"type": "digest"})), "target.auth.type");
        assert_eq!(
            field(json!({"type": "basic", "username": "u"})),
            "target.auth.password"
        );
        assert_eq!(field(json!({"username": "u"})), "target.auth.type");
        assert_eq!(
            field(json!({"type": "bearer", "token": 7})),
            "target.auth.token"
        );
        assert_eq!(
            field(
                json!({"type": "oauth2", "tokenUrl": "ftp://x/t", "clientId": "c", "clientSecret": "s"})
            ),
            "target.auth.tokenUrl"
        );
        assert_eq!(
            parse_tls(json!({"clientCertPem": "nope", "clientKeyPem": "nope"}))
                .expect_err("refused")
                .field,
            "target.tls.clientCertPem"
        );
        assert_eq!(
            parse_tls(json!({"caPem": 1})).expect_err("refused").field,
            "target.tls.caPem"
        );
    }
}

//! The extractors routes use for what a caller sends: `Json<T>` for the
//! body and `Query<T>` for the query string. Both answer with the contract's
//! error body and name the offending field (`field `durable`: invalid type:
//! string "x", expected a boolean`, `query `limit`: invalid digit found in
//! string`). `Json` also enforces `MAX_BODY_BYTES` (or a route's own limit,
//! `BodyLimit`), the JSON content type, objects where structs are expected,
//! and a deadline for the body to arrive. `parse_part` reads one part of a
//! body on its own (a batch's item), its problems a `FieldError`.

mod objects_only;

use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use futures_util::future::{ready, LocalBoxFuture, Ready};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use services::FieldError;

use crate::error::ApiError;
use objects_only::ObjectsOnly;

/// How long a request body may take to arrive once the headers are in: a
/// client that declares a `Content-Length` and sends less would otherwise
/// hold a connection and a worker for as long as the socket lives.
pub const BODY_READ_DEADLINE: Duration = Duration::from_secs(10);

/// The body limit, put in app data at start-up (and by a route with a
/// limit of its own), with the setting that sets it, which a 413 names.
#[derive(Clone, Copy)]
pub struct BodyLimit {
    /// The most bytes a body may have.
    pub bytes: usize,
    /// The variable that sets it: `MAX_BODY_BYTES`.
    pub setting: &'static str,
}

impl BodyLimit {
    /// Without one in app data (a test's bare app), the default.
    const DEFAULT: BodyLimit = BodyLimit {
        bytes: 1_048_576,
        setting: "MAX_BODY_BYTES",
    };
}

pub struct Json<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req
            .app_data::<BodyLimit>()
            .copied()
            .unwrap_or(BodyLimit::DEFAULT);
        let content_type_ok = {
            let ct = req.content_type();
            ct == "application/json" || ct.ends_with("+json")
        };
        let declared_length = req
            .headers()
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let body = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            if !content_type_ok {
                return Err(ApiError::UnsupportedMediaType(
                    "send the body as JSON with `Content-Type: application/json`".into(),
                ));
            }
            if declared_length.is_some_and(|n| n > limit.bytes) {
                return Err(too_large(limit));
            }
            let bytes = tokio::time::timeout(BODY_READ_DEADLINE, body)
                .await
                .map_err(|_| {
                    ApiError::RequestTimeout(format!(
                        "the request body did not arrive within {} s; send as many bytes as Content-Length declares",
                        BODY_READ_DEADLINE.as_secs()
                    ))
                })?
                .map_err(|e| match e.as_error::<PayloadError>() {
                Some(PayloadError::Overflow) => too_large(limit),
                _ => match e.as_response_error().status_code().as_u16() {
                    413 => too_large(limit),
                    _ => ApiError::BadRequest(format!("could not read the request body: {e}")),
                },
            })?;
            if bytes.len() > limit.bytes {
                return Err(too_large(limit));
            }
            parse_json(&bytes).map(Json)
        })
    }
}

fn too_large(limit: BodyLimit) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "the request body is larger than the {} bytes this gateway accepts ({})",
        limit.bytes, limit.setting
    ))
}

/// Deserializes one part of a body that was read whole already (so it is
/// valid JSON), on its own: a problem names the field within the part, or
/// `""` for the part as a whole. Structs are objects, as in `parse_json`.
pub fn parse_part<T: DeserializeOwned>(part: &RawValue) -> Result<T, FieldError> {
    let mut de = serde_json::Deserializer::from_str(part.get());
    serde_path_to_error::deserialize::<_, T>(ObjectsOnly(&mut de)).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." { String::new() } else { path };
        FieldError::new(field, err.into_inner().to_string())
    })
}

/// Deserializes `bytes`, naming the field that did not fit. Every struct
/// must be written as a JSON object (see `objects_only`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize::<_, T>(ObjectsOnly(&mut de));
    match parsed {
        Ok(value) => match de.end() {
            Ok(()) => Ok(value),
            Err(trailing) => Err(ApiError::BadRequest(format!(
                "the body is not valid JSON: {trailing}"
            ))),
        },
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let message = if inner.is_syntax() || inner.is_eof() {
                format!("the body is not valid JSON: {inner}")
            } else if path == "." || path.is_empty() {
                format!("the body does not have the expected shape: {inner}")
            } else {
                format!("field `{path}`: {inner}")
            };
            Err(ApiError::BadRequest(message))
        }
    }
}

/// The query string, deserialized into `T`.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(parse_query(req.query_string()).map(Query))
    }
}

/// Deserializes a query string, naming the parameter that did not fit.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(url::form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize::<_, T>(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        ApiError::BadRequest(if path == "." || path.is_empty() {
            format!("the query string does not fit: {inner}")
        } else {
            format!("query `{path}`: {inner}")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::{parse_json, parse_query};
    use crate::error::ApiError;

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        queue_name: String,
        durable: Option<bool>,
    }

    fn message(result: Result<Sample, ApiError>) -> String {
        match result {
            Err(ApiError::BadRequest(m)) => m,
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn wrong_types_name_the_field() {
        let m = message(parse_json(br#"{"queueName":"q","durable":"yes"}"#));
        assert!(m.starts_with("field `durable`"), "{m}");
    }

    #[test]
    fn a_struct_sent_as_an_array_is_refused() {
        let m = message(parse_json(br#"["q", true]"#));
        assert!(m.contains("a JSON object"), "{m}");
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Paging {
        limit: Option<u16>,
    }

    #[test]
    fn query_errors_name_the_parameter() {
        let m = match parse_query::<Paging>("limit=abc") {
            Err(ApiError::BadRequest(m)) => m,
            other => panic!("expected a bad request, got {other:?}"),
        };
        assert!(m.starts_with("query `limit`"), "{m}");
        assert!(matches!(
            parse_query::<Paging>("limit=5"),
            Ok(Paging { limit: Some(5) })
        ));
        assert!(parse_query::<Paging>("limt=5").is_err());
    }

    #[test]
    fn malformed_json_is_said_so() {
        let m = message(parse_json(br#"{"queueName":"#));
        assert!(m.contains("not valid JSON"), "{m}");
    }

    #[test]
    fn missing_and_unknown_fields_are_named() {
        let m = message(parse_json(br#"{}"#));
        assert!(m.contains("queueName"), "{m}");
        let m = message(parse_json(br#"{"queueName":"q","durible":true}"#));
        assert!(m.contains("durible"), "{m}");
    }
}

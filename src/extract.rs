//! `Json<T>`: the request-body extractor every route uses. It answers with
//! the contract's error body, names the offending field
//! (`durable: invalid type: string "x", expected a boolean`), and enforces
//! `MAX_BODY_BYTES` and the JSON content type.

use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The body limit, put in app data at start-up.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

pub struct Json<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req.app_data::<BodyLimit>().map_or(1_048_576, |l| l.0);
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
            if declared_length.is_some_and(|n| n > limit) {
                return Err(too_large(limit));
            }
            let bytes = body.await.map_err(|e| match e.as_error::<PayloadError>() {
                Some(PayloadError::Overflow) => too_large(limit),
                _ => match e.as_response_error().status_code().as_u16() {
                    413 => too_large(limit),
                    _ => ApiError::BadRequest(format!("could not read the request body: {e}")),
                },
            })?;
            if bytes.len() > limit {
                return Err(too_large(limit));
            }
            parse_json(&bytes).map(Json)
        })
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "the request body is larger than the {limit} bytes this gateway accepts (MAX_BODY_BYTES)"
    ))
}

/// Deserializes `bytes`, naming the field that did not fit.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize::<_, T>(&mut de);
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

#[cfg(test)]
mod tests {
    use super::parse_json;
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

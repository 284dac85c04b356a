//! Why a request's credentials were not accepted, and the answer each
//! reason gets. No answer names a host, a URL or a driver message.

use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use credentials::Role;

use crate::error_response;

/// Why a request was not let through. Each reason maps to one status and error code, and none names
/// a host, a URL or a driver message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// No credentials were sent (401).
    #[error("send credentials: `Authorization: Basic <user:password>` or `Authorization: Bearer <api key>`")]
    Missing,
    /// The credentials were wrong, unknown or revoked (401); which one is not said, so a caller
    /// cannot probe for names.
    #[error("the credentials were not accepted")]
    Invalid,
    #[error("this needs the `{required:?}` role; these credentials have `{actual:?}`")]
    /// The credentials are valid but their role is too low (403).
    Forbidden {
        /// The least role the route needs.
        required: Role,
        /// The role the credentials have.
        actual: Role,
    },
    #[error("too many failed authentications from this address; try again in {} s", retry_after_secs(*.retry_after))]
    /// This client address failed too often; refused before any check (429).
    TooManyFailures {
        /// How long until the address's window ends (`Retry-After`).
        retry_after: Duration,
    },
    /// The detail went to the log; the caller learns only what is down.
    #[error("cannot check credentials: the credential store is unavailable; try again shortly")]
    StoreUnavailable,
}

/// Whole seconds, rounded up, and at least one: `Retry-After: 0` would
/// invite an immediate retry that is still refused.
fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

impl ResponseError for AuthError {
    fn status_code(&self) -> StatusCode {
        match self {
            AuthError::Missing | AuthError::Invalid => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
            AuthError::TooManyFailures { .. } => StatusCode::TOO_MANY_REQUESTS,
            AuthError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let code = match self {
            AuthError::Missing | AuthError::Invalid => "unauthorized",
            AuthError::Forbidden { .. } => "forbidden",
            AuthError::TooManyFailures { .. } => "too_many_requests",
            AuthError::StoreUnavailable => "store_unavailable",
        };
        let mut response = error_response(self.status_code(), code, &self.to_string());
        match self {
            AuthError::Missing | AuthError::Invalid => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Basic realm=\"workerrmq\""),
                );
            }
            AuthError::TooManyFailures { retry_after } => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    header::HeaderValue::from(retry_after_secs(*retry_after)),
                );
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(59_001)), 60);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}

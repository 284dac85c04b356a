//! Failures as the HTTP contract names them. Every non-2xx answer carries
//! `{"error": "<code>", "message": "..."}`; a 500 is a bug.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use gateway::{BrokerError, Chain};
use serde::Serialize;
use services::{ManagementError, StoreError};
use utoipa::ToSchema;

/// The body of every non-2xx answer; `/openapi.json` documents this type.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorCode,
    /// A sentence a person can act on; names the field when one is wrong.
    pub message: String,
}

/// The contract's error codes, one per kind of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    TooManyRequests,
    BrokerUnavailable,
    StoreUnavailable,
    Internal,
}

impl ErrorCode {
    /// The code an answer of this status carries when nothing more specific
    /// is known (actix's own answers, re-dressed by `startup`).
    pub fn for_status(status: StatusCode) -> Self {
        match status.as_u16() {
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            408 => ErrorCode::RequestTimeout,
            409 => ErrorCode::Conflict,
            413 => ErrorCode::PayloadTooLarge,
            415 => ErrorCode::UnsupportedMediaType,
            429 => ErrorCode::TooManyRequests,
            503 => ErrorCode::BrokerUnavailable,
            400..=499 => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The path exists, the method does not; `allow` lists those that do.
    #[error("{method} is not allowed here; use {allow}")]
    MethodNotAllowed { method: String, allow: String },
    /// The body did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    BrokerUnavailable(String),
    #[error("{0}")]
    StoreUnavailable(String),
    /// A bug: the cause is logged, the caller reads a fixed sentence.
    #[error("{0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl ApiError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadRequest(_) => ErrorCode::BadRequest,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            ApiError::RequestTimeout(_) => ErrorCode::RequestTimeout,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            ApiError::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            ApiError::BrokerUnavailable(_) => ErrorCode::BrokerUnavailable,
            ApiError::StoreUnavailable(_) => ErrorCode::StoreUnavailable,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BrokerUnavailable(_) | ApiError::StoreUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::MethodNotAllowed { allow, .. } => {
                response.insert_header((header::ALLOW, allow.as_str()));
            }
            // The rest of the body may still be on its way; this connection
            // cannot carry another request.
            ApiError::RequestTimeout(_) => {
                response.force_close();
            }
            _ => {}
        }
        response.json(self.body())
    }
}

impl ApiError {
    /// What a caller reads when the broker is down, without logging the
    /// cause: for the answers of a request past the one that logged it.
    pub fn broker_down() -> Self {
        ApiError::BrokerUnavailable(BROKER_DOWN.into())
    }

    /// The contract's body for this failure; a batch's item carries it too.
    pub fn body(&self) -> ErrorBody {
        let mut message = self.to_string();
        if let ApiError::Internal(detail) = self {
            // The detail is for whoever fixes the bug, not for the caller.
            tracing::error!(error = %Chain(&**detail), "internal error");
            message = "the gateway failed to answer this request; the failure is logged under this request's x-request-id".into();
        }
        ErrorBody {
            error: self.code(),
            message,
        }
    }
}

/// What a caller reads when the broker is down: what, never where. The
/// broker's own text (hosts, ports, driver messages) goes to the log.
const BROKER_DOWN: &str =
    "the message broker is unavailable; the gateway is reconnecting, try again shortly";
const STORE_DOWN: &str = "the store does not answer; try again shortly";

impl From<BrokerError> for ApiError {
    fn from(err: BrokerError) -> Self {
        // The caller reads the broker's reply text (or the gateway's own
        // words); the log gets what was being done and lapin's error.
        match err {
            BrokerError::NotFound { reason, .. } => ApiError::NotFound(reason),
            BrokerError::Conflict { reason, .. } => ApiError::Conflict(format!(
                "the broker refused because it conflicts with what exists: {reason}"
            )),
            BrokerError::Refused { ref reason, .. } => {
                tracing::debug!(error = %Chain(&err), "broker refused");
                ApiError::BadRequest(format!("the broker refused: {reason}"))
            }
            BrokerError::Unavailable { .. } => {
                tracing::warn!(error = %Chain(&err), "broker unavailable");
                ApiError::broker_down()
            }
            e @ BrokerError::FrameTooLarge { .. } => {
                ApiError::BadRequest(format!("field `headers`: {e}"))
            }
            e @ (BrokerError::Nacked | BrokerError::Blocked) => {
                ApiError::BrokerUnavailable(e.to_string())
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable { .. }
            | StoreError::Encode { .. }
            | StoreError::Hash(_)
            | StoreError::Sealed { .. } => {
                tracing::warn!(error = %Chain(&err), "store unavailable");
                ApiError::StoreUnavailable(STORE_DOWN.into())
            }
            // The driver's text names the collection, index and key value.
            StoreError::Duplicate { .. } => {
                tracing::debug!(error = %Chain(&err), "duplicate key");
                ApiError::Conflict("a record with that key already exists".into())
            }
        }
    }
}

impl From<services::RegistryError> for ApiError {
    fn from(err: services::RegistryError) -> Self {
        match err {
            services::RegistryError::Store(e) => e.into(),
            services::RegistryError::Invalid(e) => e.into(),
        }
    }
}

impl From<services::CappedCreateError> for ApiError {
    fn from(err: services::CappedCreateError) -> Self {
        match err {
            services::CappedCreateError::AtCapacity { limit, registered } => {
                ApiError::Conflict(format!(
                    "this gateway already runs {registered} consumers and its limit is {limit} \
                     (MAX_CONSUMERS); delete consumers that are no longer needed, or raise MAX_CONSUMERS"
                ))
            }
            services::CappedCreateError::Registry(e) => e.into(),
        }
    }
}

impl From<ManagementError> for ApiError {
    fn from(err: ManagementError) -> Self {
        tracing::warn!(error = %Chain(&err), "RabbitMQ management API unavailable");
        let message = match err {
            ManagementError::Unreachable { .. } => {
                "the broker's management API does not answer; try again shortly"
            }
            ManagementError::Refused { .. } => {
                "the broker's management API refuses the gateway's credentials"
            }
            ManagementError::Status { .. } | ManagementError::Unreadable { .. } => {
                "the broker's management API gave no usable answer; try again shortly"
            }
            ManagementError::BadBaseUrl => {
                "the broker's management API address is misconfigured on this gateway"
            }
        };
        ApiError::BrokerUnavailable(message.into())
    }
}

impl From<services::FieldError> for ApiError {
    fn from(err: services::FieldError) -> Self {
        ApiError::BadRequest(err.to_string())
    }
}

impl From<gateway::NameError> for ApiError {
    fn from(err: gateway::NameError) -> Self {
        ApiError::BadRequest(err.to_string())
    }
}

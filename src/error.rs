//! Failures as the HTTP contract names them. Every non-2xx answer carries
//! `{"error": "<code>", "message": "..."}`; a 500 is a bug.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use gateway::BrokerError;
use services::{ManagementError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
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
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::BrokerUnavailable(_) => "broker_unavailable",
            ApiError::StoreUnavailable(_) => "store_unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
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
        if let ApiError::Internal(detail) = self {
            // The detail is for whoever fixes the bug, not for the caller.
            tracing::error!(%detail, "internal error");
            return middlewares::error_response(
                self.status_code(),
                self.code(),
                "the gateway failed to answer this request; the failure is logged under this request's x-request-id",
            );
        }
        middlewares::error_response(self.status_code(), self.code(), &self.to_string())
    }
}

/// What a caller reads when the broker is down: what, never where. The
/// broker's own text (hosts, ports, driver messages) goes to the log.
const BROKER_DOWN: &str =
    "the message broker is unavailable; the gateway is reconnecting, try again shortly";
const STORE_DOWN: &str = "the store does not answer; try again shortly";

impl From<BrokerError> for ApiError {
    fn from(err: BrokerError) -> Self {
        match err {
            BrokerError::NotFound(m) => ApiError::NotFound(m),
            BrokerError::Conflict(m) => ApiError::Conflict(format!(
                "the broker refused because it conflicts with what exists: {m}"
            )),
            BrokerError::Refused(m) => ApiError::BadRequest(format!("the broker refused: {m}")),
            BrokerError::Unavailable(detail) => {
                tracing::warn!(%detail, "broker unavailable");
                ApiError::BrokerUnavailable(BROKER_DOWN.into())
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
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "store unavailable");
                ApiError::StoreUnavailable(STORE_DOWN.into())
            }
            StoreError::Duplicate(m) => ApiError::Conflict(m),
        }
    }
}

impl From<services::RegistryError> for ApiError {
    fn from(err: services::RegistryError) -> Self {
        match err {
            services::RegistryError::Store(e) => e.into(),
            services::RegistryError::Invalid(m) => ApiError::BadRequest(m),
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
        tracing::warn!(error = %err, "RabbitMQ management API unavailable");
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

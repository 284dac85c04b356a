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
            tracing::error!(%detail, "internal error");
        }
        middlewares::error_response(self.status_code(), self.code(), &self.to_string())
    }
}

impl From<BrokerError> for ApiError {
    fn from(err: BrokerError) -> Self {
        match err {
            BrokerError::NotFound(m) => ApiError::NotFound(m),
            BrokerError::Conflict(m) => ApiError::Conflict(format!(
                "the broker refused because it conflicts with what exists: {m}"
            )),
            BrokerError::Refused(m) => ApiError::BadRequest(format!("the broker refused: {m}")),
            e @ (BrokerError::Unavailable(_) | BrokerError::Nacked) => {
                ApiError::BrokerUnavailable(e.to_string())
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(m) => {
                ApiError::StoreUnavailable(format!("the store is unavailable: {m}"))
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

impl From<ManagementError> for ApiError {
    fn from(err: ManagementError) -> Self {
        ApiError::BrokerUnavailable(err.to_string())
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

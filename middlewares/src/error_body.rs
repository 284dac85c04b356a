//! The one shape of every non-2xx answer:
//! `{"error": "<code>", "message": "<sentence a person can act on>"}`.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde::Serialize;

/// The JSON body of every non-2xx answer.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    /// A stable, machine-readable code, such as `unauthorized`.
    pub error: &'a str,
    /// A sentence a person can act on.
    pub message: &'a str,
}

/// An answer with `status` and the body `{"error": code, "message": message}`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(ErrorBody {
        error: code,
        message,
    })
}

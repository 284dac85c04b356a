//! The one shape of every non-2xx answer:
//! `{"error": "<code>", "message": "<sentence a person can act on>"}`.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: &'a str,
    pub message: &'a str,
}

pub fn error_response(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(ErrorBody {
        error: code,
        message,
    })
}

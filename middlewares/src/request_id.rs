//! Every request runs in a tracing span carrying a request id; the id is
//! echoed in the `x-request-id` response header so an operator can find the
//! log lines of a failed call.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use tracing_actix_web::{DefaultRootSpanBuilder, RequestId, TracingLogger};

/// Opens a span per request with a fresh request id; wrap the app with it, outside
/// `echo_request_id`.
pub fn tracing_logger() -> TracingLogger<DefaultRootSpanBuilder> {
    TracingLogger::default()
}

/// Copies the request's id into the `x-request-id` response header.
pub async fn echo_request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req.extensions().get::<RequestId>().copied();
    let mut response = next.call(req).await?;
    if let Some(id) = id {
        if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
            response
                .headers_mut()
                .insert(HeaderName::from_static("x-request-id"), value);
        }
    }
    Ok(response)
}

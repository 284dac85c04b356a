//! `middlewares` owns what wraps every request: authentication and roles
//! (with the credential cache that keeps bcrypt off the hot path), request
//! ids and the tracing span each request runs in, and the contract's error
//! body that every non-2xx answer carries.

pub mod auth;
pub mod error_body;
pub mod request_id;

pub use auth::{Admin, AuthError, Authenticator, Principal, PublisherCaller as Publisher, Viewer};
pub use error_body::{error_response, ErrorBody};

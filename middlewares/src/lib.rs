//! `middlewares` owns what wraps every request: authentication and roles
//! (with the credential cache that keeps bcrypt off the hot path and the
//! throttle on failed attempts), which address a request comes from
//! (`TRUSTED_PROXIES`), request ids and the tracing span each
//! request runs in, and the contract's error body that every non-2xx answer
//! carries. It reads credentials through `credentials::CredentialStore`, so
//! it knows nothing of MongoDB.

pub mod auth;
pub mod client_address;
pub mod error_body;
pub mod request_id;

pub use auth::{
    Admin, AuthError, AuthMetrics, AuthSettings, Authenticator, Principal,
    PublisherCaller as Publisher, ThrottleSettings, Viewer,
};
pub use client_address::{ForwardingHeader, TrustedProxies, TrustedProxiesError};
pub use credentials::Role;
pub use error_body::{error_response, ErrorBody};

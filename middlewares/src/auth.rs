//! Authentication and roles.
//!
//! `Authorization: Basic user:password` checks an operator account;
//! `Authorization: Bearer wrmq_<keyId>_<secret>` checks an API key. Both are
//! stored bcrypt-hashed. bcrypt is slow on purpose, so a verified header is
//! cached under its SHA-256 for a short TTL: the publish hot path pays a
//! hash lookup, not a bcrypt run. The cache never holds the secret itself.
//!
//! The `authenticate` middleware verifies the credentials of every request
//! that carries some, before routing; handlers ask for a role by taking
//! `Admin`, `Publisher` or `Viewer` as their first argument, which reads the
//! verdict: missing or wrong credentials answer 401, a role too low 403,
//! before the body is even read.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use base64::Engine;
use dashmap::DashMap;
use std::future::{ready, Ready};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use services::{Role, Store};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::error_response;

/// Prefix of every API key the gateway mints.
pub const API_KEY_PREFIX: &str = "wrmq_";
const CACHE_SOFT_LIMIT: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("send credentials: `Authorization: Basic <user:password>` or `Authorization: Bearer <api key>`")]
    Missing,
    #[error("the credentials were not accepted")]
    Invalid,
    #[error("this needs the `{required:?}` role; these credentials have `{actual:?}`")]
    Forbidden { required: Role, actual: Role },
    /// The detail went to the log; the caller learns only what is down.
    #[error("cannot check credentials: the credential store is unavailable; try again shortly")]
    StoreUnavailable,
}

impl ResponseError for AuthError {
    fn status_code(&self) -> StatusCode {
        match self {
            AuthError::Missing | AuthError::Invalid => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
            AuthError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let code = match self {
            AuthError::Missing | AuthError::Invalid => "unauthorized",
            AuthError::Forbidden { .. } => "forbidden",
            AuthError::StoreUnavailable => "store_unavailable",
        };
        let mut response = error_response(self.status_code(), code, &self.to_string());
        if self.status_code() == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"workerrmq\""),
            );
        }
        response
    }
}

struct CachedPrincipal {
    principal: Principal,
    expires: Instant,
}

pub struct Authenticator {
    store: Store,
    cache: DashMap<[u8; 32], CachedPrincipal>,
    /// Verifications under way: concurrent requests with the same new
    /// credential share one bcrypt run instead of each starting their own.
    pending: DashMap<[u8; 32], Arc<OnceCell<Result<Principal, AuthError>>>>,
    ttl: Duration,
}

impl Authenticator {
    pub fn new(store: Store, ttl: Duration) -> Self {
        Self {
            store,
            cache: DashMap::new(),
            pending: DashMap::new(),
            ttl,
        }
    }

    pub async fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let key: [u8; 32] = Sha256::digest(header.as_bytes()).into();
        if let Some(hit) = self.cache.get(&key) {
            if hit.expires > Instant::now() {
                return Ok(hit.principal.clone());
            }
        }
        let flight = self
            .pending
            .entry(key)
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let verified = flight.get_or_init(|| self.verify(header)).await.clone();
        self.pending.remove(&key);
        let principal = verified?;
        if self.cache.len() >= CACHE_SOFT_LIMIT {
            let now = Instant::now();
            self.cache.retain(|_, c| c.expires > now);
        }
        self.cache.insert(
            key,
            CachedPrincipal {
                principal: principal.clone(),
                expires: Instant::now() + self.ttl,
            },
        );
        Ok(principal)
    }

    async fn verify(&self, header: &str) -> Result<Principal, AuthError> {
        let (scheme, value) = header.split_once(' ').ok_or(AuthError::Invalid)?;
        let value = value.trim();
        let (secret, credential) = if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value)
                .map_err(|_| AuthError::Invalid)?;
            let decoded = String::from_utf8(decoded).map_err(|_| AuthError::Invalid)?;
            let (user, password) = decoded.split_once(':').ok_or(AuthError::Invalid)?;
            (password.to_owned(), self.store.find_account(user).await)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let (key_id, secret) = parse_api_key(value).ok_or(AuthError::Invalid)?;
            (secret.to_owned(), self.store.find_api_key(key_id).await)
        } else {
            return Err(AuthError::Invalid);
        };
        let credential = credential.map_err(|e| {
            tracing::warn!(error = %e, "cannot check credentials");
            AuthError::StoreUnavailable
        })?;
        // An unknown name still costs one bcrypt run, so response times do
        // not tell which names exist.
        let (hash, found) = match &credential {
            Some(c) => (c.bcrypt_hash.clone(), true),
            None => (String::new(), false),
        };
        let matches = tokio::task::spawn_blocking(move || {
            let hash = if found { hash.as_str() } else { dummy_hash() };
            bcrypt::verify(secret, hash)
        })
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false);
        match credential {
            Some(c) if matches && found => Ok(Principal {
                name: c.principal,
                role: c.role,
            }),
            _ => Err(AuthError::Invalid),
        }
    }
}

/// A real bcrypt hash of a value nobody presents, for the unknown-name path.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| bcrypt::hash(uuid_like_secret(), bcrypt::DEFAULT_COST).unwrap_or_default())
}

fn uuid_like_secret() -> String {
    format!("{:?}", Instant::now())
}

/// Splits `wrmq_<keyId>_<secret>` into its parts.
pub fn parse_api_key(raw: &str) -> Option<(&str, &str)> {
    let rest = raw.strip_prefix(API_KEY_PREFIX)?;
    let (key_id, secret) = rest.split_once('_')?;
    (!key_id.is_empty() && !secret.is_empty()).then_some((key_id, secret))
}

pub trait RequiredRole {
    const ROLE: Role;
}

pub struct AdminRole;
pub struct PublisherRole;
pub struct ViewerRole;

impl RequiredRole for AdminRole {
    const ROLE: Role = Role::Admin;
}
impl RequiredRole for PublisherRole {
    const ROLE: Role = Role::Publisher;
}
impl RequiredRole for ViewerRole {
    const ROLE: Role = Role::Viewer;
}

/// An authenticated caller with at least the role `R`.
pub struct Authorized<R: RequiredRole> {
    pub principal: Principal,
    _role: PhantomData<R>,
}

pub type Admin = Authorized<AdminRole>;
pub type Viewer = Authorized<ViewerRole>;
pub type PublisherCaller = Authorized<PublisherRole>;

/// The verdict on this request's credentials, left by `authenticate`.
#[derive(Clone)]
struct Verdict(Result<Principal, AuthError>);

/// Middleware: checks the `Authorization` header, when there is one, before
/// any handler runs, and leaves the verdict on the request. Handlers then
/// read it synchronously, so wrong credentials answer 401 (and a role too
/// low 403) before the body is even read — never a 400 or 415 that would
/// tell an unauthenticated caller about the body.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let verdict = match (
            value.to_str(),
            req.app_data::<web::Data<Authenticator>>().cloned(),
        ) {
            (Err(_), _) => Err(AuthError::Invalid),
            (Ok(_), None) => {
                tracing::warn!("the authenticator is not configured");
                Err(AuthError::StoreUnavailable)
            }
            (Ok(value), Some(authenticator)) => {
                let value = value.to_owned();
                authenticator.authenticate(Some(&value)).await
            }
        };
        req.extensions_mut().insert(Verdict(verdict));
    }
    next.call(req).await
}

impl<R: RequiredRole + 'static> FromRequest for Authorized<R> {
    type Error = AuthError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let verdict = req
            .extensions()
            .get::<Verdict>()
            .map(|v| v.0.clone())
            .unwrap_or(Err(AuthError::Missing));
        ready(verdict.and_then(|principal| {
            if principal.role.allows(R::ROLE) {
                Ok(Authorized {
                    principal,
                    _role: PhantomData,
                })
            } else {
                Err(AuthError::Forbidden {
                    required: R::ROLE,
                    actual: principal.role,
                })
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_split_into_id_and_secret() {
        assert_eq!(parse_api_key("wrmq_abc_def"), Some(("abc", "def")));
        assert_eq!(parse_api_key("wrmq_abc_"), None);
        assert_eq!(parse_api_key("other_abc_def"), None);
    }
}

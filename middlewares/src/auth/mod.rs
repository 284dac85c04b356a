//! Authentication and roles.
//!
//! `Authorization: Basic user:password` checks an operator account with
//! bcrypt; `Authorization: Bearer wrmq_<keyId>_<secret>` checks an API key
//! against the SHA-256 of its secret (see `credentials::api_key` for why a
//! digest is enough). What it costs is bounded three ways:
//! - verdicts are remembered under the SHA-256 of the header: an accepted
//!   password for `password_ttl`, an accepted key for `api_key_ttl` (short,
//!   so a revoked key is refused on every replica within seconds), a refusal
//!   for `refusal_ttl`, so repeating one wrong credential runs nothing;
//! - bcrypt runs at most one per core (`credentials::password`);
//! - a client address with too many failures is refused with 429 before
//!   any lookup (`throttle`), unless its credential is in the cache of
//!   accepted ones: that is checked first, so a shared address (a NAT, an
//!   ingress) refused for one client's guesses still lets the others in.
//!   The address is the one `client_address` found (`TRUSTED_PROXIES`).
//!
//! The `authenticate` middleware checks the credentials of every request that
//! carries some, before routing; handlers ask for a role by taking `Admin`,
//! `Publisher` or `Viewer` (see `roles`), so wrong credentials answer 401 and
//! a role too low 403 before the body is even read.

mod error;
mod metrics;
mod roles;
pub mod throttle;
mod verdict_cache;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use base64::Engine;
use credentials::{ApiKey, CredentialStore, KeyId, Role, SecretString};
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

pub use error::AuthError;
pub use metrics::AuthMetrics;
pub use roles::{Admin, AdminRole, Authorized, PublisherCaller, PublisherRole, RequiredRole};
pub use roles::{Viewer, ViewerRole};
pub use throttle::ThrottleSettings;

use throttle::FailureThrottle;
use verdict_cache::{CacheKey, VerdictCache};

const CACHE_CAPACITY: usize = 10_000;
const TOUCHED_CAPACITY: usize = 10_000;

/// Who made a request, once its credentials were accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The account's username, or the API key's name.
    pub name: String,
    /// What the request may do.
    pub role: Role,
}

/// How long verdicts are remembered, and how the failure throttle behaves.
#[derive(Debug, Clone, Copy)]
pub struct AuthSettings {
    /// How long an accepted password is trusted without another bcrypt run.
    pub password_ttl: Duration,
    /// How long an accepted API key is trusted without asking the store:
    /// bounds how long a revoked key keeps working on a replica.
    pub api_key_ttl: Duration,
    /// How long a refused credential is refused without another check.
    pub refusal_ttl: Duration,
    /// `lastUsedAt` is written at most this often per key and replica.
    pub touch_interval: Duration,
    /// When a client address is refused for failing too often.
    pub throttle: ThrottleSettings,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            password_ttl: Duration::from_secs(60),
            api_key_ttl: Duration::from_secs(2),
            refusal_ttl: Duration::from_secs(30),
            touch_interval: Duration::from_secs(60),
            throttle: ThrottleSettings::default(),
        }
    }
}

type Checked = Result<(Principal, Duration), AuthError>;

/// Checks `Authorization` headers against the credential store, with the caches and throttle that
/// bound what checking costs. One per process, shared by every worker.
pub struct Authenticator {
    store: Arc<dyn CredentialStore>,
    settings: AuthSettings,
    accepted: VerdictCache<Principal>,
    refused: VerdictCache<()>,
    /// Checks under way: concurrent requests with the same new credential
    /// share one check instead of each starting their own.
    pending: DashMap<CacheKey, Arc<OnceCell<Checked>>>,
    throttle: FailureThrottle,
    /// When each key's `lastUsedAt` was last written from here.
    touched: DashMap<KeyId, Instant>,
    /// A real bcrypt hash of a value nobody presents, for unknown names.
    dummy_hash: OnceCell<String>,
    metrics: Arc<AuthMetrics>,
}

impl Authenticator {
    /// An authenticator with empty caches; `metrics` is where it counts its work.
    pub fn new(
        store: Arc<dyn CredentialStore>,
        settings: AuthSettings,
        metrics: Arc<AuthMetrics>,
    ) -> Self {
        Self {
            store,
            settings,
            accepted: VerdictCache::new(CACHE_CAPACITY),
            refused: VerdictCache::new(CACHE_CAPACITY),
            pending: DashMap::new(),
            throttle: FailureThrottle::new(settings.throttle),
            touched: DashMap::new(),
            dummy_hash: OnceCell::new(),
            metrics,
        }
    }

    /// Checks an `Authorization` value sent from `client` (the client
    /// address; `None` when unknown, which the throttle cannot count).
    pub async fn authenticate(
        &self,
        header: Option<&str>,
        client: Option<IpAddr>,
    ) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let key: CacheKey = Sha256::digest(header.as_bytes()).into();
        // Before the throttle: a credential that verified lately passes
        // while its address is refused, so behind a NAT or an ingress one
        // client guessing does not lock out everyone sharing the address.
        // It costs nothing, and guessing gains nothing from it: only a
        // credential that was right is in this cache.
        if let Some(principal) = self.accepted.get(&key) {
            return Ok(principal);
        }
        if let Some(retry_after) = client.and_then(|ip| self.throttle.refused_for(ip)) {
            self.metrics.throttled.inc();
            return Err(AuthError::TooManyFailures { retry_after });
        }
        let checked = if self.refused.get(&key).is_some() {
            Err(AuthError::Invalid)
        } else {
            let flight = self
                .pending
                .entry(key)
                .or_insert_with(|| Arc::new(OnceCell::new()))
                .clone();
            // Removed however this ends, a client hanging up included: a
            // flood of distinct headers cannot leave entries behind.
            let _pending = PendingCheck {
                pending: &self.pending,
                key,
            };
            flight
                .get_or_init(|| async {
                    // Only a check that runs takes a slot; requests with the
                    // same header wait on it for free.
                    let _slot = self
                        .throttle
                        .begin_check(client)
                        .map_err(|retry_after| AuthError::TooManyFailures { retry_after })?;
                    self.check(header).await
                })
                .await
                .clone()
        };
        match checked {
            Ok((principal, ttl)) => {
                self.accepted.insert(key, principal.clone(), ttl);
                Ok(principal)
            }
            Err(AuthError::Invalid) => {
                self.refused.insert(key, (), self.settings.refusal_ttl);
                self.metrics.failures.inc();
                if let Some(ip) = client {
                    self.throttle.record_failure(ip);
                }
                Err(AuthError::Invalid)
            }
            Err(other) => Err(other),
        }
    }

    /// The check itself, on a cache miss: what was accepted, and for how
    /// long the verdict may be trusted.
    async fn check(&self, header: &str) -> Checked {
        let (scheme, value) = header.split_once(' ').ok_or(AuthError::Invalid)?;
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let principal = self.check_password(value).await?;
            Ok((principal, self.settings.password_ttl))
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let key = ApiKey::parse(value).map_err(|_| AuthError::Invalid)?;
            let principal = self.check_api_key(&key).await?;
            Ok((principal, self.settings.api_key_ttl))
        } else {
            Err(AuthError::Invalid)
        }
    }

    async fn check_password(&self, encoded: &str) -> Result<Principal, AuthError> {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| AuthError::Invalid)?;
        let decoded = String::from_utf8(decoded).map_err(|_| AuthError::Invalid)?;
        let (user, password) = decoded.split_once(':').ok_or(AuthError::Invalid)?;
        let password = SecretString::from(password.to_owned());
        let account = self.store.find_account(user).await.map_err(|e| {
            tracing::warn!(
                error = &e as &(dyn std::error::Error + 'static),
                "cannot check a password"
            );
            AuthError::StoreUnavailable
        })?;
        // An unknown name still costs one bcrypt run, so response times do
        // not tell which names exist.
        let hash = match &account {
            Some(account) => account.bcrypt_hash.as_str(),
            None => self.dummy_hash().await,
        };
        self.metrics.bcrypt_runs.inc();
        let matches = credentials::password::verify(&password, hash).await;
        match account {
            Some(account) if matches => Ok(Principal {
                name: account.username,
                role: account.role,
            }),
            _ => Err(AuthError::Invalid),
        }
    }

    async fn check_api_key(&self, key: &ApiKey) -> Result<Principal, AuthError> {
        let stored = self
            .store
            .find_api_key(key.key_id())
            .await
            .map_err(|e| {
                tracing::warn!(
                    error = &e as &(dyn std::error::Error + 'static),
                    "cannot check an API key"
                );
                AuthError::StoreUnavailable
            })?
            .ok_or(AuthError::Invalid)?;
        let Some(digest) = &stored.digest else {
            tracing::warn!(
                key_id = %stored.key_id,
                "an API key stored before keys were checked by digest was presented; \
                 it is refused: mint a new one and delete this one"
            );
            return Err(AuthError::Invalid);
        };
        if !digest.matches(&key.digest()) {
            return Err(AuthError::Invalid);
        }
        self.note_use(key.key_id());
        Ok(Principal {
            name: format!("apikey:{}", stored.name),
            role: stored.role,
        })
    }

    /// Writes `lastUsedAt` in the background, at most once per
    /// `touch_interval` per key: never a store write per request.
    fn note_use(&self, key_id: &KeyId) {
        let now = Instant::now();
        let due = self
            .touched
            .get(key_id)
            .is_none_or(|at| now.duration_since(*at) >= self.settings.touch_interval);
        if !due {
            return;
        }
        if self.touched.len() >= TOUCHED_CAPACITY {
            self.touched.clear();
        }
        self.touched.insert(key_id.clone(), now);
        let (store, key_id) = (self.store.clone(), key_id.clone());
        tokio::spawn(async move {
            if let Err(e) = store.touch_api_key(&key_id, SystemTime::now()).await {
                tracing::debug!(error = &e as &(dyn std::error::Error + 'static), key_id = %key_id, "lastUsedAt not written");
            }
        });
    }

    async fn dummy_hash(&self) -> &str {
        self.dummy_hash
            .get_or_init(|| async {
                let nobody = SecretString::from(format!("{:?}", Instant::now()));
                credentials::password::hash(&nobody)
                    .await
                    .unwrap_or_default()
            })
            .await
    }
}

struct PendingCheck<'a> {
    pending: &'a DashMap<CacheKey, Arc<OnceCell<Checked>>>,
    key: CacheKey,
}

impl Drop for PendingCheck<'_> {
    fn drop(&mut self) {
        self.pending.remove(&self.key);
    }
}

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
        let client = crate::client_address::ClientAddress::of(&req);
        let verdict = match (
            value.to_str(),
            req.app_data::<web::Data<Authenticator>>().cloned(),
        ) {
            (Err(_), _) => Err(AuthError::Invalid),
            (Ok(_), None) => {
                tracing::error!("no Authenticator is configured; every credential is refused");
                Err(AuthError::StoreUnavailable)
            }
            (Ok(value), Some(authenticator)) => {
                let value = value.to_owned();
                authenticator.authenticate(Some(&value), client).await
            }
        };
        req.extensions_mut().insert(Verdict(verdict));
    }
    next.call(req).await
}

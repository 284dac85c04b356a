//! OAuth2 client credentials (RFC 6749 §4.4) for `target.auth` of type
//! `oauth2`: the token endpoint is asked with `client_secret_basic`, and
//! the token kept in a cache every consumer shares.
//!
//! A token is cached per (token URL, client id, scope, audience) and the
//! SHA-256 of the client secret: consumers with the same client share one
//! token, and a consumer whose secret is wrong never rides on another's
//! token. It is used until 90 % of its `expires_in` has passed (at most a
//! minute before the end), so it is replaced before it runs out. One fetch
//! runs at a time per key (the others wait for its token); a failed fetch
//! is answered for a second to everyone who waited on it, so a broken
//! endpoint is not hammered by every delivery. A token the target refused
//! (401) is dropped, unless a newer one replaced it meanwhile.
//!
//! The endpoint is reached through the forwarder's guarded client
//! (`FORWARD_DENY_PRIVATE`, no redirects); a failure is a retryable
//! failure of kind `auth` whose reason never holds the secret or a token.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use base64::Engine;
use dashmap::DashMap;
use gateway::{ErrorKind, Failure};
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::network::with_causes;
use crate::targets::{OAuth2Auth, TokenUrl};
use crate::FieldError;

/// How long a token endpoint may take to answer.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// A token's lifetime when the endpoint gives no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// The longest a token is kept, whatever its `expires_in`.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// The most a token is refreshed ahead of its end.
const MAX_MARGIN: Duration = Duration::from_secs(60);
/// How long a failed fetch is answered to later callers without asking
/// again.
const FAILURE_HOLD: Duration = Duration::from_secs(1);
/// How often a 401 from a target may make its key fetch a new token: a
/// target that refuses every token would otherwise have the token endpoint
/// asked once per message, at the consumer's full rate.
const REPLACE_HOLD: Duration = Duration::from_secs(1);
/// The most of a token endpoint's answer that is read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Which cached token a consumer uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    token_url: String,
    client_id: String,
    scope: Option<String>,
    audience: Option<String>,
    secret_sha256: [u8; 32],
}

/// The tokens every consumer shares, one slot per key while some
/// forwarder uses it.
#[derive(Debug, Default)]
pub struct TokenCache {
    slots: DashMap<TokenKey, Weak<TokenSlot>>,
}

/// One key's token and the lock that makes its fetches one at a time.
#[derive(Debug, Default)]
struct TokenSlot {
    current: Mutex<Option<Arc<Token>>>,
    /// Held while fetching; holds the last failure, answered for
    /// `FAILURE_HOLD`.
    fetching: tokio::sync::Mutex<Option<(Instant, Failure)>>,
    /// When a 401 last dropped the token (`REPLACE_HOLD`).
    replaced_at: Mutex<Option<Instant>>,
}

/// An access token as the target gets it.
#[derive(Debug)]
pub struct Token {
    /// `Bearer <token>`, marked sensitive.
    header: HeaderValue,
    /// When it is to be replaced.
    refresh_at: Instant,
}

impl Token {
    /// The `Authorization` value.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }
}

/// What one forwarder needs to get tokens: its grant and its key's slot.
#[derive(Debug)]
pub struct TokenSource {
    slot: Arc<TokenSlot>,
    grant: Grant,
    client: reqwest::Client,
}

#[derive(Debug)]
struct Grant {
    token_url: TokenUrl,
    /// `Basic base64(urlencode(id):urlencode(secret))`, sensitive.
    authorization: HeaderValue,
    /// `grant_type=client_credentials[&scope=…][&audience=…]`.
    body: String,
}

impl TokenCache {
    /// The token source for `auth`, sharing the slot of every other
    /// forwarder with the same key; requests go through `client`.
    pub fn source(
        &self,
        auth: &OAuth2Auth,
        token_url: TokenUrl,
        client: reqwest::Client,
    ) -> Result<TokenSource, FieldError> {
        let key = TokenKey {
            token_url: token_url.as_url().to_string(),
            client_id: auth.client_id.clone(),
            scope: auth.scope.clone(),
            audience: auth.audience.clone(),
            secret_sha256: Sha256::digest(auth.client_secret.expose_secret().as_bytes()).into(),
        };
        let slot = {
            let mut entry = self.slots.entry(key).or_default();
            match entry.upgrade() {
                Some(slot) => slot,
                None => {
                    let slot = Arc::new(TokenSlot::default());
                    *entry = Arc::downgrade(&slot);
                    slot
                }
            }
        };
        // Keys no forwarder uses any more go, so the map stays as large as
        // the set of clients in use.
        self.slots.retain(|_, slot| slot.strong_count() > 0);
        Ok(TokenSource {
            slot,
            grant: Grant::of(auth, token_url)?,
            client,
        })
    }

    /// Keys with a slot in use (for tests).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no slot is in use.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

impl Grant {
    fn of(auth: &OAuth2Auth, token_url: TokenUrl) -> Result<Self, FieldError> {
        // RFC 6749 §2.3.1: both parts form-urlencoded before the Basic
        // encoding.
        let encode =
            |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let pair = SecretString::from(format!(
            "{}:{}",
            encode(&auth.client_id),
            encode(auth.client_secret.expose_secret())
        ));
        let basic = base64::engine::general_purpose::STANDARD.encode(pair.expose_secret());
        let mut authorization = HeaderValue::from_str(&format!("Basic {basic}"))
            .map_err(|_| FieldError::new("target.auth.clientSecret", "not usable in a header"))?;
        authorization.set_sensitive(true);
        let mut body = url::form_urlencoded::Serializer::new(String::new());
        body.append_pair("grant_type", "client_credentials");
        if let Some(scope) = &auth.scope {
            body.append_pair("scope", scope);
        }
        if let Some(audience) = &auth.audience {
            body.append_pair("audience", audience);
        }
        Ok(Self {
            token_url,
            authorization,
            body: body.finish(),
        })
    }
}

impl TokenSource {
    /// A token that is not due for replacement: the cached one, or one
    /// fetched now (by this caller, or by the one already fetching).
    pub async fn token(&self) -> Result<Arc<Token>, Failure> {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let mut last_failure = self.slot.fetching.lock().await;
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        if let Some((at, failure)) = last_failure.as_ref() {
            if at.elapsed() < FAILURE_HOLD {
                return Err(failure.clone());
            }
        }
        match self.fetch().await {
            Ok(token) => {
                let token = Arc::new(token);
                *self.current() = Some(token.clone());
                *last_failure = None;
                Ok(token)
            }
            Err(failure) => {
                *last_failure = Some((Instant::now(), failure.clone()));
                Err(failure)
            }
        }
    }

    /// The target refused `rejected` (401): drop it, unless a newer token
    /// replaced it meanwhile or a 401 dropped one within `REPLACE_HOLD`,
    /// and get another (or the one kept).
    pub async fn replace(&self, rejected: &Arc<Token>) -> Result<Arc<Token>, Failure> {
        {
            let _fetching = self.slot.fetching.lock().await;
            let mut replaced_at = self
                .slot
                .replaced_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let recently = replaced_at.is_some_and(|at| at.elapsed() < REPLACE_HOLD);
            let mut current = self.current();
            if !recently && current.as_ref().is_some_and(|t| Arc::ptr_eq(t, rejected)) {
                *current = None;
                *replaced_at = Some(Instant::now());
            }
        }
        self.token().await
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<Arc<Token>>> {
        // A panic while holding it left a whole `Option`: still usable.
        self.slot
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fresh(&self) -> Option<Arc<Token>> {
        self.current()
            .as_ref()
            .filter(|t| Instant::now() < t.refresh_at)
            .cloned()
    }

    async fn fetch(&self) -> Result<Token, Failure> {
        let failure = |reason: String| Failure::new(ErrorKind::Auth, reason);
        let asked = Instant::now();
        let mut response = self
            .client
            .post(self.grant.token_url.as_url().clone())
            .timeout(TOKEN_TIMEOUT)
            .header(AUTHORIZATION, self.grant.authorization.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(self.grant.body.clone())
            .send()
            .await
            .map_err(|err| {
                let err = err.without_url();
                let head = if err.is_timeout() {
                    "the OAuth2 token endpoint did not answer in time".to_owned()
                } else {
                    "cannot reach the OAuth2 token endpoint".to_owned()
                };
                failure(with_causes(head, &err))
            })?;
        let status = response.status();
        let mut body = Vec::new();
        while body.len() <= MAX_ANSWER_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(_) => {
                    return Err(failure(
                        "the OAuth2 token endpoint's answer broke off".to_owned(),
                    ))
                }
            }
        }
        if !status.is_success() {
            // The `error` code (RFC 6749 §5.2) says why; the description
            // is the server's free text and stays out.
            let code = serde_json::from_slice::<ErrorAnswer>(&body)
                .ok()
                .map(|e| format!(" ({})", e.error.chars().take(64).collect::<String>()))
                .unwrap_or_default();
            return Err(failure(format!(
                "the OAuth2 token endpoint answered {status}{code}"
            )));
        }
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| {
            failure(
                "the OAuth2 token endpoint's answer is not a token (JSON with access_token)"
                    .to_owned(),
            )
        })?;
        if !answer.token_type.eq_ignore_ascii_case("bearer") {
            return Err(failure(format!(
                "the OAuth2 token endpoint issued a `{}` token; only bearer tokens are sent",
                answer.token_type.chars().take(32).collect::<String>()
            )));
        }
        let mut header =
            HeaderValue::from_str(&format!("Bearer {}", answer.access_token.expose_secret()))
                .map_err(|_| failure("the OAuth2 access token cannot go in a header".to_owned()))?;
        header.set_sensitive(true);
        // Negative, NaN or absurd lifetimes are the server's mistake: the
        // default then, and never more than a day.
        let lifetime = answer
            .expires_in
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .unwrap_or(DEFAULT_LIFETIME)
            .min(MAX_LIFETIME);
        let margin = (lifetime / 10).min(MAX_MARGIN);
        Ok(Token {
            header,
            refresh_at: asked + lifetime.saturating_sub(margin),
        })
    }
}

/// A successful token answer (RFC 6749 §5.1).
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: SecretString,
    token_type: String,
    /// Seconds; some servers send a string or a fraction.
    #[serde(default, deserialize_with = "seconds")]
    expires_in: Option<f64>,
}

/// An error answer (RFC 6749 §5.2).
#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
}

fn seconds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seconds {
        Number(f64),
        Text(String),
    }
    Ok(match Option::<Seconds>::deserialize(deserializer)? {
        Some(Seconds::Number(n)) => Some(n),
        Some(Seconds::Text(t)) => t.trim().parse().ok(),
        None => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(secret: &str) -> OAuth2Auth {
        OAuth2Auth {
            token_url: "https://auth.example.com/token".into(),
            client_id: "client id".into(),
            client_secret: SecretString::from(secret),
            scope: Some("a b".into()),
            audience: None,
        }
    }

    fn url() -> TokenUrl {
        TokenUrl::parse("https://auth.example.com/token", None).expect("a URL")
    }

    #[test]
    fn the_grant_is_client_secret_basic_with_form_encoded_parts() {
        let grant = Grant::of(&auth("s:e/cret"), url()).unwrap();
        let expected = base64::engine::general_purpose::STANDARD.encode("client+id:s%3Ae%2Fcret");
        assert_eq!(grant.authorization, format!("Basic {expected}").as_str());
        assert!(grant.authorization.is_sensitive());
        assert_eq!(grant.body, "grant_type=client_credentials&scope=a+b");
        assert!(!format!("{grant:?}").contains("cret"));
    }

    #[test]
    fn same_client_shares_a_slot_and_another_secret_does_not() {
        let cache = TokenCache::default();
        let client = reqwest::Client::new();
        let a = cache.source(&auth("one"), url(), client.clone()).unwrap();
        let b = cache.source(&auth("one"), url(), client.clone()).unwrap();
        let c = cache.source(&auth("two"), url(), client.clone()).unwrap();
        assert!(Arc::ptr_eq(&a.slot, &b.slot));
        assert!(!Arc::ptr_eq(&a.slot, &c.slot));
        assert_eq!(cache.len(), 2);
        drop((a, b));
        let _d = cache.source(&auth("three"), url(), client).unwrap();
        assert_eq!(cache.len(), 2, "the unused key went");
    }

    #[test]
    fn token_answers_are_read_leniently() {
        let answer: TokenAnswer =
            serde_json::from_str(r#"{"access_token":"t","token_type":"Bearer","expires_in":"2"}"#)
                .unwrap();
        assert_eq!(answer.expires_in, Some(2.0));
        let answer: TokenAnswer =
            serde_json::from_str(r#"{"access_token":"t","token_type":"bearer"}"#).unwrap();
        assert_eq!(answer.expires_in, None);
    }
}

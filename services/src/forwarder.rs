//! `HttpForwarder`: hands a delivery to an external HTTP API and turns the
//! answer into a `DeliveryOutcome`.
//!
//! One reqwest client is shared by every consumer (pooled keep-alive
//! connections); each target brings its own method, headers and timeout.
//! Redirects are not followed: a 3xx is an answer, and following it could
//! lead past `FORWARD_ALLOWED_HOSTS`. With `FORWARD_DENY_PRIVATE` the
//! client carries the network guard: an inside IP-literal target is refused
//! when the consumer is built, a name resolving inside when it is
//! connected to (the delivery is dead-lettered). Outcome reasons end up in
//! `lastError` and dead-letter headers, so they never carry the URL.
//!
//! A batch consumer's requests go the same way, through the same client,
//! guard, headers and signature (`batch` holds their body and answer).
//! Every request first takes a slot of its target's origin
//! (`target_slots`), so all the consumers aimed at one service share a
//! bounded set of kept-alive connections to it.
//!
//! `target.auth` adds its header to every request: a fixed one (basic,
//! bearer, header) made once, or an OAuth2 token from the shared cache
//! (`oauth2`); a 401 with such a token gets a new token and one more try
//! within the same attempt. `target.tls` sends through a client of its own
//! (`tls_clients`), with the same guard and settings.
//!
//! `target.http2: "always"` to an `http://` target (h2c) is sent on the
//! `h2` crate directly (`h2c`, which says why): the same request, the same
//! handling of the answer.

mod batch;
mod h2c;
mod oauth2;
mod report;
mod target_slots;
mod tls_clients;

pub use oauth2::TokenCache;
pub use target_slots::{OriginSlots, TargetSlots};
pub use tls_clients::TlsClients;

use std::sync::Arc;
use std::time::Duration;

use gateway::{
    Answer, Attempt, Batch, BatchOutcome, DeliveryOutcome, DeliveryTarget, ErrorKind, Failure,
    IncomingMessage,
};
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER,
};
use reqwest::StatusCode;

use crate::network::{with_causes, AddressGuard, AddressNotAllowed};
use crate::signing::SigningKeys;
use crate::targets::{Http2Mode, HttpTarget, TargetAuth, TokenUrl};
use crate::FieldError;
use oauth2::{Token, TokenSource};
use tls_clients::TlsClient;

/// The names every request carries, made once: a name given as text is
/// checked and copied into a new allocation on every request.
static WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
static WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
static WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
static QUEUE: HeaderName = HeaderName::from_static(gateway::headers::QUEUE);
static ATTEMPT: HeaderName = HeaderName::from_static(gateway::headers::ATTEMPT);
static BATCH_SIZE: HeaderName = HeaderName::from_static(gateway::headers::BATCH_SIZE);

/// What every forwarding request says it comes from.
const USER_AGENT_VALUE: &str = concat!("workerrmq/", env!("CARGO_PKG_VERSION"));

/// Why a request with `target.http2: "always"` broke off: a target that
/// speaks only HTTP/1.1 ends the connection at the HTTP/2 preface, with an
/// error that does not name the version.
const NOT_HTTP2_HINT: &str =
    "over HTTP/2 with prior knowledge (target.http2 \"always\"; does the target speak HTTP/2?)";

/// Response bodies are read (so the connection can be reused) up to this
/// much, then dropped.
const MAX_RESPONSE_DRAIN: usize = 64 * 1024;

/// The clients every forwarder shares (one per `target.http2` mode, each
/// with its own connection pool), and the guard they apply.
#[derive(Debug, Clone)]
pub struct ForwardClient {
    /// `auto`: HTTP/2 where TLS negotiates it, else HTTP/1.1.
    client: reqwest::Client,
    /// `never`: HTTP/1.1 only.
    http1: reqwest::Client,
    /// `always`: HTTP/2, as h2c with prior knowledge to http targets.
    http2: reqwest::Client,
    /// `FORWARD_DENY_PRIVATE`: refuse inside addresses.
    guard: Option<AddressGuard>,
    /// `MAX_CONNECTIONS_PER_TARGET`: requests open to one origin at once.
    slots: Arc<TargetSlots>,
    /// OAuth2 tokens, shared by every consumer.
    tokens: Arc<TokenCache>,
    /// Clients for targets with `target.tls`, one per set of settings.
    tls: Arc<TlsClients>,
    /// `always` to an `http://` target: one h2c connection per origin.
    h2c: Arc<h2c::H2cConnections>,
}

/// The shared client for every forwarder. With `deny_private`, inside
/// addresses are refused except for hosts on `allowed_hosts`
/// (`FORWARD_ALLOWED_HOSTS`, the operator's word). At most
/// `per_target` requests are open to one origin at once.
pub fn http_client(
    deny_private: bool,
    allowed_hosts: Option<&[String]>,
    per_target: usize,
) -> reqwest::Result<ForwardClient> {
    let guard = deny_private.then(|| AddressGuard::new(allowed_hosts.unwrap_or_default()));
    let slots = Arc::new(TargetSlots::new(per_target));
    let build = |mode| guarded_builder(guard.as_ref(), slots.limit(), mode).build();
    Ok(ForwardClient {
        client: build(Http2Mode::Auto)?,
        http1: build(Http2Mode::Never)?,
        http2: build(Http2Mode::Always)?,
        h2c: Arc::new(h2c::H2cConnections::new(guard.clone())),
        guard,
        slots,
        tokens: Arc::new(TokenCache::default()),
        tls: Arc::new(TlsClients::default()),
    })
}

impl ForwardClient {
    /// The shared OAuth2 token cache.
    pub fn tokens(&self) -> &TokenCache {
        &self.tokens
    }

    /// The shared clients of targets with `target.tls`.
    pub fn tls_clients(&self) -> &TlsClients {
        &self.tls
    }
}

/// A forwarding client's builder for `mode`, carrying the guard.
fn guarded_builder(
    guard: Option<&AddressGuard>,
    pooled_per_host: usize,
    mode: Http2Mode,
) -> reqwest::ClientBuilder {
    let mut builder = base_builder(pooled_per_host);
    builder = match mode {
        Http2Mode::Never => builder.http1_only(),
        Http2Mode::Auto => builder,
        Http2Mode::Always => builder.http2_prior_knowledge(),
    };
    if let Some(guard) = guard {
        // A proxy would resolve the target itself, out of the guard's sight.
        builder = builder.dns_resolver(guard.resolver()).no_proxy();
    }
    builder
}

/// What every forwarding client has in common.
fn base_builder(pooled_per_host: usize) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // Retrying is the consumer's retry policy's job, which counts the
        // attempt; reqwest's own (on by default since 0.13, for protocol
        // NACKs) would resend behind its back, and to be ready to, it
        // copied every request's headers and extensions before sending it.
        // With no retry allowed, the copy is never made.
        .retry(reqwest::retry::never().max_retries_per_request(0))
        // Every connection a target's slots can have open stays pooled
        // for the next request instead of being closed and opened again.
        .pool_max_idle_per_host(pooled_per_host)
        .connect_timeout(Duration::from_secs(5))
        .user_agent(USER_AGENT_VALUE)
}

/// The delivery target of a consumer with an HTTP target: forwards each delivery (or batch) as one
/// request and reads the answer as an outcome.
pub struct HttpForwarder {
    client: reqwest::Client,
    /// `always` to an `http://` target: requests go over h2c, on its
    /// origin's connection (`client` only builds them).
    h2c: Option<h2c::H2cTarget>,
    /// `always`: a failure to speak HTTP/2 says so.
    http2: Http2Mode,
    method: reqwest::Method,
    url: reqwest::Url,
    headers: HeaderMap,
    timeout: Duration,
    /// `None`: requests go unsigned.
    signing: Option<SigningKeys>,
    slots: OriginSlots,
    /// `None`: the consumer's attempts are not recorded, so nothing of the
    /// request or answer is kept.
    report: Option<report::Report>,
    /// `target.auth` of type `oauth2`: where its tokens come from.
    oauth: Option<TokenSource>,
    /// Keeps the shared client of a target with `target.tls` in use.
    _tls: Option<Arc<TlsClient>>,
}

/// What a forwarder keeps of each attempt for its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptDetail {
    /// Nothing: the consumer's attempts are not recorded.
    Off,
    /// The request's shape and the answer, with up to this many bytes of
    /// its body (0: none).
    Keep {
        /// Bytes of each response body kept.
        body_bytes: usize,
    },
}

impl HttpForwarder {
    /// A forwarder to `target` over the shared `client`, signing each request with `signing` when
    /// given.
    pub fn new(
        client: ForwardClient,
        target: &HttpTarget,
        signing: Option<SigningKeys>,
        detail: AttemptDetail,
    ) -> Result<Self, FieldError> {
        let url = reqwest::Url::parse(&target.url)
            .map_err(|e| FieldError::new("target.url", e.to_string()))?;
        if let Some(guard) = &client.guard {
            guard.check_url(&url).map_err(|refused| {
                FieldError::new("target.url", format!("{refused} (FORWARD_DENY_PRIVATE refuses loopback, private and link-local addresses)"))
            })?;
        }
        let method = reqwest::Method::from_bytes(target.method.as_bytes()).map_err(|_| {
            FieldError::new(
                "target.method",
                format!("`{}` is not a method", target.method),
            )
        })?;
        let mut headers = HeaderMap::new();
        for (name, value) in &target.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                FieldError::new("target.headers", format!("`{name}` is not a header name"))
            })?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                FieldError::new(format!("target.headers.{name}"), "not a valid header value")
            })?;
            headers.insert(name, value);
        }
        if let Some((name, value)) = target
            .auth
            .as_deref()
            .map(TargetAuth::static_header)
            .transpose()?
            .flatten()
        {
            headers.insert(name, value);
        }
        let oauth = match target.auth.as_deref() {
            Some(TargetAuth::Oauth2(auth)) => {
                let token_url = TokenUrl::parse(&auth.token_url, None)?;
                if let Some(guard) = &client.guard {
                    guard.check_url(token_url.as_url()).map_err(|refused| {
                        FieldError::new("target.auth.tokenUrl", format!("{refused} (FORWARD_DENY_PRIVATE refuses loopback, private and link-local addresses)"))
                    })?;
                }
                Some(
                    client
                        .tokens
                        .source(auth, token_url, client.client.clone())?,
                )
            }
            _ => None,
        };
        let report = match detail {
            AttemptDetail::Off => None,
            AttemptDetail::Keep { body_bytes } => Some(report::Report::new(
                &method,
                &url,
                &headers,
                oauth.is_some(),
                signing.is_some(),
                body_bytes,
            )),
        };
        let tls = match target.tls.as_deref() {
            Some(tls) => Some(client.tls.client(tls, target.http2, || {
                guarded_builder(client.guard.as_ref(), client.slots.limit(), target.http2)
            })?),
            None => None,
        };
        let h2c = (tls.is_none() && target.http2 == Http2Mode::Always && url.scheme() == "http")
            .then(|| client.h2c.target(&url));
        Ok(Self {
            h2c,
            slots: client.slots.of(&url),
            client: match (&tls, target.http2) {
                (Some(tls), _) => tls.0.clone(),
                (None, Http2Mode::Never) => client.http1,
                (None, Http2Mode::Auto) => client.client,
                (None, Http2Mode::Always) => client.http2,
            },
            http2: target.http2,
            method,
            url,
            headers,
            timeout: Duration::from_millis(target.timeout_ms),
            signing,
            report,
            oauth,
            _tls: tls,
        })
    }
}

#[async_trait::async_trait]
impl DeliveryTarget for HttpForwarder {
    async fn deliver(&self, message: &IncomingMessage) -> Attempt {
        let webhook = Webhook {
            id: &message.message_id,
            queue: message.queue.as_str(),
            content_type: message
                .content_type
                .as_deref()
                .unwrap_or("application/json"),
            added_headers: &message.added_headers,
            extra: (&ATTEMPT, HeaderValue::from(message.attempt)),
            trace: message.trace.as_ref(),
            body: message.payload.clone(),
        };
        let sent = self.send(|now| self.request(&webhook, now)).await;
        let (outcome, answer) = match sent {
            // The slot is held until the answer is read: the connection is
            // busy till then.
            Sent::Answered(mut response, _slot) => {
                let status = response.status();
                let retry_after = retry_after(response.headers());
                let answer = self.answer(&mut response).await;
                (classify(status, retry_after), answer)
            }
            Sent::Unanswered(outcome) => (outcome, None),
            Sent::NoToken(failure) => (DeliveryOutcome::retry(failure), None),
        };
        Attempt {
            outcome,
            request: self.report.as_ref().map(report::Report::request),
            answer,
        }
    }

    /// One request for the whole batch: a JSON array body, `webhook-id` the
    /// batch's id, the signature over the whole body.
    async fn deliver_batch(&self, batch: &Batch) -> BatchOutcome {
        let n = batch.messages.len();
        let webhook = Webhook {
            id: &batch.id,
            queue: batch.queue.as_str(),
            content_type: "application/json",
            added_headers: &[],
            extra: (&BATCH_SIZE, HeaderValue::from(n)),
            // One request is one span and has one parent: the trace of the
            // first message that carries one. The other messages' traces are
            // not sent; their attempt records keep them.
            trace: batch.messages.iter().find_map(|m| m.trace.as_ref()),
            // Shared by a resend after a 401, not copied.
            body: bytes::Bytes::from(batch::body(&batch.messages)),
        };
        let sent = self.send(|now| self.request(&webhook, now)).await;
        let mut outcome = match sent {
            Sent::Answered(mut response, _slot) => {
                let status = response.status();
                if !status.is_success() {
                    let retry_after = retry_after(response.headers());
                    let answer = self.answer(&mut response).await;
                    let mut outcome = BatchOutcome::all(classify(status, retry_after), n);
                    outcome.answer = answer;
                    outcome
                } else {
                    // Read whole (up to its limit) for its retry and reject
                    // lists; the record keeps the start of it.
                    let headers = self
                        .report
                        .as_ref()
                        .map(|r| r.kept_headers(response.headers()));
                    let limit = batch::MAX_ANSWER_BYTES;
                    let body = read_body(&mut response, limit, limit).await;
                    let mut outcome =
                        batch::after_success(&batch.id, &batch.messages, body.whole());
                    outcome.answer = self.report.as_ref().zip(headers).map(|(report, headers)| {
                        report.answer_of(status.as_u16(), headers, &body.kept, body.cut())
                    });
                    outcome
                }
            }
            Sent::Unanswered(outcome) => BatchOutcome::all(outcome, n),
            Sent::NoToken(failure) => BatchOutcome::all(DeliveryOutcome::retry(failure), n),
        };
        outcome.sent = self.report.as_ref().map(report::Report::request);
        outcome
    }
}

/// What one request carries besides the target's own settings: a single
/// delivery's or a whole batch's.
struct Webhook<'a> {
    /// `webhook-id`: the message's id, or the batch's.
    id: &'a str,
    /// The main queue the delivery or batch came from.
    queue: &'a str,
    content_type: &'a str,
    /// Headers a transform added (never over the target's own).
    added_headers: &'a [(String, String)],
    /// The attempt's number, or the batch's size.
    extra: (&'static HeaderName, HeaderValue),
    /// The W3C trace the request is a span of.
    trace: Option<&'a gateway::Traceparent>,
    body: bytes::Bytes,
}

impl HttpForwarder {
    /// The request for `webhook`, signed at `now`: the target's method,
    /// URL, timeout and headers, the Standard Webhooks headers, the queue,
    /// the signature over the body. The one place a single delivery and a
    /// batch are made into a request.
    fn request(
        &self,
        webhook: &Webhook<'_>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> reqwest::RequestBuilder {
        let timestamp = now.timestamp();
        let mut request = self
            .client
            .request(self.method.clone(), self.url.clone())
            .timeout(self.timeout)
            .header(CONTENT_TYPE, webhook.content_type);
        if let Some(headers) = self.headers_with(webhook.added_headers) {
            request = request.headers(headers);
        }
        let (extra_name, extra_value) = &webhook.extra;
        request = request
            .header(WEBHOOK_ID.clone(), webhook.id)
            .header(WEBHOOK_TIMESTAMP.clone(), HeaderValue::from(timestamp))
            .header(QUEUE.clone(), webhook.queue)
            .header((*extra_name).clone(), extra_value.clone());
        request = with_trace(request, webhook.trace);
        if let Some(signing) = &self.signing {
            request = request.header(
                WEBHOOK_SIGNATURE.clone(),
                signing.signature(webhook.id, timestamp, &webhook.body, now),
            );
        }
        request.body(webhook.body.clone())
    }
}

/// What sending one request (or batch) came to.
enum Sent {
    /// The target answered; the origin's slot is held until the answer is
    /// read.
    Answered(reqwest::Response, tokio::sync::OwnedSemaphorePermit),
    /// No answer came (connect, TLS, timeout, the network guard): what
    /// the attempt comes to.
    Unanswered(DeliveryOutcome),
    /// No OAuth2 token could be had: nothing was sent.
    NoToken(Failure),
}

impl HttpForwarder {
    /// Sends the request `build` makes for the time it is signed at, with
    /// the OAuth2 token when the target has one, in one of the origin's
    /// slots. A 401 to a token gets another token and the request made
    /// again (signed anew), once, within the same attempt.
    async fn send(
        &self,
        build: impl Fn(chrono::DateTime<chrono::Utc>) -> reqwest::RequestBuilder,
    ) -> Sent {
        let mut token = match self.token().await {
            Ok(token) => token,
            Err(failure) => return Sent::NoToken(failure),
        };
        let mut replaced = false;
        let mut sent_again = false;
        // A request sent again on a new h2c connection keeps what is left
        // of the first one's time.
        let deadline = self
            .h2c
            .as_ref()
            .map(|_| tokio::time::Instant::now() + self.timeout);
        loop {
            let request = with_token(build(chrono::Utc::now()), token.as_deref());
            let slot = self.slots.take().await;
            let time_left = deadline
                .filter(|_| sent_again)
                .map(|at| at.saturating_duration_since(tokio::time::Instant::now()));
            let mut response = match self.transmit(request, time_left).await {
                Ok(response) => response,
                // The target says it never took it (a GOAWAY, a refused
                // stream): made again, it goes once more.
                Err(Unsent::H2c(h2c::H2cError::Unprocessed(err))) if !sent_again => {
                    tracing::debug!(error = %err, "the target refused the request unprocessed; sending it again");
                    sent_again = true;
                    continue;
                }
                Err(Unsent::H2c(err)) => return Sent::Unanswered(err.outcome()),
                Err(Unsent::Reqwest(err)) => return Sent::Unanswered(self.not_sent(err)),
            };
            let refused = token
                .as_ref()
                .filter(|_| !replaced && response.status() == StatusCode::UNAUTHORIZED);
            let Some(rejected) = refused else {
                return Sent::Answered(response, slot);
            };
            read_body(&mut response, MAX_RESPONSE_DRAIN, 0).await;
            drop(slot);
            replaced = true;
            match self.replace_token(rejected).await {
                Ok(fresh) => token = Some(fresh),
                Err(failure) => return Sent::NoToken(failure),
            }
        }
    }
}

/// Why one request got no answer, by the way it went.
enum Unsent {
    Reqwest(reqwest::Error),
    H2c(h2c::H2cError),
}

impl HttpForwarder {
    /// One request on its way: over h2c on the origin's connection, or
    /// through reqwest. `time_left`, when given, replaces its timeout.
    async fn transmit(
        &self,
        request: reqwest::RequestBuilder,
        time_left: Option<Duration>,
    ) -> Result<reqwest::Response, Unsent> {
        let Some(h2c) = &self.h2c else {
            return request.send().await.map_err(Unsent::Reqwest);
        };
        let mut request = request.build().map_err(Unsent::Reqwest)?;
        if time_left.is_some() {
            *request.timeout_mut() = time_left;
        }
        h2c.send(request).await.map_err(Unsent::H2c)
    }
}

impl HttpForwarder {
    /// The OAuth2 token to send, when the target has `oauth2` auth.
    async fn token(&self) -> Result<Option<Arc<Token>>, Failure> {
        match &self.oauth {
            Some(source) => source.token().await.map(Some),
            None => Ok(None),
        }
    }

    /// Another token in place of the one the target refused.
    async fn replace_token(&self, rejected: &Arc<Token>) -> Result<Arc<Token>, Failure> {
        match &self.oauth {
            Some(source) => source.replace(rejected).await,
            None => Err(Failure::new(ErrorKind::Auth, "no token source")),
        }
    }
}

/// The request with the OAuth2 token, when there is one.
fn with_token(request: reqwest::RequestBuilder, token: Option<&Token>) -> reqwest::RequestBuilder {
    match token {
        Some(token) => request.header(AUTHORIZATION, token.header().clone()),
        None => request,
    }
}

impl HttpForwarder {
    /// The target's headers, and those the consumer's transform added
    /// (checked by the rules: never a reserved name). The target's own win:
    /// they may carry its credentials (`target.auth` of type `header`).
    /// `None` when there are none.
    fn headers_with(&self, added: &[(String, String)]) -> Option<HeaderMap> {
        if added.is_empty() {
            return (!self.headers.is_empty()).then(|| self.headers.clone());
        }
        let mut headers = self.headers.clone();
        for (name, value) in added {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                if !headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
        }
        Some(headers)
    }

    /// Reads the answer's body (up to `MAX_RESPONSE_DRAIN`, so the connection
    /// can be reused) and, when attempts are recorded, what the record keeps
    /// of the answer: only as much of the body as that is held.
    async fn answer(&self, response: &mut reqwest::Response) -> Option<Answer> {
        let Some(report) = &self.report else {
            read_body(response, MAX_RESPONSE_DRAIN, 0).await;
            return None;
        };
        let status = response.status().as_u16();
        let headers = report.kept_headers(response.headers());
        let body = read_body(response, MAX_RESPONSE_DRAIN, report.body_bytes()).await;
        Some(report.answer_of(status, headers, &body.kept, body.cut()))
    }
}

/// The request as a span of its own under the message's trace: the same
/// trace id, a new span id. A message without a trace goes without.
fn with_trace(
    request: reqwest::RequestBuilder,
    trace: Option<&gateway::Traceparent>,
) -> reqwest::RequestBuilder {
    match trace {
        Some(trace) => request.header(gateway::trace::HEADER, trace.child().to_string()),
        None => request,
    }
}

/// What was read of an answer's body.
struct BodyRead {
    /// Its first bytes, as many as were asked to be kept.
    kept: Vec<u8>,
    /// How many bytes were read in all.
    read: usize,
    /// Whether the body ended within the limit (not cut off, not broken).
    ended: bool,
}

impl BodyRead {
    /// The whole body, when it ended within the limit and all of it was
    /// kept.
    fn whole(&self) -> Option<&[u8]> {
        (self.ended && self.read == self.kept.len()).then_some(self.kept.as_slice())
    }

    /// Whether more was sent than `kept` holds.
    fn cut(&self) -> bool {
        !self.ended || self.read > self.kept.len()
    }
}

/// Reads the answer's body until it ends or more than `limit` bytes came (so
/// the connection can be reused), keeping the first `keep` bytes.
async fn read_body(response: &mut reqwest::Response, limit: usize, keep: usize) -> BodyRead {
    let mut body = BodyRead {
        kept: Vec::new(),
        read: 0,
        ended: false,
    };
    while body.read <= limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = keep.saturating_sub(body.kept.len()).min(chunk.len());
                body.kept.extend_from_slice(&chunk[..room]);
                body.read += chunk.len();
            }
            Ok(None) => {
                body.ended = true;
                break;
            }
            Err(_) => break,
        }
    }
    body
}

/// The outcome of a request that got no answer.
impl HttpForwarder {
    /// `not_sent`, and for a target spoken to with HTTP/2 always, a reason
    /// that says so: a target that speaks only HTTP/1.1 breaks off the h2
    /// preface with an error that does not name the version.
    fn not_sent(&self, err: reqwest::Error) -> DeliveryOutcome {
        let outcome = not_sent(err);
        match outcome {
            DeliveryOutcome::Retry {
                failure,
                retry_after,
            } if self.http2 == Http2Mode::Always && failure.kind == ErrorKind::Request => {
                let reason = format!("{NOT_HTTP2_HINT}: {}", failure.reason);
                DeliveryOutcome::Retry {
                    failure: failure.with_reason(reason),
                    retry_after,
                }
            }
            other => other,
        }
    }
}

fn not_sent(err: reqwest::Error) -> DeliveryOutcome {
    match err {
        // The guard refused the address: it will not change by itself.
        err if AddressNotAllowed::caused(&err) => DeliveryOutcome::reject(Failure::new(
            ErrorKind::AddressNotAllowed,
            "target address not allowed (FORWARD_DENY_PRIVATE)",
        )),
        // A message whose id or content type cannot be a header value
        // will never go out: no use retrying it.
        err if err.is_builder() => DeliveryOutcome::reject(Failure::new(
            ErrorKind::InvalidRequest,
            format!("the request could not be built: {}", err.without_url()),
        )),
        err => {
            let kind = report::kind_of(&err);
            DeliveryOutcome::retry(Failure::new(kind, describe(err)))
        }
    }
}

/// 2xx → delivered; 408, 429, 5xx → retry; anything else → dead-letter.
pub fn classify(status: StatusCode, retry_after: Option<Duration>) -> DeliveryOutcome {
    if status.is_success() {
        DeliveryOutcome::Delivered
    } else if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        DeliveryOutcome::Retry {
            failure: Failure::status(status.as_u16(), format!("target answered {status}")),
            retry_after,
        }
    } else {
        DeliveryOutcome::reject(Failure::status(
            status.as_u16(),
            format!("target answered {status}"),
        ))
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = raw.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
    let wait = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// What went wrong, with the causes reqwest keeps underneath ("tcp connect
/// error: Connection refused") and without the URL.
fn describe(err: reqwest::Error) -> String {
    let err = err.without_url();
    let head = if err.is_timeout() {
        "the target did not answer in time".to_owned()
    } else if err.is_connect() {
        "cannot connect to the target".to_owned()
    } else {
        format!("request to the target failed: {err}")
    };
    with_causes(head, &err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(classify(StatusCode::OK, None), DeliveryOutcome::Delivered);
        assert_eq!(
            classify(StatusCode::NO_CONTENT, None),
            DeliveryOutcome::Delivered
        );
        for retryable in [408, 429, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(retryable).unwrap();
            assert!(
                matches!(classify(status, None), DeliveryOutcome::Retry { .. }),
                "{retryable}"
            );
        }
        for final_failure in [301, 400, 401, 404, 410, 422] {
            let status = StatusCode::from_u16(final_failure).unwrap();
            assert!(
                matches!(classify(status, None), DeliveryOutcome::Reject { .. }),
                "{final_failure}"
            );
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }
}

//! `H2cConnections` and `H2cTarget`: HTTP/2 with prior knowledge over
//! cleartext (h2c), for
//! `target.http2: "always"` to an `http://` target, spoken with the `h2`
//! crate itself rather than through reqwest.
//!
//! Why not reqwest: through hyper, each HTTP/2 request crosses three tasks
//! besides the caller's (the pool's dispatcher, one that sends the body, one
//! that waits for the answer) before the connection's own. At 100 requests
//! at once to one sink that gave about half of what HTTP/1.1 over 100
//! connections gave (39k against 74k requests a second); the `h2` crate used
//! directly gave 61–73k. Here a request is sent from the delivery's own task,
//! and the answer wakes that task.
//!
//! One connection per origin, shared by every consumer sending there (a
//! forwarder finds its origin's `H2cTarget` once, as it does its slots):
//! opened on first use and opened again once it has ended: the target
//! closed it, a request on it met a GOAWAY or a broken socket, or it went
//! unused for `IDLE_TIMEOUT` (as reqwest's pool closes an idle connection).
//! A request the target's GOAWAY says it never took comes back as
//! `H2cError::Unprocessed`, which the forwarder sends once more (on the new
//! connection) within the same attempt; any other failure is the
//! attempt's. The request is the one reqwest would have sent (the
//! forwarder builds both the same way, and the headers reqwest's client adds
//! are added here); the answer goes back as a `reqwest::Response`, so
//! reading and judging it is the same code for both.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use gateway::{DeliveryOutcome, ErrorKind, Failure};
use h2::client::SendRequest;
use http::Method;
use reqwest::dns::Resolve;
use reqwest::header::{
    HeaderName, ACCEPT, CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING, UPGRADE, USER_AGENT,
};
use tokio::time::{Instant, Sleep};

use crate::network::{AddressGuard, AddressNotAllowed};

/// Longest a connection to a target takes to open, as reqwest's
/// `connect_timeout` for the other clients.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection unused for this long (checked this often, so between one
/// and two times it) is closed, as reqwest's pool closes an idle one.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Receive windows as hyper's HTTP/2 client sets them (h2's own are 64 KiB
/// for the whole connection, which every consumer of the origin shares).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// Headers that belong to one HTTP/1.1 connection: HTTP/2 forbids them (the
/// `h2` crate refuses a request carrying one), and hyper drops them for an
/// HTTP/2 request, so a target's own `Connection: …` does the same here.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Why an h2c request got no answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum H2cError {
    /// The network guard refused every address the target resolved to.
    #[error("target address not allowed (FORWARD_DENY_PRIVATE)")]
    NotAllowed,
    /// The target's name did not resolve.
    #[error("cannot resolve the target: {0}")]
    Dns(String),
    /// No TCP connection (refused, unreachable, or not within 5 s).
    #[error("cannot connect to the target: {0}")]
    Connect(String),
    /// No answer, or not all of it, within `target.timeoutMs`.
    #[error("the target did not answer in time")]
    Timeout,
    /// The request could not be made into an HTTP/2 one.
    #[error("the request could not be built: {0}")]
    Build(String),
    /// The connection or the stream broke: a target that speaks only
    /// HTTP/1.1 ends the connection at the HTTP/2 preface.
    #[error("{hint}: {0}", hint = super::NOT_HTTP2_HINT)]
    Http2(#[from] h2::Error),
    /// The target's GOAWAY came before it took the request, or it refused
    /// the stream unprocessed: it may go again as it is.
    #[error("over HTTP/2 with prior knowledge (target.http2 \"always\"): the target went away before it took the request: {0}")]
    Unprocessed(h2::Error),
}

impl H2cError {
    /// What the attempt comes to: the guard's refusal and a request that
    /// cannot be built do not change by themselves; the rest is retried.
    pub(super) fn outcome(self) -> DeliveryOutcome {
        let kind = match &self {
            H2cError::NotAllowed => ErrorKind::AddressNotAllowed,
            H2cError::Build(_) => ErrorKind::InvalidRequest,
            H2cError::Dns(_) => ErrorKind::Dns,
            H2cError::Connect(_) => ErrorKind::Connect,
            H2cError::Timeout => ErrorKind::Timeout,
            H2cError::Http2(_) | H2cError::Unprocessed(_) => ErrorKind::Request,
        };
        let failure = Failure::new(kind, self.to_string());
        match kind {
            ErrorKind::AddressNotAllowed | ErrorKind::InvalidRequest => {
                DeliveryOutcome::reject(failure)
            }
            _ => DeliveryOutcome::retry(failure),
        }
    }
}

/// The h2c connections of every consumer, one per origin.
#[derive(Debug, Default)]
pub(super) struct H2cConnections {
    /// `FORWARD_DENY_PRIVATE`: names are resolved through it.
    guard: Option<AddressGuard>,
    origins: Mutex<HashMap<(String, u16), Arc<Origin>>>,
}

/// One forwarder's way to its origin's connection.
#[derive(Debug, Clone)]
pub(super) struct H2cTarget {
    origin: Arc<Origin>,
    host: String,
    port: u16,
    guard: Option<AddressGuard>,
}

/// One origin's connection, and the lock that lets one caller at a time
/// open it.
#[derive(Debug, Default)]
struct Origin {
    open: Mutex<Option<Open>>,
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
struct Open {
    sender: SendRequest<Bytes>,
    state: Arc<ConnectionState>,
}

/// What a connection's task and the requests on it share.
#[derive(Debug)]
struct ConnectionState {
    /// Set once it takes no new requests: its task ended, it went idle, or
    /// a request on it met a GOAWAY or a broken socket.
    ended: AtomicBool,
    /// Requests sent on it: the idle check sees whether it moved (a clock
    /// read and a lock on every request cost more).
    requests: AtomicU64,
}

impl ConnectionState {
    fn used(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// A lock that a panic elsewhere does not poison for good: what it guards
/// (a table of connections, a connection) is whole between statements.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Origin {
    fn live(&self) -> Option<Open> {
        lock(&self.open)
            .as_ref()
            .filter(|open| !open.state.ended.load(Ordering::Acquire))
            .cloned()
    }

    /// The connection `state` takes no more requests; the next opens
    /// another. Requests still on it finish, and it closes after them.
    fn forget(&self, state: &Arc<ConnectionState>) {
        state.ended.store(true, Ordering::Release);
        let mut open = lock(&self.open);
        if open
            .as_ref()
            .is_some_and(|open| Arc::ptr_eq(&open.state, state))
        {
            *open = None;
        }
    }
}

impl H2cConnections {
    pub(super) fn new(guard: Option<AddressGuard>) -> Self {
        Self {
            guard,
            origins: Mutex::default(),
        }
    }

    /// The origin of `url` (an `http://` URL with a host, as the forwarder
    /// checked), for a forwarder to keep.
    pub(super) fn target(&self, url: &reqwest::Url) -> H2cTarget {
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let origin = lock(&self.origins)
            .entry((host.clone(), port))
            .or_default()
            .clone();
        H2cTarget {
            origin,
            host,
            port,
            guard: self.guard.clone(),
        }
    }
}

impl H2cTarget {
    /// Sends `request` (an `http://` URL, its body in memory) and returns
    /// the answer once its head has come; the body is read from the
    /// answer, within what is left of the request's timeout.
    pub(super) async fn send(
        &self,
        request: reqwest::Request,
    ) -> Result<reqwest::Response, H2cError> {
        let deadline = request.timeout().map(|timeout| Instant::now() + *timeout);
        let answered = async {
            let (head, body) = http_request(request)?;
            self.send_on(head, &body).await
        };
        let answer = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, answered)
                .await
                .map_err(|_| H2cError::Timeout)??,
            None => answered.await?,
        };
        let (head, stream) = answer.into_parts();
        let body = AnswerBody {
            stream,
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
        };
        Ok(reqwest::Response::from(http::Response::from_parts(
            head,
            reqwest::Body::wrap(body),
        )))
    }

    /// The request on the origin's connection. A failure that says the
    /// connection is over (a GOAWAY, a broken socket) retires it;
    /// `Unprocessed` when the target's GOAWAY says it never took the
    /// request.
    async fn send_on(
        &self,
        head: http::Request<()>,
        body: &Bytes,
    ) -> Result<http::Response<h2::RecvStream>, H2cError> {
        let (mut sender, state) = self.ready().await?;
        state.used();
        let sent = async {
            let (answer, mut stream) = sender.send_request(head, body.is_empty())?;
            if !body.is_empty() {
                stream.send_data(body.clone(), true)?;
            }
            answer.await
        };
        match sent.await {
            Ok(answer) => Ok(answer),
            // Refused before it was processed (RFC 9113 §8.7): the
            // connection is fine, the stream may go again.
            Err(err) if err.is_remote() && err.reason() == Some(h2::Reason::REFUSED_STREAM) => {
                Err(H2cError::Unprocessed(err))
            }
            Err(err) if err.is_go_away() || err.is_io() => {
                self.origin.forget(&state);
                // Streams above a GOAWAY's last stream id were never
                // processed: they may go again.
                if err.is_go_away() && err.is_remote() {
                    Err(H2cError::Unprocessed(err))
                } else {
                    Err(H2cError::Http2(err))
                }
            }
            Err(err) => Err(H2cError::Http2(err)),
        }
    }

    /// A sender for one more request, and its connection's state: the
    /// open connection's, or, when it has ended, a new connection's.
    async fn ready(&self) -> Result<(SendRequest<Bytes>, Arc<ConnectionState>), H2cError> {
        let origin = &self.origin;
        if let Some(open) = origin.live() {
            match open.sender.ready().await {
                Ok(sender) => return Ok((sender, open.state)),
                // Ended since (the target closed it): open anew.
                Err(err) => {
                    tracing::debug!(error = %err, "h2c connection ended; opening another");
                    origin.forget(&open.state);
                }
            }
        }
        let _connecting = origin.connecting.lock().await;
        // Another caller may have opened it while this one waited.
        if let Some(open) = origin.live() {
            if let Ok(sender) = open.sender.clone().ready().await {
                return Ok((sender, open.state));
            }
            origin.forget(&open.state);
        }
        let open = self.connect().await?;
        *lock(&origin.open) = Some(open.clone());
        Ok((open.sender.ready().await?, open.state))
    }

    /// A new connection to the origin. Its task runs until the target
    /// ends it, or, once it has been idle for `IDLE_TIMEOUT` and is
    /// forgotten, until the requests still on it (none, as a rule) are done.
    async fn connect(&self) -> Result<Open, H2cError> {
        let addresses = self.resolve().await?;
        let socket = tokio::time::timeout(CONNECT_TIMEOUT, connect_any(&addresses))
            .await
            .map_err(|_| {
                H2cError::Connect(format!("not connected within {CONNECT_TIMEOUT:?}"))
            })??;
        let (sender, connection) = h2::client::Builder::new()
            // No stream limit until the target's SETTINGS name one (h2's
            // default, where hyper takes 100): with a consumer's prefetch at
            // 100, a cap of 100 had new requests wait for finished streams
            // to close (forward-h2 0.97 against 1.005, medians of six). A
            // burst the target refuses before its SETTINGS arrive comes back
            // as REFUSED_STREAM and goes again.
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(socket)
            .await?;
        let state = Arc::new(ConnectionState {
            ended: AtomicBool::new(false),
            requests: AtomicU64::new(0),
        });
        let (task_state, task_origin) = (state.clone(), self.origin.clone());
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let mut idle_check =
                tokio::time::interval_at(Instant::now() + IDLE_TIMEOUT, IDLE_TIMEOUT);
            // Requests sent as of the last check: none since is idle.
            let mut seen = 0;
            loop {
                tokio::select! {
                    ended = &mut connection => {
                        if let Err(err) = ended {
                            tracing::debug!(error = %err, "h2c connection ended");
                        }
                        break;
                    }
                    // Once forgotten, the table's sender is gone: the
                    // connection ends when the last request on it does.
                    _ = idle_check.tick(), if !task_state.ended.load(Ordering::Acquire) => {
                        let sent = task_state.requests.load(Ordering::Relaxed);
                        if sent == seen {
                            tracing::debug!("closing an idle h2c connection");
                            task_origin.forget(&task_state);
                        }
                        seen = sent;
                    }
                }
            }
            task_state.ended.store(true, Ordering::Release);
        });
        Ok(Open { sender, state })
    }

    /// The addresses to try: through the network guard when there is one
    /// (an IP literal was checked when the forwarder was made).
    async fn resolve(&self) -> Result<Vec<SocketAddr>, H2cError> {
        let (host, port) = (self.host.as_str(), self.port);
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        match &self.guard {
            Some(guard) => {
                let name = host
                    .parse()
                    .map_err(|_| H2cError::Dns(format!("`{host}` is not a host name")))?;
                let found = guard.resolve(name).await.map_err(|err| {
                    if AddressNotAllowed::caused(err.as_ref()) {
                        H2cError::NotAllowed
                    } else {
                        H2cError::Dns(err.to_string())
                    }
                })?;
                Ok(found.map(|addr| SocketAddr::new(addr.ip(), port)).collect())
            }
            None => Ok(tokio::net::lookup_host((host, port))
                .await
                .map_err(|err| H2cError::Dns(err.to_string()))?
                .collect()),
        }
    }
}

/// The first address of `addresses` that takes the connection.
async fn connect_any(addresses: &[SocketAddr]) -> Result<tokio::net::TcpStream, H2cError> {
    let mut last = None;
    for address in addresses {
        match tokio::net::TcpStream::connect(address).await {
            Ok(socket) => {
                // Requests are small and answered one by one: no waiting
                // for a full segment.
                let _ = socket.set_nodelay(true);
                return Ok(socket);
            }
            Err(err) => last = Some(err),
        }
    }
    Err(H2cError::Connect(match last {
        Some(err) => err.to_string(),
        None => "the target's name resolved to no address".into(),
    }))
}

/// The request's head for HTTP/2 and its body.
fn http_request(request: reqwest::Request) -> Result<(http::Request<()>, Bytes), H2cError> {
    let request: http::Request<reqwest::Body> = request
        .try_into()
        .map_err(|err: reqwest::Error| H2cError::Build(err.without_url().to_string()))?;
    let (mut head, body) = request.into_parts();
    for name in [
        &CONNECTION,
        &TRANSFER_ENCODING,
        &UPGRADE,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
    ] {
        head.headers.remove(name);
    }
    if head.headers.get(TE).is_some_and(|te| te != "trailers") {
        head.headers.remove(TE);
    }
    // What reqwest's client adds to the requests it sends.
    head.headers
        .entry(USER_AGENT)
        .or_insert(http::HeaderValue::from_static(super::USER_AGENT_VALUE));
    head.headers
        .entry(ACCEPT)
        .or_insert(http::HeaderValue::from_static("*/*"));
    let body = in_memory(body)?;
    // As hyper sends it: some servers want the length before the body,
    // and a method that carries one says 0 rather than nothing.
    let carries_body = matches!(head.method, Method::POST | Method::PUT | Method::PATCH);
    if !body.is_empty() || carries_body {
        head.headers
            .insert(CONTENT_LENGTH, http::HeaderValue::from(body.len()));
    }
    Ok((http::Request::from_parts(head, ()), body))
}

/// The bytes of a body held in memory (the forwarder's always are: a
/// message, a batch), shared, not copied: reqwest hands the `Bytes` it was
/// made from back in one frame, at once.
fn in_memory(mut body: reqwest::Body) -> Result<Bytes, H2cError> {
    use http_body::Body as _;
    if body.as_bytes().is_none() {
        return Err(H2cError::Build("the body is not in memory".into()));
    }
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(&mut body).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => Ok(frame.into_data().unwrap_or_default()),
        // An empty body has no frame.
        Poll::Ready(None) => Ok(Bytes::new()),
        _ => Err(H2cError::Build("the body is not in memory".into())),
    }
}

/// An answer's body as reqwest reads one, each chunk's room handed back to
/// the target as it is read, and cut off at the request's deadline.
struct AnswerBody {
    stream: h2::RecvStream,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl http_body::Body for AnswerBody {
    type Data = Bytes;
    type Error = H2cError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, H2cError>>> {
        if let Some(deadline) = self.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err(H2cError::Timeout)));
            }
        }
        match ready!(self.stream.poll_data(cx)) {
            Some(Ok(chunk)) => {
                let _ = self.stream.flow_control().release_capacity(chunk.len());
                Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
            }
            Some(Err(err)) => Poll::Ready(Some(Err(H2cError::Http2(err)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_headers_are_dropped_and_the_rest_kept() {
        let client = reqwest::Client::new();
        let request = client
            .post("http://target.example:8080/hook")
            .header("connection", "keep-alive")
            .header("keep-alive", "timeout=5")
            .header("te", "gzip")
            .header("x-kept", "1")
            .body("payload")
            .build()
            .unwrap();
        let (head, body) = http_request(request).unwrap();
        assert_eq!(&body[..], b"payload");
        assert_eq!(head.uri().port_u16(), Some(8080));
        for dropped in ["connection", "keep-alive", "te"] {
            assert!(head.headers().get(dropped).is_none(), "{dropped}");
        }
        assert_eq!(head.headers()["x-kept"], "1");
        assert_eq!(head.headers()[CONTENT_LENGTH], "7");
        assert!(head.headers()[USER_AGENT]
            .to_str()
            .unwrap()
            .starts_with("workerrmq/"));
    }

    #[test]
    fn a_body_in_memory_is_shared_not_copied() {
        let payload = Bytes::from_static(b"a batch");
        let request = reqwest::Client::new()
            .post("http://target.example/hook")
            .body(payload.clone())
            .build()
            .unwrap();
        let (_, body) = http_request(request).unwrap();
        assert_eq!(body.as_ptr(), payload.as_ptr(), "the same bytes");
    }

    #[test]
    fn a_get_goes_without_a_length() {
        let client = reqwest::Client::new();
        let request = client
            .get("http://target.example/hook")
            .header("x-kept", "1")
            .build()
            .unwrap();
        let (head, body) = http_request(request).unwrap();
        assert!(body.is_empty());
        assert!(head.headers().get(CONTENT_LENGTH).is_none());
        assert_eq!(head.headers()[ACCEPT], "*/*");
    }

    #[test]
    fn only_the_guard_and_a_bad_request_are_final() {
        for (error, kind, retried) in [
            (H2cError::NotAllowed, ErrorKind::AddressNotAllowed, false),
            (
                H2cError::Build("x".into()),
                ErrorKind::InvalidRequest,
                false,
            ),
            (H2cError::Timeout, ErrorKind::Timeout, true),
            (
                H2cError::Connect("refused".into()),
                ErrorKind::Connect,
                true,
            ),
            (H2cError::Dns("nx".into()), ErrorKind::Dns, true),
        ] {
            let outcome = error.outcome();
            assert_eq!(outcome.failure().map(|f| f.kind), Some(kind));
            assert_eq!(matches!(outcome, DeliveryOutcome::Retry { .. }), retried);
        }
    }
}

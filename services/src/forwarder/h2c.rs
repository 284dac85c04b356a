//! `H2cConnections`: HTTP/2 with prior knowledge over cleartext (h2c), for
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
//! One connection per origin, shared by every consumer sending there:
//! opened on first use, kept while the target keeps it, opened again when it
//! ends (the target closed it, a GOAWAY, a broken socket). The request is
//! the one reqwest would have sent (the forwarder builds both the same way);
//! the answer goes back as a `reqwest::Response`, so reading and judging it
//! is the same code for both.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use gateway::{DeliveryOutcome, ErrorKind, Failure};
use h2::client::SendRequest;
use reqwest::dns::Resolve;
use reqwest::header::{
    HeaderName, CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING, UPGRADE, USER_AGENT,
};
use tokio::time::{Instant, Sleep};

use crate::network::{AddressGuard, AddressNotAllowed};

/// Longest a connection to a target takes to open, as reqwest's
/// `connect_timeout` for the other clients.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
    #[error("over HTTP/2 with prior knowledge (target.http2 \"always\"; does the target speak HTTP/2?): {0}")]
    Http2(#[from] h2::Error),
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
            H2cError::Http2(_) => ErrorKind::Request,
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
    /// Set when the connection's task ends.
    ended: Arc<AtomicBool>,
}

impl Origin {
    fn live(&self) -> Option<SendRequest<Bytes>> {
        let open = self.open.lock().ok()?;
        open.as_ref()
            .filter(|open| !open.ended.load(Ordering::Acquire))
            .map(|open| open.sender.clone())
    }

    fn forget(&self) {
        if let Ok(mut open) = self.open.lock() {
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
            let (origin, host, port) = self.origin(&head)?;
            let mut sender = self.ready(&origin, &host, port).await?;
            let (answer, mut stream) = sender.send_request(head, body.is_empty())?;
            if !body.is_empty() {
                stream.send_data(body, true)?;
            }
            Ok::<_, H2cError>(answer.await?)
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

    /// The origin's entry, and its host and port.
    fn origin(&self, head: &http::Request<()>) -> Result<(Arc<Origin>, String, u16), H2cError> {
        let uri = head.uri();
        let host = uri
            .host()
            .ok_or_else(|| H2cError::Build("the URL has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let mut origins = self
            .origins
            .lock()
            .map_err(|_| H2cError::Build("the connection table is poisoned".into()))?;
        let origin = origins.entry((host.clone(), port)).or_default().clone();
        Ok((origin, host, port))
    }

    /// A sender with room for one more stream: the open connection's, or,
    /// when it has ended, a new connection's.
    async fn ready(
        &self,
        origin: &Origin,
        host: &str,
        port: u16,
    ) -> Result<SendRequest<Bytes>, H2cError> {
        if let Some(sender) = origin.live() {
            match sender.ready().await {
                Ok(sender) => return Ok(sender),
                // Ended since (a GOAWAY, the target closed it): open anew.
                Err(err) => tracing::debug!(error = %err, "h2c connection ended; opening another"),
            }
        }
        let _connecting = origin.connecting.lock().await;
        // Another caller may have opened it while this one waited.
        if let Some(sender) = origin.live() {
            if let Ok(sender) = sender.ready().await {
                return Ok(sender);
            }
        }
        origin.forget();
        let open = self.connect(host, port).await?;
        let sender = open.sender.clone();
        if let Ok(mut slot) = origin.open.lock() {
            *slot = Some(open);
        }
        Ok(sender.ready().await?)
    }

    /// A new connection to `host`:`port`, its task running until the
    /// target or the last sender ends it.
    async fn connect(&self, host: &str, port: u16) -> Result<Open, H2cError> {
        let addresses = self.resolve(host, port).await?;
        let socket = tokio::time::timeout(CONNECT_TIMEOUT, connect_any(&addresses))
            .await
            .map_err(|_| {
                H2cError::Connect(format!("not connected within {CONNECT_TIMEOUT:?}"))
            })??;
        let (sender, connection) = h2::client::handshake(socket).await?;
        let ended = Arc::new(AtomicBool::new(false));
        let marked = ended.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "h2c connection ended");
            }
            marked.store(true, Ordering::Release);
        });
        Ok(Open { sender, ended })
    }

    /// The addresses to try: through the network guard when there is one
    /// (an IP literal was checked when the forwarder was made).
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, H2cError> {
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
        .or_insert(http::HeaderValue::from_static(concat!(
            "workerrmq/",
            env!("CARGO_PKG_VERSION")
        )));
    // The forwarder's bodies are always in memory (a message, a batch).
    let body = body
        .as_bytes()
        .map(Bytes::copy_from_slice)
        .unwrap_or_default();
    // As hyper sends it: some servers want the length before the body.
    head.headers
        .insert(CONTENT_LENGTH, http::HeaderValue::from(body.len()));
    Ok((http::Request::from_parts(head, ()), body))
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

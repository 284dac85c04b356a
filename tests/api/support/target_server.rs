//! A scriptable HTTP target for the consumer tests: a real actix-web server
//! on `127.0.0.1:<random port>` that answers each request with the next
//! scripted reply for its path (else that path's default, else the global
//! default), and records every request it receives.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

/// How the target answers one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Held this long before answering.
    pub delay: Duration,
    /// A `Retry-After` header value to send.
    pub retry_after: Option<String>,
    /// The answer's body; empty when `None`.
    pub body: Option<String>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay: Duration::ZERO,
            retry_after: None,
            body: None,
        }
    }

    pub fn ok() -> Self {
        Self::status(200)
    }

    /// The same reply, sent only after holding the request this long.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn with_retry_after(mut self, value: &str) -> Self {
        self.retry_after = Some(value.to_owned());
        self
    }

    /// The same reply, answered with this body.
    pub fn with_body(mut self, body: &str) -> Self {
        self.body = Some(body.to_owned());
        self
    }
}

/// One request the target received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Lower-case names; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub received_at: Instant,
    /// The status the target answers it with (scripted at arrival; the
    /// client may have gone before the answer was sent).
    pub answered: u16,
    /// When the answer went out; `None` while held, or when the client
    /// gave up first.
    pub answered_at: Option<Instant>,
    /// The HTTP version it came over (`HTTP/1.1`, `HTTP/2.0`).
    pub version: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// `webhook-id`, the message id.
    pub fn webhook_id(&self) -> String {
        self.header("webhook-id")
            .unwrap_or_else(|| panic!("a request without webhook-id: {self:?}"))
            .to_owned()
    }

    /// `x-workerrmq-attempt`, 1-based.
    pub fn attempt(&self) -> u32 {
        self.header("x-workerrmq-attempt")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("a request without a numeric x-workerrmq-attempt: {self:?}"))
    }
}

#[derive(Default)]
struct Script {
    queued: VecDeque<Reply>,
    then: Option<Reply>,
}

/// Chooses the reply from the request itself (its headers and body).
pub type Responder = Arc<dyn Fn(&BTreeMap<String, String>, &[u8]) -> Reply + Send + Sync>;

struct Shared {
    default: Mutex<Reply>,
    /// When set, answers every request in place of the scripts.
    responder: Mutex<Option<Responder>>,
    /// What a request carrying `x-workerrmq-attempt: 1` answers, when set.
    first_attempt: Mutex<Option<Reply>>,
    scripts: Mutex<HashMap<String, Script>>,
    requests: Mutex<Vec<Recorded>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// TCP connections accepted.
    connections: AtomicUsize,
}

impl Shared {
    fn next_reply(&self, path: &str) -> Reply {
        let mut scripts = self.scripts.lock().unwrap();
        if let Some(script) = scripts.get_mut(path) {
            if let Some(reply) = script.queued.pop_front() {
                return reply;
            }
            if let Some(reply) = &script.then {
                return reply.clone();
            }
        }
        self.default.lock().unwrap().clone()
    }
}

pub struct TargetServer {
    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub base_url: String,
    shared: Arc<Shared>,
    handle: ServerHandle,
}

impl TargetServer {
    /// Starts a target that answers 200 at once until told otherwise, over
    /// HTTP/1.1 only.
    pub async fn start() -> TargetServer {
        Self::start_speaking(false, 0).await
    }

    /// `start`, also speaking HTTP/2 with prior knowledge (h2c) to a client
    /// that opens with its preface.
    pub async fn start_h2c() -> TargetServer {
        Self::start_speaking(true, 0).await
    }

    /// `start_h2c` on `port`: a target coming back where a stopped one was.
    pub async fn start_h2c_on(port: u16) -> TargetServer {
        Self::start_speaking(true, port).await
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.base_url
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .expect("the base URL ends with its port")
    }

    async fn start_speaking(h2c: bool, port: u16) -> TargetServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("a free port for the target");
        let port = listener.local_addr().expect("a local address").port();
        let shared = Arc::new(Shared {
            default: Mutex::new(Reply::ok()),
            responder: Mutex::new(None),
            first_attempt: Mutex::new(None),
            scripts: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        });
        let counted = shared.clone();
        let data = web::Data::from(shared.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                .default_service(web::to(handle))
        })
        .on_connect(move |_, _| {
            counted.connections.fetch_add(1, Ordering::SeqCst);
        })
        .workers(1)
        .max_connections(10_000)
        .disable_signals()
        .shutdown_timeout(0);
        let server = if h2c {
            server.listen_auto_h2c(listener)
        } else {
            server.listen(listener)
        }
        .expect("the target listens")
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        TargetServer {
            base_url: format!("http://127.0.0.1:{port}"),
            shared,
            handle,
        }
    }

    /// The full URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// What every path without a script of its own answers.
    pub fn set_default(&self, reply: Reply) {
        *self.shared.default.lock().unwrap() = reply;
    }

    /// Every message's first attempt (`x-workerrmq-attempt: 1`) answers
    /// `reply`, whatever the path; later attempts answer as scripted.
    pub fn set_first_attempt(&self, reply: Reply) {
        *self.shared.first_attempt.lock().unwrap() = Some(reply);
    }

    /// Every request is answered as `responder` decides from its (lower-case)
    /// headers and body, whatever the path or scripts.
    pub fn set_responder(
        &self,
        responder: impl Fn(&BTreeMap<String, String>, &[u8]) -> Reply + Send + Sync + 'static,
    ) {
        *self.shared.responder.lock().unwrap() = Some(Arc::new(responder));
    }

    /// `path` answers `replies` in order, then `then` for ever.
    pub fn script(&self, path: &str, replies: Vec<Reply>, then: Reply) {
        self.shared.scripts.lock().unwrap().insert(
            path.to_owned(),
            Script {
                queued: replies.into(),
                then: Some(then),
            },
        );
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The requests received on `path`, in arrival order.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// The distinct `webhook-id`s seen so far.
    pub fn ids_seen(&self) -> BTreeSet<String> {
        self.shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect()
    }

    /// The distinct `webhook-id`s of requests the target takes with a 2xx:
    /// the messages that reached it.
    pub fn ids_delivered(&self) -> BTreeSet<String> {
        self.shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| (200..300).contains(&r.answered))
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect()
    }

    /// Requests being held right now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// TCP connections the target accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The most requests ever held at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests arrived (on any path); returns them.
    pub async fn wait_for_requests(&self, n: usize, deadline: Duration) -> Vec<Recorded> {
        let started = Instant::now();
        loop {
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            assert!(
                started.elapsed() < deadline,
                "the target got {} request(s), not {n}, within {deadline:?}",
                requests.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every id in `ids` was answered with a 2xx; on timeout
    /// fails naming how many (and a few of those) are missing.
    pub async fn wait_for_delivered(&self, ids: &BTreeSet<String>, deadline: Duration) {
        let started = Instant::now();
        loop {
            let delivered = self.ids_delivered();
            let missing: Vec<&String> = ids.difference(&delivered).collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                started.elapsed() < deadline,
                "{} of {} message(s) never reached the target within {deadline:?}, e.g. {:?}",
                missing.len(),
                ids.len(),
                &missing[..missing.len().min(5)]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

async fn handle(request: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let received_at = Instant::now();
    let path = request.path().to_owned();
    let first_attempt = request
        .headers()
        .get("x-workerrmq-attempt")
        .is_some_and(|a| a.as_bytes() == b"1");
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in request.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_ascii_lowercase())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let responder = shared.responder.lock().unwrap().clone();
    let on_first = shared.first_attempt.lock().unwrap().clone();
    let reply = match (responder, on_first) {
        (Some(responder), _) => responder(&headers, &body),
        (None, Some(reply)) if first_attempt => reply,
        _ => shared.next_reply(&path),
    };
    let _held = Held::new(shared.clone().into_inner());
    let index = {
        let mut requests = shared.requests.lock().unwrap();
        requests.push(Recorded {
            method: request.method().to_string(),
            path,
            headers,
            body: body.to_vec(),
            received_at,
            answered: reply.status,
            answered_at: None,
            version: format!("{:?}", request.version()),
        });
        requests.len() - 1
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    shared.requests.lock().unwrap()[index].answered_at = Some(Instant::now());
    let status = actix_web::http::StatusCode::from_u16(reply.status).expect("a valid status");
    let mut response = HttpResponse::build(status);
    if let Some(retry_after) = &reply.retry_after {
        response.insert_header(("retry-after", retry_after.as_str()));
    }
    response.body(reply.body.unwrap_or_default())
}

/// Counts a request as in flight until it is answered or its client gave
/// up (actix drops the handler then).
struct Held(Arc<Shared>);

impl Held {
    fn new(shared: Arc<Shared>) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

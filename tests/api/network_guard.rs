//! The network guard: scrape URLs (and forward targets, when asked) never reach loopback, private or link-local addresses.
//!
//! Every address used here is on this machine; 169.254.169.254 appears only
//! as an input that must be refused before any connection is tried. The
//! proof that "no request was sent" is a local listener that counts the
//! connections it accepts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::builtin::request_path;
use crate::support::target_server::TargetServer;
use crate::support::Api;
use crate::support::{assert_error, assert_json, eventually, spawn_app_with, TestApp};

const DEADLINE: Duration = Duration::from_secs(30);
const ADDRESS_NOT_ALLOWED: &str = "address not allowed";
const METADATA: &str = "http://169.254.169.254/latest/meta-data/";

/// A page server on `127.0.0.1:<random port>` that counts the connections
/// it accepts. `/` is a page titled "Inside"; `redirects` map a path to a
/// `Location`.
struct CountingServer {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl CountingServer {
    async fn start(redirects: Vec<(&'static str, String)>) -> CountingServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a listener");
        let port = listener.local_addr().expect("an address").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let redirects = Arc::new(redirects);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(answer(socket, redirects.clone()));
            }
        });
        CountingServer { port, connections }
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn answer(mut socket: TcpStream, redirects: Arc<Vec<(&'static str, String)>>) {
    let Some(path) = request_path(&mut socket).await else {
        return;
    };
    let body = "<html><head><title>Inside</title></head><body>ops@inside.example</body></html>";
    let response = match redirects.iter().find(|(p, _)| *p == path) {
        Some((_, location)) => format!(
            "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        None => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    };
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}

async fn spawn_scraper(extra: &[(&str, &str)]) -> TestApp {
    let mut vars = vec![("BUILTIN_CONSUMERS", "true"), ("SCRAPE_TIMEOUT_MS", "5000")];
    vars.extend_from_slice(extra);
    spawn_app_with(&vars).await
}

/// Submits a scrape job of `urls` and waits until it is finished.
async fn scrape(app: &TestApp, urls: &[String]) -> Value {
    let answer = assert_json(
        app.post_json("/jobs/scrape", &json!({ "urls": urls }))
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    let job_id = answer["job_id"].as_str().expect("a job_id").to_owned();
    eventually(DEADLINE, || async {
        let response = app.get(&format!("/jobs/{job_id}")).await;
        let status = response.status();
        let job: Value = response.json().await.map_err(|e| e.to_string())?;
        match job["status"].as_str() {
            Some("completed" | "failed") if status == StatusCode::OK => Ok(job),
            _ => Err(format!("{status}: {job}")),
        }
    })
    .await
}

fn results(job: &Value) -> &Vec<Value> {
    job["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {job}"))
}

fn refused(result: &Value) -> bool {
    result["httpStatus"].is_null()
        && result["error"]
            .as_str()
            .is_some_and(|e| e.starts_with(ADDRESS_NOT_ALLOWED))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_of_inside_addresses_are_refused_before_any_connection() {
    let app = spawn_scraper(&[]).await;
    let inside = CountingServer::start(vec![]).await;
    let urls = vec![
        inside.url("127.0.0.1", "/"),
        // A host name: only the resolver hook sees that it points inside.
        inside.url("localhost", "/"),
        inside.url("[::1]", "/"),
        inside.url("[::ffff:127.0.0.1]", "/"),
        inside.url("0.0.0.0", "/"),
        // 127.0.0.1 spelled as one decimal number.
        inside.url("2130706433", "/"),
        METADATA.to_owned(),
    ];

    let job = scrape(&app, &urls).await;

    assert_eq!(job["status"], "failed", "{job}");
    let results = results(&job);
    assert_eq!(results.len(), urls.len(), "{job}");
    for (result, url) in results.iter().zip(&urls) {
        assert_eq!(result["url"], url.as_str());
        assert!(refused(result), "{url} was not refused: {result}");
    }
    assert_eq!(
        inside.connections(),
        0,
        "a refused URL reached the listener"
    );
    let error = job["error"].as_str().expect("a job error");
    assert!(
        !error.contains("http://"),
        "the job error names a URL: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_listed_in_scrape_allowed_hosts_are_fetched() {
    let app = spawn_scraper(&[("SCRAPE_ALLOWED_HOSTS", "127.0.0.1, LOCALHOST")]).await;
    let inside = CountingServer::start(vec![]).await;
    let urls = vec![
        inside.url("127.0.0.1", "/"),
        inside.url("localhost", "/"),
        // Not listed: refused even though it is the same listener.
        inside.url("[::1]", "/"),
    ];

    let job = scrape(&app, &urls).await;

    assert_eq!(job["status"], "completed", "{job}");
    let results = results(&job);
    for listed in &results[..2] {
        assert_eq!(listed["httpStatus"], 200, "{listed}");
        assert_eq!(listed["title"], "Inside", "{listed}");
        assert_eq!(listed["emails"], json!(["ops@inside.example"]), "{listed}");
    }
    assert!(refused(&results[2]), "{}", results[2]);
    assert_eq!(inside.connections(), 2, "one connection per listed URL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_from_an_allowed_host_to_an_inside_one_are_refused() {
    let app = spawn_scraper(&[("SCRAPE_ALLOWED_HOSTS", "127.0.0.1")]).await;
    let elsewhere = CountingServer::start(vec![]).await;
    let allowed = CountingServer::start(vec![
        ("/to-localhost", elsewhere.url("localhost", "/")),
        ("/to-loopback", elsewhere.url("[::1]", "/")),
        ("/to-metadata", METADATA.to_owned()),
        ("/to-listed", elsewhere.url("127.0.0.1", "/")),
    ])
    .await;
    let urls: Vec<String> = [
        "/to-localhost",
        "/to-loopback",
        "/to-metadata",
        "/to-listed",
    ]
    .iter()
    .map(|path| allowed.url("127.0.0.1", path))
    .collect();

    let job = scrape(&app, &urls).await;

    let results = results(&job);
    for refused_hop in &results[..3] {
        assert!(refused(refused_hop), "{refused_hop}");
    }
    // A hop to a listed host is followed.
    assert_eq!(results[3]["title"], "Inside", "{}", results[3]);
    assert_eq!(allowed.connections(), 4);
    assert_eq!(
        elsewhere.connections(),
        1,
        "only the hop to the listed host may connect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_deny_private_refuses_inside_targets() {
    let app = spawn_app_with(&[("FORWARD_DENY_PRIVATE", "true")]).await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    let queue = app.unique_queue("guarded");
    app.create_queue(&queue, json!({})).await;

    // An IP-literal target is refused when the consumer is created.
    for url in [target.url("/hook"), METADATA.to_owned()] {
        let response = api
            .post(
                "/createConsumer",
                &json!({ "queueName": queue, "target": { "type": "http", "url": url } }),
            )
            .await;
        let body = assert_error(response, StatusCode::BAD_REQUEST, "bad_request").await;
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("target.url") && message.contains(ADDRESS_NOT_ALLOWED),
            "{body}"
        );
    }

    // A name resolving inside is refused at connect time: the delivery is
    // dead-lettered at once, with a reason that names no URL. The same over
    // h2c (`http2: "always"`), which connects without reqwest.
    let secret_path = "/hook?token=s3cr3t";
    let port = target.port();
    for (way, http2) in [("http1", "never"), ("h2c", "always")] {
        let queue = app.unique_queue(&format!("guarded-{way}"));
        app.create_queue(&queue, json!({})).await;
        let consumer = api
            .create_http_consumer(
                &queue,
                &format!("http://localhost:{port}{secret_path}"),
                json!({ "target": { "http2": http2 },
                        "retry": { "maxAttempts": 5, "initialDelayMs": 60000 } }),
            )
            .await;
        app.publish(&queue, json!({ "n": 1 })).await;
        let dead = eventually(DEADLINE, || async {
            let dead = api.dead_letters(&queue).await;
            if dead.is_empty() {
                Err("nothing dead-lettered yet".to_string())
            } else {
                Ok(dead)
            }
        })
        .await;
        assert_eq!(dead.len(), 1, "{dead:?}");
        let reason = dead[0]["lastError"].as_str().expect("a lastError");
        assert!(reason.contains(ADDRESS_NOT_ALLOWED), "{reason}");
        assert!(
            !reason.contains("localhost") && !reason.contains("s3cr3t"),
            "{reason}"
        );
        assert_eq!(dead[0]["attempts"], 1, "{}", dead[0]);
        let stats = api.consumer(&consumer).await["stats"].clone();
        let last_error = stats["lastError"].as_str().unwrap_or_default();
        assert!(!last_error.contains("s3cr3t"), "{stats}");
    }
    assert_eq!(target.request_count(), 0, "a refused target was reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_errors_are_stored_without_the_target_url() {
    let app = spawn_app_with(&[]).await;
    let api = Api::of(&app);
    let queue = app.unique_queue("no-url");
    app.create_queue(&queue, json!({})).await;
    // A port nothing listens on: connection refused, on this machine.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let consumer = api
        .create_http_consumer(
            &queue,
            &format!("http://127.0.0.1:{closed}/hook?token=s3cr3t"),
            json!({ "retry": { "maxAttempts": 1 } }),
        )
        .await;
    app.publish(&queue, json!({ "n": 1 })).await;

    let dead = eventually(DEADLINE, || async {
        let dead = api.dead_letters(&queue).await;
        match dead.first() {
            Some(first) => Ok(first.clone()),
            None => Err("nothing dead-lettered yet".to_string()),
        }
    })
    .await;
    let stats = api.consumer(&consumer).await["stats"].clone();
    for stored in [&dead["lastError"], &stats["lastError"]] {
        let text = stored
            .as_str()
            .unwrap_or_else(|| panic!("no error in {dead} / {stats}"));
        assert!(text.contains("connect"), "{text}");
        assert!(
            !text.contains("s3cr3t") && !text.contains("/hook") && !text.contains("http://"),
            "a stored error carries the URL: {text}"
        );
    }
}

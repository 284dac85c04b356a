//! Spawns the real application against the real broker and store, and gives
//! tests the few tools they need to drive it over HTTP and to look behind it
//! with a plain AMQP client.
//!
//! Isolation: every `TestApp` has its own name prefix (`t<uuid>_`) for queues
//! and exchanges, its own MongoDB database (`test_<uuid>`) and its own
//! instance id, so tests run in parallel against one broker and one store.
//! `TestApp::cleanup` removes everything a test made; a test that panics
//! before calling it is cleaned up on drop.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::support::env_or;
use base64::Engine;
use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::OnceCell;
use workerrmq::configuration::{LogFormat, Settings};
use workerrmq::startup::Application;

const DEFAULT_MANAGEMENT_URL: &str = "http://127.0.0.1:15672";
const DEFAULT_MONGODB_URI: &str = "mongodb://127.0.0.1:27017";
/// Databases `cleanup` may drop start with it.
pub(crate) const TEST_DB_PREFIX: &str = "test_";

/// Variables a developer or CI may point at other servers; everything else
/// the tests set themselves so a local `.env` cannot change what they see.
const FROM_ENVIRONMENT: &[&str] = &[
    "AMQP_URL",
    "RABBITMQ_MANAGEMENT_URL",
    "RABBITMQ_MANAGEMENT_USER",
    "RABBITMQ_MANAGEMENT_PASSWORD",
];

pub struct TestApp {
    /// `http://127.0.0.1:<port>`
    pub address: String,
    pub http: reqwest::Client,
    pub admin_user: String,
    pub admin_password: String,
    pub db_name: String,
    /// The `INSTANCE_ID` the app runs with; its AMQP connections are named
    /// `workerrmq-<instance_id>-publish` and `workerrmq-<instance_id>-consume`.
    pub instance_id: String,
    /// Every queue and exchange name this test makes starts with it.
    pub prefix: String,
    amqp_url: String,
    /// The app's vhost, percent-encoded for management-API paths.
    vhost_path: String,
    /// The management API of the test's broker (its first URL).
    management_base: String,
    /// Where the test's database lives, whatever the app was pointed at.
    mongodb_uri: String,
    queues: Mutex<BTreeSet<String>>,
    exchanges: Mutex<BTreeSet<String>>,
    amqp: OnceCell<Connection>,
    cleaned_up: bool,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts the application with the test defaults, `overrides` taking
/// precedence, on a random port.
pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("t{id}_");
    let db_name = format!("{TEST_DB_PREFIX}{id}");
    let admin_password = uuid::Uuid::new_v4().simple().to_string();
    let instance_id = format!("test-{}", &id[..12]);
    let mongodb_uri = env_or("MONGODB_URI", DEFAULT_MONGODB_URI);

    let mut vars: HashMap<String, String> = FROM_ENVIRONMENT
        .iter()
        .filter_map(|key| std::env::var(key).ok().map(|v| (key.to_string(), v)))
        .collect();
    for (key, value) in [
        ("BIND_ADDR", "127.0.0.1:0"),
        ("MONGODB_URI", mongodb_uri.as_str()),
        ("MONGODB_DB", db_name.as_str()),
        ("ADMIN_USER", "admin"),
        ("ADMIN_PASSWORD", admin_password.as_str()),
        ("BUILTIN_CONSUMERS", "false"),
        ("BUILTIN_QUEUE_PREFIX", prefix.as_str()),
        ("INSTANCE_ID", instance_id.as_str()),
    ] {
        vars.insert(key.into(), value.into());
    }
    for (key, value) in overrides {
        vars.insert(key.to_string(), value.to_string());
    }

    if std::env::var_os("TEST_LOG").is_some() {
        workerrmq::telemetry::init(LogFormat::Pretty);
    }
    let settings =
        Settings::from_lookup(|key| vars.get(key).cloned()).expect("test settings are valid");
    let app = Application::build(settings.clone())
        .await
        .expect("the application starts");
    let port = app.port();
    tokio::spawn(app.run_until_stopped());

    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            // Below the gateway's 5 s keep-alive: see `support::Api::new`.
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .expect("an HTTP client"),
        admin_user: settings.admin_user.clone(),
        admin_password: secrecy::ExposeSecret::expose_secret(&settings.admin_password).to_owned(),
        db_name: settings.mongodb_db.clone(),
        instance_id: settings.instance_id.clone(),
        prefix,
        amqp_url: settings.amqp_urls.first().as_str().to_owned(),
        vhost_path: url::form_urlencoded::byte_serialize(settings.vhost.as_bytes()).collect(),
        // The test's broker, not the app's setting: a test may point the app
        // at a management API that does not answer, and still cleans up.
        management_base: env_or("RABBITMQ_MANAGEMENT_URL", DEFAULT_MANAGEMENT_URL)
            .split(',')
            .next()
            .unwrap_or(DEFAULT_MANAGEMENT_URL)
            .trim()
            .to_owned(),
        mongodb_uri,
        queues: Mutex::new(BTreeSet::new()),
        exchanges: Mutex::new(BTreeSet::new()),
        amqp: OnceCell::new(),
        cleaned_up: false,
    }
}

/// The value of an `Authorization: Basic` header.
pub fn basic_auth(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// The value of an `Authorization: Bearer` header.
pub fn bearer(api_key: &str) -> String {
    format!("Bearer {api_key}")
}

/// Runs `check` until it returns `Ok`, at most until `deadline` has passed;
/// then fails the test with the last reason. For what only becomes true
/// later (management-API statistics lag a few seconds), never as a sleep.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(reason) if started.elapsed() >= deadline => {
                panic!("not true within {deadline:?}: {reason}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Asserts the contract's error answer — this status and
/// `{"error": code, "message": <non-empty>}` — and returns the body.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> Value {
    let actual = response.status();
    let text = response.text().await.expect("a response body");
    assert_eq!(actual, status, "unexpected status; body: {text}");
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the error body is not JSON ({e}): {text}"));
    assert_eq!(body["error"], code, "unexpected error code: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "the error body has no message: {body}"
    );
    body
}

/// Asserts the status and returns the JSON body.
pub async fn assert_json(response: Response, status: StatusCode) -> Value {
    let actual = response.status();
    let text = response.text().await.expect("a response body");
    assert_eq!(actual, status, "unexpected status; body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("the body is not JSON ({e}): {text}"))
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// The client-provided name of the app's publish connection.
    pub fn publish_connection_name(&self) -> String {
        format!("workerrmq-{}-publish", self.instance_id)
    }

    /// The client-provided name of the app's (first) consume connection.
    pub fn consume_connection_name(&self) -> String {
        format!("workerrmq-{}-consume", self.instance_id)
    }

    /// The bootstrap admin's `Authorization` header value.
    pub fn admin_auth(&self) -> String {
        basic_auth(&self.admin_user, &self.admin_password)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.post_json_with_auth(path, body, &self.admin_auth())
            .await
    }

    pub async fn post_json_with_auth(&self, path: &str, body: &Value, auth: &str) -> Response {
        self.http
            .post(self.url(path))
            .header(AUTHORIZATION, auth)
            .json(body)
            .send()
            .await
            .expect("the request is sent")
    }

    /// A POST as admin with this exact body and `Content-Type` (none when
    /// `None`): for what a JSON client would never send.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        let mut request = self
            .http
            .post(self.url(path))
            .header(AUTHORIZATION, self.admin_auth())
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        request.send().await.expect("the request is sent")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.get_with_auth(path, &self.admin_auth()).await
    }

    pub async fn get_with_auth(&self, path: &str, auth: &str) -> Response {
        self.http
            .get(self.url(path))
            .header(AUTHORIZATION, auth)
            .send()
            .await
            .expect("the request is sent")
    }

    /// A request with no `Authorization` header at all.
    pub async fn request_anonymous(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Response {
        let mut request = self.http.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.expect("the request is sent")
    }

    /// A collection of this app's database, read straight from the store.
    pub async fn stored(&self, collection: &str) -> mongodb::Collection<mongodb::bson::Document> {
        mongodb::Client::with_uri_str(&self.mongodb_uri)
            .await
            .expect("a MongoDB client")
            .database(&self.db_name)
            .collection(collection)
    }

    /// A queue name of this test's own, removed (with its companions) by
    /// `cleanup`. The same label gives the same name.
    pub fn unique_queue(&self, label: &str) -> String {
        let name = format!("{}{label}", self.prefix);
        self.queues.lock().unwrap().insert(name.clone());
        name
    }

    /// An exchange name of this test's own, removed by `cleanup`.
    pub fn unique_exchange(&self, label: &str) -> String {
        let name = format!("{}{label}", self.prefix);
        self.exchanges.lock().unwrap().insert(name.clone());
        name
    }

    /// POST /createQueue with these fields (`queueName` added) as admin;
    /// asserts 201 Created.
    pub async fn create_queue(&self, queue: &str, fields: Value) -> Value {
        let mut body = fields;
        body["queueName"] = json!(queue);
        assert_json(
            self.post_json("/createQueue", &body).await,
            StatusCode::CREATED,
        )
        .await
    }

    /// POST /messagePublish of `message` to `queue` as admin; asserts 202
    /// and returns the message id the gateway answered with.
    pub async fn publish(&self, queue: &str, message: Value) -> String {
        let body = assert_json(
            self.post_json(
                "/messagePublish",
                &json!({ "queueName": queue, "message": message }),
            )
            .await,
            StatusCode::ACCEPTED,
        )
        .await;
        body["messageId"]
            .as_str()
            .expect("a messageId in the answer")
            .to_owned()
    }

    /// Mints an API key with this role through POST /createApiKey and
    /// returns the key itself (`wrmq_…`).
    pub async fn create_api_key(&self, role: &str) -> String {
        let body = assert_json(
            self.post_json(
                "/createApiKey",
                &json!({ "name": format!("test {role} key"), "role": role }),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
        body["apiKey"]
            .as_str()
            .expect("an apiKey in the answer")
            .to_owned()
    }

    /// The test's own AMQP connection (plain lapin, not the app's), opened
    /// on first use.
    pub async fn amqp_connection(&self) -> &Connection {
        self.amqp
            .get_or_init(|| async { connect_amqp(&self.amqp_url).await })
            .await
    }

    /// A new channel on the test's own AMQP connection. A broker refusal
    /// closes the channel it happened on, so take a fresh one per check.
    pub async fn amqp_channel(&self) -> Channel {
        self.amqp_connection()
            .await
            .create_channel()
            .await
            .expect("an AMQP channel")
    }

    /// Whether the broker has this queue (passive declare).
    pub async fn queue_exists(&self, queue: &str) -> bool {
        crate::support::queue_counts(self.amqp_connection().await, queue)
            .await
            .is_some()
    }

    /// How many messages the queue holds right now (passive declare);
    /// `None` when there is no such queue.
    pub async fn message_count(&self, queue: &str) -> Option<u32> {
        crate::support::queue_counts(self.amqp_connection().await, queue)
            .await
            .map(|(messages, _)| messages)
    }

    /// Whether the broker has this exchange (passive declare).
    pub async fn exchange_exists(&self, exchange: &str) -> bool {
        let channel = self.amqp_channel().await;
        let declared = channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(()) => {
                channel
                    .close(200, "done".into())
                    .await
                    .expect("channel closed");
                true
            }
            Err(err) if is_not_found(&err) => false,
            Err(err) => panic!("passive declare of exchange `{exchange}` failed: {err}"),
        }
    }

    /// Takes the next message off `queue` (auto-ack), if there is one.
    pub async fn get_message(&self, queue: &str) -> Option<BasicGetMessage> {
        let channel = self.amqp_channel().await;
        let message = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap_or_else(|e| panic!("basic_get on `{queue}` failed: {e}"));
        channel
            .close(200, "done".into())
            .await
            .expect("channel closed");
        message
    }

    /// The vhost's queues as the management API lists them, each with
    /// `name`, `durable` and `exclusive`. The list comes from the broker's
    /// queue table, so a queue shows up as soon as it exists.
    pub async fn broker_queues(&self) -> Vec<Value> {
        management_list(
            &self.http,
            &self.management_base,
            &self.vhost_path,
            "queues",
            "name,durable,exclusive",
        )
        .await
    }

    /// Deletes every queue (with its companions) and exchange this test
    /// made, and drops its database. Fails the test when that fails.
    pub async fn cleanup(mut self) {
        self.cleaned_up = true;
        let plan = self.cleanup_plan();
        if let Some(connection) = self.amqp.take() {
            let _ = connection.close(200, "test done".into()).await;
        }
        plan.run().await.expect("the test cleans up after itself");
    }

    fn cleanup_plan(&self) -> CleanupPlan {
        CleanupPlan {
            prefix: self.prefix.clone(),
            queues: self.queues.lock().unwrap().clone(),
            exchanges: self.exchanges.lock().unwrap().clone(),
            amqp_url: self.amqp_url.clone(),
            vhost_path: self.vhost_path.clone(),
            management_base: self.management_base.clone(),
            restore: Vec::new(),
            mongodb_uri: self.mongodb_uri.clone(),
            db_name: self.db_name.clone(),
        }
    }
}

impl Drop for TestApp {
    /// A test that failed before `cleanup` still leaves nothing behind.
    fn drop(&mut self) {
        if !self.cleaned_up {
            self.cleanup_plan().run_detached();
        }
    }
}

/// What a test leaves on the broker and in the store, and how to remove it:
/// the queues (with their `.dlq`) and exchanges it named, everything else
/// under its prefix, and its database.
pub(crate) struct CleanupPlan {
    prefix: String,
    queues: BTreeSet<String>,
    exchanges: BTreeSet<String>,
    amqp_url: String,
    vhost_path: String,
    management_base: String,
    /// Run first: what a test changed on the broker itself (a stopped
    /// cluster node) is put back before its queues are deleted.
    restore: Vec<RestoreStep>,
    mongodb_uri: String,
    db_name: String,
}

/// A blocking step that puts something back; `Err` says what stays broken.
pub(crate) type RestoreStep = Box<dyn FnOnce() -> Result<(), String> + Send>;

impl CleanupPlan {
    /// Everything under `prefix`, and the database `db_name`.
    pub(crate) fn under_prefix(
        prefix: String,
        amqp_url: String,
        mongodb_uri: String,
        db_name: String,
    ) -> Self {
        CleanupPlan {
            prefix,
            queues: BTreeSet::new(),
            exchanges: BTreeSet::new(),
            amqp_url,
            vhost_path: crate::support::VHOST_PATH.to_owned(),
            management_base: env_or("RABBITMQ_MANAGEMENT_URL", DEFAULT_MANAGEMENT_URL),
            restore: Vec::new(),
            mongodb_uri,
            db_name,
        }
    }

    /// For `Drop`, which cannot await: runs on a runtime of its own and
    /// reports a failure instead of panicking.
    pub(crate) fn run_detached(self) {
        let outcome = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(self.run())
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("cleanup after a failed test failed: {err}"),
            Err(_) => eprintln!("cleanup after a failed test panicked"),
        }
    }

    /// The broker's management API at `base` instead of the environment's.
    pub(crate) fn with_management(mut self, base: String) -> Self {
        self.management_base = base;
        self
    }

    /// `steps` run before anything else.
    pub(crate) fn restoring(mut self, steps: Vec<RestoreStep>) -> Self {
        self.restore = steps;
        self
    }

    pub(crate) async fn run(mut self) -> Result<(), String> {
        let mut restore_failures = Vec::new();
        for step in std::mem::take(&mut self.restore) {
            let outcome = tokio::task::spawn_blocking(step)
                .await
                .unwrap_or_else(|e| Err(format!("the restore step panicked: {e}")));
            if let Err(err) = outcome {
                restore_failures.push(err);
            }
        }
        let outcome = self.remove_everything().await;
        if !restore_failures.is_empty() {
            return Err(format!(
                "could not restore: {}",
                restore_failures.join("; ")
            ));
        }
        outcome
    }

    async fn remove_everything(self) -> Result<(), String> {
        // What the test registered, its companions, and whatever else the
        // broker holds under the test's prefix (retry queues, …).
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        let mut queues = self.queues.clone();
        for queue in &self.queues {
            queues.insert(format!("{queue}.dlq"));
        }
        queues.extend(
            management_names(&http, &self.management_base, &self.vhost_path, "queues")
                .await
                .into_iter()
                .filter(|name| name.starts_with(&self.prefix)),
        );
        let mut exchanges = self.exchanges.clone();
        exchanges.extend(
            management_names(&http, &self.management_base, &self.vhost_path, "exchanges")
                .await
                .into_iter()
                .filter(|name| name.starts_with(&self.prefix)),
        );

        let connection = Connection::connect(&self.amqp_url, connection_properties())
            .await
            .map_err(|e| format!("cannot connect to the broker: {e}"))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        for queue in &queues {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(|e| format!("cannot delete queue `{queue}`: {e}"))?;
        }
        for exchange in &exchanges {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .map_err(|e| format!("cannot delete exchange `{exchange}`: {e}"))?;
        }
        let _ = connection.close(200, "test cleanup done".into()).await;

        // Only a database the tests named themselves: a test that points
        // MONGODB_DB somewhere else must not drop what it did not make.
        if !self.db_name.starts_with(TEST_DB_PREFIX) {
            return Ok(());
        }
        let client = mongodb::Client::with_uri_str(&self.mongodb_uri)
            .await
            .map_err(|e| format!("cannot reach the store: {e}"))?;
        client
            .database(&self.db_name)
            .drop()
            .await
            .map_err(|e| format!("cannot drop database `{}`: {e}", self.db_name))?;
        Ok(())
    }
}

/// lapin runs on the test's tokio runtime (its `tokio` feature).
pub(crate) fn connection_properties() -> ConnectionProperties {
    ConnectionProperties::default()
}

async fn connect_amqp(url: &str) -> Connection {
    Connection::connect(url, connection_properties())
        .await
        .expect("the tests reach the broker")
}

pub fn is_not_found(err: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(e) if e.kind() == &AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
    )
}

async fn management_get(http: &reqwest::Client, base: &str, path: &str) -> Value {
    let user = env_or("RABBITMQ_MANAGEMENT_USER", "guest");
    let password = env_or("RABBITMQ_MANAGEMENT_PASSWORD", "guest");
    let response = http
        .get(format!("{}{path}", base.trim_end_matches('/')))
        .basic_auth(user, Some(password))
        .send()
        .await
        .expect("the management API answers");
    assert!(
        response.status().is_success(),
        "management API {path}: {}",
        response.status()
    );
    response.json().await.expect("management API JSON")
}

async fn management_list(
    http: &reqwest::Client,
    base: &str,
    vhost_path: &str,
    kind: &str,
    columns: &str,
) -> Vec<Value> {
    let path = format!("/api/{kind}/{vhost_path}?columns={columns}");
    match management_get(http, base, &path).await {
        Value::Array(rows) => rows,
        other => panic!("management API /api/{kind}: not a list: {other}"),
    }
}

async fn management_names(
    http: &reqwest::Client,
    base: &str,
    vhost_path: &str,
    kind: &str,
) -> Vec<String> {
    management_list(http, base, vhost_path, kind, "name")
        .await
        .iter()
        .filter_map(|row| row["name"].as_str().map(str::to_owned))
        .collect()
}

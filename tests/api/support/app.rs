//! Spawns the real application against the real broker and store, and gives
//! tests the few tools they need to drive it over HTTP and to look behind it
//! with a plain AMQP client.
//!
//! Isolation: every `TestApp` has its own name prefix (`t<uuid>_`) for queues
//! and exchanges, its own MongoDB database (`test_<uuid>`) and its own
//! instance id, so tests run in parallel against one broker and one store.
//! Dropping a `TestApp` removes everything its test made, whether the test
//! passed or panicked.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use lapin::message::BasicGetMessage;
use lapin::options::{BasicGetOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ExchangeKind};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::OnceCell;
use workerrmq::configuration::{LogFormat, Settings};
use workerrmq::startup::Application;

use super::amqp::{connect, is_not_found, queue_counts};
use super::cleanup::CleanupPlan;
use super::env::{management_url, mongodb_uri, percent_encode, TEST_DB_PREFIX};
use super::http::{assert_json, basic_auth};
use super::management::management_list;

/// How long the app's tasks may take to go when its runtime shuts down.
const APP_STOP_DEADLINE: Duration = Duration::from_secs(5);

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
    /// Runs the app; `None` once the drop took it.
    runtime: Option<tokio::runtime::Runtime>,
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
    let mongodb_uri = mongodb_uri();

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
    // Apps sharing a database (replicas) share its key unless told not to.
    if !vars.contains_key("SECRETS_KEY") {
        let key = secrets_key_of(&vars["MONGODB_DB"]);
        vars.insert("SECRETS_KEY".into(), key);
    }

    if std::env::var_os("TEST_LOG").is_some() {
        workerrmq::telemetry::init(LogFormat::Pretty);
    }
    let settings =
        Settings::from_lookup(|key| vars.get(key).cloned()).expect("test settings are valid");
    // The app's own runtime, which the drop shuts down before removing
    // anything: no consumer restarting, no heartbeat or reconcile round of
    // the app's can make a queue or the database again after the cleanup.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("test-app")
        .enable_all()
        .build()
        .expect("a runtime for the app");
    let build = Application::build(settings.clone());
    let started = runtime.spawn(async move {
        let app = build.await.expect("the application starts");
        let port = app.port();
        tokio::spawn(app.run_until_stopped());
        port
    });
    let port = match started.await {
        Ok(port) => port,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("the application did not start: {e}"),
        },
    };

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
        vhost_path: percent_encode(&settings.vhost),
        // The test's broker, not the app's setting: a test may point the app
        // at a management API that does not answer, and still cleans up.
        management_base: management_url(),
        mongodb_uri,
        queues: Mutex::new(BTreeSet::new()),
        exchanges: Mutex::new(BTreeSet::new()),
        amqp: OnceCell::new(),
        runtime: Some(runtime),
    }
}

/// A fresh `SECRETS_KEY` (32 random bytes, base64).
pub fn new_secrets_key() -> String {
    let (_, encoded) = credentials::SecretsKey::generate();
    secrecy::ExposeSecret::expose_secret(&encoded).to_owned()
}

/// The `SECRETS_KEY` test gateways on database `db` start with: derived
/// from its name, so every replica of a test (each its own app or process)
/// opens what the others sealed. Test databases are dropped after the test.
pub fn secrets_key_of(db: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("workerrmq test key for {db}"));
    base64::engine::general_purpose::STANDARD.encode(digest)
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
    /// the drop of the `TestApp`. The same label gives the same name.
    pub fn unique_queue(&self, label: &str) -> String {
        let name = format!("{}{label}", self.prefix);
        self.queues.lock().unwrap().insert(name.clone());
        name
    }

    /// An exchange name of this test's own, removed by the drop of the `TestApp`.
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
            .get_or_init(|| async { connect(&self.amqp_url).await })
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
        queue_counts(self.amqp_connection().await, queue)
            .await
            .is_some()
    }

    /// How many messages the queue holds right now (passive declare);
    /// `None` when there is no such queue.
    pub async fn message_count(&self, queue: &str) -> Option<u32> {
        queue_counts(self.amqp_connection().await, queue)
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

    fn cleanup_plan(&self) -> CleanupPlan {
        CleanupPlan::under_prefix(
            self.prefix.clone(),
            self.amqp_url.clone(),
            self.mongodb_uri.clone(),
            self.db_name.clone(),
        )
        // A poisoned lock still holds the names: this runs while a test
        // unwinds, too.
        .naming(
            self.queues
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            self.exchanges
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
        .in_vhost(self.vhost_path.clone())
        .with_management(self.management_base.clone())
    }
}

impl Drop for TestApp {
    /// Everything the test made goes, whether it passed or panicked.
    fn drop(&mut self) {
        // Dropping the test's own connection closes it in the background;
        // nothing of the test's is exclusive to it, so the plan need not
        // wait for that.
        drop(self.amqp.take());
        let runtime = self.runtime.take();
        self.cleanup_plan()
            .first(Box::new(move || {
                if let Some(runtime) = runtime {
                    runtime.shutdown_timeout(APP_STOP_DEADLINE);
                }
                Ok(())
            }))
            .run_detached();
    }
}

//! Tools for the consumer-engine tests: a scriptable HTTP target, the
//! gateway binary as a child process, a small client for the gateway's
//! consumer API, and plain-AMQP / management-API helpers to look behind it.

pub mod amqp_proxy;
pub mod browser;
pub mod cluster;
pub mod gateway_process;
pub mod target_server;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection};
use reqwest::header::AUTHORIZATION;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_json, TestApp};
use target_server::TargetServer;

pub const MANAGEMENT_URL: &str = "http://127.0.0.1:15672";
/// The vhost of the default AMQP URL as the management API spells it.
pub const VHOST_PATH: &str = "%2f";

pub fn env_or(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// The gateway's HTTP API as the bootstrap admin, whether the gateway runs
/// in the test process (`TestApp`) or as a child process.
#[derive(Clone)]
pub struct Api {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    auth: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: String, auth: String) -> Api {
        Api {
            base,
            auth,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                // The gateway closes a keep-alive connection after 5 s idle
                // (actix-web's default); a client that keeps one longer can
                // send on it just as the server closes it and see
                // "error sending request". Dropping ours first avoids that.
                .pool_idle_timeout(Duration::from_secs(2))
                .build()
                .expect("an HTTP client"),
        }
    }

    pub fn of(app: &TestApp) -> Api {
        Api::new(app.address.clone(), app.admin_auth())
    }

    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header(AUTHORIZATION, &self.auth)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// POST that hands back a failure to answer instead of failing the
    /// test: for a gateway that may be failing over.
    pub async fn try_post(&self, path: &str, body: &Value) -> Result<Response, reqwest::Error> {
        self.http
            .post(format!("{}{path}", self.base))
            .header(AUTHORIZATION, &self.auth)
            .json(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
    }

    pub async fn get(&self, path: &str) -> Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header(AUTHORIZATION, &self.auth)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// POST /createQueue; asserts 201.
    pub async fn create_queue(&self, queue: &str) {
        assert_json(
            self.post("/createQueue", &json!({ "queueName": queue }))
                .await,
            StatusCode::CREATED,
        )
        .await;
    }

    /// POST /createConsumer with an HTTP target at `url`, `extra` fields
    /// (`prefetch`, `retry`, `signingSecret`, `target.*` overrides under
    /// `target`) merged in; asserts 201 and returns the consumer id.
    pub async fn create_http_consumer(&self, queue: &str, url: &str, extra: Value) -> String {
        let mut body = json!({
            "queueName": queue,
            "target": { "type": "http", "url": url },
        });
        if let Value::Object(fields) = extra {
            for (key, value) in fields {
                if key == "target" {
                    if let Value::Object(target) = value {
                        for (k, v) in target {
                            body["target"][k] = v;
                        }
                    }
                } else {
                    body[key] = value;
                }
            }
        }
        let created = assert_json(
            self.post("/createConsumer", &body).await,
            StatusCode::CREATED,
        )
        .await;
        created["consumerId"]
            .as_str()
            .unwrap_or_else(|| panic!("no consumerId in {created}"))
            .to_owned()
    }

    /// GET /getConsumer/{id}; asserts 200.
    pub async fn consumer(&self, id: &str) -> Value {
        assert_json(
            self.get(&format!("/getConsumer/{id}")).await,
            StatusCode::OK,
        )
        .await
    }

    /// POST /deleteConsumer {consumerId}; asserts 200 and `deleted: 1`.
    pub async fn delete_consumer(&self, id: &str) {
        let body = assert_json(
            self.post("/deleteConsumer", &json!({ "consumerId": id }))
                .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(body["deleted"], 1, "{body}");
    }

    /// GET /getDeadLetters/{queue}?limit=1000; asserts 200.
    pub async fn dead_letters(&self, queue: &str) -> Vec<Value> {
        let body = assert_json(
            self.get(&format!("/getDeadLetters/{queue}?limit=1000"))
                .await,
            StatusCode::OK,
        )
        .await;
        body.as_array()
            .unwrap_or_else(|| panic!("not a list: {body}"))
            .clone()
    }

    /// POST /replayDeadLetters {queueName}; asserts 200, returns `replayed`.
    pub async fn replay_dead_letters(&self, queue: &str) -> u64 {
        let body = assert_json(
            self.post("/replayDeadLetters", &json!({ "queueName": queue }))
                .await,
            StatusCode::OK,
        )
        .await;
        body["replayed"]
            .as_u64()
            .unwrap_or_else(|| panic!("no replayed count in {body}"))
    }

    /// The status of GET /ready, `None` when nothing answers.
    pub async fn ready_status(&self) -> Option<u16> {
        self.http
            .get(format!("{}/ready", self.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// Creates `queue` and an HTTP consumer on it; the consumer's id.
    pub async fn queue_with_consumer(&self, queue: &str, url: &str, extra: Value) -> String {
        self.create_queue(queue).await;
        self.create_http_consumer(queue, url, extra).await
    }

    /// Polls GET /getConsumer/{id} until `check` accepts the view.
    pub async fn wait_for_consumer(
        &self,
        id: &str,
        deadline: Duration,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            let view = self.consumer(id).await;
            if check(&view) {
                return view;
            }
            assert!(
                started.elapsed() < deadline,
                "consumer {id} on {}: not {what} within {deadline:?}; last view: {view}",
                self.base
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The value of the first `/metrics` sample line starting with `series`
/// (a name with its labels, as the text writes them).
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A message as the tests publish it with plain AMQP.
#[derive(Debug, Clone)]
pub struct TestMessage {
    pub id: String,
    pub body: Vec<u8>,
    pub content_type: String,
}

/// The message ids of `messages`, as a target's deliveries are compared.
pub fn ids_of(messages: &[TestMessage]) -> BTreeSet<String> {
    messages.iter().map(|m| m.id.clone()).collect()
}

/// A queue with an HTTP consumer on `path` of `target`, `extra` merged into
/// the `/createConsumer` body, running: the API, the queue and the
/// consumer's id.
pub async fn running_consumer_on(
    app: &TestApp,
    target: &TargetServer,
    label: &str,
    path: &str,
    extra: Value,
) -> (Api, String, String) {
    let api = Api::of(app);
    let queue = app.unique_queue(label);
    let consumer = api
        .queue_with_consumer(&queue, &target.url(path), extra)
        .await;
    api.wait_for_consumer(&consumer, Duration::from_secs(5), "running", |v| {
        v["state"] == "running"
    })
    .await;
    (api, queue, consumer)
}

/// `n` messages with explicit ids and binary (not UTF-8, not JSON) bodies
/// of varied lengths, typed `application/octet-stream`.
pub fn binary_messages(label: &str, n: usize) -> Vec<TestMessage> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    (0..n)
        .map(|i| {
            let mut body = vec![0xff, 0x00, 0xfe, (i % 256) as u8];
            body.extend((0..(i % 97) + 8).map(|_| rand::random::<u8>()));
            body.extend_from_slice(b"\r\n\0end");
            TestMessage {
                id: format!("{label}-{i:05}-{}", &run[..12]),
                body,
                content_type: "application/octet-stream".into(),
            }
        })
        .collect()
}

/// Publishes every message to `queue` through the default exchange,
/// persistent, on a confirming channel; returns once the broker confirmed
/// them all.
pub async fn publish_confirmed(connection: &Connection, queue: &str, messages: &[TestMessage]) {
    let with_properties: Vec<(&[u8], BasicProperties)> = messages
        .iter()
        .map(|message| {
            let properties = BasicProperties::default()
                .with_message_id(message.id.clone().into())
                .with_content_type(message.content_type.clone().into())
                .with_delivery_mode(2);
            (message.body.as_slice(), properties)
        })
        .collect();
    publish_with_properties(connection, queue, with_properties).await;
}

/// Publishes each body with its properties to `queue` through the default
/// exchange, on a confirming channel; returns once the broker confirmed
/// them all.
pub async fn publish_with_properties(
    connection: &Connection,
    queue: &str,
    messages: Vec<(&[u8], BasicProperties)>,
) {
    let channel = connection
        .create_channel()
        .await
        .expect("a publishing channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("publisher confirms");
    let mut confirms = Vec::with_capacity(messages.len());
    for (body, properties) in messages {
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties,
                )
                .await
                .expect("the publish is sent"),
        );
    }
    for confirm in confirms {
        let confirmation = confirm.await.expect("a publisher confirm");
        assert!(
            matches!(confirmation, Confirmation::Ack(None)),
            "the broker did not take a message: {confirmation:?}"
        );
    }
    let _ = channel.close(200, "published".into()).await;
}

/// `(ready messages, consumers)` of `queue` (passive declare), `None` when
/// there is no such queue.
pub async fn queue_counts(connection: &Connection, queue: &str) -> Option<(u32, u32)> {
    let channel: Channel = connection.create_channel().await.expect("a channel");
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    match declared {
        Ok(q) => {
            let _ = channel.close(200, "done".into()).await;
            Some((q.message_count(), q.consumer_count()))
        }
        Err(err) if crate::helpers::is_not_found(&err) => None,
        Err(err) => panic!("passive declare of `{queue}` failed: {err}"),
    }
}

/// Polls the queue until `check(messages, consumers)` holds.
pub async fn wait_for_queue(
    connection: &Connection,
    queue: &str,
    deadline: Duration,
    what: &str,
    check: impl Fn(u32, u32) -> bool,
) -> (u32, u32) {
    let started = Instant::now();
    loop {
        let counts = queue_counts(connection, queue).await;
        if let Some((messages, consumers)) = counts {
            if check(messages, consumers) {
                return (messages, consumers);
            }
        }
        assert!(
            started.elapsed() < deadline,
            "queue `{queue}`: not {what} within {deadline:?}; last (messages, consumers): {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn management_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

pub fn management_request(
    http: &reqwest::Client,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    let base = env_or("RABBITMQ_MANAGEMENT_URL", MANAGEMENT_URL);
    management_request_at(http, &base, method, path)
}

/// `management_request` to the management API at `base`.
pub fn management_request_at(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    http.request(method, format!("{}{path}", base.trim_end_matches('/')))
        .basic_auth(
            env_or("RABBITMQ_MANAGEMENT_USER", "guest"),
            Some(env_or("RABBITMQ_MANAGEMENT_PASSWORD", "guest")),
        )
}

pub async fn management_get(http: &reqwest::Client, path: &str) -> Value {
    let request = management_request(http, reqwest::Method::GET, path);
    let response = management_send(request, path).await;
    response.json().await.expect("management API JSON")
}

/// PUT `body` to a management-API path; asserts success.
pub async fn management_put(http: &reqwest::Client, path: &str, body: &Value) {
    let request = management_request(http, reqwest::Method::PUT, path).json(body);
    management_send(request, path).await;
}

async fn management_send(request: reqwest::RequestBuilder, path: &str) -> Response {
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("management API {path}: {e}"));
    assert!(
        response.status().is_success(),
        "management API {path}: {}",
        response.status()
    );
    response
}

/// The broker's name (`"127.0.0.1:x -> 127.0.0.1:5672"`) of the connection
/// whose client-provided name is `client_name`, if it is open.
pub async fn connection_named(http: &reqwest::Client, client_name: &str) -> Option<String> {
    let rows = management_get(http, "/api/connections?columns=name,client_properties").await;
    rows.as_array()?
        .iter()
        .find(|row| row["client_properties"]["connection_name"] == client_name)
        .and_then(|row| row["name"].as_str().map(str::to_owned))
}

/// Force-closes a connection by its broker name, as an operator would
/// from the management UI.
pub async fn force_close_connection(http: &reqwest::Client, name: &str) {
    let path = format!("/api/connections/{}", percent_encode(name));
    let response = management_request(http, reqwest::Method::DELETE, &path)
        .header("X-Reason", "forced by a workerrmq test")
        .send()
        .await
        .unwrap_or_else(|e| panic!("DELETE {path}: {e}"));
    assert!(
        response.status().is_success(),
        "DELETE {path}: {}",
        response.status()
    );
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

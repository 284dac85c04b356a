//! The gateway's HTTP API as a test's client sees it, whether the gateway
//! runs in the test process (`TestApp`) or as a child process: the consumer
//! routes, with the status each call expects.

use std::time::{Duration, Instant};

use reqwest::header::AUTHORIZATION;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use super::app::TestApp;
use super::http::assert_json;
use super::target_server::TargetServer;

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

    /// GET that hands back a failure to answer instead of failing the
    /// test: for a gateway whose store may not answer yet.
    pub async fn try_get(&self, path: &str) -> Result<Response, reqwest::Error> {
        self.http
            .get(format!("{}{path}", self.base))
            .header(AUTHORIZATION, &self.auth)
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

    /// POST /pauseConsumer {consumerId}; asserts the 200 answer.
    pub async fn pause(&self, id: &str) {
        let body = assert_json(
            self.post("/pauseConsumer", &json!({ "consumerId": id }))
                .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(
            body,
            json!({ "message": "Consumer has been paused.", "consumerId": id })
        );
    }

    /// POST /resumeConsumer {consumerId}; asserts the 200 answer.
    pub async fn resume(&self, id: &str) {
        let body = assert_json(
            self.post("/resumeConsumer", &json!({ "consumerId": id }))
                .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(
            body,
            json!({ "message": "Consumer has been resumed.", "consumerId": id })
        );
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

//! Delivery history: every attempt recorded, one message's timeline,
//! `/getAttempts` pages and filters, what a record never holds, and a store
//! that freezes without delaying a delivery.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::target_server::{Reply, TargetServer};
use crate::support::wait::eventually;
use crate::support::{
    bearer, binary_messages, ids_of, publish_confirmed, running_consumer_on, spawn_app,
    spawn_app_with, wait_for_queue, Api,
};

const DEADLINE: Duration = Duration::from_secs(30);

/// `/getMessageHistory` once it shows `n` attempts.
async fn history_with(api: &Api, queue: &str, message_id: &str, n: usize) -> Value {
    eventually(DEADLINE, || async {
        let response = api
            .get(&format!("/getMessageHistory/{queue}/{message_id}"))
            .await;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        let attempts = body["attempts"].as_array().map_or(0, Vec::len);
        if status == StatusCode::OK && attempts >= n {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_answered_503_503_then_200_has_three_attempts_in_its_timeline() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    target.script(
        "/flaky",
        vec![
            Reply::status(503).with_body("busy, try later"),
            Reply::status(503).with_body("still busy"),
        ],
        Reply::ok().with_body("thanks"),
    );
    let (api, queue, consumer) = running_consumer_on(
        &app,
        &target,
        "flaky",
        "/flaky",
        json!({ "retry": { "maxAttempts": 5, "initialDelayMs": 200, "multiplier": 1, "maxDelayMs": 1000 } }),
    )
    .await;
    let message_id = app.publish(&queue, json!({ "order": 1234 })).await;

    let history = history_with(&api, &queue, &message_id, 3).await;
    assert_eq!(history["state"], "delivered", "{history}");
    let body_bytes = target.requests_to("/flaky")[0].body.len();
    assert_eq!(history["queueName"], queue.as_str());
    assert_eq!(history["messageId"], message_id.as_str());
    let attempts = history["attempts"].as_array().expect("attempts");
    let column = |f: &dyn Fn(&Value) -> Value| attempts.iter().map(f).collect::<Vec<_>>();
    assert_eq!(column(&|a| a["attempt"].clone()), [1, 2, 3], "{history}");
    assert_eq!(
        column(&|a| a["outcome"].clone()),
        ["retry_scheduled", "retry_scheduled", "delivered"]
    );
    assert_eq!(
        column(&|a| a["response"]["status"].clone()),
        [503, 503, 200]
    );
    assert_eq!(
        column(&|a| a["response"]["body"].clone()),
        ["busy, try later", "still busy", "thanks"]
    );
    for attempt in attempts {
        assert_eq!(attempt["consumerId"], consumer.as_str());
        assert_eq!(attempt["trigger"], "delivery");
        assert_eq!(attempt["replica"], app.instance_id.as_str());
        assert_eq!(attempt["request"]["method"], "POST");
        assert_eq!(attempt["request"]["bodyBytes"], body_bytes, "{attempt}");
        assert!(attempt["durationMs"].is_u64(), "{attempt}");
        assert!(attempt["startedAt"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')));
    }
    assert_eq!(attempts[0]["error"]["kind"], "http_status");
    assert_eq!(attempts[2]["error"], Value::Null);

    // The same records through /getAttempts, newest first.
    let page: Value = api
        .get(&format!("/getAttempts?consumerId={consumer}&status=5xx"))
        .await
        .json()
        .await
        .expect("a JSON page");
    let statuses: Vec<&Value> = page["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| &a["response"]["status"])
        .collect();
    assert_eq!(statuses, [&json!(503), &json!(503)], "{page}");
    assert_eq!(page["nextCursor"], Value::Null);
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_hold_no_secret_and_viewers_see_no_response_body() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    target.set_default(Reply::status(422).with_body("order 1234 is invalid"));
    let api = Api::of(&app);
    let queue = app.unique_queue("secrets");
    let consumer = api
        .queue_with_consumer(
            &queue,
            &format!("{}/in?token=querySecretValue", target.base_url),
            json!({
                "target": {
                    "type": "http",
                    "url": format!("{}/in?token=querySecretValue", target.base_url),
                    "headers": { "authorization": "Bearer headerSecretValue", "x-api-key": "keySecretValue" }
                },
                "signingSecret": "whsec_c2lnbmluZ1NlY3JldFZhbHVlMTIzNDU2Nzg5MDEy"
            }),
        )
        .await;
    let message_id = app.publish(&queue, json!({ "order": 1234 })).await;
    let history = history_with(&api, &queue, &message_id, 1).await;
    assert_eq!(history["state"], "dead_lettered", "{history}");
    let attempt = &history["attempts"][0];
    assert_eq!(attempt["outcome"], "dead_lettered");
    assert_eq!(attempt["consumerId"], consumer.as_str());
    assert_eq!(attempt["response"]["body"], "order 1234 is invalid");
    let headers = attempt["request"]["headers"].as_array().expect("names");
    for name in ["authorization", "x-api-key", "webhook-signature"] {
        assert!(headers.contains(&json!(name)), "{name} in {headers:?}");
    }
    let stored = app.stored("attempts").await;
    let documents: Vec<mongodb::bson::Document> = {
        use futures_util::TryStreamExt;
        stored
            .find(mongodb::bson::doc! {})
            .await
            .expect("a cursor")
            .try_collect()
            .await
            .expect("the records")
    };
    assert_eq!(documents.len(), 1);
    let raw = format!("{documents:?} {history}");
    for secret in [
        "querySecretValue",
        "headerSecretValue",
        "keySecretValue",
        "c2lnbmluZ1NlY3JldFZhbHVl",
        "whsec_",
    ] {
        assert!(!raw.contains(secret), "`{secret}` in {raw}");
    }
    assert!(raw.contains("token=***"), "{raw}");

    let viewer = app.create_api_key("viewer").await;
    let as_viewer = Api::new(app.address.clone(), bearer(&viewer));
    for path in [
        format!("/getMessageHistory/{queue}/{message_id}"),
        format!("/getAttempts?consumerId={consumer}"),
    ] {
        let response = as_viewer.get(&path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let body: Value = response.json().await.expect("JSON");
        let attempt = body["attempts"][0].clone();
        assert_eq!(attempt["response"]["status"], 422, "{body}");
        assert!(
            attempt["response"].get("body").is_none(),
            "a viewer sees no response body: {body}"
        );
    }
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_follow_their_cursor_without_repeats_or_gaps_and_filters_apply() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    let (api, queue, consumer) =
        running_consumer_on(&app, &target, "pages", "/ok", json!({})).await;
    let messages = binary_messages("pages", 25);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;
    let all = ids_of(&messages);

    let seen = eventually(DEADLINE, || async {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/getAttempts?consumerId={consumer}&outcome=delivered&limit=7");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let page: Value = api
                .get(&path)
                .await
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let attempts = page["attempts"].as_array().cloned().unwrap_or_default();
            if attempts.len() > 7 {
                return Err(format!("a page over its limit: {page}"));
            }
            seen.extend(attempts);
            match page["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        if seen.len() >= all.len() {
            Ok(seen)
        } else {
            Err(format!("{} of {} records so far", seen.len(), all.len()))
        }
    })
    .await;
    let ids: Vec<String> = seen
        .iter()
        .map(|a| a["messageId"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids.len(), all.len(), "no record twice");
    assert_eq!(ids.iter().cloned().collect::<BTreeSet<_>>(), all);
    let times: Vec<&str> = seen
        .iter()
        .filter_map(|a| a["startedAt"].as_str())
        .collect();
    let mut newest_first = times.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, newest_first, "newest first");

    // Filters that match nothing answer an empty page.
    let none: Value = api
        .get(&format!(
            "/getAttempts?consumerId={consumer}&errorKind=timeout"
        ))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(none["attempts"], json!([]));
    let later = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let future: Value = api
        .get(&format!("/getAttempts?queueName={queue}&since={later}"))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(future["attempts"], json!([]));
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_history_parameters_are_refused_naming_the_parameter() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    for (query, parameter) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("since=yesterday", "since"),
        ("until=2026-13-01", "until"),
        ("outcome=lost", "outcome"),
        ("status=6xx", "status"),
        ("errorKind=nope", "errorKind"),
        ("cursor=forged", "cursor"),
        ("cursor=MTIzLm5vdC1hLXV1aWQ", "cursor"),
    ] {
        let response = api.get(&format!("/getAttempts?{query}")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let body: Value = response.json().await.expect("a JSON error body");
        assert!(
            body.to_string().contains(parameter),
            "{query}: the error names `{parameter}`: {body}"
        );
    }
    let unknown = api
        .get(&format!(
            "/getMessageHistory/{}/m-1",
            app.unique_queue("nope")
        ))
        .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_with_its_attempt_log_off_leaves_no_record() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    let (api, queue, consumer) = running_consumer_on(
        &app,
        &target,
        "quiet",
        "/ok",
        json!({ "attemptLog": { "enabled": false } }),
    )
    .await;
    assert_eq!(
        api.consumer(&consumer).await["attemptLog"]["enabled"],
        false
    );
    let messages = binary_messages("quiet", 5);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;
    target
        .wait_for_delivered(&ids_of(&messages), DEADLINE)
        .await;
    // Turned on again: the next message is recorded, the earlier ones are not.
    let update = api
        .post(
            "/updateConsumer",
            &json!({ "consumerId": consumer, "attemptLog": { "enabled": true } }),
        )
        .await;
    assert_eq!(update.status(), StatusCode::OK);
    let later = app.publish(&queue, json!({ "n": 6 })).await;
    history_with(&api, &queue, &later, 1).await;
    let page: Value = api
        .get(&format!("/getAttempts?consumerId={consumer}"))
        .await
        .json()
        .await
        .expect("JSON");
    let ids: Vec<&Value> = page["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| &a["messageId"])
        .collect();
    assert_eq!(ids, [&json!(later)], "{page}");
    target.stop().await;
}

/// A SecantusDB of the test's own, so it can be frozen without touching the
/// store other tests use. Killed on drop.
struct OwnStore {
    child: Child,
    port: u16,
    _dir: std::path::PathBuf,
}

impl OwnStore {
    async fn start() -> OwnStore {
        let port = testkit::free_port().expect("a free port");
        let dir =
            std::env::temp_dir().join(format!("wrmq-store-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a storage directory");
        let python = [".venv/bin/python", "../.venv/bin/python"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("python3");
        let child = Command::new(python)
            .args([
                "-m",
                "secantus",
                "--port",
                &port.to_string(),
                "--storage-path",
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("SecantusDB starts (pip install secantusdb)");
        eventually(DEADLINE, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await;
        OwnStore {
            child,
            port,
            _dir: dir,
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal}");
    }
}

impl Drop for OwnStore {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_store_delays_no_delivery_and_every_record_arrives_afterwards() {
    let store = OwnStore::start().await;
    let uri = format!("mongodb://127.0.0.1:{}", store.port);
    let app = spawn_app_with(&[("MONGODB_URI", uri.as_str())]).await;
    let target = TargetServer::start().await;
    let (api, queue, consumer) =
        running_consumer_on(&app, &target, "frozen", "/ok", json!({ "prefetch": 100 })).await;
    let messages = binary_messages("frozen", 2_000);
    let amqp = app.amqp_connection().await;

    store.signal("-STOP");
    let frozen_at = std::time::Instant::now();
    publish_confirmed(amqp, &queue, &messages).await;
    // Delivered and acked while the store is still frozen.
    target
        .wait_for_delivered(&ids_of(&messages), Duration::from_secs(9))
        .await;
    wait_for_queue(
        amqp,
        &queue,
        Duration::from_secs(9),
        "every message taken",
        |ready, _| ready == 0,
    )
    .await;
    let delivered_within = frozen_at.elapsed();
    assert!(
        delivered_within < Duration::from_secs(10),
        "the deliveries waited for the store: {delivered_within:?}"
    );
    // Keep it frozen for the full 10 s.
    if let Some(rest) = Duration::from_secs(10).checked_sub(frozen_at.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    store.signal("-CONT");
    api.wait_for_consumer(
        &consumer,
        Duration::from_secs(60),
        "every message acked",
        |v| v["stats"]["acked"] == 2_000,
    )
    .await;

    let all = ids_of(&messages);
    eventually(Duration::from_secs(60), || async {
        let mut seen = BTreeSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path =
                format!("/getAttempts?consumerId={consumer}&outcome=delivered&limit=1000");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let response = api.try_get(&path).await.map_err(|e| e.to_string())?;
            let page: Value = response.json().await.map_err(|e| e.to_string())?;
            for attempt in page["attempts"].as_array().cloned().unwrap_or_default() {
                let id = attempt["messageId"].as_str().unwrap_or_default().to_owned();
                if !seen.insert(id.clone()) {
                    return Err(format!("{id} twice"));
                }
            }
            match page["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        if seen == all {
            Ok(())
        } else {
            Err(format!("{} of {} delivered records", seen.len(), all.len()))
        }
    })
    .await;
    let metrics = api.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains("workerrmq_attempt_log_dropped_total 0"),
        "nothing dropped while the buffer had room"
    );
    target.stop().await;
}

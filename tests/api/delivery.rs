//! What a target receives: the payload byte for byte with its content type,
//! the Standard Webhooks headers, and up to `prefetch` requests at once.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::json;
use sha2::Sha256;

use crate::support::target_server::{Reply, TargetServer};
use crate::support::{assert_json, spawn_app, spawn_app_with};
use crate::support::{
    binary_messages, ids_of, publish_confirmed, running_consumer_on, wait_for_queue, Api,
};

const DELIVERY_DEADLINE: Duration = Duration::from_secs(30);

fn is_running(view: &serde_json::Value) -> bool {
    view["state"] == "running"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_messages_reach_the_target_byte_for_byte_and_are_all_acked() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    let queue = app.unique_queue("bytes");
    let consumer = api
        .queue_with_consumer(&queue, &target.url("/hook"), json!({}))
        .await;
    api.wait_for_consumer(&consumer, Duration::from_secs(5), "running", is_running)
        .await;

    let messages = binary_messages("bytes", 100);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;
    let ids: BTreeSet<String> = messages.iter().map(|m| m.id.clone()).collect();
    target.wait_for_delivered(&ids, DELIVERY_DEADLINE).await;

    let view = api
        .wait_for_consumer(&consumer, Duration::from_secs(10), "acked 100", |v| {
            v["stats"]["acked"] == 100
        })
        .await;
    assert_eq!(view["stats"]["retried"], 0, "{view}");
    assert_eq!(view["stats"]["deadLettered"], 0, "{view}");
    assert_eq!(view["stats"]["inFlight"], 0, "{view}");

    let requests = target.requests_to("/hook");
    assert_eq!(requests.len(), 100, "each message once, nothing else");
    for message in &messages {
        let request = requests
            .iter()
            .find(|r| r.webhook_id() == message.id)
            .unwrap_or_else(|| panic!("no request for {}", message.id));
        assert_eq!(request.method, "POST");
        assert_eq!(
            request.body, message.body,
            "the body of {} differs",
            message.id
        );
        assert_eq!(
            request.header("content-type"),
            Some("application/octet-stream"),
            "{request:?}"
        );
        assert_eq!(request.attempt(), 1, "{request:?}");
        assert_eq!(request.header("x-workerrmq-queue"), Some(queue.as_str()));
        let timestamp: i64 = request
            .header("webhook-timestamp")
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no numeric webhook-timestamp: {request:?}"));
        assert!(
            (chrono::Utc::now().timestamp() - timestamp).abs() < 300,
            "webhook-timestamp {timestamp} is not now"
        );
        assert_eq!(
            request.header("webhook-signature"),
            None,
            "an unsigned consumer signs nothing"
        );
    }

    let (ready, _) = wait_for_queue(
        app.amqp_connection().await,
        &queue,
        Duration::from_secs(5),
        "empty",
        |messages, _| messages == 0,
    )
    .await;
    assert_eq!(ready, 0);

    target.stop().await;
}

/// `whsec_` + base64 of `key`, as Standard Webhooks writes a secret.
pub(crate) fn whsec(key: &[u8]) -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// A random signing secret and its key bytes.
pub(crate) fn signing_secret() -> (String, [u8; 32]) {
    let key: [u8; 32] = rand::random();
    (whsec(&key), key)
}

/// Standard Webhooks: `v1,` + base64(HMAC-SHA256(key, "{id}.{ts}.{body}")),
/// computed here independently of the gateway's code.
pub(crate) fn expected_signature(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_verify_with_an_independently_computed_hmac() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    let queue = app.unique_queue("signed");
    api.create_queue(&queue).await;

    let (secret, key) = signing_secret();
    let consumer = api
        .create_http_consumer(
            &queue,
            &target.url("/signed"),
            json!({ "signingSecret": secret }),
        )
        .await;
    let view = api
        .wait_for_consumer(&consumer, Duration::from_secs(5), "running", is_running)
        .await;
    assert!(
        !view.to_string().contains(&secret[6..]),
        "the API never shows the secret: {view}"
    );

    let messages = binary_messages("signed", 5);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;
    let json_id = app
        .publish(&queue, json!({ "order": 42, "note": "ünïcødé" }))
        .await;
    let mut ids: BTreeSet<String> = messages.iter().map(|m| m.id.clone()).collect();
    ids.insert(json_id.clone());
    target.wait_for_delivered(&ids, DELIVERY_DEADLINE).await;

    let requests = target.requests_to("/signed");
    assert_eq!(requests.len(), ids.len());
    let other_key: [u8; 32] = rand::random();
    for request in &requests {
        let id = request.webhook_id();
        let timestamp = request
            .header("webhook-timestamp")
            .expect("a webhook-timestamp")
            .to_owned();
        let signature = request
            .header("webhook-signature")
            .unwrap_or_else(|| panic!("a signed consumer signs every request: {request:?}"));
        assert_eq!(
            signature,
            expected_signature(&key, &id, &timestamp, &request.body),
            "the signature of {id} does not verify"
        );
        assert_ne!(
            signature,
            expected_signature(&other_key, &id, &timestamp, &request.body)
        );
    }
    let json_request = requests
        .iter()
        .find(|r| r.webhook_id() == json_id)
        .expect("the JSON message arrived");
    assert_eq!(
        json_request.header("content-type"),
        Some("application/json")
    );
    let body: serde_json::Value = serde_json::from_slice(&json_request.body).expect("a JSON body");
    assert_eq!(body, json!({ "order": 42, "note": "ünïcødé" }));

    // A secret that is not `whsec_` + base64 is refused.
    let refused = api
        .post(
            "/createConsumer",
            &json!({
                "queueName": queue,
                "target": { "type": "http", "url": target.url("/signed") },
                "signingSecret": "not-a-webhook-secret",
            }),
        )
        .await;
    assert_json(refused, StatusCode::BAD_REQUEST).await;

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_works_on_up_to_prefetch_deliveries_at_once() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    target.set_default(Reply::ok().after(Duration::from_millis(200)));
    let queue = app.unique_queue("prefetch");
    api.create_queue(&queue).await;

    let messages = binary_messages("prefetch", 40);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;
    let consumer = api
        .create_http_consumer(&queue, &target.url("/slow"), json!({ "prefetch": 10 }))
        .await;
    let ids: BTreeSet<String> = messages.iter().map(|m| m.id.clone()).collect();
    target.wait_for_delivered(&ids, DELIVERY_DEADLINE).await;

    let most = target.max_in_flight();
    assert!(
        most >= 8,
        "with prefetch 10 and 200 ms per request the target saw only {most} at once"
    );
    assert!(most <= 10, "prefetch 10, yet {most} requests at once");
    api.wait_for_consumer(&consumer, Duration::from_secs(10), "acked 40", |v| {
        v["stats"]["acked"] == 40
    })
    .await;

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_aimed_at_one_target_share_its_connection_limit_and_lose_nothing() {
    let app = spawn_app_with(&[("MAX_CONNECTIONS_PER_TARGET", "3")]).await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    target.set_default(Reply::ok().after(Duration::from_millis(100)));

    // Two consumers, prefetch 10 each, two paths of the same origin: up to
    // 20 requests at once without the limit.
    let mut ids = BTreeSet::new();
    let mut consumers = Vec::new();
    for (name, path) in [("limit-a", "/a"), ("limit-b", "/b")] {
        let queue = app.unique_queue(name);
        api.create_queue(&queue).await;
        let messages = binary_messages(name, 30);
        ids.extend(messages.iter().map(|m| m.id.clone()));
        publish_confirmed(app.amqp_connection().await, &queue, &messages).await;
        consumers.push(
            api.create_http_consumer(&queue, &target.url(path), json!({ "prefetch": 10 }))
                .await,
        );
    }
    target.wait_for_delivered(&ids, DELIVERY_DEADLINE).await;

    let most = target.max_in_flight();
    assert!(
        most <= 3,
        "MAX_CONNECTIONS_PER_TARGET=3, yet the target saw {most} requests at once"
    );
    assert_eq!(most, 3, "the limit is used, not undercut");
    for consumer in &consumers {
        api.wait_for_consumer(consumer, Duration::from_secs(10), "acked 30", |v| {
            v["stats"]["acked"] == 30 && v["stats"]["retried"] == 0
        })
        .await;
    }

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_delivery_does_not_hold_up_the_rest_of_the_prefetch_window() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    // The first request is held 8 s; every later one is answered at once.
    target.script(
        "/hook",
        vec![Reply::ok().after(Duration::from_secs(8))],
        Reply::ok(),
    );
    let queue = app.unique_queue("straggler");
    let consumer = api
        .queue_with_consumer(&queue, &target.url("/hook"), json!({ "prefetch": 3 }))
        .await;
    api.wait_for_consumer(&consumer, Duration::from_secs(5), "running", is_running)
        .await;

    let messages = binary_messages("straggler", 13);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;
    // With prefetch 3, the 12 quick ones only get through while the slow one
    // is held if the ones settled behind it are acked on their own.
    let view = api
        .wait_for_consumer(&consumer, Duration::from_secs(6), "12 acked", |v| {
            v["stats"]["acked"] == 12
        })
        .await;
    assert_eq!(
        view["stats"]["inFlight"], 1,
        "the slow one is still held: {view}"
    );
    assert_eq!(target.in_flight(), 1);

    let view = api
        .wait_for_consumer(&consumer, Duration::from_secs(15), "13 acked", |v| {
            v["stats"]["acked"] == 13
        })
        .await;
    assert_eq!(view["stats"]["retried"], 0, "{view}");
    wait_for_queue(
        app.amqp_connection().await,
        &queue,
        Duration::from_secs(5),
        "empty",
        |m, _| m == 0,
    )
    .await;
    assert_eq!(target.requests_to("/hook").len(), 13, "each message once");
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_with_http2_always_shares_a_few_connections_to_an_h2c_target() {
    let app = spawn_app().await;
    let target = TargetServer::start_h2c().await;
    target.set_responder(|_, _| Reply::ok().after(Duration::from_millis(5)));
    let (_api, queue, _consumer) = running_consumer_on(
        &app,
        &target,
        "h2c",
        "/h2",
        json!({ "prefetch": 50, "target": { "http2": "always" } }),
    )
    .await;
    let messages = binary_messages("h2c", 300);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;
    target
        .wait_for_delivered(&ids_of(&messages), Duration::from_secs(30))
        .await;
    let requests = target.requests();
    assert!(
        requests.iter().all(|r| r.version == "HTTP/2.0"),
        "not all over HTTP/2: {:?}",
        requests.iter().map(|r| &r.version).collect::<BTreeSet<_>>()
    );
    assert!(target.max_in_flight() > 1, "the calls did not run at once");
    assert!(
        target.connections() <= 4,
        "{} connections for 300 messages",
        target.connections()
    );
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_connection_the_target_ends_is_opened_again() {
    let app = spawn_app().await;
    let first = TargetServer::start_h2c().await;
    let port = first.port();
    let (_api, queue, _consumer) = running_consumer_on(
        &app,
        &first,
        "h2c-again",
        "/h2",
        json!({ "target": { "http2": "always" },
                "retry": { "maxAttempts": 5, "initialDelayMs": 100 } }),
    )
    .await;
    let before = binary_messages("before", 3);
    publish_confirmed(app.amqp_connection().await, &queue, &before).await;
    first
        .wait_for_delivered(&ids_of(&before), Duration::from_secs(20))
        .await;
    // The target goes away, closing the connection, and comes back on the
    // same port: the next messages reach it on a new connection.
    first.stop().await;
    let second = TargetServer::start_h2c_on(port).await;
    let after = binary_messages("after", 3);
    publish_confirmed(app.amqp_connection().await, &queue, &after).await;
    second
        .wait_for_delivered(&ids_of(&after), Duration::from_secs(20))
        .await;
    assert!(
        second.requests().iter().all(|r| r.version == "HTTP/2.0"),
        "not all over HTTP/2"
    );
    assert_eq!(second.connections(), 1, "one new connection");
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_always_against_an_http1_only_target_is_retried_with_a_clear_error() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    let (api, queue, consumer) = running_consumer_on(
        &app,
        &target,
        "h1only",
        "/h1",
        json!({ "target": { "http2": "always" },
                "retry": { "maxAttempts": 5, "initialDelayMs": 60000 } }),
    )
    .await;
    let messages = binary_messages("h1only", 1);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;
    let view = api
        .wait_for_consumer(&consumer, Duration::from_secs(20), "retrying", |v| {
            v["stats"]["retried"] == 1
        })
        .await;
    let error = view["stats"]["lastError"].as_str().unwrap_or_default();
    assert!(error.contains("HTTP/2"), "{view}");
    assert_eq!(view["target"]["http2"], "always", "{view}");
    assert_eq!(view["stats"]["deadLettered"], 0, "{view}");
    target.stop().await;
}

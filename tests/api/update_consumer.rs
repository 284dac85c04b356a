//! `/updateConsumer`: a consumer changed at runtime. The new definition is
//! checked as a created one is, every replica applies it within 5 s, and
//! the change costs no message and doubles none: the old settings' in-flight
//! deliveries finish before the new settings take over.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::target_server::{Reply, TargetServer};
use crate::support::{assert_error, assert_json, assert_refused_naming, spawn_app, spawn_app_with};
use crate::support::{binary_messages, publish_confirmed, wait_for_queue, Api, TestMessage};

/// The contract: every replica applies an update within 5 s.
const CONVERGENCE: Duration = Duration::from_secs(5);
const ALL_DELIVERED: Duration = Duration::from_secs(60);
const STREAM: usize = 2_000;
const BATCH: usize = 50;
/// Paces the stream so it runs for several seconds around the update.
const BETWEEN_BATCHES: Duration = Duration::from_millis(200);

fn is_running(view: &Value) -> bool {
    view["state"] == "running"
}

/// How many requests carried each message id, over both targets.
fn requests_per_id(targets: &[&TargetServer]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for target in targets {
        for request in target.requests() {
            *counts.entry(request.webhook_id()).or_default() += 1;
        }
    }
    counts
}

/// The parts of a view an update may change, without live stats.
fn definition_of(view: &Value) -> Value {
    json!({
        "consumerName": view["consumerName"],
        "target": view["target"],
        "prefetch": view["prefetch"],
        "concurrency": view["concurrency"],
        "rateLimitPerSec": view["rateLimitPerSec"],
        "retry": view["retry"],
        "circuitBreaker": view["circuitBreaker"],
        "signed": view["signed"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefetch_and_target_change_under_a_stream_without_losing_or_doubling_a_message() {
    let first = spawn_app().await;
    let second = spawn_app_with(&[
        ("MONGODB_DB", first.db_name.as_str()),
        ("ADMIN_PASSWORD", first.admin_password.as_str()),
    ])
    .await;
    let replicas = [Api::of(&first), Api::of(&second)];
    // Each call takes a little while, so deliveries are in flight when the
    // update lands.
    let old_target = TargetServer::start().await;
    old_target.set_default(Reply::ok().after(Duration::from_millis(20)));
    let new_target = TargetServer::start().await;
    new_target.set_default(Reply::ok().after(Duration::from_millis(20)));
    let queue = first.unique_queue("update");
    replicas[0].create_queue(&queue).await;
    let consumer = replicas[0]
        .create_http_consumer(&queue, &old_target.url("/old"), json!({ "prefetch": 5 }))
        .await;
    for api in &replicas {
        api.wait_for_consumer(&consumer, CONVERGENCE, "running", is_running)
            .await;
    }
    let amqp = first.amqp_connection().await;
    wait_for_queue(
        amqp,
        &queue,
        CONVERGENCE,
        "consumed by both replicas",
        |_, n| n == 2,
    )
    .await;

    let messages = binary_messages("update", STREAM);
    let published = AtomicUsize::new(0);
    let publish = async {
        for batch in messages.chunks(BATCH) {
            publish_confirmed(amqp, &queue, batch).await;
            published.fetch_add(batch.len(), Ordering::SeqCst);
            tokio::time::sleep(BETWEEN_BATCHES).await;
        }
    };
    let update = async {
        // Midway: once the old settings have carried a good part.
        old_target
            .wait_for_requests(STREAM / 5, ALL_DELIVERED)
            .await;
        let answer = assert_json(
            replicas[0]
                .post(
                    "/updateConsumer",
                    &json!({
                        "consumerId": consumer,
                        "prefetch": 50,
                        "target": { "type": "http", "url": new_target.url("/new") },
                    }),
                )
                .await,
            StatusCode::OK,
        )
        .await;
        (Instant::now(), published.load(Ordering::SeqCst), answer)
    };
    let ((), (updated_at, published_by_then, answer)) = tokio::join!(publish, update);
    assert!(
        published_by_then < STREAM,
        "the update landed after the stream ended ({published_by_then} published)"
    );
    assert_eq!(answer["consumerId"], consumer.as_str(), "{answer}");
    assert_eq!(answer["prefetch"], 50, "{answer}");
    assert_eq!(answer["target"]["url"], new_target.url("/new"), "{answer}");
    assert_eq!(answer["queueName"], queue.as_str(), "{answer}");
    assert!(answer.get("signingSecret").is_none(), "{answer}");

    for api in &replicas {
        api.wait_for_consumer(&consumer, CONVERGENCE, "showing the update", |view| {
            view["prefetch"] == 50 && view["target"]["url"] == new_target.url("/new")
        })
        .await;
    }

    let ids: std::collections::BTreeSet<String> = messages.iter().map(|m| m.id.clone()).collect();
    let started = Instant::now();
    loop {
        let seen: std::collections::BTreeSet<String> = old_target
            .ids_seen()
            .union(&new_target.ids_seen())
            .cloned()
            .collect();
        if seen.is_superset(&ids) {
            break;
        }
        assert!(
            started.elapsed() < ALL_DELIVERED,
            "{} of {STREAM} messages delivered within {ALL_DELIVERED:?}",
            seen.intersection(&ids).count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counts = requests_per_id(&[&old_target, &new_target]);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(
        counts
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        ids,
        "the targets saw other ids than the ones published"
    );
    // Both replicas applied the new target within the contract's 5 s: no
    // call reaches the old target after that, while the new one gets calls.
    let applied_by = updated_at + CONVERGENCE;
    let late_old = old_target
        .requests()
        .iter()
        .filter(|r| r.received_at > applied_by)
        .count();
    assert_eq!(
        late_old, 0,
        "the old target was called after the update applied"
    );
    assert!(
        new_target
            .requests()
            .iter()
            .any(|r| r.received_at > applied_by),
        "the stream ended before the update applied everywhere; nothing was tested"
    );
    assert!(
        !old_target.requests().is_empty() && !new_target.requests().is_empty(),
        "both targets carried part of the stream"
    );
    for request in new_target.requests() {
        assert_eq!(request.path, "/new");
    }

    // The new prefetch runs on both replicas: a burst is worked on more
    // than 5 + 50 at once, which one replica left at the old prefetch
    // would cap. Slow calls keep the window full.
    new_target.set_default(Reply::ok().after(Duration::from_millis(300)));
    let burst = binary_messages("burst", 300);
    publish_confirmed(amqp, &queue, &burst).await;
    let burst_ids = burst.iter().map(|m| m.id.clone()).collect();
    new_target
        .wait_for_delivered(&burst_ids, ALL_DELIVERED)
        .await;
    let most = new_target.max_in_flight();
    assert!(
        most > 55,
        "at most {most} calls at once with prefetch 50 on two replicas"
    );
}

/// POST /updateConsumer with `body`; asserts a 400 naming `field`.
async fn assert_refused(api: &Api, body: Value, field: &str) {
    assert_refused_naming(api.post("/updateConsumer", &body).await, field, &body).await;
}

#[tokio::test]
async fn bad_updates_are_refused_naming_the_field_and_change_nothing() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    let queue = app.unique_queue("update-bad");
    let consumer = api
        .queue_with_consumer(
            &queue,
            &target.url("/bad"),
            json!({ "prefetch": 5, "concurrency": 4, "rateLimitPerSec": 50 }),
        )
        .await;
    let before = definition_of(&api.consumer(&consumer).await);

    let cases = [
        // Above the new prefetch, given in the same request.
        (
            json!({ "consumerId": consumer, "prefetch": 10, "concurrency": 20 }),
            "concurrency",
        ),
        // The stored concurrency 4 is above a lowered prefetch.
        (
            json!({ "consumerId": consumer, "prefetch": 2 }),
            "concurrency",
        ),
        (
            json!({ "consumerId": consumer, "concurrency": 0 }),
            "concurrency",
        ),
        (json!({ "consumerId": consumer, "prefetch": 0 }), "prefetch"),
        (
            json!({ "consumerId": consumer, "rateLimitPerSec": 0 }),
            "rateLimitPerSec",
        ),
        (
            json!({ "consumerId": consumer, "circuitBreaker": { "threshold": 3 } }),
            "threshold",
        ),
        (
            json!({ "consumerId": consumer, "queueName": "other" }),
            "queueName",
        ),
        (
            json!({ "consumerId": consumer, "signingSecret": "not-a-secret" }),
            "signingSecret",
        ),
        (
            json!({ "consumerId": consumer, "target": { "type": "http", "url": "ftp://x" } }),
            "url",
        ),
        (json!({ "prefetch": 10 }), "consumerId"),
        (
            json!({ "consumerId": "nope", "prefetch": 10 }),
            "consumerId",
        ),
    ];
    for (body, field) in cases {
        assert_refused(&api, body, field).await;
        assert_eq!(
            definition_of(&api.consumer(&consumer).await),
            before,
            "nothing changes on a 400"
        );
    }

    assert_error(
        api.post(
            "/updateConsumer",
            &json!({ "consumerId": uuid::Uuid::new_v4().to_string(), "prefetch": 10 }),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(definition_of(&api.consumer(&consumer).await), before);
}

#[tokio::test]
async fn an_update_changes_only_the_fields_given_and_keeps_a_pause() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    let queue = app.unique_queue("update-partial");
    let consumer = api
        .queue_with_consumer(
            &queue,
            &target.url("/partial"),
            json!({ "prefetch": 8, "concurrency": 4, "rateLimitPerSec": 50,
                    "retry": { "maxAttempts": 7 } }),
        )
        .await;
    api.pause(&consumer).await;

    let answer = assert_json(
        api.post(
            "/updateConsumer",
            &json!({
                "consumerId": consumer,
                "consumerName": "renamed",
                "rateLimitPerSec": null,
                "retry": { "initialDelayMs": 2000 },
                "signingSecret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(answer["consumerName"], "renamed", "{answer}");
    assert_eq!(answer["prefetch"], 8, "{answer}");
    assert_eq!(answer["concurrency"], 4, "{answer}");
    assert_eq!(answer["rateLimitPerSec"], Value::Null, "{answer}");
    assert_eq!(answer["retry"]["maxAttempts"], 7, "{answer}");
    assert_eq!(answer["retry"]["initialDelayMs"], 2000, "{answer}");
    assert_eq!(answer["signed"], true, "{answer}");
    assert_eq!(answer["target"]["url"], target.url("/partial"), "{answer}");
    assert!(
        !answer.to_string().contains("whsec_"),
        "the secret is never shown: {answer}"
    );
    assert_eq!(
        answer["state"], "paused",
        "an update keeps a pause: {answer}"
    );

    // Still paused: a message published now waits in the queue.
    let messages: Vec<TestMessage> = binary_messages("partial", 3);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;
    let amqp = app.amqp_connection().await;
    wait_for_queue(
        amqp,
        &queue,
        CONVERGENCE,
        "holding the messages",
        |ready, n| ready == 3 && n == 0,
    )
    .await;
    assert_eq!(
        target.request_count(),
        0,
        "a paused consumer took a delivery"
    );
}

#[tokio::test]
async fn the_openapi_spec_lists_update_consumer_with_its_request_type() {
    let app = spawn_app().await;
    let spec = assert_json(
        app.request_anonymous(reqwest::Method::GET, "/openapi.json", None)
            .await,
        StatusCode::OK,
    )
    .await;
    let operation = &spec["paths"]["/updateConsumer"]["post"];
    assert!(
        operation["requestBody"]
            .to_string()
            .contains("UpdateConsumerRequest"),
        "{operation}"
    );
    for status in ["200", "400", "404"] {
        assert!(
            operation["responses"][status].is_object(),
            "{status}: {operation}"
        );
    }
    let request = &spec["components"]["schemas"]["UpdateConsumerRequest"];
    assert_eq!(request["required"], json!(["consumerId"]), "{request}");
    for property in [
        "consumerId",
        "consumerName",
        "target",
        "prefetch",
        "concurrency",
        "rateLimitPerSec",
        "retry",
        "circuitBreaker",
        "signingSecret",
    ] {
        assert!(
            request["properties"][property].is_object(),
            "{property}: {request}"
        );
    }
    assert!(request["properties"]["queueName"].is_null(), "{request}");
}

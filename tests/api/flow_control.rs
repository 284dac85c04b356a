//! Flow control: `/pauseConsumer` and `/resumeConsumer`. A paused consumer
//! cancels its AMQP consumer, settles what it holds, takes nothing more
//! (messages wait in the queue), and stays paused on every replica and
//! across a restart, because the flag lives in the store.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::gateway_process::Deployment;
use crate::support::ids_of;
use crate::support::target_server::{Reply, TargetServer};
use crate::support::{assert_error, assert_json, bearer, spawn_app};
use crate::support::{binary_messages, publish_confirmed, queue_counts, wait_for_queue, Api};

/// The contract: every replica follows a pause or resume within 5 s.
const CONVERGENCE: Duration = Duration::from_secs(5);
/// How long a paused consumer is watched for deliveries it must not take.
const QUIET: Duration = Duration::from_secs(3);
const ALL_DELIVERED: Duration = Duration::from_secs(30);

fn is_running(view: &Value) -> bool {
    view["state"] == "running"
}

fn is_paused(view: &Value) -> bool {
    view["state"] == "paused"
}

/// Watches the target for `QUIET`, counting the requests it gets; asserts
/// there were none.
async fn assert_no_requests_for_a_while(target: &TargetServer, why: &str) {
    let started = Instant::now();
    while started.elapsed() < QUIET {
        let seen = target.request_count();
        assert_eq!(
            seen,
            0,
            "{why}: the target got {seen} request(s) after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(target.request_count(), 0, "{why}");
}

/// How many requests carried each message id.
fn requests_per_id(target: &TargetServer) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for request in target.requests() {
        *counts.entry(request.webhook_id()).or_default() += 1;
    }
    counts
}

/// Every id in `ids` reached the target exactly once, and nothing else did.
fn assert_each_once(target: &TargetServer, ids: &BTreeSet<String>) {
    let counts = requests_per_id(target);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let seen: BTreeSet<String> = counts.into_keys().collect();
    assert_eq!(
        &seen, ids,
        "the target saw other ids than the ones published"
    );
}

#[tokio::test]
async fn messages_published_while_paused_wait_in_the_queue_and_arrive_once_after_resume() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    let queue = app.unique_queue("paused");
    let consumer = api
        .queue_with_consumer(&queue, &target.url("/paused"), json!({}))
        .await;
    api.wait_for_consumer(&consumer, CONVERGENCE, "running", is_running)
        .await;
    let amqp = app.amqp_connection().await;
    wait_for_queue(amqp, &queue, CONVERGENCE, "consumed", |_, consumers| {
        consumers == 1
    })
    .await;

    api.pause(&consumer).await;
    wait_for_queue(
        amqp,
        &queue,
        Duration::from_secs(1),
        "left by its paused consumer",
        |_, consumers| consumers == 0,
    )
    .await;
    assert!(is_paused(&api.consumer(&consumer).await));
    let listed = assert_json(api.get("/getConsumers").await, StatusCode::OK).await;
    let row = listed
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["consumerId"] == consumer.as_str()))
        .unwrap_or_else(|| panic!("the consumer is not listed: {listed}"));
    assert!(is_paused(row), "{row}");

    let messages = binary_messages("paused", 20);
    publish_confirmed(amqp, &queue, &messages).await;
    assert_no_requests_for_a_while(&target, "paused").await;
    assert_eq!(
        queue_counts(amqp, &queue).await,
        Some((20, 0)),
        "the queue holds the 20 messages and lists no consumer"
    );

    api.resume(&consumer).await;
    target
        .wait_for_delivered(&ids_of(&messages), ALL_DELIVERED)
        .await;
    wait_for_queue(
        amqp,
        &queue,
        CONVERGENCE,
        "drained by its one consumer",
        |ready, consumers| ready == 0 && consumers == 1,
    )
    .await;
    assert!(is_running(&api.consumer(&consumer).await));
    assert_each_once(&target, &ids_of(&messages));

    target.stop().await;
}

#[tokio::test]
async fn pausing_mid_delivery_lets_the_held_deliveries_finish_and_acks_them() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    target.set_default(Reply::ok().after(Duration::from_millis(1_500)));
    let queue = app.unique_queue("held");
    let consumer = api
        .queue_with_consumer(&queue, &target.url("/held"), json!({ "prefetch": 5 }))
        .await;
    api.wait_for_consumer(&consumer, CONVERGENCE, "running", is_running)
        .await;
    let amqp = app.amqp_connection().await;
    let held = binary_messages("held", 5);
    publish_confirmed(amqp, &queue, &held).await;
    target.wait_for_requests(5, CONVERGENCE).await;

    // Answered only once the five held target calls have finished.
    api.pause(&consumer).await;
    let requests = target.requests();
    assert_eq!(requests.len(), 5, "{requests:?}");
    assert!(requests.iter().all(|r| r.answered == 200));
    assert_eq!(
        target.in_flight(),
        0,
        "the pause did not wait for the target"
    );
    // Acked, not handed back: nothing is left in the queue.
    assert_eq!(queue_counts(amqp, &queue).await, Some((0, 0)));

    // Had any been handed back, it would come before this one.
    target.set_default(Reply::ok());
    let marker = binary_messages("marker", 1);
    publish_confirmed(amqp, &queue, &marker).await;
    api.resume(&consumer).await;
    target
        .wait_for_delivered(&ids_of(&marker), ALL_DELIVERED)
        .await;
    let mut all = ids_of(&held);
    all.extend(ids_of(&marker));
    assert_each_once(&target, &all);

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_while_a_consumer_is_paused_keeps_it_paused() {
    let deployment = Deployment::new();
    let instance = deployment.instance_id("restart");
    let mut gateway = deployment.start_gateway(&instance).await;
    let target = TargetServer::start().await;
    let queue = deployment.queue("restart");
    gateway.api.create_queue(&queue).await;
    let consumer = gateway
        .api
        .create_http_consumer(&queue, &target.url("/restart"), json!({}))
        .await;
    gateway
        .api
        .wait_for_consumer(&consumer, CONVERGENCE, "running", is_running)
        .await;
    gateway.api.pause(&consumer).await;
    gateway.kill();

    // Waiting before the gateway is back: consuming them at start, even
    // briefly, would show.
    let amqp = deployment.amqp().await;
    let messages = binary_messages("restart", 20);
    publish_confirmed(amqp, &queue, &messages).await;
    let restarted = deployment.start_gateway(&instance).await;
    let view = restarted.api.consumer(&consumer).await;
    assert!(is_paused(&view), "{view}");
    assert_no_requests_for_a_while(&target, "paused across the restart").await;
    assert_eq!(queue_counts(amqp, &queue).await, Some((20, 0)));
    assert!(is_paused(&restarted.api.consumer(&consumer).await));

    restarted.api.resume(&consumer).await;
    target
        .wait_for_delivered(&ids_of(&messages), ALL_DELIVERED)
        .await;
    assert_each_once(&target, &ids_of(&messages));

    drop(restarted);
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_on_one_replica_stops_delivery_on_the_other_within_5_s() {
    let deployment = Deployment::new();
    let a = deployment.start_gateway(&deployment.instance_id("a")).await;
    let b = deployment.start_gateway(&deployment.instance_id("b")).await;
    let target = TargetServer::start().await;
    let queue = deployment.queue("replicas");
    let consumer = deployment
        .consumer_on_both(&a, &b, &queue, &target.url("/replicas"), json!({}))
        .await;
    let amqp = deployment.amqp().await;

    a.api.pause(&consumer).await;
    let paused_at = Instant::now();
    wait_for_queue(
        amqp,
        &queue,
        CONVERGENCE,
        "left by both replicas",
        |_, consumers| consumers == 0,
    )
    .await;
    b.api
        .wait_for_consumer(
            &consumer,
            CONVERGENCE.saturating_sub(paused_at.elapsed()),
            "paused on B",
            is_paused,
        )
        .await;
    let messages = binary_messages("replicas", 20);
    publish_confirmed(amqp, &queue, &messages).await;
    assert_no_requests_for_a_while(&target, "paused on both replicas").await;
    assert_eq!(queue_counts(amqp, &queue).await, Some((20, 0)));

    // And back, from the other side.
    b.api.resume(&consumer).await;
    wait_for_queue(
        amqp,
        &queue,
        CONVERGENCE,
        "consumed by both replicas again",
        |_, consumers| consumers == 2,
    )
    .await;
    a.api
        .wait_for_consumer(&consumer, CONVERGENCE, "running on A", is_running)
        .await;
    target
        .wait_for_delivered(&ids_of(&messages), ALL_DELIVERED)
        .await;
    assert_each_once(&target, &ids_of(&messages));

    drop((a, b));
    target.stop().await;
}

#[tokio::test]
async fn pause_and_resume_refuse_bad_input_change_nothing_and_are_idempotent() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    let queue = app.unique_queue("input");
    let consumer = api
        .queue_with_consumer(&queue, &target.url("/input"), json!({}))
        .await;
    api.wait_for_consumer(&consumer, CONVERGENCE, "running", is_running)
        .await;
    let amqp = app.amqp_connection().await;
    let one_consumer = |_: u32, consumers: u32| consumers == 1;
    wait_for_queue(amqp, &queue, CONVERGENCE, "consumed", one_consumer).await;

    for path in ["/pauseConsumer", "/resumeConsumer"] {
        for body in [
            json!({}),
            json!({ "consumerId": null }),
            json!({ "consumerId": 42 }),
            json!({ "consumerId": "" }),
            json!({ "consumerId": "not-a-consumer-id" }),
        ] {
            let refused = assert_error(
                api.post(path, &body).await,
                StatusCode::BAD_REQUEST,
                "bad_request",
            )
            .await;
            assert!(
                refused["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("consumerId")),
                "{path} {body}: {refused}"
            );
        }
        let unknown = uuid::Uuid::new_v4().to_string();
        assert_error(
            api.post(path, &json!({ "consumerId": unknown })).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        assert_error(
            app.request_anonymous(
                reqwest::Method::POST,
                path,
                Some(&json!({ "consumerId": consumer })),
            )
            .await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
        let viewer = app.create_api_key("viewer").await;
        assert_error(
            app.post_json_with_auth(path, &json!({ "consumerId": consumer }), &bearer(&viewer))
                .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }
    assert!(is_running(&api.consumer(&consumer).await));
    assert_eq!(queue_counts(amqp, &queue).await, Some((0, 1)));

    api.pause(&consumer).await;
    api.pause(&consumer).await;
    assert!(is_paused(&api.consumer(&consumer).await));
    assert_eq!(queue_counts(amqp, &queue).await, Some((0, 0)));

    // A second resume must not start a second AMQP consumer.
    api.resume(&consumer).await;
    api.resume(&consumer).await;
    wait_for_queue(amqp, &queue, CONVERGENCE, "consumed once", one_consumer).await;
    api.wait_for_consumer(&consumer, CONVERGENCE, "running", is_running)
        .await;
    let messages = binary_messages("input", 5);
    publish_confirmed(amqp, &queue, &messages).await;
    target
        .wait_for_delivered(&ids_of(&messages), ALL_DELIVERED)
        .await;
    assert_eq!(queue_counts(amqp, &queue).await, Some((0, 1)));
    assert_each_once(&target, &ids_of(&messages));

    let spec = assert_json(
        app.request_anonymous(reqwest::Method::GET, "/openapi.json", None)
            .await,
        StatusCode::OK,
    )
    .await;
    for path in ["/pauseConsumer", "/resumeConsumer"] {
        let operation = &spec["paths"][path]["post"];
        assert!(operation["requestBody"].is_object(), "{path}: {operation}");
        assert!(
            operation["responses"]["200"].is_object(),
            "{path}: {operation}"
        );
        assert!(
            operation["responses"]["404"].is_object(),
            "{path}: {operation}"
        );
    }
    let schemas = &spec["components"]["schemas"];
    assert_eq!(
        schemas["ConsumerFlowRequest"]["required"],
        json!(["consumerId"]),
        "{schemas}"
    );
    assert!(
        schemas["ConsumerFlowChanged"]["properties"]["consumerId"].is_object(),
        "{schemas}"
    );

    // A paused consumer is deleted like any other.
    api.pause(&consumer).await;
    api.delete_consumer(&consumer).await;
    assert_error(
        api.get(&format!("/getConsumer/{consumer}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    target.stop().await;
}

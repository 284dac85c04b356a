//! Concurrency and rate limits: `concurrency` caps the target calls a
//! replica makes at once; `rateLimitPerSec` caps the deliveries the
//! consumer starts per second on all replicas together, each live replica
//! taking its share. Bad limits are refused, naming the field.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::gateway_process::Deployment;
use crate::support::ids_of;
use crate::support::target_server::{Reply, TargetServer};
use crate::support::{assert_json, assert_refused_naming, spawn_app};
use crate::support::{binary_messages, publish_confirmed, wait_for_queue, Api};

const CONVERGENCE: Duration = Duration::from_secs(5);
const ALL_DELIVERED: Duration = Duration::from_secs(60);

fn is_running(view: &Value) -> bool {
    view["state"] == "running"
}

/// When each message first reached the target, in order.
fn first_arrivals(target: &TargetServer) -> Vec<Instant> {
    let mut seen = BTreeSet::new();
    target
        .requests()
        .into_iter()
        .filter(|r| seen.insert(r.webhook_id()))
        .map(|r| r.received_at)
        .collect()
}

/// The most requests that arrived within any `window`.
fn most_within(arrivals: &[Instant], window: Duration) -> usize {
    let mut most = 0;
    let mut start = 0;
    for (end, at) in arrivals.iter().enumerate() {
        while at.duration_since(arrivals[start]) >= window {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

#[tokio::test]
async fn concurrency_caps_the_target_calls_in_flight() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    target.set_default(Reply::ok().after(Duration::from_millis(300)));
    let queue = app.unique_queue("concurrency");
    let consumer = api
        .queue_with_consumer(
            &queue,
            &target.url("/slow"),
            json!({ "prefetch": 10, "concurrency": 2 }),
        )
        .await;
    let view = api
        .wait_for_consumer(&consumer, CONVERGENCE, "running", is_running)
        .await;
    assert_eq!(view["concurrency"], 2, "{view}");
    assert_eq!(view["prefetch"], 10, "{view}");
    let amqp = app.amqp_connection().await;
    wait_for_queue(amqp, &queue, CONVERGENCE, "consumed", |_, c| c == 1).await;

    let messages = binary_messages("concurrency", 20);
    let started = Instant::now();
    publish_confirmed(amqp, &queue, &messages).await;
    target
        .wait_for_delivered(&ids_of(&messages), ALL_DELIVERED)
        .await;
    let took = started.elapsed();

    assert!(
        target.max_in_flight() <= 2,
        "the target saw {} calls at once",
        target.max_in_flight()
    );
    assert_eq!(target.max_in_flight(), 2, "two calls at once, not one");
    assert!(
        took >= Duration::from_millis(2_700),
        "20 calls of 300 ms two at a time took only {took:?}"
    );
    // The broker still hands the consumer its whole prefetch: the limit is
    // on the calls, not the window.
    let listed = assert_json(api.get("/getConsumers").await, StatusCode::OK).await;
    let listed = listed
        .as_array()
        .and_then(|all| all.iter().find(|c| c["consumerId"] == consumer.as_str()))
        .unwrap_or_else(|| panic!("{consumer} is not listed: {listed}"))
        .clone();
    assert_eq!(listed["concurrency"], 2, "{listed}");

    target.stop().await;
}

#[tokio::test]
async fn the_rate_limit_spaces_deliveries_out() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    let queue = app.unique_queue("rate");
    let consumer = api
        .queue_with_consumer(
            &queue,
            &target.url("/rate"),
            json!({ "prefetch": 50, "rateLimitPerSec": 20 }),
        )
        .await;
    let view = api
        .wait_for_consumer(&consumer, CONVERGENCE, "running", is_running)
        .await;
    assert_eq!(view["rateLimitPerSec"], 20.0, "{view}");
    assert_eq!(
        view["concurrency"], 50,
        "the default is the prefetch: {view}"
    );
    let amqp = app.amqp_connection().await;
    wait_for_queue(amqp, &queue, CONVERGENCE, "consumed", |_, c| c == 1).await;

    let messages = binary_messages("rate", 100);
    publish_confirmed(amqp, &queue, &messages).await;
    target
        .wait_for_delivered(&ids_of(&messages), ALL_DELIVERED)
        .await;
    let arrivals = first_arrivals(&target);
    assert_eq!(arrivals.len(), 100);
    let spread = arrivals[99].duration_since(arrivals[0]);
    assert!(
        spread >= Duration::from_secs(4),
        "100 deliveries at 20/s arrived within {spread:?}"
    );
    let busiest = most_within(&arrivals, Duration::from_secs(1));
    assert!(
        busiest <= 25,
        "{busiest} deliveries arrived within one second at 20/s"
    );

    target.stop().await;
}

/// `workerrmq_live_replicas` on this gateway's /metrics.
async fn live_replicas(api: &Api) -> Option<u64> {
    let text = api.get("/metrics").await.text().await.ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("workerrmq_live_replicas "))
        .and_then(|n| n.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_rate_of_one_consumer() {
    let deployment = Deployment::new();
    let a = deployment.start_gateway(&deployment.instance_id("a")).await;
    let b = deployment.start_gateway(&deployment.instance_id("b")).await;
    for gateway in [&a, &b] {
        let started = Instant::now();
        while live_replicas(&gateway.api).await != Some(2) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "a replica does not count 2 live replicas: {:?}",
                live_replicas(&gateway.api).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let target = TargetServer::start().await;
    let queue = deployment.queue("shared-rate");
    deployment
        .consumer_on_both(
            &a,
            &b,
            &queue,
            &target.url("/shared"),
            json!({ "prefetch": 50, "rateLimitPerSec": 20 }),
        )
        .await;
    let amqp = deployment.amqp().await;

    let messages = binary_messages("shared", 200);
    publish_confirmed(amqp, &queue, &messages).await;
    target
        .wait_for_delivered(&ids_of(&messages), ALL_DELIVERED)
        .await;
    let arrivals = first_arrivals(&target);
    assert_eq!(arrivals.len(), 200);
    let busiest = most_within(&arrivals, Duration::from_secs(5));
    assert!(
        (busiest as f64) < 20.0 * 1.25 * 5.0,
        "{busiest} deliveries within 5 s at 20/s shared by two replicas"
    );
    // Each replica alone would take 20/s: both must have worked for the
    // sharing to show.
    let whole = arrivals[199].duration_since(arrivals[0]);
    assert!(
        whole >= Duration::from_secs(8),
        "200 deliveries at 20/s took only {whole:?}"
    );

    drop((a, b));
    target.stop().await;
}

#[tokio::test]
async fn bad_limits_are_refused_naming_the_field_and_nothing_is_created() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let queue = app.unique_queue("bad-limits");
    api.create_queue(&queue).await;
    let cases = [
        (json!({ "concurrency": 0 }), "concurrency"),
        (json!({ "prefetch": 5, "concurrency": 6 }), "concurrency"),
        (json!({ "concurrency": 11 }), "concurrency"),
        (json!({ "concurrency": -1 }), "concurrency"),
        (json!({ "rateLimitPerSec": 0 }), "rateLimitPerSec"),
        (json!({ "rateLimitPerSec": -5 }), "rateLimitPerSec"),
        (json!({ "rateLimitPerSec": 0.01 }), "rateLimitPerSec"),
        (json!({ "rateLimitPerSec": 100001 }), "rateLimitPerSec"),
        (json!({ "rateLimitPerSec": "fast" }), "rateLimitPerSec"),
    ];
    for (extra, field) in cases {
        let mut body = json!({
            "queueName": queue,
            "target": { "type": "http", "url": "http://127.0.0.1:9/never" },
        });
        for (key, value) in extra.as_object().into_iter().flatten() {
            body[key] = value.clone();
        }
        assert_refused_naming(api.post("/createConsumer", &body).await, field, &body).await;
    }
    let listed = assert_json(api.get("/getConsumers").await, StatusCode::OK).await;
    let on_queue: Vec<&Value> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["queueName"] == queue.as_str())
        .collect();
    assert!(on_queue.is_empty(), "created anyway: {on_queue:?}");

    // The bounds themselves are fine.
    let consumer = api
        .create_http_consumer(
            &queue,
            "http://127.0.0.1:9/never",
            json!({ "prefetch": 5, "concurrency": 5, "rateLimitPerSec": 0.1 }),
        )
        .await;
    let view = api.consumer(&consumer).await;
    assert_eq!(view["concurrency"], 5, "{view}");
    assert_eq!(view["rateLimitPerSec"], 0.1, "{view}");

    // The OpenAPI spec states the bounds, from the request type itself.
    let spec = assert_json(
        app.request_anonymous(reqwest::Method::GET, "/openapi.json", None)
            .await,
        StatusCode::OK,
    )
    .await;
    let fields = &spec["components"]["schemas"]["CreateConsumerRequest"]["properties"];
    let bounds = |field: &str| {
        (
            fields[field]["minimum"].as_f64(),
            fields[field]["maximum"].as_f64(),
        )
    };
    assert_eq!(bounds("concurrency"), (Some(1.0), Some(1000.0)), "{fields}");
    assert_eq!(
        bounds("rateLimitPerSec"),
        (Some(0.1), Some(100_000.0)),
        "{fields}"
    );
}

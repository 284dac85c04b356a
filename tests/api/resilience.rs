//! Nothing is lost when things break mid-stream: the gateway process killed
//! (-9) or stopped (SIGTERM), its AMQP connection force-closed, a consumer
//! deleted, a replica gone. Every test streams messages through a slow-ish
//! target, breaks something once some have arrived, and then waits for every
//! message id to reach the target (at least once).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::gateway_process::{Deployment, GatewayProcess};
use crate::support::ids_of;
use crate::support::target_server::{Reply, TargetServer};
use crate::support::{assert_error, spawn_app};
use crate::support::{
    binary_messages, connection_named, force_close_connection, management_client,
    publish_confirmed, queue_counts, wait_for_queue, Api,
};

/// Each request is held this long, so a stream of messages takes a while.
const HOLD: Duration = Duration::from_millis(20);
const ALL_DELIVERED: Duration = Duration::from_secs(60);
/// The contract: consumers converge across replicas and restarts within 5 s.
const CONVERGENCE: Duration = Duration::from_secs(5);

fn is_running(view: &Value) -> bool {
    view["state"] == "running"
}

/// A slow-ish target, a queue and a consumer created through `gateway`,
/// running there.
async fn stream_setup(
    deployment: &Deployment,
    gateway: &GatewayProcess,
    label: &str,
) -> (TargetServer, String, String) {
    let target = TargetServer::start().await;
    target.set_default(Reply::ok().after(HOLD));
    let queue = deployment.queue(label);
    gateway.api.create_queue(&queue).await;
    let consumer = gateway
        .api
        .create_http_consumer(&queue, &target.url("/stream"), json!({ "prefetch": 10 }))
        .await;
    gateway
        .api
        .wait_for_consumer(&consumer, CONVERGENCE, "running", is_running)
        .await;
    (target, queue, consumer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_with_sigkill_resumes_its_consumers_on_restart_and_loses_nothing() {
    let deployment = Deployment::new();
    let instance = deployment.instance_id("kill9");
    let mut gateway = deployment.start_gateway(&instance).await;
    let (target, queue, consumer) = stream_setup(&deployment, &gateway, "kill9").await;
    let messages = binary_messages("kill9", 1_000);
    publish_confirmed(deployment.amqp().await, &queue, &messages).await;

    target.wait_for_requests(150, ALL_DELIVERED).await;
    gateway.kill();
    let before = target.ids_delivered().len();
    assert!(before < 1_000, "the kill came too late to be mid-stream");
    let seen_before_restart = target.request_count();

    // Same store, same instance id; no API call but /ready after the start.
    let restarted = deployment.start_gateway(&instance).await;
    let ready_at = Instant::now();
    target
        .wait_for_requests(
            seen_before_restart + 1,
            CONVERGENCE + Duration::from_secs(1),
        )
        .await;
    assert!(
        ready_at.elapsed() <= CONVERGENCE + Duration::from_secs(1),
        "the consumer took {:?} to resume",
        ready_at.elapsed()
    );
    target
        .wait_for_delivered(&ids_of(&messages), ALL_DELIVERED)
        .await;
    assert!(target.ids_seen().is_superset(&ids_of(&messages)));
    wait_for_queue(
        deployment.amqp().await,
        &queue,
        Duration::from_secs(10),
        "drained with its one consumer back",
        |ready, consumers| ready == 0 && consumers == 1,
    )
    .await;
    let view = restarted.api.consumer(&consumer).await;
    assert!(is_running(&view), "{view}");

    drop(restarted);
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_exits_cleanly_within_10_s_and_loses_nothing() {
    let deployment = Deployment::new();
    let instance = deployment.instance_id("term");
    let mut gateway = deployment.start_gateway(&instance).await;
    let (target, queue, _consumer) = stream_setup(&deployment, &gateway, "term").await;
    let messages = binary_messages("term", 1_000);
    publish_confirmed(deployment.amqp().await, &queue, &messages).await;

    target.wait_for_requests(150, ALL_DELIVERED).await;
    let asked = Instant::now();
    gateway.terminate();
    let status = gateway
        .wait_for_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM"));
    assert!(
        status.success(),
        "SIGTERM should end with status 0: {status}"
    );
    let took = asked.elapsed();
    let delivered = target.ids_delivered().len();
    assert!(
        delivered < 1_000,
        "the SIGTERM came too late to be mid-stream"
    );

    // Whatever was not delivered went back to the queue.
    let amqp = deployment.amqp().await;
    let (ready, consumers) = queue_counts(amqp, &queue).await.expect("the queue");
    assert_eq!(consumers, 0);
    assert!(
        ready as usize + delivered >= 1_000,
        "{ready} ready + {delivered} delivered < 1000: messages went missing"
    );

    let restarted = deployment.start_gateway(&instance).await;
    target
        .wait_for_delivered(&ids_of(&messages), ALL_DELIVERED)
        .await;
    wait_for_queue(amqp, &queue, Duration::from_secs(10), "drained", |r, _| {
        r == 0
    })
    .await;
    eprintln!("SIGTERM → exit took {took:?}");

    drop(restarted);
    target.stop().await;
}

/// SIGTERM lets the deliveries in hand finish (within the drain bound)
/// rather than cutting them off: the target answers them, they are acked,
/// and the restarted gateway does not hand them to the target again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_deliveries_finish_before_exiting() {
    let deployment = Deployment::new();
    let instance = deployment.instance_id("drain");
    let mut gateway = deployment.start_gateway(&instance).await;
    let target = TargetServer::start().await;
    target.set_default(Reply::ok().after(Duration::from_millis(1_500)));
    let queue = deployment.queue("drain");
    gateway.api.create_queue(&queue).await;
    let consumer = gateway
        .api
        .create_http_consumer(&queue, &target.url("/drain"), json!({ "prefetch": 5 }))
        .await;
    gateway
        .api
        .wait_for_consumer(&consumer, CONVERGENCE, "running", is_running)
        .await;
    let messages = binary_messages("drain", 20);
    publish_confirmed(deployment.amqp().await, &queue, &messages).await;
    let started = Instant::now();
    while target.in_flight() < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the target never held 5 requests at once"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    gateway.terminate();
    let status = gateway
        .wait_for_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM"));
    assert!(
        status.success(),
        "SIGTERM should end with status 0: {status}"
    );
    let amqp = deployment.amqp().await;
    let (ready, _) = queue_counts(amqp, &queue).await.expect("the queue");
    assert_eq!(target.request_count(), 5, "no delivery taken after SIGTERM");
    assert_eq!(
        ready, 15,
        "the 5 deliveries in flight at SIGTERM should have been finished and acked, \
         not handed back to the queue"
    );

    let _restarted = deployment.start_gateway(&instance).await;
    target
        .wait_for_delivered(&ids_of(&messages), ALL_DELIVERED)
        .await;
    wait_for_queue(amqp, &queue, Duration::from_secs(10), "drained", |r, _| {
        r == 0
    })
    .await;
    assert_eq!(
        target.request_count(),
        20,
        "each message once: nothing finished before the stop came again"
    );

    drop(_restarted);
    target.stop().await;
}

/// SIGTERM while the target hangs: the drain is bounded, the deliveries in
/// hand go back to the queue, and the process still exits cleanly in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_hung_target_hands_the_in_flight_deliveries_back() {
    let deployment = Deployment::new();
    let mut gateway = deployment
        .start_gateway(&deployment.instance_id("hung"))
        .await;
    let target = TargetServer::start().await;
    target.set_default(Reply::ok().after(Duration::from_secs(60)));
    let queue = deployment.queue("hung");
    gateway.api.create_queue(&queue).await;
    let consumer = gateway
        .api
        .create_http_consumer(
            &queue,
            &target.url("/hung"),
            json!({ "prefetch": 10, "target": { "timeoutMs": 120000 } }),
        )
        .await;
    gateway
        .api
        .wait_for_consumer(&consumer, CONVERGENCE, "running", is_running)
        .await;
    let messages = binary_messages("hung", 50);
    publish_confirmed(deployment.amqp().await, &queue, &messages).await;
    target.wait_for_requests(10, Duration::from_secs(10)).await;

    let asked = Instant::now();
    gateway.terminate();
    let status = gateway
        .wait_for_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM"));
    assert!(
        status.success(),
        "SIGTERM should end with status 0: {status}"
    );
    eprintln!(
        "SIGTERM with a hung target → exit took {:?}",
        asked.elapsed()
    );
    assert_eq!(target.request_count(), 10, "prefetch 10, nothing more");
    wait_for_queue(
        deployment.amqp().await,
        &queue,
        Duration::from_secs(5),
        "holding all 50 again",
        |ready, consumers| ready == 50 && consumers == 0,
    )
    .await;

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_created_on_one_replica_runs_on_the_other_and_a_delete_stops_it_everywhere() {
    let deployment = Deployment::new();
    let a = deployment.start_gateway(&deployment.instance_id("a")).await;
    let b = deployment.start_gateway(&deployment.instance_id("b")).await;
    let target = TargetServer::start().await;
    let queue = deployment.queue("replicas");
    a.api.create_queue(&queue).await;
    let consumer = a
        .api
        .create_http_consumer(&queue, &target.url("/replicas"), json!({}))
        .await;
    let created = Instant::now();

    b.api
        .wait_for_consumer(&consumer, CONVERGENCE, "running on B", is_running)
        .await;
    let amqp = deployment.amqp().await;
    wait_for_queue(
        amqp,
        &queue,
        CONVERGENCE.saturating_sub(created.elapsed()) + Duration::from_millis(500),
        "consumed by both replicas",
        |_, consumers| consumers == 2,
    )
    .await;

    // Both deliver: messages published now reach the target.
    let messages = binary_messages("replicas", 50);
    publish_confirmed(amqp, &queue, &messages).await;
    target
        .wait_for_delivered(&ids_of(&messages), ALL_DELIVERED)
        .await;

    b.api.delete_consumer(&consumer).await;
    wait_for_queue(
        amqp,
        &queue,
        CONVERGENCE,
        "without consumers on either replica",
        |_, consumers| consumers == 0,
    )
    .await;
    assert_error(
        a.api.get(&format!("/getConsumer/{consumer}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    drop((a, b));
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_one_replica_is_killed_mid_stream_the_other_delivers_the_rest() {
    let deployment = Deployment::new();
    let mut a = deployment.start_gateway(&deployment.instance_id("a")).await;
    let b = deployment.start_gateway(&deployment.instance_id("b")).await;
    let (target, queue, consumer) = stream_setup(&deployment, &a, "failover").await;
    b.api
        .wait_for_consumer(&consumer, CONVERGENCE, "running on B", is_running)
        .await;
    let amqp = deployment.amqp().await;
    wait_for_queue(amqp, &queue, CONVERGENCE, "consumed twice", |_, c| c == 2).await;

    let messages = binary_messages("failover", 1_000);
    publish_confirmed(amqp, &queue, &messages).await;
    target.wait_for_requests(200, ALL_DELIVERED).await;
    a.kill();
    assert!(
        target.ids_delivered().len() < 1_000,
        "the kill came too late to be mid-stream"
    );

    target
        .wait_for_delivered(&ids_of(&messages), ALL_DELIVERED)
        .await;
    wait_for_queue(
        amqp,
        &queue,
        Duration::from_secs(10),
        "drained by B alone",
        |r, c| r == 0 && c == 1,
    )
    .await;

    drop(b);
    target.stop().await;
}

const READY_POLLERS: usize = 4;
const MAX_CLOSES: usize = 5;

/// The broker's name of the gateway's open AMQP connection, once there is
/// one other than `not`.
async fn current_connection(
    management: &reqwest::Client,
    client_name: &str,
    not: Option<&str>,
) -> String {
    crate::support::eventually(Duration::from_secs(15), || async {
        match connection_named(management, client_name).await {
            Some(name) if Some(name.as_str()) != not => Ok(name),
            other => Err(format!("no new connection named {client_name}: {other:?}")),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_closed_broker_connection_is_resumed_without_losing_messages() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    // The first 300 answers are 503, so retry copies are being published
    // to the delay queues, and coming back from them, across the close.
    target.script(
        "/forced",
        vec![Reply::status(503).after(HOLD); 300],
        Reply::ok().after(HOLD),
    );
    let queue = app.unique_queue("forced");
    let consumer = api
        .queue_with_consumer(
            &queue,
            &target.url("/forced"),
            json!({
                "prefetch": 10,
                "retry": { "maxAttempts": 10, "initialDelayMs": 200, "multiplier": 2, "maxDelayMs": 1000 },
                // 300 failures in a row are the point here, not a sick target.
                "circuitBreaker": null,
            }),
        )
        .await;
    api.wait_for_consumer(&consumer, CONVERGENCE, "running", is_running)
        .await;
    let management = management_client();
    // The consumers' connection; publishing has its own.
    let client_name = app.consume_connection_name();
    let mut connection = current_connection(&management, &client_name, None).await;

    let messages = binary_messages("forced", 1_000);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;
    target.wait_for_requests(100, ALL_DELIVERED).await;

    // Poll /ready as fast as possible from just before the close.
    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let pollers: Vec<_> = (0..READY_POLLERS)
        .map(|_| {
            let (api, stop, statuses) = (api.clone(), stop.clone(), statuses.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let status = api.ready_status().await;
                    statuses.lock().unwrap().push(status);
                }
            })
        })
        .collect();
    // The gateway reconnects within milliseconds, so a poll may miss the
    // gap: close again (each time mid-stream) until one saw it.
    force_close_connection(&management, &connection).await;
    assert!(
        target.ids_delivered().len() < messages.len(),
        "the close came too late to be mid-stream"
    );
    let mut closes = 1;
    loop {
        // A new connection under the same client name: it reconnected.
        connection = current_connection(&management, &client_name, Some(&connection)).await;
        if closes == MAX_CLOSES || statuses.lock().unwrap().contains(&Some(503)) {
            break;
        }
        force_close_connection(&management, &connection).await;
        closes += 1;
    }

    target
        .wait_for_delivered(&ids_of(&messages), ALL_DELIVERED)
        .await;
    let view = api
        .wait_for_consumer(&consumer, CONVERGENCE, "running again", is_running)
        .await;
    assert_eq!(api.ready_status().await, Some(200));
    stop.store(true, Ordering::SeqCst);
    for poller in pollers {
        poller.await.expect("the poller ends");
    }
    let statuses = statuses.lock().unwrap().clone();
    let unavailable = statuses.iter().filter(|s| **s == Some(503)).count();
    eprintln!(
        "/ready polls: {}, of which 503: {unavailable}; connection closed {closes} time(s)",
        statuses.len()
    );
    assert!(
        statuses.contains(&Some(503)),
        "/ready never said 503 while the connection was down ({} polls: {:?}…)",
        statuses.len(),
        &statuses[..statuses.len().min(20)]
    );
    assert!(
        view["stats"]["lastError"].is_string(),
        "the consumer noticed the break: {view}"
    );
    assert!(
        view["stats"]["retried"].as_u64().is_some_and(|n| n >= 100),
        "retries were under way: {view}"
    );
    assert_eq!(view["stats"]["deadLettered"], 0, "{view}");
    wait_for_queue(
        app.amqp_connection().await,
        &queue,
        Duration::from_secs(10),
        "drained",
        |r, c| r == 0 && c == 1,
    )
    .await;

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_consumer_mid_stream_settles_or_hands_back_every_message() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    target.set_default(Reply::ok().after(HOLD));
    let queue = app.unique_queue("deleted");
    let consumer = api
        .queue_with_consumer(&queue, &target.url("/deleted"), json!({ "prefetch": 10 }))
        .await;
    api.wait_for_consumer(&consumer, CONVERGENCE, "running", is_running)
        .await;
    let messages = binary_messages("deleted", 500);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;
    target.wait_for_requests(100, ALL_DELIVERED).await;

    api.delete_consumer(&consumer).await;
    assert_eq!(
        target.in_flight(),
        0,
        "the delete answered while requests were still being held"
    );
    let delivered = target.ids_delivered().len();
    assert!(delivered < 500, "the delete came too late to be mid-stream");
    let amqp = app.amqp_connection().await;
    let (ready, _) = wait_for_queue(
        amqp,
        &queue,
        Duration::from_secs(5),
        "holding every undelivered message, unconsumed",
        |ready, consumers| consumers == 0 && ready as usize + delivered >= 500,
    )
    .await;
    assert!(ready > 0);
    assert_error(
        api.get(&format!("/getConsumer/{consumer}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // A new consumer on the queue gets the rest.
    let replacement = api
        .create_http_consumer(&queue, &target.url("/deleted"), json!({ "prefetch": 10 }))
        .await;
    target
        .wait_for_delivered(&ids_of(&messages), ALL_DELIVERED)
        .await;
    api.wait_for_consumer(&replacement, Duration::from_secs(10), "idle", |v| {
        v["stats"]["inFlight"] == 0
    })
    .await;
    wait_for_queue(amqp, &queue, Duration::from_secs(10), "drained", |r, _| {
        r == 0
    })
    .await;

    target.stop().await;
}

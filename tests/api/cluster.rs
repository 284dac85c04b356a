//! Scale-out on a real three-node RabbitMQ cluster (`support::cluster`,
//! started by `scripts/rabbitmq-cluster.sh`): a node dying under a stream
//! with two replicas, a retry waiting in a quorum delay queue whose leader's
//! node dies, and `DEFAULT_QUEUE_TYPE=quorum`.
//!
//! These tests stop nodes, so nextest runs them one at a time (the
//! `rabbitmq-cluster` test group in `.config/nextest.toml`); a stopped node
//! is restored by the deployment's cleanup plan, panic or not.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::cluster::{
    gateway_vars, leader_of, management_get_any, queue_info, require_cluster, restore_node,
    stop_node, wait_for_queue_info, wait_until_rejoined, Node, NODES,
};
use crate::support::gateway_process::{Deployment, GatewayProcess};
use crate::support::target_server::{Reply, TargetServer};
use crate::support::Api;
use crate::support::{assert_json, eventually, spawn_app_with};

/// What the issue allows a replica to take to resume after a node's death.
const RESUME: Duration = Duration::from_secs(5);
/// How long one message's publish is retried (503s while failing over).
const PUBLISH_DEADLINE: Duration = Duration::from_secs(30);

/// Starts a gateway of `deployment` that may use `nodes`.
async fn gateway_on(deployment: &Deployment, label: &str, nodes: &[Node]) -> GatewayProcess {
    let vars = gateway_vars(nodes);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    deployment
        .start_gateway_with(&deployment.instance_id(label), &vars, None)
        .await
}

/// The node a gateway's connections are on, from its `/ready`; all of them
/// must be on one node.
async fn node_of(api: &Api) -> Node {
    let ready = assert_json(api.get("/ready").await, StatusCode::OK).await;
    let nodes: BTreeSet<&str> = ready["connections"]
        .as_array()
        .unwrap_or_else(|| panic!("no connections in /ready: {ready}"))
        .iter()
        .map(|c| c["node"].as_str().unwrap_or("(down)"))
        .collect();
    assert_eq!(
        nodes.len(),
        1,
        "one replica's connections on one node: {ready}"
    );
    let address = nodes.into_iter().next().unwrap_or_default();
    Node::at(address).unwrap_or_else(|| panic!("`{address}` is not a cluster node: {ready}"))
}

async fn create_quorum_queue(api: &Api, queue: &str) {
    assert_json(
        api.post(
            "/createQueue",
            &json!({ "queueName": queue, "queueType": "quorum" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
}

/// One publish's answers: when it was sent and what came back, in order.
#[derive(Default)]
struct PublishLog {
    /// (replica index, sent at, answered at, status; 0 when no answer)
    answers: Mutex<Vec<(usize, Instant, Instant, u16)>>,
}

/// Publishes `id` through `api` until it answers 202 (or the deadline).
async fn publish_until_accepted(
    api: &Api,
    replica: usize,
    queue: &str,
    id: &str,
    log: &PublishLog,
) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let sent = Instant::now();
        let status = api
            .try_post(
                "/messagePublish",
                &json!({ "queueName": queue, "messageId": id, "message": { "id": id } }),
            )
            .await
            .map_or(0, |r| r.status().as_u16());
        log.answers
            .lock()
            .unwrap()
            .push((replica, sent, Instant::now(), status));
        if status == 202 {
            return Ok(());
        }
        if started.elapsed() > PUBLISH_DEADLINE {
            return Err(format!(
                "publishing {id} through replica {replica} never answered 202 within {PUBLISH_DEADLINE:?} (last: {status})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many deliveries each message id got a 2xx for.
fn deliveries_per_id(target: &TargetServer) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for request in target.requests() {
        if (200..300).contains(&request.answered) {
            *counts.entry(request.webhook_id()).or_insert(0) += 1;
        }
    }
    counts
}

/// The longest time from a refused publish through `replica` to the next
/// 202 it answered.
fn longest_refusal(answers: &[(usize, Instant, Instant, u16)], replica: usize) -> Duration {
    let mut mine: Vec<&(usize, Instant, Instant, u16)> =
        answers.iter().filter(|a| a.0 == replica).collect();
    mine.sort_by_key(|a| a.2);
    let mut longest = Duration::ZERO;
    let mut refused_since: Option<Instant> = None;
    for (_, sent, answered, status) in mine {
        match (*status, refused_since) {
            (202, Some(since)) if *sent >= since => {
                longest = longest.max(answered.saturating_duration_since(since));
                refused_since = None;
            }
            (202, _) => {}
            (_, None) => refused_since = Some(*sent),
            (_, Some(_)) => {}
        }
    }
    longest
}

fn acked(view: &Value) -> u64 {
    view["stats"]["acked"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_dying_mid_stream_loses_nothing_and_both_replicas_resume_within_5_s() {
    const MESSAGES: usize = 5_000;
    let deployment = require_cluster().await;
    let target = TargetServer::start().await;

    // A may use every node; B every node but A's, so they are on two.
    let a = gateway_on(&deployment, "a", &NODES).await;
    let a_node = node_of(&a.api).await;
    let others: Vec<Node> = NODES.into_iter().filter(|n| *n != a_node).collect();
    let b = gateway_on(&deployment, "b", &others).await;
    let b_node = node_of(&b.api).await;
    assert_ne!(a_node, b_node, "the replicas are on two nodes");

    let queue = deployment.queue("stream");
    create_quorum_queue(&a.api, &queue).await;
    let consumer = a
        .api
        .create_http_consumer(&queue, &target.url("/hook"), json!({ "prefetch": 50 }))
        .await;
    b.api
        .wait_for_consumer(&consumer, RESUME, "running on B", |v| {
            v["state"] == "running"
        })
        .await;
    wait_for_queue_info(&queue, Duration::from_secs(15), "consumed by both", |q| {
        q["consumers"] == 2
    })
    .await;

    // The stream: ids published alternately through A and B, paced so it
    // is still flowing well after the node stops.
    let ids: Vec<String> = (0..MESSAGES)
        .map(|i| format!("{}m{i:05}", deployment.prefix))
        .collect();
    let log = Arc::new(PublishLog::default());
    let accepted = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (apis, queue, ids, log, accepted) = (
            [a.api.clone(), b.api.clone()],
            queue.clone(),
            ids.clone(),
            log.clone(),
            accepted.clone(),
        );
        tokio::spawn(async move {
            let in_flight = Arc::new(tokio::sync::Semaphore::new(32));
            let mut pace = tokio::time::interval(Duration::from_millis(4));
            let mut tasks = tokio::task::JoinSet::new();
            for (i, id) in ids.into_iter().enumerate() {
                pace.tick().await;
                let permit = in_flight.clone().acquire_owned().await.expect("open");
                let (api, queue, log, accepted) = (
                    apis[i % 2].clone(),
                    queue.clone(),
                    log.clone(),
                    accepted.clone(),
                );
                tasks.spawn(async move {
                    let outcome = publish_until_accepted(&api, i % 2, &queue, &id, &log).await;
                    accepted.fetch_add(1, Ordering::SeqCst);
                    drop(permit);
                    outcome
                });
            }
            let mut failures = Vec::new();
            while let Some(done) = tasks.join_next().await {
                if let Err(err) = done.expect("a publish task") {
                    failures.push(err);
                }
            }
            failures
        })
    };

    // Mid-stream, A's node goes.
    eventually(Duration::from_secs(60), || async {
        let n = accepted.load(Ordering::SeqCst);
        (n >= MESSAGES / 5)
            .then_some(())
            .ok_or_else(|| format!("{n} publishes accepted"))
    })
    .await;
    let stop_issued = Instant::now();
    stop_node(&deployment, a_node).await;
    let stopped = Instant::now();
    eprintln!(
        "node death: stopped {} (stop_app took {:?}; times below count from its end) after {} accepted publishes",
        a_node.name(),
        stopped - stop_issued,
        accepted.load(Ordering::SeqCst)
    );

    // Both replicas deliver again within 5 s: their acked counters move on
    // from where they were once the node was down.
    let before = [
        acked(&a.api.consumer(&consumer).await),
        acked(&b.api.consumer(&consumer).await),
    ];
    for (i, replica) in [&a, &b].into_iter().enumerate() {
        let deadline = RESUME.saturating_sub(stopped.elapsed());
        replica
            .api
            .wait_for_consumer(&consumer, deadline, "delivering again", |v| {
                acked(v) > before[i]
            })
            .await;
        eprintln!(
            "node death: replica {} delivering again {:?} after the stop",
            ["A", "B"][i],
            stopped.elapsed()
        );
    }

    let failures = publisher.await.expect("the publisher");
    assert!(
        failures.is_empty(),
        "publishes never accepted: {failures:?}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), MESSAGES);

    // Publishing answered 202 again within 5 s on both replicas.
    let answers = log.answers.lock().unwrap().clone();
    for replica in 0..2 {
        let first_after = answers
            .iter()
            .filter(|(r, sent, _, status)| *r == replica && *sent >= stopped && *status == 202)
            .map(|(_, _, answered, _)| *answered)
            .min()
            .unwrap_or_else(|| panic!("replica {replica} accepted nothing after the stop"));
        let refused = answers
            .iter()
            .filter(|(r, _, _, status)| *r == replica && *status != 202)
            .count();
        eprintln!(
            "node death: replica {} answered 202 again {:?} after the stop ({refused} publish answer(s) other than 202 in all)",
            ["A", "B"][replica],
            first_after.saturating_duration_since(stopped)
        );
        assert!(
            first_after.saturating_duration_since(stopped) <= RESUME,
            "replica {replica} answered 202 only {:?} after the stop",
            first_after.saturating_duration_since(stopped)
        );
        // However long the node took to stop, no publish through this
        // replica went without a 202 for longer than 5 s.
        let outage = longest_refusal(&answers, replica);
        eprintln!(
            "node death: replica {}'s longest stretch without a 202 (first refusal to the next 202): {outage:?}",
            ["A", "B"][replica]
        );
        assert!(
            outage <= RESUME,
            "replica {replica} refused publishes for {outage:?}"
        );
    }

    // Every message reached the target; duplicates counted, none missing.
    let published: BTreeSet<String> = ids.iter().cloned().collect();
    target
        .wait_for_delivered(&published, Duration::from_secs(120))
        .await;
    let per_id = deliveries_per_id(&target);
    let duplicated = per_id.values().filter(|n| **n > 1).count();
    let extra: usize = per_id.values().map(|n| n - 1).sum();
    eprintln!(
        "node death: {MESSAGES} messages, none missing; {duplicated} delivered more than once ({extra} duplicate deliveries)"
    );
    let strangers: Vec<&String> = per_id
        .keys()
        .filter(|id| !published.contains(*id))
        .collect();
    assert!(
        strangers.is_empty(),
        "unknown ids reached the target: {strangers:?}"
    );

    // The node comes back and rejoins; nothing changes.
    tokio::task::spawn_blocking(move || restore_node(a_node))
        .await
        .expect("restore runs")
        .unwrap_or_else(|e| panic!("{e}"));
    wait_until_rejoined(a_node, Duration::from_secs(60)).await;
    assert_eq!(a.api.ready_status().await, Some(200));
    assert_eq!(b.api.ready_status().await, Some(200));
    let settled = wait_for_queue_info(&queue, Duration::from_secs(30), "drained", |q| {
        q["messages"] == 0 && q["consumers"] == 2
    })
    .await;
    assert_eq!(settled["messages_unacknowledged"], 0, "{settled}");
    assert_eq!(
        deliveries_per_id(&target)
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>(),
        published,
        "after the rejoin the same messages, no others"
    );

    a.api.delete_consumer(&consumer).await;
    drop((a, b));
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_waiting_in_a_quorum_delay_queue_survives_its_leaders_node_stopping() {
    const MESSAGES: usize = 200;
    let deployment = require_cluster().await;
    let target = TargetServer::start().await;
    target.set_first_attempt(Reply::status(500));
    let gateway = gateway_on(&deployment, "g", &NODES).await;

    let queue = deployment.queue("retried");
    create_quorum_queue(&gateway.api, &queue).await;
    let consumer = gateway
        .api
        .create_http_consumer(
            &queue,
            &target.url("/hook"),
            // Every first attempt fails on purpose: no breaker to trip.
            json!({ "prefetch": 50, "circuitBreaker": null, "retry": {
                "maxAttempts": 3, "initialDelayMs": 2000, "multiplier": 1.0, "maxDelayMs": 2000
            }}),
        )
        .await;
    let log = PublishLog::default();
    let ids: Vec<String> = (0..MESSAGES)
        .map(|i| format!("{}r{i:03}", deployment.prefix))
        .collect();
    for id in &ids {
        publish_until_accepted(&gateway.api, 0, &queue, id, &log)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    // Every first attempt failed: 200 copies wait 2 s in the delay queue.
    let first_attempts = eventually(Duration::from_secs(30), || async {
        let firsts: Vec<Instant> = target
            .requests()
            .iter()
            .filter(|r| r.header("x-workerrmq-attempt") == Some("1"))
            .map(|r| r.received_at)
            .collect();
        let n = firsts.len();
        (n >= MESSAGES)
            .then_some(firsts)
            .ok_or_else(|| format!("{n} first attempts"))
    })
    .await;
    let last_failure = first_attempts
        .iter()
        .max()
        .copied()
        .unwrap_or_else(Instant::now);
    let delay_queue = format!("{queue}.retry.2000");
    let leader = leader_of(&delay_queue).await;
    let info = queue_info(&delay_queue).await.unwrap_or_default();
    assert_eq!(info["type"], "quorum", "{info}");
    let stop_issued = Instant::now();
    assert!(
        stop_issued < last_failure + Duration::from_secs(2),
        "the stop comes while retries still wait"
    );
    stop_node(&deployment, leader).await;
    eprintln!(
        "retry through a crash: stopped {} (the delay queue's leader) {:?} after the last first attempt",
        leader.name(),
        stop_issued - last_failure
    );

    let all: BTreeSet<String> = ids.iter().cloned().collect();
    let started = Instant::now();
    loop {
        let missing = all.difference(&target.ids_delivered()).count();
        if missing == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            panic!(
                "{missing} of {MESSAGES} retried message(s) never arrived; main queue: {:?}; delay queue: {:?}; consumer: {}",
                queue_info(&queue).await,
                queue_info(&delay_queue).await,
                gateway.api.consumer(&consumer).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "retry through a crash: all {MESSAGES} arrived {:?} after the stop",
        started.elapsed()
    );

    tokio::task::spawn_blocking(move || restore_node(leader))
        .await
        .expect("restore runs")
        .unwrap_or_else(|e| panic!("{e}"));
    gateway.api.delete_consumer(&consumer).await;
    drop(gateway);
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_queue_type_quorum_makes_built_in_queues_and_every_companion_quorum() {
    let deployment = require_cluster().await;
    drop(deployment);
    let vars = gateway_vars(&NODES);
    let mut overrides: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    overrides.push(("DEFAULT_QUEUE_TYPE", "quorum"));
    overrides.push(("BUILTIN_CONSUMERS", "true"));
    let app = spawn_app_with(&overrides).await;
    let target = TargetServer::start().await;
    target.set_first_attempt(Reply::status(500));

    // A queue created without a type, a consumer whose first attempts fail:
    // its .dlq and its delay queue appear.
    let queue = app.unique_queue("untyped");
    app.create_queue(&queue, json!({})).await;
    let api = Api::of(&app);
    let consumer = api
        .create_http_consumer(
            &queue,
            &target.url("/hook"),
            json!({ "circuitBreaker": null, "retry": { "maxAttempts": 3, "initialDelayMs": 1000, "multiplier": 1.0, "maxDelayMs": 1000 } }),
        )
        .await;
    let id = app.publish(&queue, json!({ "n": 1 })).await;
    target
        .wait_for_delivered(&BTreeSet::from([id]), Duration::from_secs(30))
        .await;

    let rows = eventually(Duration::from_secs(30), || async {
        let listed = management_get_any("/api/queues/%2f?columns=name,type,arguments")
            .await
            .ok_or("no management API answers")?;
        let rows = listed
            .as_array()
            .ok_or("not a list")?
            .iter()
            .filter(|q| {
                q["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&app.prefix))
            })
            .cloned()
            .collect::<Vec<Value>>();
        let names: BTreeSet<&str> = rows.iter().filter_map(|q| q["name"].as_str()).collect();
        let builtins = ["users_queue", "reports_queue", "scrape_jobs"]
            .iter()
            .flat_map(|b| {
                [
                    format!("{}{b}", app.prefix),
                    format!("{}{b}.dlq", app.prefix),
                ]
            });
        let wanted: Vec<String> = builtins
            .chain([
                queue.clone(),
                format!("{queue}.dlq"),
                format!("{queue}.retry.1000"),
            ])
            .collect();
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|w| !names.contains(w.as_str()))
            .collect();
        if missing.is_empty() {
            Ok(rows)
        } else {
            Err(format!("not there yet: {missing:?}"))
        }
    })
    .await;
    for row in &rows {
        assert_eq!(row["type"], "quorum", "every queue under the prefix: {row}");
    }
    let delay = rows
        .iter()
        .find(|q| q["name"] == format!("{queue}.retry.1000"))
        .expect("the delay queue");
    assert_eq!(
        delay["arguments"]["x-dead-letter-strategy"], "at-least-once",
        "{delay}"
    );
    assert_eq!(
        delay["arguments"]["x-overflow"], "reject-publish",
        "{delay}"
    );
    eprintln!(
        "DEFAULT_QUEUE_TYPE=quorum: {} queues under the prefix, all quorum",
        rows.len()
    );

    api.delete_consumer(&consumer).await;
    target.stop().await;
}

//! Ordered delivery per key: one key's messages reach the target one at a
//! time and in publish order, while different keys run in parallel; a
//! failing key waits in place (no delay queue) and holds only itself; and
//! order holds across replicas on a single-active-consumer queue.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::gateway_process::Deployment;
use crate::support::target_server::{Recorded, Reply, TargetServer};
use crate::support::{
    assert_conflict_naming, assert_error, assert_json, publish_with_properties, spawn_app, Api,
};

const DELIVERED: Duration = Duration::from_secs(60);
const KEY_HEADER: &str = "order-id";

/// One message of a keyed stream: its id says its key and place.
#[derive(Debug, Clone)]
struct Keyed {
    id: String,
    key: String,
    seq: usize,
}

/// `keys` × `per_key` messages, published round by round (every key's
/// first, then every key's second, …), the keys in a shuffled order each
/// round, so one key's messages are spread among the others'.
fn keyed_stream(label: &str, keys: usize, per_key: usize) -> Vec<Keyed> {
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let mut stream = Vec::with_capacity(keys * per_key);
    for seq in 0..per_key {
        let mut round: Vec<usize> = (0..keys).collect();
        for i in (1..round.len()).rev() {
            round.swap(i, rand::random_range(0..=i));
        }
        for key in round {
            stream.push(Keyed {
                id: format!("{label}-k{key:02}-{seq:03}-{run}"),
                key: format!("k{key:02}"),
                seq,
            });
        }
    }
    stream
}

fn keyed_properties(message: &Keyed) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        KEY_HEADER.into(),
        AMQPValue::LongString(message.key.clone().into()),
    );
    BasicProperties::default()
        .with_message_id(message.id.clone().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers)
}

async fn publish_keyed(connection: &lapin::Connection, queue: &str, messages: &[Keyed]) {
    let bodies: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| {
            json!({ "key": m.key, "seq": m.seq })
                .to_string()
                .into_bytes()
        })
        .collect();
    let with_properties: Vec<(&[u8], BasicProperties)> = messages
        .iter()
        .zip(&bodies)
        .map(|(m, body)| (body.as_slice(), keyed_properties(m)))
        .collect();
    publish_with_properties(connection, queue, with_properties).await;
}

/// The id of key `k00`'s first message, the one the failing tests fail.
fn first_of_k00(messages: &[Keyed]) -> String {
    messages
        .iter()
        .find(|m| m.key == "k00" && m.seq == 0)
        .expect("k00's first message")
        .id
        .clone()
}

fn ids(messages: &[Keyed]) -> BTreeSet<String> {
    messages.iter().map(|m| m.id.clone()).collect()
}

/// The key and place a request's `webhook-id` names.
fn key_and_seq(request: &Recorded) -> (String, usize) {
    let id = request.webhook_id();
    let parts: Vec<&str> = id.split('-').collect();
    let key = parts[parts.len() - 3].to_owned();
    let seq = parts[parts.len() - 2].parse().expect("a seq in the id");
    (key, seq)
}

/// The requests of each key, in arrival order.
fn by_key(requests: &[Recorded]) -> BTreeMap<String, Vec<&Recorded>> {
    let mut keys: BTreeMap<String, Vec<&Recorded>> = BTreeMap::new();
    for request in requests {
        keys.entry(key_and_seq(request).0)
            .or_default()
            .push(request);
    }
    keys
}

/// The seqs of one key's requests, in arrival order.
fn seqs(requests: &[&Recorded]) -> Vec<usize> {
    requests.iter().map(|r| key_and_seq(r).1).collect()
}

fn ordering(extra: Value) -> Value {
    let mut body = json!({ "ordering": { "key": { "header": KEY_HEADER } } });
    if let Value::Object(fields) = extra {
        for (k, v) in fields {
            body[k] = v;
        }
    }
    body
}

/// A single-active-consumer queue with an ordered consumer on `target`.
async fn ordered_consumer(
    app: &crate::support::TestApp,
    target: &TargetServer,
    label: &str,
    extra: Value,
) -> (Api, String, String) {
    let api = Api::of(app);
    let queue = app.unique_queue(label);
    app.create_queue(&queue, json!({ "singleActiveConsumer": true }))
        .await;
    let consumer = api
        .create_http_consumer(&queue, &target.url("/ordered"), ordering(extra))
        .await;
    api.wait_for_consumer(&consumer, Duration::from_secs(5), "running", |v| {
        v["state"] == "running"
    })
    .await;
    (api, queue, consumer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_keys_messages_arrive_in_publish_order_one_at_a_time_while_keys_run_in_parallel() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    target
        .set_responder(|_, _| Reply::ok().after(Duration::from_millis(rand::random_range(0..=15))));
    let (_api, queue, _consumer) =
        ordered_consumer(&app, &target, "inorder", json!({ "prefetch": 100 })).await;
    let messages = keyed_stream("inorder", 20, 50);
    publish_keyed(app.amqp_connection().await, &queue, &messages).await;
    target.wait_for_delivered(&ids(&messages), DELIVERED).await;

    let requests = target.requests();
    assert_eq!(requests.len(), 1_000, "each message once: nothing failed");
    for (key, requests) in by_key(&requests) {
        assert_eq!(
            seqs(&requests),
            (0..50).collect::<Vec<_>>(),
            "key {key} arrived out of publish order"
        );
        for pair in requests.windows(2) {
            let answered = pair[0]
                .answered_at
                .unwrap_or_else(|| panic!("key {key}: a request never answered"));
            assert!(
                pair[1].received_at >= answered,
                "key {key}: {} was called while {} was still at the target",
                pair[1].webhook_id(),
                pair[0].webhook_id()
            );
        }
    }
    // At most one request per key is ever held, so requests held at once
    // are of as many different keys.
    assert!(
        target.max_in_flight() >= 4,
        "at most {} key(s) were in flight at once",
        target.max_in_flight()
    );
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_key_is_retried_in_place_while_the_other_keys_are_delivered() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    let messages = keyed_stream("held", 10, 5);
    let failing = first_of_k00(&messages);
    let tries = Arc::new(AtomicU32::new(0));
    let seen = tries.clone();
    target.set_responder(move |headers, _| {
        if headers.get("webhook-id") == Some(&failing) {
            match seen.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => return Reply::status(503),
                _ => {}
            }
        }
        Reply::ok()
    });
    let (api, queue, consumer) = ordered_consumer(
        &app,
        &target,
        "held",
        json!({ "retry": { "maxAttempts": 5, "initialDelayMs": 1000, "multiplier": 1 } }),
    )
    .await;
    publish_keyed(app.amqp_connection().await, &queue, &messages).await;

    // While k00 waits for its retry, it shows as held.
    let view = api
        .wait_for_consumer(&consumer, Duration::from_secs(10), "holding k00", |v| {
            v["stats"]["keysHeld"] == 1
        })
        .await;
    assert!(view["stats"]["oldestHeldMs"].is_u64(), "{view}");
    assert_eq!(view["ordering"]["key"]["header"], KEY_HEADER, "{view}");
    let series = format!("workerrmq_ordered_keys_held{{consumer_id=\"{consumer}\"");
    crate::support::eventually(Duration::from_secs(10), || async {
        let text = app.get("/metrics").await.text().await.expect("text");
        match crate::support::metric_sample(&text, &series) {
            Some(1.0) => Ok(()),
            other => Err(format!("{series}: {other:?}")),
        }
    })
    .await;
    target.wait_for_delivered(&ids(&messages), DELIVERED).await;

    let requests = target.requests();
    let keys = by_key(&requests);
    assert_eq!(
        seqs(&keys["k00"]),
        [0, 0, 0, 1, 2, 3, 4],
        "k00's first message three times, then the rest in order"
    );
    let attempts: Vec<u32> = keys["k00"].iter().map(|r| r.attempt()).collect();
    assert_eq!(
        attempts,
        [1, 2, 3, 1, 1, 1, 1],
        "the retries count as attempts"
    );
    let k00_delivered_at = keys["k00"][2].received_at;
    for (key, requests) in &keys {
        assert_eq!(
            seqs(requests),
            if key == "k00" {
                vec![0, 0, 0, 1, 2, 3, 4]
            } else {
                vec![0, 1, 2, 3, 4]
            },
            "key {key}"
        );
        if key != "k00" {
            let last = requests.last().expect("a request").received_at;
            assert!(
                last < k00_delivered_at,
                "key {key} waited for k00's retries"
            );
        }
    }
    let view = api
        .wait_for_consumer(&consumer, Duration::from_secs(5), "settled", |v| {
            v["stats"]["acked"] == 50
        })
        .await;
    assert_eq!(view["stats"]["retried"], 2, "{view}");
    assert_eq!(view["stats"]["keysHeld"], 0, "{view}");
    let retry_prefix = format!("{queue}.retry.");
    let delay_queues: Vec<String> = app
        .broker_queues()
        .await
        .iter()
        .filter_map(|q| q["name"].as_str().map(str::to_owned))
        .filter(|name| name.starts_with(&retry_prefix))
        .collect();
    assert!(
        delay_queues.is_empty(),
        "an ordered consumer made delay queues: {delay_queues:?}"
    );
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_message_is_dead_lettered_and_its_key_goes_on_in_order() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    let messages = keyed_stream("rejected", 3, 4);
    let rejected = first_of_k00(&messages);
    let refused = rejected.clone();
    target.set_responder(move |headers, _| {
        if headers.get("webhook-id") == Some(&refused) {
            Reply::status(422)
        } else {
            Reply::ok()
        }
    });
    let (api, queue, _consumer) = ordered_consumer(&app, &target, "rejected", json!({})).await;
    publish_keyed(app.amqp_connection().await, &queue, &messages).await;
    let delivered: BTreeSet<String> = ids(&messages)
        .into_iter()
        .filter(|id| id != &rejected)
        .collect();
    target.wait_for_delivered(&delivered, DELIVERED).await;

    let requests = target.requests();
    assert_eq!(seqs(&by_key(&requests)["k00"]), [0, 1, 2, 3]);
    let dead = api.dead_letters(&queue).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["messageId"], rejected.as_str(), "{dead:?}");
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_its_key_is_dead_lettered_or_delivered_as_configured() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    for (missing, label) in [("dead_letter", "nokeydl"), ("unordered", "nokeyun")] {
        let (api, queue, _consumer) = ordered_consumer(
            &app,
            &target,
            label,
            json!({ "ordering": { "key": { "jsonPointer": "/order/id" }, "missingKey": missing } }),
        )
        .await;
        let keyed = app
            .publish(&queue, json!({ "order": { "id": "o-1" } }))
            .await;
        let keyless = app.publish(&queue, json!({ "order": {} })).await;
        match missing {
            "dead_letter" => {
                target
                    .wait_for_delivered(&BTreeSet::from([keyed.clone()]), DELIVERED)
                    .await;
                let dead = crate::support::eventually(Duration::from_secs(10), || async {
                    let dead = api.dead_letters(&queue).await;
                    if dead.len() == 1 {
                        Ok(dead)
                    } else {
                        Err(format!("dead letters: {dead:?}"))
                    }
                })
                .await;
                assert_eq!(dead[0]["messageId"], keyless.as_str(), "{dead:?}");
                let reason = dead[0]["lastError"].as_str().unwrap_or_default();
                assert!(reason.contains("ordering key"), "{dead:?}");
                assert!(
                    !target.ids_seen().contains(&keyless),
                    "a keyless message reached the target"
                );
            }
            _ => {
                target
                    .wait_for_delivered(&BTreeSet::from([keyed, keyless]), DELIVERED)
                    .await;
                assert!(api.dead_letters(&queue).await.is_empty());
            }
        }
    }
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_orderings_are_refused_naming_the_field_and_change_nothing() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let plain = app.unique_queue("plainq");
    app.create_queue(&plain, json!({})).await;
    let single = app.unique_queue("singleq");
    app.create_queue(&single, json!({ "singleActiveConsumer": true }))
        .await;
    let queues = assert_json(app.get("/getQueues").await, StatusCode::OK).await;
    let shown = |name: &str| {
        queues
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["queueName"] == name))
            .map(|r| r["singleActiveConsumer"].clone())
    };
    assert_eq!(shown(&single), Some(json!(true)));
    assert_eq!(shown(&plain), Some(json!(false)));
    let url = "http://127.0.0.1:9/ordered";
    let create = |queue: &str, extra: Value| {
        let mut body = json!({ "queueName": queue, "target": { "type": "http", "url": url } });
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            body[k] = v;
        }
        body
    };
    let before = assert_json(app.get("/getConsumers").await, StatusCode::OK).await;

    assert_conflict_naming(
        api.post("/createConsumer", &create(&plain, ordering(json!({}))))
            .await,
        &["singleActiveConsumer"],
    )
    .await;
    for (ordering_field, named) in [
        (
            json!({ "key": { "header": "a", "jsonPointer": "/a" } }),
            "ordering.key",
        ),
        (json!({ "key": {} }), "ordering.key"),
        (json!({}), "ordering.key"),
        (
            json!({ "key": { "jsonPointer": "order/id" } }),
            "ordering.key.jsonPointer",
        ),
    ] {
        let body = assert_error(
            api.post(
                "/createConsumer",
                &create(&single, json!({ "ordering": ordering_field })),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains(named)),
            "{ordering_field}: {body}"
        );
    }
    let body = assert_error(
        api.post(
            "/createConsumer",
            &create(
                &single,
                ordering(json!({ "batch": { "maxMessages": 5, "maxWaitMs": 10 } })),
            ),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("ordering")),
        "{body}"
    );
    let after = assert_json(app.get("/getConsumers").await, StatusCode::OK).await;
    assert_eq!(before, after, "a refused consumer was created");

    // One ordered consumer per queue; a plain one may not turn ordered on
    // a queue without a single active consumer either.
    let first = api
        .create_http_consumer(&single, url, ordering(json!({})))
        .await;
    assert_conflict_naming(
        api.post("/createConsumer", &create(&single, ordering(json!({}))))
            .await,
        &[&first],
    )
    .await;
    let plain_consumer = api.create_http_consumer(&plain, url, json!({})).await;
    assert_error(
        api.post(
            "/updateConsumer",
            &json!({ "consumerId": plain_consumer, "ordering": { "key": { "header": "a" } } }),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    assert_eq!(api.consumer(&plain_consumer).await["ordering"], Value::Null);
    let updated = assert_json(
        api.post(
            "/updateConsumer",
            &json!({ "consumerId": first, "ordering": null }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(updated["ordering"], Value::Null, "{updated}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_active_replica_is_killed_the_other_takes_over_in_order_and_loses_nothing() {
    let deployment = Deployment::new();
    let mut a = deployment.start_gateway(&deployment.instance_id("a")).await;
    let mut b = deployment.start_gateway(&deployment.instance_id("b")).await;
    let target = TargetServer::start().await;
    target.set_responder(|_, _| Reply::ok().after(Duration::from_millis(30)));
    let queue = deployment.queue("failover");
    assert_json(
        a.api
            .post(
                "/createQueue",
                &json!({ "queueName": queue, "queueType": "quorum", "singleActiveConsumer": true }),
            )
            .await,
        StatusCode::CREATED,
    )
    .await;
    let consumer = a
        .api
        .create_http_consumer(
            &queue,
            &target.url("/ordered"),
            ordering(json!({ "prefetch": 10 })),
        )
        .await;
    // Running means subscribed: on a single-active-consumer queue the
    // broker counts only the active one, so both states are what says both
    // replicas are there.
    for gateway in [&a, &b] {
        gateway
            .api
            .wait_for_consumer(&consumer, Duration::from_secs(10), "running", |v| {
                v["state"] == "running"
            })
            .await;
    }
    let amqp = deployment.amqp().await;

    let messages = keyed_stream("failover", 50, 20);
    publish_keyed(amqp, &queue, &messages).await;
    target.wait_for_requests(200, DELIVERED).await;
    // Only the active replica delivers: the other's share is nothing.
    let delivered_by = |view: &Value, instance: &str| {
        view["stats"]["replicas"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["instanceId"] == instance))
            .and_then(|r| r["delivered"].as_u64())
            .unwrap_or(0)
    };
    let on_a = delivered_by(&a.api.consumer(&consumer).await, &a.instance_id);
    let on_b = delivered_by(&b.api.consumer(&consumer).await, &b.instance_id);
    assert!(
        (on_a == 0) != (on_b == 0),
        "one replica delivers, not both: A {on_a}, B {on_b}"
    );
    let (active, standby) = if on_a > 0 { (&mut a, &b) } else { (&mut b, &a) };
    active.kill();
    let killed_at = Instant::now();
    let before = target.request_count();
    assert!(
        target.ids_delivered().len() < messages.len(),
        "the kill came too late to be mid-stream"
    );
    let took_over = crate::support::eventually(Duration::from_secs(5), || async {
        let requests = target.requests();
        match requests
            .iter()
            .skip(before)
            .find(|r| r.received_at > killed_at)
        {
            Some(r) => Ok(r.received_at - killed_at),
            None => Err("no delivery since the kill".to_owned()),
        }
    })
    .await;
    assert!(took_over < Duration::from_secs(5), "{took_over:?}");
    target.wait_for_delivered(&ids(&messages), DELIVERED).await;

    // Per key, each message's first arrival is in publish order; a crash
    // may repeat a message, never reorder first arrivals.
    let requests = target.requests();
    let mut first_seen: HashMap<String, Vec<usize>> = HashMap::new();
    let mut seen = BTreeSet::new();
    for request in &requests {
        if seen.insert(request.webhook_id()) {
            let (key, seq) = key_and_seq(request);
            first_seen.entry(key).or_default().push(seq);
        }
    }
    assert_eq!(first_seen.len(), 50);
    for (key, order) in first_seen {
        assert_eq!(order, (0..20).collect::<Vec<_>>(), "key {key}");
    }
    let _ = standby;
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_ordered_consumer_hands_back_its_held_keys_in_order_and_resumes_them() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    let messages = keyed_stream("paused", 4, 5);
    let failing = first_of_k00(&messages);
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let target_down = down.clone();
    target.set_responder(move |headers, _| {
        if headers.get("webhook-id") == Some(&failing) && target_down.load(Ordering::SeqCst) {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    });
    let (api, queue, consumer) = ordered_consumer(
        &app,
        &target,
        "paused",
        json!({ "retry": { "maxAttempts": 100, "initialDelayMs": 1000, "multiplier": 1 } }),
    )
    .await;
    publish_keyed(app.amqp_connection().await, &queue, &messages).await;
    let others: BTreeSet<String> = messages
        .iter()
        .filter(|m| m.key != "k00")
        .map(|m| m.id.clone())
        .collect();
    target.wait_for_delivered(&others, DELIVERED).await;
    api.wait_for_consumer(&consumer, Duration::from_secs(10), "holding k00", |v| {
        v["stats"]["keysHeld"] == 1
    })
    .await;

    // Paused while k00's head is held and its four others wait behind it:
    // all five go back to the queue, in their order.
    api.pause(&consumer).await;
    crate::support::wait_for_queue(
        app.amqp_connection().await,
        &queue,
        Duration::from_secs(10),
        "holding k00's five messages again",
        |ready, _| ready == 5,
    )
    .await;
    down.store(false, Ordering::SeqCst);
    api.resume(&consumer).await;
    target.wait_for_delivered(&ids(&messages), DELIVERED).await;
    let requests = target.requests();
    let k00: Vec<usize> = seqs(&by_key(&requests)["k00"])
        .into_iter()
        .skip_while(|seq| *seq == 0)
        .collect();
    assert_eq!(k00, [1, 2, 3, 4], "k00 after its head, in order, each once");
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_would_hold_a_delivery_past_the_limit_dead_letters_it_instead() {
    let app = crate::support::spawn_app_with(&[("ORDERED_MAX_HOLD_MS", "3000")]).await;
    let target = TargetServer::start().await;
    target.set_responder(|_, _| Reply::status(503));
    let (api, queue, consumer) = ordered_consumer(
        &app,
        &target,
        "holdlimit",
        json!({ "retry": { "maxAttempts": 10, "initialDelayMs": 2000, "multiplier": 1 } }),
    )
    .await;
    let messages = keyed_stream("holdlimit", 1, 2);
    publish_keyed(app.amqp_connection().await, &queue, &messages).await;
    let dead = crate::support::eventually(Duration::from_secs(30), || async {
        let dead = api.dead_letters(&queue).await;
        if dead.len() == 2 {
            Ok(dead)
        } else {
            Err(format!("dead letters: {dead:?}"))
        }
    })
    .await;
    for letter in &dead {
        assert_eq!(letter["lastErrorKind"], "hold_limit", "{letter}");
        assert!(
            letter["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("ORDERED_MAX_HOLD_MS")),
            "{letter}"
        );
    }
    let ids_in_order: Vec<&str> = dead
        .iter()
        .filter_map(|d| d["messageId"].as_str())
        .collect();
    assert_eq!(
        ids_in_order,
        [messages[0].id.as_str(), messages[1].id.as_str()]
    );
    // The hold counts from when the gateway took a delivery: the first was
    // tried, retried 2 s later, and the next wait would have passed 3 s;
    // the second, taken at the same time, had waited 2 s behind it, so its
    // first failure was its last.
    let view = api.consumer(&consumer).await;
    assert_eq!(view["stats"]["deadLettered"], 2, "{view}");
    let tries: Vec<(usize, u32)> = target
        .requests()
        .iter()
        .map(|r| (key_and_seq(r).1, r.attempt()))
        .collect();
    assert_eq!(tries, [(0, 1), (0, 2), (1, 1)]);
    target.stop().await;
}

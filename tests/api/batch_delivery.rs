//! Batch delivery: many messages in one request, each settled by the
//! batch's answer; the batch field's bounds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::delivery::expected_signature;
use crate::delivery::signing_secret;
use crate::support::ids_of;
use crate::support::running_consumer_on;
use crate::support::target_server::{Recorded, Reply, TargetServer};
use crate::support::{assert_error, assert_json, spawn_app};
use crate::support::{binary_messages, publish_confirmed, wait_for_queue, Api, TestMessage};

const DEADLINE: Duration = Duration::from_secs(30);

/// One message of a batch request's body.
#[derive(Debug, Clone)]
struct Element {
    id: String,
    attempt: u64,
    raw: Value,
}

/// The request's body as the array it must be, after checking the batch
/// headers agree with it.
fn elements(request: &Recorded) -> Vec<Element> {
    let body: Value = serde_json::from_slice(&request.body)
        .unwrap_or_else(|e| panic!("a batch body is JSON ({e}): {request:?}"));
    let items = body
        .as_array()
        .unwrap_or_else(|| panic!("a batch body is an array: {body}"));
    assert_eq!(
        request.header("x-workerrmq-batch-size"),
        Some(items.len().to_string().as_str()),
        "the batch size header counts the body's elements"
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    items
        .iter()
        .map(|item| Element {
            id: item["id"]
                .as_str()
                .unwrap_or_else(|| panic!("an element without an id: {item}"))
                .to_owned(),
            attempt: item["attempt"]
                .as_u64()
                .unwrap_or_else(|| panic!("an element without an attempt: {item}")),
            raw: item.clone(),
        })
        .collect()
}

/// The payload an element carries, as bytes.
fn payload_bytes(element: &Element) -> Vec<u8> {
    match element.raw["payloadBase64"].as_str() {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_else(|e| panic!("payloadBase64 is base64 ({e}): {}", element.raw)),
        None => serde_json::to_vec(&element.raw["payload"]).expect("JSON"),
    }
}

/// Every element of every request to `path`, in arrival order.
fn all_elements(target: &TargetServer, path: &str) -> Vec<Element> {
    target.requests_to(path).iter().flat_map(elements).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_arrive_in_at_most_25_requests_each_once() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    let queue = app.unique_queue("thousand");
    api.create_queue(&queue).await;
    let messages = binary_messages("thousand", 1_000);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;

    let consumer = api
        .create_http_consumer(
            &queue,
            &target.url("/batch"),
            json!({ "prefetch": 100, "batch": { "maxMessages": 50, "maxWaitMs": 200 } }),
        )
        .await;
    let view = api
        .wait_for_consumer(&consumer, DEADLINE, "acked 1000", |v| {
            v["stats"]["acked"] == 1_000
        })
        .await;
    assert_eq!(
        view["batch"],
        json!({ "maxMessages": 50, "maxWaitMs": 200 }),
        "{view}"
    );
    assert_eq!(view["stats"]["retried"], 0, "{view}");
    assert_eq!(view["stats"]["deadLettered"], 0, "{view}");

    let requests = target.requests_to("/batch");
    assert!(
        requests.len() <= 25,
        "1,000 messages in batches of 50 took {} requests",
        requests.len()
    );
    let mut seen: BTreeMap<String, Element> = BTreeMap::new();
    let batch_ids: BTreeSet<String> = requests.iter().map(Recorded::webhook_id).collect();
    assert_eq!(batch_ids.len(), requests.len(), "each batch has its own id");
    for request in &requests {
        let batch = elements(request);
        assert!(
            (1..=50).contains(&batch.len()),
            "a batch of {}",
            batch.len()
        );
        assert_eq!(request.header("x-workerrmq-queue"), Some(queue.as_str()));
        assert_eq!(request.header("webhook-signature"), None, "not signed");
        for element in batch {
            assert_eq!(element.attempt, 1, "{:?}", element.raw);
            let id = element.id.clone();
            assert!(seen.insert(id.clone(), element).is_none(), "{id} twice");
        }
    }
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        ids_of(&messages),
        "every id once"
    );
    for message in &messages {
        let element = &seen[&message.id];
        assert_eq!(payload_bytes(element), message.body, "{}", message.id);
        assert_eq!(element.raw["contentType"], "application/octet-stream");
    }
    wait_for_queue(
        app.amqp_connection().await,
        &queue,
        Duration::from_secs(5),
        "empty",
        |m, _| m == 0,
    )
    .await;

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_batch_verifies_over_the_whole_body() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    let (secret, key) = signing_secret();
    let (api, queue, consumer) = running_consumer_on(
        &app,
        &target,
        "signed",
        "/signed",
        json!({ "prefetch": 20, "signingSecret": secret,
                "batch": { "maxMessages": 20, "maxWaitMs": 300 } }),
    )
    .await;
    let messages = binary_messages("signed", 4);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;
    let json_id = app
        .publish(&queue, json!({ "order": 42, "note": "ünïcødé" }))
        .await;
    let mut ids = ids_of(&messages);
    ids.insert(json_id.clone());
    api.wait_for_consumer(&consumer, DEADLINE, "acked 5", |v| v["stats"]["acked"] == 5)
        .await;

    let requests = target.requests_to("/signed");
    let other_key: [u8; 32] = rand::random();
    let mut arrived = BTreeSet::new();
    for request in &requests {
        let batch_id = request.webhook_id();
        let timestamp = request
            .header("webhook-timestamp")
            .expect("a webhook-timestamp")
            .to_owned();
        let signature = request
            .header("webhook-signature")
            .unwrap_or_else(|| panic!("a signed consumer signs every batch: {request:?}"));
        assert_eq!(
            signature,
            expected_signature(&key, &batch_id, &timestamp, &request.body),
            "the signature of batch {batch_id} does not verify"
        );
        assert_ne!(
            signature,
            expected_signature(&other_key, &batch_id, &timestamp, &request.body)
        );
        for element in elements(request) {
            if element.id == json_id {
                assert_eq!(
                    element.raw["payload"],
                    json!({ "order": 42, "note": "ünïcødé" }),
                    "a JSON message is embedded as JSON"
                );
                assert!(element.raw.get("payloadBase64").is_none());
            }
            arrived.insert(element.id);
        }
    }
    assert_eq!(arrived, ids);

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answer_retries_and_rejects_the_ids_it_names_and_acks_the_rest() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let id = |i: usize| format!("{run}-id-{i}");
    target.script(
        "/mixed",
        vec![Reply::ok().with_body(&json!({ "retry": [id(3)], "reject": [id(7)] }).to_string())],
        Reply::ok(),
    );
    let (api, queue, consumer) = running_consumer_on(
        &app,
        &target,
        "mixed",
        "/mixed",
        json!({ "prefetch": 10, "batch": { "maxMessages": 10, "maxWaitMs": 2000 },
                "retry": { "maxAttempts": 3, "initialDelayMs": 200 } }),
    )
    .await;
    let messages: Vec<TestMessage> = binary_messages("mixed", 10)
        .into_iter()
        .enumerate()
        .map(|(i, m)| TestMessage { id: id(i), ..m })
        .collect();
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;

    let view = api
        .wait_for_consumer(&consumer, DEADLINE, "9 acked, 1 dead-lettered", |v| {
            v["stats"]["acked"] == 9 && v["stats"]["deadLettered"] == 1
        })
        .await;
    assert_eq!(view["stats"]["retried"], 1, "{view}");

    let requests = target.requests_to("/mixed");
    assert_eq!(requests.len(), 2, "the batch, then the retry of id-3");
    let first: BTreeSet<String> = elements(&requests[0]).into_iter().map(|e| e.id).collect();
    assert_eq!(first, ids_of(&messages), "one full batch first");
    let second = elements(&requests[1]);
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(second[0].id, id(3));
    assert_eq!(second[0].attempt, 2, "the retry is attempt 2");
    assert_eq!(payload_bytes(&second[0]), messages[3].body);

    let letters = api.dead_letters(&queue).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["messageId"], id(7).as_str(), "{}", letters[0]);
    assert!(
        letters[0]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("rejected")),
        "{}",
        letters[0]
    );
    wait_for_queue(
        app.amqp_connection().await,
        &queue,
        Duration::from_secs(5),
        "empty",
        |m, _| m == 0,
    )
    .await;

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_retries_every_message_of_the_batch() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    target.script("/busy", vec![Reply::status(503)], Reply::ok());
    let (api, queue, consumer) = running_consumer_on(
        &app,
        &target,
        "busy",
        "/busy",
        json!({ "prefetch": 5, "batch": { "maxMessages": 5, "maxWaitMs": 2000 },
                "retry": { "maxAttempts": 3, "initialDelayMs": 200 } }),
    )
    .await;
    let messages = binary_messages("busy", 5);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;

    let view = api
        .wait_for_consumer(&consumer, DEADLINE, "5 acked", |v| v["stats"]["acked"] == 5)
        .await;
    assert_eq!(view["stats"]["retried"], 5, "{view}");
    assert_eq!(view["stats"]["deadLettered"], 0, "{view}");

    let elements_seen = all_elements(&target, "/busy");
    let mut attempts: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for element in elements_seen {
        attempts
            .entry(element.id)
            .or_default()
            .push(element.attempt);
    }
    assert_eq!(
        attempts.keys().cloned().collect::<BTreeSet<_>>(),
        ids_of(&messages)
    );
    for (id, seen) in &attempts {
        assert_eq!(seen, &[1, 2], "{id}: each its own retry copy and attempt");
    }
    let requests = target.requests_to("/busy");
    assert_eq!(requests[0].answered, 503);
    assert_ne!(
        requests[0].webhook_id(),
        requests[requests.len() - 1].webhook_id(),
        "a retried batch is a new batch"
    );
    assert!(
        api.dead_letters(&queue).await.is_empty(),
        "nothing dead-lettered"
    );

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_smaller_than_max_messages_goes_out_after_max_wait() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    let (api, queue, consumer) = running_consumer_on(
        &app,
        &target,
        "partial",
        "/partial",
        json!({ "prefetch": 50, "batch": { "maxMessages": 50, "maxWaitMs": 700 } }),
    )
    .await;
    let messages = binary_messages("partial", 3);
    let published = Instant::now();
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;

    let requests = target.wait_for_requests(1, DEADLINE).await;
    let waited = requests[0].received_at - published;
    assert!(
        waited >= Duration::from_millis(700),
        "sent {waited:?} after the publish, before maxWaitMs"
    );
    api.wait_for_consumer(&consumer, DEADLINE, "acked 3", |v| v["stats"]["acked"] == 3)
        .await;
    let requests = target.requests_to("/partial");
    assert_eq!(requests.len(), 1, "the three together");
    let ids: BTreeSet<String> = elements(&requests[0]).into_iter().map(|e| e.id).collect();
    assert_eq!(ids, ids_of(&messages));

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_batch_settings_are_refused_naming_the_field_and_change_nothing() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    let queue = app.unique_queue("bad-batch");
    api.create_queue(&queue).await;
    let create = |extra: Value| {
        let mut body = json!({
            "queueName": queue,
            "target": { "type": "http", "url": target.url("/never") },
        });
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            body[k] = v;
        }
        body
    };
    let cases = [
        (
            json!({ "batch": { "maxMessages": 0, "maxWaitMs": 5 } }),
            "batch.maxMessages",
        ),
        (
            json!({ "prefetch": 1000, "batch": { "maxMessages": 1001, "maxWaitMs": 5 } }),
            "batch.maxMessages",
        ),
        (
            json!({ "batch": { "maxMessages": 5, "maxWaitMs": 10001 } }),
            "batch.maxWaitMs",
        ),
        (
            json!({ "prefetch": 10, "batch": { "maxMessages": 50, "maxWaitMs": 5 } }),
            "batch.maxMessages",
        ),
        (json!({ "batch": { "maxMessages": 5 } }), "batch.maxWaitMs"),
    ];
    for (extra, field) in cases {
        let body = assert_error(
            api.post("/createConsumer", &create(extra.clone())).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("`{field}`"))),
            "{extra} → {body}"
        );
    }
    // Unknown fields and wrong types are refused too.
    for batch in [
        json!({ "maxMessages": 5, "maxWaitMs": 5, "size": 3 }),
        json!({ "maxMessages": "5", "maxWaitMs": 5 }),
        json!({ "maxMessages": -1, "maxWaitMs": 5 }),
    ] {
        assert_error(
            api.post("/createConsumer", &create(json!({ "batch": batch })))
                .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
    }
    let listed = assert_json(api.get("/getConsumers").await, StatusCode::OK).await;
    assert_eq!(listed, json!([]), "no consumer was stored");

    // An update that would leave the batch above the prefetch changes nothing.
    let consumer = api
        .create_http_consumer(
            &queue,
            &target.url("/never"),
            json!({ "prefetch": 100, "batch": { "maxMessages": 50, "maxWaitMs": 5 } }),
        )
        .await;
    let before = api.consumer(&consumer).await;
    for (change, field) in [
        (json!({ "prefetch": 10 }), "batch.maxMessages"),
        (
            json!({ "batch": { "maxMessages": 101 } }),
            "batch.maxMessages",
        ),
        (
            json!({ "batch": { "maxWaitMs": 20000 } }),
            "batch.maxWaitMs",
        ),
    ] {
        let mut body = change.clone();
        body["consumerId"] = json!(consumer);
        let refused = assert_error(
            api.post("/updateConsumer", &body).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
        assert!(
            refused["message"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("`{field}`"))),
            "{change} → {refused}"
        );
    }
    let after = api.consumer(&consumer).await;
    for field in ["prefetch", "batch", "target"] {
        assert_eq!(after[field], before[field], "{field} changed");
    }
    // A partial update keeps the other field; `null` turns batching off.
    let updated = assert_json(
        api.post(
            "/updateConsumer",
            &json!({ "consumerId": consumer, "batch": { "maxWaitMs": 40 } }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        updated["batch"],
        json!({ "maxMessages": 50, "maxWaitMs": 40 })
    );
    let updated = assert_json(
        api.post(
            "/updateConsumer",
            &json!({ "consumerId": consumer, "batch": null, "prefetch": 10 }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(updated["batch"], Value::Null, "{updated}");
    assert_eq!(updated["prefetch"], 10, "{updated}");

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_and_updating_a_batch_consumer_mid_stream_loses_nothing() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    target.set_default(Reply::ok().after(Duration::from_millis(100)));
    let (api, queue, consumer) = running_consumer_on(
        &app,
        &target,
        "midstream",
        "/mid",
        json!({ "prefetch": 40, "batch": { "maxMessages": 20, "maxWaitMs": 50 } }),
    )
    .await;
    let messages = binary_messages("midstream", 600);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;

    target.wait_for_requests(3, DEADLINE).await;
    api.pause(&consumer).await;
    api.resume(&consumer).await;
    target.wait_for_requests(8, DEADLINE).await;
    assert_json(
        api.post(
            "/updateConsumer",
            &json!({ "consumerId": consumer, "batch": { "maxMessages": 7 } }),
        )
        .await,
        StatusCode::OK,
    )
    .await;

    let ids = ids_of(&messages);
    api.wait_for_consumer(&consumer, DEADLINE, "every message acked", |v| {
        v["stats"]["acked"].as_u64().unwrap_or(0) >= 600
    })
    .await;
    let arrived: BTreeSet<String> = all_elements(&target, "/mid")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(arrived, ids, "every message reached the target");
    let last = target.requests_to("/mid");
    assert!(
        elements(&last[last.len() - 1]).len() <= 7,
        "the new batch size applies"
    );
    wait_for_queue(
        app.amqp_connection().await,
        &queue,
        Duration::from_secs(5),
        "empty",
        |m, _| m == 0,
    )
    .await;

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_spec_lists_the_batch_field() {
    let app = spawn_app().await;
    let spec = assert_json(
        app.request_anonymous(reqwest::Method::GET, "/openapi.json", None)
            .await,
        StatusCode::OK,
    )
    .await;
    let schemas = &spec["components"]["schemas"];
    for request in ["CreateConsumerRequest", "UpdateConsumerRequest"] {
        let field = &schemas[request]["properties"]["batch"];
        assert!(
            field.to_string().contains("BatchRequest"),
            "{request}: {field}"
        );
    }
    let batch = &schemas["BatchRequest"];
    assert_eq!(
        batch["properties"]["maxMessages"]["maximum"], 1000,
        "{batch}"
    );
    assert_eq!(
        batch["properties"]["maxWaitMs"]["maximum"], 10000,
        "{batch}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_guard_refuses_a_batch_target_resolving_inside() {
    let app = crate::support::spawn_app_with(&[("FORWARD_DENY_PRIVATE", "true")]).await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    let queue = app.unique_queue("guarded");
    api.create_queue(&queue).await;
    // A name resolving to loopback: refused when connecting, so every
    // message of the batch is dead-lettered at once and nothing arrives.
    let port = target.port();
    api.create_http_consumer(
        &queue,
        &format!("http://localhost:{port}/hook"),
        json!({ "prefetch": 10, "batch": { "maxMessages": 10, "maxWaitMs": 100 },
                "retry": { "maxAttempts": 5, "initialDelayMs": 60000 } }),
    )
    .await;
    let messages = binary_messages("guarded", 3);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;
    let dead = crate::support::eventually(DEADLINE, || async {
        let dead = api.dead_letters(&queue).await;
        if dead.len() == 3 {
            Ok(dead)
        } else {
            Err(format!("{} of 3 dead-lettered", dead.len()))
        }
    })
    .await;
    for letter in &dead {
        assert!(
            letter["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("not allowed")),
            "{letter}"
        );
        assert_eq!(letter["attempts"], 1, "{letter}");
    }
    assert_eq!(target.request_count(), 0, "a refused target was reached");
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_breaker_counts_a_failed_batch_as_one_failure() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    target.set_default(Reply::status(503));
    let queue_label = "tripping";
    let api = Api::of(&app);
    let queue = app.unique_queue(queue_label);
    api.create_queue(&queue).await;
    let messages = binary_messages(queue_label, 30);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;
    // One batch in flight at a time (prefetch = maxMessages).
    let consumer = api
        .create_http_consumer(
            &queue,
            &target.url("/down"),
            json!({ "prefetch": 10, "batch": { "maxMessages": 10, "maxWaitMs": 100 },
                    "retry": { "maxAttempts": 5, "initialDelayMs": 60000 },
                    "circuitBreaker": { "failureThreshold": 3, "openMs": 60000 } }),
        )
        .await;
    let view = api
        .wait_for_consumer(&consumer, DEADLINE, "circuit open", |v| {
            v["state"] == "circuit_open"
        })
        .await;
    assert_eq!(
        view["circuit"]["consecutiveFailures"], 3,
        "three batches, three failures: {view}"
    );
    assert_eq!(target.request_count(), 3, "no request once it opened");
    // The first two batches spent an attempt; the third went back unspent.
    let view = api
        .wait_for_consumer(&consumer, DEADLINE, "settled", |v| {
            v["stats"]["inFlight"] == 0
        })
        .await;
    assert_eq!(view["stats"]["retried"], 20, "{view}");
    assert_eq!(view["stats"]["deadLettered"], 0, "{view}");
    wait_for_queue(
        app.amqp_connection().await,
        &queue,
        Duration::from_secs(10),
        "the third batch back in the queue",
        |m, _| m == 10,
    )
    .await;
    target.stop().await;
}

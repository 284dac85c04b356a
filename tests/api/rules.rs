//! Consumer rules through the API: a CEL filter that acks what it refuses
//! without a call and counts it, a transform whose body the signature
//! covers, what a rule failing at run time becomes, the dry run over
//! samples and over a queue it leaves as it was, and rules that do not
//! compile refused with the field and the position.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use lapin::options::BasicGetOptions;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::delivery::expected_signature;
use crate::delivery::signing_secret;
use crate::support::target_server::TargetServer;
use crate::support::{
    assert_conflict_naming, assert_error, assert_json, assert_refused_naming, eventually,
    metric_sample, running_consumer_on, spawn_app, Api, TestApp,
};

const DEADLINE: Duration = Duration::from_secs(30);

/// POST /messagePublish with an id and headers; asserts 202.
async fn publish(app: &TestApp, queue: &str, id: &str, message: Value, headers: Value) {
    assert_json(
        app.post_json(
            "/messagePublish",
            &json!({ "queueName": queue, "message": message, "messageId": id, "headers": headers }),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
}

/// The ids of the messages at the head of `queue`, taken without an ack
/// and put back by closing the channel.
async fn ids_in_queue(app: &TestApp, queue: &str, n: usize) -> Vec<String> {
    let channel = app.amqp_channel().await;
    let mut ids = Vec::new();
    for _ in 0..n {
        match channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .expect("basic_get")
        {
            Some(message) => ids.push(
                message
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
            ),
            None => break,
        }
    }
    channel.close(200, "done".into()).await.expect("closed");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_sends_only_what_it_matches_and_counts_the_rest() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    let (api, queue, consumer) = running_consumer_on(
        &app,
        &target,
        "filter",
        "/hook",
        json!({ "filter": "body.type == \"order.created\"" }),
    )
    .await;
    let mut matching = BTreeSet::new();
    for i in 0..10 {
        let id = format!("{queue}-{i}");
        let kind = if i % 2 == 0 {
            "order.created"
        } else {
            "order.paid"
        };
        if i % 2 == 0 {
            matching.insert(id.clone());
        }
        publish(
            &app,
            &queue,
            &id,
            json!({ "type": kind, "i": i }),
            json!({}),
        )
        .await;
    }
    target.wait_for_delivered(&matching, DEADLINE).await;
    let view = api
        .wait_for_consumer(&consumer, DEADLINE, "5 filtered, 5 acked", |v| {
            v["stats"]["filtered"] == 5 && v["stats"]["acked"] == 5
        })
        .await;
    assert_eq!(view["filter"], "body.type == \"order.created\"");
    assert_eq!(view["onRuleError"], "dead_letter");
    assert_eq!(view["stats"]["deadLettered"], 0, "{view}");
    assert_eq!(view["stats"]["inFlight"], 0, "{view}");
    let sent: BTreeSet<String> = target
        .requests_to("/hook")
        .iter()
        .map(|r| r.webhook_id())
        .collect();
    assert_eq!(sent, matching, "exactly the matching five, once each");
    assert_eq!(target.requests_to("/hook").len(), 5);
    eventually(Duration::from_secs(10), || async {
        match app.message_count(&queue).await {
            Some(0) => Ok(()),
            other => Err(format!("the queue holds {other:?}")),
        }
    })
    .await;

    let labels = format!("{{consumer_id=\"{consumer}\",queue=\"{queue}\"}}");
    let text = app.get("/metrics").await.text().await.expect("metrics");
    assert_eq!(
        metric_sample(&text, &format!("workerrmq_filtered_total{labels}")),
        Some(5.0)
    );
    // The attempt log keeps one `filtered` record per refused message.
    let filtered = eventually(Duration::from_secs(15), || async {
        let page: Value = api
            .get(&format!(
                "/getAttempts?consumerId={consumer}&outcome=filtered"
            ))
            .await
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let records = page["attempts"].as_array().cloned().unwrap_or_default();
        if records.len() == 5 {
            Ok(records)
        } else {
            Err(format!("{} filtered records: {page}", records.len()))
        }
    })
    .await;
    for record in &filtered {
        assert_eq!(record["error"], Value::Null, "{record}");
        assert!(!matching.contains(record["messageId"].as_str().unwrap_or("")));
    }
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transform_reshapes_the_request_and_the_signature_covers_it() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    let (secret, key) = signing_secret();
    let transform = r#"{"body": {"id": body.orderId, "total": body.amount * 2}, "headers": {"x-tenant": headers["x-tenant"]}}"#;
    let (_, queue, consumer) = running_consumer_on(
        &app,
        &target,
        "transform",
        "/hook",
        json!({ "transform": transform, "signingSecret": secret }),
    )
    .await;
    let id = format!("{queue}-1");
    publish(
        &app,
        &queue,
        &id,
        json!({ "orderId": "o-17", "amount": 21, "secretNote": "not for the target" }),
        json!({ "x-tenant": "acme" }),
    )
    .await;
    let requests = target.wait_for_requests(1, DEADLINE).await;
    let request = &requests[0];
    let body: Value = serde_json::from_slice(&request.body).expect("a JSON body");
    assert_eq!(body, json!({ "id": "o-17", "total": 42 }));
    assert_eq!(request.header("x-tenant"), Some("acme"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    let timestamp = request.header("webhook-timestamp").expect("a timestamp");
    assert_eq!(
        request.header("webhook-signature"),
        Some(expected_signature(&key, &id, timestamp, &request.body).as_str()),
        "the signature covers the transformed body"
    );
    reference_library_verifies(&secret, request);

    // The transform is sealed at rest, and a viewer sees only that there
    // is one (it may add a header with a literal credential).
    let stored = app
        .stored("consumers")
        .await
        .find_one(mongodb::bson::doc! { "_id": &consumer })
        .await
        .expect("a find")
        .expect("the consumer is stored");
    assert!(
        stored
            .get_str("transform")
            .is_ok_and(|t| t.starts_with("enc:v1:")),
        "{stored}"
    );
    let viewer = app.create_api_key("viewer").await;
    let view = assert_json(
        app.get_with_auth(
            &format!("/getConsumer/{consumer}"),
            &crate::support::bearer(&viewer),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(view["transform"], "***", "{view}");
    let admin_view = Api::of(&app).consumer(&consumer).await;
    assert_eq!(admin_view["transform"], transform, "{admin_view}");
    target.stop().await;
}

/// The Standard Webhooks reference library (Python, in `.venv`, installed by
/// `./run.sh test`) verifies `request` under `secret`.
fn reference_library_verifies(secret: &str, request: &crate::support::target_server::Recorded) {
    const VERIFY: &str = "import base64, os, sys\n\
from standardwebhooks.webhooks import Webhook\n\
headers = {n: os.environ[n.upper().replace('-', '_')] for n in ('webhook-id', 'webhook-timestamp', 'webhook-signature')}\n\
Webhook(os.environ['SECRET']).verify(base64.b64decode(os.environ['BODY']), headers)\n";
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let header = |name| request.header(name).unwrap_or_default().to_owned();
    let outcome = std::process::Command::new(&python)
        .args(["-c", VERIFY])
        .env("SECRET", secret)
        .env(
            "BODY",
            base64::engine::general_purpose::STANDARD.encode(&request.body),
        )
        .env("WEBHOOK_ID", header("webhook-id"))
        .env("WEBHOOK_TIMESTAMP", header("webhook-timestamp"))
        .env("WEBHOOK_SIGNATURE", header("webhook-signature"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} does not run ({e}): run `./run.sh test` once, it installs standardwebhooks",
                python.display()
            )
        });
    assert!(
        outcome.status.success(),
        "the reference library refused the signature: {}",
        String::from_utf8_lossy(&outcome.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_failing_at_run_time_dead_letters_delivers_or_drops_as_asked() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    // `body.type` is a string here: comparing it to a number fails.
    let filter = "body.type > 5";

    let (api, dead, consumer) = running_consumer_on(
        &app,
        &target,
        "rule-dlq",
        "/dlq",
        json!({ "filter": filter, "retry": { "maxAttempts": 1 } }),
    )
    .await;
    publish(
        &app,
        &dead,
        &format!("{dead}-1"),
        json!({ "type": "payload-value-7f3a" }),
        json!({}),
    )
    .await;
    api.wait_for_consumer(&consumer, DEADLINE, "dead-lettered", |v| {
        v["stats"]["deadLettered"] == 1
    })
    .await;
    let letters = api.dead_letters(&dead).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["lastErrorKind"], "rule", "{letters:?}");
    let reason = letters[0]["lastError"].as_str().unwrap_or_default();
    assert!(reason.contains("filter failed"), "{reason}");
    // Told by types, never by the values it failed on.
    assert!(reason.contains("string"), "{reason}");
    assert!(!reason.contains("payload-value-7f3a"), "{reason}");

    let (api, delivered, consumer) = running_consumer_on(
        &app,
        &target,
        "rule-deliver",
        "/deliver",
        json!({ "filter": filter, "onRuleError": "deliver" }),
    )
    .await;
    let payload = json!({ "type": "x", "keep": [1, 2] });
    publish(
        &app,
        &delivered,
        &format!("{delivered}-1"),
        payload.clone(),
        json!({}),
    )
    .await;
    api.wait_for_consumer(&consumer, DEADLINE, "acked", |v| v["stats"]["acked"] == 1)
        .await;
    let requests = target.requests_to("/deliver");
    assert_eq!(requests.len(), 1);
    let body: Value = serde_json::from_slice(&requests[0].body).expect("JSON");
    assert_eq!(body, payload, "delivered unchanged");

    let (api, dropped, consumer) = running_consumer_on(
        &app,
        &target,
        "rule-drop",
        "/drop",
        json!({ "filter": filter, "onRuleError": "drop" }),
    )
    .await;
    publish(
        &app,
        &dropped,
        &format!("{dropped}-1"),
        json!({ "type": "x" }),
        json!({}),
    )
    .await;
    let view = api
        .wait_for_consumer(&consumer, DEADLINE, "dropped", |v| {
            v["stats"]["filtered"] == 1
        })
        .await;
    assert_eq!(view["stats"]["deadLettered"], 0, "{view}");
    assert!(target.requests_to("/drop").is_empty());
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_over_a_queue_leaves_its_messages_in_order() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let queue = app.unique_queue("dry-run");
    api.create_queue(&queue).await;
    let ids: Vec<String> = (0..3).map(|i| format!("{queue}-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        publish(
            &app,
            &queue,
            id,
            json!({ "type": if i == 1 { "skip" } else { "order" }, "amount": i }),
            json!({ "x-tenant": "acme" }),
        )
        .await;
    }
    let answer = assert_json(
        api.post(
            "/testConsumerRules",
            &json!({
                "filter": "body.type == 'order'",
                "transform": "{'body': {'n': body.amount}, 'headers': {'x-tenant': headers['x-tenant']}}",
                "fromQueue": { "queueName": queue, "limit": 10 },
            }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), 3, "{answer}");
    assert_eq!(results[0]["messageId"], ids[0].as_str());
    assert_eq!(results[0]["matched"], true);
    assert_eq!(results[0]["request"]["body"], json!({ "n": 0 }));
    assert_eq!(results[0]["request"]["headers"]["x-tenant"], "acme");
    assert_eq!(results[0]["error"], Value::Null);
    assert_eq!(results[1]["matched"], false);
    assert_eq!(results[1]["request"], Value::Null);
    assert_eq!(results[2]["request"]["body"], json!({ "n": 2 }));

    eventually(Duration::from_secs(10), || async {
        match app.message_count(&queue).await {
            Some(3) => Ok(()),
            other => Err(format!("the queue holds {other:?}")),
        }
    })
    .await;
    assert_eq!(
        ids_in_queue(&app, &queue, 3).await,
        ids,
        "still there, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_is_not_peeked_since_a_peek_would_count_as_an_attempt() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let queue = app.unique_queue("dry-run-quorum");
    app.create_queue(&queue, json!({ "queueType": "quorum" }))
        .await;
    let id = format!("{queue}-0");
    publish(&app, &queue, &id, json!({ "type": "order" }), json!({})).await;
    assert_conflict_naming(
        api.post(
            "/testConsumerRules",
            &json!({ "filter": "true", "fromQueue": { "queueName": queue } }),
        )
        .await,
        &["quorum", "samples"],
    )
    .await;
    // Untouched: still there, never handed out.
    let message = app.get_message(&queue).await.expect("the message is there");
    assert!(!message.delivery.redelivered, "never taken before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_over_samples_or_a_consumers_own_rules() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    let (api, _, consumer) = running_consumer_on(
        &app,
        &target,
        "dry-samples",
        "/hook",
        json!({ "filter": "headers['x-kind'] == 'a'", "onRuleError": "drop" }),
    )
    .await;
    api.pause(&consumer).await;
    let answer = assert_json(
        api.post(
            "/testConsumerRules",
            &json!({
                "consumerId": consumer,
                "samples": [
                    { "payload": { "v": 1 }, "headers": { "X-Kind": "a" } },
                    { "payload": "plain text", "headers": { "x-kind": "b" }, "contentType": "text/plain" },
                    { "payload": { "v": 3 } },
                ],
            }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        answer,
        json!({ "results": [
            { "matched": true, "request": { "body": { "v": 1 }, "headers": { "content-type": "application/json" } }, "error": null },
            { "matched": false, "request": null, "error": null },
            { "matched": false, "request": null, "error": answer["results"][2]["error"].clone() },
        ]})
    );
    let error = answer["results"][2]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("filter failed"),
        "a missing header is a run-time failure: {error}"
    );
    assert!(target.requests().is_empty(), "a dry run sends nothing");

    // Bad input: no rules at all, a rule that does not compile, both sources.
    for (body, field) in [
        (json!({ "samples": [{ "payload": 1 }] }), "`filter`"),
        (
            json!({ "transform": "{'body': ", "samples": [{ "payload": 1 }] }),
            "`transform`",
        ),
        (
            json!({ "filter": "true", "samples": [{ "payload": 1 }], "fromQueue": { "queueName": "q" } }),
            "`fromQueue`",
        ),
        (
            json!({ "filter": "true", "fromQueue": { "queueName": "q", "limit": 101 } }),
            "`fromQueue.limit`",
        ),
    ] {
        assert_refused_naming(api.post("/testConsumerRules", &body).await, field, &body).await;
    }
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_that_do_not_compile_are_refused_naming_the_field_and_nothing_changes() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    let (api, queue, consumer) = running_consumer_on(
        &app,
        &target,
        "bad-rules",
        "/hook",
        json!({ "filter": "body.ok == true" }),
    )
    .await;
    let before = api.consumer(&consumer).await;
    let long = format!("body.a == '{}'", "x".repeat(4096));
    let cases = [
        (
            json!({ "filter": "body.type == " }),
            "field `filter`: line 1, column",
        ),
        (
            json!({ "filter": "payload.type == 1" }),
            "field `filter`: line 1, column 1: unknown variable `payload`",
        ),
        (json!({ "filter": long }), "field `filter`"),
        (
            json!({ "transform": "{'headers': {'webhook-signature': 'forged'}}" }),
            "field `transform`: line 1, column 14",
        ),
        (
            json!({ "transform": "{'headers': {'X-WorkerRMQ-Attempt': '9'}}" }),
            "field `transform`",
        ),
        (
            json!({ "batch": { "maxMessages": 5, "maxWaitMs": 10 } }),
            "field `filter`",
        ),
        (json!({ "onRuleError": "ignore" }), "onRuleError"),
    ];
    for (fields, expected) in &cases {
        let mut update = fields.clone();
        update["consumerId"] = json!(consumer);
        assert_refused_naming(
            api.post("/updateConsumer", &update).await,
            expected,
            &update,
        )
        .await;

        let mut create = fields.clone();
        create["queueName"] = json!(queue);
        create["target"] = json!({ "type": "http", "url": target.url("/other") });
        if create.get("filter").is_none() && create.get("transform").is_none() {
            create["filter"] = json!("true");
        }
        assert_error(
            api.post("/createConsumer", &create).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
    }
    let after = api.consumer(&consumer).await;
    assert_eq!(after["filter"], before["filter"]);
    assert_eq!(after["transform"], Value::Null);
    assert_eq!(after["batch"], Value::Null);
    let consumers = assert_json(api.get("/getConsumers").await, StatusCode::OK).await;
    let on_queue = consumers.as_array().map(|all| {
        all.iter()
            .filter(|c| c["queueName"] == queue.as_str())
            .count()
    });
    assert_eq!(on_queue, Some(1), "no consumer was created");

    // `null` removes a rule.
    let updated = assert_json(
        api.post(
            "/updateConsumer",
            &json!({ "consumerId": consumer, "filter": null }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(updated["filter"], Value::Null);
    target.stop().await;
}

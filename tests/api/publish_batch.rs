//! `/messagePublishBatch`: many messages in one request, each answered on its
//! own and in order, the accepted ones enqueued once each in the order sent;
//! and what a batch as a whole may not be.

use std::time::Duration;

use lapin::options::BasicGetOptions;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::amqp_proxy::AmqpProxy;
use crate::support::{assert_error, assert_json, bearer, eventually, spawn_app, TestApp};

/// What one message of a test batch should come to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Published to the queue at this place of the test's list.
    Accepted(usize),
    NotFound,
    /// Refused 400 for this field of the message.
    Invalid(&'static str),
    Forbidden,
}

/// Takes every message off `queue` (auto-ack) on one channel: each one's
/// message id and payload, in queue order.
async fn drain(app: &TestApp, queue: &str) -> Vec<(String, Value)> {
    let channel = app.amqp_channel().await;
    let mut messages = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap_or_else(|e| panic!("basic_get on `{queue}` failed: {e}"))
    {
        let delivery = message.delivery;
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default();
        let payload = serde_json::from_slice(&delivery.data).expect("a JSON payload");
        messages.push((id, payload));
    }
    let _ = channel.close(200, "drained".into()).await;
    messages
}

/// A message that got as far as the broker (or the check before it) is
/// answered with its id: the one it was given, or a new one.
fn assert_message_id(result: &Value, message: &Value) {
    match message.get("messageId") {
        Some(id) => assert_eq!(&result["messageId"], id, "{result}"),
        None => assert!(result["messageId"].is_string(), "{result}"),
    }
}

/// POSTs `messages` as a batch with `auth`; asserts 200, one result per
/// message in order, each with the status `expected` says and counts that
/// add up; returns the results.
async fn publish_batch(
    app: &TestApp,
    auth: &str,
    messages: &[Value],
    expected: &[Expect],
) -> Vec<Value> {
    let body = assert_json(
        app.post_json_with_auth(
            "/messagePublishBatch",
            &json!({ "messages": messages }),
            auth,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let results = body["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), messages.len(), "one result per message");
    for (index, ((result, message), expect)) in
        results.iter().zip(messages).zip(expected).enumerate()
    {
        assert_eq!(result["index"], index, "results in input order: {result}");
        let status = result["status"].as_u64().expect("a status");
        match expect {
            Expect::Accepted(_) => {
                assert_eq!(status, 202, "{result}");
                assert!(result.get("error").is_none(), "{result}");
                assert_message_id(result, message);
            }
            Expect::NotFound => {
                assert_eq!(status, 404, "{result}");
                assert_eq!(result["error"]["error"], "not_found", "{result}");
                assert_message_id(result, message);
            }
            Expect::Invalid(field) => {
                assert_eq!(status, 400, "{result}");
                assert_eq!(result["error"]["error"], "bad_request", "{result}");
                let named = format!("`messages[{index}].{field}`");
                let text = result["error"]["message"].as_str().unwrap_or_default();
                assert!(text.contains(&named), "{named} is not named in {result}");
            }
            Expect::Forbidden => {
                assert_eq!(status, 403, "{result}");
                assert_eq!(result["error"]["error"], "forbidden", "{result}");
            }
        }
    }
    let accepted = expected
        .iter()
        .filter(|e| matches!(e, Expect::Accepted(_)))
        .count();
    assert_eq!(body["accepted"], accepted, "{}", body["accepted"]);
    assert_eq!(body["rejected"], messages.len() - accepted);
    results
}

/// Each queue holds exactly the accepted messages meant for it, once each,
/// in the order they were sent.
async fn assert_enqueued_in_order(
    app: &TestApp,
    queues: &[String],
    messages: &[Value],
    expected: &[Expect],
) {
    for (place, queue) in queues.iter().enumerate() {
        let wanted: Vec<Value> = messages
            .iter()
            .zip(expected)
            .filter(|(_, e)| **e == Expect::Accepted(place))
            .map(|(m, _)| m["message"].clone())
            .collect();
        let held: Vec<Value> = drain(app, queue)
            .await
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert_eq!(held.len(), wanted.len(), "messages in `{queue}`");
        assert!(
            held == wanted,
            "`{queue}` does not hold the accepted messages once each, in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_are_each_answered_in_order_and_enqueued_once_in_order() {
    let app = spawn_app().await;
    let queues = [app.unique_queue("batch_a"), app.unique_queue("batch_b")];
    for queue in &queues {
        app.create_queue(queue, json!({})).await;
    }
    let missing = app.unique_queue("batch_missing");
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let mut messages = Vec::new();
    let mut expected = Vec::new();
    for i in 0..1_000 {
        let (message, expect) = match i % 10 {
            0..=3 => (
                json!({ "queueName": queues[0], "message": { "i": i }, "messageId": format!("{run}-{i}") }),
                Expect::Accepted(0),
            ),
            4..=6 => (
                json!({ "queueName": queues[1], "message": { "i": i, "pad": "x".repeat(i % 97) } }),
                Expect::Accepted(1),
            ),
            7 => (
                json!({ "queueName": missing, "message": { "i": i }, "messageId": format!("{run}-{i}") }),
                Expect::NotFound,
            ),
            8 => (
                json!({ "queueName": queues[0], "messageId": format!("{run}-{i}") }),
                Expect::Invalid("message"),
            ),
            // The same message id to the same queue as the message before
            // the last: it waits for that one's confirm, and keeps its place.
            _ => (
                json!({ "queueName": queues[1], "message": { "i": i }, "messageId": format!("{run}-same") }),
                Expect::Accepted(1),
            ),
        };
        messages.push(message);
        expected.push(expect);
    }

    publish_batch(&app, &app.admin_auth(), &messages, &expected).await;

    assert_enqueued_in_order(&app, &queues, &messages, &expected).await;
    assert!(!app.queue_exists(&missing).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_in_a_batch_route_each_message_and_a_missing_one_is_answered_404() {
    let app = spawn_app().await;
    let queue = app.unique_queue("routed");
    app.create_queue(&queue, json!({})).await;
    let exchange = app.unique_exchange("events");
    assert_json(
        app.post_json(
            "/createExchange",
            &json!({ "exchangeName": exchange, "type": "topic" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_json(
        app.post_json(
            "/bindQueue",
            &json!({ "queueName": queue, "exchangeName": exchange, "routingKey": "order.*" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    // Never made: the prefix keeps it the test's own all the same.
    let nowhere = format!("{}nowhere", app.prefix);
    let messages = [
        json!({ "exchange": exchange, "routingKey": "order.created", "message": { "n": 1 } }),
        json!({ "exchange": exchange, "routingKey": "invoice.created", "message": { "n": 2 } }),
        json!({ "exchange": nowhere, "routingKey": "order.created", "message": { "n": 3 } }),
        json!({ "queueName": queue, "exchange": exchange, "message": { "n": 4 } }),
        json!({ "queueName": queue, "message": { "n": 5 }, "headers": { "x-workerrmq-attempt": 1 } }),
        json!({ "queueName": queue, "message": { "n": 6 }, "persistent": "yes" }),
        json!({ "exchange": exchange, "routingKey": "order.paid", "message": { "n": 7 } }),
    ];
    let expected = [
        Expect::Accepted(0),
        Expect::NotFound,
        Expect::NotFound,
        Expect::Invalid("exchange"),
        Expect::Invalid("headers.x-workerrmq-attempt"),
        Expect::Invalid("persistent"),
        Expect::Accepted(0),
    ];
    publish_batch(&app, &app.admin_auth(), &messages, &expected).await;

    // A message that is not an object at all is named whole.
    let body = assert_json(
        app.post_json(
            "/messagePublishBatch",
            &json!({ "messages": ["not an object", messages[0]] }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["results"][0]["status"], 400, "{body}");
    let whole = body["results"][0]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(whole.contains("`messages[0]`"), "{body}");
    assert_eq!(body["results"][1]["status"], 202, "{body}");
    assert_eq!(
        (&body["accepted"], &body["rejected"]),
        (&json!(1), &json!(1))
    );

    let held: Vec<Value> = drain(&app, &queue)
        .await
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let n = |n: u32| json!({ "n": n });
    assert_eq!(held, vec![n(1), n(7), n(1)]);
    // A missing exchange was asked after, not published to: the shared
    // channel is still there for the next publish.
    app.publish(&queue, json!({ "after": true })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_none_or_over_a_thousand_or_not_an_object_with_messages_is_refused_whole() {
    let app = spawn_app().await;
    let queue = app.unique_queue("refused_whole");
    app.create_queue(&queue, json!({})).await;
    let one = json!({ "queueName": queue, "message": { "n": 1 } });

    for (body, named) in [
        (json!({ "messages": vec![one.clone(); 1_001] }), "messages"),
        (json!({ "messages": [] }), "messages"),
        (json!({}), "messages"),
        (json!({ "messages": one }), "messages"),
        (json!([one]), "object"),
        (json!({ "messages": [one], "extra": 1 }), "extra"),
    ] {
        let error = assert_error(
            app.post_json("/messagePublishBatch", &body).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
        let text = error["message"].as_str().unwrap_or_default();
        assert!(text.contains(named), "`{named}` is not in {error}");
    }
    assert_eq!(
        app.message_count(&queue).await,
        Some(0),
        "nothing published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_body_over_max_batch_body_bytes_is_refused_with_413() {
    let app = spawn_app().await;
    let queue = app.unique_queue("too_big");
    app.create_queue(&queue, json!({})).await;
    // 20 MiB: 20 messages of 1 MiB, over the 16 MiB default.
    let big = "x".repeat(1_048_576);
    let messages: Vec<Value> = (0..20)
        .map(|_| json!({ "queueName": queue, "message": big }))
        .collect();
    let body = serde_json::to_vec(&json!({ "messages": messages })).expect("serializable");
    assert!(body.len() > 20 * 1_048_576);

    let error = assert_error(
        app.post_raw("/messagePublishBatch", Some("application/json"), body)
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("MAX_BATCH_BODY_BYTES")),
        "{error}"
    );
    assert_eq!(
        app.message_count(&queue).await,
        Some(0),
        "nothing published"
    );

    // Under the limit (and over MAX_BODY_BYTES, 1 MiB), a batch is read.
    let messages: Vec<Value> = (0..3)
        .map(|_| json!({ "queueName": queue, "message": big }))
        .collect();
    publish_batch(
        &app,
        &app.admin_auth(),
        &messages,
        &[Expect::Accepted(0); 3],
    )
    .await;
    assert_eq!(app.message_count(&queue).await, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishers_message_for_a_builtin_queue_is_refused_403_and_the_others_are_accepted() {
    let app = spawn_app().await;
    let publisher = bearer(&app.create_api_key("publisher").await);
    // With BUILTIN_CONSUMERS off the queue may not exist yet; make it.
    let users = app.unique_queue("users_queue");
    app.create_queue(&users, json!({})).await;
    let ordinary = app.unique_queue("ordinary");
    app.create_queue(&ordinary, json!({})).await;
    let event =
        |n: u32| json!({ "event_type": "user.delete", "email": format!("victim{n}@example.com") });
    let messages = vec![
        json!({ "queueName": ordinary, "message": event(1) }),
        json!({ "queueName": users, "message": event(2), "messageId": "builtin-2" }),
        json!({ "queueName": ordinary, "message": event(3) }),
    ];
    let expected = [Expect::Accepted(0), Expect::Forbidden, Expect::Accepted(0)];

    let results = publish_batch(&app, &publisher, &messages, &expected).await;

    let refusal = results[1]["error"]["message"].as_str().unwrap_or_default();
    assert!(
        refusal.contains("admin") && refusal.contains(&users),
        "{refusal}"
    );
    assert_eq!(results[1]["messageId"], "builtin-2");
    assert_eq!(app.message_count(&users).await, Some(0));
    assert_enqueued_in_order(&app, &[ordinary], &messages, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_spec_describes_the_batch_its_messages_and_its_answer() {
    let app = spawn_app().await;
    let spec = assert_json(
        app.request_anonymous(reqwest::Method::GET, "/openapi.json", None)
            .await,
        StatusCode::OK,
    )
    .await;
    let operation = &spec["paths"]["/messagePublishBatch"]["post"];
    let request = operation["requestBody"]["content"]["application/json"]["schema"].to_string();
    assert!(request.contains("PublishBatchRequest"), "{operation}");
    for status in ["200", "400", "401", "403", "413", "415"] {
        assert!(
            operation["responses"][status].is_object(),
            "no {status} in {operation}"
        );
    }
    let schemas = &spec["components"]["schemas"];
    let messages = &schemas["PublishBatchRequest"]["properties"]["messages"];
    assert_eq!(messages["minItems"], 1, "{messages}");
    assert_eq!(messages["maxItems"], 1000, "{messages}");
    assert!(
        messages["items"].to_string().contains("PublishRequest"),
        "{messages}"
    );
    let answer = &schemas["PublishBatchAnswer"]["properties"];
    for field in ["results", "accepted", "rejected"] {
        assert!(answer[field].is_object(), "no {field} in {answer}");
    }
    let result = &schemas["MessageResult"]["properties"];
    for field in ["index", "messageId", "status", "error"] {
        assert!(result[field].is_object(), "no {field} in {result}");
    }
}

/// A proxy plays RabbitMQ's resource alarm for the gateway's publish
/// connection only (`support::amqp_proxy`): once the gateway knows of the
/// block, every message of a batch is answered 503 in its result, at once,
/// and none is sent, so none is enqueued even after the block lifts.
///
/// The block reaches the gateway with the broker's next frame. A publish
/// sent before that is answered 503 when the block is seen, yet may still
/// be stored once the block lifts (the caller was not told it is safe: at
/// least once), so the wait for the block goes through a probe queue whose
/// count is not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_broker_blocks_publishing_each_message_of_a_batch_is_answered_503() {
    let (proxy, app) = AmqpProxy::before_publish_connection("test-batch-blocked").await;
    let queue = app.unique_queue("blocked_batch");
    let probe = app.unique_queue("blocked_probe");
    app.create_queue(&queue, json!({})).await;
    app.create_queue(&probe, json!({})).await;
    let messages: Vec<Value> = (0..3)
        .map(|n| json!({ "queueName": queue, "message": { "n": n }, "messageId": format!("blocked-{n}") }))
        .collect();

    proxy.block("low on memory (test)");
    eventually(Duration::from_secs(5), || async {
        let response = app
            .post_json(
                "/messagePublish",
                &json!({ "queueName": probe, "message": { "probe": true } }),
            )
            .await;
        match response.status() {
            StatusCode::SERVICE_UNAVAILABLE => Ok(()),
            other => Err(format!("the probe was answered {other}")),
        }
    })
    .await;

    let batch = json!({ "messages": messages });
    let body = assert_json(
        app.post_json("/messagePublishBatch", &batch).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["accepted"], 0, "{body}");
    assert_eq!(body["rejected"], 3, "{body}");
    for (n, result) in body["results"]
        .as_array()
        .expect("results")
        .iter()
        .enumerate()
    {
        assert_eq!(result["status"], 503, "{result}");
        assert_eq!(result["error"]["error"], "broker_unavailable", "{result}");
        assert_eq!(result["messageId"], format!("blocked-{n}"), "{result}");
    }
    assert_eq!(
        app.message_count(&queue).await,
        Some(0),
        "nothing enqueued while blocked"
    );

    proxy.unblock();
    eventually(Duration::from_secs(5), || async {
        let body = assert_json(
            app.post_json("/messagePublishBatch", &batch).await,
            StatusCode::OK,
        )
        .await;
        match body["accepted"].as_u64() {
            Some(3) => Ok(()),
            _ => Err(format!("not taken yet: {body}")),
        }
    })
    .await;
    // Every answer after the block lifted was a confirm or a refusal made
    // before sending, and the refused batch was never sent: exactly one
    // batch is in the queue.
    assert_eq!(app.message_count(&queue).await, Some(3));
}

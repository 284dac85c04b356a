use futures_util::future::join_all;
use lapin::types::AMQPValue;
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

use crate::support::{assert_error, assert_json, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_message_arrives_as_sent() {
    let app = spawn_app().await;
    let queue = app.unique_queue("orders");
    app.create_queue(&queue, json!({})).await;
    let message = json!({ "order": 42, "items": ["a", "b"], "note": "ñandú" });

    let body = assert_json(
        app.post_json(
            "/messagePublish",
            &json!({
                "queueName": queue,
                "message": message,
                "messageId": "order-42",
                "headers": { "x-tenant": "acme", "x-priority-hint": 3, "x-test": true },
            }),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(
        body,
        json!({ "message": "Message has been published successfully.", "messageId": "order-42" })
    );

    let delivered = app.get_message(&queue).await.expect("the message").delivery;
    assert_eq!(
        delivered.data,
        serde_json::to_vec(&message).expect("serializable")
    );
    let properties = &delivered.properties;
    assert_eq!(
        properties.message_id().as_ref().map(|id| id.as_str()),
        Some("order-42")
    );
    assert_eq!(properties.delivery_mode(), &Some(2));
    assert_eq!(
        properties.content_type().as_ref().map(|ct| ct.as_str()),
        Some("application/json")
    );
    let headers = properties
        .headers()
        .as_ref()
        .expect("headers")
        .inner()
        .clone();
    assert_eq!(
        headers.get("x-tenant"),
        Some(&AMQPValue::LongString("acme".into()))
    );
    assert_eq!(
        headers.get("x-priority-hint"),
        Some(&AMQPValue::LongLongInt(3))
    );
    assert_eq!(headers.get("x-test"), Some(&AMQPValue::Boolean(true)));
    assert!(
        app.get_message(&queue).await.is_none(),
        "exactly one message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_message_id_the_gateway_makes_one() {
    let app = spawn_app().await;
    let queue = app.unique_queue("orders");
    app.create_queue(&queue, json!({})).await;

    let id = app.publish(&queue, json!("just a string")).await;

    uuid::Uuid::parse_str(&id).expect("the message id is a UUID");
    let delivered = app.get_message(&queue).await.expect("the message").delivery;
    assert_eq!(
        delivered
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str()),
        Some(id.as_str())
    );
    assert_eq!(delivered.data, br#""just a string""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_persistent_messages_use_delivery_mode_1() {
    let app = spawn_app().await;
    let queue = app.unique_queue("transient");
    app.create_queue(&queue, json!({})).await;

    let response = app
        .post_json(
            "/messagePublish",
            &json!({ "queueName": queue, "message": { "n": 1 }, "persistent": false }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    let delivered = app.get_message(&queue).await.expect("the message").delivery;
    assert_eq!(delivered.properties.delivery_mode(), &Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_missing_queue_is_404() {
    let app = spawn_app().await;
    let queue = app.unique_queue("never_created");

    assert_error(
        app.post_json(
            "/messagePublish",
            &json!({ "queueName": queue, "message": { "n": 1 } }),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert!(!app.queue_exists(&queue).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_missing_exchange_is_404_and_breaks_nothing() {
    let app = spawn_app().await;
    let queue = app.unique_queue("orders");
    app.create_queue(&queue, json!({})).await;
    app.publish(&queue, json!({ "before": true })).await;
    let exchange = app.unique_exchange("never_created");

    assert_error(
        app.post_json(
            "/messagePublish",
            &json!({ "exchange": exchange, "routingKey": "k", "message": { "n": 1 } }),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // The shared publish channel survived.
    app.publish(&queue, json!({ "after": true })).await;
    assert_eq!(app.message_count(&queue).await, Some(2));
    assert!(!app.exchange_exists(&exchange).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_needs_a_destination_and_a_message() {
    let app = spawn_app().await;
    let queue = app.unique_queue("orders");
    app.create_queue(&queue, json!({})).await;
    let exchange = app.unique_exchange("events");

    for body in [
        json!({ "message": { "n": 1 } }),
        json!({ "queueName": queue }),
        json!({ "queueName": queue, "message": null }),
        json!({ "queueName": queue, "exchange": exchange, "message": { "n": 1 } }),
        json!({ "queueName": queue, "message": { "n": 1 }, "headers": { "x-nested": { "a": 1 } } }),
    ] {
        assert_error(
            app.post_json("/messagePublish", &body).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
    }
    assert_eq!(app.message_count(&queue).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_are_all_confirmed_and_all_arrive() {
    let app = spawn_app().await;
    let queue = app.unique_queue("busy");
    app.create_queue(&queue, json!({})).await;

    let answers = join_all((0..50).map(|n| {
        let app = &app;
        let body =
            json!({ "queueName": queue, "message": { "n": n }, "messageId": format!("m-{n}") });
        async move { app.post_json("/messagePublish", &body).await }
    }))
    .await;
    for answer in answers {
        assert_json(answer, StatusCode::ACCEPTED).await;
    }

    assert_eq!(app.message_count(&queue).await, Some(50));
    let mut ids = Vec::new();
    while let Some(message) = app.get_message(&queue).await {
        let id = message.delivery.properties.message_id().clone();
        ids.push(id.expect("a message id").to_string());
    }
    ids.sort();
    let mut expected: Vec<String> = (0..50).map(|n| format!("m-{n}")).collect();
    expected.sort();
    assert_eq!(ids, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_each_get_their_own_answer() {
    // Routable and unroutable publishes interleaved: every 202 is a stored
    // message and every 404 a dropped one, never the other way round.
    let app = spawn_app().await;
    let queue = app.unique_queue("mixed");
    let missing = app.unique_queue("missing");
    app.create_queue(&queue, json!({})).await;
    let publishes = (0..200).map(|i| {
        let target = if i % 2 == 0 { &queue } else { &missing };
        let app = &app;
        async move {
            let response = app
                .post_json(
                    "/messagePublish",
                    &json!({ "queueName": target, "message": { "i": i } }),
                )
                .await;
            (i, response.status())
        }
    });
    for (i, status) in join_all(publishes).await {
        let expected = if i % 2 == 0 {
            StatusCode::ACCEPTED
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(status, expected, "publish {i}");
    }
    assert_eq!(app.message_count(&queue).await, Some(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_publishes_a_random_third_unroutable_each_get_their_own_answer() {
    // On the gateway's shared publish channels, 1,000 requests at a time (a
    // connection each: the test and the app share one process and its open
    // file limit): a 202 must be a stored message and a 404 one the broker
    // returned, whatever the interleaving. Message ids repeat (each used four times, to the queue
    // and to the missing queue alike), so publishes with the same id to the
    // same place are in flight together too.
    use futures_util::StreamExt;
    use rand::seq::SliceRandom;

    const PUBLISHES: usize = 10_000;
    let app = spawn_app().await;
    let queue = app.unique_queue("many");
    let missing = app.unique_queue("nowhere");
    app.create_queue(&queue, json!({})).await;
    let mut unroutable = vec![false; PUBLISHES];
    unroutable[..PUBLISHES / 3].fill(true);
    unroutable.shuffle(&mut rand::rng());

    let publishes = unroutable.iter().enumerate().map(|(i, &unroutable)| {
        let app = &app;
        let target = if unroutable { &missing } else { &queue };
        let body = json!({
            "queueName": target,
            "message": { "i": i },
            "messageId": format!("m-{}", i % (PUBLISHES / 4)),
        });
        async move {
            let response = app.post_json("/messagePublish", &body).await;
            (i, response.status())
        }
    });
    let all = futures_util::stream::iter(publishes)
        .buffer_unordered(1_000)
        .collect::<Vec<_>>();
    let answers = tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("10,000 publishes answered within 120 s");

    for (i, status) in answers {
        let expected = if unroutable[i] {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::ACCEPTED
        };
        assert_eq!(status, expected, "publish {i}");
    }
    let routable = unroutable.iter().filter(|&&u| !u).count();
    assert_eq!(app.message_count(&queue).await, Some(routable as u32));
    assert_eq!(
        app.message_count(&missing).await,
        None,
        "the unroutable publishes created nothing"
    );
}

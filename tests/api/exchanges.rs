use reqwest::StatusCode;
use serde_json::json;

use crate::support::{assert_error, assert_json, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_exchange_is_idempotent_and_conflicts_on_another_type() {
    let app = spawn_app().await;
    let exchange = app.unique_exchange("events");
    let declare = json!({ "exchangeName": exchange, "type": "topic" });

    let created = assert_json(
        app.post_json("/createExchange", &declare).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(created["exchangeName"], exchange.as_str(), "{created}");
    assert!(app.exchange_exists(&exchange).await);

    let again = app.post_json("/createExchange", &declare).await;
    assert_eq!(again.status(), StatusCode::OK);

    assert_error(
        app.post_json(
            "/createExchange",
            &json!({ "exchangeName": exchange, "type": "fanout" }),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;

    // The refusal broke nothing: the next declaration works.
    let next = app.unique_exchange("next");
    let next_created = app
        .post_json(
            "/createExchange",
            &json!({ "exchangeName": next, "type": "direct" }),
        )
        .await;
    assert_eq!(next_created.status(), StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_exchange_type_is_a_bad_request() {
    let app = spawn_app().await;
    let exchange = app.unique_exchange("odd");

    assert_error(
        app.post_json(
            "/createExchange",
            &json!({ "exchangeName": exchange, "type": "sideways" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(!app.exchange_exists(&exchange).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_queues_receive_what_is_published_to_the_exchange() {
    let app = spawn_app().await;
    let exchange = app.unique_exchange("events");
    let queue = app.unique_queue("orders");
    app.create_queue(&queue, json!({})).await;
    let created = app
        .post_json(
            "/createExchange",
            &json!({ "exchangeName": exchange, "type": "topic" }),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);

    let bound = assert_json(
        app.post_json(
            "/bindQueue",
            &json!({ "queueName": queue, "exchangeName": exchange, "routingKey": "orders.*" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(bound["queueName"], queue.as_str(), "{bound}");

    let published = assert_json(
        app.post_json(
            "/messagePublish",
            &json!({
                "exchange": exchange,
                "routingKey": "orders.created",
                "message": { "order": 42 },
            }),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;

    let delivered = app
        .get_message(&queue)
        .await
        .expect("the bound queue received the message");
    assert_eq!(delivered.delivery.data, br#"{"order":42}"#);
    assert_eq!(delivered.delivery.exchange.as_str(), exchange);
    assert_eq!(delivered.delivery.routing_key.as_str(), "orders.created");
    assert_eq!(
        delivered
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str()),
        published["messageId"].as_str()
    );

    // A routing key nothing is bound to reaches no queue: 404.
    assert_error(
        app.post_json(
            "/messagePublish",
            &json!({
                "exchange": exchange,
                "routingKey": "invoices.created",
                "message": { "invoice": 7 },
            }),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(app.message_count(&queue).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_needs_both_the_queue_and_the_exchange() {
    let app = spawn_app().await;
    let exchange = app.unique_exchange("events");
    let queue = app.unique_queue("orders");
    app.create_queue(&queue, json!({})).await;
    let created = app
        .post_json(
            "/createExchange",
            &json!({ "exchangeName": exchange, "type": "direct" }),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let missing_queue = app.unique_queue("never_created");
    let missing_exchange = app.unique_exchange("never_created");

    assert_error(
        app.post_json(
            "/bindQueue",
            &json!({ "queueName": missing_queue, "exchangeName": exchange }),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.post_json(
            "/bindQueue",
            &json!({ "queueName": queue, "exchangeName": missing_exchange }),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    assert!(!app.queue_exists(&missing_queue).await);
    assert!(!app.exchange_exists(&missing_exchange).await);
}

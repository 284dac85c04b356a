//! The consumer routes as an operator meets them: validation that changes
//! nothing, secrets that never come back, and the guards around queues
//! that still have consumers.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::target_server::TargetServer;
use crate::support::{assert_error, assert_json, eventually, spawn_app, spawn_app_with};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_consumers_are_refused_and_nothing_is_stored() {
    let app = spawn_app_with(&[("FORWARD_ALLOWED_HOSTS", "127.0.0.1")]).await;
    let queue = app.unique_queue("orders");
    app.create_queue(&queue, json!({})).await;
    let target = json!({ "type": "http", "url": "http://127.0.0.1:9/hook" });

    let cases = [
        (json!({ "queueName": queue }), "target"),
        (
            json!({ "queueName": queue, "target": { "type": "http", "url": "http://10.1.2.3/x" } }),
            "FORWARD_ALLOWED_HOSTS",
        ),
        (
            json!({ "queueName": queue, "target": { "type": "http", "url": "ftp://127.0.0.1/x" } }),
            "target.url",
        ),
        (
            json!({ "queueName": queue, "target": target, "signingSecret": "plain" }),
            "signingSecret",
        ),
        (
            json!({ "queueName": queue, "target": target, "prefetch": 0 }),
            "prefetch",
        ),
        (
            json!({ "queueName": queue, "target": target, "retry": { "maxAttempts": 0 } }),
            "maxAttempts",
        ),
        (
            json!({ "queueName": queue, "target": target, "retry": { "maxAttempts": "x" } }),
            "maxAttempts",
        ),
        (
            json!({ "queueName": queue, "target": { "type": "http", "url": "http://127.0.0.1:9/", "headers": { "webhook-id": "x" } } }),
            "webhook-id",
        ),
        (json!({ "queueName": "amq.nope", "target": target }), "amq."),
    ];
    for (body, named) in cases {
        let error = assert_error(
            app.post_json("/createConsumer", &body).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
        assert!(
            error["message"]
                .as_str()
                .unwrap_or_default()
                .contains(named),
            "{body} → {error} should name `{named}`"
        );
    }
    assert_error(
        app.post_json(
            "/createConsumer",
            &json!({ "queueName": app.unique_queue("missing"), "target": target }),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    let consumers = assert_json(app.get("/getConsumers").await, StatusCode::OK).await;
    assert_eq!(consumers, json!([]), "a refused consumer was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_is_listed_without_its_secrets_and_deleted_on_request() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    let queue = app.unique_queue("signed");
    app.create_queue(&queue, json!({})).await;
    let created = assert_json(
        app.post_json(
            "/createConsumer",
            &json!({
                "queueName": queue,
                "consumerName": "billing",
                "prefetch": 3,
                "signingSecret": SECRET,
                "target": { "type": "http", "url": target.url("/hook"),
                            "headers": { "authorization": "Bearer target-token" } },
            }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        created["message"],
        "Consumer has been created successfully."
    );
    let id = created["consumerId"]
        .as_str()
        .expect("a consumerId")
        .to_owned();

    let one = eventually(Duration::from_secs(10), || async {
        let one = assert_json(app.get(&format!("/getConsumer/{id}")).await, StatusCode::OK).await;
        if one["state"] == "running" {
            Ok(one)
        } else {
            Err(format!("state is {}", one["state"]))
        }
    })
    .await;
    assert_eq!(one["consumerName"], "billing");
    assert_eq!(one["queueName"], queue.as_str());
    assert_eq!(one["prefetch"], 3);
    assert_eq!(one["retry"]["maxAttempts"], 5, "the default retry policy");
    assert_eq!(one["signed"], true);
    for field in ["delivered", "acked", "retried", "deadLettered", "inFlight"] {
        assert_eq!(one["stats"][field], 0, "{field}");
    }
    let listed = assert_json(app.get("/getConsumers").await, StatusCode::OK).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    for text in [one.to_string(), listed.to_string(), created.to_string()] {
        assert!(
            !text.contains("MfKQ9r8"),
            "the signing secret leaked: {text}"
        );
        assert!(
            !text.contains("target-token"),
            "a target header value leaked: {text}"
        );
    }

    // Consumers still registered keep their queue from being deleted.
    assert_error(
        app.post_json("/deleteQueue", &json!({ "queueName": queue }))
            .await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    assert!(app.queue_exists(&queue).await);

    let deleted = assert_json(
        app.post_json("/deleteConsumer", &json!({ "consumerId": id }))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(deleted["deleted"], 1);
    assert_error(
        app.get(&format!("/getConsumer/{id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.post_json("/deleteConsumer", &json!({ "consumerId": id }))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.get("/getConsumer/not-a-uuid").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.post_json("/deleteConsumer", &json!({})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert_json(
        app.post_json("/deleteQueue", &json!({ "queueName": queue }))
            .await,
        StatusCode::OK,
    )
    .await;
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_with_only_a_queue_forwards_to_the_default_target() {
    let target = TargetServer::start().await;
    let default_url = target.url("/orders");
    let app = spawn_app_with(&[("DEFAULT_TARGET_URL", default_url.as_str())]).await;
    let queue = app.unique_queue("default");
    app.create_queue(&queue, json!({})).await;
    let created = assert_json(
        app.post_json("/createConsumer", &json!({ "queueName": queue }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(created["consumer"]["target"]["url"], default_url.as_str());
    let id = app.publish(&queue, json!({ "order": 1 })).await;
    let requests = target.wait_for_requests(1, Duration::from_secs(10)).await;
    assert_eq!(requests[0].path, "/orders");
    assert_eq!(requests[0].webhook_id(), id);

    let deleted = assert_json(
        app.post_json("/deleteConsumer", &json!({ "queueName": queue }))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(deleted["deleted"], 1);
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_are_found_by_queue_through_an_index() {
    // `deleteConsumer` by queue and `deleteQueue` look consumers up by
    // queue name; at 10,000 definitions a scan apiece stalled both.
    let app = spawn_app().await;
    let consumers = app.stored("consumers").await;
    eventually(Duration::from_secs(10), || async {
        let names = consumers
            .list_index_names()
            .await
            .map_err(|e| e.to_string())?;
        if names.iter().any(|name| name == "queueName_1") {
            Ok(())
        } else {
            Err(format!("indexes on consumers: {names:?}"))
        }
    })
    .await;
}

//! Bad input gets a clear 4xx and changes nothing.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{assert_error, spawn_app, spawn_app_with, TestApp};

/// Whether the broker lists a queue of this exact name.
async fn broker_lists(app: &TestApp, queue: &str) -> bool {
    app.broker_queues()
        .await
        .iter()
        .any(|row| row["name"] == queue)
}

/// Non-exclusive server-named queues: what declaring an empty name would
/// leave behind.
async fn server_named_queues(app: &TestApp) -> BTreeSet<String> {
    app.broker_queues()
        .await
        .iter()
        .filter(|row| row["exclusive"] != true)
        .filter_map(|row| row["name"].as_str())
        .filter(|name| name.starts_with("amq.gen-"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_a_bad_request() {
    let app = spawn_app().await;
    let queue = app.unique_queue("malformed");

    for body in [
        format!(r#"{{"queueName": "{queue}""#),
        format!(r#"{{"queueName": '{queue}'}}"#),
        format!(r#"{{"queueName": "{queue}"}} trailing"#),
    ] {
        let body = assert_error(
            app.post_raw("/createQueue", Some("application/json"), body)
                .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
        let message = body["message"].as_str().expect("a message");
        assert!(message.contains("not valid JSON"), "{message}");
    }
    assert!(!app.queue_exists(&queue).await);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_of_the_wrong_type_is_named() {
    let app = spawn_app().await;
    let queue = app.unique_queue("typed");

    let body = assert_error(
        app.post_json(
            "/createQueue",
            &json!({ "queueName": queue, "durable": "yes" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;

    let message = body["message"].as_str().expect("a message");
    assert!(message.contains("durable"), "{message}");
    assert!(!app.queue_exists(&queue).await);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_refused_and_named() {
    let app = spawn_app().await;
    let queue = app.unique_queue("typo");

    let body = assert_error(
        app.post_json(
            "/createQueue",
            &json!({ "queueName": queue, "durible": true }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;

    let message = body["message"].as_str().expect("a message");
    assert!(message.contains("durible"), "{message}");
    assert!(!app.queue_exists(&queue).await);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_not_declared_json_are_unsupported() {
    let app = spawn_app().await;
    let queue = app.unique_queue("untyped");
    let body = json!({ "queueName": queue }).to_string();

    for content_type in [None, Some("text/plain")] {
        assert_error(
            app.post_raw("/createQueue", content_type, body.clone())
                .await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
    }
    assert!(!app.queue_exists(&queue).await);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused() {
    let app = spawn_app_with(&[("MAX_BODY_BYTES", "1024")]).await;
    let queue = app.unique_queue("small");
    app.create_queue(&queue, json!({})).await;
    let body = json!({ "queueName": queue, "message": "x".repeat(2048) });

    assert_error(
        app.post_json("/messagePublish", &body).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;

    assert_eq!(app.message_count(&queue).await, Some(0));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_reserved_queue_names_are_refused() {
    let app = spawn_app().await;
    let server_named_before = server_named_queues(&app).await;
    let too_long = format!("{}{}", app.prefix, "x".repeat(256 - app.prefix.len()));
    assert_eq!(too_long.len(), 256);
    let reserved = format!("amq.{}reserved", app.prefix);

    for name in ["", too_long.as_str(), reserved.as_str()] {
        assert_error(
            app.post_json("/createQueue", &json!({ "queueName": name }))
                .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
    }

    assert!(!broker_lists(&app, &too_long).await);
    assert!(!broker_lists(&app, &reserved).await);
    assert!(!app.queue_exists(&reserved).await);
    // An empty name would have made the broker name the queue, and given
    // it a `.dlq` companion called just that.
    assert!(!app.queue_exists(".dlq").await);
    let server_named_after = server_named_queues(&app).await;
    let new: Vec<_> = server_named_after
        .difference(&server_named_before)
        .collect();
    assert!(new.is_empty(), "server-named queues appeared: {new:?}");
    app.cleanup().await;
}

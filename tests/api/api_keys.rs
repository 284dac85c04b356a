use reqwest::StatusCode;
use serde_json::json;

use crate::support::{assert_error, assert_json, bearer, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_mints_a_key_that_authenticates() {
    let app = spawn_app().await;

    let body = assert_json(
        app.post_json(
            "/createApiKey",
            &json!({ "name": "billing service", "role": "publisher" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;

    let key_id = body["keyId"].as_str().expect("a keyId");
    let api_key = body["apiKey"].as_str().expect("an apiKey");
    assert!(!key_id.is_empty());
    assert!(api_key.starts_with("wrmq_"), "{api_key}");
    assert!(api_key.contains(key_id), "{api_key} does not name {key_id}");

    let queue = app.unique_queue("orders");
    app.create_queue(&queue, json!({})).await;
    let published = app
        .post_json_with_auth(
            "/messagePublish",
            &json!({ "queueName": queue, "message": { "n": 1 } }),
            &bearer(api_key),
        )
        .await;
    assert_eq!(published.status(), StatusCode::ACCEPTED);
    assert_eq!(app.message_count(&queue).await, Some(1));

    // Only its own secret opens it.
    let forged = format!("wrmq_{key_id}_not-the-secret");
    assert_error(
        app.get_with_auth("/getQueues", &bearer(&forged)).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_need_a_known_role_and_a_name() {
    let app = spawn_app().await;

    for body in [
        json!({ "name": "root key", "role": "root" }),
        json!({ "name": "", "role": "viewer" }),
        json!({ "role": "viewer" }),
    ] {
        assert_error(
            app.post_json("/createApiKey", &body).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
    }
}

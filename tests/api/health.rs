use reqwest::StatusCode;
use serde_json::json;

use crate::support::{assert_error, assert_json, spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_ok() {
    let app = spawn_app().await;

    let body = assert_json(
        app.request_anonymous(reqwest::Method::GET, "/health", None)
            .await,
        StatusCode::OK,
    )
    .await;

    assert_eq!(body, json!({ "status": "ok" }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_when_broker_and_store_are_up() {
    let app = spawn_app().await;

    let body = assert_json(
        app.request_anonymous(reqwest::Method::GET, "/ready", None)
            .await,
        StatusCode::OK,
    )
    .await;

    // One broker address: both connections are on it.
    let urls = gateway::AmqpUrls::parse(&crate::support::amqp_urls()).expect("AMQP_URL is valid");
    let node = urls.first().node();
    let id = &app.instance_id;
    assert_eq!(
        body,
        json!({
            "status": "ready", "broker": "up", "store": "up",
            "connections": [
                { "name": format!("workerrmq-{id}-publish"), "node": node },
                { "name": format!("workerrmq-{id}-consume"), "node": node },
            ]
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_names_the_store_when_it_is_down_and_startup_still_succeeds() {
    // Nothing listens on port 1: the store is unreachable from the start.
    let app = spawn_app_with(&[("MONGODB_URI", "mongodb://127.0.0.1:1")]).await;

    let health = app
        .request_anonymous(reqwest::Method::GET, "/health", None)
        .await;
    assert_eq!(health.status(), StatusCode::OK);

    let body = assert_error(
        app.request_anonymous(reqwest::Method::GET, "/ready", None)
            .await,
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
    )
    .await;
    assert_eq!(body["store"], "down", "{body}");
    assert_eq!(body["broker"], "up", "{body}");

    // Credentials cannot be checked without the store: 503, not 401.
    assert_error(
        app.get("/getQueues").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
    )
    .await;
}

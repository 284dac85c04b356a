use reqwest::{Method, StatusCode};

use crate::support::{assert_error, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_answer_404_with_the_contract_body() {
    let app = spawn_app().await;

    assert_error(
        app.request_anonymous(Method::GET, "/no/such/route", None)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.get("/getQueuez").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.post_json("/createQueues", &serde_json::json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_answers_405_naming_the_allowed_one() {
    let app = spawn_app().await;
    let queue = app.unique_queue("method");

    for (method, path, allow) in [
        (Method::POST, "/getQueues", "GET"),
        (Method::GET, "/createQueue", "POST"),
        (Method::DELETE, "/health", "GET"),
        (Method::PUT, "/getQueue/x", "GET"),
        (Method::PATCH, "/messagePublish", "POST"),
    ] {
        let response = app
            .http
            .request(method.clone(), app.url(path))
            .header(reqwest::header::AUTHORIZATION, app.admin_auth())
            .json(&serde_json::json!({ "queueName": queue }))
            .send()
            .await
            .expect("the request is sent");
        let allowed = response
            .headers()
            .get(reqwest::header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = assert_error(
            response,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        )
        .await;
        assert_eq!(allowed.as_deref(), Some(allow), "{method} {path}: {body}");
    }
    // Nothing was done by a request with the wrong method.
    assert!(!app.queue_exists(&queue).await);
}

use reqwest::{Method, StatusCode};

use crate::helpers::{assert_error, spawn_app};

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
    app.cleanup().await;
}

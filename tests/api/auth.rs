use futures_util::future::join_all;
use reqwest::header::WWW_AUTHENTICATE;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{
    assert_error, assert_json, basic_auth, bearer, spawn_app, spawn_app_with, TestApp,
};

/// Every protected route, each with a body that would succeed for an admin,
/// so a refusal can only come from the credentials.
fn protected_routes(app: &TestApp) -> Vec<(Method, String, Option<Value>)> {
    let queue = app.unique_queue("never_created");
    let exchange = app.unique_exchange("never_created");
    vec![
        (
            Method::POST,
            "/createQueue".into(),
            Some(json!({ "queueName": queue })),
        ),
        (Method::GET, "/getQueues".into(), None),
        (Method::GET, format!("/getQueue/{queue}"), None),
        (
            Method::POST,
            "/deleteQueue".into(),
            Some(json!({ "queueName": queue })),
        ),
        (
            Method::POST,
            "/createExchange".into(),
            Some(json!({ "exchangeName": exchange, "type": "direct" })),
        ),
        (
            Method::POST,
            "/bindQueue".into(),
            Some(json!({ "queueName": queue, "exchangeName": exchange })),
        ),
        (
            Method::POST,
            "/messagePublish".into(),
            Some(json!({ "queueName": queue, "message": {"n": 1} })),
        ),
        (Method::GET, "/getConnections".into(), None),
        (
            Method::POST,
            "/createApiKey".into(),
            Some(json!({ "name": "sneaky", "role": "admin" })),
        ),
    ]
}

async fn request(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<&Value>,
    auth: Option<&str>,
) -> reqwest::Response {
    let mut request = app.http.request(method, app.url(path));
    if let Some(auth) = auth {
        request = request.header(reqwest::header::AUTHORIZATION, auth);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.expect("the request is sent")
}

async fn assert_unauthorized(response: reqwest::Response, what: &str) {
    assert!(
        response.headers().contains_key(WWW_AUTHENTICATE),
        "{what}: a 401 says how to authenticate"
    );
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_routes_refuse_missing_and_wrong_credentials() {
    // 18 wrong attempts from one address: more than the failure throttle
    // lets through by default (tests/api/credentials.rs covers it).
    let app = spawn_app_with(&[("AUTH_MAX_FAILURES", "100")]).await;
    let routes = protected_routes(&app);
    let wrong_password = basic_auth(&app.admin_user, "not-the-password");
    let unknown_user = basic_auth("nobody", &app.admin_password);
    let credentials: [Option<&str>; 3] = [None, Some(&wrong_password), Some(&unknown_user)];

    // bcrypt is slow on purpose: ask everything at once.
    let checks = routes.iter().flat_map(|(method, path, body)| {
        let app = &app;
        credentials.iter().map(move |auth| async move {
            let response = request(app, method.clone(), path, body.as_ref(), *auth).await;
            assert_unauthorized(response, &format!("{method} {path} with {auth:?}")).await;
        })
    });
    join_all(checks).await;

    // None of the refused requests changed anything.
    let queue = app.unique_queue("never_created");
    let exchange = app.unique_exchange("never_created");
    assert!(!app.queue_exists(&queue).await);
    assert!(!app.exchange_exists(&exchange).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bearer_keys_and_unknown_schemes_are_refused() {
    let app = spawn_app().await;

    for auth in [
        "Bearer garbage".to_owned(),
        "Bearer wrmq_nosuchkey_nosecret".to_owned(),
        bearer(""),
        "Digest username=admin".to_owned(),
        "Basic not-base64!".to_owned(),
    ] {
        let response = app.get_with_auth("/getQueues", &auth).await;
        assert_unauthorized(response, &auth).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_reads_but_may_not_change_anything() {
    let app = spawn_app().await;
    let queue = app.unique_queue("orders");
    app.create_queue(&queue, json!({})).await;
    let viewer = bearer(&app.create_api_key("viewer").await);

    let rows = assert_json(
        app.get_with_auth("/getQueues", &viewer).await,
        StatusCode::OK,
    )
    .await;
    assert!(rows.is_array(), "{rows}");

    let other = app.unique_queue("by_viewer");
    assert_error(
        app.post_json_with_auth("/createQueue", &json!({ "queueName": other }), &viewer)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_error(
        app.post_json_with_auth(
            "/messagePublish",
            &json!({ "queueName": queue, "message": {"n": 1} }),
            &viewer,
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    assert!(!app.queue_exists(&other).await);
    assert_eq!(app.message_count(&queue).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_publishes_but_may_not_create_queues() {
    let app = spawn_app().await;
    let queue = app.unique_queue("orders");
    app.create_queue(&queue, json!({})).await;
    let publisher = bearer(&app.create_api_key("publisher").await);

    let body = assert_json(
        app.post_json_with_auth(
            "/messagePublish",
            &json!({ "queueName": queue, "message": {"n": 1} }),
            &publisher,
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert!(body["messageId"].is_string(), "{body}");
    assert_eq!(app.message_count(&queue).await, Some(1));

    let other = app.unique_queue("by_publisher");
    assert_error(
        app.post_json_with_auth("/createQueue", &json!({ "queueName": other }), &publisher)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_error(
        app.post_json_with_auth(
            "/createApiKey",
            &json!({ "name": "escalate", "role": "admin" }),
            &publisher,
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert!(!app.queue_exists(&other).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_api_key_can_create_queues() {
    let app = spawn_app().await;
    let admin = bearer(&app.create_api_key("admin").await);
    let queue = app.unique_queue("by_admin_key");

    let body = assert_json(
        app.post_json_with_auth("/createQueue", &json!({ "queueName": queue }), &admin)
            .await,
        StatusCode::CREATED,
    )
    .await;

    assert_eq!(body["queueName"], queue.as_str());
    assert!(app.queue_exists(&queue).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_judged_before_the_body_is_read() {
    let app = spawn_app().await;
    let wrong = basic_auth(&app.admin_user, "not-the-password");
    let viewer = bearer(&app.create_api_key("viewer").await);
    let cases = [
        (&wrong, StatusCode::UNAUTHORIZED, "unauthorized"),
        (&viewer, StatusCode::FORBIDDEN, "forbidden"),
    ];
    for (content_type, body) in [("text/plain", "x"), ("application/json", "{not json")] {
        for (auth, status, code) in &cases {
            let response = app
                .http
                .post(app.url("/createQueue"))
                .header(reqwest::header::AUTHORIZATION, auth.as_str())
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body)
                .send()
                .await
                .expect("sent");
            assert_error(response, *status, code).await;
        }
    }
    // Public routes do not care about a wrong Authorization header.
    let health = app
        .http
        .get(app.url("/health"))
        .header(reqwest::header::AUTHORIZATION, &wrong)
        .send()
        .await
        .expect("sent");
    assert_eq!(health.status(), StatusCode::OK);
}

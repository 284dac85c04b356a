//! Least privilege in answers: what viewers see, who may publish to the built-in queues, what 503 bodies say.
//! Also what a reader of `/docs` loads (nothing from another origin) and
//! what a newcomer's first start prints (no ERROR or WARN line).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::gateway_process::Deployment;
use crate::support::target_server::{Reply, TargetServer};
use crate::support::Api;
use crate::support::{
    assert_error, assert_json, bearer, eventually, spawn_app, spawn_app_with, TestApp,
};

const SETTLED_DEADLINE: Duration = Duration::from_secs(15);

async fn get_as(app: &TestApp, path: &str, auth: &str) -> Value {
    assert_json(app.get_with_auth(path, auth).await, StatusCode::OK).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_read_dead_letter_metadata_but_not_payloads() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    target.script("/reject", vec![], Reply::status(400));
    let api = Api::of(&app);
    let queue = app.unique_queue("personal");
    app.create_queue(&queue, json!({})).await;
    let consumer = api
        .create_http_consumer(&queue, &target.url("/reject"), json!({}))
        .await;
    let payload = json!({ "email": "ana.perez@example.com", "nombre": "Ana" });
    let message_id = app.publish(&queue, payload.clone()).await;
    api.wait_for_consumer(&consumer, SETTLED_DEADLINE, "dead-lettered", |v| {
        v["stats"]["deadLettered"] == 1
    })
    .await;
    let path = format!("/getDeadLetters/{queue}");

    for auth in [
        app.admin_auth(),
        bearer(&app.create_api_key("publisher").await),
    ] {
        let letters = get_as(&app, &path, &auth).await;
        assert_eq!(letters[0]["payload"], payload, "{letters}");
    }

    let viewer = bearer(&app.create_api_key("viewer").await);
    let response = app.get_with_auth(&path, &viewer).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("a body");
    assert!(
        !text.contains("ana.perez"),
        "a viewer read the payload: {text}"
    );
    let letters: Value = serde_json::from_str(&text).expect("JSON");
    let letter = &letters[0];
    assert!(letter.get("payload").is_none(), "{letter}");
    assert_eq!(letter["messageId"], message_id.as_str(), "{letter}");
    assert_eq!(letter["attempts"], 1, "{letter}");
    assert!(letter["lastError"].is_string(), "{letter}");
    assert!(letter["deadLetteredAt"].is_string(), "{letter}");

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_see_target_urls_with_query_values_masked() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let queue = app.unique_queue("hooks");
    app.create_queue(&queue, json!({})).await;
    // Nothing is published: the consumer never calls its target.
    let url = "http://127.0.0.1:9/services/hook?token=abc123secret&x=1";
    let consumer = api
        .create_http_consumer(
            &queue,
            url,
            json!({ "target": { "headers": { "Authorization": "Bearer hdr-secret-42" } } }),
        )
        .await;
    let one = format!("/getConsumer/{consumer}");

    let admin_view = get_as(&app, &one, &app.admin_auth()).await;
    assert_eq!(admin_view["target"]["url"], url, "{admin_view}");

    for role in ["viewer", "publisher"] {
        let auth = bearer(&app.create_api_key(role).await);
        let listed = get_as(&app, "/getConsumers", &auth).await;
        let from_list = listed
            .as_array()
            .and_then(|all| all.iter().find(|c| c["consumerId"] == consumer.as_str()))
            .unwrap_or_else(|| panic!("consumer {consumer} not listed: {listed}"))
            .clone();
        for view in [get_as(&app, &one, &auth).await, from_list] {
            assert_eq!(
                view["target"]["url"], "http://127.0.0.1:9/services/hook?token=***&x=***",
                "{role}: {view}"
            );
            assert_eq!(
                view["target"]["headers"]["Authorization"], "***",
                "{role}: {view}"
            );
            let text = view.to_string();
            assert!(
                !text.contains("abc123secret") && !text.contains("hdr-secret-42"),
                "{role} sees a secret: {text}"
            );
        }
    }
}

/// Where a closed local port could show up in a body.
fn assert_names_no_location(body: &Value) {
    let text = body.to_string();
    for leak in ["127.0.0.1", ":1", "http", "mongodb", "localhost"] {
        assert!(!text.contains(leak), "the body shows `{leak}`: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_management_api_outage_is_named_without_its_address() {
    // Nothing listens on port 1.
    let app = spawn_app_with(&[("RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:1")]).await;

    for path in ["/getQueues", "/getConnections"] {
        let body = assert_error(
            app.get(path).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
        )
        .await;
        assert_names_no_location(&body);
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("management API")),
            "the message says what is down: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_named_without_its_address() {
    let app = spawn_app_with(&[("MONGODB_URI", "mongodb://127.0.0.1:1")]).await;

    let ready = assert_error(
        app.request_anonymous(reqwest::Method::GET, "/ready", None)
            .await,
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
    )
    .await;
    assert_names_no_location(&ready);
    assert_eq!(ready["store"], "down", "{ready}");

    let body = assert_error(
        app.get("/getQueues").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
    )
    .await;
    assert_names_no_location(&body);
}

/// The header's value as text; empty when absent.
fn header_of(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_load_redoc_from_the_gateway_itself_without_credentials() {
    let app = spawn_app().await;

    let page = app
        .request_anonymous(reqwest::Method::GET, "/docs", None)
        .await;
    assert_eq!(page.status(), StatusCode::OK);
    let csp = header_of(&page, "content-security-policy");
    assert!(csp.contains("script-src 'self'"), "CSP: {csp:?}");
    assert!(csp.contains("default-src 'none'"), "CSP: {csp:?}");
    let html = page.text().await.expect("the page");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page names another origin: {html}"
    );
    let script = html
        .split("<script src=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no script in {html}"));
    let docs_url = url::Url::parse(&app.url("/docs")).expect("a URL");
    let asset = docs_url.join(script).expect("a relative script URL");
    assert_eq!(asset.origin(), docs_url.origin(), "{asset}");

    let response = app
        .http
        .get(asset.as_str())
        .send()
        .await
        .expect("the asset is fetched");
    assert_eq!(response.status(), StatusCode::OK, "{asset}");
    let cache = header_of(&response, "cache-control");
    assert!(cache.contains("max-age=31536000"), "{cache:?}");
    let bundle = response.text().await.expect("the bundle");
    assert!(bundle.len() > 100_000, "{} bytes", bundle.len());
    assert!(bundle.contains("Redoc"), "not the Redoc bundle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_first_start_logs_no_error_or_warning() {
    let deployment = Deployment::new();
    let log_path = std::env::temp_dir().join(format!("{}first-start.log", deployment.prefix));
    let log = std::fs::File::create(&log_path).expect("a log file");
    let mut gateway = deployment
        .start_gateway_with(
            &deployment.instance_id("first"),
            &[
                ("BUILTIN_CONSUMERS", "true"),
                ("RUST_LOG", "info"),
                ("LOG_FORMAT", "json"),
            ],
            Some(&log),
        )
        .await;
    // Ready, and the three built-in consumers taking deliveries.
    eventually(SETTLED_DEADLINE, || async {
        let consumers = assert_json(gateway.api.get("/getConsumers").await, StatusCode::OK).await;
        let running = consumers
            .as_array()
            .map(|all| all.iter().filter(|c| c["state"] == "running").count())
            .unwrap_or(0);
        (running == 3)
            .then_some(())
            .ok_or(format!("{running} running: {consumers}"))
    })
    .await;
    gateway.terminate();
    assert!(
        gateway
            .wait_for_exit(Duration::from_secs(10))
            .await
            .is_some(),
        "the gateway did not stop"
    );

    let output = std::fs::read_to_string(&log_path).expect("the log");
    let _ = std::fs::remove_file(&log_path);
    let lines: Vec<Value> = output
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"))
        })
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "built-in queue declared"),
        "the start-up was not logged at info:\n{output}"
    );
    let loud: Vec<&Value> = lines
        .iter()
        .filter(|l| matches!(l["level"].as_str(), Some("ERROR" | "WARN")))
        .collect();
    assert!(loud.is_empty(), "a clean first start logged: {loud:#?}");

    drop(gateway);
}

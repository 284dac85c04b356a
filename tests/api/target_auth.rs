//! `target.auth` and `target.tls`: basic, bearer and header auth reach the
//! target as sent; OAuth2 client-credentials tokens are cached across
//! consumers, fetched one at a time and replaced after a 401 within the
//! same attempt; a failing token endpoint is a retryable `auth` failure;
//! mutual TLS reaches a target that requires a client certificate, and its
//! absence is a retryable `tls` failure; answers show `***` for every
//! secret and viewers see the auth type alone; bad input is a 400 naming
//! the field, and nothing changes.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::target_server::{Reply, TargetServer};
use crate::support::tls_target::{TestPki, TlsTarget};
use crate::support::{
    assert_error, assert_json, assert_refused_naming, bearer, binary_messages, eventually,
    publish_confirmed, spawn_app, Api, TestApp,
};

const DEADLINE: Duration = Duration::from_secs(30);

fn is_running(view: &Value) -> bool {
    view["state"] == "running"
}

/// The attempt records of `consumer`, newest first.
async fn attempts(api: &Api, consumer: &str) -> Vec<Value> {
    let page: Value = api
        .get(&format!("/getAttempts?consumerId={consumer}"))
        .await
        .json()
        .await
        .expect("a JSON page");
    page["attempts"].as_array().cloned().unwrap_or_default()
}

/// A token endpoint that issues `tok-1`, `tok-2`, … living `expires_in`
/// seconds, each answer held 100 ms (so two fetches at once would overlap).
fn token_endpoint(server: &TargetServer, expires_in: u64) -> Arc<AtomicUsize> {
    let issued = Arc::new(AtomicUsize::new(0));
    let counter = issued.clone();
    server.set_responder(move |_, _| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::ok()
            .after(Duration::from_millis(100))
            .with_body(
                &json!({"access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": expires_in})
                    .to_string(),
            )
    });
    issued
}

fn oauth2(token_url: &str) -> Value {
    json!({
        "type": "oauth2",
        "tokenUrl": token_url,
        "clientId": "gateway",
        "clientSecret": "clientSecretValue",
        "scope": "deliver"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_bearer_and_header_auth_reach_the_target_as_sent_and_answers_show_stars() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    let viewer = Api::new(
        app.address.clone(),
        bearer(&app.create_api_key("viewer").await),
    );
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("hook-user:basicSecretValue")
    );
    let cases = [
        (
            "basic",
            json!({"type": "basic", "username": "hook-user", "password": "basicSecretValue"}),
            "authorization",
            basic,
            json!({"type": "basic", "username": "hook-user", "password": "***"}),
        ),
        (
            "bearer",
            json!({"type": "bearer", "token": "bearerSecretValue"}),
            "authorization",
            "Bearer bearerSecretValue".to_owned(),
            json!({"type": "bearer", "token": "***"}),
        ),
        (
            "header",
            json!({"type": "header", "name": "X-Api-Key", "value": "headerSecretValue"}),
            "x-api-key",
            "headerSecretValue".to_owned(),
            json!({"type": "header", "name": "x-api-key", "value": "***"}),
        ),
    ];
    for (kind, auth, header, sent, shown) in cases {
        let queue = app.unique_queue(kind);
        api.create_queue(&queue).await;
        let created = assert_json(
            api.post(
                "/createConsumer",
                &json!({
                    "queueName": queue,
                    "target": {"type": "http", "url": target.url(&format!("/{kind}")), "auth": auth}
                }),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
        assert_eq!(created["consumer"]["target"]["auth"], shown, "{created}");
        let consumer = created["consumerId"].as_str().expect("an id").to_owned();
        api.wait_for_consumer(&consumer, Duration::from_secs(5), "running", is_running)
            .await;
        let id = app.publish(&queue, json!({"kind": kind})).await;
        target
            .wait_for_delivered(&BTreeSet::from([id]), DEADLINE)
            .await;
        let requests = target.requests_to(&format!("/{kind}"));
        assert_eq!(requests.len(), 1, "{kind}: {requests:?}");
        assert_eq!(requests[0].header(header), Some(sent.as_str()), "{kind}");

        assert_eq!(api.consumer(&consumer).await["target"]["auth"], shown);
        let as_viewer = assert_json(
            viewer.get(&format!("/getConsumer/{consumer}")).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(
            as_viewer["target"]["auth"],
            json!({"type": kind}),
            "{as_viewer}"
        );

        // The record names the header, never its value.
        let records = eventually(Duration::from_secs(10), || async {
            let records = attempts(&api, &consumer).await;
            if records.is_empty() {
                Err("no attempt record yet".to_owned())
            } else {
                Ok(records)
            }
        })
        .await;
        let names = &records[0]["request"]["headers"];
        assert!(
            names.as_array().is_some_and(|n| n.contains(&json!(header))),
            "{kind}: {names}"
        );
        let raw = records[0].to_string();
        assert!(
            !raw.contains("SecretValue") && !raw.contains(&sent),
            "{raw}"
        );
    }
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_tokens_are_shared_by_consumers_refreshed_and_fetched_one_at_a_time() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let tokens = TargetServer::start().await;
    let issued = token_endpoint(&tokens, 2);
    let target = TargetServer::start().await;
    target.set_responder(|headers, _| {
        let authorized = headers
            .get("authorization")
            .is_some_and(|a| a.starts_with("Bearer tok-"));
        Reply::status(if authorized { 200 } else { 401 })
    });

    // Two consumers with one client, 100 messages each at 20 a second:
    // 200 deliveries over about 5 s, on 2-second tokens.
    let mut ids = BTreeSet::new();
    let mut consumers = Vec::new();
    for label in ["oauth-a", "oauth-b"] {
        let queue = app.unique_queue(label);
        let consumer = api
            .queue_with_consumer(
                &queue,
                &target.url("/hook"),
                json!({"rateLimitPerSec": 20, "target": {"auth": oauth2(&tokens.url("/token"))}}),
            )
            .await;
        api.wait_for_consumer(&consumer, Duration::from_secs(5), "running", is_running)
            .await;
        let messages = binary_messages(label, 100);
        ids.extend(messages.iter().map(|m| m.id.clone()));
        consumers.push((queue, messages, consumer));
    }
    let started = Instant::now();
    for (queue, messages, _) in &consumers {
        publish_confirmed(app.amqp_connection().await, queue, messages).await;
    }
    target.wait_for_delivered(&ids, DEADLINE).await;
    let took = started.elapsed();

    let calls = tokens.requests();
    assert!(
        took >= Duration::from_secs(3),
        "the rate limit spreads the deliveries over ~5 s: {took:?}"
    );
    assert!(
        (2..=6).contains(&calls.len()),
        "{} token calls for 200 deliveries over {took:?} on 2-second tokens",
        calls.len()
    );
    assert_eq!(tokens.max_in_flight(), 1, "never two token calls at once");
    let client = base64::engine::general_purpose::STANDARD.encode("gateway:clientSecretValue");
    for call in &calls {
        assert_eq!(call.method, "POST");
        assert_eq!(
            call.header("authorization"),
            Some(format!("Basic {client}").as_str())
        );
        assert_eq!(
            call.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(call.body, b"grant_type=client_credentials&scope=deliver");
    }
    let requests = target.requests_to("/hook");
    assert_eq!(requests.len(), 200, "no request was refused and sent again");
    assert!(requests
        .iter()
        .all(|r| r.attempt() == 1 && r.answered == 200));
    assert_eq!(issued.load(Ordering::SeqCst), calls.len());
    for (_, _, consumer) in &consumers {
        let view = api.consumer(consumer).await;
        assert_eq!(view["stats"]["retried"], 0, "{view}");
    }
    tokens.stop().await;
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_gets_a_new_token_and_one_more_try_within_the_same_attempt() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let tokens = TargetServer::start().await;
    token_endpoint(&tokens, 3600);
    let target = TargetServer::start().await;
    let refused_once = Arc::new(AtomicBool::new(false));
    let refused = refused_once.clone();
    target.set_responder(move |headers, _| {
        let authorized = headers
            .get("authorization")
            .is_some_and(|a| a.starts_with("Bearer tok-"));
        if authorized && refused.swap(true, Ordering::SeqCst) {
            Reply::ok()
        } else {
            Reply::status(401)
        }
    });
    let queue = app.unique_queue("oauth-401");
    let consumer = api
        .queue_with_consumer(
            &queue,
            &target.url("/hook"),
            json!({"target": {"auth": oauth2(&tokens.url("/token"))}}),
        )
        .await;
    api.wait_for_consumer(&consumer, Duration::from_secs(5), "running", is_running)
        .await;
    let id = app.publish(&queue, json!({"n": 1})).await;
    target
        .wait_for_delivered(&BTreeSet::from([id]), DEADLINE)
        .await;

    let requests = target.requests_to("/hook");
    let seen: Vec<(Option<&str>, u32, u16)> = requests
        .iter()
        .map(|r| (r.header("authorization"), r.attempt(), r.answered))
        .collect();
    assert_eq!(
        seen,
        [
            (Some("Bearer tok-1"), 1, 401),
            (Some("Bearer tok-2"), 1, 200)
        ]
    );
    assert_eq!(tokens.request_count(), 2, "one new token after the 401");
    let view = api
        .wait_for_consumer(&consumer, Duration::from_secs(10), "acked", |v| {
            v["stats"]["acked"] == 1
        })
        .await;
    assert_eq!(view["stats"]["retried"], 0, "{view}");
    tokens.stop().await;
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_refusing_every_token_does_not_have_one_fetched_per_message() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let tokens = TargetServer::start().await;
    token_endpoint(&tokens, 3600);
    let target = TargetServer::start().await;
    target.set_default(Reply::status(401));
    let queue = app.unique_queue("oauth-401-all");
    let consumer = api
        .queue_with_consumer(
            &queue,
            &target.url("/hook"),
            json!({
                "retry": {"maxAttempts": 1},
                "circuitBreaker": null,
                "target": {"auth": oauth2(&tokens.url("/token"))}
            }),
        )
        .await;
    api.wait_for_consumer(&consumer, Duration::from_secs(5), "running", is_running)
        .await;
    let started = Instant::now();
    for n in 0..40 {
        app.publish(&queue, json!({ "n": n })).await;
    }
    api.wait_for_consumer(&consumer, DEADLINE, "all dead-lettered", |v| {
        v["stats"]["deadLettered"] == 40
    })
    .await;
    let took = started.elapsed();
    // One token at first, then at most one replacement a second.
    let most = 2 + usize::try_from(took.as_secs()).unwrap_or(usize::MAX);
    assert!(
        tokens.request_count() <= most,
        "{} token calls for 40 refused messages over {took:?} (at most {most})",
        tokens.request_count()
    );
    tokens.stop().await;
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_endpoint_is_a_retryable_auth_failure() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let tokens = TargetServer::start().await;
    tokens.set_default(Reply::status(401).with_body(r#"{"error":"invalid_client"}"#));
    let target = TargetServer::start().await;
    let queue = app.unique_queue("oauth-down");
    let consumer = api
        .queue_with_consumer(
            &queue,
            &target.url("/hook"),
            json!({
                "retry": {"maxAttempts": 5, "initialDelayMs": 60000},
                "target": {"auth": oauth2(&tokens.url("/token"))}
            }),
        )
        .await;
    api.wait_for_consumer(&consumer, Duration::from_secs(5), "running", is_running)
        .await;
    app.publish(&queue, json!({"n": 1})).await;
    let record = eventually(DEADLINE, || async {
        attempts(&api, &consumer)
            .await
            .into_iter()
            .next()
            .ok_or_else(|| "no attempt record yet".to_owned())
    })
    .await;
    assert_eq!(record["outcome"], "retry_scheduled", "{record}");
    assert_eq!(record["error"]["kind"], "auth", "{record}");
    let message = record["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("invalid_client"), "{message}");
    assert!(!message.contains("clientSecretValue"), "{message}");
    assert_eq!(
        target.request_count(),
        0,
        "nothing goes out without a token"
    );
    tokens.stop().await;
    target.stop().await;
}

/// A running consumer on a new queue with `target`; its queue and id.
async fn consumer_with(app: &TestApp, api: &Api, label: &str, target: Value) -> (String, String) {
    let queue = app.unique_queue(label);
    api.create_queue(&queue).await;
    let created = assert_json(
        api.post(
            "/createConsumer",
            &json!({"queueName": queue, "target": target, "retry": {"maxAttempts": 5, "initialDelayMs": 60000}}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let consumer = created["consumerId"].as_str().expect("an id").to_owned();
    api.wait_for_consumer(&consumer, Duration::from_secs(5), "running", is_running)
        .await;
    (queue, consumer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_reaches_a_target_that_requires_a_client_certificate() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let pki = TestPki::new();
    let server = TlsTarget::start(&pki).await;

    let with_identity = json!({
        "type": "http",
        "url": server.url("/hook"),
        "tls": {"clientCertPem": pki.client_cert_pem, "clientKeyPem": pki.client_key_pem, "caPem": pki.ca_pem}
    });
    let (queue, consumer) = consumer_with(&app, &api, "mtls", with_identity).await;
    let view = api.consumer(&consumer).await;
    assert_eq!(view["target"]["tls"]["clientKeyPem"], "***", "{view}");
    assert_eq!(view["target"]["tls"]["caPem"], pki.ca_pem.as_str());
    let messages = binary_messages("mtls", 5);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;
    eventually(DEADLINE, || async {
        let served = server
            .requests()
            .iter()
            .filter(|r| r.get("x-workerrmq-queue") == Some(&queue))
            .count();
        if served == 5 {
            Ok(())
        } else {
            Err(format!("{served} of 5 served"))
        }
    })
    .await;
    api.wait_for_consumer(&consumer, Duration::from_secs(10), "acked 5", |v| {
        v["stats"]["acked"] == 5
    })
    .await;

    // The CA alone (no certificate to show) and nothing at all: the
    // handshake fails either way, a retryable `tls` failure.
    let ca_only = json!({"type": "http", "url": server.url("/hook"), "tls": {"caPem": pki.ca_pem}});
    let plain = json!({"type": "http", "url": server.url("/hook")});
    for (label, target) in [("mtls-ca-only", ca_only), ("mtls-none", plain)] {
        let (queue, consumer) = consumer_with(&app, &api, label, target).await;
        app.publish(&queue, json!({"n": 1})).await;
        let record = eventually(DEADLINE, || async {
            attempts(&api, &consumer)
                .await
                .into_iter()
                .next()
                .ok_or_else(|| "no attempt record yet".to_owned())
        })
        .await;
        assert_eq!(record["outcome"], "retry_scheduled", "{label}: {record}");
        assert_eq!(record["error"]["kind"], "tls", "{label}: {record}");
        assert!(
            server
                .requests()
                .iter()
                .all(|r| r.get("x-workerrmq-queue") != Some(&queue)),
            "{label}: served without a client certificate"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_auth_and_tls_are_refused_naming_the_field_and_nothing_changes() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let pki = TestPki::new();
    let queue = app.unique_queue("bad-auth");
    api.create_queue(&queue).await;
    let url = "http://127.0.0.1:9/hook";
    let cases = [
        (
            json!({"auth": {"type": "digest", "username": "u"}}),
            "target.auth.type",
        ),
        (
            json!({"auth": {"type": "oauth2", "tokenUrl": "ftp://127.0.0.1/token", "clientId": "c", "clientSecret": "s"}}),
            "target.auth.tokenUrl",
        ),
        (
            json!({"auth": {"type": "basic", "username": "u"}}),
            "target.auth.password",
        ),
        (
            json!({"auth": {"type": "header", "name": "webhook-signature", "value": "v"}}),
            "target.auth.name",
        ),
        (
            json!({"auth": {"type": "bearer", "token": "t"}, "headers": {"Authorization": "Bearer x"}}),
            "target.headers",
        ),
        (
            json!({"tls": {"clientCertPem": pki.client_cert_pem, "clientKeyPem": pki.other_key_pem}}),
            "target.tls.clientKeyPem",
        ),
        (
            json!({"tls": {"clientCertPem": "not PEM", "clientKeyPem": pki.client_key_pem}}),
            "target.tls.clientCertPem",
        ),
        (
            json!({"tls": {"clientCertPem": pki.client_cert_pem}}),
            "target.tls.clientKeyPem",
        ),
        (
            json!({"tls": {"caPem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}}),
            "target.tls.caPem",
        ),
    ];
    for (extra, field) in &cases {
        let mut target = json!({"type": "http", "url": url});
        for (k, v) in extra.as_object().expect("an object") {
            target[k] = v.clone();
        }
        let body = assert_error(
            api.post(
                "/createConsumer",
                &json!({"queueName": queue, "target": target}),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("`{field}`")),
            "{field}: {message}"
        );
        assert!(!message.contains("BEGIN"), "no PEM echoed: {message}");
    }
    let consumers: Value = api.get("/getConsumers").await.json().await.expect("JSON");
    assert!(
        consumers
            .as_array()
            .expect("a list")
            .iter()
            .all(|c| c["queueName"] != queue.as_str()),
        "nothing was created"
    );

    // An update with a bad auth leaves the consumer as it was.
    let consumer = api
        .create_http_consumer(
            &queue,
            url,
            json!({"target": {"auth": {"type": "bearer", "token": "keptSecret"}}}),
        )
        .await;
    let before = api.consumer(&consumer).await;
    let (extra, field) = &cases[1];
    let mut target = json!({"type": "http", "url": url});
    target["auth"] = extra["auth"].clone();
    let update = json!({"consumerId": consumer, "target": target});
    assert_refused_naming(api.post("/updateConsumer", &update).await, field, &update).await;
    let after = api.consumer(&consumer).await;
    assert_eq!(after["target"], before["target"]);
    assert_eq!(
        after["target"]["auth"],
        json!({"type": "bearer", "token": "***"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_guard_applies_to_the_token_url_as_to_the_target() {
    let oauth_at = |token_url: &str| {
        json!({
            "type": "http",
            "url": "https://api.example.com/hook",
            "auth": {"type": "oauth2", "tokenUrl": token_url, "clientId": "c", "clientSecret": "s"}
        })
    };
    for (vars, token_url, why) in [
        (
            [("FORWARD_DENY_PRIVATE", "true")],
            "http://127.0.0.1:9/token",
            "FORWARD_DENY_PRIVATE",
        ),
        (
            [("FORWARD_DENY_PRIVATE", "true")],
            "http://169.254.169.254/token",
            "FORWARD_DENY_PRIVATE",
        ),
        (
            [("FORWARD_ALLOWED_HOSTS", "api.example.com")],
            "https://auth.example.com/token",
            "FORWARD_ALLOWED_HOSTS",
        ),
    ] {
        let app = crate::support::spawn_app_with(&vars).await;
        let api = Api::of(&app);
        let queue = app.unique_queue("guarded-token");
        api.create_queue(&queue).await;
        let body = assert_error(
            api.post(
                "/createConsumer",
                &json!({"queueName": queue, "target": oauth_at(token_url)}),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("`target.auth.tokenUrl`") && message.contains(why),
            "{token_url}: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_spec_lists_the_auth_types_and_tls_fields() {
    let app = spawn_app().await;
    let spec = assert_json(
        app.request_anonymous(reqwest::Method::GET, "/openapi.json", None)
            .await,
        StatusCode::OK,
    )
    .await;
    let schemas = &spec["components"]["schemas"];
    let auth = schemas["TargetAuthRequest"].to_string();
    for kind in ["basic", "bearer", "header", "oauth2"] {
        assert!(auth.contains(&format!("\"{kind}\"")), "{kind}: {auth}");
    }
    for (schema, fields) in [
        (
            "OAuth2AuthRequest",
            &["tokenUrl", "clientId", "clientSecret", "scope", "audience"][..],
        ),
        (
            "TargetTlsRequest",
            &["clientCertPem", "clientKeyPem", "caPem"][..],
        ),
    ] {
        for field in fields {
            assert!(
                schemas[schema]["properties"][field].is_object(),
                "{schema}.{field}: {}",
                schemas[schema]
            );
        }
    }
    let target = schemas["TargetRequest"].to_string();
    assert!(
        target.contains("TargetAuthRequest") && target.contains("TargetTlsRequest"),
        "{target}"
    );
}

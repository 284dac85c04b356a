//! What credentials cost and how they end: API-key digests, the failed-attempt throttle, listing and revoking keys.
//!
//! Every test client runs on 127.0.0.1; the throttle keys on the peer
//! address, so a client sending wrong credentials here connects from another
//! loopback address (127.0.0.2 and up: all of 127/8 is loopback) and the
//! good client from 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::{
    assert_error, assert_json, basic_auth, bearer, eventually, spawn_app, spawn_app_with, TestApp,
};

/// A client whose connections come from `127.0.0.<last>`.
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client")
}

async fn get_as(
    http: &reqwest::Client,
    app: &TestApp,
    path: &str,
    auth: &str,
) -> reqwest::Response {
    http.get(app.url(path))
        .header(AUTHORIZATION, auth)
        .send()
        .await
        .expect("the request is sent")
}

/// A sample from `/metrics` (`name` as written there: counters end in
/// `_total`), read with `auth` from 127.0.0.1.
async fn metric(app: &TestApp, auth: &str, name: &str) -> u64 {
    let response = app.get_with_auth("/metrics", auth).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("a metrics body");
    let line = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
        .trim()
        .parse()
        .expect("a whole number")
}

/// `(keyId, secret)` of `wrmq_<keyId>_<secret>`. The secret is base64url
/// and may itself contain `_`; the key id never does.
fn key_parts(api_key: &str) -> (&str, &str) {
    api_key
        .strip_prefix("wrmq_")
        .and_then(|rest| rest.split_once('_'))
        .expect("wrmq_<keyId>_<secret>")
}

const BCRYPT_RUNS: &str = "workerrmq_auth_bcrypt_verifications_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_ten_failures_an_address_gets_429_without_bcrypt_while_a_good_key_elsewhere_publishes(
) {
    let app = spawn_app().await;
    let queue = app.unique_queue("orders");
    app.create_queue(&queue, json!({})).await;
    let admin_key = bearer(&app.create_api_key("admin").await);
    let publisher_key = bearer(&app.create_api_key("publisher").await);
    let attacker = client_from(2);
    let bcrypt_before = metric(&app, &admin_key, BCRYPT_RUNS).await;

    for n in 0..10 {
        let wrong = basic_auth(&app.admin_user, &format!("guess-{n}"));
        assert_error(
            get_as(&attacker, &app, "/getQueues", &wrong).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    assert_eq!(
        metric(&app, &admin_key, BCRYPT_RUNS).await,
        bcrypt_before + 10,
        "each distinct wrong password costs one bcrypt run"
    );

    // The 11th and later: 429 with Retry-After, whatever they send, even
    // a right key not verified before, and no bcrypt run.
    let mut attempts = (10..20)
        .map(|n| basic_auth(&app.admin_user, &format!("guess-{n}")))
        .collect::<Vec<_>>();
    attempts.push(publisher_key.clone());
    attempts.push(bearer("wrmq_00000000000000000000000000000000_nope"));
    for auth in &attempts {
        let response = get_as(&attacker, &app, "/getQueues", auth).await;
        let retry_after: u64 = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("a Retry-After in seconds");
        assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
        assert_error(response, StatusCode::TOO_MANY_REQUESTS, "too_many_requests").await;
    }
    assert_eq!(
        metric(&app, &admin_key, BCRYPT_RUNS).await,
        bcrypt_before + 10,
        "a throttled attempt runs no bcrypt"
    );
    // The admin's password, verified from 127.0.0.1 when the keys were
    // minted, is still in the cache: it passes from the throttled address
    // (tests/api/shared_address.rs has the whole story).
    assert_eq!(
        get_as(&attacker, &app, "/getQueues", &app.admin_auth())
            .await
            .status(),
        StatusCode::OK
    );

    // A good key from another address is unaffected, and costs no bcrypt.
    let published = app
        .post_json_with_auth(
            "/messagePublish",
            &json!({ "queueName": queue, "message": { "n": 1 } }),
            &publisher_key,
        )
        .await;
    assert_eq!(published.status(), StatusCode::ACCEPTED);
    assert_eq!(app.message_count(&queue).await, Some(1));
    assert_eq!(
        metric(&app, &admin_key, BCRYPT_RUNS).await,
        bcrypt_before + 10
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_wrong_password_runs_bcrypt_once() {
    let app = spawn_app().await;
    let admin_key = bearer(&app.create_api_key("admin").await);
    let client = client_from(3);
    let before = metric(&app, &admin_key, BCRYPT_RUNS).await;

    let wrong = basic_auth(&app.admin_user, "the same wrong password");
    for _ in 0..5 {
        assert_error(
            get_as(&client, &app, "/getQueues", &wrong).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    assert_eq!(metric(&app, &admin_key, BCRYPT_RUNS).await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_stored_as_the_sha256_of_its_secret_only() {
    let app = spawn_app().await;
    let body = assert_json(
        app.post_json(
            "/createApiKey",
            &json!({ "name": "digest", "role": "viewer" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let api_key = body["apiKey"].as_str().expect("an apiKey");
    let (key_id, secret) = key_parts(api_key);
    assert_eq!(body["keyId"], key_id);
    assert_eq!(secret.len(), 43, "256 bits in base64url: {secret}");

    let stored = app
        .stored("api_keys")
        .await
        .find_one(mongodb::bson::doc! { "_id": key_id })
        .await
        .expect("the store answers")
        .expect("the key is stored");
    let expected: String = Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(stored.get_str("secretSha256").ok(), Some(expected.as_str()));
    let text = stored.to_string();
    assert!(!text.contains(secret), "the secret is stored: {text}");
    assert!(!text.contains("$2"), "a bcrypt hash is stored: {text}");

    // A well-formed key with this id and another secret is refused.
    let forged = format!("wrmq_{key_id}_{}", "A".repeat(43));
    assert_error(
        app.get_with_auth("/getQueues", &bearer(&forged)).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert_eq!(
        app.get_with_auth("/getQueues", &bearer(api_key))
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_list_keys_without_secrets_and_see_when_they_were_used() {
    let app = spawn_app().await;
    let publisher_key = app.create_api_key("publisher").await;
    let viewer_key = app.create_api_key("viewer").await;

    let rows = assert_json(app.get("/getApiKeys").await, StatusCode::OK).await;
    let text = rows.to_string();
    for key in [&publisher_key, &viewer_key] {
        let (_, secret) = key_parts(key);
        assert!(!text.contains(secret), "a secret is listed: {text}");
    }
    let rows = rows.as_array().expect("an array").clone();
    assert_eq!(rows.len(), 2, "{text}");
    for row in &rows {
        let mut fields: Vec<&str> = row
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            ["createdAt", "keyId", "lastUsedAt", "name", "role"],
            "{row}"
        );
        assert!(row["lastUsedAt"].is_null(), "never used yet: {row}");
        assert!(row["createdAt"].as_str().is_some_and(|t| !t.is_empty()));
    }
    let roles: Vec<&str> = rows.iter().filter_map(|r| r["role"].as_str()).collect();
    assert!(
        roles.contains(&"publisher") && roles.contains(&"viewer"),
        "{text}"
    );

    // Using a key shows up as lastUsedAt.
    let viewer = bearer(&viewer_key);
    assert_eq!(
        app.get_with_auth("/getQueues", &viewer).await.status(),
        StatusCode::OK
    );
    let viewer_id = key_parts(&viewer_key).0.to_owned();
    eventually(Duration::from_secs(5), || async {
        let rows = assert_json(app.get("/getApiKeys").await, StatusCode::OK).await;
        let row = rows
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["keyId"] == viewer_id.as_str()))
            .cloned()
            .unwrap_or(Value::Null);
        if row["lastUsedAt"].as_str().is_some() {
            Ok(())
        } else {
            Err(format!("lastUsedAt not set: {row}"))
        }
    })
    .await;

    // Admins only.
    for (method, path, body) in [
        (reqwest::Method::GET, "/getApiKeys", None),
        (
            reqwest::Method::POST,
            "/deleteApiKey",
            Some(json!({ "keyId": viewer_id })),
        ),
    ] {
        let mut request = app
            .http
            .request(method, app.url(path))
            .header(AUTHORIZATION, bearer(&publisher_key));
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.expect("sent");
        assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_key_needs_a_well_formed_id_of_a_key_that_exists() {
    let app = spawn_app().await;
    let body = assert_error(
        app.post_json("/deleteApiKey", &json!({ "keyId": "../../etc" }))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("keyId")),
        "{body}"
    );
    assert_error(
        app.post_json(
            "/deleteApiKey",
            &json!({ "keyId": "0123456789abcdef0123456789abcdef" }),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_on_another_replica_within_five_seconds() {
    let first = spawn_app().await;
    let second = spawn_app_with(&[
        ("MONGODB_DB", first.db_name.as_str()),
        ("ADMIN_PASSWORD", first.admin_password.as_str()),
    ])
    .await;
    let key = first.create_api_key("viewer").await;
    let key_id = key_parts(&key).0.to_owned();
    let viewer = bearer(&key);
    // Both replicas have checked (and cached) the key.
    for app in [&first, &second] {
        assert_eq!(
            app.get_with_auth("/getQueues", &viewer).await.status(),
            StatusCode::OK
        );
    }

    let deleted = assert_json(
        first
            .post_json("/deleteApiKey", &json!({ "keyId": key_id }))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(deleted["keyId"], key_id.as_str());

    eventually(Duration::from_secs(5), || async {
        match second.get_with_auth("/getQueues", &viewer).await.status() {
            StatusCode::UNAUTHORIZED => Ok(()),
            other => Err(format!("the second replica still answers {other}")),
        }
    })
    .await;
    assert_error(
        first.get_with_auth("/getQueues", &viewer).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let rows = assert_json(second.get("/getApiKeys").await, StatusCode::OK).await;
    assert_eq!(rows, json!([]), "the key is gone from the list");
    assert_error(
        second
            .post_json("/deleteApiKey", &json!({ "keyId": key_id }))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_routes_are_documented_with_their_real_shapes() {
    let app = spawn_app().await;
    let spec = assert_json(
        app.request_anonymous(reqwest::Method::GET, "/openapi.json", None)
            .await,
        StatusCode::OK,
    )
    .await;
    let documented: Vec<bool> = [
        ("/createApiKey", "post"),
        ("/getApiKeys", "get"),
        ("/deleteApiKey", "post"),
    ]
    .iter()
    .map(|(path, method)| spec["paths"][path][method].is_object())
    .collect();
    assert_eq!(documented, [true, true, true], "{}", spec["paths"]);
    let schemas = &spec["components"]["schemas"];
    let mut listed: Vec<&str> = schemas["ApiKeySummary"]["properties"]
        .as_object()
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    listed.sort_unstable();
    assert_eq!(
        listed,
        ["createdAt", "keyId", "lastUsedAt", "name", "role"],
        "{}",
        schemas["ApiKeySummary"]
    );
    assert_eq!(
        schemas["Role"]["enum"],
        json!(["viewer", "publisher", "admin"]),
        "{}",
        schemas["Role"]
    );
    assert!(
        schemas["DeleteApiKeyRequest"]["required"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("keyId"))),
        "{}",
        schemas["DeleteApiKeyRequest"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_wrong_passwords_runs_bcrypt_at_most_once_per_core() {
    let app = spawn_app().await;
    let admin_key = bearer(&app.create_api_key("admin").await);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    assert_eq!(
        metric(&app, &admin_key, "workerrmq_auth_bcrypt_slots").await,
        cores
    );

    // 24 distinct wrong passwords at once, from six addresses (four each,
    // under the throttle's limit), so every one needs its own bcrypt run.
    let attempts = (0..24u8).map(|n| {
        let app = &app;
        async move {
            let client = client_from(10 + n % 6);
            let wrong = basic_auth(&app.admin_user, &format!("burst-{n}"));
            get_as(&client, app, "/getQueues", &wrong).await.status()
        }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    assert!(metric(&app, &admin_key, BCRYPT_RUNS).await >= 24);
    let peak = metric(&app, &admin_key, "workerrmq_auth_bcrypt_peak_concurrency").await;
    assert!(
        (1..=cores).contains(&peak),
        "{peak} bcrypt runs at once on {cores} cores"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_distinct_wrong_passwords_at_once_from_one_address_gets_at_most_ten_checks() {
    let app = spawn_app().await;
    let admin_key = bearer(&app.create_api_key("admin").await);
    let bcrypt_before = metric(&app, &admin_key, BCRYPT_RUNS).await;

    // 40 distinct wrong passwords sent at once: before checks under way
    // counted, every one passed the gate before the first failure was
    // recorded, and each cost a bcrypt run.
    let attacker = client_from(3);
    let attempts = (0..40u8).map(|n| {
        let (app, attacker) = (&app, &attacker);
        async move {
            let wrong = basic_auth(&app.admin_user, &format!("at-once-{n}"));
            get_as(attacker, app, "/getQueues", &wrong).await.status()
        }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let throttled = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(refused + throttled, 40, "{statuses:?}");
    assert!(refused <= 10, "{refused} checks ran: {statuses:?}");
    assert!(
        metric(&app, &admin_key, BCRYPT_RUNS).await - bcrypt_before <= 10,
        "at most the throttle's limit of bcrypt runs"
    );
}

//! Signing-secret rotation: after `/rotateSigningSecret` every request
//! (first tries and retries, on every replica) carries the new signature
//! and the old one until the grace period ends, then the new one alone; a
//! second rotation inside the grace period needs `force`; answers name
//! secrets by fingerprint only.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::delivery::{expected_signature, whsec};
use crate::support::target_server::{Recorded, Reply, TargetServer};
use crate::support::{
    assert_conflict_naming, assert_error, assert_json, assert_refused_naming, eventually,
    spawn_app, spawn_app_with, Api,
};

const DEADLINE: Duration = Duration::from_secs(30);

fn key_of(secret: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").expect("a whsec_ secret"))
        .expect("base64")
}

/// The signatures `request` carries, in order.
fn signatures(request: &Recorded) -> Vec<String> {
    request
        .header("webhook-signature")
        .unwrap_or_else(|| panic!("an unsigned request: {request:?}"))
        .split(' ')
        .map(str::to_owned)
        .collect()
}

fn signature_with(key: &[u8], request: &Recorded) -> String {
    let timestamp = request.header("webhook-timestamp").expect("a timestamp");
    expected_signature(key, &request.webhook_id(), timestamp, &request.body)
}

async fn rotate(api: &Api, body: &Value) -> Value {
    assert_json(api.post("/rotateSigningSecret", body).await, StatusCode::OK).await
}

/// Waits until both replicas report `consumer` in `state`.
async fn both_replicas(api: &Api, consumer: &str, state: &str) {
    api.wait_for_consumer(consumer, Duration::from_secs(10), state, |view| {
        let replicas = view["stats"]["replicas"].as_array();
        replicas.is_some_and(|r| r.len() == 2 && r.iter().all(|r| r["state"] == state))
    })
    .await;
}

/// Rotates while `consumer` is paused on both replicas, so that when a
/// replica resumes it runs the rotated definition (it reads both in one
/// pass): every request after this returns is signed the new way.
async fn rotate_on_both(api: &Api, consumer: &str, body: &Value) -> Value {
    api.pause(consumer).await;
    both_replicas(api, consumer, "paused").await;
    let rotated = rotate(api, body).await;
    api.resume(consumer).await;
    both_replicas(api, consumer, "running").await;
    rotated
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_secret_signs_beside_the_old_one_on_every_replica_and_retry() {
    let first = spawn_app().await;
    let second = spawn_app_with(&[
        ("MONGODB_DB", first.db_name.as_str()),
        ("ADMIN_PASSWORD", first.admin_password.as_str()),
    ])
    .await;
    let replicas = [Api::of(&first), Api::of(&second)];
    let api = &replicas[0];
    let target = TargetServer::start().await;
    // Every message fails once, so retries are signed too.
    target.set_first_attempt(Reply::status(503));
    let queue = first.unique_queue("rotate");
    api.create_queue(&queue).await;
    let old_key: [u8; 32] = rand::random();
    let consumer = api
        .create_http_consumer(
            &queue,
            &target.url("/rotate"),
            json!({
                "signingSecret": whsec(&old_key),
                "retry": { "initialDelayMs": 1000, "maxAttempts": 5 },
            }),
        )
        .await;
    let before = api.consumer(&consumer).await;
    let old_fingerprint = before["signing"]["fingerprint"].clone();
    assert!(
        old_fingerprint
            .as_str()
            .is_some_and(|f| f.starts_with("sha256:")),
        "{before}"
    );

    let new_key: [u8; 32] = rand::random();
    both_replicas(api, &consumer, "running").await;
    let rotated = rotate_on_both(
        api,
        &consumer,
        &json!({ "consumerId": consumer, "signingSecret": whsec(&new_key), "gracePeriodMs": 600_000 }),
    )
    .await;
    assert_eq!(rotated["consumerId"], consumer.as_str());
    assert_eq!(rotated["signingSecret"], whsec(&new_key).as_str());
    assert!(rotated["previousExpiresAt"].is_string(), "{rotated}");

    // Both replicas show the rotation within 5 s, by fingerprint only.
    for replica in &replicas {
        let view = eventually(Duration::from_secs(5), || async {
            let view = replica.consumer(&consumer).await;
            (view["signing"]["previousFingerprint"] == old_fingerprint)
                .then_some(view.clone())
                .ok_or_else(|| view.to_string())
        })
        .await;
        assert_ne!(view["signing"]["fingerprint"], old_fingerprint);
        assert_eq!(
            view["signing"]["previousExpiresAt"],
            rotated["previousExpiresAt"]
        );
        let shown = view.to_string();
        assert!(
            !shown.contains(&whsec(&new_key)[6..]) && !shown.contains(&whsec(&old_key)[6..]),
            "no secret is shown: {shown}"
        );
    }

    let mut ids = BTreeSet::new();
    for n in 0..6 {
        ids.insert(first.publish(&queue, json!({ "n": n })).await);
    }
    target.wait_for_delivered(&ids, DEADLINE).await;
    let requests = target.requests_to("/rotate");
    assert!(
        requests.iter().any(|r| r.attempt() > 1),
        "retries were made and checked"
    );
    for request in &requests {
        assert_eq!(
            signatures(request),
            vec![
                signature_with(&new_key, request),
                signature_with(&old_key, request)
            ],
            "the new signature first, then the old one: {request:?}"
        );
    }

    // A second rotation inside the grace period would cut the old secret
    // short: refused, and nothing changes.
    assert_conflict_naming(
        api.post(
            "/rotateSigningSecret",
            &json!({ "consumerId": consumer, "gracePeriodMs": 1000 }),
        )
        .await,
        &["force"],
    )
    .await;
    let unchanged = api.consumer(&consumer).await;
    assert_eq!(unchanged["signing"]["previousFingerprint"], old_fingerprint);

    // With `force`, the oldest secret goes; the one just replaced stays.
    let forced = rotate_on_both(
        api,
        &consumer,
        &json!({ "consumerId": consumer, "force": true }),
    )
    .await;
    let newest = forced["signingSecret"]
        .as_str()
        .expect("a generated secret");
    assert!(newest.starts_with("whsec_"), "{forced}");
    let view = api.consumer(&consumer).await;
    assert_eq!(
        view["signing"]["previousFingerprint"],
        unchanged["signing"]["fingerprint"]
    );
    let id = first.publish(&queue, json!({ "n": "forced" })).await;
    target
        .wait_for_delivered(&BTreeSet::from([id.clone()]), DEADLINE)
        .await;
    let request = target
        .requests_to("/rotate")
        .into_iter()
        .rfind(|r| r.webhook_id() == id)
        .expect("delivered");
    assert_eq!(
        signatures(&request),
        vec![
            signature_with(&key_of(newest), &request),
            signature_with(&new_key, &request)
        ]
    );
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_grace_period_requests_carry_the_new_signature_alone() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    let queue = app.unique_queue("rotate-expiry");
    api.create_queue(&queue).await;
    let old_key: [u8; 32] = rand::random();
    let consumer = api
        .create_http_consumer(
            &queue,
            &target.url("/expiry"),
            json!({ "signingSecret": whsec(&old_key) }),
        )
        .await;
    // The gateway makes the new secret.
    let rotated = rotate(
        &api,
        &json!({ "consumerId": consumer, "gracePeriodMs": 2000 }),
    )
    .await;
    let new_key = key_of(rotated["signingSecret"].as_str().expect("a secret"));

    // The view drops the old fingerprint once the grace period is over.
    eventually(Duration::from_secs(10), || async {
        let view = api.consumer(&consumer).await;
        view["signing"]["previousFingerprint"]
            .is_null()
            .then_some(())
            .ok_or_else(|| view.to_string())
    })
    .await;
    let id = app.publish(&queue, json!({ "after": "grace" })).await;
    target
        .wait_for_delivered(&BTreeSet::from([id]), DEADLINE)
        .await;
    let request = &target.requests_to("/expiry")[0];
    assert_eq!(signatures(request), vec![signature_with(&new_key, request)]);
    assert_ne!(signatures(request)[0], signature_with(&old_key, request));
    target.stop().await;
}

#[tokio::test]
async fn bad_rotations_are_refused_naming_the_field_and_change_nothing() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    let queue = app.unique_queue("rotate-bad");
    api.create_queue(&queue).await;
    let key: [u8; 32] = rand::random();
    let consumer = api
        .create_http_consumer(
            &queue,
            &target.url("/bad"),
            json!({ "signingSecret": whsec(&key) }),
        )
        .await;
    let before = api.consumer(&consumer).await["signing"].clone();

    for (body, field) in [
        (
            json!({ "consumerId": consumer, "gracePeriodMs": 604_800_001_u64 }),
            "gracePeriodMs",
        ),
        (
            json!({ "consumerId": consumer, "gracePeriodMs": -1 }),
            "gracePeriodMs",
        ),
        (
            json!({ "consumerId": consumer, "signingSecret": "not-whsec" }),
            "signingSecret",
        ),
        (json!({ "consumerId": "nope" }), "consumerId"),
        (json!({ "consumerId": consumer, "grace": 1 }), "grace"),
        (json!({}), "consumerId"),
    ] {
        assert_refused_naming(api.post("/rotateSigningSecret", &body).await, field, &body).await;
    }
    assert_error(
        api.post(
            "/rotateSigningSecret",
            &json!({ "consumerId": uuid::Uuid::new_v4().to_string() }),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(api.consumer(&consumer).await["signing"], before);
    target.stop().await;
}

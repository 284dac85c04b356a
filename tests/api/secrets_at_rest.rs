//! Secrets are sealed at rest (`SECRETS_KEY`): no document in the
//! gateway's database holds a secret a test sent, in any form shorter than
//! its ciphertext; deliveries still carry them; a gateway started with
//! another key refuses to start, naming `SECRETS_KEY`; what an earlier
//! version stored in clear is sealed at start, and `SECRETS_KEY_PREVIOUS`
//! moves everything to a new key.

use std::time::Duration;

use base64::Engine;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use reqwest::StatusCode;
use serde_json::json;

use crate::delivery::{expected_signature, signing_secret};
use crate::support::app::new_secrets_key;
use crate::support::gateway_process::{Deployment, GatewayProcess};
use crate::support::target_server::TargetServer;
use crate::support::{assert_json, mongodb_uri, spawn_app, Api};

const DELIVERED: Duration = Duration::from_secs(15);
const RUNNING: Duration = Duration::from_secs(10);

fn random_token(label: &str) -> String {
    format!("{label}-{}", uuid::Uuid::new_v4().simple())
}

/// Every form of `secret` shorter than its ciphertext that a careless
/// store could hold: as is, base64 (both alphabets, padded or not) and hex.
fn forms_of(secret: &[u8]) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut forms = vec![String::from_utf8_lossy(secret).into_owned()];
    for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        forms.push(engine.encode(secret));
    }
    forms.push(secret.iter().map(|b| format!("{b:02x}")).collect());
    forms
}

/// Every document of every collection of database `db`, as text.
async fn every_document(db: &str) -> Vec<String> {
    let client = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .expect("the tests reach the store");
    let database = client.database(db);
    let mut texts = Vec::new();
    for name in database
        .list_collection_names()
        .await
        .expect("the collections")
    {
        let docs: Vec<Document> = database
            .collection::<Document>(&name)
            .find(doc! {})
            .await
            .expect("a find")
            .try_collect()
            .await
            .expect("the documents");
        texts.extend(docs.iter().map(|d| format!("{name}: {d}")));
    }
    texts
}

fn assert_nowhere(texts: &[String], secrets: &[&[u8]]) {
    for secret in secrets {
        for form in forms_of(secret) {
            for text in texts {
                assert!(!text.contains(&form), "`{form}` is stored: {text}");
            }
        }
    }
}

async fn consumer_document(db: &str, consumer: &str) -> Document {
    let client = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .expect("the tests reach the store");
    client
        .database(db)
        .collection::<Document>("consumers")
        .find_one(doc! { "_id": consumer })
        .await
        .expect("a find")
        .expect("the consumer is stored")
}

async fn publish(api: &Api, queue: &str, n: u32) {
    assert_json(
        api.post(
            "/messagePublish",
            &json!({ "queueName": queue, "message": { "n": n } }),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
}

/// Waits for `count` requests at `path` and checks that each carries the
/// header and a signature under `key`.
async fn assert_delivered_with(
    target: &TargetServer,
    path: &str,
    count: usize,
    key: &[u8],
    header: (&str, &str),
) {
    crate::support::eventually(DELIVERED, || async {
        match target.requests_to(path).len() {
            n if n >= count => Ok(()),
            n => Err(format!("{n} of {count} requests at {path}")),
        }
    })
    .await;
    let requests = target.requests_to(path);
    assert_eq!(requests.len(), count);
    for request in &requests {
        assert_eq!(request.header(header.0), Some(header.1), "{request:?}");
        let id = request.webhook_id();
        let timestamp = request.header("webhook-timestamp").expect("a timestamp");
        assert_eq!(
            request.header("webhook-signature"),
            Some(expected_signature(key, &id, timestamp, &request.body).as_str()),
            "the signature of {id} does not verify"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_document_holds_a_secret_and_deliveries_still_carry_them() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    let queue = app.unique_queue("sealed");
    api.create_queue(&queue).await;
    let (secret, key) = signing_secret();
    let api_key = random_token("k3y");
    let bearer = random_token("t0ken");
    let consumer = api
        .create_http_consumer(
            &queue,
            &target.url("/sealed"),
            json!({
                "signingSecret": secret,
                "target": { "headers": {
                    "x-api-key": api_key,
                    "x-auth-token": format!("Bearer {bearer}"),
                } },
            }),
        )
        .await;
    api.wait_for_consumer(&consumer, RUNNING, "running", |v| v["state"] == "running")
        .await;
    publish(&api, &queue, 1).await;
    assert_delivered_with(&target, "/sealed", 1, &key, ("x-api-key", &api_key)).await;

    // Through an update too, which writes a `$set` of its own.
    let (new_secret, new_key) = signing_secret();
    let new_api_key = random_token("n3w");
    assert_json(
        api.post(
            "/updateConsumer",
            &json!({
                "consumerId": consumer,
                "signingSecret": new_secret,
                "target": {
                    "type": "http",
                    "url": target.url("/updated"),
                    "headers": { "x-api-key": new_api_key },
                },
            }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    publish(&api, &queue, 2).await;
    assert_delivered_with(
        &target,
        "/updated",
        1,
        &new_key,
        ("x-api-key", &new_api_key),
    )
    .await;

    // And a rotation, which keeps the replaced secret as the previous one.
    let rotated = assert_json(
        api.post("/rotateSigningSecret", &json!({ "consumerId": consumer }))
            .await,
        StatusCode::OK,
    )
    .await;
    let rotated_secret = rotated["signingSecret"]
        .as_str()
        .expect("the new secret, shown once")
        .to_owned();

    // Target credentials: a basic password, an OAuth2 client secret and a
    // TLS client key, each on a consumer of its own.
    let password = random_token("pa55");
    let client_secret = random_token("cl1ent");
    let pki = crate::support::tls_target::TestPki::new();
    for (label, fields) in [
        (
            "basic",
            json!({ "auth": { "type": "basic", "username": "u", "password": password } }),
        ),
        (
            "oauth2",
            json!({ "auth": { "type": "oauth2", "tokenUrl": target.url("/token"), "clientId": "c", "clientSecret": client_secret } }),
        ),
        (
            "tls",
            json!({ "tls": { "clientCertPem": pki.client_cert_pem, "clientKeyPem": pki.client_key_pem } }),
        ),
    ] {
        let queue = app.unique_queue(label);
        api.create_queue(&queue).await;
        let mut target_fields = json!({ "type": "http", "url": target.url("/auth") });
        for (name, value) in fields.as_object().expect("an object") {
            target_fields[name] = value.clone();
        }
        let created = assert_json(
            api.post(
                "/createConsumer",
                &json!({ "queueName": queue, "target": target_fields }),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
        assert!(created.to_string().contains("***"), "{created}");
    }

    let stored = consumer_document(&app.db_name, &consumer).await;
    for field in ["signingSecret", "previousSigningSecret"] {
        let sealed = stored.get_str(field).expect("a signing secret");
        assert!(sealed.starts_with("enc:v1:"), "{field}: {stored}");
    }
    let texts = every_document(&app.db_name).await;
    assert!(texts.iter().any(|t| t.contains(&consumer)), "{texts:?}");
    assert_nowhere(
        &texts,
        &[
            secret.as_bytes(),
            &key,
            api_key.as_bytes(),
            bearer.as_bytes(),
            new_secret.as_bytes(),
            &new_key,
            new_api_key.as_bytes(),
            rotated_secret.as_bytes(),
            password.as_bytes(),
            client_secret.as_bytes(),
            pki.client_key_pem.as_bytes(),
            pem_body(&pki.client_key_pem).as_bytes(),
        ],
    );
    target.stop().await;
}

/// The base64 inside a PEM block, on one line: a store could hold the key
/// that way too.
fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

/// Creates `queue` and a signed consumer with an API-key header on
/// `gateway`; returns the consumer id.
async fn signed_consumer(
    gateway: &GatewayProcess,
    queue: &str,
    url: &str,
    secret: &str,
    api_key: &str,
) -> String {
    gateway.api.create_queue(queue).await;
    gateway
        .api
        .create_http_consumer(
            queue,
            url,
            json!({ "signingSecret": secret, "target": { "headers": { "x-api-key": api_key } } }),
        )
        .await
}

async fn stop(mut gateway: GatewayProcess) {
    gateway.terminate();
    let status = gateway
        .wait_for_exit(Duration::from_secs(10))
        .await
        .expect("the gateway stops on SIGTERM");
    assert!(status.success(), "{status}");
}

fn key_id(key: &str) -> String {
    credentials::SecretsKey::from_base64(key)
        .expect("a valid key")
        .id()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_a_missing_or_another_key_refuses_to_start_naming_secrets_key() {
    let deployment = Deployment::new();
    let target = TargetServer::start().await;
    let gateway = deployment
        .start_gateway(&deployment.instance_id("first"))
        .await;
    let (secret, _) = signing_secret();
    signed_consumer(
        &gateway,
        &deployment.queue("keyed"),
        &target.url("/keyed"),
        &secret,
        &random_token("k3y"),
    )
    .await;
    stop(gateway).await;

    let another = new_secrets_key();
    for (label, key) in [
        ("another", another.as_str()),
        ("missing", ""),
        ("short", "c2hvcnQ="),
    ] {
        let (status, output) = deployment
            .gateway_refusing_to_start(&deployment.instance_id(label), &[("SECRETS_KEY", key)])
            .await;
        assert!(!status.success(), "{label}: {status}");
        assert!(
            output.contains("SECRETS_KEY"),
            "{label}: the output names SECRETS_KEY: {output}"
        );
        assert!(!output.contains(&secret[6..]), "{label}: {output}");
    }

    // The right key still opens everything.
    let again = deployment
        .start_gateway(&deployment.instance_id("again"))
        .await;
    stop(again).await;
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_records_are_sealed_at_start_and_a_previous_key_is_rotated_out() {
    let deployment = Deployment::new();
    let target = TargetServer::start().await;
    let queue = deployment.queue("migrated");
    let (secret, key) = signing_secret();
    let api_key = random_token("k3y");
    let first = deployment
        .start_gateway(&deployment.instance_id("first"))
        .await;
    let consumer = signed_consumer(&first, &queue, &target.url("/m"), &secret, &api_key).await;
    stop(first).await;

    // As a version before sealing stored it.
    let client = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .expect("the tests reach the store");
    let consumers = client
        .database(&deployment.db_name)
        .collection::<Document>("consumers");
    consumers
        .update_one(
            doc! { "_id": &consumer },
            doc! { "$set": { "signingSecret": &secret, "target.headers.x-api-key": &api_key } },
        )
        .await
        .expect("the plain record is written");

    let old_key = deployment.secrets_key.clone();
    let sealed_under = |key: &str| format!("enc:v1:{}:", key_id(key));
    let second = deployment
        .start_gateway(&deployment.instance_id("second"))
        .await;
    let stored = consumer_document(&deployment.db_name, &consumer).await;
    assert!(
        stored
            .get_str("signingSecret")
            .is_ok_and(|s| s.starts_with(&sealed_under(&old_key))),
        "sealed at start: {stored}"
    );
    assert_nowhere(
        &every_document(&deployment.db_name).await,
        &[secret.as_bytes(), &key, api_key.as_bytes()],
    );
    publish(&second.api, &queue, 1).await;
    assert_delivered_with(&target, "/m", 1, &key, ("x-api-key", &api_key)).await;
    stop(second).await;

    // A new key, the old one as previous: everything moves to the new one,
    // so the old one is no longer needed.
    let new_key = new_secrets_key();
    let third = deployment
        .start_gateway_with(
            &deployment.instance_id("third"),
            &[
                ("SECRETS_KEY", new_key.as_str()),
                ("SECRETS_KEY_PREVIOUS", old_key.as_str()),
            ],
            None,
        )
        .await;
    let stored = consumer_document(&deployment.db_name, &consumer).await;
    let headers = stored
        .get_document("target")
        .and_then(|t| t.get_document("headers"))
        .expect("the target's headers");
    for value in [
        stored.get_str("signingSecret"),
        headers.get_str("x-api-key"),
    ] {
        assert!(
            value.is_ok_and(|s| s.starts_with(&sealed_under(&new_key))),
            "sealed again under the new key: {stored}"
        );
    }
    stop(third).await;
    let fourth = deployment
        .start_gateway_with(
            &deployment.instance_id("fourth"),
            &[("SECRETS_KEY", new_key.as_str())],
            None,
        )
        .await;
    publish(&fourth.api, &queue, 2).await;
    assert_delivered_with(&target, "/m", 2, &key, ("x-api-key", &api_key)).await;
    stop(fourth).await;
    target.stop().await;
}

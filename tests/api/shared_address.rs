//! A shared address does not lock everyone out: a credential that verified
//! lately passes while its address is throttled, and behind a trusted proxy
//! (`TRUSTED_PROXIES`) clients are throttled by the address it forwards
//! for, while from anywhere else forwarding headers are ignored.
//!
//! Every test client runs on loopback; each test floods from its own
//! 127.0.0.x so the tests do not throttle one another's addresses.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{assert_error, basic_auth, bearer, spawn_app, spawn_app_with, TestApp};

/// A client whose connections come from `127.0.0.<last>`.
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client")
}

fn wrong_password(app: &TestApp) -> String {
    basic_auth(
        &app.admin_user,
        &format!("wrong-{}", uuid::Uuid::new_v4().simple()),
    )
}

/// `GET /getQueues` with `auth` and the given extra headers.
async fn get_queues(
    http: &reqwest::Client,
    app: &TestApp,
    auth: &str,
    headers: &[(&str, &str)],
) -> StatusCode {
    let mut request = http.get(app.url("/getQueues")).header(AUTHORIZATION, auth);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("the request is sent").status()
}

async fn publish(http: &reqwest::Client, app: &TestApp, queue: &str, n: u32) -> StatusCode {
    http.post(app.url("/messagePublish"))
        .header(AUTHORIZATION, app.admin_auth())
        .json(&json!({ "queueName": queue, "message": { "n": n } }))
        .send()
        .await
        .expect("the request is sent")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_whose_password_verified_keeps_publishing_from_an_address_flooded_with_wrong_credentials(
) {
    let app = spawn_app().await;
    let queue = app.unique_queue("shared");
    app.create_queue(&queue, json!({})).await;
    // Minted from 127.0.0.1 and never used: right, but not verified yet.
    let unused_key = bearer(&app.create_api_key("publisher").await);
    let admin = client_from(20);
    assert_eq!(publish(&admin, &app, &queue, 0).await, StatusCode::ACCEPTED);

    // 16 clients on the admin's address send wrong credentials, 5 each,
    // while the admin keeps publishing from it.
    let flood = futures_util::future::join_all((0..16).map(|_| {
        let app = &app;
        async move {
            let client = client_from(20);
            let mut statuses = Vec::new();
            for _ in 0..5 {
                statuses.push(get_queues(&client, app, &wrong_password(app), &[]).await);
            }
            statuses
        }
    }));
    let publishing = async {
        let mut statuses = Vec::new();
        for n in 1..=20 {
            statuses.push(publish(&admin, &app, &queue, n).await);
        }
        statuses
    };
    let (flooded, published) = tokio::join!(flood, publishing);
    let flooded: Vec<StatusCode> = flooded.into_iter().flatten().collect();
    assert!(
        flooded
            .iter()
            .all(|s| [StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS].contains(s)),
        "{flooded:?}"
    );
    assert!(
        flooded.contains(&StatusCode::TOO_MANY_REQUESTS),
        "the flood got the address throttled: {flooded:?}"
    );
    assert!(
        published.iter().all(|s| *s == StatusCode::ACCEPTED),
        "the admin was never refused: {published:?}"
    );

    // The address is still refused for everything else, a right key not
    // verified before included; the admin still publishes.
    assert_eq!(
        get_queues(&admin, &app, &wrong_password(&app), &[]).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_error(
        admin
            .get(app.url("/getQueues"))
            .header(AUTHORIZATION, &unused_key)
            .send()
            .await
            .expect("the request is sent"),
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
    )
    .await;
    assert_eq!(
        publish(&admin, &app, &queue, 21).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(app.message_count(&queue).await, Some(22));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_forwarded_clients_are_throttled_apart() {
    let app = spawn_app_with(&[("TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    let proxy = client_from(1);
    let guesser = [("x-forwarded-for", "203.0.113.10")];
    for _ in 0..10 {
        assert_eq!(
            get_queues(&proxy, &app, &wrong_password(&app), &guesser).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        get_queues(&proxy, &app, &wrong_password(&app), &guesser).await,
        StatusCode::TOO_MANY_REQUESTS,
        "the forwarded client that guessed is throttled"
    );

    // Another client behind the same proxy is still checked, whichever
    // header the proxy writes.
    for other in [
        ("x-forwarded-for", "203.0.113.11"),
        ("forwarded", "for=203.0.113.12;proto=http"),
    ] {
        assert_eq!(
            get_queues(&proxy, &app, &wrong_password(&app), &[other]).await,
            StatusCode::UNAUTHORIZED,
            "{other:?}"
        );
    }
    assert_eq!(
        get_queues(
            &proxy,
            &app,
            &app.admin_auth(),
            &[("x-forwarded-for", "203.0.113.11")]
        )
        .await,
        StatusCode::OK
    );
    // The guesser cannot escape by writing an address of its own before the
    // one the proxy appended: only the right-most untrusted one counts.
    assert_eq!(
        get_queues(
            &proxy,
            &app,
            &wrong_password(&app),
            &[("x-forwarded-for", "198.51.100.1, 203.0.113.10")]
        )
        .await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A peer that is not a trusted proxy is its own client, whatever it
    // forwards.
    assert_eq!(
        get_queues(&client_from(21), &app, &wrong_password(&app), &guesser).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_trusted_proxies_forwarding_headers_are_ignored() {
    let app = spawn_app().await;
    let client = client_from(22);
    for n in 0..10 {
        let forwarded = format!("203.0.113.{n}");
        assert_eq!(
            get_queues(
                &client,
                &app,
                &wrong_password(&app),
                &[("x-forwarded-for", &forwarded)]
            )
            .await,
            StatusCode::UNAUTHORIZED
        );
    }
    for header in [
        ("x-forwarded-for", "198.51.100.1"),
        ("forwarded", "for=198.51.100.2"),
    ] {
        assert_eq!(
            get_queues(&client, &app, &wrong_password(&app), &[header]).await,
            StatusCode::TOO_MANY_REQUESTS,
            "every request counted against the peer: {header:?}"
        );
    }
}

//! Size limits and bounded broker state: message headers, retry-delay ladder, consumer cap.
//! Also who may publish raw events to the built-in queues, and payloads
//! published digit for digit.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lapin::types::AMQPValue;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::target_server::{Reply, TargetServer};
use crate::support::{assert_error, assert_json, bearer, eventually, spawn_app, spawn_app_with};
use crate::support::{binary_messages, management_client, management_get, publish_confirmed, Api};

/// `MAX_HEADER_BYTES` when not set.
const DEFAULT_MAX_HEADER_BYTES: usize = 65_536;
/// A field table holding one long-string header named `h` of `n` bytes
/// takes 4 (table length) + 2 (name) + 1 (type) + 4 (string length) + n.
const ONE_HEADER_OVERHEAD: usize = 4 + 2 + 1 + 4;

/// The broker's names (`ip:port -> ip:port`) of the app's AMQP connections:
/// those whose client name is `workerrmq-<instance id>`, alone or with a
/// suffix (`-publish`, `-consume`).
async fn gateway_connections(http: &reqwest::Client, instance_id: &str) -> BTreeSet<String> {
    let own = format!("workerrmq-{instance_id}");
    let rows = management_get(http, "/api/connections?columns=name,client_properties").await;
    rows.as_array()
        .expect("a list of connections")
        .iter()
        .filter(|row| {
            row["client_properties"]["connection_name"]
                .as_str()
                .is_some_and(|name| name == own || name.starts_with(&format!("{own}-")))
        })
        .filter_map(|row| row["name"].as_str().map(str::to_owned))
        .collect()
}

/// The error answer's message says every one of `words`.
fn assert_mentions(error: &Value, words: &[&str]) {
    let message = error["message"].as_str().unwrap_or_default();
    for word in words {
        assert!(message.contains(word), "`{word}` is not in {error}");
    }
}

/// Waits until the target has taken the message `id` with a 2xx.
async fn wait_until_delivered(target: &TargetServer, id: &str) {
    eventually(Duration::from_secs(10), || async {
        if target.ids_delivered().contains(id) {
            Ok(())
        } else {
            Err(format!("`{id}` has not reached the target"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused_and_the_broker_connection_is_untouched() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    // A consumer on another queue, delivering before and after.
    let consumed = app.unique_queue("consumed");
    let consumer = api
        .queue_with_consumer(&consumed, &target.url("/hook"), json!({}))
        .await;
    api.wait_for_consumer(&consumer, Duration::from_secs(10), "running", |v| {
        v["state"] == "running"
    })
    .await;
    let before = app.publish(&consumed, json!({ "before": true })).await;
    wait_until_delivered(&target, &before).await;

    let management = management_client();
    let connections = eventually(Duration::from_secs(20), || async {
        let found = gateway_connections(&management, &app.instance_id).await;
        if found.is_empty() {
            Err(format!(
                "no connection named workerrmq-{}* yet",
                app.instance_id
            ))
        } else {
            Ok(found)
        }
    })
    .await;

    let refused = app.unique_queue("refused");
    app.create_queue(&refused, json!({})).await;
    let error = assert_error(
        app.post_json(
            "/messagePublish",
            &json!({
                "queueName": refused,
                "message": { "n": 1 },
                "headers": { "h": "x".repeat(200 * 1024) },
            }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert_mentions(&error, &["`headers`", "MAX_HEADER_BYTES"]);
    assert_eq!(
        app.message_count(&refused).await,
        Some(0),
        "nothing published"
    );

    // The same consumer keeps delivering, publishing still works ...
    let after = app.publish(&consumed, json!({ "after": true })).await;
    wait_until_delivered(&target, &after).await;
    // The ack follows the target's answer (coalesced by the ack window), so
    // the count may trail the delivery by a moment.
    let view = api
        .wait_for_consumer(&consumer, Duration::from_secs(10), "acked twice", |v| {
            v["stats"]["acked"] == 2
        })
        .await;
    assert_eq!(view["state"], "running", "{view}");
    // ... on the very connections it had: none was closed and reopened.
    let now = gateway_connections(&management, &app.instance_id).await;
    assert!(
        connections.is_subset(&now),
        "the gateway's connections before {connections:?}, after {now:?}"
    );

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_up_to_max_header_bytes_encoded_are_accepted_one_more_byte_is_not() {
    let app = spawn_app().await;
    let queue = app.unique_queue("big_headers");
    app.create_queue(&queue, json!({})).await;
    let fits = "y".repeat(DEFAULT_MAX_HEADER_BYTES - ONE_HEADER_OVERHEAD);

    let too_big = format!("{fits}y");
    let error = assert_error(
        app.post_json(
            "/messagePublish",
            &json!({ "queueName": queue, "message": 1, "headers": { "h": too_big } }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert_mentions(&error, &["`headers`", "65537"]);
    assert_eq!(app.message_count(&queue).await, Some(0));

    assert_json(
        app.post_json(
            "/messagePublish",
            &json!({ "queueName": queue, "message": 1, "headers": { "h": fits } }),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    let delivered = app.get_message(&queue).await.expect("the message").delivery;
    let headers = delivered
        .properties
        .headers()
        .as_ref()
        .expect("headers")
        .inner()
        .clone();
    assert_eq!(
        headers.get("h"),
        Some(&AMQPValue::LongString(fits.as_str().into())),
        "the header arrives whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_beyond_64_bits_are_published_digit_for_digit() {
    let app = spawn_app().await;
    let queue = app.unique_queue("big_numbers");
    app.create_queue(&queue, json!({})).await;
    // serde_json's own `Value` would turn these into floats: send raw text.
    let message = r#"{"n":123456789012345678901234567890,"m":-98765432109876543210987654321,"x":1.000000000000000000000000000001}"#;
    let body = format!(r#"{{"queueName":"{queue}","message":{message}}}"#);

    assert_json(
        app.post_raw("/messagePublish", Some("application/json"), body)
            .await,
        StatusCode::ACCEPTED,
    )
    .await;

    let delivered = app.get_message(&queue).await.expect("the message").delivery;
    assert_eq!(
        String::from_utf8_lossy(&delivered.data),
        message,
        "the payload is the message as sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_publish_raw_events_to_the_builtin_queues() {
    let app = spawn_app().await;
    let publisher = bearer(&app.create_api_key("publisher").await);
    // With BUILTIN_CONSUMERS off the queues may not exist yet; make them.
    let builtin: Vec<String> = ["users_queue", "reports_queue", "scrape_jobs"]
        .into_iter()
        .map(|name| app.unique_queue(name))
        .collect();
    for queue in &builtin {
        let status = app
            .post_json("/createQueue", &json!({ "queueName": queue }))
            .await
            .status();
        assert!(status.is_success(), "creating {queue}: {status}");
    }
    let event = json!({ "event_type": "user.delete", "email": "victim@example.com" });

    for queue in &builtin {
        let error = assert_error(
            app.post_json_with_auth(
                "/messagePublish",
                &json!({ "queueName": queue, "message": event }),
                &publisher,
            )
            .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        assert_mentions(&error, &["admin", queue]);
        assert_eq!(app.message_count(queue).await, Some(0), "{queue}");
    }

    // Other queues are open to publishers; the built-in ones to admins.
    let ordinary = app.unique_queue("ordinary");
    app.create_queue(&ordinary, json!({})).await;
    assert_json(
        app.post_json_with_auth(
            "/messagePublish",
            &json!({ "queueName": ordinary, "message": event }),
            &publisher,
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    app.publish(&builtin[0], event.clone()).await;
    assert_eq!(app.message_count(&builtin[0]).await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_beyond_max_consumers_are_refused_with_409() {
    // spawn_app runs without the built-in consumers, so the cap is all ours.
    let app = spawn_app_with(&[("MAX_CONSUMERS", "2")]).await;
    let api = Api::of(&app);
    let queue = app.unique_queue("capped");
    api.create_queue(&queue).await;
    let body = json!({
        "queueName": queue,
        "target": { "type": "http", "url": "http://127.0.0.1:9/hook" },
    });
    let first = api
        .create_http_consumer(&queue, "http://127.0.0.1:9/hook", json!({}))
        .await;
    api.create_http_consumer(&queue, "http://127.0.0.1:9/hook", json!({}))
        .await;

    let error = assert_error(
        app.post_json("/createConsumer", &body).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    assert_mentions(&error, &["MAX_CONSUMERS", "limit is 2"]);
    let listed = assert_json(app.get("/getConsumers").await, StatusCode::OK).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    // A freed place can be taken again.
    api.delete_consumer(&first).await;
    api.create_http_consumer(&queue, "http://127.0.0.1:9/hook", json!({}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builtin_consumers_count_toward_max_consumers_but_always_start() {
    let app = spawn_app_with(&[("BUILTIN_CONSUMERS", "true"), ("MAX_CONSUMERS", "2")]).await;
    eventually(Duration::from_secs(20), || async {
        let listed = assert_json(app.get("/getConsumers").await, StatusCode::OK).await;
        let running = listed.as_array().map_or(0, |all| {
            all.iter().filter(|c| c["state"] == "running").count()
        });
        if running == 3 {
            Ok(())
        } else {
            Err(format!(
                "{running} of the 3 built-in consumers running: {listed}"
            ))
        }
    })
    .await;

    let queue = app.unique_queue("over_cap");
    app.create_queue(&queue, json!({})).await;
    let error = assert_error(
        app.post_json(
            "/createConsumer",
            &json!({
                "queueName": queue,
                "target": { "type": "http", "url": "http://127.0.0.1:9/hook" },
            }),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    assert_mentions(&error, &["runs 3 consumers", "MAX_CONSUMERS"]);
}

/// Messages answered with a distinct `Retry-After` each.
const DISTINCT_RETRY_AFTERS: usize = 10_000;
/// Below the ladder's top step (24 h), so the cap itself is a delay too.
const MAX_DELAY_MS: u64 = 50_000_000;
const LADDER_MS: [u64; 15] = [
    1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_800_000, 3_600_000,
    7_200_000, 21_600_000, 43_200_000, 86_400_000,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_retry_after_values_make_no_more_delay_queues_than_the_ladder_has_steps() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    // Every first answer a 503 with its own Retry-After, from 1 s up to
    // 22 hours (second by second at first, so every ladder step is asked
    // for): whole seconds, or an HTTP date, which less "now" is a different
    // sub-second wait on every request.
    let now = chrono::Utc::now();
    let replies: Vec<Reply> = (0..DISTINCT_RETRY_AFTERS as i64)
        .map(|i| {
            let seconds = if i < 100 { 1 + i } else { 100 + 8 * (i - 100) };
            let value = if i < 100 || i % 2 == 0 {
                seconds.to_string()
            } else {
                (now + chrono::Duration::seconds(seconds))
                    .format("%a, %d %b %Y %H:%M:%S GMT")
                    .to_string()
            };
            Reply::status(503).with_retry_after(&value)
        })
        .collect();
    target.script("/hostile", replies, Reply::ok());
    let queue = app.unique_queue("hostile");
    let consumer = api
        .queue_with_consumer(
            &queue,
            &target.url("/hostile"),
            json!({
                "prefetch": 1000,
                "retry": { "maxAttempts": 5, "initialDelayMs": 1000, "multiplier": 2, "maxDelayMs": MAX_DELAY_MS },
                // Every first answer fails on purpose; a breaker would stop them.
                "circuitBreaker": null,
            }),
        )
        .await;
    let started = Instant::now();
    let messages = binary_messages("hostile", DISTINCT_RETRY_AFTERS);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;

    let view = api
        .wait_for_consumer(&consumer, Duration::from_secs(120), "all retried", |v| {
            v["stats"]["retried"].as_u64().unwrap_or(0) >= DISTINCT_RETRY_AFTERS as u64
        })
        .await;
    eprintln!(
        "{DISTINCT_RETRY_AFTERS} distinct Retry-After values retried in {:?}",
        started.elapsed()
    );
    assert_eq!(view["stats"]["deadLettered"], 0, "{view}");

    let retry_prefix = format!("{queue}.retry.");
    let delays: BTreeSet<u64> = app
        .broker_queues()
        .await
        .iter()
        .filter_map(|row| row["name"].as_str())
        .filter_map(|name| name.strip_prefix(retry_prefix.as_str()))
        .map(|ms| {
            ms.parse()
                .unwrap_or_else(|_| panic!("a delay queue named `{retry_prefix}{ms}`"))
        })
        .collect();
    let allowed: BTreeSet<u64> = LADDER_MS
        .into_iter()
        .filter(|&step| step < MAX_DELAY_MS)
        .chain([MAX_DELAY_MS])
        .collect();
    assert!(
        delays.is_subset(&allowed),
        "delay queues off the ladder: {:?}",
        delays.difference(&allowed).collect::<Vec<_>>()
    );
    // The values spanned the whole ladder, so every step is used: the
    // bound is met by snapping, not by never retrying.
    assert_eq!(delays, allowed);

    target.stop().await;
}

//! Bad input gets a clear 4xx and changes nothing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{assert_error, spawn_app, spawn_app_with, TestApp};

/// Whether the broker lists a queue of this exact name.
async fn broker_lists(app: &TestApp, queue: &str) -> bool {
    app.broker_queues()
        .await
        .iter()
        .any(|row| row["name"] == queue)
}

/// Non-exclusive server-named queues: what declaring an empty name would
/// leave behind.
async fn server_named_queues(app: &TestApp) -> BTreeSet<String> {
    app.broker_queues()
        .await
        .iter()
        .filter(|row| row["exclusive"] != true)
        .filter_map(|row| row["name"].as_str())
        .filter(|name| name.starts_with("amq.gen-"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_a_bad_request() {
    let app = spawn_app().await;
    let queue = app.unique_queue("malformed");

    for body in [
        format!(r#"{{"queueName": "{queue}""#),
        format!(r#"{{"queueName": '{queue}'}}"#),
        format!(r#"{{"queueName": "{queue}"}} trailing"#),
    ] {
        let body = assert_error(
            app.post_raw("/createQueue", Some("application/json"), body)
                .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
        let message = body["message"].as_str().expect("a message");
        assert!(message.contains("not valid JSON"), "{message}");
    }
    assert!(!app.queue_exists(&queue).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_of_the_wrong_type_is_named() {
    let app = spawn_app().await;
    let queue = app.unique_queue("typed");

    let body = assert_error(
        app.post_json(
            "/createQueue",
            &json!({ "queueName": queue, "durable": "yes" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;

    let message = body["message"].as_str().expect("a message");
    assert!(message.contains("durable"), "{message}");
    assert!(!app.queue_exists(&queue).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_refused_and_named() {
    let app = spawn_app().await;
    let queue = app.unique_queue("typo");

    let body = assert_error(
        app.post_json(
            "/createQueue",
            &json!({ "queueName": queue, "durible": true }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;

    let message = body["message"].as_str().expect("a message");
    assert!(message.contains("durible"), "{message}");
    assert!(!app.queue_exists(&queue).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_not_declared_json_are_unsupported() {
    let app = spawn_app().await;
    let queue = app.unique_queue("untyped");
    let body = json!({ "queueName": queue }).to_string();

    for content_type in [None, Some("text/plain")] {
        assert_error(
            app.post_raw("/createQueue", content_type, body.clone())
                .await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
    }
    assert!(!app.queue_exists(&queue).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused() {
    let app = spawn_app_with(&[("MAX_BODY_BYTES", "1024")]).await;
    let queue = app.unique_queue("small");
    app.create_queue(&queue, json!({})).await;
    let body = json!({ "queueName": queue, "message": "x".repeat(2048) });

    assert_error(
        app.post_json("/messagePublish", &body).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;

    assert_eq!(app.message_count(&queue).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_reserved_queue_names_are_refused() {
    let app = spawn_app().await;
    let server_named_before = server_named_queues(&app).await;
    let too_long = format!("{}{}", app.prefix, "x".repeat(256 - app.prefix.len()));
    assert_eq!(too_long.len(), 256);
    let reserved = format!("amq.{}reserved", app.prefix);

    for name in ["", too_long.as_str(), reserved.as_str()] {
        assert_error(
            app.post_json("/createQueue", &json!({ "queueName": name }))
                .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
    }

    assert!(!broker_lists(&app, &too_long).await);
    assert!(!broker_lists(&app, &reserved).await);
    assert!(!app.queue_exists(&reserved).await);
    // An empty name would have made the broker name the queue, and given
    // it a `.dlq` companion called just that.
    assert!(!app.queue_exists(".dlq").await);
    let server_named_after = server_named_queues(&app).await;
    let new: Vec<_> = server_named_after
        .difference(&server_named_before)
        .collect();
    assert!(new.is_empty(), "server-named queues appeared: {new:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_string_errors_get_the_contract_body_naming_the_parameter() {
    let app = spawn_app().await;
    let queue = app.unique_queue("peek");
    app.create_queue(&queue, json!({})).await;

    for (query, names) in [
        ("limit=abc", "limit"),
        ("limit=-1", "limit"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("lim=5", "lim"),
    ] {
        let body = assert_error(
            app.get(&format!("/getDeadLetters/{queue}?{query}")).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
        let message = body["message"].as_str().expect("a message");
        assert!(message.contains(names), "{query}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_array_is_not_taken_for_an_object() {
    let app = spawn_app().await;
    let queue = app.unique_queue("array");

    // serde would read these as the request struct's fields, in order.
    let body = assert_error(
        app.post_raw(
            "/createQueue",
            Some("application/json"),
            json!([queue, true]).to_string(),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    let message = body["message"].as_str().expect("a message");
    assert!(message.contains("a JSON object"), "{message}");
    assert!(!app.queue_exists(&queue).await);

    // Nested objects too.
    app.create_queue(&queue, json!({})).await;
    let body = assert_error(
        app.post_json(
            "/createConsumer",
            &json!({
                "queueName": queue,
                "target": { "type": "builtin", "handler": "user" },
                "retry": [3, 1000],
            }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    let message = body["message"].as_str().expect("a message");
    assert!(message.contains("retry"), "{message}");
    let consumers =
        crate::support::assert_json(app.get("/getConsumers").await, StatusCode::OK).await;
    assert_eq!(consumers, json!([]), "no consumer was made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_written_with_a_zero_fraction_are_integers() {
    let app = spawn_app().await;
    let queue = app.unique_queue("fraction");

    // JSON has one number type; the spec says `integer`, which counts 100.0.
    app.create_queue(&queue, json!({ "maxLength": 100.0 }))
        .await;
    assert!(app.queue_exists(&queue).await);

    let other = app.unique_queue("fraction-half");
    let body = assert_error(
        app.post_json(
            "/createQueue",
            &json!({ "queueName": other, "maxLength": 100.5 }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    let message = body["message"].as_str().expect("a message");
    assert!(message.contains("maxLength"), "{message}");
    assert!(!app.queue_exists(&other).await);

    // An integer literal beyond 64 bits reaches serde as the nearest float,
    // -2^63 here: still not an i64.
    let body = assert_error(
        app.post_raw(
            "/reports",
            Some("application/json"),
            r#"{"id_usuario": 1, "tipo_reporte": -9223372036854775809, "descripcion": "x"}"#,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    let message = body["message"].as_str().expect("a message");
    assert!(message.contains("tipo_reporte"), "{message}");
}

/// Sends `head` and `body_part` on a raw connection and returns the status,
/// the JSON body and how long the answer took; the connection must be
/// closed by the server.
async fn raw_exchange(app: &TestApp, head: String, body_part: &str) -> (u16, Value, Duration) {
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("a connection to the app");
    let started = Instant::now();
    stream
        .write_all(format!("{head}{body_part}").as_bytes())
        .await
        .expect("the request is sent");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(40), stream.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes the connection within 40 s")
        .expect("the answer is read");
    let elapsed = started.elapsed();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let body = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {body:?}"));
    (status, body, elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_shorter_than_its_content_length_is_not_waited_for_forever() {
    let app = spawn_app().await;
    let queue = app.unique_queue("slow");
    let partial = format!(r#"{{"queueName": "{queue}""#);
    let head = format!(
        "POST /createQueue HTTP/1.1\r\nHost: test\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        app.admin_auth(),
        partial.len() + 100
    );

    let (status, body, elapsed) = raw_exchange(&app, head, &partial).await;

    assert_eq!(status, 408, "{body}");
    assert_eq!(body["error"], "request_timeout", "{body}");
    assert!(
        elapsed >= Duration::from_secs(9) && elapsed < Duration::from_secs(30),
        "answered after {elapsed:?}, expected about 10 s"
    );
    assert!(!app.queue_exists(&queue).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_and_message_ids_from_outside_are_judged_without_a_panic() {
    let app = spawn_app().await;
    let queue = app.unique_queue("odd_names");
    app.create_queue(&queue, json!({})).await;

    // Its 12th byte falls inside `é`: slicing the name as text at the
    // reserved prefix's length used to panic the request.
    let accepted = app
        .post_json(
            "/messagePublish",
            &json!({ "queueName": queue, "message": 1, "headers": { "aéééééé": "x" } }),
        )
        .await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    assert_eq!(app.message_count(&queue).await, Some(1));

    // A message id becomes the webhook-id header: one no header can carry
    // is refused now, not dead-lettered at its first forward.
    let body = assert_error(
        app.post_json(
            "/messagePublish",
            &json!({ "queueName": queue, "message": 2, "messageId": "line\nbreak" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("messageId"),
        "{body}"
    );
    assert_eq!(
        app.message_count(&queue).await,
        Some(1),
        "nothing published"
    );
}

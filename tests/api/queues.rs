use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{assert_error, assert_json, eventually, spawn_app, TestApp};

/// Management-API statistics are refreshed every few seconds.
const STATS_DEADLINE: Duration = Duration::from_secs(20);

/// GET /getQueue/{queue} until `accept` is happy with the row.
async fn queue_row_where(app: &TestApp, queue: &str, accept: impl Fn(&Value) -> bool) -> Value {
    eventually(STATS_DEADLINE, || async {
        let response = app.get(&format!("/getQueue/{queue}")).await;
        let status = response.status();
        let row: Value = response.json().await.map_err(|e| e.to_string())?;
        if status == StatusCode::OK && accept(&row) {
            Ok(row)
        } else {
            Err(format!("{status}: {row}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_queue_creates_it_with_its_dead_letter_companion() {
    let app = spawn_app().await;
    let queue = app.unique_queue("orders");

    let created = assert_json(
        app.post_json("/createQueue", &json!({ "queueName": queue }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        created,
        json!({ "message": "Queue has been created successfully.", "queueName": queue })
    );
    assert!(app.queue_exists(&queue).await);
    assert!(app.queue_exists(&format!("{queue}.dlq")).await);

    // The same call again changes nothing and says so.
    let again = assert_json(
        app.post_json("/createQueue", &json!({ "queueName": queue }))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(again["queueName"], queue.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_queue_with_other_arguments_conflicts_and_breaks_nothing() {
    let app = spawn_app().await;
    let queue = app.unique_queue("orders");
    app.create_queue(&queue, json!({})).await;

    for different in [
        json!({ "queueName": queue, "durable": false }),
        json!({ "queueName": queue, "messageTtlMs": 60000 }),
    ] {
        assert_error(
            app.post_json("/createQueue", &different).await,
            StatusCode::CONFLICT,
            "conflict",
        )
        .await;
    }

    // The very next requests on the same gateway still work.
    let next = app.unique_queue("next");
    app.create_queue(&next, json!({})).await;
    app.publish(&queue, json!({ "after": "conflict" })).await;
    assert_eq!(app.message_count(&queue).await, Some(1));
    let row = queue_row_where(&app, &queue, |_| true).await;
    assert_eq!(row["durable"], true, "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_queue_answers_the_contract_row_with_companions_folded_in() {
    let app = spawn_app().await;
    let queue = app.unique_queue("orders");
    app.create_queue(&queue, json!({})).await;

    let row = queue_row_where(&app, &queue, |_| true).await;
    for field in [
        "queueName",
        "messages",
        "messagesReady",
        "messagesUnacknowledged",
        "consumers",
        "durable",
        "queueType",
        "deadLetterMessages",
    ] {
        assert!(row.get(field).is_some(), "`{field}` missing from {row}");
    }
    assert_eq!(row["queueName"], queue.as_str());
    assert_eq!(row["durable"], true);
    assert_eq!(row["queueType"], "classic");
    assert_eq!(row["consumers"], 0);
    assert_eq!(row["messages"], 0);
    assert_eq!(row["deadLetterMessages"], 0);

    // One message on the queue and one in its dead-letter companion show
    // up as counts on the queue's own row.
    app.publish(&queue, json!({ "n": 1 })).await;
    let channel = app.amqp_channel().await;
    channel
        .confirm_select(Default::default())
        .await
        .expect("confirm mode");
    channel
        .basic_publish(
            "".into(),
            format!("{queue}.dlq").into(),
            BasicPublishOptions::default(),
            b"{\"dead\":true}",
            BasicProperties::default(),
        )
        .await
        .expect("published")
        .await
        .expect("confirmed");
    let row = queue_row_where(&app, &queue, |row| {
        row["messages"] == 1 && row["messagesReady"] == 1 && row["deadLetterMessages"] == 1
    })
    .await;
    assert_eq!(row["messagesUnacknowledged"], 0);

    let rows = assert_json(app.get("/getQueues").await, StatusCode::OK).await;
    let names: Vec<&str> = rows
        .as_array()
        .expect("a list")
        .iter()
        .map(|row| row["queueName"].as_str().expect("a queueName"))
        .collect();
    assert!(names.contains(&queue.as_str()), "{queue} not in {names:?}");
    let dlq = format!("{queue}.dlq");
    assert!(
        !names.contains(&dlq.as_str()),
        "the companion {dlq} has a row of its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_queue_of_an_unknown_queue_is_404() {
    let app = spawn_app().await;
    let queue = app.unique_queue("never_created");

    assert_error(
        app.get(&format!("/getQueue/{queue}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_can_be_created() {
    let app = spawn_app().await;
    let queue = app.unique_queue("quorum");

    let body = app
        .create_queue(&queue, json!({ "queueType": "quorum" }))
        .await;
    assert_eq!(body["queueName"], queue.as_str());
    assert!(app.queue_exists(&queue).await);

    let row = queue_row_where(&app, &queue, |_| true).await;
    assert_eq!(row["queueType"], "quorum", "{row}");
    assert_eq!(row["durable"], true, "{row}");
    let again = app
        .post_json(
            "/createQueue",
            &json!({ "queueName": queue, "queueType": "quorum" }),
        )
        .await;
    assert_eq!(again.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_queue_removes_it_and_its_companion() {
    let app = spawn_app().await;
    let queue = app.unique_queue("doomed");
    app.create_queue(&queue, json!({})).await;

    let body = assert_json(
        app.post_json("/deleteQueue", &json!({ "queueName": queue }))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["queueName"], queue.as_str(), "{body}");

    assert!(!app.queue_exists(&queue).await);
    assert!(!app.queue_exists(&format!("{queue}.dlq")).await);
    let gone = eventually(STATS_DEADLINE, || async {
        let response = app.get(&format!("/getQueue/{queue}")).await;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(response),
            other => Err(format!("GET /getQueue answered {other}")),
        }
    })
    .await;
    assert_error(gone, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_missing_queue_is_404() {
    let app = spawn_app().await;
    let queue = app.unique_queue("never_created");

    assert_error(
        app.post_json("/deleteQueue", &json!({ "queueName": queue }))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_empty_refuses_a_queue_holding_messages() {
    let app = spawn_app().await;
    let queue = app.unique_queue("busy");
    app.create_queue(&queue, json!({})).await;
    app.publish(&queue, json!({ "keep": "me" })).await;

    assert_error(
        app.post_json(
            "/deleteQueue",
            &json!({ "queueName": queue, "ifEmpty": true }),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;

    assert_eq!(app.message_count(&queue).await, Some(1));
    assert!(app.queue_exists(&format!("{queue}.dlq")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_queue_finds_names_that_need_percent_encoding() {
    let app = spawn_app().await;
    let queue = app.unique_queue("eu/orders new?ñ");
    app.create_queue(&queue, json!({})).await;
    let encoded: String = url::form_urlencoded::byte_serialize(queue.as_bytes())
        .collect::<String>()
        .replace('+', "%20");

    let row = assert_json(
        app.get(&format!("/getQueue/{encoded}")).await,
        StatusCode::OK,
    )
    .await;

    assert_eq!(row["queueName"], queue.as_str());
}

/// A missing queue makes the broker close the channel that asked; lapin
/// gives channel ids out again once they wrap round (2,047 on RabbitMQ).
/// A channel that reuses such an id must not fail with the old channel's
/// `NOT_FOUND`: before the fix in the vendored lapin, every create after
/// the wrap answered 404 for a queue that did exist, or was being made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_ids_reused_after_many_missing_queues_carry_no_old_error() {
    let app = spawn_app().await;
    let missing = app.unique_queue("missing");
    // Each asks for the queue on a fresh channel, which the broker closes.
    for _ in 0..2_100 {
        assert_error(
            app.post_json(
                "/createConsumer",
                &json!({ "queueName": missing, "target": { "type": "http", "url": "http://127.0.0.1:9/hook" } }),
            )
            .await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    for label in ["after-wrap-a", "after-wrap-b", "after-wrap-c"] {
        let queue = app.unique_queue(label);
        let created = app
            .post_json("/createQueue", &json!({ "queueName": queue }))
            .await;
        assert_eq!(created.status(), StatusCode::CREATED, "createQueue {queue}");
        let consumer = app
            .post_json(
                "/createConsumer",
                &json!({ "queueName": queue, "target": { "type": "http", "url": "http://127.0.0.1:9/hook" } }),
            )
            .await;
        assert_eq!(
            consumer.status(),
            StatusCode::CREATED,
            "createConsumer on {queue}"
        );
    }
}

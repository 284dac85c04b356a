//! Replaying dead letters by filter: a dry run counts and moves nothing,
//! a replay moves exactly the matching ones and leaves the others in their
//! order, the replayed attempt is recorded as the replay's, two replicas
//! replaying one queue at once move each message once, and bad filters are
//! refused naming the field before anything moves.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::gateway_process::Deployment;
use crate::support::target_server::{Reply, TargetServer};
use crate::support::{
    assert_error, assert_json, binary_messages, eventually, publish_confirmed,
    publish_with_properties, running_consumer_on, spawn_app, wait_for_queue, Api,
};

const SETTLED_DEADLINE: Duration = Duration::from_secs(30);
/// Attempt records reach the store within ~250 ms; a loaded machine gets
/// more.
const RECORDED_DEADLINE: Duration = Duration::from_secs(10);

/// POST /replayDeadLetters with `body`; asserts 200, returns (matched, replayed).
async fn replay(api: &Api, body: Value) -> (u64, u64) {
    let answer = assert_json(api.post("/replayDeadLetters", &body).await, StatusCode::OK).await;
    let count = |field: &str| {
        answer[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no {field} count in {answer}"))
    };
    (count("matched"), count("replayed"))
}

/// The message ids of the dead letters of `queue`, oldest first (peeked:
/// nothing moves).
async fn dead_letter_ids(api: &Api, queue: &str) -> Vec<String> {
    api.dead_letters(queue)
        .await
        .iter()
        .map(|l| {
            l["messageId"]
                .as_str()
                .unwrap_or_else(|| panic!("a dead letter without messageId: {l}"))
                .to_owned()
        })
        .collect()
}

/// Takes every message off `queue` (acking each) and returns their ids in
/// order, with repeats.
async fn drain_ids(connection: &Connection, queue: &str) -> Vec<String> {
    let channel = connection.create_channel().await.expect("a channel");
    let mut ids = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap_or_else(|e| panic!("basic_get on `{queue}`: {e}"))
    {
        ids.push(
            message
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_default(),
        );
        message
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("an ack");
    }
    let _ = channel.close(200, "drained".into()).await;
    ids
}

/// A dead letter as the gateway writes one: the id, the last status and
/// the dead-lettering time in the gateway's headers.
fn dead_letter_properties(id: &str, status: i64) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-workerrmq-dead-lettered-at".into(),
        AMQPValue::LongString(chrono::Utc::now().to_rfc3339().into()),
    );
    headers.insert(
        "x-workerrmq-last-error-kind".into(),
        AMQPValue::LongString("http_status".into()),
    );
    headers.insert(
        "x-workerrmq-last-status".into(),
        AMQPValue::LongLongInt(status),
    );
    headers.insert("x-workerrmq-attempt".into(), AMQPValue::LongLongInt(1));
    BasicProperties::default()
        .with_message_id(id.to_owned().into())
        .with_content_type("application/octet-stream".into())
        .with_delivery_mode(2)
        .with_headers(headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_replay_by_status_moves_exactly_the_matching_ones_and_keeps_the_others_in_order(
) {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    // One at a time, no retries, no breaker: the dead letters reach the
    // dead-letter queue in publish order, each with the answer scripted
    // for it.
    let statuses: Vec<u16> = (0..30)
        .map(|i: usize| if i.is_multiple_of(3) { 503 } else { 422 })
        .collect();
    target.script(
        "/by-message",
        statuses.iter().map(|s| Reply::status(*s)).collect(),
        Reply::ok(),
    );
    let (api, queue, consumer) = running_consumer_on(
        &app,
        &target,
        "filtered",
        "/by-message",
        json!({ "prefetch": 1, "concurrency": 1, "retry": { "maxAttempts": 1 },
                "circuitBreaker": null }),
    )
    .await;
    let messages = binary_messages("filtered", 30);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;
    api.wait_for_consumer(&consumer, SETTLED_DEADLINE, "30 dead-lettered", |v| {
        v["stats"]["deadLettered"] == 30
    })
    .await;

    let all: Vec<String> = messages.iter().map(|m| m.id.clone()).collect();
    let with_status = |wanted: u16| {
        all.iter()
            .zip(&statuses)
            .filter(move |(_, s)| **s == wanted)
            .map(|(id, _)| id.clone())
    };
    let failed_503: BTreeSet<String> = with_status(503).collect();
    let failed_422: Vec<String> = with_status(422).collect();
    assert_eq!((failed_503.len(), failed_422.len()), (10, 20));
    let letters = api.dead_letters(&queue).await;
    assert_eq!(dead_letter_ids(&api, &queue).await, all, "publish order");
    for (letter, status) in letters.iter().zip(&statuses) {
        assert_eq!(letter["lastStatus"], *status, "{letter}");
        assert_eq!(letter["lastErrorKind"], "http_status", "{letter}");
    }

    // A dry run counts and moves nothing.
    let (matched, replayed) = replay(
        &api,
        json!({ "queueName": queue, "filter": { "status": "503" }, "dryRun": true }),
    )
    .await;
    assert_eq!((matched, replayed), (10, 0));
    assert_eq!(
        dead_letter_ids(&api, &queue).await,
        all,
        "a dry run leaves all 30 in their order"
    );
    assert!(target.ids_delivered().is_empty());

    // A limit caps what a dry run counts.
    let (matched, replayed) = replay(
        &api,
        json!({ "queueName": queue, "filter": { "status": "5xx" }, "dryRun": true, "limit": 4 }),
    )
    .await;
    assert_eq!((matched, replayed), (4, 0));

    let (matched, replayed) = replay(
        &api,
        json!({ "queueName": queue, "filter": { "status": "503" } }),
    )
    .await;
    assert_eq!((matched, replayed), (10, 10));
    target
        .wait_for_delivered(&failed_503, SETTLED_DEADLINE)
        .await;
    api.wait_for_consumer(&consumer, SETTLED_DEADLINE, "10 acked", |v| {
        v["stats"]["acked"] == 10
    })
    .await;
    assert_eq!(
        dead_letter_ids(&api, &queue).await,
        failed_422,
        "the 422s stay, in their order"
    );
    let mut replays: BTreeMap<String, usize> = BTreeMap::new();
    for request in target.requests_to("/by-message") {
        if request.answered == 200 {
            *replays.entry(request.webhook_id()).or_default() += 1;
        }
    }
    assert_eq!(
        replays,
        failed_503.iter().map(|id| (id.clone(), 1)).collect(),
        "each 503 delivered once, no 422 delivered"
    );

    // Nothing left to match; the 422s stay where they are.
    let (matched, replayed) = replay(
        &api,
        json!({ "queueName": queue, "filter": { "status": "503" } }),
    )
    .await;
    assert_eq!((matched, replayed), (0, 0));
    assert_eq!(dead_letter_ids(&api, &queue).await, failed_422);

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_replayed_by_message_id_is_recorded_as_the_replays_attempt() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    target.set_default(Reply::status(422));
    let (api, queue, consumer) =
        running_consumer_on(&app, &target, "history", "/history", json!({})).await;
    let messages = binary_messages("history", 2);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;
    api.wait_for_consumer(&consumer, SETTLED_DEADLINE, "2 dead-lettered", |v| {
        v["stats"]["deadLettered"] == 2
    })
    .await;
    let (chosen, other) = (&messages[0].id, &messages[1].id);
    let history_path = format!("/getMessageHistory/{queue}/{chosen}");

    let history = eventually(RECORDED_DEADLINE, || async {
        let history = assert_json(api.get(&history_path).await, StatusCode::OK).await;
        match history["attempts"].as_array().map(Vec::len) {
            Some(1) => Ok(history),
            _ => Err(format!("not one record yet: {history}")),
        }
    })
    .await;
    assert_eq!(history["state"], "dead_lettered", "{history}");
    assert_eq!(
        history["attempts"][0]["outcome"], "dead_lettered",
        "{history}"
    );
    assert_eq!(
        history["attempts"][0]["response"]["status"], 422,
        "{history}"
    );

    target.set_default(Reply::ok());
    let (matched, replayed) = replay(
        &api,
        json!({ "queueName": queue, "filter": { "messageIds": [chosen] } }),
    )
    .await;
    assert_eq!((matched, replayed), (1, 1));
    target
        .wait_for_delivered(&BTreeSet::from([chosen.clone()]), SETTLED_DEADLINE)
        .await;

    let history = eventually(RECORDED_DEADLINE, || async {
        let history = assert_json(api.get(&history_path).await, StatusCode::OK).await;
        match history["attempts"].as_array().map(Vec::len) {
            Some(2) => Ok(history),
            _ => Err(format!("not two records yet: {history}")),
        }
    })
    .await;
    let attempts = &history["attempts"];
    assert_eq!(attempts[0]["outcome"], "dead_lettered", "{history}");
    assert_eq!(attempts[1]["trigger"], "replay", "{history}");
    assert_eq!(attempts[1]["outcome"], "delivered", "{history}");
    assert_eq!(attempts[1]["response"]["status"], 200, "{history}");
    assert_eq!(history["state"], "delivered", "{history}");

    assert_eq!(
        dead_letter_ids(&api, &queue).await,
        std::slice::from_ref(other),
        "the other one stays"
    );
    assert!(!target.ids_delivered().contains(other));

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_replaying_one_dead_letter_queue_at_once_move_each_message_once() {
    let deployment = Deployment::new();
    let a = deployment.start_gateway(&deployment.instance_id("a")).await;
    let b = deployment.start_gateway(&deployment.instance_id("b")).await;
    let queue = deployment.queue("replicas");
    a.api.create_queue(&queue).await;
    // No consumer: what the replays move stays in the main queue, to be
    // counted. Every other dead letter answered 503, the rest 422.
    let ids: Vec<String> = binary_messages("replicas", 600)
        .into_iter()
        .map(|m| m.id)
        .collect();
    let status_of = |i: usize| if i.is_multiple_of(2) { 503 } else { 422 };
    let properties: Vec<BasicProperties> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| dead_letter_properties(id, status_of(i)))
        .collect();
    publish_with_properties(
        deployment.amqp().await,
        &format!("{queue}.dlq"),
        properties
            .into_iter()
            .map(|p| (b"payload".as_slice(), p))
            .collect(),
    )
    .await;
    let matching: BTreeSet<String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| status_of(*i) == 503)
        .map(|(_, id)| id.clone())
        .collect();
    let staying: Vec<String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| status_of(*i) != 503)
        .map(|(_, id)| id.clone())
        .collect();

    let body = json!({ "queueName": queue, "filter": { "status": "5xx" } });
    let ((a_matched, a_replayed), (b_matched, b_replayed)) =
        tokio::join!(replay(&a.api, body.clone()), replay(&b.api, body.clone()));
    println!("replica a moved {a_replayed}, replica b {b_replayed}");
    assert_eq!((a_matched, b_matched), (a_replayed, b_replayed));
    assert_eq!(a_replayed + b_replayed, matching.len() as u64);

    let amqp = deployment.amqp().await;
    wait_for_queue(amqp, &queue, SETTLED_DEADLINE, "holding the 300", |m, _| {
        m as usize == matching.len()
    })
    .await;
    let moved = drain_ids(amqp, &queue).await;
    assert_eq!(moved.len(), matching.len(), "none doubled");
    assert_eq!(
        moved.iter().cloned().collect::<BTreeSet<_>>(),
        matching,
        "every matching one moved"
    );
    assert_eq!(
        dead_letter_ids(&a.api, &queue).await,
        staying,
        "the others stay, in their order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_replay_with_a_bad_filter_or_limit_is_refused_naming_the_field() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let queue = app.unique_queue("refused");
    api.create_queue(&queue).await;
    let messages = binary_messages("refused", 3);
    publish_confirmed(
        app.amqp_connection().await,
        &format!("{queue}.dlq"),
        &messages,
    )
    .await;

    for (body, field) in [
        (json!({ "filter": { "status": "6xx" } }), "filter.status"),
        (
            json!({ "filter": { "since": "yesterday" } }),
            "filter.since",
        ),
        (
            json!({ "filter": { "until": "2026-01-01T00:00:00Z",
                             "since": "2026-02-01T00:00:00Z" } }),
            "filter.until",
        ),
        (
            json!({ "filter": { "errorKind": "nope" } }),
            "filter.errorKind",
        ),
        (
            json!({ "filter": { "messageIds": [] } }),
            "filter.messageIds",
        ),
        (
            json!({ "filter": { "messageIds": ["x".repeat(256)] } }),
            "filter.messageIds",
        ),
        (json!({ "limit": 0 }), "limit"),
        (json!({ "limit": 100_001, "dryRun": true }), "limit"),
    ] {
        let mut body = body;
        body["queueName"] = json!(queue);
        let error = assert_error(
            api.post("/replayDeadLetters", &body).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("`{field}`")),
            "{body}: names {field}: {message}"
        );
    }
    assert_eq!(
        dead_letter_ids(&api, &queue).await,
        messages.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        "nothing moved"
    );
    assert_eq!(app.message_count(&queue).await, Some(0));

    assert_error(
        api.post(
            "/replayDeadLetters",
            &json!({ "queueName": app.unique_queue("absent"), "filter": { "status": "5xx" } }),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // These dead letters carry none of the gateway's headers (as those the
    // broker dead-letters itself): a status filter takes none, no filter
    // every one.
    for (filter, expected) in [(json!({ "status": "5xx" }), 0), (Value::Null, 3)] {
        let (matched, replayed) = replay(
            &api,
            json!({ "queueName": queue, "filter": filter, "dryRun": true }),
        )
        .await;
        assert_eq!((matched, replayed), (expected, 0), "{filter}");
    }
}

/// A quorum dead-letter queue gives back what a walk held ahead of what it
/// never reached, but not always in the order it was (RabbitMQ 3.10): the
/// order of those left is not promised there, only that none is lost and
/// none doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_replay_on_a_quorum_queue_loses_and_doubles_nothing() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let queue = app.unique_queue("quorum");
    app.create_queue(&queue, json!({ "queueType": "quorum" }))
        .await;
    let ids: Vec<String> = binary_messages("quorum", 12)
        .into_iter()
        .map(|m| m.id)
        .collect();
    let status_of = |i: usize| if i % 4 == 1 { 503 } else { 422 };
    publish_with_properties(
        app.amqp_connection().await,
        &format!("{queue}.dlq"),
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                (
                    b"payload".as_slice(),
                    dead_letter_properties(id, status_of(i)),
                )
            })
            .collect(),
    )
    .await;
    let staying: BTreeSet<String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| status_of(*i) != 503)
        .map(|(_, id)| id.clone())
        .collect();

    // The limit stops the first walk half-way; the second takes the rest.
    let (matched, replayed) = replay(
        &api,
        json!({ "queueName": queue, "filter": { "status": "503" }, "limit": 2 }),
    )
    .await;
    assert_eq!((matched, replayed), (2, 2));
    let (matched, replayed) = replay(
        &api,
        json!({ "queueName": queue, "filter": { "status": "503" } }),
    )
    .await;
    assert_eq!((matched, replayed), (1, 1));
    let left = dead_letter_ids(&api, &queue).await;
    assert_eq!(left.len(), staying.len(), "none doubled: {left:?}");
    assert_eq!(left.into_iter().collect::<BTreeSet<_>>(), staying);
    assert_eq!(
        drain_ids(app.amqp_connection().await, &queue).await,
        [ids[1].as_str(), ids[5].as_str(), ids[9].as_str()],
        "moved once each, oldest first"
    );
}

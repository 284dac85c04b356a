//! Outcomes: retry later in the broker with backoff, dead-letter at once or
//! after `maxAttempts`, timeouts, and replaying dead letters.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use crate::support::running_consumer_on;
use crate::support::spawn_app;
use crate::support::target_server::{Recorded, Reply, TargetServer};
use crate::support::{binary_messages, publish_confirmed, queue_counts, wait_for_queue};

const SETTLED_DEADLINE: Duration = Duration::from_secs(20);

fn attempts(requests: &[Recorded]) -> Vec<u32> {
    requests.iter().map(Recorded::attempt).collect()
}

fn gap_ms(requests: &[Recorded], i: usize) -> u128 {
    (requests[i].received_at - requests[i - 1].received_at).as_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_is_retried_with_backoff_through_the_broker_until_it_answers_2xx() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    target.script(
        "/flaky",
        vec![Reply::status(503), Reply::status(503)],
        Reply::ok(),
    );
    let (api, queue, consumer) = running_consumer_on(
        &app,
        &target,
        "flaky",
        "/flaky",
        json!({ "retry": { "maxAttempts": 5, "initialDelayMs": 300, "multiplier": 2, "maxDelayMs": 10000 } }),
    )
    .await;
    let message = binary_messages("flaky", 1).remove(0);
    publish_confirmed(
        app.amqp_connection().await,
        &queue,
        std::slice::from_ref(&message),
    )
    .await;

    let view = api
        .wait_for_consumer(&consumer, SETTLED_DEADLINE, "acked", |v| {
            v["stats"]["acked"] == 1
        })
        .await;
    assert_eq!(view["stats"]["retried"], 2, "{view}");
    assert_eq!(view["stats"]["deadLettered"], 0, "{view}");
    assert!(
        view["stats"]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("503")),
        "{view}"
    );

    let requests = target.requests_to("/flaky");
    assert_eq!(attempts(&requests), [1, 2, 3], "no request in between");
    for request in &requests {
        assert_eq!(request.webhook_id(), message.id, "webhook-id is stable");
        assert_eq!(request.body, message.body);
    }
    let (first, second) = (gap_ms(&requests, 1), gap_ms(&requests, 2));
    assert!(
        (1_000..3_000).contains(&first),
        "attempt 2 came {first} ms after attempt 1; the backoff is 300 ms, snapped up to 1 s"
    );
    assert!(
        (1_000..3_000).contains(&second),
        "attempt 3 came {second} ms after attempt 2; the backoff is 600 ms, snapped up to 1 s"
    );
    // The waiting happened in the broker's delay queues: 300 and 600 ms
    // both snap up to the ladder's first step, 1 s.
    let amqp = app.amqp_connection().await;
    assert!(
        queue_counts(amqp, &format!("{queue}.retry.1000"))
            .await
            .is_some(),
        "no delay queue `{queue}.retry.1000`"
    );
    for off_ladder in [300, 600] {
        assert!(
            queue_counts(amqp, &format!("{queue}.retry.{off_ladder}"))
                .await
                .is_none(),
            "a delay queue off the ladder: `{queue}.retry.{off_ladder}`"
        );
    }
    wait_for_queue(amqp, &queue, Duration::from_secs(5), "empty", |m, _| m == 0).await;

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_from_the_target_is_honoured_up_to_max_delay() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    // 429 asking for 1 s (honoured), and 503 asking for an hour (clamped).
    target.script(
        "/busy",
        vec![Reply::status(429).with_retry_after("1")],
        Reply::ok(),
    );
    target.script(
        "/overloaded",
        vec![Reply::status(503).with_retry_after("3600")],
        Reply::ok(),
    );
    let retry = json!({ "retry": { "maxAttempts": 3, "initialDelayMs": 200, "multiplier": 2, "maxDelayMs": 1500 } });
    let (api, busy_queue, busy) =
        running_consumer_on(&app, &target, "busy", "/busy", retry.clone()).await;
    let (_, overloaded_queue, overloaded) =
        running_consumer_on(&app, &target, "overloaded", "/overloaded", retry).await;
    let amqp = app.amqp_connection().await;
    for queue in [&busy_queue, &overloaded_queue] {
        publish_confirmed(amqp, queue, &binary_messages("busy", 1)).await;
    }

    for consumer in [&busy, &overloaded] {
        api.wait_for_consumer(consumer, SETTLED_DEADLINE, "acked", |v| {
            v["stats"]["acked"] == 1
        })
        .await;
    }
    let requests = target.requests_to("/busy");
    assert_eq!(attempts(&requests), [1, 2]);
    let gap = gap_ms(&requests, 1);
    assert!(
        gap >= 1_000,
        "Retry-After: 1 asked for a second, the retry came after {gap} ms"
    );
    let requests = target.requests_to("/overloaded");
    assert_eq!(attempts(&requests), [1, 2]);
    let gap = gap_ms(&requests, 1);
    assert!(
        (1_500..4_000).contains(&gap),
        "Retry-After: 3600 clamped to maxDelayMs 1500, yet the retry came after {gap} ms"
    );

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_is_dead_lettered_at_once_with_the_reason() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    target.script("/reject", vec![], Reply::status(400));
    let (api, queue, consumer) =
        running_consumer_on(&app, &target, "reject", "/reject", json!({})).await;
    let message_id = app.publish(&queue, json!({ "bad": true })).await;

    let view = api
        .wait_for_consumer(&consumer, SETTLED_DEADLINE, "dead-lettered", |v| {
            v["stats"]["deadLettered"] == 1
        })
        .await;
    assert_eq!(view["stats"]["retried"], 0, "{view}");
    assert_eq!(view["stats"]["acked"], 0, "{view}");
    assert_eq!(target.requests_to("/reject").len(), 1, "never retried");

    for _ in 0..2 {
        // Peeking twice: the dead letters stay where they are.
        let letters = api.dead_letters(&queue).await;
        assert_eq!(letters.len(), 1, "{letters:?}");
        let letter = &letters[0];
        assert_eq!(letter["messageId"], message_id.as_str(), "{letter}");
        assert_eq!(letter["attempts"], 1, "{letter}");
        assert!(
            letter["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("400")),
            "the reason names the status: {letter}"
        );
        assert!(letter["deadLetteredAt"].is_string(), "{letter}");
        assert_eq!(letter["payload"], json!({ "bad": true }), "{letter}");
    }
    let amqp = app.amqp_connection().await;
    wait_for_queue(amqp, &queue, Duration::from_secs(5), "empty", |m, _| m == 0).await;
    wait_for_queue(
        amqp,
        &format!("{queue}.dlq"),
        Duration::from_secs(5),
        "holding the dead letter",
        |m, _| m == 1,
    )
    .await;

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_always_fails_gets_exactly_max_attempts_then_the_dead_letter_queue() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    target.script("/down", vec![], Reply::status(500));
    let (api, queue, consumer) = running_consumer_on(
        &app,
        &target,
        "down",
        "/down",
        json!({ "retry": { "maxAttempts": 3, "initialDelayMs": 200, "multiplier": 2, "maxDelayMs": 5000 } }),
    )
    .await;
    let message = binary_messages("down", 1).remove(0);
    publish_confirmed(
        app.amqp_connection().await,
        &queue,
        std::slice::from_ref(&message),
    )
    .await;

    let view = api
        .wait_for_consumer(&consumer, SETTLED_DEADLINE, "dead-lettered", |v| {
            v["stats"]["deadLettered"] == 1
        })
        .await;
    assert_eq!(view["stats"]["retried"], 2, "{view}");
    let requests = target.requests_to("/down");
    assert_eq!(
        attempts(&requests),
        [1, 2, 3],
        "exactly maxAttempts requests"
    );
    assert!(gap_ms(&requests, 1) >= 200 && gap_ms(&requests, 2) >= 400);

    let letters = api.dead_letters(&queue).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["messageId"], message.id.as_str());
    assert_eq!(letters[0]["attempts"], 3, "{}", letters[0]);
    assert!(
        letters[0]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("500")),
        "{}",
        letters[0]
    );
    assert_eq!(
        target.requests_to("/down").len(),
        3,
        "nothing after the DLQ"
    );

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_slower_than_its_timeout_is_retried() {
    slower_than_its_timeout("never").await;
}

/// h2c requests go without reqwest, which times the others out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_target_slower_than_its_timeout_is_retried() {
    slower_than_its_timeout("always").await;
}

/// A target answering its first request after 2 s, under a 300 ms timeout,
/// spoken to with `target.http2` = `http2`.
async fn slower_than_its_timeout(http2: &str) {
    let app = spawn_app().await;
    let target = match http2 {
        "always" => TargetServer::start_h2c().await,
        _ => TargetServer::start().await,
    };
    target.script(
        "/sluggish",
        vec![Reply::ok().after(Duration::from_millis(2_000))],
        Reply::ok(),
    );
    let (api, queue, consumer) = running_consumer_on(
        &app,
        &target,
        "sluggish",
        "/sluggish",
        json!({
            "target": { "timeoutMs": 300, "http2": http2 },
            "retry": { "maxAttempts": 3, "initialDelayMs": 200, "multiplier": 2, "maxDelayMs": 5000 },
        }),
    )
    .await;
    let message = binary_messages("sluggish", 1).remove(0);
    publish_confirmed(
        app.amqp_connection().await,
        &queue,
        std::slice::from_ref(&message),
    )
    .await;

    let view = api
        .wait_for_consumer(&consumer, SETTLED_DEADLINE, "acked", |v| {
            v["stats"]["acked"] == 1
        })
        .await;
    assert_eq!(view["stats"]["retried"], 1, "{view}");
    assert!(
        view["stats"]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("time")),
        "the reason says it timed out: {view}"
    );
    let requests = target.requests_to("/sluggish");
    assert_eq!(attempts(&requests), [1, 2]);
    let version = if http2 == "always" {
        "HTTP/2.0"
    } else {
        "HTTP/1.1"
    };
    assert!(
        requests.iter().all(|r| r.version == version),
        "not all over {version}"
    );
    assert_eq!(requests[1].webhook_id(), message.id);
    let gap = gap_ms(&requests, 1);
    assert!(
        (1_300..2_900).contains(&gap),
        "attempt 2 should follow the 300 ms timeout and the 200 ms backoff (snapped up to 1 s), not the slow answer: {gap} ms"
    );

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_dead_letters_are_delivered_once_each() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    target.script("/replay", vec![Reply::status(422); 5], Reply::ok());
    let (api, queue, consumer) =
        running_consumer_on(&app, &target, "replay", "/replay", json!({})).await;
    let messages = binary_messages("replay", 5);
    publish_confirmed(app.amqp_connection().await, &queue, &messages).await;
    let ids: BTreeSet<String> = messages.iter().map(|m| m.id.clone()).collect();

    api.wait_for_consumer(&consumer, SETTLED_DEADLINE, "5 dead-lettered", |v| {
        v["stats"]["deadLettered"] == 5
    })
    .await;
    let letters = api.dead_letters(&queue).await;
    let dead: BTreeSet<String> = letters
        .iter()
        .map(|l| l["messageId"].as_str().expect("a messageId").to_owned())
        .collect();
    assert_eq!(dead, ids);
    assert!(target.ids_delivered().is_empty());

    assert_eq!(api.replay_dead_letters(&queue).await, 5);
    target.wait_for_delivered(&ids, SETTLED_DEADLINE).await;
    api.wait_for_consumer(&consumer, SETTLED_DEADLINE, "5 acked", |v| {
        v["stats"]["acked"] == 5
    })
    .await;

    let requests = target.requests_to("/replay");
    for message in &messages {
        let for_it: Vec<&Recorded> = requests
            .iter()
            .filter(|r| r.webhook_id() == message.id)
            .collect();
        let answered: Vec<u16> = for_it.iter().map(|r| r.answered).collect();
        assert_eq!(
            answered,
            [422, 200],
            "{}: once dead, once replayed",
            message.id
        );
        assert_eq!(for_it[1].attempt(), 1, "a replay starts again at attempt 1");
        assert_eq!(for_it[1].body, message.body);
        assert_eq!(
            for_it[1].header("content-type"),
            Some("application/octet-stream")
        );
    }
    assert!(api.dead_letters(&queue).await.is_empty());
    let amqp = app.amqp_connection().await;
    wait_for_queue(
        amqp,
        &format!("{queue}.dlq"),
        Duration::from_secs(5),
        "empty",
        |m, _| m == 0,
    )
    .await;
    assert_eq!(
        api.replay_dead_letters(&queue).await,
        0,
        "nothing left to replay"
    );

    target.stop().await;
}

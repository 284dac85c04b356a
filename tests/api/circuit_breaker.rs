//! The circuit breaker: a target that keeps failing stops getting
//! deliveries, the messages wait in the queue with their attempts unspent,
//! a probe after `openMs` closes the circuit again; `null` turns it off;
//! bad settings are refused and named.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::target_server::{Reply, TargetServer};
use crate::support::{assert_error, spawn_app};
use crate::support::{
    binary_messages, metric_sample as sample, publish_confirmed, queue_counts, wait_for_queue, Api,
};

const OPEN_MS: u64 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_opens_the_circuit_messages_wait_unspent_and_a_probe_closes_it() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    target.set_default(Reply::status(503));
    let queue = app.unique_queue("breaker");
    let consumer = api
        .queue_with_consumer(
            &queue,
            &target.url("/sick"),
            json!({
                "prefetch": 1,
                "retry": { "maxAttempts": 5, "initialDelayMs": 1000, "multiplier": 2, "maxDelayMs": 1000 },
                "circuitBreaker": { "failureThreshold": 3, "openMs": OPEN_MS },
            }),
        )
        .await;
    let view = api
        .wait_for_consumer(&consumer, Duration::from_secs(5), "running", |v| {
            v["state"] == "running"
        })
        .await;
    assert_eq!(
        view["circuitBreaker"],
        json!({ "failureThreshold": 3, "openMs": OPEN_MS, "maxOpenMs": 600000 }),
        "{view}"
    );
    assert_eq!(
        view["circuit"],
        json!({ "state": "closed", "consecutiveFailures": 0 }),
        "{view}"
    );

    let messages = binary_messages("breaker", 5);
    let amqp = app.amqp_connection().await;
    publish_confirmed(amqp, &queue, &messages).await;

    let open = api
        .wait_for_consumer(&consumer, Duration::from_secs(10), "circuit_open", |v| {
            v["state"] == "circuit_open"
        })
        .await;
    let opened_at = Instant::now();
    let failed = target.requests();
    assert_eq!(failed.len(), 3, "the circuit opens at the third failure");
    assert_eq!(open["circuit"]["state"], "open", "{open}");
    assert_eq!(open["circuit"]["consecutiveFailures"], 3, "{open}");
    assert!(open["circuit"]["openedAt"].is_string(), "{open}");
    assert!(open["circuit"]["nextProbeAt"].is_string(), "{open}");
    // The two failures before the opening were ordinary retries; the one
    // that opened it was handed back, its attempt unspent.
    assert_eq!(open["stats"]["retried"], 2, "{open}");
    assert_eq!(open["stats"]["deadLettered"], 0, "{open}");

    // Open: no call for 1.5 s; every message back in the main queue (the
    // two retry copies come home after their 1 s), no consumer on it.
    let mut all_waiting = false;
    while opened_at.elapsed() < Duration::from_millis(1_500) {
        assert_eq!(
            target.request_count(),
            3,
            "the target was called while the circuit was open"
        );
        if !all_waiting {
            all_waiting = queue_counts(amqp, &queue).await == Some((5, 0));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !all_waiting {
        wait_for_queue(
            amqp,
            &queue,
            Duration::from_secs(3),
            "holding all 5 messages with no consumer",
            |m, c| m == 5 && c == 0,
        )
        .await;
    }
    assert_eq!(
        queue_counts(amqp, &format!("{queue}.retry.1000")).await,
        Some((0, 0)),
        "no retry copy waits"
    );
    assert!(
        matches!(
            queue_counts(amqp, &format!("{queue}.dlq")).await,
            None | Some((0, _))
        ),
        "nothing dead-lettered"
    );

    target.set_default(Reply::ok());
    let recovered_at = Instant::now();
    let ids: BTreeSet<String> = messages.iter().map(|m| m.id.clone()).collect();
    target
        .wait_for_delivered(
            &ids,
            Duration::from_millis(OPEN_MS) + Duration::from_secs(5),
        )
        .await;
    let view = api
        .wait_for_consumer(&consumer, Duration::from_secs(5), "running", |v| {
            v["state"] == "running" && v["stats"]["acked"] == 5
        })
        .await;
    eprintln!(
        "all {} delivered {:?} after the target recovered",
        ids.len(),
        recovered_at.elapsed()
    );
    assert_eq!(
        view["circuit"],
        json!({ "state": "closed", "consecutiveFailures": 0 }),
        "{view}"
    );
    assert_eq!(
        view["stats"]["retried"], 2,
        "no retry copy since the opening: {view}"
    );
    assert_eq!(view["stats"]["deadLettered"], 0, "{view}");

    // Each message arrives with the attempts it had spent: the two retried
    // before the opening at attempt 2, every other one at attempt 1.
    let retried_before: BTreeSet<String> = failed[..2].iter().map(|r| r.webhook_id()).collect();
    let delivered: BTreeMap<String, u32> = target
        .requests()
        .iter()
        .filter(|r| r.answered == 200)
        .map(|r| (r.webhook_id(), r.attempt()))
        .collect();
    for id in &ids {
        let expected = if retried_before.contains(id) { 2 } else { 1 };
        assert_eq!(delivered.get(id), Some(&expected), "{id}: {delivered:?}");
    }
    // Not one delivery with a spent attempt after the opening.
    let after_open: Vec<u32> = target.requests()[3..].iter().map(|r| r.attempt()).collect();
    assert!(after_open.iter().all(|a| *a <= 2), "{after_open:?}");
    wait_for_queue(amqp, &queue, Duration::from_secs(5), "empty", |m, _| m == 0).await;

    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    let openings = sample(
        &metrics,
        &format!(
            "workerrmq_circuit_openings_total{{consumer_id=\"{consumer}\",queue=\"{queue}\"}}"
        ),
    );
    assert!(openings.is_some_and(|n| n >= 1.0), "{openings:?}");

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_or_disabled_circuit_breaker_lets_every_failure_take_its_course() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    target.set_default(Reply::status(503));
    // Beyond the default threshold (10): an enabled breaker would open.
    const MESSAGES: usize = 12;
    let mut consumers = Vec::new();
    for (label, setting) in [("null", Value::Null), ("off", json!({ "enabled": false }))] {
        let queue = app.unique_queue(label);
        let consumer = api
            .queue_with_consumer(
                &queue,
                &target.url(&format!("/{label}")),
                json!({ "prefetch": 1, "retry": { "maxAttempts": 1 }, "circuitBreaker": setting }),
            )
            .await;
        api.wait_for_consumer(&consumer, Duration::from_secs(5), "running", |v| {
            v["state"] == "running"
        })
        .await;
        publish_confirmed(
            app.amqp_connection().await,
            &queue,
            &binary_messages(label, MESSAGES),
        )
        .await;
        consumers.push(consumer);
    }
    for consumer in &consumers {
        let view = api
            .wait_for_consumer(
                consumer,
                Duration::from_secs(20),
                "all dead-lettered",
                |v| v["stats"]["deadLettered"] == MESSAGES as u64,
            )
            .await;
        assert_eq!(view["state"], "running", "{view}");
        assert_eq!(view["circuitBreaker"], Value::Null, "{view}");
        assert_eq!(view["circuit"], Value::Null, "{view}");
    }
    assert_eq!(target.request_count(), 2 * MESSAGES);

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_settings_are_checked_and_named_and_on_by_default() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let queue = app.unique_queue("cb-input");
    api.create_queue(&queue).await;
    let target = json!({ "type": "http", "url": "http://127.0.0.1:9/hook" });
    let cases = [
        (json!({ "failureTreshold": 3 }), "failureTreshold"),
        (
            json!({ "failureThreshold": 0 }),
            "circuitBreaker.failureThreshold",
        ),
        (
            json!({ "failureThreshold": -1 }),
            "circuitBreaker.failureThreshold",
        ),
        (json!({ "openMs": 0 }), "circuitBreaker.openMs"),
        (
            json!({ "openMs": 5000, "maxOpenMs": 4000 }),
            "circuitBreaker.maxOpenMs",
        ),
        (
            json!({ "maxOpenMs": 86_400_001u64 }),
            "circuitBreaker.maxOpenMs",
        ),
        (json!({ "enabled": "no" }), "circuitBreaker.enabled"),
        (json!(5), "circuitBreaker"),
    ];
    for (setting, field) in cases {
        let body = assert_error(
            api.post(
                "/createConsumer",
                &json!({ "queueName": queue, "target": target, "circuitBreaker": setting }),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
        let message = body["message"].as_str().expect("a message");
        assert!(message.contains(field), "{setting} → {message}");
    }
    let stored = crate::support::assert_json(api.get("/getConsumers").await, StatusCode::OK).await;
    assert_eq!(stored, json!([]), "a refused consumer was stored");

    // Absent: on, with the documented defaults.
    let consumer = api
        .create_http_consumer(&queue, "http://127.0.0.1:9/hook", json!({}))
        .await;
    let view = api.consumer(&consumer).await;
    assert_eq!(
        view["circuitBreaker"],
        json!({ "failureThreshold": 10, "openMs": 30000, "maxOpenMs": 600000 }),
        "{view}"
    );
    assert_eq!(view["circuit"]["state"], "closed", "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_wins_over_an_open_circuit_and_a_resume_probes_again() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    target.set_default(Reply::status(503));
    let queue = app.unique_queue("cb-pause");
    let consumer = api
        .queue_with_consumer(
            &queue,
            &target.url("/sick"),
            json!({ "prefetch": 1, "circuitBreaker": { "failureThreshold": 1, "openMs": 1000 } }),
        )
        .await;
    api.wait_for_consumer(&consumer, Duration::from_secs(5), "running", |v| {
        v["state"] == "running"
    })
    .await;
    let message = binary_messages("cb-pause", 1).remove(0);
    let amqp = app.amqp_connection().await;
    publish_confirmed(amqp, &queue, std::slice::from_ref(&message)).await;
    api.wait_for_consumer(&consumer, Duration::from_secs(10), "circuit_open", |v| {
        v["state"] == "circuit_open"
    })
    .await;
    api.pause(&consumer).await;
    target.set_default(Reply::ok());

    // Past the probe time, paused still: no probe, no consumer on the queue.
    let paused_at = Instant::now();
    while paused_at.elapsed() < Duration::from_millis(2_500) {
        assert_eq!(api.consumer(&consumer).await["state"], "paused");
        assert_eq!(target.request_count(), 1, "a paused consumer probed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(queue_counts(amqp, &queue).await, Some((1, 0)));

    api.resume(&consumer).await;
    target
        .wait_for_delivered(
            &BTreeSet::from([message.id.clone()]),
            Duration::from_secs(5),
        )
        .await;
    let view = api
        .wait_for_consumer(&consumer, Duration::from_secs(5), "running", |v| {
            v["state"] == "running" && v["stats"]["acked"] == 1
        })
        .await;
    assert_eq!(view["circuit"]["state"], "closed", "{view}");
    let attempts: Vec<u32> = target.requests().iter().map(|r| r.attempt()).collect();
    assert_eq!(attempts, [1, 1], "the handed-back message kept its attempt");

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_spec_lists_the_circuit_breaker_from_the_request_type() {
    let app = spawn_app().await;
    let spec = crate::support::assert_json(
        app.request_anonymous(reqwest::Method::GET, "/openapi.json", None)
            .await,
        StatusCode::OK,
    )
    .await;
    let schemas = &spec["components"]["schemas"];
    let field = &schemas["CreateConsumerRequest"]["properties"]["circuitBreaker"];
    assert!(field.is_object(), "{}", schemas["CreateConsumerRequest"]);
    assert!(
        field.to_string().contains("CircuitBreakerRequest"),
        "{field}"
    );
    let breaker = &schemas["CircuitBreakerRequest"];
    for property in ["enabled", "failureThreshold", "openMs", "maxOpenMs"] {
        assert!(
            breaker["properties"][property].is_object(),
            "{property}: {breaker}"
        );
    }
    assert_eq!(
        breaker["properties"]["failureThreshold"]["minimum"], 1,
        "{breaker}"
    );
}

/// `nextProbeAt − openedAt` of an open circuit, in ms.
fn open_wait_ms(view: &Value) -> i64 {
    let at = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(view["circuit"][field].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{field} is not RFC 3339 ({e}): {view}"))
    };
    (at("nextProbeAt") - at("openedAt")).num_milliseconds()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_opens_the_circuit_again_for_twice_as_long() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    target.set_default(Reply::status(503));
    let queue = app.unique_queue("cb-probe");
    let consumer = api
        .queue_with_consumer(
            &queue,
            &target.url("/sick"),
            json!({ "prefetch": 5, "circuitBreaker": { "failureThreshold": 1, "openMs": 1000, "maxOpenMs": 1500 } }))
        .await;
    api.wait_for_consumer(&consumer, Duration::from_secs(5), "running", |v| {
        v["state"] == "running"
    })
    .await;
    let message = binary_messages("cb-probe", 1).remove(0);
    publish_confirmed(
        app.amqp_connection().await,
        &queue,
        std::slice::from_ref(&message),
    )
    .await;

    let first = api
        .wait_for_consumer(&consumer, Duration::from_secs(10), "open", |v| {
            v["circuit"]["state"] == "open"
        })
        .await;
    assert_eq!(open_wait_ms(&first), 1_000, "{first}");
    // The probe fails: open again, for 2 × 1000 capped at maxOpenMs.
    let second = api
        .wait_for_consumer(&consumer, Duration::from_secs(10), "re-opened", |v| {
            v["circuit"]["state"] == "open" && v["circuit"]["consecutiveFailures"] == 2
        })
        .await;
    assert_eq!(open_wait_ms(&second), 1_500, "{second}");
    assert_eq!(second["state"], "circuit_open", "{second}");
    let attempts: Vec<u32> = target.requests().iter().map(|r| r.attempt()).collect();
    assert_eq!(attempts, [1, 1], "the probe came with the attempt unspent");
    assert_eq!(second["stats"]["retried"], 0, "{second}");

    target.stop().await;
}

//! `/metrics` moves with real deliveries.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::metric_sample as sample;
use crate::support::target_server::{Reply, TargetServer};
use crate::support::Api;
use crate::support::{assert_error, eventually, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_real_deliveries() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    target.script("/hook", vec![Reply::status(400)], Reply::ok());
    let queue = app.unique_queue("metered");
    app.create_queue(&queue, json!({})).await;
    let created = app
        .post_json(
            "/createConsumer",
            &json!({ "queueName": queue, "target": { "type": "http", "url": target.url("/hook") } }),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let consumer_id = created.json::<serde_json::Value>().await.expect("JSON")["consumerId"]
        .as_str()
        .expect("consumerId")
        .to_owned();

    for i in 0..4 {
        app.publish(&queue, json!({ "i": i })).await;
    }
    let labels = format!("{{consumer_id=\"{consumer_id}\",queue=\"{queue}\"}}");
    let text = eventually(Duration::from_secs(15), || async {
        let response = app.get("/metrics").await;
        if response.status() != StatusCode::OK {
            return Err(format!("/metrics answered {}", response.status()));
        }
        let text = response.text().await.map_err(|e| e.to_string())?;
        match sample(&text, &format!("workerrmq_acked_total{labels}")) {
            Some(acked) if acked >= 3.0 => Ok(text),
            other => Err(format!("acked is {other:?}")),
        }
    })
    .await;

    assert_eq!(
        sample(&text, &format!("workerrmq_deliveries_total{labels}")),
        Some(4.0)
    );
    assert_eq!(
        sample(&text, &format!("workerrmq_acked_total{labels}")),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, &format!("workerrmq_dead_lettered_total{labels}")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, &format!("workerrmq_retried_total{labels}")),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, &format!("workerrmq_in_flight{labels}")),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("workerrmq_target_round_trip_seconds_count{labels}")
        ),
        Some(4.0)
    );
    assert!(
        sample(&text, "workerrmq_publishes_total{outcome=\"confirmed\"}").unwrap_or(0.0) >= 4.0
    );
    assert!(sample(&text, "workerrmq_publish_seconds_count").unwrap_or(0.0) >= 4.0);
    assert_eq!(sample(&text, "workerrmq_broker_up"), Some(1.0));
    assert_eq!(sample(&text, "workerrmq_store_up"), Some(1.0));

    // A deleted consumer's series go away.
    app.post_json("/deleteConsumer", &json!({ "consumerId": consumer_id }))
        .await;
    let after = app.get("/metrics").await.text().await.expect("text");
    assert!(
        !after.contains(&consumer_id),
        "series of a deleted consumer remain"
    );

    let anonymous = reqwest::get(app.url("/metrics")).await.expect("request");
    assert_error(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_gauge_follows_a_consumer_through_pause_and_resume() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    let queue = app.unique_queue("gauged");
    let api = Api::of(&app);
    let consumer_id = api
        .queue_with_consumer(&queue, &target.url("/hook"), json!({}))
        .await;
    let gauge = |state: &str| {
        format!(
            "workerrmq_consumer_state{{consumer_id=\"{consumer_id}\",queue=\"{queue}\",state=\"{state}\"}}"
        )
    };
    // Exactly `expected` reads 1, every other state 0.
    let in_state = |expected: &'static str| {
        let app = &app;
        let gauge = &gauge;
        async move {
            let text = app
                .get("/metrics")
                .await
                .text()
                .await
                .map_err(|e| e.to_string())?;
            for state in ["running", "paused", "circuit_open", "reconnecting"] {
                let want = if state == expected { 1.0 } else { 0.0 };
                let got = sample(&text, &gauge(state));
                if got != Some(want) {
                    return Err(format!("{state}: {got:?}, want {want}"));
                }
            }
            Ok(())
        }
    };

    eventually(Duration::from_secs(10), || in_state("running")).await;
    let paused = app
        .post_json("/pauseConsumer", &json!({ "consumerId": consumer_id }))
        .await;
    assert_eq!(paused.status(), StatusCode::OK);
    eventually(Duration::from_secs(10), || in_state("paused")).await;
    let resumed = app
        .post_json("/resumeConsumer", &json!({ "consumerId": consumer_id }))
        .await;
    assert_eq!(resumed.status(), StatusCode::OK);
    eventually(Duration::from_secs(10), || in_state("running")).await;
}

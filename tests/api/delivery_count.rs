//! `x-delivery-count`: a quorum queue counts the deliveries it made of a
//! message without an outcome, and the gateway counts them as attempts, so a
//! message that keeps coming back (here: its gateway is killed while the
//! target holds it) is dead-lettered after `maxAttempts` like any other.
//! On the system broker: a single-node quorum queue counts the same way.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::gateway_process::Deployment;
use crate::support::target_server::{Reply, TargetServer};
use crate::support::{assert_json, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_redelivered_by_a_quorum_queue_past_max_attempts_is_dead_lettered_unsent() {
    let deployment = Deployment::new();
    let instance = deployment.instance_id("poison");
    let mut gateway = deployment.start_gateway(&instance).await;
    let target = TargetServer::start().await;
    // The target holds every request: the gateway dies with it in flight.
    target.set_default(Reply::ok().after(Duration::from_secs(60)));

    let queue = deployment.queue("poison");
    assert_json(
        gateway
            .api
            .post(
                "/createQueue",
                &json!({ "queueName": queue, "queueType": "quorum" }),
            )
            .await,
        StatusCode::CREATED,
    )
    .await;
    let consumer = gateway
        .api
        .create_http_consumer(
            &queue,
            &target.url("/hook"),
            json!({ "retry": { "maxAttempts": 1 } }),
        )
        .await;
    let id = format!("{}poison", deployment.prefix);
    assert_json(
        gateway
            .api
            .post(
                "/messagePublish",
                &json!({ "queueName": queue, "messageId": id, "message": { "n": 1 } }),
            )
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    target.wait_for_requests(1, Duration::from_secs(10)).await;

    // Killed mid-delivery: the broker takes the message back and, on the
    // next delivery, says so with x-delivery-count 1: attempt 2 of 1.
    gateway.kill();
    let restarted = deployment.start_gateway(&instance).await;
    let dead = eventually(Duration::from_secs(15), || async {
        let letters = restarted.api.dead_letters(&queue).await;
        if letters.len() == 1 {
            Ok(letters)
        } else {
            Err(format!("{} dead letters", letters.len()))
        }
    })
    .await;
    let letter = &dead[0];
    assert_eq!(letter["messageId"], id.as_str(), "{letter}");
    assert!(
        letter.to_string().contains("x-delivery-count"),
        "the reason names the broker's count: {letter}"
    );
    assert_eq!(
        target.request_count(),
        1,
        "the target never saw it again: {:?}",
        target.requests()
    );

    restarted.api.delete_consumer(&consumer).await;
    drop(restarted);
    target.stop().await;
}

//! `publish-batch`: `/messagePublishBatch` with 100 messages of 1 KiB a
//! request from 8 keep-alive connections, against a plain lapin publisher
//! with confirms doing the same work the same way: the gateway's own
//! message (its properties and its `traceparent` header), 8 publishers on
//! channels of one connection, each sending 100 messages and then awaiting
//! their 100 confirms. Both publish to one empty classic queue, which must
//! hold every message afterwards. p50 / p99 are per request (per 100
//! confirms for the plain publisher).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::{json, Value};

use crate::gateway_process::GatewayProcess;
use crate::lean_http::post_request;
use crate::options::Options;
use crate::publish::{purge, queue_and_key, through_http};
use crate::scenarios::{
    amqp, confirm_channel, kib_payload, like_gateway, per_second, percentile, round,
};

const PER_REQUEST: usize = 100;
const CONNECTIONS: usize = 8;
const TARGET_RATIO: f64 = 0.80;

/// What the gateway publishes for a batch item without headers: its
/// properties and a `traceparent` of a trace of its own.
fn gateway_message() -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        gateway::trace::HEADER.into(),
        AMQPValue::LongString(
            gateway::Traceparent::start()
                .to_string()
                .into_bytes()
                .into(),
        ),
    );
    like_gateway().with_headers(headers)
}

/// Messages in `queue` now (passive declare).
async fn queued(queue: &str) -> anyhow::Result<u64> {
    let connection = amqp().await?;
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _ = connection.close(200, "counted".into()).await;
    Ok(u64::from(declared.message_count()))
}

/// `batches` batches of `PER_REQUEST` messages from `CONNECTIONS` plain
/// publishers: (msgs/s, sorted per-batch latencies in ms).
async fn plain_batches(
    queue: &str,
    payload: &[u8],
    batches: usize,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let connection = amqp().await?;
    let payload = Arc::new(payload.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let mut channels = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        channels.push(confirm_channel(&connection).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for channel in channels {
        let (next, payload, queue) = (next.clone(), payload.clone(), queue.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < batches {
                let t = Instant::now();
                let mut confirms = Vec::with_capacity(PER_REQUEST);
                for _ in 0..PER_REQUEST {
                    confirms.push(
                        channel
                            .basic_publish(
                                "".into(),
                                queue.as_str().into(),
                                BasicPublishOptions {
                                    mandatory: true,
                                    ..BasicPublishOptions::default()
                                },
                                &payload,
                                gateway_message(),
                            )
                            .await?,
                    );
                }
                for confirm in confirms {
                    confirm.await?;
                }
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<Vec<f64>, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(batches);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let rate = per_second(batches * PER_REQUEST, started.elapsed());
    let _ = connection.close(200, "done".into()).await;
    latencies.sort_by(|a, b| a.total_cmp(b));
    Ok((rate, latencies))
}

pub async fn publish_batch(options: &Options, gateway: &GatewayProcess) -> anyhow::Result<Value> {
    let requests = (options.messages / PER_REQUEST).max(CONNECTIONS);
    let messages = requests * PER_REQUEST;
    let (queue, key) = queue_and_key(gateway, "bench_pubbatch", "classic").await?;
    let payload = kib_payload();
    let message: Value = serde_json::from_slice(&payload)?;
    let item = json!({ "queueName": queue, "message": message });
    let body = json!({ "messages": vec![item; PER_REQUEST] });
    let address: SocketAddr = gateway.base.trim_start_matches("http://").parse()?;
    let request = post_request(
        &address,
        "/messagePublishBatch",
        &key,
        &serde_json::to_vec(&body)?,
    );

    purge(&queue).await?;
    let (request_rate, latencies, errors) =
        through_http(address, request, requests, CONNECTIONS, 200).await?;
    // A 200 answers for the batch, not for each message: the queue says
    // whether every one was taken.
    let enqueued = queued(&queue).await?;
    let gateway_rate = request_rate * PER_REQUEST as f64;
    purge(&queue).await?;
    let (plain_rate, plain_latencies) = plain_batches(&queue, &payload, requests).await?;
    purge(&queue).await?;
    gateway
        .post("/deleteQueue", &json!({ "queueName": queue }))
        .await?;
    Ok(json!({
        "requests": requests,
        "messages": messages,
        "messages_per_request": PER_REQUEST,
        "connections": CONNECTIONS,
        "gateway_msgs_per_s": round(gateway_rate),
        "plain_msgs_per_s": round(plain_rate),
        "ratio": round(gateway_rate / plain_rate),
        "target_ratio": TARGET_RATIO,
        "p50_ms": round(percentile(&latencies, 0.50)),
        "p99_ms": round(percentile(&latencies, 0.99)),
        "plain_p50_ms": round(percentile(&plain_latencies, 0.50)),
        "plain_p99_ms": round(percentile(&plain_latencies, 0.99)),
        "errors": errors,
        "enqueued": enqueued,
        "missing": (messages as u64).saturating_sub(enqueued),
    }))
}

//! `forward-h2`: `forward`'s gateway run (N pre-loaded 1 KiB persistent
//! messages, one consumer at prefetch 100) twice in one run: to the
//! HTTP/1.1 sink as `forward` does, and with `target.http2: "always"` to a
//! sink that speaks h2c, counting the TCP connections each sink accepted
//! (target: ≥ 1.0 × the HTTP/1.1 run, at most 4 connections over h2c).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{amqp, kib_payload, per_second, preload, round, suffix, wait_acked, PREFETCH};
use crate::gateway_process::GatewayProcess;
use crate::options::Options;
use crate::sink::Sink;

/// One consumer forwarding N messages to `sink`; messages per second.
async fn run_once(
    gateway: &GatewayProcess,
    sink: &Sink,
    n: usize,
    http2: &str,
) -> anyhow::Result<f64> {
    let connection = amqp().await?;
    let limit = Duration::from_secs(120 + n as u64 / 200);
    let queue = format!("bench_fwh2_{}", suffix());
    gateway
        .post("/createQueue", &json!({ "queueName": queue }))
        .await?;
    preload(&connection, &queue, n, &kib_payload()).await?;
    sink.reset();
    let started = Instant::now();
    let created = gateway
        .post(
            "/createConsumer",
            &json!({ "queueName": queue, "prefetch": PREFETCH,
                     "target": { "type": "http", "url": sink.url, "http2": http2 } }),
        )
        .await?;
    sink.wait_for(n as u64, limit).await?;
    let rate = per_second(n, started.elapsed());
    let consumer_id = created["consumerId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    wait_acked(gateway, &consumer_id, n as u64, limit).await?;
    gateway
        .post("/deleteConsumer", &json!({ "consumerId": consumer_id }))
        .await?;
    gateway
        .post("/deleteQueue", &json!({ "queueName": queue }))
        .await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(rate)
}

pub async fn forward_h2(
    options: &Options,
    gateway: &GatewayProcess,
    sink: &Sink,
) -> anyhow::Result<Value> {
    let n = options.messages;
    let h2c = Sink::start_h2c().await?;
    let before_h1 = sink.connections();
    let http1 = run_once(gateway, sink, n, "never").await?;
    let h1_connections = sink.connections() - before_h1;
    let http2 = run_once(gateway, &h2c, n, "always").await?;
    Ok(json!({
        "messages": n,
        "http1_msgs_per_s": round(http1),
        "http1_connections": h1_connections,
        "h2c_msgs_per_s": round(http2),
        "h2c_connections": h2c.connections(),
        "ratio": round(http2 / http1),
        "target_ratio": 1.0,
    }))
}

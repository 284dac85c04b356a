//! `fanin` (many queues at once, one consumer each) and `slow-target` (a
//! target that takes 20 ms to answer), each with its peer or bound in the
//! same run.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::gateway_process::GatewayProcess;
use crate::options::Options;
use crate::peers;
use crate::scenarios::{
    amqp, declare, delete, for_each_limited, kib_payload, per_second, preload, round, suffix,
    BATCH_ACK_EVERY, PREFETCH,
};
use crate::sink::Sink;

const FANIN_QUEUES: usize = 100;
const FANIN_TARGET: f64 = 0.6;
/// The bridges' requests open to the sink at once: the gateway's default
/// `MAX_CONNECTIONS_PER_TARGET`.
const FANIN_BRIDGE_SLOTS: usize = 256;
const SLOW_DELAY: Duration = Duration::from_millis(20);
const SLOW_TARGET: f64 = 0.9;

async fn preload_all(queues: &[String], per_queue: usize) -> anyhow::Result<()> {
    let connection = amqp().await?;
    let payload = kib_payload();
    let (connection, payload) = (&connection, &payload);
    for_each_limited(queues.to_vec(), 10, |q| async move {
        preload(connection, &q, per_queue, payload).await?;
        Ok(Value::Null)
    })
    .await?;
    let _ = connection.close(200, "preloaded".into()).await;
    Ok(())
}

/// 100 queues × `messages / 50` (1,000 by default) through one gateway
/// consumer each, against 100 plain consumers with coalesced acks.
pub async fn fanin(
    options: &Options,
    gateway: &GatewayProcess,
    sink: &Sink,
) -> anyhow::Result<Value> {
    let per_queue = (options.messages / 50).max(1);
    let total = FANIN_QUEUES * per_queue;
    let tag = suffix();
    let queues: Vec<String> = (0..FANIN_QUEUES)
        .map(|i| format!("bench_fanin_{tag}_{i}"))
        .collect();
    for_each_limited(queues.clone(), 16, |q| async move {
        gateway
            .post("/createQueue", &json!({ "queueName": q }))
            .await
    })
    .await?;
    preload_all(&queues, per_queue).await?;
    sink.reset();
    let started = Instant::now();
    let created = for_each_limited(queues.clone(), 16, |q| async move {
        gateway
            .post(
                "/createConsumer",
                &json!({ "queueName": q, "prefetch": PREFETCH,
                         "target": { "type": "http", "url": sink.url } }),
            )
            .await
    })
    .await?;
    sink.wait_for(total as u64, Duration::from_secs(120 + total as u64 / 500))
        .await?;
    let gateway_rate = per_second(total, started.elapsed());
    // Without the 100 creations (store writes) in front.
    let delivery_rate = per_second(total, sink.since_first());
    for_each_limited(created, 16, |c| async move {
        gateway
            .post("/deleteConsumer", &json!({ "consumerId": c["consumerId"] }))
            .await
    })
    .await?;
    for_each_limited(queues, 16, |q| async move {
        gateway
            .post("/deleteQueue", &json!({ "queueName": q }))
            .await
    })
    .await?;

    let raw: Vec<String> = (0..FANIN_QUEUES)
        .map(|i| format!("bench_fanin_raw_{tag}_{i}"))
        .collect();
    let connection = amqp().await?;
    let channel = connection.create_channel().await?;
    for q in &raw {
        declare(&channel, q).await?;
    }
    preload_all(&raw, per_queue).await?;
    let raw_rate =
        peers::plain_consumers(&connection, &raw, per_queue, PREFETCH, BATCH_ACK_EVERY).await?;
    // The same queues again, through 100 minimal bridges: what one request
    // per message allows here with every consumer aimed at one sink.
    preload_all(&raw, per_queue).await?;
    let bridge_rate = peers::bridges(
        &connection,
        &raw,
        per_queue,
        PREFETCH,
        FANIN_BRIDGE_SLOTS,
        sink,
    )
    .await?;
    for q in &raw {
        delete(&channel, q).await;
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(json!({
        "queues": FANIN_QUEUES,
        "messages": total,
        "gateway_msgs_per_s": round(gateway_rate),
        "gateway_from_first_msgs_per_s": round(delivery_rate),
        "raw_msgs_per_s": round(raw_rate),
        "ratio": round(gateway_rate / raw_rate),
        "ratio_from_first": round(delivery_rate / raw_rate),
        "bridge_msgs_per_s": round(bridge_rate),
        "bridge_ratio": round(bridge_rate / raw_rate),
        "ratio_to_bridge": round(gateway_rate / bridge_rate),
        "target": FANIN_TARGET,
    }))
}

/// One consumer at prefetch 100 on a sink that answers after 20 ms,
/// against the bound prefetch ÷ latency (5,000/s).
pub async fn slow_target(options: &Options, gateway: &GatewayProcess) -> anyhow::Result<Value> {
    let n = (options.messages / 5).max(1);
    let slow = Sink::start_with_delay(SLOW_DELAY).await?;
    let queue = format!("bench_slow_{}", suffix());
    gateway
        .post("/createQueue", &json!({ "queueName": queue }))
        .await?;
    let connection = amqp().await?;
    preload(&connection, &queue, n, &kib_payload()).await?;
    let _ = connection.close(200, "preloaded".into()).await;
    slow.reset();
    let started = Instant::now();
    let created = gateway
        .post(
            "/createConsumer",
            &json!({ "queueName": queue, "prefetch": PREFETCH,
                     "target": { "type": "http", "url": slow.url } }),
        )
        .await?;
    slow.wait_for(n as u64, Duration::from_secs(60 + n as u64 / 100))
        .await?;
    let rate = per_second(n, started.elapsed());
    // Without the consumer's creation (a store write) in front.
    let delivery_rate = per_second(n, slow.since_first());
    let gateway_held_ms = slow.mean_held_ms();
    gateway
        .post(
            "/deleteConsumer",
            &json!({ "consumerId": created["consumerId"] }),
        )
        .await?;
    gateway
        .post("/deleteQueue", &json!({ "queueName": queue }))
        .await?;
    // The minimal bridge on the same sink: what one request per message
    // gets out of this sink at this prefetch, next to the bound.
    let bridge_queue = format!("bench_slow_bridge_{}", suffix());
    let connection = amqp().await?;
    let channel = connection.create_channel().await?;
    declare(&channel, &bridge_queue).await?;
    preload(&connection, &bridge_queue, n, &kib_payload()).await?;
    let bridge_rate = peers::bridge(&connection, &bridge_queue, n, PREFETCH, &slow).await?;
    let bridge_held_ms = slow.mean_held_ms();
    delete(&channel, &bridge_queue).await;
    let _ = connection.close(200, "done".into()).await;
    let bound = f64::from(PREFETCH) / SLOW_DELAY.as_secs_f64();
    Ok(json!({
        "bridge_msgs_per_s": round(bridge_rate),
        "bridge_ratio": round(bridge_rate / bound),
        "messages": n,
        "delay_ms": SLOW_DELAY.as_millis() as u64,
        "prefetch": PREFETCH,
        "gateway_msgs_per_s": round(rate),
        "gateway_from_first_msgs_per_s": round(delivery_rate),
        "bound_msgs_per_s": round(bound),
        "ratio": round(rate / bound),
        "ratio_from_first": round(delivery_rate / bound),
        "sink_held_ms_gateway": round(gateway_held_ms),
        "sink_held_ms_bridge": round(bridge_held_ms),
        "target": SLOW_TARGET,
    }))
}

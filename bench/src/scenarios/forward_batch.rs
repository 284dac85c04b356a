//! `forward-batch`: the `forward` messages (N pre-loaded 1 KiB persistent
//! messages) through a batch consumer (`maxMessages` 100, `maxWaitMs` 5,
//! prefetch 500), against the batched-ack ceiling at the same prefetch: a
//! plain lapin consumer acking with `multiple`, no HTTP at all.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{
    amqp, consumer_id_of, declare, delete, kib_payload, per_second, preload, remove, round, suffix,
    wait_acked, BATCH_ACK_EVERY,
};
use crate::gateway_process::GatewayProcess;
use crate::options::Options;
use crate::sink::Sink;

const PREFETCH: u16 = 500;
const MAX_MESSAGES: u64 = 100;
const MAX_WAIT_MS: u64 = 5;

pub async fn forward_batch(
    options: &Options,
    gateway: &GatewayProcess,
    sink: &Sink,
) -> anyhow::Result<Value> {
    let n = options.messages;
    let payload = kib_payload();
    let connection = amqp().await?;
    let limit = Duration::from_secs(120 + n as u64 / 200);

    let queue = format!("bench_fwdb_{}", suffix());
    gateway
        .post("/createQueue", &json!({ "queueName": queue }))
        .await?;
    preload(&connection, &queue, n, &payload).await?;
    sink.reset();
    let started = Instant::now();
    let created = gateway
        .post(
            "/createConsumer",
            &json!({ "queueName": queue, "prefetch": PREFETCH,
                     "batch": { "maxMessages": MAX_MESSAGES, "maxWaitMs": MAX_WAIT_MS },
                     "target": { "type": "http", "url": sink.url } }),
        )
        .await?;
    let consumer_id = consumer_id_of(&created);
    let create = started.elapsed();
    // Timed at the sink, which counts each batch's messages: asking the
    // gateway every 50 ms whether all are acked (below) came ~25 ms late on
    // average, 2% of a 1.4 s run, and asking every 5 ms cost it CPU.
    sink.wait_for_messages(n as u64, limit).await?;
    let gateway_rate = per_second(n, started.elapsed());
    // Without the consumer's creation (a store write, the consume call) in
    // front, which the plain consumer does not make.
    let from_first = per_second(n, sink.since_first());
    let requests = sink.received();
    // Each acked once answered: the run is not over until they are.
    wait_acked(gateway, &consumer_id, n as u64, limit).await?;
    remove(gateway, &consumer_id, &queue).await?;

    let channel = connection.create_channel().await?;
    let raw = format!("bench_rawb_{}", suffix());
    declare(&channel, &raw).await?;
    preload(&connection, &raw, n, &payload).await?;
    let ceiling = crate::peers::plain_consumers(
        &connection,
        std::slice::from_ref(&raw),
        n,
        PREFETCH,
        BATCH_ACK_EVERY,
    )
    .await?;
    delete(&channel, &raw).await;
    let _ = connection.close(200, "done".into()).await;
    Ok(json!({
        "messages": n,
        "prefetch": PREFETCH,
        "max_messages": MAX_MESSAGES,
        "max_wait_ms": MAX_WAIT_MS,
        "gateway_msgs_per_s": round(gateway_rate),
        "requests": requests,
        "mean_batch": round(n as f64 / requests.max(1) as f64),
        "ceiling_batched_msgs_per_s": round(ceiling),
        "ratio_batched": round(gateway_rate / ceiling),
        "create_ms": round(create.as_secs_f64() * 1000.0),
        "gateway_from_first_msgs_per_s": round(from_first),
        "ratio_from_first": round(from_first / ceiling),
    }))
}

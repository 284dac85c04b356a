//! The delivery scenarios (forward, latency, scale here; forward-batch,
//! forward-h2, forward-rules, forward-history, history and ordered in their own files) and what they share.
//! Each measures the gateway and, where the issue asks, a plain lapin peer
//! doing the same work on an identical queue, or the gateway itself with a
//! feature off, so the ratio is taken in the same run on the same machine.

use anyhow::Context;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Value};

mod forward_batch;
mod forward_h2;
mod forward_history;
mod forward_rules;
mod history;
mod ordered;
pub use forward_batch::forward_batch;
pub use forward_h2::forward_h2;
pub use forward_history::forward_history;
pub use forward_rules::forward_rules;
pub use history::history;
pub use ordered::ordered;

use crate::gateway_process::GatewayProcess;
use crate::options::Options;
use crate::sink::{now_ns, Sink};

pub(crate) const PREFETCH: u16 = 100;
pub(crate) const BATCH_ACK_EVERY: u64 = 50;

/// This run's tag (see `cleanup`) and a random part.
pub(crate) fn suffix() -> String {
    format!(
        "{}{}",
        crate::cleanup::run_tag(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

pub(crate) fn per_second(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64().max(1e-9)
}

pub(crate) fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub(crate) fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub(crate) async fn amqp() -> anyhow::Result<Connection> {
    Connection::connect(
        &amqp_url(),
        ConnectionProperties::default().with_connection_name("workerrmq-bench-peer".into()),
    )
    .await
    .context("cannot connect to RabbitMQ")
}

pub(crate) async fn declare(channel: &Channel, queue: &str) -> anyhow::Result<()> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|_| ())
        .map_err(anyhow::Error::from)
}

pub(crate) async fn delete(channel: &Channel, queue: &str) {
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
}

pub(crate) fn kib_payload() -> Vec<u8> {
    let pad = "x".repeat(1024 - 12);
    format!("{{\"pad\":\"{pad}\"}}").into_bytes()
}

pub(crate) fn persistent() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}

/// What the gateway puts on a message it publishes (`messagePublish`),
/// a new message id each time; the plain publisher's "like the gateway"
/// row and the publish bridge both send it.
pub(crate) fn like_gateway() -> BasicProperties {
    persistent()
        .with_message_id(uuid::Uuid::new_v4().to_string().into())
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_app_id("workerrmq".into())
        .with_headers(FieldTable::default())
}

/// A new channel on `connection` in confirm mode.
pub(crate) async fn confirm_channel(connection: &Connection) -> anyhow::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Publishes `n` persistent messages and waits for every confirm.
pub(crate) async fn preload(
    connection: &Connection,
    queue: &str,
    n: usize,
    payload: &[u8],
) -> anyhow::Result<()> {
    preload_with(connection, queue, n, |_| payload).await
}

/// `preload`, message `i` carrying `payload_of(i)`.
pub(crate) async fn preload_with<P: AsRef<[u8]>>(
    connection: &Connection,
    queue: &str,
    n: usize,
    payload_of: impl Fn(usize) -> P,
) -> anyhow::Result<()> {
    let channel = confirm_channel(connection).await?;
    let mut pending = Vec::with_capacity(1000);
    for i in 0..n {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                payload_of(i).as_ref(),
                persistent().with_message_id(format!("m{i}").into()),
            )
            .await?;
        pending.push(confirm);
        if pending.len() == 1000 || i + 1 == n {
            for confirm in pending.drain(..) {
                confirm.await?;
            }
        }
    }
    let _ = channel.close(200, "preloaded".into()).await;
    Ok(())
}

/// A plain lapin consumer that acks every delivery, or with `multiple`
/// every `batch` deliveries; returns msgs/s over `n` deliveries.
async fn raw_consume(
    connection: &Connection,
    queue: &str,
    n: usize,
    batch: Option<u64>,
) -> anyhow::Result<f64> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let started = Instant::now();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "bench-raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut seen = 0usize;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        seen += 1;
        match batch {
            None => {
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Some(every) => {
                if delivery.delivery_tag % every == 0 || seen == n {
                    channel
                        .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                        .await?;
                }
            }
        }
        if seen == n {
            break;
        }
    }
    let rate = per_second(n, started.elapsed());
    let _ = channel.close(200, "done".into()).await;
    Ok(rate)
}

pub(crate) async fn wait_acked(
    gateway: &GatewayProcess,
    consumer_id: &str,
    n: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let view = gateway.get(&format!("/getConsumer/{consumer_id}")).await?;
        if view["stats"]["acked"].as_u64().unwrap_or(0) >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("consumer acked {} of {n}", view["stats"]["acked"]);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The id in a `/createConsumer` answer.
pub(crate) fn consumer_id_of(created: &Value) -> String {
    created["consumerId"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Deletes a scenario's consumer, then its queue.
pub(crate) async fn remove(
    gateway: &GatewayProcess,
    consumer_id: &str,
    queue: &str,
) -> anyhow::Result<()> {
    gateway
        .post("/deleteConsumer", &json!({ "consumerId": consumer_id }))
        .await?;
    gateway
        .post("/deleteQueue", &json!({ "queueName": queue }))
        .await?;
    Ok(())
}

/// `forward`'s gateway run: `n` pre-loaded 1 KiB persistent messages on a
/// queue of their own (`label`), one consumer at `PREFETCH` to `sink`, with
/// `target` fields over `{type: http, url}`; messages per second from the
/// consumer's creation until the sink saw them all.
pub(crate) async fn gateway_forward(
    gateway: &GatewayProcess,
    connection: &Connection,
    sink: &Sink,
    label: &str,
    n: usize,
    target: Value,
) -> anyhow::Result<f64> {
    gateway_forward_with(gateway, connection, sink, label, n, target, json!({})).await
}

/// `gateway_forward` with `fields` over the consumer's own (`filter`,
/// `transform`, …).
pub(crate) async fn gateway_forward_with(
    gateway: &GatewayProcess,
    connection: &Connection,
    sink: &Sink,
    label: &str,
    n: usize,
    target: Value,
    fields: Value,
) -> anyhow::Result<f64> {
    let limit = Duration::from_secs(120 + n as u64 / 200);
    let queue = format!("{label}_{}", suffix());
    gateway
        .post("/createQueue", &json!({ "queueName": queue }))
        .await?;
    preload(connection, &queue, n, &kib_payload()).await?;
    sink.reset();
    let mut consumer = json!({ "queueName": queue, "prefetch": PREFETCH,
                               "target": { "type": "http", "url": sink.url } });
    if let Value::Object(fields) = target {
        for (name, value) in fields {
            consumer["target"][name] = value;
        }
    }
    if let Value::Object(fields) = fields {
        for (name, value) in fields {
            consumer[name] = value;
        }
    }
    let started = Instant::now();
    let created = gateway.post("/createConsumer", &consumer).await?;
    sink.wait_for(n as u64, limit).await?;
    let rate = per_second(n, started.elapsed());
    let consumer_id = consumer_id_of(&created);
    wait_acked(gateway, &consumer_id, n as u64, limit).await?;
    remove(gateway, &consumer_id, &queue).await?;
    Ok(rate)
}

pub async fn forward(
    options: &Options,
    gateway: &GatewayProcess,
    sink: &Sink,
) -> anyhow::Result<Value> {
    let n = options.messages;
    let payload = kib_payload();
    let connection = amqp().await?;
    let limit = Duration::from_secs(120 + n as u64 / 200);
    let gateway_rate =
        gateway_forward(gateway, &connection, sink, "bench_fwd", n, json!({})).await?;

    let channel = connection.create_channel().await?;
    let mut ceilings = Vec::new();
    for batch in [None, Some(BATCH_ACK_EVERY)] {
        let raw = format!("bench_raw_{}", suffix());
        declare(&channel, &raw).await?;
        preload(&connection, &raw, n, &payload).await?;
        ceilings.push(raw_consume(&connection, &raw, n, batch).await?);
        delete(&channel, &raw).await;
    }
    let bridge_queue = format!("bench_bridge_{}", suffix());
    declare(&channel, &bridge_queue).await?;
    preload(&connection, &bridge_queue, n, &payload).await?;
    let bridge = crate::peers::bridge(&connection, &bridge_queue, n, PREFETCH, sink).await?;
    delete(&channel, &bridge_queue).await;
    let mq_bridge = match &options.mqb {
        Some(mqb) => {
            let queue = format!("bench_mqb_{}", suffix());
            declare(&channel, &queue).await?;
            preload(&connection, &queue, n, &payload).await?;
            let rate = crate::peers::mq_bridge(mqb, &amqp_url(), &queue, n, sink, limit).await;
            delete(&channel, &queue).await;
            Some(rate?)
        }
        None => None,
    };
    let _ = connection.close(200, "done".into()).await;
    let (ceiling, batched) = (ceilings[0], ceilings[1]);
    Ok(json!({
        "messages": n,
        "gateway_msgs_per_s": round(gateway_rate),
        "ceiling_msgs_per_s": round(ceiling),
        "ceiling_batched_msgs_per_s": round(batched),
        "bridge_msgs_per_s": round(bridge),
        "mqb_msgs_per_s": mq_bridge.map(round),
        "ratio": round(gateway_rate / ceiling),
        "ratio_batched": round(gateway_rate / batched),
        "ratio_bridge": round(gateway_rate / bridge),
        "ratio_mqb": mq_bridge.map(|m| round(gateway_rate / m)),
        "target_bridge": 0.95,
    }))
}

pub async fn latency(
    options: &Options,
    gateway: &GatewayProcess,
    sink: &Sink,
) -> anyhow::Result<Value> {
    let rate = options.rate.max(1);
    let total = (rate * options.duration.as_secs().max(1)) as usize;
    let queue = format!("bench_lat_{}", suffix());
    gateway
        .post("/createQueue", &json!({ "queueName": queue }))
        .await?;
    let created = gateway
        .post(
            "/createConsumer",
            &json!({ "queueName": queue, "prefetch": PREFETCH,
                     "target": { "type": "http", "url": sink.url } }),
        )
        .await?;
    let consumer_id = created["consumerId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.get(&format!("/getConsumer/{consumer_id}")).await?["state"] != "running" {
        if Instant::now() > deadline {
            anyhow::bail!("the latency consumer did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sink.reset();
    let connection = amqp().await?;
    let channel = connection.create_channel().await?;
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..total {
        ticker.tick().await;
        let payload = format!("{{\"sent_ns\":{},\"i\":{i}}}", now_ns());
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                payload.as_bytes(),
                persistent(),
            )
            .await?;
    }
    sink.wait_for(total as u64, Duration::from_secs(60)).await?;
    let mut ms: Vec<f64> = sink
        .state
        .latencies_ns
        .lock()
        .map_err(|_| anyhow::anyhow!("latency samples poisoned"))?
        .iter()
        .map(|ns| *ns as f64 / 1e6)
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let _ = connection.close(200, "done".into()).await;
    gateway
        .post("/deleteConsumer", &json!({ "consumerId": consumer_id }))
        .await?;
    gateway
        .post("/deleteQueue", &json!({ "queueName": queue }))
        .await?;
    Ok(json!({
        "rate": rate,
        "messages": total,
        "p50_ms": round(percentile(&ms, 0.50)),
        "p99_ms": round(percentile(&ms, 0.99)),
        "max_ms": round(ms.last().copied().unwrap_or(0.0)),
    }))
}

/// Runs `work` for every item with at most `limit` at once.
pub(crate) async fn for_each_limited<T, F, Fut>(
    items: Vec<T>,
    limit: usize,
    work: F,
) -> anyhow::Result<Vec<Value>>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Value>>,
{
    futures_util::stream::iter(items.into_iter().map(work))
        .buffer_unordered(limit)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

pub async fn scale(
    options: &Options,
    gateway: &GatewayProcess,
    sink: &Sink,
) -> anyhow::Result<Value> {
    let n = options.consumers;
    let tag = suffix();
    let queues: Vec<String> = (0..n).map(|i| format!("bench_scale_{tag}_{i}")).collect();
    let phases = Phases::start();
    for_each_limited(queues.clone(), 16, |q| async move {
        gateway
            .post(
                "/createQueue",
                &json!({ "queueName": q, "deadLetter": false }),
            )
            .await
    })
    .await?;
    phases.done(&format!("{n} queues created"));
    let rss_before = gateway.rss_mib();
    let started = Instant::now();
    let created = std::sync::atomic::AtomicUsize::new(0);
    let took = for_each_limited(queues.clone(), 16, |q| {
        let created = &created;
        let phases = &phases;
        async move {
            let t = Instant::now();
            gateway
                .post(
                    "/createConsumer",
                    &json!({ "queueName": q, "prefetch": 10,
                             "target": { "type": "http", "url": sink.url } }),
                )
                .await?;
            let so_far = created.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if so_far.is_multiple_of(1_000) {
                phases.progress(&format!("{so_far} consumers created"));
            }
            Ok(json!(t.elapsed().as_secs_f64() * 1000.0))
        }
    })
    .await?;
    let create_all = started.elapsed();
    let rss_created = gateway.rss_mib();
    phases.done(&format!("{n} consumers created, RSS {rss_created:.1} MiB"));
    let mut create_ms: Vec<f64> = took.iter().filter_map(Value::as_f64).collect();
    create_ms.sort_by(|a, b| a.total_cmp(b));
    let deadline = Instant::now() + Duration::from_secs(60);
    let running = loop {
        let consumers = gateway.get("/getConsumers").await?;
        let running = consumers.as_array().map_or(0, |all| {
            all.iter().filter(|c| c["state"] == "running").count()
        });
        if running >= n {
            break running;
        }
        if Instant::now() > deadline {
            anyhow::bail!("{running} of {n} consumers running after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rss_listed = gateway.rss_mib();
    phases.done(&format!(
        "{running} consumers running, RSS {rss_listed:.1} MiB"
    ));
    // The answers to `/getConsumers` (10,000 views) were just freed; the
    // figure is the consumers' own, so let the allocator give them back.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_after = gateway.rss_mib();
    phases.done(&format!("RSS {rss_after:.1} MiB"));
    let consume_connections = consume_connections(gateway).await;
    for_each_limited(queues.clone(), 16, |q| async move {
        gateway
            .post("/deleteConsumer", &json!({ "queueName": q }))
            .await
    })
    .await?;
    phases.done(&format!("{n} consumers deleted"));
    for_each_limited(queues, 16, |q| async move {
        gateway
            .post("/deleteQueue", &json!({ "queueName": q }))
            .await
    })
    .await?;
    phases.done(&format!("{n} queues deleted"));
    Ok(json!({
        "consumers": n,
        "running": running,
        "consume_connections": consume_connections,
        "create_all_s": round(create_all.as_secs_f64()),
        "create_p50_ms": round(percentile(&create_ms, 0.50)),
        "create_p99_ms": round(percentile(&create_ms, 0.99)),
        "create_max_ms": round(create_ms.last().copied().unwrap_or(0.0)),
        "rss_before_mib": round(rss_before),
        "rss_after_mib": round(rss_after),
        "kib_per_consumer": round((rss_after - rss_before) * 1024.0 / n as f64),
    }))
}

/// Where a long scenario is, on stderr: a stalled run shows its phase.
struct Phases {
    started: Instant,
    last: std::sync::Mutex<Instant>,
}

impl Phases {
    fn start() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: std::sync::Mutex::new(now),
        }
    }

    fn progress(&self, what: &str) {
        eprintln!("   {:>7.1} s  {what}", self.started.elapsed().as_secs_f64());
    }

    fn done(&self, what: &str) {
        let now = Instant::now();
        let phase = self
            .last
            .lock()
            .map(|mut last| std::mem::replace(&mut *last, now).elapsed())
            .unwrap_or_default();
        eprintln!(
            "   {:>7.1} s  {what} (this phase {:.1} s)",
            self.started.elapsed().as_secs_f64(),
            phase.as_secs_f64()
        );
    }
}

/// The gateway's consume connections the broker sees (by client-provided
/// name), or `None` when the management API does not answer.
async fn consume_connections(gateway: &GatewayProcess) -> Option<usize> {
    let connections: Value = reqwest::Client::new()
        .get("http://127.0.0.1:15672/api/connections?columns=client_properties")
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let prefix = format!("workerrmq-{}-consume", gateway.instance_id);
    Some(
        connections
            .as_array()?
            .iter()
            .filter(|c| {
                c["client_properties"]["connection_name"]
                    .as_str()
                    .is_some_and(|name| name.starts_with(&prefix))
            })
            .count(),
    )
}

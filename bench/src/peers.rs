//! The peers the gateway is measured against, besides the raw consumers in
//! `scenarios`: the minimal in-process bridge (what one HTTP request per
//! message allows), mq-bridge when an `mqb` binary is given, and many
//! plain consumers and many bridges in one process for `fanin`.

use anyhow::Context;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::{mpsc, Semaphore};

use crate::sink::Sink;

async fn consuming_channel(
    connection: &Connection,
    queue: &str,
    prefetch: u16,
) -> anyhow::Result<(Channel, lapin::Consumer)> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            "bench-peer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Acks the longest run of finished delivery tags from the first with one
/// `multiple` ack, after taking every finish that is already waiting.
async fn coalesce_acks(
    channel: Channel,
    mut finished: mpsc::UnboundedReceiver<u64>,
    n: usize,
) -> anyhow::Result<()> {
    let mut done = BTreeSet::new();
    let mut acked = 0u64;
    while let Some(tag) = finished.recv().await {
        done.insert(tag);
        while let Ok(tag) = finished.try_recv() {
            done.insert(tag);
        }
        let mut upto = acked;
        while done.remove(&(upto + 1)) {
            upto += 1;
        }
        if upto > acked {
            channel
                .basic_ack(upto, BasicAckOptions { multiple: true })
                .await?;
            acked = upto;
        }
        if acked as usize >= n {
            break;
        }
    }
    let _ = channel.close(200, "done".into()).await;
    Ok(())
}

/// The minimal bridge: a lapin consumer at `prefetch`, every delivery
/// POSTed at once with a pooled client, acks coalesced. msgs/s over `n`
/// messages, counted at the sink as for the gateway.
pub async fn bridge(
    connection: &Connection,
    queue: &str,
    n: usize,
    prefetch: u16,
    sink: &Sink,
) -> anyhow::Result<f64> {
    // At most `prefetch` deliveries are ever open, so the slots never bind.
    let per_target = usize::from(prefetch);
    bridges(
        connection,
        &[queue.to_owned()],
        n,
        prefetch,
        per_target,
        sink,
    )
    .await
}

/// `fanin`'s bridge: one minimal bridge per queue in one process, sharing
/// one pooled client and at most `per_target` requests open to the sink
/// (unbounded, 100 × prefetch requests would open thousands of connections
/// and measure their churn instead). Total msgs/s counted at the sink.
pub async fn bridges(
    connection: &Connection,
    queues: &[String],
    per_queue: usize,
    prefetch: u16,
    per_target: usize,
    sink: &Sink,
) -> anyhow::Result<f64> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(per_target)
        .build()?;
    let slots = Arc::new(Semaphore::new(per_target));
    sink.reset();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for queue in queues {
        let consuming = consuming_channel(connection, queue, prefetch).await?;
        tasks.push(tokio::spawn(bridge_queue(
            consuming,
            per_queue,
            http.clone(),
            sink.url.clone(),
            slots.clone(),
        )));
    }
    // The rate is taken when the sink has every message, as for the
    // gateway; the last acks are awaited after.
    let total = queues.len() * per_queue;
    sink.wait_for(total as u64, Duration::from_secs(300))
        .await?;
    let rate = total as f64 / started.elapsed().as_secs_f64();
    for task in tasks {
        task.await??;
    }
    Ok(rate)
}

/// One bridge on a consuming channel until its `n` deliveries are POSTed
/// and acked.
async fn bridge_queue(
    (channel, mut consumer): (Channel, lapin::Consumer),
    n: usize,
    http: reqwest::Client,
    url: String,
    slots: Arc<Semaphore>,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    let acks = tokio::spawn(coalesce_acks(channel, rx, n));
    let mut seen = 0;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let (http, url, tx, slots) = (http.clone(), url.clone(), tx.clone(), slots.clone());
        tokio::spawn(async move {
            let _slot = slots.acquire_owned().await;
            let posted = http
                .post(url)
                .header("content-type", "application/json")
                .body(delivery.data)
                .send()
                .await;
            if matches!(posted, Ok(ref r) if r.status().is_success()) {
                let _ = tx.send(delivery.delivery_tag);
            }
        });
        seen += 1;
        if seen == n {
            break;
        }
    }
    acks.await?
}

/// One plain consumer per queue on one connection, each acking with
/// `multiple` every `ack_every` deliveries; total msgs/s over all of them.
pub async fn plain_consumers(
    connection: &Connection,
    queues: &[String],
    per_queue: usize,
    prefetch: u16,
    ack_every: u64,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for queue in queues {
        let (channel, mut consumer) = consuming_channel(connection, queue, prefetch).await?;
        tasks.push(tokio::spawn(async move {
            let mut seen = 0;
            while let Some(delivery) = consumer.next().await {
                let delivery = delivery?;
                seen += 1;
                if delivery.delivery_tag % ack_every == 0 || seen == per_queue {
                    channel
                        .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                        .await?;
                }
                if seen == per_queue {
                    break;
                }
            }
            let _ = channel.close(200, "done".into()).await;
            Ok::<(), anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok((queues.len() * per_queue) as f64 / started.elapsed().as_secs_f64())
}

/// mq-bridge (`mqb copy`, amqp → http) over `n` messages, msgs/s counted
/// at the sink; the process is stopped once they are all in.
pub async fn mq_bridge(
    mqb: &str,
    amqp_url: &str,
    queue: &str,
    n: usize,
    sink: &Sink,
    limit: Duration,
) -> anyhow::Result<f64> {
    let base = amqp_url.split('?').next().unwrap_or(amqp_url);
    let from = format!("{base}?queue={queue}&prefetch_count=100");
    sink.reset();
    let started = Instant::now();
    let mut child = Command::new(mqb)
        .args(["copy", "--from", &from, "--to", &sink.url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {mqb}"))?;
    let arrived = sink.wait_for(n as u64, limit).await;
    let took = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    arrived?;
    Ok(n as f64 / took.as_secs_f64())
}

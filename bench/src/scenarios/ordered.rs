//! `ordered`: N pre-loaded 1 KiB persistent messages over 1,000 keys (the
//! key at `/key` in the JSON payload, keys taking turns), prefetch 100,
//! three ways in one run:
//! - unordered: a plain consumer, as `forward` runs it;
//! - ordered: the same consumer with `ordering` on the key, on a
//!   single-active-consumer queue (target: ≥ 0.80 × unordered);
//! - ordered, one key failing: the sink answers 503 to key `k0000` for the
//!   first 10 s; the other keys' messages per second until they are all
//!   delivered (target: ≥ 0.70 × ordered).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{amqp, consumer_id_of, per_second, preload_with, remove, round, suffix, wait_acked};
use crate::gateway_process::GatewayProcess;
use crate::options::Options;
use crate::sink::Sink;

const PREFETCH: u16 = 100;
const KEYS: usize = 1_000;
const FAILING_FOR: Duration = Duration::from_secs(10);
/// The failing window of a small (`--smoke`) run, which is over long
/// before 10 s.
const FAILING_FOR_SMOKE: Duration = Duration::from_secs(2);

fn key(i: usize) -> String {
    format!("k{:04}", i % KEYS)
}

/// `{"key":"k0042","pad":"xxx…"}`, 1 KiB: the key first, so the sink can
/// tell a key's requests by their first bytes.
fn keyed_payload(i: usize) -> Vec<u8> {
    let key = key(i);
    let pad = "x".repeat(1024 - 22 - key.len());
    format!("{{\"key\":\"{key}\",\"pad\":\"{pad}\"}}").into_bytes()
}

/// How one run counts as done.
enum Done {
    /// Every message reached the sink.
    All,
    /// Every message of the keys other than the failing one was taken;
    /// the failing key's requests are answered 503 for a while from the
    /// consumer's creation.
    Others { taken: u64, failing_prefix: Vec<u8> },
}

/// One consumer over a freshly loaded queue: messages per second from its
/// creation until `done`.
async fn run_once(
    gateway: &GatewayProcess,
    sink: &Sink,
    n: usize,
    ordered: bool,
    done: Done,
) -> anyhow::Result<f64> {
    let connection = amqp().await?;
    let limit = Duration::from_secs(180 + n as u64 / 100);
    let queue = format!("bench_ord_{}", suffix());
    gateway
        .post(
            "/createQueue",
            &json!({ "queueName": queue, "singleActiveConsumer": ordered }),
        )
        .await?;
    preload_with(&connection, &queue, n, keyed_payload).await?;
    sink.reset();
    let mut consumer = json!({ "queueName": queue, "prefetch": PREFETCH,
        "retry": { "maxAttempts": 100, "initialDelayMs": 1000, "multiplier": 1 },
        "target": { "type": "http", "url": sink.url } });
    if ordered {
        consumer["ordering"] = json!({ "key": { "jsonPointer": "/key" } });
    }
    if let Done::Others { failing_prefix, .. } = &done {
        sink.fail_prefix_for(Some((failing_prefix, failing_for(n))));
    }
    let started = Instant::now();
    let created = gateway.post("/createConsumer", &consumer).await?;
    let consumer_id = consumer_id_of(&created);
    let (count, wait) = match done {
        Done::All => (n, None),
        Done::Others { taken, .. } => (taken as usize, Some(taken)),
    };
    match wait {
        None => sink.wait_for(n as u64, limit).await?,
        Some(others) => {
            let deadline = Instant::now() + limit;
            while sink.others_taken() < others {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the other keys got {} of {others} through",
                    sink.others_taken()
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    let rate = per_second(count, started.elapsed());
    wait_acked(gateway, &consumer_id, n as u64, limit).await?;
    remove(gateway, &consumer_id, &queue).await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(rate)
}

fn failing_for(n: usize) -> Duration {
    if n < 10_000 {
        FAILING_FOR_SMOKE
    } else {
        FAILING_FOR
    }
}

pub async fn ordered(
    options: &Options,
    gateway: &GatewayProcess,
    sink: &Sink,
) -> anyhow::Result<Value> {
    let n = options.messages;
    let unordered = run_once(gateway, sink, n, false, Done::All).await?;
    let ordered = run_once(gateway, sink, n, true, Done::All).await?;
    let failing_messages = (0..n).filter(|i| i % KEYS == 0).count();
    let failing = Done::Others {
        taken: (n - failing_messages) as u64,
        failing_prefix: format!("{{\"key\":\"{}\"", key(0)).into_bytes(),
    };
    let with_failing = run_once(gateway, sink, n, true, failing).await;
    sink.fail_prefix_for(None);
    let with_failing = with_failing?;
    Ok(json!({
        "messages": n,
        "keys": KEYS,
        "prefetch": PREFETCH,
        "unordered_msgs_per_s": round(unordered),
        "ordered_msgs_per_s": round(ordered),
        "ratio": round(ordered / unordered),
        "target_ratio": 0.80,
        "failing_key_503_for_s": failing_for(n).as_secs(),
        "others_msgs_per_s": round(with_failing),
        "ratio_others": round(with_failing / ordered),
        "target_ratio_others": 0.70,
    }))
}

//! `publish`: `/messagePublish` at 64 and at 256 keep-alive connections
//! (p50 / p99 / p999), each against a plain lapin publisher with confirms
//! at the same concurrency; then, when `wrk` is on `PATH`, `wrk -t2 -c128`
//! with a 1 KiB body for the load figure, and the plain publisher
//! at that load. `publish` runs on a classic queue, `publish-quorum` on a
//! quorum queue, whose confirms come sooner and more evenly here.

use anyhow::Context;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use lapin::options::{BasicPublishOptions, QueuePurgeOptions};
use lapin::BasicProperties;
use serde_json::{json, Value};

use crate::gateway_process::GatewayProcess;
use crate::lean_http::{post_request, LeanClient};
use crate::options::Options;
use crate::publish_bridge::PublishBridge;
use crate::scenarios::{
    amqp, confirm_channel, like_gateway, per_second, percentile, persistent, round, suffix,
};

const CONCURRENCIES: [usize; 2] = [64, 256];
const TARGET_RATIO: f64 = 0.75;
const TARGET_P99_MS_64: f64 = 15.0;
const TARGET_WRK_P99_MS: f64 = 40.0;

/// `total` copies of `request` (a whole `POST`) to `address`,
/// `concurrency` at a time on as many keep-alive connections (`lean_http`,
/// the cheapest client this machine can host): (req/s, sorted latencies
/// in ms, answers other than `expected`).
pub(crate) async fn through_http(
    address: SocketAddr,
    request: Vec<u8>,
    total: usize,
    concurrency: usize,
    expected: u16,
) -> anyhow::Result<(f64, Vec<f64>, u64)> {
    let request = Arc::new(request);
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        clients.push(LeanClient::connect(address, request.clone()).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut client in clients {
        let (next, errors) = (next.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t = Instant::now();
                let status = client.send().await;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                match status {
                    Ok(status) if status == expected => {}
                    Ok(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    // A connection that failed counts one error and
                    // stops; the others take the publishes left.
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for task in tasks {
        latencies.extend(task.await?);
    }
    let rate = per_second(total, started.elapsed());
    latencies.sort_by(|a, b| a.total_cmp(b));
    Ok((rate, latencies, errors.load(Ordering::Relaxed)))
}

/// Empties `queue`, so that each publisher starts on an empty queue:
/// a classic queue's confirms slow down as it grows (p99 15–22 ms at 64
/// in flight on an empty queue, 47–51 ms past 100,000 messages here).
pub(crate) async fn purge(queue: &str) -> anyhow::Result<()> {
    let connection = amqp().await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await?;
    let _ = connection.close(200, "purged".into()).await;
    Ok(())
}

/// What the plain publisher sends.
#[derive(Clone, Copy, PartialEq)]
enum RawMessage {
    /// The payload, persistent, with a content type: the cheapest publish.
    Bare,
    /// The message as the gateway publishes it: a message id of its own,
    /// a timestamp, an app id, a header table, and `mandatory` (the
    /// gateway must answer 404 for an unroutable one). RabbitMQ charges
    /// for these: 15.3–18.5k msg/s against 17.5–23.5k bare at 64 in flight
    /// on an empty classic queue here.
    LikeGateway,
}

impl RawMessage {
    fn properties(self) -> BasicProperties {
        match self {
            RawMessage::Bare => persistent(),
            RawMessage::LikeGateway => like_gateway(),
        }
    }
}

/// The same publishes from a plain lapin publisher with confirms, with
/// `concurrency` publishes in flight on one channel: (msgs/s, sorted
/// publish-to-confirm latencies in ms), the floor the gateway's own
/// latencies stand on.
async fn raw_publisher(
    queue: &str,
    payload: &[u8],
    total: usize,
    concurrency: usize,
    message: RawMessage,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let connection = amqp().await?;
    let channel = confirm_channel(&connection).await?;
    let payload = Arc::new(payload.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (channel, next, payload, queue) = (
            channel.clone(),
            next.clone(),
            payload.clone(),
            queue.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t = Instant::now();
                channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions {
                            mandatory: message == RawMessage::LikeGateway,
                            ..BasicPublishOptions::default()
                        },
                        &payload,
                        message.properties(),
                    )
                    .await?
                    .await?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<Vec<f64>, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let rate = per_second(total, started.elapsed());
    let _ = connection.close(200, "done".into()).await;
    latencies.sort_by(|a, b| a.total_cmp(b));
    Ok((rate, latencies))
}

/// A new queue of `queue_type` named after `label`, and a publisher's API
/// key, made through the gateway.
pub(crate) async fn queue_and_key(
    gateway: &GatewayProcess,
    label: &str,
    queue_type: &str,
) -> anyhow::Result<(String, String)> {
    let queue = format!("{label}_{}", suffix());
    gateway
        .post(
            "/createQueue",
            &json!({ "queueName": queue, "queueType": queue_type }),
        )
        .await?;
    let key = gateway
        .post(
            "/createApiKey",
            &json!({ "name": format!("bench-{}", suffix()), "role": "publisher" }),
        )
        .await?["apiKey"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok((queue, key))
}

/// The publish rows on a queue of `queue_type` (`classic`, `quorum`): the
/// gateway and the plain publisher both publish to it, so the broker's
/// own confirm latency for that type is in both.
pub async fn publish(
    options: &Options,
    gateway: &GatewayProcess,
    queue_type: &str,
) -> anyhow::Result<Value> {
    let total = options.publishes;
    let (queue, key) = queue_and_key(gateway, "bench_pub", queue_type).await?;
    let message = json!({ "order": 42, "note": "x".repeat(200) });
    let body = json!({ "queueName": queue, "message": message });
    let payload = serde_json::to_vec(&message)?;
    let address: SocketAddr = gateway.base.trim_start_matches("http://").parse()?;
    let gateway_request = post_request(
        &address,
        "/messagePublish",
        &key,
        &serde_json::to_vec(&body)?,
    );
    let bridge = PublishBridge::start().await?;
    let bridge_request = post_request(
        &bridge.address,
        &format!("/publish/{queue}"),
        "none",
        &payload,
    );

    let mut result = serde_json::Map::new();
    result.insert("requests".into(), json!(total));
    for concurrency in CONCURRENCIES {
        purge(&queue).await?;
        let (rate, latencies, errors) =
            through_http(address, gateway_request.clone(), total, concurrency, 202).await?;
        purge(&queue).await?;
        let (bridged, bridge_latencies, bridge_errors) = through_http(
            bridge.address,
            bridge_request.clone(),
            total,
            concurrency,
            202,
        )
        .await?;
        purge(&queue).await?;
        let (raw, raw_latencies) =
            raw_publisher(&queue, &payload, total, concurrency, RawMessage::Bare).await?;
        purge(&queue).await?;
        let (like, like_latencies) = raw_publisher(
            &queue,
            &payload,
            total,
            concurrency,
            RawMessage::LikeGateway,
        )
        .await?;
        let c = concurrency;
        result.insert(format!("like_msgs_per_s_{c}"), json!(round(like)));
        result.insert(format!("ratio_like_{c}"), json!(round(rate / like)));
        for (name, p) in [("p50", 0.50), ("p99", 0.99)] {
            result.insert(
                format!("like_{name}_ms_{c}"),
                json!(round(percentile(&like_latencies, p))),
            );
        }
        result.insert(format!("bridge_req_per_s_{c}"), json!(round(bridged)));
        result.insert(format!("bridge_ratio_{c}"), json!(round(bridged / raw)));
        result.insert(format!("ratio_bridge_{c}"), json!(round(rate / bridged)));
        result.insert(
            format!("bridge_p99_ms_{c}"),
            json!(round(percentile(&bridge_latencies, 0.99))),
        );
        result.insert(format!("bridge_errors_{c}"), json!(bridge_errors));
        result.insert(format!("gateway_req_per_s_{c}"), json!(round(rate)));
        result.insert(format!("raw_msgs_per_s_{c}"), json!(round(raw)));
        result.insert(format!("ratio_{c}"), json!(round(rate / raw)));
        for (name, p) in [("p50", 0.50), ("p99", 0.99), ("p999", 0.999)] {
            result.insert(
                format!("{name}_ms_{c}"),
                json!(round(percentile(&latencies, p))),
            );
            result.insert(
                format!("raw_{name}_ms_{c}"),
                json!(round(percentile(&raw_latencies, p))),
            );
        }
        result.insert(format!("errors_{c}"), json!(errors));
    }
    result.insert("target_ratio".into(), json!(TARGET_RATIO));
    result.insert("target_p99_ms_64".into(), json!(TARGET_P99_MS_64));
    purge(&queue).await?;
    if let Some(wrk) = wrk(options, gateway, &key, &queue).await? {
        // The broker's own tail at the same load: as many 1 KiB messages
        // as wrk got through, 128 in flight, from a plain publisher.
        let sent = wrk
            .get("wrk_req_per_s")
            .and_then(Value::as_f64)
            .map_or(0, |rate| (rate * options.duration.as_secs_f64()) as usize);
        if sent > 0 {
            purge(&queue).await?;
            let payload = serde_json::to_vec(&wrk_message())?;
            let (raw, latencies) =
                raw_publisher(&queue, &payload, sent, 128, RawMessage::Bare).await?;
            result.insert("raw_128_msgs_per_s".into(), json!(round(raw)));
            result.insert(
                "raw_128_p99_ms".into(),
                json!(round(percentile(&latencies, 0.99))),
            );
        }
        result.extend(wrk);
        result.insert("target_wrk_p99_ms".into(), json!(TARGET_WRK_P99_MS));
    }
    gateway
        .post("/deleteQueue", &json!({ "queueName": queue }))
        .await?;
    Ok(Value::Object(result))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// `wrk -t2 -c128 -d<duration> --latency` on `/messagePublish` with a
/// 1 KiB message; `None` without `wrk` on `PATH`.
async fn wrk(
    options: &Options,
    gateway: &GatewayProcess,
    key: &str,
    queue: &str,
) -> anyhow::Result<Option<serde_json::Map<String, Value>>> {
    if !on_path("wrk") {
        eprintln!("   (no wrk on PATH: the wrk -c128 row is left out)");
        return Ok(None);
    }
    let body = json!({ "queueName": queue, "message": wrk_message() });
    let script = std::env::temp_dir().join(format!("bench-publish-{}.lua", suffix()));
    let lua = format!(
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {key}\"\nwrk.body = [[{body}]]\n"
    );
    std::fs::write(&script, lua)?;
    let output = tokio::process::Command::new("wrk")
        .args(["-t2", "-c128", "--latency"])
        .arg(format!("-d{}s", options.duration.as_secs().max(1)))
        .arg("-s")
        .arg(&script)
        .arg(format!("{}/messagePublish", gateway.base))
        .output()
        .await;
    let _ = std::fs::remove_file(&script);
    let output = output.context("wrk")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        anyhow::bail!("wrk failed: {text}");
    }
    let mut result = serde_json::Map::new();
    let number_after = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.trim().split([' ', ',']).next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    result.insert(
        "wrk_req_per_s".into(),
        json!(number_after("Requests/sec:").map(round)),
    );
    for (name, line) in [("p50", "50%"), ("p99", "99%")] {
        let ms = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(line))
            .and_then(|v| wrk_ms(v.trim()));
        result.insert(format!("wrk_{name}_ms"), json!(ms.map(round)));
    }
    let non_2xx = number_after("Non-2xx or 3xx responses:").unwrap_or(0.0);
    let socket_errors: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|rest| {
            rest.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(0.0);
    result.insert("wrk_errors".into(), json!(non_2xx + socket_errors));
    Ok(Some(result))
}

/// wrk's message: 1 KiB of JSON.
fn wrk_message() -> Value {
    json!({ "pad": "x".repeat(1024 - 12) })
}

/// A wrk duration (`812.00us`, `4.12ms`, `1.02s`) in ms.
fn wrk_ms(value: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = value.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = value.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (value, 1.0)
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

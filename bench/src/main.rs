//! `bench`: the gateway measured beside the broker's own ceiling, in one
//! run on one machine.
//!
//! `cargo run --release -p bench -- [all|forward|forward-batch|publish|
//! publish-quorum|publish-batch|latency|scale|fanin|slow-target|
//! forward-history|history|ordered|forward-h2|forward-rules]
//! [--messages N] [--duration SECONDS] [--consumers N] [--mqb PATH]
//! [--attempt-log both|on|off] [--rounds N] [--records N] [--reads N]
//! [--read-budget S] [--store-dir PATH] [--smoke]`
//!
//! It starts what it needs besides RabbitMQ and the store: the gateway (the
//! `workerrmq` binary as a child process, so its RSS is its own; under
//! `cargo run` cargo builds it first in the bench's profile, else it is the
//! one beside the bench or the one `WORKERRMQ_BIN` names), a minimal HTTP
//! sink, and for `publish` a minimal publish bridge (this
//! binary re-run as a child). `forward-history` and `history` start
//! gateways of their own (with the attempt log on or off; on a database
//! filled beforehand). It prints one table and writes
//! `bench-results.json`.

// The gateway's allocator, tuned the same way, for the peers it is
// measured against (see the file's own comment).
#[path = "../../src/allocator.rs"]
mod allocator;

mod cleanup;
mod gateway_process;
mod lean_http;
mod load_shapes;
mod options;
mod peers;
mod publish;
mod publish_batch;
mod publish_bridge;
mod scenarios;
mod sink;

use anyhow::Context;
use serde_json::{json, Value};

use options::{parse_options, Options};

fn main() -> std::process::ExitCode {
    allocator::tune();
    if std::env::args().nth(1).as_deref() == Some(publish_bridge::CHILD_FLAG) {
        return publish_bridge::run_child();
    }
    let options = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The scenarios that start gateways of their own.
const OWN_GATEWAYS: [&str; 2] = ["forward-history", "history"];

async fn run(options: Options) -> anyhow::Result<()> {
    let sink = sink::Sink::start().await?;
    // The shared gateway, unless every scenario asked for starts its own.
    let shared = if options
        .scenarios
        .iter()
        .all(|s| OWN_GATEWAYS.contains(&s.as_str()))
    {
        None
    } else {
        Some(gateway_process::GatewayProcess::start().await?)
    };
    let mut results = serde_json::Map::new();
    let outcome = async {
        for scenario in &options.scenarios {
            eprintln!("== {scenario}");
            if OWN_GATEWAYS.contains(&scenario.as_str()) {
                let value = match scenario.as_str() {
                    "forward-history" => scenarios::forward_history(&options, &sink).await?,
                    _ => scenarios::history(&options).await?,
                };
                results.insert(scenario.clone(), value);
                continue;
            }
            let gateway = shared
                .as_ref()
                .context("the shared gateway was not started")?;
            let value = match scenario.as_str() {
                "forward" => scenarios::forward(&options, gateway, &sink).await?,
                "forward-batch" => scenarios::forward_batch(&options, gateway, &sink).await?,
                "publish" => publish::publish(&options, gateway, "classic").await?,
                "publish-quorum" => publish::publish(&options, gateway, "quorum").await?,
                "publish-batch" => publish_batch::publish_batch(&options, gateway).await?,
                "latency" => scenarios::latency(&options, gateway, &sink).await?,
                "scale" => scenarios::scale(&options, gateway, &sink).await?,
                "fanin" => load_shapes::fanin(&options, gateway, &sink).await?,
                "slow-target" => load_shapes::slow_target(&options, gateway).await?,
                "ordered" => scenarios::ordered(&options, gateway, &sink).await?,
                "forward-h2" => scenarios::forward_h2(&options, gateway, &sink).await?,
                "forward-rules" => scenarios::forward_rules(&options, gateway, &sink).await?,
                _ => unreachable!("parse_options only accepts known scenarios"),
            };
            results.insert(scenario.clone(), value);
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if let Some(gateway) = shared {
        gateway.stop().await;
    }
    // Whatever failed, this run's queues go (the gateway is down by now).
    match cleanup::delete_run_queues().await {
        Ok(0) => {}
        Ok(n) => eprintln!("cleanup: deleted {n} queues left by this run"),
        Err(e) => eprintln!("cleanup: {e:#}"),
    }
    // The scenarios that finished are reported even when a later one failed.
    let report = json!({
        "machine": machine().await,
        "scenarios": Value::Object(results),
        "failed": outcome.as_ref().err().map(|e| format!("{e:#}")),
    });
    print_table(&report);
    std::fs::write(&options.output, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", options.output))?;
    println!("\nwrote {}", options.output);
    outcome
}

async fn machine() -> Value {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let rabbitmq = reqwest::Client::new()
        .get("http://127.0.0.1:15672/api/overview")
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .ok();
    let rabbitmq_version = match rabbitmq {
        Some(r) => r
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["rabbitmq_version"].as_str().map(String::from)),
        None => None,
    };
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "rabbitmq": rabbitmq_version,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        // Other work on the machine when the run ended (1, 5, 15 minutes).
        "load_average": std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
        "date": chrono::Utc::now().to_rfc3339(),
    })
}

fn print_table(report: &Value) {
    let s = &report["scenarios"];
    let f = |v: &Value| match v.as_f64() {
        Some(_) if v.is_u64() || v.is_i64() => v.to_string(),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    };
    println!("\nmachine: {}", report["machine"]);
    println!("{:<15} {:<44} {:>12}", "scenario", "measure", "value");
    let row = |scenario: &str, key: &str, label: &str| {
        if !s[scenario].is_null() && !s[scenario][key].is_null() {
            println!(
                "{:<15} {:<44} {:>12}",
                scenario,
                label,
                f(&s[scenario][key])
            );
        }
    };
    row("forward", "gateway_msgs_per_s", "gateway msgs/s");
    row(
        "forward",
        "ceiling_msgs_per_s",
        "raw lapin, ack each, msgs/s",
    );
    row(
        "forward",
        "ceiling_batched_msgs_per_s",
        "raw lapin, ack multiple/50, msgs/s",
    );
    row("forward", "ratio", "ratio vs ack-each");
    row("forward", "ratio_batched", "ratio vs batched (target 0.45)");
    row("forward", "bridge_msgs_per_s", "minimal bridge msgs/s");
    row(
        "forward",
        "ratio_bridge",
        "ratio vs minimal bridge (target 0.95)",
    );
    row("forward", "mqb_msgs_per_s", "mq-bridge msgs/s");
    row("forward", "ratio_mqb", "ratio vs mq-bridge");
    row(
        "forward-batch",
        "gateway_msgs_per_s",
        "batch consumer msgs/s",
    );
    row("forward-batch", "mean_batch", "messages per request");
    row(
        "forward-batch",
        "ceiling_batched_msgs_per_s",
        "raw lapin, prefetch 500, msgs/s",
    );
    row(
        "forward-batch",
        "ratio_batched",
        "ratio vs batched (target 0.85)",
    );
    row("forward-batch", "create_ms", "its /createConsumer, ms");
    row(
        "forward-batch",
        "ratio_from_first",
        "ratio from the first request",
    );
    for publish in ["publish", "publish-quorum"] {
        for c in [64, 256] {
            let key = |k: &str| format!("{k}_{c}");
            let label = |l: &str| format!("{l} @{c} conns");
            row(publish, &key("gateway_req_per_s"), &label("gateway req/s"));
            row(
                publish,
                &key("raw_msgs_per_s"),
                &label("raw lapin confirms msgs/s"),
            );
            row(publish, &key("ratio"), &label("ratio (target 0.75)"));
            row(publish, &key("p50_ms"), &label("p50 ms"));
            let p99 = if c == 64 {
                "p99 ms (target < 15)"
            } else {
                "p99 ms"
            };
            row(publish, &key("p99_ms"), &label(p99));
            row(publish, &key("p999_ms"), &label("p999 ms"));
            row(
                publish,
                &key("raw_p50_ms"),
                &label("raw lapin confirm p50 ms"),
            );
            row(
                publish,
                &key("raw_p99_ms"),
                &label("raw lapin confirm p99 ms"),
            );
            row(
                publish,
                &key("like_msgs_per_s"),
                &label("raw, gateway's message, msgs/s"),
            );
            row(
                publish,
                &key("ratio_like"),
                &label("ratio to that publisher"),
            );
            row(publish, &key("like_p99_ms"), &label("its confirm p99 ms"));
            row(
                publish,
                &key("bridge_req_per_s"),
                &label("minimal HTTP bridge req/s"),
            );
            row(publish, &key("bridge_ratio"), &label("bridge / raw lapin"));
            row(publish, &key("ratio_bridge"), &label("gateway / bridge"));
            row(publish, &key("bridge_p99_ms"), &label("bridge p99 ms"));
            row(publish, &key("errors"), &label("errors (target 0)"));
        }
        row(publish, "wrk_req_per_s", "wrk -t2 -c128 req/s");
        row(publish, "wrk_p50_ms", "wrk -t2 -c128 p50 ms");
        row(publish, "wrk_p99_ms", "wrk -t2 -c128 p99 ms (target < 40)");
        row(publish, "wrk_errors", "wrk -t2 -c128 errors (target 0)");
        row(
            publish,
            "raw_128_msgs_per_s",
            "raw lapin, 128 in flight, wrk's count, msgs/s",
        );
        row(
            publish,
            "raw_128_p99_ms",
            "raw lapin, 128 in flight, confirm p99 ms",
        );
    }
    let pb = "publish-batch";
    row(
        pb,
        "gateway_msgs_per_s",
        "100 × 1 KiB a request, 8 conns, msgs/s",
    );
    row(
        pb,
        "plain_msgs_per_s",
        "plain lapin, gateway's message, msgs/s",
    );
    row(pb, "ratio", "ratio (target 0.80)");
    row(pb, "p50_ms", "p50 ms per request");
    row(pb, "p99_ms", "p99 ms per request");
    row(pb, "plain_p50_ms", "plain p50 ms per 100 confirms");
    row(pb, "plain_p99_ms", "plain p99 ms per 100 confirms");
    row(pb, "errors", "answers other than 200 (target 0)");
    row(pb, "missing", "messages not enqueued (target 0)");
    row("latency", "rate", "msgs/s offered");
    row("latency", "p50_ms", "publish-to-sink p50 ms");
    row("latency", "p99_ms", "publish-to-sink p99 ms (< 20)");
    row("latency", "max_ms", "publish-to-sink max ms");
    row("scale", "consumers", "consumers");
    row("scale", "create_all_s", "create all, s (< 30 for 10,000)");
    row("scale", "running", "running (target: all)");
    row(
        "scale",
        "consume_connections",
        "gateway consume connections",
    );
    row("scale", "create_p50_ms", "one create p50 ms");
    row("scale", "create_p99_ms", "one create p99 ms");
    row("scale", "create_max_ms", "one create max ms");
    row("scale", "rss_before_mib", "gateway RSS before, MiB");
    row("scale", "rss_after_mib", "gateway RSS after, MiB (< 200)");
    row("scale", "kib_per_consumer", "KiB per idle consumer");
    row("fanin", "gateway_msgs_per_s", "100 queues, gateway msgs/s");
    row("fanin", "raw_msgs_per_s", "100 plain consumers msgs/s");
    row("fanin", "ratio", "ratio (target 0.6)");
    row("fanin", "ratio_from_first", "ratio from the first delivery");
    row("fanin", "bridge_msgs_per_s", "100 minimal bridges msgs/s");
    row("fanin", "bridge_ratio", "bridges / plain consumers");
    row("fanin", "ratio_to_bridge", "gateway / bridges");
    row(
        "slow-target",
        "gateway_msgs_per_s",
        "20 ms sink, gateway msgs/s",
    );
    row(
        "slow-target",
        "bound_msgs_per_s",
        "bound prefetch / latency msgs/s",
    );
    row("slow-target", "ratio", "ratio (target 0.9)");
    row(
        "slow-target",
        "bridge_msgs_per_s",
        "minimal bridge, same sink, msgs/s",
    );
    row(
        "slow-target",
        "bridge_ratio",
        "minimal bridge ratio to the bound",
    );
    row(
        "slow-target",
        "ratio_from_first",
        "ratio from the first delivery",
    );
    row(
        "slow-target",
        "sink_held_ms_gateway",
        "sink's real hold, gateway run, ms",
    );
    let fh = "forward-history";
    if let Some(runs) = s[fh]["runs"].as_array() {
        for (i, run) in runs.iter().enumerate() {
            let label = format!(
                "run {}, attempt log {}, msgs/s",
                i + 1,
                run["attempt_log"].as_str().unwrap_or("?")
            );
            println!("{fh:<15} {label:<44} {:>12}", f(&run["msgs_per_s"]));
        }
    }
    row(fh, "on_msgs_per_s", "attempt log on, msgs/s (median)");
    row(fh, "off_msgs_per_s", "ATTEMPT_LOG=off, msgs/s (median)");
    row(fh, "ratio", "ratio on / off (target 0.90)");
    row(
        fh,
        "on_gateway_cpu_us_per_msg",
        "gateway CPU µs per message, log on",
    );
    row(
        fh,
        "on_gateway_cpu_us_per_msg_until_stored",
        "the same until every record is stored",
    );
    row(
        fh,
        "off_gateway_cpu_us_per_msg",
        "gateway CPU µs per message, log off",
    );
    if let Some(pairs) = s[fh]["pair_ratios"].as_array().filter(|p| p.len() > 1) {
        let listed: Vec<String> = pairs.iter().map(f).collect();
        println!(
            "{fh:<15} {:<44} {:>12}",
            "each pair's ratio",
            listed.join(" ")
        );
    }
    row(fh, "records_per_bulk", "records per bulk insert");
    row(fh, "dropped", "records dropped");
    row(
        fh,
        "drain_after_last_delivery_s",
        "all stored, s after the last delivery",
    );
    row("history", "records", "attempt records stored");
    row(
        "history",
        "seed_records_per_s",
        "bulk insert into the store, records/s",
    );
    row("history", "index_build_s", "indexes made at start-up, s");
    row(
        "history",
        "attempts_reads",
        "getAttempts consumer+5xx requests timed",
    );
    row(
        "history",
        "attempts_p50_ms",
        "getAttempts consumer+5xx p50 ms",
    );
    row(
        "history",
        "attempts_p99_ms",
        "getAttempts consumer+5xx p99 ms (< 50)",
    );
    row(
        "history",
        "history_reads",
        "getMessageHistory requests timed",
    );
    row("history", "history_p50_ms", "getMessageHistory p50 ms");
    row(
        "history",
        "history_p99_ms",
        "getMessageHistory p99 ms (< 50)",
    );
    row(
        "history",
        "data_bytes_per_record",
        "bytes per record, documents (collStats)",
    );
    row(
        "history",
        "bytes_per_record_with_indexes",
        "bytes per record, with indexes (collStats)",
    );
    row(
        "history",
        "disk_bytes_per_record",
        "bytes per record on disk (--store-dir)",
    );
    row(
        "ordered",
        "unordered_msgs_per_s",
        "unordered, 1,000 keys, msgs/s",
    );
    row("ordered", "ordered_msgs_per_s", "ordered per key, msgs/s");
    row(
        "ordered",
        "ratio",
        "ratio ordered / unordered (target 0.80)",
    );
    row(
        "ordered",
        "others_msgs_per_s",
        "one key 503 for 10 s: the others, msgs/s",
    );
    row(
        "ordered",
        "ratio_others",
        "ratio others / ordered (target 0.70)",
    );
    row(
        "forward-h2",
        "http1_msgs_per_s",
        "to the HTTP/1.1 sink, msgs/s",
    );
    row("forward-h2", "http1_connections", "its TCP connections");
    row(
        "forward-h2",
        "h2c_msgs_per_s",
        "http2 always, to an h2c sink, msgs/s",
    );
    row(
        "forward-h2",
        "h2c_connections",
        "its TCP connections (at most 4)",
    );
    row("forward-h2", "ratio", "ratio h2c / HTTP/1.1 (target 1.0)");
    row("forward-rules", "plain_msgs_per_s", "without rules, msgs/s");
    row(
        "forward-rules",
        "rules_msgs_per_s",
        "filter passing all + transform, msgs/s",
    );
    row(
        "forward-rules",
        "ratio",
        "ratio rules / plain (target 0.85)",
    );
}

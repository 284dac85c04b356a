//! `bench`: the gateway measured beside the broker's own ceiling, in one
//! run on one machine.
//!
//! `cargo run --release --bin bench -- [all|forward|forward-batch|publish|
//! publish-quorum|latency|scale|fanin|slow-target] [--messages N] [--duration SECONDS] [--consumers N]
//! [--mqb PATH] [--smoke]`
//!
//! It starts what it needs besides RabbitMQ and the store: the gateway (this
//! same binary re-run as a child process, so its RSS is its own) and a
//! minimal HTTP sink. It prints one table and writes `bench-results.json`.

mod cleanup;
mod gateway_process;
mod lean_http;
mod load_shapes;
mod peers;
mod publish;
mod publish_bridge;
mod scenarios;
mod sink;

use std::time::Duration;

use serde_json::{json, Value};

/// What to run and how hard, from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// The scenarios to run, in order; every one when none is named (or `all`).
    pub scenarios: Vec<String>,
    /// Messages each throughput scenario moves (`--messages`).
    pub messages: usize,
    /// Messages the publish scenarios send (`--publishes`), at most `messages`.
    pub publishes: usize,
    /// How long the timed scenarios run (`--duration`, in seconds).
    pub duration: Duration,
    /// Messages per second the paced scenarios publish (`--rate`).
    pub rate: u64,
    /// Consumers the `scale` scenario registers (`--consumers`).
    pub consumers: usize,
    /// Where the JSON results are written (`--output`).
    pub output: String,
    /// mq-bridge's `mqb`, for its `forward` row: `--mqb PATH` or on `PATH`.
    pub mqb: Option<String>,
}

fn parse_options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        scenarios: vec![],
        messages: 50_000,
        publishes: 20_000,
        duration: Duration::from_secs(20),
        rate: 1_000,
        consumers: 1_000,
        output: "bench-results.json".into(),
        mqb: None,
    };
    let number = |flag: &str, raw: Option<String>| -> Result<u64, String> {
        raw.and_then(|r| r.parse().ok())
            .ok_or_else(|| format!("{flag} needs a number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--messages" => {
                options.messages = number("--messages", args.next())? as usize;
                options.publishes = options.messages.min(options.publishes);
            }
            "--publishes" => options.publishes = number("--publishes", args.next())? as usize,
            "--duration" => {
                options.duration = Duration::from_secs(number("--duration", args.next())?)
            }
            "--rate" => options.rate = number("--rate", args.next())?,
            "--consumers" => options.consumers = number("--consumers", args.next())? as usize,
            "--output" => options.output = args.next().ok_or("--output needs a path")?,
            "--mqb" => options.mqb = Some(args.next().ok_or("--mqb needs a path")?),
            "--smoke" => {
                options.messages = 300;
                options.publishes = 300;
                options.duration = Duration::from_secs(2);
                options.rate = 200;
                options.consumers = 20;
            }
            "all" | "forward" | "forward-batch" | "publish" | "publish-quorum" | "latency"
            | "scale" | "fanin" | "slow-target" => options.scenarios.push(arg),
            "-h" | "--help" => {
                println!("usage: bench [all|forward|forward-batch|publish|publish-quorum|latency|scale|fanin|slow-target]... [--messages N] [--publishes N] [--duration S] [--rate MSG_PER_S] [--consumers N] [--mqb PATH] [--smoke] [--output PATH]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    if options.scenarios.is_empty() || options.scenarios.iter().any(|s| s == "all") {
        options.scenarios = [
            "forward",
            "forward-batch",
            "publish",
            "publish-quorum",
            "latency",
            "scale",
            "fanin",
            "slow-target",
        ]
        .map(String::from)
        .to_vec();
    }
    if options.mqb.is_none() {
        options.mqb = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("mqb"))
                .find(|path| path.is_file())
                .map(|path| path.display().to_string())
        });
    }
    Ok(options)
}

fn main() -> std::process::ExitCode {
    workerrmq::allocator::tune();
    if std::env::args().nth(1).as_deref() == Some(gateway_process::CHILD_FLAG) {
        return gateway_process::run_child();
    }
    if std::env::args().nth(1).as_deref() == Some(publish_bridge::CHILD_FLAG) {
        return publish_bridge::run_child();
    }
    let options = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e}");
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
            eprintln!("bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> Result<(), String> {
    let sink = sink::Sink::start().await?;
    let gateway = gateway_process::GatewayProcess::start().await?;
    let mut results = serde_json::Map::new();
    let outcome = async {
        for scenario in &options.scenarios {
            eprintln!("== {scenario}");
            let value = match scenario.as_str() {
                "forward" => scenarios::forward(&options, &gateway, &sink).await?,
                "forward-batch" => scenarios::forward_batch(&options, &gateway, &sink).await?,
                "publish" => publish::publish(&options, &gateway, "classic").await?,
                "publish-quorum" => publish::publish(&options, &gateway, "quorum").await?,
                "latency" => scenarios::latency(&options, &gateway, &sink).await?,
                "scale" => scenarios::scale(&options, &gateway, &sink).await?,
                "fanin" => load_shapes::fanin(&options, &gateway, &sink).await?,
                "slow-target" => load_shapes::slow_target(&options, &gateway).await?,
                _ => unreachable!("parse_options only accepts known scenarios"),
            };
            results.insert(scenario.clone(), value);
        }
        Ok::<(), String>(())
    }
    .await;
    gateway.stop().await;
    // Whatever failed, this run's queues go (the gateway is down by now).
    match cleanup::delete_run_queues().await {
        Ok(0) => {}
        Ok(n) => eprintln!("cleanup: deleted {n} queues left by this run"),
        Err(e) => eprintln!("cleanup: {e}"),
    }
    // The scenarios that finished are reported even when a later one failed.
    let report = json!({
        "machine": machine().await,
        "scenarios": Value::Object(results),
        "failed": outcome.as_ref().err(),
    });
    print_table(&report);
    std::fs::write(
        &options.output,
        serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("cannot write {}: {e}", options.output))?;
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
        "date": chrono::Utc::now().to_rfc3339(),
    })
}

fn print_table(report: &Value) {
    let s = &report["scenarios"];
    let f = |v: &Value| match v.as_f64() {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    };
    println!("\nmachine: {}", report["machine"]);
    println!("{:<14} {:<44} {:>12}", "scenario", "measure", "value");
    let row = |scenario: &str, key: &str, label: &str| {
        if !s[scenario].is_null() && !s[scenario][key].is_null() {
            println!(
                "{:<14} {:<44} {:>12}",
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
        "ratio vs batched (target 0.80)",
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
}

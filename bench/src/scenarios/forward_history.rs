//! `forward-history`: what delivery history costs the delivery path. The
//! `forward` scenario's work (N pre-loaded 1 KiB persistent messages, one
//! consumer at prefetch 100, to the sink) on a gateway of its own with the
//! attempt log on, then on one with `ATTEMPT_LOG=off`, in pairs whose order
//! alternates (on/off, off/on, …) so that drift of the machine weighs on
//! both sides alike. Each run starts a new gateway, so every "on" run's
//! `/metrics` are its own: records written, bulk inserts (records per
//! insert) and records dropped. An "on" run also waits until every record
//! is stored and says how long that took after the last delivery. Every
//! run also gives the gateway's own CPU per message while it forwarded
//! (from `/proc`), and an "on" run the same until every record was stored
//! (the writer's work after the last delivery included): what the log
//! costs the gateway itself, apart from what a store on the same machine
//! takes from it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{
    amqp, consumer_id_of, kib_payload, per_second, preload, remove, round, suffix, wait_acked,
    PREFETCH,
};
use crate::gateway_process::{metric, GatewayProcess, GatewaySetup};
use crate::options::{AttemptLogRuns, Options};
use crate::sink::Sink;

const WRITTEN: &str = "workerrmq_attempt_log_written_total";
const BULK_INSERTS: &str = "workerrmq_attempt_log_bulk_inserts_total";
const DROPPED: &str = "workerrmq_attempt_log_dropped_total";

/// The figure the issue sets: with the log on, at least this much of the
/// rate without it.
const TARGET_RATIO: f64 = 0.90;

pub async fn forward_history(options: &Options, sink: &Sink) -> anyhow::Result<Value> {
    let modes = run_order(options.attempt_log, options.rounds);
    let mut runs = Vec::with_capacity(modes.len());
    for (i, on) in modes.iter().copied().enumerate() {
        eprintln!(
            "   run {}/{}: attempt log {}",
            i + 1,
            modes.len(),
            if on { "on" } else { "off" }
        );
        let run = one_run(options, sink, on).await?;
        eprintln!("   {run}");
        runs.push(run);
    }

    let rates = |on: bool| -> Vec<f64> {
        runs.iter()
            .filter(|r| r["attempt_log"] == on_off(on))
            .filter_map(|r| r["msgs_per_s"].as_f64())
            .collect()
    };
    let cpu = |on: bool, key: &str| -> Vec<f64> {
        runs.iter()
            .filter(|r| r["attempt_log"] == on_off(on))
            .filter_map(|r| r[key].as_f64())
            .collect()
    };
    let (on_rates, off_rates) = (rates(true), rates(false));
    let on_median = median(&on_rates);
    let off_median = median(&off_rates);
    // Each pair's own ratio: the two runs next to each other in time.
    let pair_ratios: Vec<f64> = runs
        .chunks(2)
        .filter_map(|pair| {
            let rate_of = |mode: &str| {
                pair.iter()
                    .find(|r| r["attempt_log"] == mode)
                    .and_then(|r| r["msgs_per_s"].as_f64())
            };
            Some(round(rate_of("on")? / rate_of("off")?))
        })
        .collect();
    let sum_over_on = |key: &str| -> Option<u64> {
        let on_runs: Vec<u64> = runs
            .iter()
            .filter(|r| r["attempt_log"] == "on")
            .filter_map(|r| r[key].as_u64())
            .collect();
        (!on_runs.is_empty()).then(|| on_runs.iter().sum())
    };
    let written = sum_over_on("written");
    let bulk_inserts = sum_over_on("bulk_inserts");
    let drains: Vec<f64> = runs
        .iter()
        .filter_map(|r| r["drain_after_last_delivery_s"].as_f64())
        .collect();
    Ok(json!({
        "messages": options.messages,
        "runs": runs,
        "on_msgs_per_s": on_median.map(round),
        "off_msgs_per_s": off_median.map(round),
        "ratio": on_median.zip(off_median).map(|(on, off)| round(on / off)),
        "pair_ratios": pair_ratios,
        "on_gateway_cpu_us_per_msg": median(&cpu(true, "gateway_cpu_us_per_msg")).map(round),
        "on_gateway_cpu_us_per_msg_until_stored":
            median(&cpu(true, "gateway_cpu_us_per_msg_until_stored")).map(round),
        "off_gateway_cpu_us_per_msg": median(&cpu(false, "gateway_cpu_us_per_msg")).map(round),
        "target_ratio": TARGET_RATIO,
        "written": written,
        "bulk_inserts": bulk_inserts,
        "records_per_bulk": written
            .zip(bulk_inserts)
            .filter(|(_, b)| *b > 0)
            .map(|(w, b)| round(w as f64 / b as f64)),
        "dropped": sum_over_on("dropped"),
        "drain_after_last_delivery_s": median(&drains).map(round),
    }))
}

/// The runs in order: `true` with the log on. Pairs alternate which side
/// goes first (on/off, off/on, …).
fn run_order(which: AttemptLogRuns, rounds: usize) -> Vec<bool> {
    match which {
        AttemptLogRuns::On => vec![true; rounds],
        AttemptLogRuns::Off => vec![false; rounds],
        AttemptLogRuns::Both => (0..rounds)
            .flat_map(|r| {
                let on_first = r.is_multiple_of(2);
                [on_first, !on_first]
            })
            .collect(),
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    })
}

/// One gateway, one forward of `options.messages`, the gateway stopped
/// (and its database dropped) whatever happened.
async fn one_run(options: &Options, sink: &Sink, on: bool) -> anyhow::Result<Value> {
    let gateway = GatewayProcess::start_with(GatewaySetup {
        env: vec![("ATTEMPT_LOG".into(), on_off(on).into())],
        ..GatewaySetup::default()
    })
    .await?;
    let outcome = forward_once(options, &gateway, sink, on).await;
    gateway.stop().await;
    outcome
}

async fn forward_once(
    options: &Options,
    gateway: &GatewayProcess,
    sink: &Sink,
    on: bool,
) -> anyhow::Result<Value> {
    let n = options.messages;
    let limit = Duration::from_secs(120 + n as u64 / 200);
    let connection = amqp().await?;
    let queue = format!("bench_fwdh_{}", suffix());
    gateway
        .post("/createQueue", &json!({ "queueName": queue }))
        .await?;
    preload(&connection, &queue, n, &kib_payload()).await?;
    let _ = connection.close(200, "preloaded".into()).await;
    sink.reset();
    let cpu_before = gateway.cpu_seconds();
    let started = Instant::now();
    let created = gateway
        .post(
            "/createConsumer",
            &json!({ "queueName": queue, "prefetch": PREFETCH,
                     "target": { "type": "http", "url": sink.url } }),
        )
        .await?;
    sink.wait_for(n as u64, limit).await?;
    let rate = per_second(n, started.elapsed());
    let last_delivery = Instant::now();
    // The gateway's own CPU while it forwarded: what the log costs it,
    // apart from what the store on the same machine takes.
    let cpu_us_per_msg = cpu_before
        .zip(gateway.cpu_seconds())
        .map(|(before, after)| round((after - before) * 1e6 / n.max(1) as f64));
    let consumer_id = consumer_id_of(&created);
    wait_acked(gateway, &consumer_id, n as u64, limit).await?;

    let mut run = json!({
        "attempt_log": on_off(on),
        "msgs_per_s": round(rate),
        "gateway_cpu_us_per_msg": cpu_us_per_msg,
    });
    if on {
        // Every record stored (or dropped): the writer's figures are then
        // the whole run's.
        let (written, bulk_inserts, dropped) =
            wait_stored(gateway, n as u64, limit.max(Duration::from_secs(600))).await?;
        run["written"] = json!(written);
        run["bulk_inserts"] = json!(bulk_inserts);
        run["records_per_bulk"] =
            json!((bulk_inserts > 0).then(|| round(written as f64 / bulk_inserts as f64)));
        run["dropped"] = json!(dropped);
        run["drain_after_last_delivery_s"] = json!(round(last_delivery.elapsed().as_secs_f64()));
        // With the writer's work after the last delivery: all the log cost
        // the gateway for these messages.
        run["gateway_cpu_us_per_msg_until_stored"] = json!(cpu_before
            .zip(gateway.cpu_seconds())
            .map(|(before, after)| round((after - before) * 1e6 / n.max(1) as f64)));
    }
    remove(gateway, &consumer_id, &queue).await?;
    Ok(run)
}

/// Until `records` are written or dropped; (written, bulk inserts,
/// dropped) from `/metrics`.
async fn wait_stored(
    gateway: &GatewayProcess,
    records: u64,
    limit: Duration,
) -> anyhow::Result<(u64, u64, u64)> {
    let deadline = Instant::now() + limit;
    loop {
        let text = gateway.metrics().await?;
        let count = |name| metric(&text, name).unwrap_or(0.0).max(0.0) as u64;
        let (written, bulk_inserts, dropped) =
            (count(WRITTEN), count(BULK_INSERTS), count(DROPPED));
        if written + dropped >= records {
            return Ok((written, bulk_inserts, dropped));
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{written} of {records} attempt records written ({dropped} dropped) after {limit:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_alternate_which_side_goes_first() {
        assert_eq!(
            run_order(AttemptLogRuns::Both, 3),
            [true, false, false, true, true, false]
        );
        assert_eq!(run_order(AttemptLogRuns::Off, 2), [false, false]);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}

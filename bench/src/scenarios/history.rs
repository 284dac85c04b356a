//! `history`: delivery history read back at size. `--records` (1,000,000)
//! attempt records are stored straight into the database of a gateway not
//! yet started (`seed`), the gateway is started on it and makes its indexes
//! (the scenario waits until `listIndexes` shows all four), and then
//! `--reads` (1,000) requests of each read are timed one after another over
//! HTTP, or as many as `--read-budget` (300 s) allows when the store is
//! slow (at least 10; how many were timed is reported): `/getAttempts?consumerId=…&status=5xx` (one of the 20 consumers in
//! turn) and `/getMessageHistory/{queue}/{id}` (a message picked at random).
//! Every answer is checked against what was stored. Last, the store's bytes
//! per record: `collStats` on `attempts` (the documents alone, and with
//! their indexes), and with `--store-dir` the growth of the store's
//! directory on disk.

mod seed;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use mongodb::bson::{doc, Bson, Document};
use serde_json::{json, Value};
use services::attempts::{StoredAttempt, COLLECTION};

use self::seed::{Layout, Seeded, CONSUMERS};
use super::{percentile, round, suffix};
use crate::gateway_process::{store_uri, without_retryable_writes, GatewayProcess, GatewaySetup};
use crate::options::Options;

/// The indexes the gateway makes at start-up (`AttemptHistory::ensure_indexes`).
const INDEXES: [&str; 4] = ["by_consumer", "by_message", "by_time", "retention"];
/// Longest wait for the gateway's `/ready`: it makes its indexes in the
/// background, but the store is busy building them meanwhile.
const READY_DEADLINE: Duration = Duration::from_secs(600);
/// Longest wait for the indexes: building them over a million records
/// takes the store minutes.
const INDEX_DEADLINE: Duration = Duration::from_secs(3 * 3600);
/// Pooled store connections idle longer are closed by the bench first.
const IDLE_CONNECTION: Duration = Duration::from_secs(60);
/// Timed requests of each read at least, whatever the budget.
const MIN_TIMED: usize = 10;
/// Untimed requests of each read first.
const WARM_UP: usize = 20;
/// `/getAttempts`' page when no `limit` is given.
const PAGE: usize = 100;
/// The mark for both reads.
const TARGET_P99_MS: f64 = 50.0;

pub async fn history(options: &Options) -> anyhow::Result<Value> {
    let tag = suffix();
    let db = format!("bench_hist_{tag}");
    let queues: Vec<String> = (0..CONSUMERS)
        .map(|k| format!("bench_hist_{tag}_{k}"))
        .collect();
    let layout = Layout::new(options.records, &queues)?;
    let mut client_options =
        mongodb::options::ClientOptions::parse(without_retryable_writes(&store_uri()))
            .await
            .context("MONGODB_URI")?;
    // The scenario leaves its connection idle for minutes (index build,
    // reads through the gateway); SecantusDB closes a connection idle for
    // 300 s, and the driver would find that out on the next command.
    client_options.max_idle_time = Some(IDLE_CONNECTION);
    let client = mongodb::Client::with_options(client_options).context("the store's client")?;
    let database = client.database(&db);
    let outcome = seed_and_read(options, &layout, &queues, &database).await;
    // The gateway dropped it on its way out; not if it never started.
    if let Err(e) = database.drop().await {
        eprintln!("bench: cannot drop the database {db}: {e}");
    }
    outcome
}

async fn seed_and_read(
    options: &Options,
    layout: &Layout,
    queues: &[String],
    database: &mongodb::Database,
) -> anyhow::Result<Value> {
    let disk_before = disk_bytes(database, options.store_dir.as_deref()).await?;
    eprintln!("   storing {} attempt records", layout.records);
    let seeded = seed::seed(&database.collection::<StoredAttempt>(COLLECTION), layout).await?;
    let seed_rate = seeded.records as f64 / seeded.took.as_secs_f64().max(1e-9);

    let started = Instant::now();
    let gateway = GatewayProcess::start_with(GatewaySetup {
        env: vec![("ATTEMPT_LOG".into(), "on".into())],
        db: Some(database.name().to_owned()),
        ready_deadline: READY_DEADLINE,
    })
    .await?;
    let outcome = async {
        wait_for_indexes(database, started).await?;
        let index_build = started.elapsed();
        eprintln!(
            "   indexes made {:.1} s after the gateway's start",
            index_build.as_secs_f64()
        );
        for queue in queues {
            gateway
                .post(
                    "/createQueue",
                    &json!({ "queueName": queue, "deadLetter": false }),
                )
                .await?;
        }
        let reads = Reads {
            most: options.reads,
            budget: options.read_budget,
        };
        let attempts_ms = time_attempts(&gateway, layout, &seeded, reads).await?;
        let history_ms = time_history(&gateway, layout, &seeded, reads).await?;
        let sizes = store_sizes(database, seeded.records).await;
        let disk_after = disk_bytes(database, options.store_dir.as_deref()).await?;
        Ok::<_, anyhow::Error>(json!({
            "records": seeded.records,
            "consumers": CONSUMERS,
            "messages": seeded.complete_messages,
            "seed_s": round(seeded.took.as_secs_f64()),
            "seed_records_per_s": round(seed_rate),
            "index_build_s": round(index_build.as_secs_f64()),
            "reads": options.reads,
            "read_budget_s": options.read_budget.as_secs(),
            "attempts_reads": attempts_ms.len(),
            "history_reads": history_ms.len(),
            "attempts_p50_ms": round(percentile(&attempts_ms, 0.50)),
            "attempts_p99_ms": round(percentile(&attempts_ms, 0.99)),
            "attempts_max_ms": round(attempts_ms.last().copied().unwrap_or(0.0)),
            "history_p50_ms": round(percentile(&history_ms, 0.50)),
            "history_p99_ms": round(percentile(&history_ms, 0.99)),
            "history_max_ms": round(history_ms.last().copied().unwrap_or(0.0)),
            "target_p99_ms": TARGET_P99_MS,
            "collstats": sizes,
            "data_bytes_per_record": sizes["data_bytes_per_record"],
            "bytes_per_record_with_indexes": sizes["bytes_per_record_with_indexes"],
            "disk_bytes_per_record": disk_before.zip(disk_after).map(|(before, after)| {
                round(after.saturating_sub(before) as f64 / seeded.records.max(1) as f64)
            }),
        }))
    }
    .await;
    gateway.stop().await;
    outcome
}

/// Until `listIndexes` on `attempts` shows every index the gateway makes.
async fn wait_for_indexes(database: &mongodb::Database, started: Instant) -> anyhow::Result<()> {
    let collection = database.collection::<Document>(COLLECTION);
    let mut next_report = Duration::from_secs(30);
    loop {
        let names = collection.list_index_names().await.unwrap_or_default();
        if INDEXES.iter().all(|i| names.iter().any(|n| n == i)) {
            return Ok(());
        }
        let waited = started.elapsed();
        if waited > INDEX_DEADLINE {
            anyhow::bail!("after {waited:?} the attempt indexes are {names:?}, not {INDEXES:?}");
        }
        if waited >= next_report {
            eprintln!(
                "   {:>7.1} s  waiting for the indexes (so far {names:?})",
                waited.as_secs_f64()
            );
            next_report += Duration::from_secs(30);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `GET path` with the admin's credentials, timed from sending to the
/// whole body read; the body as JSON.
async fn timed_get(gateway: &GatewayProcess, path: &str) -> anyhow::Result<(f64, Value)> {
    let started = Instant::now();
    let response = gateway
        .http
        .get(format!("{}{path}", gateway.base))
        .basic_auth("admin", Some(&gateway.password))
        .send()
        .await
        .with_context(|| path.to_owned())?;
    let status = response.status();
    let body = response.bytes().await.with_context(|| path.to_owned())?;
    let took_ms = started.elapsed().as_secs_f64() * 1000.0;
    if !status.is_success() {
        anyhow::bail!(
            "{path} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let value = serde_json::from_slice(&body).with_context(|| format!("{path}: not JSON"))?;
    Ok((took_ms, value))
}

/// Timed `/getAttempts?consumerId=…&status=5xx`, the consumers in turn;
/// sorted milliseconds. Each page must hold that consumer's 5xx
/// records only, as many as a page takes.
async fn time_attempts(
    gateway: &GatewayProcess,
    layout: &Layout,
    seeded: &Seeded,
    reads: Reads,
) -> anyhow::Result<Vec<f64>> {
    let mut ms = Vec::with_capacity(reads.most);
    let mut timing = None;
    for i in 0.. {
        if !reads.go_on(i, &mut timing) {
            break;
        }
        let owner = i % layout.consumers.len();
        let consumer = layout.consumers[owner].as_str();
        let path = format!("/getAttempts?consumerId={consumer}&status=5xx");
        let (took, page) = timed_get(gateway, &path).await?;
        let attempts = page["attempts"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let expected = seeded.server_errors[owner].min(PAGE);
        let all_match = attempts.iter().all(|a| {
            a["consumerId"] == consumer
                && a["response"]["status"]
                    .as_u64()
                    .is_some_and(|s| (500..600).contains(&s))
        });
        if attempts.len() != expected || !all_match {
            anyhow::bail!(
                "{path}: {} records (expected {expected}), all of that consumer with a 5xx: {all_match}",
                attempts.len()
            );
        }
        if i >= WARM_UP {
            ms.push(took);
        }
        reads.progress("getAttempts", i, took);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok(ms)
}

/// How many requests of a read are timed: `most`, unless `budget` runs
/// out first (after `MIN_TIMED`).
#[derive(Debug, Clone, Copy)]
struct Reads {
    most: usize,
    budget: Duration,
}

impl Reads {
    /// Whether request `i` (from 0, the warm-up first) is made; `timing`
    /// holds when the first timed one started.
    fn go_on(&self, i: usize, timing: &mut Option<Instant>) -> bool {
        if i < WARM_UP {
            return true;
        }
        let since = *timing.get_or_insert_with(Instant::now);
        let timed = i - WARM_UP;
        timed < self.most && (timed < MIN_TIMED || since.elapsed() < self.budget)
    }

    /// On stderr every tenth of the reads (a slow store makes them long).
    fn progress(&self, read: &str, i: usize, took_ms: f64) {
        let done = i + 1;
        let every = (self.most / 10).max(1);
        if done == WARM_UP {
            eprintln!("   {read}: {WARM_UP} untimed, the last {took_ms:.1} ms");
        } else if done > WARM_UP && (done - WARM_UP).is_multiple_of(every) {
            eprintln!(
                "   {read}: {} of at most {} timed, the last {took_ms:.1} ms",
                done - WARM_UP,
                self.most
            );
        }
    }
}

/// Timed `/getMessageHistory/{queue}/{id}` of messages picked at random;
/// sorted milliseconds. Each timeline must hold every attempt
/// stored for that message, and say it was delivered.
async fn time_history(
    gateway: &GatewayProcess,
    layout: &Layout,
    seeded: &Seeded,
    reads: Reads,
) -> anyhow::Result<Vec<f64>> {
    if seeded.complete_messages == 0 {
        anyhow::bail!("no message was stored whole");
    }
    let mut random = SplitMix(0x5eed);
    let mut ms = Vec::with_capacity(reads.most);
    let mut timing = None;
    for i in 0.. {
        if !reads.go_on(i, &mut timing) {
            break;
        }
        let m = random.next() % seeded.complete_messages;
        let queue = layout.queues[layout.owner_of(m)].as_str();
        let path = format!("/getMessageHistory/{queue}/{}", layout.message_id(m));
        let (took, timeline) = timed_get(gateway, &path).await?;
        let attempts = timeline["attempts"].as_array().map_or(0, Vec::len);
        let expected = Layout::attempts_of(m) as usize;
        if attempts != expected || timeline["state"] != "delivered" {
            anyhow::bail!(
                "{path}: {attempts} attempts (expected {expected}), state {}",
                timeline["state"]
            );
        }
        if i >= WARM_UP {
            ms.push(took);
        }
        reads.progress("getMessageHistory", i, took);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok(ms)
}

/// `collStats` on `attempts`: the documents' bytes and the indexes', per
/// record; `{"answered": false, "error": …}` when the store refuses it.
async fn store_sizes(database: &mongodb::Database, records: usize) -> Value {
    let stats = match database.run_command(doc! { "collStats": COLLECTION }).await {
        Ok(stats) => stats,
        Err(e) => return json!({ "answered": false, "error": e.to_string() }),
    };
    let number = |key: &str| match stats.get(key) {
        Some(Bson::Int32(v)) => Some(f64::from(*v)),
        Some(Bson::Int64(v)) => Some(*v as f64),
        Some(Bson::Double(v)) => Some(*v),
        _ => None,
    };
    let count = number("count").unwrap_or(records as f64).max(1.0);
    let size = number("size");
    let indexes = number("totalIndexSize");
    json!({
        "answered": true,
        "count": count,
        "size_bytes": size,
        "total_index_size_bytes": indexes,
        "data_bytes_per_record": size.map(|s| round(s / count)),
        "bytes_per_record_with_indexes": size.zip(indexes).map(|(s, i)| round((s + i) / count)),
    })
}

/// Bytes the store's files take on disk, when its directory is given:
/// after an `fsync` (on SecantusDB, as on mongod, a checkpoint), so the
/// files hold what was written rather than what the last periodic
/// checkpoint caught.
async fn disk_bytes(
    database: &mongodb::Database,
    dir: Option<&str>,
) -> anyhow::Result<Option<u64>> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    if let Err(e) = database
        .client()
        .database("admin")
        .run_command(doc! { "fsync": 1 })
        .await
    {
        eprintln!("bench: the store refused fsync ({e}); the files may lag behind");
    }
    dir_bytes(dir).map(Some)
}

/// Bytes the files under `dir` take on disk (as `du` counts them).
fn dir_bytes(dir: &str) -> anyhow::Result<u64> {
    fn walk(path: &Path) -> std::io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let mut total = 0;
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            total += if meta.is_dir() {
                walk(&entry.path())?
            } else {
                meta.blocks() * 512
            };
        }
        Ok(total)
    }
    walk(Path::new(dir)).with_context(|| format!("cannot measure {dir}"))
}

/// A small fixed-seed generator: the same messages are read every run.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

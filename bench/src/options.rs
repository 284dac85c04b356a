//! The command line: which scenarios to run and how big, as `Options`.

use std::time::Duration;

use anyhow::Context;

#[derive(Debug, Clone)]
pub struct Options {
    pub scenarios: Vec<String>,
    pub messages: usize,
    pub publishes: usize,
    pub duration: Duration,
    pub rate: u64,
    pub consumers: usize,
    pub output: String,
    /// mq-bridge's `mqb`, for its `forward` row: `--mqb PATH` or on `PATH`.
    pub mqb: Option<String>,
    /// `forward-history`: which runs (`--attempt-log both|on|off`).
    pub attempt_log: AttemptLogRuns,
    /// `forward-history`: pairs of runs (on and off, alternating which
    /// goes first), or runs when only one side is asked for.
    pub rounds: usize,
    /// `history`: records stored before the reads.
    pub records: usize,
    /// `history`: requests timed per read, at most.
    pub reads: usize,
    /// `history`: how long each read's timing may take (`--read-budget`).
    pub read_budget: Duration,
    /// `history`: the store's storage directory, for bytes on disk per
    /// record (`--store-dir`); without it only `collStats` is read.
    pub store_dir: Option<String>,
}

/// Which `forward-history` runs: the attempt log on, off, or both
/// alternating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptLogRuns {
    Both,
    On,
    Off,
}

pub fn parse_options() -> anyhow::Result<Options> {
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
        attempt_log: AttemptLogRuns::Both,
        rounds: 2,
        records: 1_000_000,
        reads: 1_000,
        read_budget: Duration::from_secs(300),
        store_dir: None,
    };
    let number = |flag: &str, raw: Option<String>| -> anyhow::Result<u64> {
        raw.and_then(|r| r.parse().ok())
            .with_context(|| format!("{flag} needs a number"))
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
            "--output" => options.output = args.next().context("--output needs a path")?,
            "--mqb" => options.mqb = Some(args.next().context("--mqb needs a path")?),
            "--attempt-log" => {
                options.attempt_log = match args.next().as_deref() {
                    Some("both") => AttemptLogRuns::Both,
                    Some("on") => AttemptLogRuns::On,
                    Some("off") => AttemptLogRuns::Off,
                    _ => anyhow::bail!("--attempt-log needs both, on or off"),
                }
            }
            "--rounds" => options.rounds = (number("--rounds", args.next())? as usize).max(1),
            "--records" => options.records = (number("--records", args.next())? as usize).max(1),
            "--reads" => options.reads = (number("--reads", args.next())? as usize).max(1),
            "--read-budget" => {
                options.read_budget = Duration::from_secs(number("--read-budget", args.next())?)
            }
            "--store-dir" => {
                options.store_dir = Some(args.next().context("--store-dir needs a path")?)
            }
            "--smoke" => {
                options.messages = 300;
                options.publishes = 300;
                options.duration = Duration::from_secs(2);
                options.rate = 200;
                options.consumers = 20;
                options.rounds = 1;
                options.records = 2_000;
                options.reads = 50;
            }
            "all" | "forward" | "forward-batch" | "publish" | "publish-quorum"
            | "publish-batch" | "latency" | "scale" | "fanin" | "slow-target"
            | "forward-history" | "history" | "ordered" | "forward-h2" | "forward-rules" => {
                options.scenarios.push(arg)
            }
            "-h" | "--help" => {
                println!("usage: bench [all|forward|forward-batch|publish|publish-quorum|publish-batch|latency|scale|fanin|slow-target|forward-history|history|ordered|forward-h2|forward-rules]... [--messages N] [--publishes N] [--duration S] [--rate MSG_PER_S] [--consumers N] [--mqb PATH] [--attempt-log both|on|off] [--rounds N] [--records N] [--reads N] [--read-budget S] [--store-dir PATH] [--smoke] [--output PATH]");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument `{other}` (try --help)"),
        }
    }
    if options.scenarios.is_empty() || options.scenarios.iter().any(|s| s == "all") {
        options.scenarios = [
            "forward",
            "forward-batch",
            "publish",
            "publish-quorum",
            "publish-batch",
            "latency",
            "scale",
            "fanin",
            "slow-target",
            "forward-history",
            "history",
            "ordered",
            "forward-h2",
            "forward-rules",
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

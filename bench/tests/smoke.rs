//! Keeps the benchmark compiling and working: every scenario once with a
//! tiny N against the real broker and store. The figures themselves are
//! not judged here (debug build, shared machine); `cargo run --release
//! -p bench` is where they are read.

use std::path::Path;
use std::process::Command;

#[test]
fn every_bench_scenario_runs_and_reports_its_figures() {
    let output_path = std::env::temp_dir().join(format!("bench-smoke-{}.json", std::process::id()));
    let bench = Path::new(env!("CARGO_BIN_EXE_bench"));
    let mut command = Command::new(bench);
    // A workspace test run has built the gateway beside the bench; without
    // it, the bench has cargo build it.
    let gateway = bench.with_file_name("workerrmq");
    if gateway.is_file() && std::env::var_os("WORKERRMQ_BIN").is_none() {
        command.env("WORKERRMQ_BIN", &gateway);
    }
    let output = command
        .args(["all", "--smoke", "--output"])
        .arg(&output_path)
        .output()
        .expect("the bench binary starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("ratio vs batched"),
        "no table printed:\n{stdout}"
    );

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&output_path).expect("bench-results written"))
            .expect("bench-results is JSON");
    let _ = std::fs::remove_file(&output_path);
    let s = &report["scenarios"];
    for (scenario, key) in [
        ("forward", "gateway_msgs_per_s"),
        ("forward", "ceiling_msgs_per_s"),
        ("forward", "ceiling_batched_msgs_per_s"),
        ("forward", "ratio_batched"),
        ("forward", "bridge_msgs_per_s"),
        ("forward-batch", "gateway_msgs_per_s"),
        ("forward-batch", "ratio_batched"),
        ("publish", "gateway_req_per_s_64"),
        ("publish", "raw_msgs_per_s_64"),
        ("publish", "p99_ms_64"),
        ("publish", "p999_ms_256"),
        ("publish-batch", "gateway_msgs_per_s"),
        ("publish-batch", "plain_msgs_per_s"),
        ("publish-batch", "p99_ms"),
        ("fanin", "ratio"),
        ("slow-target", "ratio"),
        ("latency", "p99_ms"),
        ("scale", "create_all_s"),
        ("scale", "rss_after_mib"),
        ("forward-history", "on_msgs_per_s"),
        ("forward-history", "off_msgs_per_s"),
        ("forward-history", "ratio"),
        ("forward-history", "records_per_bulk"),
        ("history", "attempts_p99_ms"),
        ("history", "history_p99_ms"),
        ("history", "data_bytes_per_record"),
        ("forward-rules", "plain_msgs_per_s"),
        ("forward-rules", "rules_msgs_per_s"),
        ("forward-rules", "ratio"),
    ] {
        let value = s[scenario][key].as_f64().unwrap_or(-1.0);
        assert!(value > 0.0, "{scenario}.{key} = {value}");
    }
    assert_eq!(s["publish"]["errors_64"].as_u64(), Some(0));
    assert_eq!(s["publish"]["errors_256"].as_u64(), Some(0));
    assert_eq!(s["publish-batch"]["errors"].as_u64(), Some(0));
    assert_eq!(s["publish-batch"]["missing"].as_u64(), Some(0));
    assert_eq!(s["scale"]["consumers"].as_u64(), Some(20));
    // Every attempt of the "on" run stored, none dropped.
    assert_eq!(s["forward-history"]["written"].as_u64(), Some(300));
    assert_eq!(s["forward-history"]["dropped"].as_u64(), Some(0));
    assert_eq!(s["history"]["records"].as_u64(), Some(2_000));
    assert!(report["machine"]["cores"].as_u64().unwrap_or(0) > 0);
}

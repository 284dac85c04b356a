//! `forward-rules`: `forward`'s gateway run (N pre-loaded 1 KiB persistent
//! JSON messages, one consumer at prefetch 100) twice in one run: without
//! rules, and with a filter that passes every message and a transform that
//! reshapes the body and adds a header (target: ≥ 0.85 × the run without).

use serde_json::{json, Value};

use super::{amqp, gateway_forward, gateway_forward_with, round};
use crate::gateway_process::GatewayProcess;
use crate::options::Options;
use crate::sink::Sink;

/// Passes every bench message, after reading its body.
const FILTER: &str = r#"has(body.pad) && body.pad != """#;
/// A new body from the old one, and a header.
const TRANSFORM: &str = r#"{"body": {"size": size(body.pad), "kind": "bench", "id": messageId}, "headers": {"x-bench": "rules"}}"#;

pub async fn forward_rules(
    options: &Options,
    gateway: &GatewayProcess,
    sink: &Sink,
) -> anyhow::Result<Value> {
    let n = options.messages;
    let connection = amqp().await?;
    let plain = gateway_forward(gateway, &connection, sink, "bench_fwplain", n, json!({})).await?;
    let ruled = gateway_forward_with(
        gateway,
        &connection,
        sink,
        "bench_fwrules",
        n,
        json!({}),
        json!({ "filter": FILTER, "transform": TRANSFORM }),
    )
    .await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(json!({
        "messages": n,
        "plain_msgs_per_s": round(plain),
        "rules_msgs_per_s": round(ruled),
        "ratio": round(ruled / plain),
        "target_ratio": 0.85,
    }))
}

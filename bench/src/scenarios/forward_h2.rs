//! `forward-h2`: `forward`'s gateway run (N pre-loaded 1 KiB persistent
//! messages, one consumer at prefetch 100) twice in one run: to the
//! HTTP/1.1 sink as `forward` does, and with `target.http2: "always"` to a
//! sink that speaks h2c, counting the TCP connections each sink accepted
//! (target: ≥ 1.0 × the HTTP/1.1 run, at most 4 connections over h2c).

use serde_json::{json, Value};

use super::{amqp, gateway_forward, round};
use crate::gateway_process::GatewayProcess;
use crate::options::Options;
use crate::sink::Sink;

pub async fn forward_h2(
    options: &Options,
    gateway: &GatewayProcess,
    sink: &Sink,
) -> anyhow::Result<Value> {
    let n = options.messages;
    let connection = amqp().await?;
    let h2c = Sink::start_h2c().await?;
    let before_h1 = sink.connections();
    let http1 = gateway_forward(
        gateway,
        &connection,
        sink,
        "bench_fwh1",
        n,
        json!({ "http2": "never" }),
    )
    .await?;
    let h1_connections = sink.connections() - before_h1;
    let http2 = gateway_forward(
        gateway,
        &connection,
        &h2c,
        "bench_fwh2",
        n,
        json!({ "http2": "always" }),
    )
    .await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(json!({
        "messages": n,
        "http1_msgs_per_s": round(http1),
        "http1_connections": h1_connections,
        "h2c_msgs_per_s": round(http2),
        "h2c_connections": h2c.connections(),
        "ratio": round(http2 / http1),
        "target_ratio": 1.0,
    }))
}

//! The three-node RabbitMQ cluster of `scripts/rabbitmq-cluster.sh` (nodes
//! `wrmq1..3@localhost`, AMQP 5691–5693, management 15691–15693), for the
//! tests that stop a node. `./run.sh test` starts it once per run; a cluster
//! test that finds it down fails saying how to start it.
//!
//! A stopped node is put back (`start_app`, then waited for until the others
//! see it running again) by the deployment's cleanup plan, so a test that
//! panics mid-way leaves the cluster whole for the next one.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::env::percent_encode;
use super::gateway_process::Deployment;
use super::management::{management_client, management_request_at};

/// How long a restarted node may take to be back in the cluster.
const REJOIN_DEADLINE: Duration = Duration::from_secs(90);

/// One node of the test cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node(u16);

pub const NODES: [Node; 3] = [Node(1), Node(2), Node(3)];

impl Node {
    /// `wrmq<n>@localhost`
    pub fn name(self) -> String {
        format!("wrmq{}@localhost", self.0)
    }

    /// `127.0.0.1:<amqp port>`, as the gateway's `/ready` names its node.
    pub fn address(self) -> String {
        format!("127.0.0.1:{}", 5690 + self.0)
    }

    pub fn amqp_url(self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.address())
    }

    pub fn management_url(self) -> String {
        format!("http://127.0.0.1:{}", 15690 + self.0)
    }

    /// The node whose `address()` is `address`.
    pub fn at(address: &str) -> Option<Node> {
        NODES.into_iter().find(|n| n.address() == address)
    }

    /// The node named `name` (`wrmq2@localhost`).
    pub fn named(name: &str) -> Option<Node> {
        NODES.into_iter().find(|n| n.name() == name)
    }
}

/// `AMQP_URL` for a gateway that may use `nodes`.
pub fn amqp_urls(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| n.amqp_url())
        .collect::<Vec<_>>()
        .join(",")
}

/// `RABBITMQ_MANAGEMENT_URL` for a gateway that may use `nodes`.
pub fn management_urls(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| n.management_url())
        .collect::<Vec<_>>()
        .join(",")
}

/// The gateway variables for the whole cluster.
pub fn gateway_vars(nodes: &[Node]) -> Vec<(&'static str, String)> {
    vec![
        ("AMQP_URL", amqp_urls(nodes)),
        ("RABBITMQ_MANAGEMENT_URL", management_urls(&NODES)),
    ]
}

/// Fails the test unless all three nodes answer and run clustered.
pub async fn require_cluster() -> Deployment {
    let running = running_nodes().await;
    assert!(
        NODES.iter().all(|n| running.contains(&n.name())),
        "the three-node RabbitMQ test cluster is not reachable (running nodes seen: {running:?}); \
         start it with `scripts/rabbitmq-cluster.sh start` (./run.sh test does it for you)"
    );
    Deployment::on_broker(&NODES[0].amqp_url(), &NODES[0].management_url())
}

/// The names of the running cluster nodes, as any answering node sees them
/// (empty when none answers).
pub async fn running_nodes() -> Vec<String> {
    match management_get_any("/api/nodes?columns=name,running").await {
        Some(Value::Array(rows)) => rows
            .iter()
            .filter(|r| r["running"] == true)
            .filter_map(|r| r["name"].as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// GET `path` from the first node whose management API answers 2xx.
pub async fn management_get_any(path: &str) -> Option<Value> {
    let http = management_client();
    for node in NODES {
        let sent = management_request_at(&http, &node.management_url(), reqwest::Method::GET, path)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Ok(response) = sent {
            if response.status().is_success() {
                if let Ok(body) = response.json().await {
                    return Some(body);
                }
            }
        }
    }
    None
}

/// The management API's view of `queue`, `None` while no node answers or
/// there is no such queue.
pub async fn queue_info(queue: &str) -> Option<Value> {
    let path = format!("/api/queues/%2f/{}", percent_encode(queue));
    management_get_any(&path).await
}

/// Polls the management API until `check` accepts `queue`'s view.
pub async fn wait_for_queue_info(
    queue: &str,
    deadline: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let info = queue_info(queue).await;
        if let Some(info) = &info {
            if check(info) {
                return info.clone();
            }
        }
        assert!(
            started.elapsed() < deadline,
            "queue `{queue}`: not {what} within {deadline:?}; last view: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The node holding `queue`'s leader (quorum) or the queue (classic).
pub async fn leader_of(queue: &str) -> Node {
    let info = wait_for_queue_info(queue, Duration::from_secs(10), "listed", |_| true).await;
    let name = info["leader"]
        .as_str()
        .or_else(|| info["node"].as_str())
        .unwrap_or_else(|| panic!("queue `{queue}` names no leader: {info}"));
    Node::named(name).unwrap_or_else(|| panic!("`{name}` is not a test cluster node"))
}

fn rabbitmqctl(node: Node, args: &[&str]) -> Result<String, String> {
    let output = Command::new("rabbitmqctl")
        .args(["-q", "-n", &node.name()])
        .args(args)
        .output()
        .map_err(|e| format!("rabbitmqctl does not run: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "rabbitmqctl -n {} {}: {}",
            node.name(),
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Stops `node`'s RabbitMQ application (its Erlang VM stays up, so it can
/// come back), as an operator's `rabbitmqctl stop_app` would, and registers
/// its restoration on `deployment`'s cleanup plan first, so it comes back
/// even when the test panics. Returns once the node has stopped.
pub async fn stop_node(deployment: &Deployment, node: Node) {
    deployment.restore_on_cleanup(move || restore_node(node));
    tokio::task::spawn_blocking(move || rabbitmqctl(node, &["stop_app"]))
        .await
        .expect("rabbitmqctl stop_app runs")
        .unwrap_or_else(|e| panic!("cannot stop {}: {e}", node.name()));
}

/// Starts `node`'s application again and waits until it runs in the
/// cluster again (blocking: the cleanup plan runs it on a blocking thread).
pub fn restore_node(node: Node) -> Result<(), String> {
    rabbitmqctl(node, &["start_app"])?;
    let started = Instant::now();
    loop {
        let members = rabbitmqctl(NODES[0], &["cluster_status", "--formatter", "json"])
            .ok()
            .and_then(|out| serde_json::from_str::<Value>(&out).ok());
        let running = members
            .as_ref()
            .and_then(|m| m["running_nodes"].as_array())
            .is_some_and(|nodes| nodes.iter().any(|n| n == &Value::from(node.name())));
        if running {
            return Ok(());
        }
        if started.elapsed() > REJOIN_DEADLINE {
            return Err(format!(
                "{} did not rejoin the cluster within {REJOIN_DEADLINE:?}",
                node.name()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `node` runs in the cluster again, as the cluster sees it.
pub async fn wait_until_rejoined(node: Node, deadline: Duration) {
    let started = Instant::now();
    loop {
        let running = running_nodes().await;
        if running.contains(&node.name()) {
            return;
        }
        assert!(
            started.elapsed() < deadline,
            "{} not back in the cluster within {deadline:?}; running: {running:?}",
            node.name()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

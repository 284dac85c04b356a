//! The fleet in one answer: `/getReplicas` lists the live replicas from
//! their heartbeats, and a consumer's counters are summed over them with
//! each replica's share in `stats.replicas`; a replica killed with SIGKILL
//! drops out of both. The summing itself is unit-tested in
//! `services::fleet`.
//!
//! The two-replica test runs on the three-node test cluster, so it shares
//! the `rabbitmq-cluster` nextest group (never beside a test that stops a
//! node).

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::cluster::{gateway_vars, require_cluster, Node, NODES};
use crate::support::ids_of;
use crate::support::target_server::TargetServer;
use crate::support::{assert_error, assert_json, bearer, eventually, spawn_app};
use crate::support::{binary_messages, mongodb_uri, publish_confirmed, Api};

const MESSAGES: usize = 1_000;
const ALL_DELIVERED: Duration = Duration::from_secs(60);
/// The contract: every replica shows the fleet's sums within 5 s.
const SUMMED_WITHIN: Duration = Duration::from_secs(5);
/// The contract: a replica killed with SIGKILL is dropped within 15 s.
const DROPPED_WITHIN: Duration = Duration::from_secs(15);

/// GET /getReplicas; asserts 200 and a plain array.
async fn replicas(api: &Api) -> Vec<Value> {
    let body = assert_json(api.get("/getReplicas").await, StatusCode::OK).await;
    body.as_array()
        .unwrap_or_else(|| panic!("not a list: {body}"))
        .clone()
}

fn instance_ids(rows: &[Value]) -> Vec<&str> {
    rows.iter()
        .map(|r| r["instanceId"].as_str().unwrap_or("?"))
        .collect()
}

fn is_rfc3339(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok())
}

/// `Ok` once the view's counters are the fleet's: `acked` = all messages,
/// nothing in flight, and one share per replica in `expected`, the shares
/// adding up to the totals.
fn summed_over(view: &Value, expected: &[&str]) -> Result<(), String> {
    let stats = &view["stats"];
    let shares = stats["replicas"].as_array().cloned().unwrap_or_default();
    if instance_ids(&shares) != expected {
        return Err(format!("shares of {:?}: {stats}", instance_ids(&shares)));
    }
    if stats["acked"] != MESSAGES || stats["inFlight"] != 0 {
        return Err(format!("not all acked yet: {stats}"));
    }
    for field in ["delivered", "acked", "retried", "deadLettered", "inFlight"] {
        let sum: u64 = shares.iter().filter_map(|s| s[field].as_u64()).sum();
        if Some(sum) != stats[field].as_u64() {
            return Err(format!("the shares' {field} add up to {sum}: {stats}"));
        }
    }
    if shares.iter().any(|s| s["state"] != "running") {
        return Err(format!("a share is not running: {stats}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_replicas_show_the_fleets_sums_and_a_killed_one_drops_out() {
    let deployment = require_cluster().await;
    let vars = gateway_vars(&NODES);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = deployment
        .start_gateway_with(&deployment.instance_id("a"), &vars, None)
        .await;
    let mut b = deployment
        .start_gateway_with(&deployment.instance_id("b"), &vars, None)
        .await;
    let both = [a.instance_id.as_str(), b.instance_id.as_str()];
    let target = TargetServer::start().await;
    let queue = deployment.queue("fleet");
    let consumer = deployment
        .consumer_on_both(&a, &b, &queue, &target.url("/fleet"), json!({}))
        .await;

    let messages = binary_messages("fleet", MESSAGES);
    publish_confirmed(deployment.amqp().await, &queue, &messages).await;
    target
        .wait_for_delivered(&ids_of(&messages), ALL_DELIVERED)
        .await;
    let delivered_at = Instant::now();
    for gateway in [&a, &b] {
        let api = &gateway.api;
        let deadline = SUMMED_WITHIN.saturating_sub(delivered_at.elapsed());
        eventually(deadline, || async {
            summed_over(&api.consumer(&consumer).await, &both)
        })
        .await;
        // The list says the same.
        let listed = assert_json(api.get("/getConsumers").await, StatusCode::OK).await;
        let row = listed
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["consumerId"] == consumer.as_str())
            .unwrap_or_else(|| panic!("{consumer} not listed: {listed}"));
        summed_over(row, &both).unwrap_or_else(|e| panic!("/getConsumers: {e}"));
    }
    eprintln!(
        "both replicas showed the fleet's sums {:?} after the last delivery",
        delivered_at.elapsed()
    );

    let rows = replicas(&b.api).await;
    assert_eq!(instance_ids(&rows), both, "{rows:?}");
    let mut acked = 0;
    for row in &rows {
        assert_eq!(row["version"], env!("CARGO_PKG_VERSION"), "{row}");
        assert!(
            row["brokerNode"].as_str().and_then(Node::at).is_some(),
            "a cluster node: {row}"
        );
        assert_eq!(row["consumers"], 1, "{row}");
        assert!(is_rfc3339(&row["startedAt"]), "{row}");
        assert!(is_rfc3339(&row["lastSeenAt"]), "{row}");
        assert_eq!(
            row["thisReplica"],
            row["instanceId"] == b.instance_id.as_str(),
            "{row}"
        );
        acked += row["totals"]["acked"].as_u64().unwrap_or(0);
    }
    assert_eq!(acked, MESSAGES as u64, "{rows:?}");

    b.kill();
    let killed_at = Instant::now();
    eventually(DROPPED_WITHIN, || async {
        let rows = replicas(&a.api).await;
        if instance_ids(&rows) == [a.instance_id.as_str()] {
            Ok(())
        } else {
            Err(format!("still listed: {rows:?}"))
        }
    })
    .await;
    let dropped_after = killed_at.elapsed();
    // Its share leaves the consumer's sums with it.
    let view = a.api.consumer(&consumer).await;
    let shares = view["stats"]["replicas"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(instance_ids(&shares), [a.instance_id.as_str()], "{view}");
    assert_eq!(view["stats"]["acked"], shares[0]["acked"], "{view}");
    eprintln!("killed replica dropped from /getReplicas after {dropped_after:?}");

    drop(a);
    target.stop().await;
}

#[tokio::test]
async fn get_replicas_needs_credentials_and_a_viewer_may_read_it() {
    let app = spawn_app().await;
    assert_error(
        app.request_anonymous(reqwest::Method::GET, "/getReplicas", None)
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;

    let viewer = bearer(&app.create_api_key("viewer").await);
    let rows = eventually(SUMMED_WITHIN, || async {
        let body = assert_json(
            app.get_with_auth("/getReplicas", &viewer).await,
            StatusCode::OK,
        )
        .await;
        let rows = body.as_array().cloned().unwrap_or_default();
        if instance_ids(&rows) == [app.instance_id.as_str()] {
            Ok(rows)
        } else {
            Err(format!("not just this replica: {body}"))
        }
    })
    .await;
    assert_eq!(rows[0]["thisReplica"], true, "{rows:?}");
    assert_eq!(rows[0]["consumers"], 0, "{rows:?}");
    assert_eq!(rows[0]["totals"]["acked"], 0, "{rows:?}");
}

/// This replica's heartbeat record, read from the store itself.
async fn heartbeat_record(db_name: &str, instance_id: &str) -> Option<Document> {
    let client = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .expect("a MongoDB client");
    client
        .database(db_name)
        .collection::<Document>("replicas")
        .find_one(doc! { "_id": instance_id })
        .await
        .expect("the store answers")
}

#[tokio::test]
async fn a_beat_carries_only_the_consumers_that_are_not_idle() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let queue = app.unique_queue("sparse");
    let consumer = api
        .queue_with_consumer(&queue, "http://127.0.0.1:9/never", json!({}))
        .await;
    api.wait_for_consumer(&consumer, SUMMED_WITHIN, "running", |v| {
        v["state"] == "running"
    })
    .await;
    let listed = |record: &Document| {
        record
            .get_document("consumers")
            .ok()
            .and_then(|c| c.get_document(&consumer).ok())
            .and_then(|c| c.get_str("state").ok())
            .map(str::to_owned)
    };
    // Running with nothing counted: counted among its consumers, left out
    // of the list.
    eventually(SUMMED_WITHIN, || async {
        let record = heartbeat_record(&app.db_name, &app.instance_id)
            .await
            .ok_or("no record yet")?;
        match (record.get_i64("consumerCount"), listed(&record)) {
            (Ok(1), None) => Ok(()),
            _ => Err(format!("not an idle consumer's beat: {record}")),
        }
    })
    .await;

    api.pause(&consumer).await;
    eventually(SUMMED_WITHIN, || async {
        let record = heartbeat_record(&app.db_name, &app.instance_id)
            .await
            .ok_or("no record")?;
        match listed(&record).as_deref() {
            Some("paused") => Ok(()),
            _ => Err(format!("the pause is not in the beat: {record}")),
        }
    })
    .await;
    let view = api.consumer(&consumer).await;
    assert_eq!(view["stats"]["replicas"][0]["state"], "paused", "{view}");
}

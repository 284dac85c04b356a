use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{assert_json, eventually, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_lists_its_own_broker_connection() {
    let instance_id = format!("conn-{}", uuid::Uuid::new_v4().simple());
    let app = spawn_app_with(&[("INSTANCE_ID", &instance_id)]).await;
    let own_name = format!("workerrmq-{instance_id}-publish");

    // The management API learns about new connections with a delay.
    let row = eventually(Duration::from_secs(20), || async {
        let rows = assert_json(app.get("/getConnections").await, StatusCode::OK).await;
        rows.as_array()
            .expect("a list")
            .iter()
            .find(|row| row["clientName"] == own_name.as_str())
            .cloned()
            .ok_or_else(|| format!("no connection named {own_name} in {rows}"))
    })
    .await;

    for field in [
        "connectionId",
        "user",
        "peerHost",
        "peerPort",
        "state",
        "channels",
        "connectedAt",
        "clientName",
    ] {
        assert!(row.get(field).is_some(), "`{field}` missing from {row}");
    }
    assert!(
        row["connectionId"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{row}"
    );
    assert_eq!(row["user"], "guest", "{row}");
    assert!(matches!(row["channels"], Value::Number(_)), "{row}");
}

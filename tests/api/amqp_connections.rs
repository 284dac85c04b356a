//! The gateway's AMQP connections: publish and consume apart, copies that
//! must fit a frame and must not carry a foreign `user_id`.
use std::time::{Duration, Instant};

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection};
use reqwest::StatusCode;
use serde_json::{json, Value};

use gateway::headers;

use crate::support::amqp_proxy::AmqpProxy;
use crate::support::cleanup::delete_in_management;
use crate::support::target_server::{Reply, TargetServer};
use crate::support::{
    amqp_url, amqp_urls, connection_named, force_close_connection, management_client,
    management_put, percent_encode, publish_with_properties, wait_for_queue, Api,
};
use crate::support::{
    assert_error, assert_json, connection_properties, eventually, spawn_app, TestApp,
};

/// The management API refreshes its connection list every ~5 s.
const LISTED: Duration = Duration::from_secs(20);
const SETTLED: Duration = Duration::from_secs(20);

/// The `/getConnections` row whose `clientName` is `name`, once listed
/// with its state: the management API lists a new connection before its
/// first statistics, and until then its `state` is null.
async fn listed_connection(app: &TestApp, name: &str) -> Value {
    eventually(LISTED, || async {
        let rows = assert_json(app.get("/getConnections").await, StatusCode::OK).await;
        rows.as_array()
            .expect("a list")
            .iter()
            .find(|row| row["clientName"] == name && !row["state"].is_null())
            .cloned()
            .ok_or_else(|| format!("no connection named {name} with a state in {rows}"))
    })
    .await
}

/// The broker's name of the open connection `client_name` (other than
/// `not`), once the management API shows it.
async fn broker_connection(client_name: &str, not: Option<&str>) -> String {
    let management = management_client();
    eventually(LISTED, || async {
        match connection_named(&management, client_name).await {
            Some(name) if Some(name.as_str()) != not => Ok(name),
            other => Err(format!("no connection named {client_name}: {other:?}")),
        }
    })
    .await
}

/// A queue with an HTTP consumer at `path` of `target`, running.
async fn consumer_on(
    app: &TestApp,
    target: &TargetServer,
    label: &str,
    path: &str,
) -> (Api, String, String) {
    let api = Api::of(app);
    let queue = app.unique_queue(label);
    let consumer = api
        .queue_with_consumer(&queue, &target.url(path), json!({ "prefetch": 5 }))
        .await;
    api.wait_for_consumer(&consumer, SETTLED, "running", |v| v["state"] == "running")
        .await;
    (api, queue, consumer)
}

/// Publishes one message with these properties; asserts the broker
/// confirmed it.
async fn publish_raw(
    connection: &Connection,
    queue: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    publish_with_properties(connection, queue, vec![(body, properties)]).await;
}

/// POSTs `/messagePublish` of `message` to `queue` until it answers 202;
/// returns the message id.
async fn publish_once_accepted(app: &TestApp, queue: &str, message: Value) -> String {
    eventually(SETTLED, || async {
        let response = app
            .post_json(
                "/messagePublish",
                &json!({ "queueName": queue, "message": message }),
            )
            .await;
        match response.status() {
            StatusCode::ACCEPTED => Ok(response.json::<Value>().await.expect("JSON")["messageId"]
                .as_str()
                .expect("a messageId")
                .to_owned()),
            other => Err(format!("publish answered {other}")),
        }
    })
    .await
}

/// Waits until the target has seen every one of `ids`.
async fn wait_until_seen(target: &TargetServer, ids: &[String]) {
    eventually(SETTLED, || async {
        let seen = target.ids_seen();
        let missing: Vec<&String> = ids.iter().filter(|id| !seen.contains(*id)).collect();
        missing
            .is_empty()
            .then_some(())
            .ok_or(format!("not delivered yet: {missing:?}"))
    })
    .await;
}

/// Waits until `<queue>.dlq` holds one message, and takes it.
async fn the_one_dead_letter(app: &TestApp, queue: &str) -> lapin::message::BasicGetMessage {
    let dlq = format!("{queue}.dlq");
    wait_for_queue(
        app.amqp_connection().await,
        &dlq,
        SETTLED,
        "holding the dead letter",
        |m, _| m == 1,
    )
    .await;
    app.get_message(&dlq).await.expect("the dead letter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_and_consuming_have_their_own_named_connections() {
    let app = spawn_app().await;
    let publish = listed_connection(&app, &app.publish_connection_name()).await;
    let consume = listed_connection(&app, &app.consume_connection_name()).await;
    assert_ne!(
        publish["connectionId"], consume["connectionId"],
        "{publish} {consume}"
    );
    for row in [&publish, &consume] {
        assert_eq!(row["user"], "guest", "{row}");
        assert_eq!(row["state"], "running", "{row}");
    }
    // Nothing else under the old single name.
    let rows = assert_json(app.get("/getConnections").await, StatusCode::OK).await;
    let old_name = format!("workerrmq-{}", app.instance_id);
    assert!(
        !rows
            .as_array()
            .expect("a list")
            .iter()
            .any(|row| row["clientName"] == old_name.as_str()),
        "{rows}"
    );
}

/// A broker user of the test's own, removed on drop.
struct BrokerUser {
    name: String,
    password: String,
}

impl BrokerUser {
    async fn create() -> BrokerUser {
        let http = management_client();
        let name = format!(
            "workerrmq-test-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let password = uuid::Uuid::new_v4().simple().to_string();
        management_put(
            &http,
            &format!("/api/users/{}", percent_encode(&name)),
            &json!({ "password": password, "tags": "" }),
        )
        .await;
        let vhost: lapin::uri::AMQPUri = amqp_url().parse().expect("a valid AMQP_URL");
        management_put(
            &http,
            &format!(
                "/api/permissions/{}/{}",
                percent_encode(&vhost.vhost),
                percent_encode(&name)
            ),
            &json!({ "configure": ".*", "write": ".*", "read": ".*" }),
        )
        .await;
        BrokerUser { name, password }
    }

    async fn connect(&self) -> Connection {
        let base: lapin::uri::AMQPUri = amqp_url().parse().expect("a valid AMQP_URL");
        let url = format!(
            "amqp://{}:{}@{}:{}/{}",
            percent_encode(&self.name),
            self.password,
            base.authority.host,
            base.authority.port,
            percent_encode(&base.vhost)
        );
        Connection::connect(&url, connection_properties())
            .await
            .expect("the test user connects")
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        delete_in_management(format!("/api/users/{}", percent_encode(&self.name)));
    }
}

/// The broker accepts a `user_id` only from a connection of that user. A
/// message another user published with its own `user_id` is dead-lettered
/// by the gateway (connected as guest): on today's main the copy kept the
/// `user_id`, the broker refused it, and the message was handed back for
/// ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_by_another_broker_user_is_dead_lettered_without_its_user_id() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    target.script("/refuse", vec![], Reply::status(400));
    let (api, queue, consumer) = consumer_on(&app, &target, "foreign", "/refuse").await;

    let user = BrokerUser::create().await;
    let connection = user.connect().await;
    let properties = BasicProperties::default()
        .with_message_id("foreign-1".into())
        .with_user_id(user.name.clone().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    publish_raw(&connection, &queue, br#"{"from":"elsewhere"}"#, properties).await;
    let _ = connection.close(200, "published".into()).await;

    let letter = the_one_dead_letter(&app, &queue).await;
    let properties = &letter.delivery.properties;
    assert_eq!(properties.user_id(), &None, "the copy carries no user_id");
    assert_eq!(
        properties.message_id().as_ref().map(|s| s.as_str()),
        Some("foreign-1")
    );
    assert_eq!(letter.delivery.data, br#"{"from":"elsewhere"}"#);
    assert!(headers::text(properties, "x-workerrmq-last-error").is_some_and(|e| e.contains("400")));
    let view = api.consumer(&consumer).await;
    assert_eq!(view["stats"]["deadLettered"], 1, "{view}");
    assert_eq!(
        target.requests_to("/refuse").len(),
        1,
        "delivered once, not handed back"
    );
    assert_eq!(app.message_count(&queue).await, Some(0));

    drop(user);
    target.stop().await;
}

/// Room left in the original's header frame: enough for one short reason
/// header, not for the gateway's full bookkeeping (attempt, last error,
/// time, queue: about 220 bytes here).
const ROOM_FOR_A_SHORT_REASON: usize = 160;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_copy_that_would_not_fit_a_frame_is_trimmed_and_no_connection_breaks() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    target.script("/refuse", vec![], Reply::status(400));
    let (api, queue, consumer) = consumer_on(&app, &target, "frame", "/refuse").await;
    let publish_before = broker_connection(&app.publish_connection_name(), None).await;
    let consume_before = broker_connection(&app.consume_connection_name(), None).await;

    // An original whose properties fill the frame but for a little room.
    let connection = app.amqp_connection().await;
    let frame_max = connection.configuration().frame_max() as usize;
    let with_header = |len: usize| {
        let mut table = FieldTable::default();
        table.insert(
            "big".into(),
            AMQPValue::LongString(LongString::from(vec![b'x'; len])),
        );
        table.insert(
            "kept".into(),
            AMQPValue::LongString(LongString::from(b"yes".to_vec())),
        );
        BasicProperties::default()
            .with_message_id("frame-1".into())
            .with_content_type("application/octet-stream".into())
            .with_delivery_mode(2)
            .with_headers(table)
    };
    let overhead = gateway::message_size::header_frame_size(&with_header(0));
    let properties = with_header(frame_max - ROOM_FOR_A_SHORT_REASON - overhead);
    assert_eq!(
        gateway::message_size::header_frame_size(&properties),
        frame_max - ROOM_FOR_A_SHORT_REASON
    );
    publish_raw(
        connection,
        &queue,
        b"payload kept byte for byte",
        properties,
    )
    .await;

    let letter = the_one_dead_letter(&app, &queue).await;
    let properties = &letter.delivery.properties;
    assert_eq!(letter.delivery.data, b"payload kept byte for byte");
    assert_eq!(
        properties.message_id().as_ref().map(|s| s.as_str()),
        Some("frame-1")
    );
    let names = headers::names(properties);
    let ours: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("x-workerrmq-"))
        .collect();
    assert_eq!(
        ours,
        ["x-workerrmq-last-error"],
        "one short reason header: {names:?}"
    );
    let reason = headers::text(properties, "x-workerrmq-last-error").expect("the reason");
    assert!(
        reason.len() <= 200 && reason.contains("400") && reason.contains("frame"),
        "{reason}"
    );
    assert_eq!(headers::text(properties, "kept").as_deref(), Some("yes"));
    assert_eq!(
        headers::text(properties, "big").map(|b| b.len()),
        Some(frame_max - ROOM_FOR_A_SHORT_REASON - overhead)
    );

    // Settled once: no hand-back loop, nothing left behind, and neither of
    // the gateway's connections was closed on the way.
    let view = api.consumer(&consumer).await;
    assert_eq!(view["stats"]["deadLettered"], 1, "{view}");
    assert_eq!(view["state"], "running", "{view}");
    assert_eq!(target.requests_to("/refuse").len(), 1);
    assert_eq!(app.message_count(&queue).await, Some(0));
    assert_eq!(
        broker_connection(&app.publish_connection_name(), None).await,
        publish_before
    );
    assert_eq!(
        broker_connection(&app.consume_connection_name(), None).await,
        consume_before
    );
    let second = app.publish(&queue, json!({ "after": "the big one" })).await;
    wait_until_seen(&target, &[second]).await;

    target.stop().await;
}

/// RabbitMQ blocks a publishing connection under a memory or disk alarm;
/// a proxy plays that part for the gateway's publish connection only, so
/// the shared broker stays untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_publish_connection_answers_503_at_once_while_consumers_keep_draining() {
    let (proxy, app) = AmqpProxy::before_publish_connection("test-blocked").await;
    let target = TargetServer::start().await;
    let (api, queue, consumer) = consumer_on(&app, &target, "blocked", "/ok").await;
    app.publish(&queue, json!({ "before": "the alarm" })).await;

    proxy.block("low on memory (test)");
    // The block reaches the client with the next frame: poll, not sleep.
    let started = eventually(Duration::from_secs(5), || async {
        let started = Instant::now();
        let response = app
            .post_json(
                "/messagePublish",
                &json!({ "queueName": queue, "message": { "during": "the alarm" } }),
            )
            .await;
        match response.status() {
            StatusCode::SERVICE_UNAVAILABLE => Ok((started, response)),
            other => Err(format!("publish answered {other}")),
        }
    })
    .await;
    let (asked_at, response) = started;
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "broker_unavailable",
    )
    .await;
    assert!(
        asked_at.elapsed() < Duration::from_secs(2),
        "answered at once: {:?}",
        asked_at.elapsed()
    );

    // Meanwhile consumers drain what others publish, on their own connection.
    let ids: Vec<String> = (0..20).map(|i| format!("during-alarm-{i}")).collect();
    for id in &ids {
        publish_raw(
            app.amqp_connection().await,
            &queue,
            b"{}",
            BasicProperties::default()
                .with_message_id(id.clone().into())
                .with_delivery_mode(2),
        )
        .await;
    }
    wait_until_seen(&target, &ids).await;
    wait_for_queue(
        app.amqp_connection().await,
        &queue,
        SETTLED,
        "drained and acked",
        |m, c| m == 0 && c == 1,
    )
    .await;
    let view = api.consumer(&consumer).await;
    assert_eq!(view["state"], "running", "{view}");

    proxy.unblock();
    let after = publish_once_accepted(&app, &queue, json!({ "after": "the alarm" })).await;
    wait_until_seen(&target, &[after]).await;

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_closed_publish_connection_is_reopened_without_touching_the_consumers() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    let (_api, queue, _consumer) = consumer_on(&app, &target, "pubclose", "/ok").await;
    let publish_before = broker_connection(&app.publish_connection_name(), None).await;
    let consume_before = broker_connection(&app.consume_connection_name(), None).await;

    force_close_connection(&management_client(), &publish_before).await;
    let publish_after =
        broker_connection(&app.publish_connection_name(), Some(&publish_before)).await;
    assert_ne!(publish_after, publish_before);

    // Publishing works again, and the consumer, on the same connection as
    // before, delivers what was published.
    let id = publish_once_accepted(&app, &queue, json!({ "n": 1 })).await;
    wait_until_seen(&target, &[id]).await;
    assert_eq!(
        broker_connection(&app.consume_connection_name(), None).await,
        consume_before
    );
    let ready = app.get("/ready").await;
    assert_eq!(ready.status(), StatusCode::OK);

    target.stop().await;
}

/// Past its share of consumer channels, a consume connection gets a
/// sibling (`-consume-2`, …); places given back are reused. The gateway's
/// own `Broker` against the real broker, with a share of 2 instead of
/// 1,000 so three consumers are enough to see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_past_a_connections_share_get_another_consume_connection() {
    let base = format!(
        "workerrmq-test-pool-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let broker = gateway::Broker::start(
        gateway::BrokerSettings {
            consumer_channels_per_connection: 2,
            ..gateway::BrokerSettings::new(
                gateway::AmqpUrls::parse(&amqp_urls()).expect("AMQP_URL is a valid list"),
                base.clone(),
            )
        },
        Duration::from_secs(5),
        shutdown.clone(),
    )
    .await;
    assert!(broker.is_up());
    let leases: Vec<gateway::ConsumerLease> = (0..3).map(|_| broker.consumer_lease()).collect();
    let mut channels = Vec::new();
    for lease in &leases {
        channels.push(
            eventually(Duration::from_secs(10), || async {
                lease.channel().await.map_err(|e| e.to_string())
            })
            .await,
        );
    }
    let first = broker_connection(&format!("{base}-consume"), None).await;
    let second = broker_connection(&format!("{base}-consume-2"), None).await;
    assert_ne!(first, second);
    let management = management_client();
    let channels_on = |name: String| {
        let management = management.clone();
        async move {
            let rows = crate::support::management_get(
                &management,
                "/api/connections?columns=name,channels",
            )
            .await;
            rows.as_array()
                .expect("a list")
                .iter()
                .find(|row| row["name"] == name.as_str())
                .and_then(|row| row["channels"].as_u64())
        }
    };
    eventually(LISTED, || async {
        match (
            channels_on(first.clone()).await,
            channels_on(second.clone()).await,
        ) {
            (Some(2), Some(1)) => Ok(()),
            other => Err(format!("channels on -consume, -consume-2: {other:?}")),
        }
    })
    .await;
    assert!(
        connection_named(&management, &format!("{base}-consume-3"))
            .await
            .is_none(),
        "no third connection for three consumers"
    );

    // Places given back can be taken again (which one: unit-tested).
    drop(leases);
    let again = broker.consumer_lease();
    let channel = again.channel().await.expect("a channel");
    assert!(broker.is_up());
    for open in channels.into_iter().chain([channel]) {
        let _ = open.close(200, "test done".into()).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), broker.stopped())
        .await
        .expect("every connection closes");
}

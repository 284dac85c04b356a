//! Trace context: `/messagePublish` takes a W3C `traceparent` (or starts a
//! trace), the message carries it in its `traceparent` AMQP header through
//! retries, dead-lettering and replay, and every call to the target is a
//! span of that trace with a span id of its own.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::target_server::{Recorded, Reply, TargetServer};
use crate::support::{
    assert_error, assert_json, eventually, publish_with_properties, running_consumer_on, spawn_app,
    Api, TestApp,
};

const DEADLINE: Duration = Duration::from_secs(30);

/// A `traceparent` as a test reads it, checked field by field against the
/// W3C format independently of the gateway's parser.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Context {
    trace_id: String,
    span_id: String,
    flags: String,
}

impl Context {
    /// A fresh, valid context of the test's own.
    fn random() -> Context {
        let hex = |n: usize| -> String {
            (0..n)
                .map(|_| format!("{:x}", rand::random::<u8>() % 16))
                .collect()
        };
        // A leading 1 keeps the ids from being all zeros.
        Context {
            trace_id: format!("1{}", hex(31)),
            span_id: format!("1{}", hex(15)),
            flags: "01".into(),
        }
    }

    fn header(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }

    fn read(value: &str) -> Context {
        let parts: Vec<&str> = value.split('-').collect();
        let lower_hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        assert!(
            parts.len() == 4
                && parts[0] == "00"
                && lower_hex(parts[1], 32)
                && lower_hex(parts[2], 16)
                && lower_hex(parts[3], 2),
            "not a version-00 traceparent: {value:?}"
        );
        assert_ne!(parts[1], "0".repeat(32), "an all-zero trace id");
        assert_ne!(parts[2], "0".repeat(16), "an all-zero span id");
        Context {
            trace_id: parts[1].into(),
            span_id: parts[2].into(),
            flags: parts[3].into(),
        }
    }

    /// The context a target request carried; fails when it carried none.
    fn of(request: &Recorded) -> Context {
        Context::read(
            request
                .header("traceparent")
                .unwrap_or_else(|| panic!("a request without traceparent: {request:?}")),
        )
    }
}

/// POST /messagePublish as admin with these `traceparent` values (none,
/// one, or several).
async fn publish_traced(app: &TestApp, body: &Value, traceparents: &[&str]) -> reqwest::Response {
    let mut request = app
        .http
        .post(app.url("/messagePublish"))
        .header(AUTHORIZATION, app.admin_auth())
        .json(body);
    for value in traceparents {
        request = request.header("traceparent", *value);
    }
    request.send().await.expect("the request is sent")
}

/// Publishes `message` to `queue` with `traceparent`; asserts 202, returns
/// the message id.
async fn publish_with_trace(app: &TestApp, queue: &str, traceparent: &str) -> String {
    let body = assert_json(
        publish_traced(
            app,
            &json!({ "queueName": queue, "message": { "traced": true } }),
            &[traceparent],
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    body["messageId"]
        .as_str()
        .unwrap_or_else(|| panic!("no messageId in {body}"))
        .to_owned()
}

fn requests_for(target: &TargetServer, path: &str, id: &str) -> Vec<Recorded> {
    target
        .requests_to(path)
        .into_iter()
        .filter(|r| r.header("webhook-id") == Some(id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishers_traceparent_travels_in_the_message_and_reaches_the_target_as_a_child_span() {
    let app = spawn_app().await;

    // In the queue: the message carries the context in its AMQP headers.
    let queue = app.unique_queue("trace_header");
    app.create_queue(&queue, json!({})).await;
    let published = Context::random();
    publish_with_trace(&app, &queue, &published.header()).await;
    let message = app
        .get_message(&queue)
        .await
        .expect("the published message is in the queue");
    let carried = message.properties.headers().as_ref().and_then(|t| {
        t.inner()
            .iter()
            .find(|(name, _)| name.as_str() == "traceparent")
            .map(|(_, value)| value.clone())
    });
    assert!(
        matches!(&carried, Some(AMQPValue::LongString(s)) if s.as_bytes() == published.header().as_bytes()),
        "the message's traceparent header: {carried:?}"
    );

    // At the target: the same trace, a span of its own under the message's.
    let target = TargetServer::start().await;
    let (_api, consumed, _consumer) =
        running_consumer_on(&app, &target, "trace_target", "/traced", json!({})).await;
    let context = Context::random();
    let id = publish_with_trace(&app, &consumed, &context.header()).await;
    target.wait_for_delivered(&[id].into(), DEADLINE).await;
    let requests = target.requests_to("/traced");
    assert_eq!(requests.len(), 1, "{requests:?}");
    let sent = Context::of(&requests[0]);
    assert_eq!(sent.trace_id, context.trace_id, "the same trace");
    assert_ne!(sent.span_id, context.span_id, "a span of its own");
    assert_eq!(sent.flags, context.flags, "the caller's sampling decision");

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_without_traceparent_starts_a_trace() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    let (_api, queue, _consumer) =
        running_consumer_on(&app, &target, "trace_started", "/started", json!({})).await;
    let first = app.publish(&queue, json!({ "n": 1 })).await;
    let second = app.publish(&queue, json!({ "n": 2 })).await;
    target
        .wait_for_delivered(&[first.clone(), second.clone()].into(), DEADLINE)
        .await;

    let first = Context::of(&requests_for(&target, "/started", &first)[0]);
    let second = Context::of(&requests_for(&target, "/started", &second)[0]);
    assert_ne!(
        first.trace_id, second.trace_id,
        "each publish starts a trace of its own"
    );

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_of_a_retried_message_is_a_span_of_the_same_trace() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    target.script("/flaky", vec![Reply::status(503)], Reply::ok());
    let (api, queue, consumer) = running_consumer_on(
        &app,
        &target,
        "trace_retry",
        "/flaky",
        json!({ "retry": { "maxAttempts": 3, "initialDelayMs": 100, "multiplier": 2, "maxDelayMs": 1000 } }),
    )
    .await;
    let context = Context::random();
    let id = publish_with_trace(&app, &queue, &context.header()).await;
    target
        .wait_for_delivered(&[id.clone()].into(), DEADLINE)
        .await;
    api.wait_for_consumer(&consumer, DEADLINE, "acked after a retry", |v| {
        v["stats"]["acked"] == 1 && v["stats"]["retried"] == 1
    })
    .await;

    let requests = requests_for(&target, "/flaky", &id);
    let statuses: Vec<(u32, u16)> = requests.iter().map(|r| (r.attempt(), r.answered)).collect();
    assert_eq!(statuses, [(1, 503), (2, 200)]);
    let (first, second) = (Context::of(&requests[0]), Context::of(&requests[1]));
    assert_eq!(first.trace_id, context.trace_id);
    assert_eq!(second.trace_id, context.trace_id, "the retry copy kept it");
    assert_ne!(first.span_id, second.span_id, "each attempt is a span");
    assert_ne!(second.span_id, context.span_id);

    // Each attempt's record keeps the trace id.
    let history = eventually(DEADLINE, || async {
        let history = assert_json(
            api.get(&format!("/getMessageHistory/{queue}/{id}")).await,
            StatusCode::OK,
        )
        .await;
        match history["attempts"].as_array() {
            Some(attempts) if attempts.len() == 2 => Ok(history),
            _ => Err(format!("not two attempts recorded: {history}")),
        }
    })
    .await;
    for attempt in history["attempts"].as_array().into_iter().flatten() {
        assert_eq!(attempt["traceId"], context.trace_id.as_str(), "{attempt}");
    }

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_and_its_replay_keep_the_trace() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    target.script("/dead", vec![Reply::status(422)], Reply::ok());
    let (api, queue, consumer) =
        running_consumer_on(&app, &target, "trace_replay", "/dead", json!({})).await;
    let context = Context::random();
    let id = publish_with_trace(&app, &queue, &context.header()).await;
    api.wait_for_consumer(&consumer, DEADLINE, "dead-lettered", |v| {
        v["stats"]["deadLettered"] == 1
    })
    .await;

    assert_eq!(api.replay_dead_letters(&queue).await, 1);
    target
        .wait_for_delivered(&[id.clone()].into(), DEADLINE)
        .await;

    let requests = requests_for(&target, "/dead", &id);
    let answered: Vec<u16> = requests.iter().map(|r| r.answered).collect();
    assert_eq!(answered, [422, 200], "once dead, once replayed");
    for request in &requests {
        assert_eq!(
            Context::of(request).trace_id,
            context.trace_id,
            "{request:?}"
        );
    }

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_traceparent_is_refused_naming_it_and_nothing_is_published() {
    let app = spawn_app().await;
    let queue = app.unique_queue("trace_refused");
    app.create_queue(&queue, json!({})).await;
    let body = json!({ "queueName": queue, "message": { "n": 1 } });
    let valid = Context::random().header();
    let cases: Vec<(String, Vec<String>)> = vec![
        ("not hex".into(), vec!["00-xyz-abc-01".into()]),
        ("upper case".into(), vec![valid.to_uppercase()]),
        (
            "all-zero trace id".into(),
            vec![format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32))],
        ),
        (
            "all-zero parent id".into(),
            vec![format!("00-{}-{}-01", "1".repeat(32), "0".repeat(16))],
        ),
        ("version ff".into(), vec![format!("ff{}", &valid[2..])]),
        ("version 00 with more".into(), vec![format!("{valid}-00")]),
        ("empty".into(), vec![String::new()]),
        (
            "twice".into(),
            vec![valid.clone(), Context::random().header()],
        ),
    ];
    for (case, values) in cases {
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let error = assert_error(
            publish_traced(&app, &body, &values).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("`traceparent`")),
            "{case}: {error}"
        );
    }

    // The trace context has one source: not also a message header.
    let in_body = json!({
        "queueName": queue,
        "message": { "n": 1 },
        "headers": { "traceparent": valid },
    });
    let error = assert_error(
        publish_traced(&app, &in_body, &[]).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("`headers.traceparent`")),
        "{error}"
    );

    assert_eq!(
        app.message_count(&queue).await,
        Some(0),
        "nothing published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_straight_to_the_broker_forward_their_own_trace_or_none() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    let (_api, queue, _consumer) =
        running_consumer_on(&app, &target, "trace_direct", "/direct", json!({})).await;
    let context = Context::random();
    let with_trace = {
        let mut table = FieldTable::default();
        table.insert(
            "traceparent".into(),
            AMQPValue::LongString(context.header().into_bytes().into()),
        );
        table
    };
    let malformed = {
        let mut table = FieldTable::default();
        table.insert(
            "traceparent".into(),
            AMQPValue::LongString(b"00-nonsense".to_vec().into()),
        );
        table
    };
    let props = |id: &str| {
        BasicProperties::default()
            .with_message_id(id.into())
            .with_content_type("application/json".into())
    };
    publish_with_properties(
        app.amqp_connection().await,
        &queue,
        vec![
            (b"{}".as_slice(), props("untraced")),
            (b"{}".as_slice(), props("traced").with_headers(with_trace)),
            (b"{}".as_slice(), props("malformed").with_headers(malformed)),
        ],
    )
    .await;
    let ids = ["untraced", "traced", "malformed"].map(String::from);
    target
        .wait_for_delivered(&ids.clone().into(), DEADLINE)
        .await;

    for id in ["untraced", "malformed"] {
        let request = &requests_for(&target, "/direct", id)[0];
        assert_eq!(request.header("traceparent"), None, "{request:?}");
    }
    let traced = Context::of(&requests_for(&target, "/direct", "traced")[0]);
    assert_eq!(traced.trace_id, context.trace_id);
    assert_ne!(traced.span_id, context.span_id);

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_request_is_a_span_of_the_first_trace_among_its_messages() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    let queue = app.unique_queue("trace_batch");
    api.create_queue(&queue).await;
    // In the queue before the consumer starts, so one batch takes them all,
    // in this order.
    publish_with_properties(
        app.amqp_connection().await,
        &queue,
        vec![(
            b"{}".as_slice(),
            BasicProperties::default().with_message_id("untraced".into()),
        )],
    )
    .await;
    let first = Context::random();
    let second = Context::random();
    publish_with_trace(&app, &queue, &first.header()).await;
    publish_with_trace(&app, &queue, &second.header()).await;
    api.create_http_consumer(
        &queue,
        &target.url("/batch"),
        json!({ "prefetch": 10, "batch": { "maxMessages": 3, "maxWaitMs": 2000 } }),
    )
    .await;

    let requests = target.wait_for_requests(1, DEADLINE).await;
    assert_eq!(
        requests[0].header("x-workerrmq-batch-size"),
        Some("3"),
        "{:?}",
        requests[0]
    );
    let sent = Context::of(&requests[0]);
    assert_eq!(sent.trace_id, first.trace_id, "the first traced message's");
    assert_ne!(sent.span_id, first.span_id);

    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_documents_the_traceparent_header_of_a_publish() {
    let app = spawn_app().await;
    let spec = assert_json(
        app.request_anonymous(reqwest::Method::GET, "/openapi.json", None)
            .await,
        StatusCode::OK,
    )
    .await;
    let parameters = spec["paths"]["/messagePublish"]["post"]["parameters"]
        .as_array()
        .unwrap_or_else(|| panic!("no parameters: {}", spec["paths"]["/messagePublish"]));
    let traceparent = parameters
        .iter()
        .find(|p| p["name"] == "traceparent")
        .unwrap_or_else(|| panic!("no traceparent parameter: {parameters:?}"));
    assert_eq!(traceparent["in"], "header");
    assert_ne!(
        traceparent["required"], true,
        "optional: a trace is started"
    );
    let pattern = traceparent["schema"]["pattern"]
        .as_str()
        .expect("a pattern for schema-aware clients");
    assert!(pattern.contains("[0-9a-f]{32}"), "{pattern}");
}

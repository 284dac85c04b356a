//! The tests' own plain-AMQP client (lapin, not the gateway's): opening a
//! connection, publishing test messages with confirms, and looking at a
//! queue with a passive declare.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

/// lapin runs on the test's tokio runtime (its `tokio` feature).
pub fn connection_properties() -> ConnectionProperties {
    ConnectionProperties::default()
}

/// A connection to `url`; fails the test when the broker does not answer.
pub async fn connect(url: &str) -> Connection {
    Connection::connect(url, connection_properties())
        .await
        .expect("the tests reach the broker")
}

pub fn is_not_found(err: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(e) if e.kind() == &AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
    )
}

/// A message as the tests publish it with plain AMQP.
#[derive(Debug, Clone)]
pub struct TestMessage {
    pub id: String,
    pub body: Vec<u8>,
    pub content_type: String,
}

/// The message ids of `messages`, as a target's deliveries are compared.
pub fn ids_of(messages: &[TestMessage]) -> BTreeSet<String> {
    messages.iter().map(|m| m.id.clone()).collect()
}

/// `n` messages with explicit ids and binary (not UTF-8, not JSON) bodies
/// of varied lengths, typed `application/octet-stream`.
pub fn binary_messages(label: &str, n: usize) -> Vec<TestMessage> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    (0..n)
        .map(|i| {
            let mut body = vec![0xff, 0x00, 0xfe, (i % 256) as u8];
            body.extend((0..(i % 97) + 8).map(|_| rand::random::<u8>()));
            body.extend_from_slice(b"\r\n\0end");
            TestMessage {
                id: format!("{label}-{i:05}-{}", &run[..12]),
                body,
                content_type: "application/octet-stream".into(),
            }
        })
        .collect()
}

/// Publishes every message to `queue` through the default exchange,
/// persistent, on a confirming channel; returns once the broker confirmed
/// them all.
pub async fn publish_confirmed(connection: &Connection, queue: &str, messages: &[TestMessage]) {
    let with_properties: Vec<(&[u8], BasicProperties)> = messages
        .iter()
        .map(|message| {
            let properties = BasicProperties::default()
                .with_message_id(message.id.clone().into())
                .with_content_type(message.content_type.clone().into())
                .with_delivery_mode(2);
            (message.body.as_slice(), properties)
        })
        .collect();
    publish_with_properties(connection, queue, with_properties).await;
}

/// Publishes each body with its properties to `queue` through the default
/// exchange, on a confirming channel; returns once the broker confirmed
/// them all.
pub async fn publish_with_properties(
    connection: &Connection,
    queue: &str,
    messages: Vec<(&[u8], BasicProperties)>,
) {
    let channel = connection
        .create_channel()
        .await
        .expect("a publishing channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("publisher confirms");
    let mut confirms = Vec::with_capacity(messages.len());
    for (body, properties) in messages {
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties,
                )
                .await
                .expect("the publish is sent"),
        );
    }
    for confirm in confirms {
        let confirmation = confirm.await.expect("a publisher confirm");
        assert!(
            matches!(confirmation, Confirmation::Ack(None)),
            "the broker did not take a message: {confirmation:?}"
        );
    }
    let _ = channel.close(200, "published".into()).await;
}

/// `(ready messages, consumers)` of `queue` (passive declare), `None` when
/// there is no such queue.
pub async fn queue_counts(connection: &Connection, queue: &str) -> Option<(u32, u32)> {
    let channel: Channel = connection.create_channel().await.expect("a channel");
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    match declared {
        Ok(q) => {
            let _ = channel.close(200, "done".into()).await;
            Some((q.message_count(), q.consumer_count()))
        }
        Err(err) if is_not_found(&err) => None,
        Err(err) => panic!("passive declare of `{queue}` failed: {err}"),
    }
}

/// Polls the queue until `check(messages, consumers)` holds.
pub async fn wait_for_queue(
    connection: &Connection,
    queue: &str,
    deadline: Duration,
    what: &str,
    check: impl Fn(u32, u32) -> bool,
) -> (u32, u32) {
    let started = Instant::now();
    loop {
        let counts = queue_counts(connection, queue).await;
        if let Some((messages, consumers)) = counts {
            if check(messages, consumers) {
                return (messages, consumers);
            }
        }
        assert!(
            started.elapsed() < deadline,
            "queue `{queue}`: not {what} within {deadline:?}; last (messages, consumers): {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

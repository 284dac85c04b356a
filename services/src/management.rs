//! A small client for the RabbitMQ management API: what the AMQP protocol
//! cannot tell (connections, per-queue statistics across the vhost).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gateway::QueueName;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Why the management API gave no usable answer. The variants say what
/// went wrong, for the HTTP layer to put in words; `path` is the API path
/// asked for, and the source is reqwest's error stripped of its URL (whose
/// host the caller must not see). reqwest's own text is "error sending
/// request": the cause (refused, timed out) is down the chain, which logs
/// print whole (`gateway::Chain`).
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    /// No answer: connection refused, timeout, DNS.
    #[error("the RabbitMQ management API does not answer (GET /{path})")]
    Unreachable {
        /// The API path asked for.
        path: String,
        /// reqwest's error, its URL stripped.
        #[source]
        source: reqwest::Error,
    },
    /// It refused the gateway's credentials (401 / 403).
    #[error("the RabbitMQ management API refused the gateway's credentials ({status})")]
    Refused {
        /// The status it answered.
        status: StatusCode,
    },
    /// Any other non-2xx status.
    #[error("the RabbitMQ management API answered {status}")]
    Status {
        /// The status it answered.
        status: StatusCode,
    },
    /// A 2xx whose body is not what the API documents.
    #[error("the RabbitMQ management API answered something unreadable (GET /{path})")]
    Unreadable {
        /// The API path asked for.
        path: String,
        /// reqwest's error, its URL stripped.
        #[source]
        source: reqwest::Error,
    },
    /// `RABBITMQ_MANAGEMENT_URL` cannot take path segments (`mailto:`...).
    #[error("RABBITMQ_MANAGEMENT_URL cannot be a base URL")]
    BadBaseUrl,
}

impl ManagementError {
    /// Classifies reqwest's error of a GET of `segments`.
    fn request(segments: &[&str], err: reqwest::Error) -> Self {
        let path = segments.join("/");
        let source = err.without_url();
        if source.is_decode() {
            ManagementError::Unreadable { path, source }
        } else {
            ManagementError::Unreachable { path, source }
        }
    }
}

/// Several base URLs (the nodes of a cluster) are tried in order: a request
/// that finds its node unreachable goes to the next, and the one that
/// answered is where the next request starts.
#[derive(Clone)]
pub struct ManagementClient {
    http: reqwest::Client,
    bases: Arc<[url::Url]>,
    /// Index into `bases` of the node that answered last.
    current: Arc<AtomicUsize>,
    user: String,
    password: SecretString,
    vhost: String,
}

impl std::fmt::Debug for ManagementClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagementClient")
            // Host and port only: a base URL may carry a user and password.
            .field(
                "bases",
                &self
                    .bases
                    .iter()
                    .map(|base| {
                        format!(
                            "{}:{}",
                            base.host_str().unwrap_or_default(),
                            base.port_or_known_default().unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>(),
            )
            .field("user", &self.user)
            .field("password", &self.password)
            .field("vhost", &self.vhost)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
struct RawConnection {
    name: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    vhost: String,
    #[serde(default)]
    peer_host: Option<String>,
    #[serde(default)]
    peer_port: Option<u16>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    channels: Option<u32>,
    #[serde(default)]
    connected_at: Option<i64>,
    #[serde(default)]
    client_properties: Option<RawClientProperties>,
}

#[derive(Debug, Deserialize)]
struct RawClientProperties {
    #[serde(default)]
    connection_name: Option<String>,
}

/// An AMQP connection to the broker, as `/getConnections` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionInfo {
    /// The broker's name for the connection.
    pub connection_id: String,
    /// The AMQP user it authenticated as.
    pub user: String,
    /// The client's address, as the broker sees it.
    pub peer_host: Option<String>,
    /// The client's port.
    pub peer_port: Option<u16>,
    /// `running`, `blocked`, `closing` and so on, as the broker reports it.
    pub state: Option<String>,
    /// Channels open on it.
    pub channels: u32,
    /// When it was opened (RFC 3339).
    pub connected_at: Option<String>,
    /// The client-provided connection name, which tells replicas and their roles apart.
    pub client_name: Option<String>,
}

/// A queue as the management API lists it, before companions are folded into their main queue.
#[derive(Debug, Clone, Deserialize)]
pub struct RawQueue {
    /// The queue's name.
    pub name: String,
    /// Ready and unacknowledged messages.
    #[serde(default)]
    pub messages: u64,
    /// Messages waiting for a consumer.
    #[serde(default)]
    pub messages_ready: u64,
    /// Messages delivered and not yet acked.
    #[serde(default)]
    pub messages_unacknowledged: u64,
    /// Consumers attached.
    #[serde(default)]
    pub consumers: u64,
    /// Whether it survives a broker restart.
    #[serde(default)]
    pub durable: bool,
    /// `classic` or `quorum` (or another type the broker knows); absent on old brokers.
    #[serde(default, rename = "type")]
    pub queue_type: Option<String>,
    /// The queue's arguments (`x-single-active-consumer`, …).
    #[serde(default)]
    pub arguments: serde_json::Map<String, serde_json::Value>,
}

impl RawQueue {
    /// Whether the broker delivers to one of its consumers at a time
    /// (`x-single-active-consumer`).
    pub fn single_active_consumer(&self) -> bool {
        self.arguments
            .get("x-single-active-consumer")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    }
}

/// One row of `/getQueues`: a main queue with its companions folded in.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueRow {
    /// The main queue's name.
    pub queue_name: String,
    /// Ready + unacknowledged + waiting in delay queues for a retry.
    pub messages: u64,
    /// Messages in the main queue waiting for a consumer.
    pub messages_ready: u64,
    /// Messages in the main queue delivered and not yet acked.
    pub messages_unacknowledged: u64,
    /// Messages waiting in the queue's delay queues for a retry.
    pub retrying_messages: u64,
    /// Consumers attached to the main queue, from every client.
    pub consumers: u64,
    /// Whether it survives a broker restart.
    pub durable: bool,
    /// `classic` or `quorum`.
    pub queue_type: String,
    /// Whether the broker delivers to one consumer at a time, as ordered
    /// consumers need.
    pub single_active_consumer: bool,
    /// Messages in `<queue>.dlq`.
    pub dead_letter_messages: u64,
}

impl ManagementClient {
    /// `bases` in the order to try them; an empty list is taken as the
    /// default `http://127.0.0.1:15672`.
    pub fn new(
        http: reqwest::Client,
        bases: Vec<url::Url>,
        user: String,
        password: SecretString,
        vhost: String,
    ) -> Self {
        let bases: Arc<[url::Url]> = if bases.is_empty() {
            Arc::from(vec![
                url::Url::parse("http://127.0.0.1:15672").expect("a valid URL")
            ])
        } else {
            Arc::from(bases)
        };
        Self {
            http,
            bases,
            current: Arc::new(AtomicUsize::new(0)),
            user,
            password,
            vhost,
        }
    }

    fn url(base: &url::Url, segments: &[&str]) -> Result<url::Url, ManagementError> {
        let mut url = base.clone();
        url.path_segments_mut()
            .map_err(|_| ManagementError::BadBaseUrl)?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// GET from the node that answered last, moving on to the next while
    /// nodes are unreachable.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
    ) -> Result<T, ManagementError> {
        let count = self.bases.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for step in 0..count {
            let index = (start + step) % count;
            match self.get_from(&self.bases[index], segments).await {
                Err(err @ ManagementError::Unreachable { .. }) => {
                    let base = &self.bases[index];
                    tracing::warn!(
                        node = %format!("{}:{}", base.host_str().unwrap_or_default(), base.port_or_known_default().unwrap_or_default()),
                        error = %gateway::Chain(&err),
                        "management API node unreachable; trying the next"
                    );
                    last = Some(err);
                }
                answer => {
                    self.current.store(index, Ordering::Relaxed);
                    return answer;
                }
            }
        }
        Err(last.unwrap_or(ManagementError::BadBaseUrl))
    }

    async fn get_from<T: serde::de::DeserializeOwned>(
        &self,
        base: &url::Url,
        segments: &[&str],
    ) -> Result<T, ManagementError> {
        let response = self
            .http
            .get(Self::url(base, segments)?)
            .basic_auth(&self.user, Some(self.password.expose_secret()))
            .send()
            .await
            .map_err(|e| ManagementError::request(segments, e))?;
        let status = response.status();
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(ManagementError::Refused { status });
        }
        if !status.is_success() {
            return Err(ManagementError::Status { status });
        }
        response
            .json()
            .await
            .map_err(|e| ManagementError::request(segments, e))
    }

    /// The vhost's client connections, oldest first.
    pub async fn connections(&self) -> Result<Vec<ConnectionInfo>, ManagementError> {
        let raw: Vec<RawConnection> = self.get(&["api", "connections"]).await?;
        let mut rows: Vec<(Option<i64>, ConnectionInfo)> = raw
            .into_iter()
            .filter(|c| c.vhost == self.vhost)
            .map(|c| {
                let connected_at = c.connected_at.and_then(|ms| {
                    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339())
                });
                (
                    c.connected_at,
                    ConnectionInfo {
                        connection_id: c.name,
                        user: c.user,
                        peer_host: c.peer_host,
                        peer_port: c.peer_port,
                        state: c.state,
                        channels: c.channels.unwrap_or(0),
                        connected_at,
                        client_name: c.client_properties.and_then(|p| p.connection_name),
                    },
                )
            })
            .collect();
        rows.sort_by_key(|(at, _)| *at);
        Ok(rows.into_iter().map(|(_, row)| row).collect())
    }

    /// The type (`classic`, `quorum`, `stream`) of one queue of the vhost;
    /// `Ok(None)` when there is no such queue.
    pub async fn queue_type(&self, queue: &str) -> Result<Option<String>, ManagementError> {
        Ok(self
            .queue(queue)
            .await?
            .map(|raw| raw.queue_type.unwrap_or_else(|| "classic".into())))
    }

    /// One queue of the vhost as the broker reports it, companions left
    /// apart; `Ok(None)` when there is no such queue.
    pub async fn queue(&self, queue: &str) -> Result<Option<RawQueue>, ManagementError> {
        match self
            .get::<RawQueue>(&["api", "queues", &self.vhost, queue])
            .await
        {
            Ok(raw) => Ok(Some(raw)),
            Err(ManagementError::Status { status }) if status == StatusCode::NOT_FOUND => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Every main queue of the vhost, its delay and dead-letter queues folded into its row.
    pub async fn queues(&self) -> Result<Vec<QueueRow>, ManagementError> {
        let raw: Vec<RawQueue> = self.get(&["api", "queues", &self.vhost]).await?;
        Ok(fold_companions(raw))
    }
}

/// Folds `<q>.dlq` and `<q>.retry.<ms>` into the row of `<q>`. A companion
/// whose main queue is gone stays a row of its own, so nothing is hidden.
pub fn fold_companions(raw: Vec<RawQueue>) -> Vec<QueueRow> {
    let mut rows: BTreeMap<String, QueueRow> = BTreeMap::new();
    let mut companions = Vec::new();
    for queue in raw {
        match QueueName::main_of_companion(&queue.name) {
            Some(main) => companions.push((main.to_owned(), queue)),
            None => {
                rows.insert(queue.name.clone(), row_of(&queue));
            }
        }
    }
    for (main, queue) in companions {
        match rows.get_mut(&main) {
            Some(row) if queue.name.ends_with(gateway::names::DEAD_LETTER_SUFFIX) => {
                row.dead_letter_messages += queue.messages;
            }
            Some(row) => {
                row.retrying_messages += queue.messages;
                row.messages += queue.messages;
            }
            None => {
                rows.insert(queue.name.clone(), row_of(&queue));
            }
        }
    }
    rows.into_values().collect()
}

fn row_of(queue: &RawQueue) -> QueueRow {
    QueueRow {
        queue_name: queue.name.clone(),
        messages: queue.messages,
        messages_ready: queue.messages_ready,
        messages_unacknowledged: queue.messages_unacknowledged,
        retrying_messages: 0,
        consumers: queue.consumers,
        durable: queue.durable,
        queue_type: queue.queue_type.clone().unwrap_or_else(|| "classic".into()),
        single_active_consumer: queue.single_active_consumer(),
        dead_letter_messages: 0,
    }
}

/// The consumer engine asks it which type a queue's companions take.
#[async_trait::async_trait]
impl gateway::QueueTypeSource for ManagementClient {
    async fn queue_type(&self, queue: &QueueName) -> Option<gateway::QueueType> {
        match ManagementClient::queue_type(self, queue.as_str()).await {
            Ok(Some(name)) => gateway::QueueType::parse(&name),
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(%queue, error = %gateway::Chain(&err), "cannot tell the queue's type; its companions take DEFAULT_QUEUE_TYPE for now");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &str, messages: u64) -> RawQueue {
        RawQueue {
            name: name.into(),
            messages,
            messages_ready: messages,
            messages_unacknowledged: 0,
            consumers: 0,
            durable: true,
            queue_type: Some("classic".into()),
            arguments: Default::default(),
        }
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let client = ManagementClient::new(
            reqwest::Client::new(),
            vec![url::Url::parse("http://m:url-s3cret@127.0.0.1:15672").unwrap()],
            "guest".into(),
            "s3cret-password".into(),
            "/".into(),
        );
        let printed = format!("{client:?}");
        assert!(!printed.contains("s3cret-password"), "{printed}");
        assert!(!printed.contains("url-s3cret"), "{printed}");
        assert!(printed.contains("127.0.0.1:15672"), "{printed}");
        assert!(printed.contains("guest"), "{printed}");
    }

    #[test]
    fn companions_fold_into_the_main_row() {
        let rows = fold_companions(vec![
            raw("orders.dlq", 3),
            raw("orders", 5),
            raw("orders.retry.1000", 2),
            raw("lonely.dlq", 1),
        ]);
        assert_eq!(rows.len(), 2);
        let orders = rows.iter().find(|r| r.queue_name == "orders").unwrap();
        assert_eq!(orders.messages, 7);
        assert_eq!(orders.messages_ready, 5);
        assert_eq!(orders.retrying_messages, 2);
        assert_eq!(orders.dead_letter_messages, 3);
        assert!(rows.iter().any(|r| r.queue_name == "lonely.dlq"));
    }
}

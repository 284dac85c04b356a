//! The gateway's AMQP connections and their reconnect loops.
//!
//! Publishing and consuming never share a connection. A broker under a
//! memory or disk alarm blocks connections that publish (`connection.blocked`),
//! and a blocked connection carries nothing at all, acks included; on their
//! own connections consumers keep draining their queues meanwhile.
//!
//! - `<name>-publish`: the publisher's confirm channels, nothing else.
//! - `<name>-consume`, `<name>-consume-2`, …: one long-lived channel per
//!   consumer, at most `CONSUMER_CHANNELS_PER_CONNECTION` on each, so that
//!   the broker's `channel_max` (about 2,047) never caps the consumers of a
//!   gateway. A new one opens when the others are full; it stays open (and
//!   is reused) once its consumers are gone. Short-lived channels for
//!   topology and dead-letter reads run on the first.
//!
//! `Broker` is a cheap handle. A background task owns each connection: it
//! connects, publishes the live connection on a watch channel, waits for it
//! to break, and reconnects until shutdown. Callers never hold a connection
//! across a reconnect; they ask for a fresh channel or watch the link
//! (`ConsumerLease::subscribe`) to resume.
//!
//! With several broker addresses (the nodes of a cluster, `AmqpUrls`), every
//! connection of a replica starts on the first of the replica's shuffled
//! list; a connection that breaks, or that cannot be made, moves on to the
//! next address right away, and backs off (exponentially, jittered) only
//! when a whole round of addresses failed. A dead node therefore costs a
//! reconnect to its neighbour, well under a second, not a backoff.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::BackoffBuilder;
use futures_util::StreamExt;
use lapin::{Channel, Connection, ConnectionProperties, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::addresses::AmqpUrls;
use crate::error::{AmqpContext, Chain};
use crate::{BrokerError, Lost};

/// Consumer channels on one consume connection before another one opens:
/// half the broker's default `channel_max`, leaving room for the
/// short-lived channels of topology and dead-letter reads.
pub const CONSUMER_CHANNELS_PER_CONNECTION: usize = 1_000;

/// Where and under which names a replica connects to the broker.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Tried in this order (`AmqpUrls::shuffled` gives a replica its own).
    pub urls: AmqpUrls,
    /// The base of the client-provided names shown in the management UI and
    /// `/getConnections` (`<base>-publish`, `<base>-consume`, …), so
    /// operators can tell replicas and roles apart.
    pub connection_name: String,
    /// Consumer channels on one consume connection before another opens;
    /// `CONSUMER_CHANNELS_PER_CONNECTION` unless a test needs it small.
    pub consumer_channels_per_connection: usize,
}

impl BrokerSettings {
    /// Settings with the default number of consumer channels per connection.
    pub fn new(urls: AmqpUrls, connection_name: String) -> Self {
        Self {
            urls,
            connection_name,
            consumer_channels_per_connection: CONSUMER_CHANNELS_PER_CONNECTION,
        }
    }

    /// `<base>-publish`: the name of the one connection every publish goes through.
    pub fn publish_connection_name(&self) -> String {
        format!("{}-publish", self.connection_name)
    }

    /// `<base>-consume` for the first (index 0), `<base>-consume-<n>` (from
    /// 2) for the ones opened as consumers outgrow it.
    pub fn consume_connection_name(&self, index: usize) -> String {
        match index {
            0 => format!("{}-consume", self.connection_name),
            n => format!("{}-consume-{}", self.connection_name, n + 1),
        }
    }
}

/// The current connection, if any. `generation` grows with every successful
/// connect so watchers can tell a new connection from the one they had.
#[derive(Clone, Default)]
pub struct Link {
    /// `None` while disconnected (reconnecting).
    pub connection: Option<Arc<Connection>>,
    /// Grows by one at each successful connect.
    pub generation: u64,
    /// `host:port` of the node the connection is on (`None` when down).
    pub node: Option<String>,
}

/// One connection's name and the node it is on, for `/ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionNode {
    /// The client-provided connection name (`<base>-publish`, `<base>-consume`, …).
    pub name: String,
    /// `host:port`; `None` while it is down (reconnecting).
    pub node: Option<String>,
}

/// One named connection kept open by its own reconnect loop.
#[derive(Clone)]
struct NamedConnection {
    name: String,
    link: watch::Receiver<Link>,
    stopped: CancellationToken,
}

impl NamedConnection {
    fn start(urls: AmqpUrls, name: String, shutdown: CancellationToken) -> Self {
        let (tx, rx) = watch::channel(Link::default());
        let stopped = CancellationToken::new();
        let loop_stopped = stopped.clone();
        let loop_name = name.clone();
        tokio::spawn(async move {
            connection_loop(urls, loop_name, tx, shutdown).await;
            loop_stopped.cancel();
        });
        Self {
            name,
            link: rx,
            stopped,
        }
    }

    /// The node this connection is on, while it is up.
    fn node(&self) -> Option<String> {
        let link = self.link.borrow();
        match &link.connection {
            Some(c) if c.status().connected() => link.node.clone(),
            _ => None,
        }
    }

    fn described(&self) -> ConnectionNode {
        ConnectionNode {
            name: self.name.clone(),
            node: self.node(),
        }
    }

    async fn first_connect(&self, within: Duration) {
        let mut link = self.link.clone();
        let _ = tokio::time::timeout(within, link.wait_for(|l| l.connection.is_some())).await;
    }

    fn current(&self) -> Option<Arc<Connection>> {
        self.link.borrow().connection.clone()
    }

    fn is_up(&self) -> bool {
        self.current().is_some_and(|c| c.status().connected())
    }

    async fn channel(&self) -> Result<Channel, BrokerError> {
        let connection = self
            .current()
            .ok_or_else(|| BrokerError::unavailable("opening a channel", Lost::NotConnected))?;
        connection
            .create_channel()
            .await
            .doing(|| format!("opening a channel on `{}`", self.name))
    }
}

/// A consume connection and how many consumers hold a channel on it.
struct ConsumeSlot {
    connection: NamedConnection,
    leases: Arc<AtomicUsize>,
}

struct Inner {
    settings: BrokerSettings,
    shutdown: CancellationToken,
    publish: NamedConnection,
    consume: Mutex<Vec<ConsumeSlot>>,
}

/// The replica's connections to the broker: one for publishing and as many for consuming as the
/// consumers need, each reconnecting on its own. Cheap to clone: clones share them.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl Broker {
    /// Starts the publish connection and the first consume connection, and
    /// waits up to `first_connect` for both. A broker that is down does not
    /// stop start-up: the loops keep trying and `/ready` reports it
    /// meanwhile.
    pub async fn start(
        settings: BrokerSettings,
        first_connect: Duration,
        shutdown: CancellationToken,
    ) -> Broker {
        let publish = NamedConnection::start(
            settings.urls.clone(),
            settings.publish_connection_name(),
            shutdown.clone(),
        );
        let consume = NamedConnection::start(
            settings.urls.clone(),
            settings.consume_connection_name(0),
            shutdown.clone(),
        );
        tokio::join!(
            publish.first_connect(first_connect),
            consume.first_connect(first_connect)
        );
        Broker {
            inner: Arc::new(Inner {
                settings,
                shutdown,
                publish,
                consume: Mutex::new(vec![ConsumeSlot {
                    connection: consume,
                    leases: Arc::new(AtomicUsize::new(0)),
                }]),
            }),
        }
    }

    fn consume_connections(&self) -> Vec<NamedConnection> {
        self.slots()
            .iter()
            .map(|slot| slot.connection.clone())
            .collect()
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<ConsumeSlot>> {
        // A panic while holding the lock leaves the list itself intact.
        self.inner
            .consume
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every connection of this gateway is up: publishing and consuming.
    pub fn is_up(&self) -> bool {
        self.inner.publish.is_up() && self.consume_connections().iter().all(|c| c.is_up())
    }

    /// The address (`host:port`) of the node the first consume connection
    /// is on, `None` while it is disconnected: the replica's broker node,
    /// as the fleet's heartbeat reports it.
    pub fn broker_node(&self) -> Option<String> {
        self.consume_connections()
            .first()
            .and_then(NamedConnection::node)
    }

    /// Every connection of this gateway with the node it is on: the publish
    /// connection first, then the consume connections in order.
    pub fn connection_nodes(&self) -> Vec<ConnectionNode> {
        std::iter::once(self.inner.publish.described())
            .chain(self.consume_connections().iter().map(|c| c.described()))
            .collect()
    }

    /// The broker told the publish connection to stop publishing
    /// (`connection.blocked`: a memory or disk alarm). Nothing written on
    /// it goes out until it is unblocked.
    pub fn publishing_blocked(&self) -> bool {
        self.inner
            .publish
            .current()
            .is_some_and(|c| c.status().blocked())
    }

    /// The frame size negotiated on the publish connection: a message's
    /// header frame (its properties) must fit in it, or the broker closes
    /// the connection. `None` while disconnected.
    pub fn publish_frame_max(&self) -> Option<u32> {
        self.inner
            .publish
            .current()
            .map(|c| c.configuration().frame_max())
    }

    /// A new channel on the publish connection, for the publisher's pool.
    pub async fn publish_channel(&self) -> Result<Channel, BrokerError> {
        self.inner.publish.channel().await
    }

    /// A new short-lived channel for topology and dead-letter reads, on the
    /// first consume connection (never blocked by a publishing alarm).
    /// Short-lived channels keep a broker refusal (which closes the channel
    /// it happened on) away from every other request.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let first = self.consume_connections().into_iter().next();
        match first {
            Some(connection) => connection.channel().await,
            None => Err(BrokerError::unavailable(
                "opening a channel",
                Lost::NotConnected,
            )),
        }
    }

    /// A place for one consumer's channel on a consume connection that has
    /// room, opening another consume connection when all are full. The
    /// consumer keeps its place across reconnects, until the lease drops.
    pub fn consumer_lease(&self) -> ConsumerLease {
        let mut slots = self.slots();
        let counts: Vec<usize> = slots
            .iter()
            .map(|s| s.leases.load(Ordering::SeqCst))
            .collect();
        let per_connection = self.inner.settings.consumer_channels_per_connection.max(1);
        let index = match slot_with_room(&counts, per_connection) {
            Some(index) => index,
            None => {
                let index = slots.len();
                let name = self.inner.settings.consume_connection_name(index);
                tracing::info!(connection = %name, "opening another consume connection");
                slots.push(ConsumeSlot {
                    connection: NamedConnection::start(
                        self.inner.settings.urls.clone(),
                        name,
                        self.inner.shutdown.clone(),
                    ),
                    leases: Arc::new(AtomicUsize::new(0)),
                });
                index
            }
        };
        let slot = &slots[index];
        slot.leases.fetch_add(1, Ordering::SeqCst);
        ConsumerLease {
            connection: slot.connection.clone(),
            leases: slot.leases.clone(),
        }
    }

    /// Resolves once the shutdown token fired and every connection is
    /// closed.
    pub async fn stopped(&self) {
        self.inner.publish.stopped.cancelled().await;
        for connection in self.consume_connections() {
            connection.stopped.cancelled().await;
        }
    }
}

/// The first consume connection with fewer than `per_connection` consumer
/// channels, if any.
fn slot_with_room(counts: &[usize], per_connection: usize) -> Option<usize> {
    counts.iter().position(|&n| n < per_connection)
}

/// One consumer's place on a consume connection; gives it back on drop.
pub struct ConsumerLease {
    connection: NamedConnection,
    leases: Arc<AtomicUsize>,
}

impl ConsumerLease {
    /// The consume connection this consumer uses, to wait for it.
    pub fn subscribe(&self) -> watch::Receiver<Link> {
        self.connection.link.clone()
    }

    /// A new channel on this consumer's consume connection.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        self.connection.channel().await
    }
}

impl Drop for ConsumerLease {
    fn drop(&mut self) {
        self.leases.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Jittered exponential delays between `min` and `max`, for ever: how
/// connections and consumers come back after a break.
pub(crate) fn reconnect_backoff(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// How long one connection attempt may take before the next address is
/// tried: a node that drops packets instead of refusing must not hold the
/// failover up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why one connection attempt failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("cannot open the connection")]
    Refused(#[source] lapin::Error),
    #[error("no answer within {} s", CONNECT_TIMEOUT.as_secs())]
    TimedOut,
}

async fn connect(url: &str, name: &str) -> Result<Connection, ConnectError> {
    // lapin runs on the tokio runtime it is called from (its `tokio` feature).
    let properties = ConnectionProperties::default().with_connection_name(name.to_owned().into());
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(err)) => Err(ConnectError::Refused(err)),
        Err(_) => Err(ConnectError::TimedOut),
    }
}

async fn connection_loop(
    urls: AmqpUrls,
    name: String,
    tx: watch::Sender<Link>,
    shutdown: CancellationToken,
) {
    let new_backoff = || reconnect_backoff(Duration::from_millis(200), Duration::from_secs(10));
    let mut backoff = new_backoff();
    let mut generation = 0u64;
    // The address to try next, and how many in a row have failed.
    let mut index = 0usize;
    let mut failed_in_a_row = 0usize;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let url = urls.get(index);
        let node = url.node().to_owned();
        match connect(url.as_str(), &name).await {
            Ok(connection) => {
                backoff = new_backoff();
                failed_in_a_row = 0;
                generation += 1;
                // Listened to from the start: lapin only sends events once
                // someone listens.
                let mut events = connection.events_listener();
                let connection = Arc::new(connection);
                tracing::info!(connection = %name, node = %node, generation, "connected to the broker");
                tx.send_replace(Link {
                    connection: Some(connection.clone()),
                    generation,
                    node: Some(node.clone()),
                });
                // A channel's error (a refused passive declare, say) comes as
                // an event too; only one that left the connection down is a
                // lost connection.
                let lost = async {
                    while let Some(event) = events.next().await {
                        if let Event::Error(err) = event {
                            if !connection.status().connected() {
                                return Some(err);
                            }
                        }
                    }
                    None
                };
                // No error event comes when the server closes the connection
                // normally (reply code 200), so look as well.
                let closed = async {
                    let mut check = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        check.tick().await;
                        if !connection.status().connected() {
                            break;
                        }
                    }
                };
                tokio::select! {
                    err = lost => match err {
                        Some(err) => tracing::warn!(connection = %name, node = %node, error = %Chain(&err), "broker connection lost"),
                        None => tracing::warn!(connection = %name, node = %node, "broker connection lost: its events ended"),
                    },
                    _ = closed => {
                        tracing::warn!(connection = %name, node = %node, "broker connection closed");
                    }
                    _ = shutdown.cancelled() => {
                        tx.send_replace(Link { connection: None, generation, node: None });
                        // A blocked connection writes nothing, the close
                        // included: do not wait on it for ever.
                        let _ = tokio::time::timeout(
                            Duration::from_secs(2),
                            connection.close(200, "gateway shutting down".into()),
                        )
                        .await;
                        break;
                    }
                }
                tx.send_replace(Link {
                    connection: None,
                    generation,
                    node: None,
                });
                // The node we were on is likely the one in trouble.
                index += 1;
            }
            Err(err) => {
                index += 1;
                failed_in_a_row += 1;
                if failed_in_a_row < urls.len() {
                    tracing::warn!(connection = %name, node = %node, error = %Chain(&err), next = %urls.get(index).node(), "cannot connect to the broker; trying the next node");
                    continue;
                }
                failed_in_a_row = 0;
                let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(connection = %name, node = %node, error = %Chain(&err), retry_in_ms = delay.as_millis() as u64, "cannot connect to the broker");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    tracing::info!(connection = %name, "broker connection loop stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_named_by_role() {
        let urls = AmqpUrls::parse("amqp://127.0.0.1:5672/%2f").unwrap();
        let settings = BrokerSettings::new(urls, "workerrmq-a".into());
        assert_eq!(settings.publish_connection_name(), "workerrmq-a-publish");
        assert_eq!(settings.consume_connection_name(0), "workerrmq-a-consume");
        assert_eq!(settings.consume_connection_name(1), "workerrmq-a-consume-2");
        assert_eq!(settings.consume_connection_name(2), "workerrmq-a-consume-3");
    }

    #[test]
    fn consumers_fill_a_connection_before_the_next_opens() {
        assert_eq!(slot_with_room(&[0], 1_000), Some(0));
        assert_eq!(slot_with_room(&[999], 1_000), Some(0));
        assert_eq!(slot_with_room(&[1_000], 1_000), None, "full: open another");
        assert_eq!(slot_with_room(&[1_000, 3], 1_000), Some(1));
        assert_eq!(
            slot_with_room(&[1_000, 1_000, 999], 1_000),
            Some(2),
            "places freed by stopped consumers are reused"
        );
        assert_eq!(slot_with_room(&[998, 1_000], 1_000), Some(0));
    }
}

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
//! to break, and reconnects with exponential backoff until shutdown. Callers
//! never hold a connection across a reconnect; they ask for a fresh channel
//! or watch the link (`ConsumerLease::subscribe`) to resume.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::BackoffBuilder;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::BrokerError;

/// Consumer channels on one consume connection before another one opens:
/// half the broker's default `channel_max`, leaving room for the
/// short-lived channels of topology and dead-letter reads.
pub const CONSUMER_CHANNELS_PER_CONNECTION: usize = 1_000;

#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub url: String,
    /// The base of the client-provided names shown in the management UI and
    /// `/getConnections` (`<base>-publish`, `<base>-consume`, …), so
    /// operators can tell replicas and roles apart.
    pub connection_name: String,
    /// Consumer channels on one consume connection before another opens;
    /// `CONSUMER_CHANNELS_PER_CONNECTION` unless a test needs it small.
    pub consumer_channels_per_connection: usize,
}

impl BrokerSettings {
    pub fn new(url: String, connection_name: String) -> Self {
        Self {
            url,
            connection_name,
            consumer_channels_per_connection: CONSUMER_CHANNELS_PER_CONNECTION,
        }
    }

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
    pub connection: Option<Arc<Connection>>,
    pub generation: u64,
}

/// One named connection kept open by its own reconnect loop.
#[derive(Clone)]
struct NamedConnection {
    link: watch::Receiver<Link>,
    stopped: CancellationToken,
}

impl NamedConnection {
    fn start(url: String, name: String, shutdown: CancellationToken) -> Self {
        let (tx, rx) = watch::channel(Link::default());
        let stopped = CancellationToken::new();
        let loop_stopped = stopped.clone();
        tokio::spawn(async move {
            connection_loop(url, name, tx, shutdown).await;
            loop_stopped.cancel();
        });
        Self { link: rx, stopped }
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
            .ok_or_else(|| BrokerError::Unavailable("not connected to the broker".into()))?;
        Ok(connection.create_channel().await?)
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
            settings.url.clone(),
            settings.publish_connection_name(),
            shutdown.clone(),
        );
        let consume = NamedConnection::start(
            settings.url.clone(),
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
            None => Err(BrokerError::Unavailable(
                "not connected to the broker".into(),
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
                        self.inner.settings.url.clone(),
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

async fn connection_loop(
    url: String,
    name: String,
    tx: watch::Sender<Link>,
    shutdown: CancellationToken,
) {
    let new_backoff = || reconnect_backoff(Duration::from_millis(200), Duration::from_secs(10));
    let mut backoff = new_backoff();
    let mut generation = 0u64;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let properties = ConnectionProperties::default()
            .with_connection_name(name.clone().into())
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio);
        match Connection::connect(&url, properties).await {
            Ok(connection) => {
                backoff = new_backoff();
                generation += 1;
                let lost = Arc::new(Notify::new());
                let notify = lost.clone();
                let lost_name = name.clone();
                connection.on_error(move |err| {
                    tracing::warn!(connection = %lost_name, error = %err, "broker connection lost");
                    notify.notify_one();
                });
                let connection = Arc::new(connection);
                tracing::info!(connection = %name, generation, "connected to the broker");
                tx.send_replace(Link {
                    connection: Some(connection.clone()),
                    generation,
                });
                // `on_error` is not called when the server closes the
                // connection normally (reply code 200), so look as well.
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
                    _ = lost.notified() => {}
                    _ = closed => {
                        tracing::warn!(connection = %name, "broker connection closed");
                    }
                    _ = shutdown.cancelled() => {
                        tx.send_replace(Link { connection: None, generation });
                        // A blocked connection writes nothing, the close
                        // included: do not wait on it for ever.
                        let _ = tokio::time::timeout(
                            Duration::from_secs(2),
                            connection.close(200, "gateway shutting down"),
                        )
                        .await;
                        break;
                    }
                }
                tx.send_replace(Link {
                    connection: None,
                    generation,
                });
            }
            Err(err) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(connection = %name, error = %err, retry_in_ms = delay.as_millis() as u64, "cannot connect to the broker");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    tracing::info!(connection = %name, "broker connection loop stopped");
}

/// What the management API needs to know from the AMQP URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpUrlParts {
    pub user: String,
    pub password: String,
    pub vhost: String,
}

/// Parses an AMQP URL exactly as the connection will, so a malformed one is
/// reported at start-up rather than on the first reconnect.
pub fn parse_amqp_url(url: &str) -> Result<AmqpUrlParts, String> {
    let uri: lapin::uri::AMQPUri = url.parse()?;
    Ok(AmqpUrlParts {
        user: uri.authority.userinfo.username,
        password: uri.authority.userinfo.password,
        vhost: uri.vhost,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_urls_give_credentials_and_vhost() {
        let parts = parse_amqp_url("amqp://guest:secret@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(parts.user, "guest");
        assert_eq!(parts.password, "secret");
        assert_eq!(parts.vhost, "/");
        assert!(parse_amqp_url("http://nope").is_err());
    }

    #[test]
    fn connections_are_named_by_role() {
        let settings = BrokerSettings::new(String::new(), "workerrmq-a".into());
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

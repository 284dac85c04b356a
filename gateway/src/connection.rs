//! The one AMQP connection of this gateway and its reconnect loop.
//!
//! `Broker` is a cheap handle. A background task owns the connection: it
//! connects, publishes the live connection on a watch channel, waits for it
//! to break, and reconnects with exponential backoff until shutdown. Callers
//! never hold a connection across a reconnect; they ask for a fresh channel
//! (`Broker::channel`) or watch the link (`Broker::subscribe`) to resume.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::BrokerError;

#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub url: String,
    /// Shown in the management UI and `/getConnections` as the client-provided
    /// name, so operators can tell replicas apart.
    pub connection_name: String,
}

/// The current connection, if any. `generation` grows with every successful
/// connect so watchers can tell a new connection from the one they had.
#[derive(Clone, Default)]
pub struct Link {
    pub connection: Option<Arc<Connection>>,
    pub generation: u64,
}

#[derive(Clone)]
pub struct Broker {
    link: watch::Receiver<Link>,
    shutdown: CancellationToken,
    stopped: CancellationToken,
}

impl Broker {
    /// Starts the connection loop and waits up to `first_connect` for the
    /// first connection. A broker that is down does not stop start-up: the
    /// loop keeps trying and `/ready` reports it meanwhile.
    pub async fn start(
        settings: BrokerSettings,
        first_connect: Duration,
        shutdown: CancellationToken,
    ) -> Broker {
        let (tx, mut rx) = watch::channel(Link::default());
        let stopped = CancellationToken::new();
        let loop_stopped = stopped.clone();
        let loop_shutdown = shutdown.clone();
        tokio::spawn(async move {
            connection_loop(settings, tx, loop_shutdown).await;
            loop_stopped.cancel();
        });
        let _ = tokio::time::timeout(first_connect, rx.wait_for(|link| link.connection.is_some()))
            .await;
        Broker {
            link: rx,
            shutdown,
            stopped,
        }
    }

    pub fn is_up(&self) -> bool {
        self.link
            .borrow()
            .connection
            .as_ref()
            .is_some_and(|c| c.status().connected())
    }

    /// A new channel on the current connection. Short-lived channels keep a
    /// broker refusal (which closes the channel it happened on) away from
    /// every other request.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let connection = self
            .link
            .borrow()
            .connection
            .clone()
            .ok_or_else(|| BrokerError::Unavailable("not connected to the broker".into()))?;
        Ok(connection.create_channel().await?)
    }

    pub fn subscribe(&self) -> watch::Receiver<Link> {
        self.link.clone()
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Resolves once the shutdown token fired and the connection is closed.
    pub async fn stopped(&self) {
        self.stopped.cancelled().await
    }
}

async fn connection_loop(
    settings: BrokerSettings,
    tx: watch::Sender<Link>,
    shutdown: CancellationToken,
) {
    let new_backoff = || {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = new_backoff();
    let mut generation = 0u64;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let properties = ConnectionProperties::default()
            .with_connection_name(settings.connection_name.clone().into())
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio);
        match Connection::connect(&settings.url, properties).await {
            Ok(connection) => {
                backoff = new_backoff();
                generation += 1;
                let lost = Arc::new(Notify::new());
                let notify = lost.clone();
                connection.on_error(move |err| {
                    tracing::warn!(error = %err, "broker connection lost");
                    notify.notify_one();
                });
                let connection = Arc::new(connection);
                tracing::info!(generation, "connected to the broker");
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
                        tracing::warn!("broker connection closed");
                    }
                    _ = shutdown.cancelled() => {
                        tx.send_replace(Link { connection: None, generation });
                        let _ = connection.close(200, "gateway shutting down").await;
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
                tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "cannot connect to the broker");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    tracing::info!("broker connection loop stopped");
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
    use super::parse_amqp_url;

    #[test]
    fn amqp_urls_give_credentials_and_vhost() {
        let parts = parse_amqp_url("amqp://guest:secret@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(parts.user, "guest");
        assert_eq!(parts.password, "secret");
        assert_eq!(parts.vhost, "/");
        assert!(parse_amqp_url("http://nope").is_err());
    }
}

//! A TCP proxy in front of the real broker that can tell one client
//! connection it is blocked, as RabbitMQ does under a memory or disk alarm
//! (`connection.blocked` / `connection.unblocked`), without setting an alarm
//! on the broker every other test shares.
//!
//! Bytes pass through unchanged. The broker-to-client direction is cut
//! into whole AMQP frames, so an injected frame lands between two frames.
//! A connection is a target when its opening bytes (the `connection.start-ok`
//! with the client properties) contain the given client-provided name.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{amqp_url, percent_encode, spawn_app_with, TestApp};

const FRAME_END: u8 = 0xCE;
/// Enough to hold the protocol header and `connection.start-ok`.
const SNIFF_BYTES: usize = 16 * 1024;

pub struct AmqpProxy {
    pub port: u16,
    targets: Arc<Mutex<Vec<mpsc::UnboundedSender<Vec<u8>>>>>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl AmqpProxy {
    /// A gateway whose publish connection, alone, goes through a new proxy
    /// to the test broker; its instance id starts with `label`.
    pub async fn before_publish_connection(label: &str) -> (AmqpProxy, TestApp) {
        let upstream: lapin::uri::AMQPUri = amqp_url().parse().expect("a valid AMQP_URL");
        let instance_id = format!(
            "{label}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let proxy = AmqpProxy::start(
            format!("{}:{}", upstream.authority.host, upstream.authority.port),
            format!("workerrmq-{instance_id}-publish"),
        )
        .await;
        let url = format!(
            "amqp://{}:{}@127.0.0.1:{}/{}",
            percent_encode(&upstream.authority.userinfo.username),
            percent_encode(&upstream.authority.userinfo.password),
            proxy.port,
            percent_encode(&upstream.vhost)
        );
        let app = spawn_app_with(&[("AMQP_URL", &url), ("INSTANCE_ID", &instance_id)]).await;
        assert_eq!(
            proxy.targets_seen(),
            1,
            "the publish connection goes through the proxy"
        );
        (proxy, app)
    }

    /// Listens on a free port and forwards to `upstream` (`host:port`).
    /// Connections whose client name contains `target_name` can be blocked.
    pub async fn start(upstream: String, target_name: String) -> AmqpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the proxy listens");
        let port = listener.local_addr().expect("a local address").port();
        let targets: Arc<Mutex<Vec<mpsc::UnboundedSender<Vec<u8>>>>> = Arc::default();
        let tasks: Arc<Mutex<JoinSet<()>>> = Arc::default();
        let (accept_targets, accept_tasks) = (targets.clone(), tasks.clone());
        tasks.lock().unwrap().spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let targets = accept_targets.clone();
                let target_name = target_name.clone();
                accept_tasks
                    .lock()
                    .unwrap()
                    .spawn(relay(client, server, target_name, targets));
            }
        });
        AmqpProxy {
            port,
            targets,
            tasks,
        }
    }

    /// How many target connections went through so far.
    pub fn targets_seen(&self) -> usize {
        self.targets.lock().unwrap().len()
    }

    /// Sends `connection.blocked` to every target connection.
    pub fn block(&self, reason: &str) {
        let mut args = vec![reason.len() as u8];
        args.extend_from_slice(reason.as_bytes());
        self.inject(method_frame(10, 60, &args));
    }

    /// Sends `connection.unblocked` to every target connection.
    pub fn unblock(&self) {
        self.inject(method_frame(10, 61, &[]));
    }

    fn inject(&self, frame: Vec<u8>) {
        for target in self.targets.lock().unwrap().iter() {
            let _ = target.send(frame.clone());
        }
    }
}

impl Drop for AmqpProxy {
    fn drop(&mut self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

/// A method frame on channel 0.
fn method_frame(class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(4 + args.len());
    payload.extend_from_slice(&class.to_be_bytes());
    payload.extend_from_slice(&method.to_be_bytes());
    payload.extend_from_slice(args);
    let mut frame = vec![1, 0, 0];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(FRAME_END);
    frame
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    target_name: String,
    targets: Arc<Mutex<Vec<mpsc::UnboundedSender<Vec<u8>>>>>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (to_client, mut frames) = mpsc::unbounded_channel::<Vec<u8>>();

    // Everything for the client goes through one writer, whole frames only.
    let writer = async move {
        while let Some(frame) = frames.recv().await {
            if client_write.write_all(&frame).await.is_err() {
                break;
            }
        }
    };
    let from_server = {
        let to_client = to_client.clone();
        async move {
            loop {
                let mut header = [0u8; 7];
                if server_read.read_exact(&mut header).await.is_err() {
                    break;
                }
                let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]);
                let mut frame = header.to_vec();
                frame.resize(7 + size as usize + 1, 0);
                if server_read.read_exact(&mut frame[7..]).await.is_err() {
                    break;
                }
                if to_client.send(frame).is_err() {
                    break;
                }
            }
        }
    };
    let from_client = async move {
        let mut seen = Vec::new();
        let mut tagged = false;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !tagged && seen.len() < SNIFF_BYTES {
                seen.extend_from_slice(&buffer[..n]);
                if contains(&seen, target_name.as_bytes()) {
                    tagged = true;
                    targets.lock().unwrap().push(to_client.clone());
                }
            }
            if server_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = from_server => {}
        _ = from_client => {}
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

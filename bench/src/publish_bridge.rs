//! `publish`'s HTTP peer: the least an HTTP front to RabbitMQ can do per
//! publish, in a process of its own as the gateway is. `POST
//! /publish/{queue}` publishes the body as it came, with the gateway's
//! properties and `mandatory`, on one of four confirm channels, and
//! answers 202 once the broker confirms it. No auth, no JSON, no check of
//! anything, and no return matching (its queue exists): what is left is
//! one HTTP exchange and one confirmed publish, which is what the
//! gateway's `/messagePublish` cannot go below. Driven by the same lean
//! client as the gateway, so the two rows differ only in the server.

use anyhow::Context;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use lapin::options::BasicPublishOptions;
use lapin::Channel;
use lapin::Confirmation;

use crate::scenarios::{amqp, confirm_channel, like_gateway};

pub const CHILD_FLAG: &str = "__serve_publish_bridge";
const CHANNELS: usize = 4;

struct Bridge {
    channels: Vec<Channel>,
    next: AtomicUsize,
}

async fn publish(
    bridge: web::Data<Bridge>,
    queue: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let i = bridge.next.fetch_add(1, Ordering::Relaxed) % CHANNELS;
    let confirm = async {
        bridge.channels[i]
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                like_gateway(),
            )
            .await?
            .await
    };
    match confirm.await {
        Ok(Confirmation::Ack(None)) => HttpResponse::Accepted().finish(),
        Ok(_) => HttpResponse::NotFound().finish(),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

/// The child's `main`: serves on `BIND_ADDR` until killed.
pub fn run_child() -> std::process::ExitCode {
    let Ok(bind) = std::env::var("BIND_ADDR") else {
        eprintln!("publish bridge: BIND_ADDR is not set");
        return std::process::ExitCode::from(2);
    };
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        return std::process::ExitCode::FAILURE;
    };
    let served = runtime.block_on(async {
        let connection = amqp().await?;
        let mut channels = Vec::with_capacity(CHANNELS);
        for _ in 0..CHANNELS {
            channels.push(confirm_channel(&connection).await?);
        }
        let bridge = web::Data::new(Bridge {
            channels,
            next: AtomicUsize::new(0),
        });
        HttpServer::new(move || {
            App::new()
                .app_data(bridge.clone())
                .route("/publish/{queue}", web::post().to(publish))
        })
        .bind(&bind)?
        .run()
        .await
        .map_err(anyhow::Error::from)
    });
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("publish bridge: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The bridge as a child process, killed when dropped.
pub struct PublishBridge {
    child: std::process::Child,
    pub address: std::net::SocketAddr,
}

impl PublishBridge {
    pub async fn start() -> anyhow::Result<Self> {
        let address = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr())?;
        let exe = std::env::current_exe()?;
        let child = std::process::Command::new(exe)
            .arg(CHILD_FLAG)
            .env("BIND_ADDR", address.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("cannot start the publish bridge")?;
        let bridge = Self { child, address };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(address).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("the publish bridge did not listen within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(bridge)
    }
}

impl Drop for PublishBridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

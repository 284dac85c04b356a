//! A minimal fast HTTP sink: answers 204 to everything, counts requests and,
//! for the latency scenario, records publish-to-sink time from the
//! `sent_ns` the payload carries. A slow sink (`start_with_delay`) answers
//! each request after a fixed delay, for `slow-target`. For `ordered`, the
//! requests whose body starts with a given prefix (one key's) can be
//! answered 503 for a while (`fail_prefix_for`), and the others are counted
//! apart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};

#[derive(Default)]
pub struct SinkState {
    pub received: AtomicU64,
    /// Messages taken (answered 2xx): a batch request counts its
    /// `x-workerrmq-batch-size`, any other request one.
    pub messages: AtomicU64,
    /// When the first request since the last reset came (ns since the
    /// epoch; 0: none yet), for rates taken from the first delivery.
    pub first_ns: AtomicU64,
    pub delay: Duration,
    pub latencies_ns: Mutex<Vec<u64>>,
    /// How long the delayed requests were held in all (ns) and how many:
    /// the delay the sink really gave, which a timer rounds up.
    pub held_ns: AtomicU64,
    pub held: AtomicU64,
    /// Bodies starting with this are answered 503 until the instant.
    pub failing: Mutex<Option<(Vec<u8>, std::time::Instant)>>,
    /// Requests taken with a 2xx whose body is not the failing prefix's.
    pub others_taken: AtomicU64,
    /// TCP connections accepted.
    pub connections: AtomicU64,
}

pub struct Sink {
    pub url: String,
    pub state: Arc<SinkState>,
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[derive(serde::Deserialize)]
struct Stamp {
    sent_ns: Option<u64>,
}

async fn receive(
    state: web::Data<SinkState>,
    request: actix_web::HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let _ = state
        .first_ns
        .compare_exchange(0, now_ns(), Ordering::Relaxed, Ordering::Relaxed);
    if !state.delay.is_zero() {
        let arrived = std::time::Instant::now();
        hold_until(arrived + state.delay).await;
        state
            .held_ns
            .fetch_add(arrived.elapsed().as_nanos() as u64, Ordering::Relaxed);
        state.held.fetch_add(1, Ordering::Relaxed);
    }
    if body.starts_with(b"{\"sent_ns\"") {
        if let Ok(Stamp {
            sent_ns: Some(sent),
        }) = serde_json::from_slice::<Stamp>(&body)
        {
            let took = now_ns().saturating_sub(sent);
            if let Ok(mut l) = state.latencies_ns.lock() {
                l.push(took);
            }
        }
    }
    state.received.fetch_add(1, Ordering::Relaxed);
    let failing = state.failing.lock().ok().and_then(|f| {
        f.as_ref()
            .map(|(prefix, until)| (body.starts_with(prefix), *until))
    });
    match failing {
        Some((true, until)) if std::time::Instant::now() < until => {
            return HttpResponse::ServiceUnavailable().finish();
        }
        Some((true, _)) => {}
        _ => {
            state.others_taken.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Only what is answered 2xx is taken: a batch the sink refused comes
    // again.
    let carried = request
        .headers()
        .get(gateway::headers::BATCH_SIZE)
        .and_then(|size| size.to_str().ok()?.parse().ok())
        .unwrap_or(1);
    state.messages.fetch_add(carried, Ordering::Relaxed);
    HttpResponse::NoContent().finish()
}

/// Waits until `deadline`, late by 0.2–0.3 ms on average here (the hand-off
/// to and from the blocking thread). tokio's timer alone works in
/// whole milliseconds and fires late (`sleep(20 ms)` held requests 21.1 ms
/// on average here), which would put the `slow-target` sink's latency, and
/// so its bound, 5% off the 20 ms it claims. The last stretch is slept on
/// a blocking thread, whose `nanosleep` is exact to tens of microseconds.
async fn hold_until(deadline: std::time::Instant) {
    const COARSE_SLACK: Duration = Duration::from_millis(2);
    let coarse = deadline.saturating_duration_since(std::time::Instant::now());
    if coarse > COARSE_SLACK {
        tokio::time::sleep(coarse - COARSE_SLACK).await;
    }
    let _ = tokio::task::spawn_blocking(move || {
        std::thread::sleep(deadline.saturating_duration_since(std::time::Instant::now()));
    })
    .await;
}

impl Sink {
    pub async fn start() -> anyhow::Result<Sink> {
        Self::start_with_delay(Duration::ZERO).await
    }

    pub async fn start_with_delay(delay: Duration) -> anyhow::Result<Sink> {
        Self::start_with(delay, false).await
    }

    /// A sink that also speaks HTTP/2 with prior knowledge (h2c), for
    /// `forward-h2`.
    pub async fn start_h2c() -> anyhow::Result<Sink> {
        Self::start_with(Duration::ZERO, true).await
    }

    async fn start_with(delay: Duration, h2c: bool) -> anyhow::Result<Sink> {
        let state = Arc::new(SinkState {
            delay,
            ..SinkState::default()
        });
        let data = web::Data::from(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let counted = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                .default_service(web::to(receive))
        })
        .on_connect(move |_, _| {
            counted.connections.fetch_add(1, Ordering::Relaxed);
        })
        .workers(1)
        .disable_signals();
        let server = if h2c {
            server.listen_auto_h2c(listener)?
        } else {
            server.listen(listener)?
        }
        .run();
        tokio::spawn(server);
        Ok(Sink {
            url: format!("http://127.0.0.1:{port}/sink"),
            state,
        })
    }

    pub fn received(&self) -> u64 {
        self.state.received.load(Ordering::Relaxed)
    }

    /// Requests whose body starts with `prefix` are answered 503 for `how_long`
    /// from now; `None` ends it.
    pub fn fail_prefix_for(&self, failing: Option<(&[u8], Duration)>) {
        if let Ok(mut f) = self.state.failing.lock() {
            *f = failing
                .map(|(prefix, how_long)| (prefix.to_vec(), std::time::Instant::now() + how_long));
        }
    }

    /// TCP connections accepted since the start.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// 2xx answers to bodies other than the failing prefix's, since the last
    /// reset.
    pub fn others_taken(&self) -> u64 {
        self.state.others_taken.load(Ordering::Relaxed)
    }

    pub fn reset(&self) {
        self.state.received.store(0, Ordering::Relaxed);
        self.state.messages.store(0, Ordering::Relaxed);
        self.state.others_taken.store(0, Ordering::Relaxed);
        self.state.first_ns.store(0, Ordering::Relaxed);
        self.state.held_ns.store(0, Ordering::Relaxed);
        self.state.held.store(0, Ordering::Relaxed);
        if let Ok(mut l) = self.state.latencies_ns.lock() {
            l.clear();
        }
    }

    /// The mean time a request was held since the last reset, in ms.
    pub fn mean_held_ms(&self) -> f64 {
        let held = self.state.held.load(Ordering::Relaxed).max(1);
        self.state.held_ns.load(Ordering::Relaxed) as f64 / held as f64 / 1e6
    }

    /// Time since the first request after the last reset.
    pub fn since_first(&self) -> Duration {
        Duration::from_nanos(now_ns().saturating_sub(self.state.first_ns.load(Ordering::Relaxed)))
    }

    /// Waits until the sink has seen `n` requests, or fails after `limit`.
    pub async fn wait_for(&self, n: u64, limit: Duration) -> anyhow::Result<()> {
        self.wait_until(|| self.received() >= n, limit)
            .await
            .map_err(|waited| {
                anyhow::anyhow!(
                    "the sink saw {} of {n} requests within {waited:?}",
                    self.received()
                )
            })
    }

    /// Waits until the requests the sink took (answered 2xx) since the last
    /// reset carried `n` messages, batches counted by their size.
    pub async fn wait_for_messages(&self, n: u64, limit: Duration) -> anyhow::Result<()> {
        let taken = || self.state.messages.load(Ordering::Relaxed);
        self.wait_until(|| taken() >= n, limit)
            .await
            .map_err(|waited| {
                anyhow::anyhow!(
                    "the sink took {} of {n} messages within {waited:?}",
                    taken()
                )
            })
    }

    /// Polls `done` every 2 ms; `Err(limit)` when it is not done within it.
    async fn wait_until(&self, done: impl Fn() -> bool, limit: Duration) -> Result<(), Duration> {
        let deadline = tokio::time::Instant::now() + limit;
        while !done() {
            if tokio::time::Instant::now() > deadline {
                return Err(limit);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}

//! The gateway under test, as a child process: this binary re-run with
//! `CHILD_FLAG`, so its RSS is the gateway's alone.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use workerrmq::configuration::Settings;
use workerrmq::startup::Application;

pub const CHILD_FLAG: &str = "__serve_gateway";

pub fn run_child() -> std::process::ExitCode {
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench gateway: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    workerrmq::telemetry::init(settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(_) => return std::process::ExitCode::FAILURE,
    };
    runtime.block_on(async {
        match Application::build(settings).await {
            Ok(app) => match app.run_until_stopped().await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(_) => std::process::ExitCode::FAILURE,
            },
            Err(e) => {
                eprintln!("bench gateway: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}

pub struct GatewayProcess {
    child: Child,
    pub base: String,
    pub password: String,
    pub db: String,
    pub instance_id: String,
    pub http: reqwest::Client,
}

impl GatewayProcess {
    pub async fn start() -> Result<GatewayProcess, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let password = uuid::Uuid::new_v4().simple().to_string();
        let db = format!("bench_{suffix}");
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .arg(CHILD_FLAG)
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("ADMIN_PASSWORD", &password)
            .env("MONGODB_DB", &db)
            .env("MONGODB_URI", without_retryable_writes(&store_uri()))
            .env("BUILTIN_CONSUMERS", "false")
            // `scale --consumers 10000` is past the default cap of 5,000.
            .env("MAX_CONSUMERS", "1000000")
            .env("INSTANCE_ID", format!("bench-{suffix}"))
            .env("LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                std::env::var("BENCH_GATEWAY_LOG").unwrap_or_else(|_| "warn".into()),
            )
            // Its logs (on stdout) would mix with the table; asked for with
            // BENCH_GATEWAY_LOG, they go to stderr.
            .stdout(if std::env::var_os("BENCH_GATEWAY_LOG").is_some() {
                Stdio::from(std::io::stderr())
            } else {
                Stdio::null()
            })
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the gateway: {e}"))?;
        let gateway = GatewayProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            password,
            db,
            instance_id: format!("bench-{suffix}"),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(128)
                .build()
                .map_err(|e| e.to_string())?,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = gateway
                .http
                .get(format!("{}/ready", gateway.base))
                .send()
                .await;
            if matches!(ready, Ok(ref r) if r.status().is_success()) {
                return Ok(gateway);
            }
            if tokio::time::Instant::now() > deadline {
                return Err("the gateway did not become ready within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .basic_auth("admin", Some(&self.password));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| format!("{path}: {e}"))?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(format!("{path} answered {status}: {value}"));
        }
        Ok(value)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> Result<Value, String> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// Resident set size of the gateway process.
    pub fn rss_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    /// SIGTERM, then drop the bench database.
    pub async fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(store) = services::Store::connect(&store_uri(), &self.db).await {
            let _ = store.database().drop().await;
        }
    }
}

fn store_uri() -> String {
    std::env::var("MONGODB_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into())
}

/// `uri` with `retryWrites=false` unless it says otherwise. SecantusDB
/// presents itself as a replica set, so the driver makes every write
/// retryable, and SecantusDB keeps every retryable write's reply (up to
/// 10,000, for 30 minutes), walking them all on each write and sorting
/// them once full: past ~10,000 writes each write took milliseconds more,
/// which is the store, not the gateway (mongod keeps one per session).
fn without_retryable_writes(uri: &str) -> String {
    if uri.contains("retryWrites") {
        return uri.to_owned();
    }
    let hosts_and_path = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    if uri.contains('?') {
        format!("{uri}&retryWrites=false")
    } else if hosts_and_path.contains('/') {
        format!("{uri}?retryWrites=false")
    } else {
        format!("{uri}/?retryWrites=false")
    }
}

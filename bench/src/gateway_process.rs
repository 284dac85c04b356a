//! The gateway under test, as a child process: the `workerrmq` binary
//! started by `testkit`, so its RSS is the gateway's alone; how a scenario
//! that needs its own gateway sets it up (`GatewaySetup`: extra variables,
//! its database, how long it may take to start); and the admin calls the
//! scenarios make to it, `/metrics` included.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use credentials::ExposeSecret;
use serde_json::Value;
use testkit::GatewayCommand;

const READY_DEADLINE: Duration = Duration::from_secs(30);
const STOP_DEADLINE: Duration = Duration::from_secs(15);

/// What a scenario may change in the gateway it starts; the default is the
/// shared gateway every other scenario uses.
#[derive(Debug, Clone)]
pub struct GatewaySetup {
    /// Variables set besides the bench's own (e.g. `ATTEMPT_LOG`).
    pub env: Vec<(String, String)>,
    /// The database, when the scenario filled it before the start; else a
    /// new one. Either way it is dropped at `stop`.
    pub db: Option<String>,
    /// How long `/ready` may take.
    pub ready_deadline: Duration,
}

impl Default for GatewaySetup {
    fn default() -> Self {
        Self {
            env: Vec::new(),
            db: None,
            ready_deadline: READY_DEADLINE,
        }
    }
}

pub struct GatewayProcess {
    process: testkit::GatewayProcess,
    pub base: String,
    pub password: String,
    pub db: String,
    pub instance_id: String,
    pub http: reqwest::Client,
}

impl GatewayProcess {
    /// The gateway the scenarios share. Their peers record nothing, so it
    /// runs with the attempt log off unless the bench's own environment sets
    /// `ATTEMPT_LOG`; what the log costs is `forward-history`'s measure.
    pub async fn start() -> anyhow::Result<GatewayProcess> {
        let mut setup = GatewaySetup::default();
        if std::env::var_os("ATTEMPT_LOG").is_none() {
            setup.env.push(("ATTEMPT_LOG".into(), "off".into()));
        }
        Self::start_with(setup).await
    }

    pub async fn start_with(setup: GatewaySetup) -> anyhow::Result<GatewayProcess> {
        let binary = testkit::gateway_binary()?;
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let password = uuid::Uuid::new_v4().simple().to_string();
        let (_, secrets_key) = credentials::SecretsKey::generate();
        let db = setup.db.unwrap_or_else(|| format!("bench_{suffix}"));
        let instance_id = format!("bench-{suffix}");
        // The bench's own environment (AMQP_URL, the management API) is
        // the gateway's too; what the bench needs set is set here.
        let mut process = GatewayCommand::new(&binary)?
            .env("ADMIN_PASSWORD", &password)
            .env("SECRETS_KEY", secrets_key.expose_secret())
            .env("MONGODB_DB", &db)
            .env("MONGODB_URI", without_retryable_writes(&store_uri()))
            .env("BUILTIN_CONSUMERS", "false")
            // `scale --consumers 10000` is past the default cap of 5,000.
            .env("MAX_CONSUMERS", "1000000")
            .env("INSTANCE_ID", &instance_id)
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
            .envs(setup.env)
            .spawn()?;
        process.wait_until_ready(setup.ready_deadline).await?;
        Ok(GatewayProcess {
            base: process.base_url(),
            process,
            password,
            db,
            instance_id,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(128)
                // Under the gateway's keep-alive (actix-web's 5 s): a call
                // after a long preload otherwise went out on a connection
                // the gateway was closing ("connection closed before message
                // completed") and failed the run.
                .pool_idle_timeout(Duration::from_secs(3))
                .build()?,
        })
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .basic_auth("admin", Some(&self.password));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.with_context(|| path.to_owned())?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            anyhow::bail!("{path} answered {status}: {value}");
        }
        Ok(value)
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// `/metrics`, as text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let response = self
            .http
            .get(format!("{}/metrics", self.base))
            .basic_auth("admin", Some(&self.password))
            .send()
            .await
            .context("/metrics")?;
        let status = response.status();
        if !status.is_success() {
            anyhow::bail!("/metrics answered {status}");
        }
        response.text().await.context("reading /metrics")
    }

    /// CPU time the gateway process has used so far (user and system, all
    /// its threads, the ended ones too), seconds; `None` when unknown.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.pid())).ok()?;
        // The fields after the command's `(…)`, which may hold spaces:
        // utime and stime are the 14th and 15th of the whole line.
        let (_, after_command) = stat.rsplit_once(')')?;
        let mut fields = after_command.split_whitespace().skip(11);
        let utime: f64 = fields.next()?.parse().ok()?;
        let stime: f64 = fields.next()?.parse().ok()?;
        Some((utime + stime) / clock_ticks_per_second()?)
    }

    /// Resident set size of the gateway process.
    pub fn rss_mib(&self) -> f64 {
        self.process.rss_mib()
    }

    /// SIGTERM, then drop the bench database.
    pub async fn stop(mut self) {
        let stopped = match self.process.terminate() {
            Ok(()) => self.process.wait_for_exit(STOP_DEADLINE).await,
            Err(e) => Err(e),
        };
        if !matches!(stopped, Ok(Some(_))) {
            eprintln!("bench: the gateway did not stop within {STOP_DEADLINE:?}; killing it");
        }
        self.process.kill();
        if let Err(e) = drop_database(&self.db).await {
            eprintln!("bench: cannot drop the database {}: {e:#}", self.db);
        }
    }
}

async fn drop_database(db: &str) -> anyhow::Result<()> {
    let client = mongodb::Client::with_uri_str(store_uri()).await?;
    client.database(db).drop().await?;
    Ok(())
}

/// `/proc`'s clock ticks a second (`getconf CLK_TCK`), asked once.
fn clock_ticks_per_second() -> Option<f64> {
    static TICKS: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let output = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()?;
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|t| *t > 0.0)
    })
}

/// The value of the metric `name` in a `/metrics` text, summed over its
/// label sets; `None` when absent.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // `name value` or `name{labels} value`, not a longer name.
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest
            .rsplit_once('}')
            .map_or(rest, |(_, v)| v)
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// The store the bench and its gateways use (`MONGODB_URI`).
pub fn store_uri() -> String {
    std::env::var("MONGODB_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into())
}

/// `uri` with `retryWrites=false` unless it says otherwise. SecantusDB
/// presents itself as a replica set, so the driver makes every write
/// retryable, and SecantusDB keeps every retryable write's reply (up to
/// 10,000, for 30 minutes), walking them all on each write and sorting
/// them once full: past ~10,000 writes each write took milliseconds more,
/// which is the store, not the gateway (mongod keeps one per session).
pub fn without_retryable_writes(uri: &str) -> String {
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

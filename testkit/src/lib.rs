//! `testkit`: the real gateway binary as a child process, shared by the
//! integration tests and the bench, so both see what an operator runs: its
//! own process (RSS, SIGTERM, SIGKILL), its own configuration from the
//! environment, and `/ready` as the only sign that it is up.
//!
//! Nothing of the product depends on this crate; the tests take it as a
//! dev-dependency and the bench as a dependency.

use std::ffi::{OsStr, OsString};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every variable the gateway reads. `GatewayCommand::isolated` removes
/// them from what the child inherits, so it gets exactly what its caller
/// gives it, whatever the developer's environment holds.
pub const GATEWAY_VARIABLES: &[&str] = &[
    "ADMIN_PASSWORD",
    "ADMIN_USER",
    "AMQP_URL",
    "BIND_ADDR",
    "BUILTIN_CONSUMERS",
    "BUILTIN_QUEUE_PREFIX",
    "DEFAULT_QUEUE_TYPE",
    "DEFAULT_TARGET_URL",
    "FORWARD_ALLOWED_HOSTS",
    "INSTANCE_ID",
    "LOG_FORMAT",
    "MAX_BODY_BYTES",
    "MONGODB_DB",
    "MONGODB_URI",
    "RABBITMQ_MANAGEMENT_PASSWORD",
    "RABBITMQ_MANAGEMENT_URL",
    "RABBITMQ_MANAGEMENT_USER",
    "RUST_LOG",
    "SECRETS_KEY",
    "SECRETS_KEY_PREVIOUS",
    "TRUSTED_PROXIES",
];

/// Where `gateway_binary` looks first: a gateway binary built elsewhere.
pub const BINARY_VARIABLE: &str = "WORKERRMQ_BIN";

/// How often a wait looks at the child again.
const POLL: Duration = Duration::from_millis(50);
/// One `/ready` probe; a gateway that takes longer is not ready yet.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a gateway could not be found, built, started, watched or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No port on the loopback interface could be bound.
    #[error("no free port for the gateway: {0}")]
    Port(std::io::Error),
    /// The binary could not be started.
    #[error("cannot start the gateway binary {binary}: {source}")]
    Spawn {
        /// The binary's path, as given to `GatewayCommand::new`.
        binary: String,
        /// Why the operating system refused.
        source: std::io::Error,
    },
    /// The child's state could not be read.
    #[error("cannot look at the gateway process: {0}")]
    Wait(std::io::Error),
    /// The child exited before `/ready` answered 200.
    #[error("the gateway exited before it was ready: {0}")]
    Exited(ExitStatus),
    /// `/ready` did not answer 200 within this deadline.
    #[error("the gateway was not ready within {0:?}")]
    NotReady(Duration),
    /// SIGTERM could not be sent.
    #[error("cannot send SIGTERM to the gateway ({pid}): {reason}")]
    Terminate {
        /// The gateway's process id.
        pid: u32,
        /// Why `kill -TERM` could not run or failed.
        reason: String,
    },
    /// No gateway binary: cargo failed to build one, or none was found beside
    /// the running executable.
    #[error("cannot build the gateway binary with `{command}`: {reason}")]
    Build {
        /// The cargo command run, or the one that would build the binary.
        command: String,
        /// Why it failed, or what to do.
        reason: String,
    },
}

/// A free port on the loopback interface right now.
pub fn free_port() -> Result<u16, GatewayError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|address| address.port())
        .map_err(GatewayError::Port)
}

/// The gateway binary to run, in this order: `WORKERRMQ_BIN` when set;
/// under `cargo run` (cargo sets `CARGO`), the workspace's `workerrmq`
/// built by that cargo now, in the caller's profile, so a run never
/// measures a stale build; else the `workerrmq` beside the running
/// executable (`target/<profile>/`). Tests use
/// `env!("CARGO_BIN_EXE_workerrmq")` instead.
pub fn gateway_binary() -> Result<PathBuf, GatewayError> {
    if let Some(path) = std::env::var_os(BINARY_VARIABLE) {
        return Ok(PathBuf::from(path));
    }
    if let Some(cargo) = std::env::var_os("CARGO") {
        return build_gateway(&cargo);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("workerrmq")))
        .filter(|path| path.is_file());
    beside.ok_or_else(|| GatewayError::Build {
        command: "cargo build -p workerrmq".into(),
        reason: format!(
            "no `workerrmq` beside this executable: build it (with --release for a release bench) or set {BINARY_VARIABLE}"
        ),
    })
}

/// `cargo build -p workerrmq --bin workerrmq` for this workspace; the path
/// of the executable cargo names.
fn build_gateway(cargo: &OsStr) -> Result<PathBuf, GatewayError> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut command = Command::new(cargo);
    command
        .args(["build", "-p", "workerrmq", "--bin", "workerrmq"])
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(&manifest);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let shown = format!("{command:?}");
    let failed = |reason: String| GatewayError::Build {
        command: shown.clone(),
        reason,
    };
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        return Err(failed(output.status.to_string()));
    }
    // The last artifact message names the binary cargo just built.
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact" && message["target"]["name"] == "workerrmq"
        })
        .filter_map(|message| message["executable"].as_str().map(PathBuf::from))
        .next()
        .ok_or_else(|| failed("cargo named no `workerrmq` executable".into()))
}

/// How one gateway is started: the binary on a free port (`BIND_ADDR`),
/// run from the temporary directory so the workspace's `.env` never
/// reaches it.
pub struct GatewayCommand {
    binary: OsString,
    command: Command,
    port: u16,
}

impl GatewayCommand {
    /// Prepares `binary` on a port that is free now; the child inherits the
    /// caller's environment unless `isolated` is called. Fails when no port
    /// is free.
    pub fn new(binary: impl AsRef<OsStr>) -> Result<Self, GatewayError> {
        let port = free_port()?;
        let mut command = Command::new(binary.as_ref());
        command
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null());
        Ok(Self {
            binary: binary.as_ref().to_owned(),
            command,
            port,
        })
    }

    /// Nothing of `GATEWAY_VARIABLES` inherited but `keep`; call before
    /// setting variables.
    pub fn isolated(mut self, keep: &[&str]) -> Self {
        for key in GATEWAY_VARIABLES {
            if !keep.contains(key) {
                self.command.env_remove(key);
            }
        }
        self
    }

    /// Sets one variable for the child; `BIND_ADDR` is always overridden by
    /// `spawn`.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    /// Sets several variables for the child, as `env` does.
    pub fn envs<K, V>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.command.envs(vars);
        self
    }

    /// Where the child's standard output goes; inherited when not set.
    pub fn stdout(mut self, to: impl Into<Stdio>) -> Self {
        self.command.stdout(to);
        self
    }

    /// Where the child's standard error goes; inherited when not set.
    pub fn stderr(mut self, to: impl Into<Stdio>) -> Self {
        self.command.stderr(to);
        self
    }

    /// The loopback port the gateway will listen on, chosen by `new`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the child; see `GatewayProcess::wait_until_ready`.
    pub fn spawn(mut self) -> Result<GatewayProcess, GatewayError> {
        let child = self
            .command
            .env("BIND_ADDR", format!("127.0.0.1:{}", self.port))
            .spawn()
            .map_err(|source| GatewayError::Spawn {
                binary: self.binary.to_string_lossy().into_owned(),
                source,
            })?;
        Ok(GatewayProcess {
            child,
            port: self.port,
        })
    }
}

/// A running gateway; dropping it kills the child, so a failing test or
/// bench never leaves one behind.
pub struct GatewayProcess {
    child: Child,
    port: u16,
}

impl GatewayProcess {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The loopback port the gateway listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Polls `GET /ready` until it answers 200; fails at once when the
    /// child exits, and after `deadline`.
    pub async fn wait_until_ready(&mut self, deadline: Duration) -> Result<(), GatewayError> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(GatewayError::Wait)? {
                return Err(GatewayError::Exited(status));
            }
            if ready_status(self.port).await == Some(200) {
                return Ok(());
            }
            if started.elapsed() >= deadline {
                return Err(GatewayError::NotReady(deadline));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILL (unless it has exited), and reap it.
    pub fn kill(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// SIGTERM; returns at once.
    pub fn terminate(&self) -> Result<(), GatewayError> {
        let pid = self.pid();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .map_err(|e| GatewayError::Terminate {
                pid,
                reason: e.to_string(),
            })?;
        if !status.success() {
            return Err(GatewayError::Terminate {
                pid,
                reason: format!("kill(1) {status}"),
            });
        }
        Ok(())
    }

    /// Waits for the process to exit; `None` if it still runs at `deadline`.
    pub async fn wait_for_exit(
        &mut self,
        deadline: Duration,
    ) -> Result<Option<ExitStatus>, GatewayError> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(GatewayError::Wait)? {
                return Ok(Some(status));
            }
            if started.elapsed() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident set size of the gateway process, MiB; 0 when unknown.
    pub fn rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The status `GET /ready` answers with, over a plain HTTP/1.1 exchange;
/// `None` when nothing (or nothing readable) answers in time.
async fn ready_status(port: u16) -> Option<u16> {
    let probe = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream
            .write_all(b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = Vec::with_capacity(128);
        let mut buffer = [0u8; 256];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
            let n = stream.read(&mut buffer).await.ok()?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buffer[..n]);
        }
        let status_line = std::str::from_utf8(&head).ok()?.lines().next()?;
        status_line.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .ok()
        .flatten()
}

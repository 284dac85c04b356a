//! The real gateway binary as a child process, for what only a process can
//! show: SIGKILL, SIGTERM, a restart, two replicas on one broker and store.
//!
//! A `Deployment` is one test's world: a name prefix for its queues, its own
//! MongoDB database and admin password, shared by every gateway process it
//! starts. Dropping a `GatewayProcess` kills the child, so a failing test
//! never leaves a gateway running; dropping the `Deployment` (declare it
//! before its gateways, so it drops after them) deletes the queues under its
//! prefix and drops its database.

use std::fs::File;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use lapin::Connection;
use testkit::GatewayCommand;
use tokio::sync::OnceCell;

use super::amqp::connection_properties;
use super::api::Api;
use super::cleanup::{CleanupPlan, RestoreStep};
use super::env::{env_or, DEFAULT_AMQP_URL, DEFAULT_MONGODB_URI, TEST_DB_PREFIX};
use super::http::basic_auth;

const READY_DEADLINE: Duration = Duration::from_secs(30);

pub struct Deployment {
    pub prefix: String,
    pub db_name: String,
    admin_password: String,
    /// The `SECRETS_KEY` every gateway of the deployment starts with,
    /// unless a test gives another.
    pub secrets_key: String,
    amqp_url: String,
    /// `None`: the environment's (`RABBITMQ_MANAGEMENT_URL`).
    management_url: Option<String>,
    mongodb_uri: String,
    amqp: OnceCell<Connection>,
    /// Run first by the cleanup, even after a panic (`restore_on_cleanup`).
    restore: std::sync::Mutex<Vec<RestoreStep>>,
}

impl Deployment {
    pub fn new() -> Deployment {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Deployment {
            prefix: format!("p{id}_"),
            db_name: format!("{TEST_DB_PREFIX}p{id}"),
            admin_password: uuid::Uuid::new_v4().simple().to_string(),
            secrets_key: super::app::secrets_key_of(&format!("{TEST_DB_PREFIX}p{id}")),
            amqp_url: env_or("AMQP_URL", DEFAULT_AMQP_URL),
            management_url: None,
            mongodb_uri: env_or("MONGODB_URI", DEFAULT_MONGODB_URI),
            amqp: OnceCell::new(),
            restore: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A deployment on another broker: `amqp_url` (one URL) for the test's
    /// own connection and the cleanup, `management_url` for the cleanup's
    /// look at what is left. Gateways get their broker lists through
    /// `start_gateway_with`'s variables.
    pub fn on_broker(amqp_url: &str, management_url: &str) -> Deployment {
        let mut deployment = Deployment::new();
        deployment.amqp_url = amqp_url.to_owned();
        deployment.management_url = Some(management_url.to_owned());
        deployment
    }

    /// `step` runs when the deployment is cleaned up (or dropped by a
    /// panicking test), before its queues are deleted.
    pub fn restore_on_cleanup(&self, step: impl FnOnce() -> Result<(), String> + Send + 'static) {
        self.restore.lock().unwrap().push(Box::new(step));
    }

    /// A queue name under this deployment's prefix.
    pub fn queue(&self, label: &str) -> String {
        format!("{}{label}", self.prefix)
    }

    /// A fresh instance id, unique to this deployment.
    pub fn instance_id(&self, label: &str) -> String {
        format!("{}-{label}", &self.prefix[1..13])
    }

    /// The test's own AMQP connection (plain lapin).
    pub async fn amqp(&self) -> &Connection {
        self.amqp
            .get_or_init(|| async {
                Connection::connect(&self.amqp_url, connection_properties())
                    .await
                    .expect("the tests reach the broker")
            })
            .await
    }

    /// Starts the gateway binary with this deployment's store and the given
    /// instance id, and waits until `/ready` answers 200.
    pub async fn start_gateway(&self, instance_id: &str) -> GatewayProcess {
        self.start_gateway_with(instance_id, &[], None).await
    }

    /// `start_gateway` with `vars` set over the defaults, and the child's
    /// stdout and stderr written to `output` instead of the test's own.
    pub async fn start_gateway_with(
        &self,
        instance_id: &str,
        vars: &[(&str, &str)],
        output: Option<&File>,
    ) -> GatewayProcess {
        let mut gateway = self.spawn_gateway(instance_id, vars, output);
        gateway.wait_until_ready().await;
        gateway
    }

    /// Starts a gateway that is expected not to start: waits for it to
    /// exit (within `READY_DEADLINE`) and returns how it ended and what it
    /// wrote.
    pub async fn gateway_refusing_to_start(
        &self,
        instance_id: &str,
        vars: &[(&str, &str)],
    ) -> (ExitStatus, String) {
        let path = std::env::temp_dir().join(format!("{}{instance_id}.log", self.prefix));
        let file = File::create(&path).expect("a log file for the gateway");
        let mut gateway = self.spawn_gateway(instance_id, vars, Some(&file));
        let status = gateway
            .wait_for_exit(READY_DEADLINE)
            .await
            .unwrap_or_else(|| panic!("gateway {instance_id} still runs after {READY_DEADLINE:?}"));
        let output = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        (status, output)
    }

    fn spawn_gateway(
        &self,
        instance_id: &str,
        vars: &[(&str, &str)],
        output: Option<&File>,
    ) -> GatewayProcess {
        let mut command = GatewayCommand::new(env!("CARGO_BIN_EXE_workerrmq"))
            .expect("a free port")
            // Only the management API's address and credentials come from
            // the developer's environment.
            .isolated(&[
                "RABBITMQ_MANAGEMENT_URL",
                "RABBITMQ_MANAGEMENT_USER",
                "RABBITMQ_MANAGEMENT_PASSWORD",
            ]);
        let port = command.port();
        command = command
            .env("AMQP_URL", &self.amqp_url)
            .env("MONGODB_URI", &self.mongodb_uri)
            .env("MONGODB_DB", &self.db_name)
            .env("ADMIN_USER", "admin")
            .env("ADMIN_PASSWORD", &self.admin_password)
            .env("SECRETS_KEY", &self.secrets_key)
            .env("INSTANCE_ID", instance_id)
            .env("BUILTIN_CONSUMERS", "false")
            .env("BUILTIN_QUEUE_PREFIX", &self.prefix)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", env_or("GATEWAY_LOG", "warn"))
            .envs(vars.iter().copied());
        command = match output {
            Some(file) => command
                .stdout(file.try_clone().expect("the output file"))
                .stderr(file.try_clone().expect("the output file")),
            None => command.stdout(Stdio::inherit()).stderr(Stdio::inherit()),
        };
        let process = command.spawn().expect("the gateway binary starts");
        GatewayProcess {
            process,
            instance_id: instance_id.to_owned(),
            api: Api::new(
                format!("http://127.0.0.1:{port}"),
                basic_auth("admin", &self.admin_password),
            ),
        }
    }

    fn plan(&self) -> CleanupPlan {
        let plan = CleanupPlan::under_prefix(
            self.prefix.clone(),
            self.amqp_url.clone(),
            self.mongodb_uri.clone(),
            self.db_name.clone(),
        )
        .restoring(std::mem::take(&mut *self.restore.lock().unwrap()));
        match &self.management_url {
            Some(base) => plan.with_management(base.clone()),
            None => plan,
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.plan().run_detached();
    }
}

/// How long a consumer created on one replica may take to run on another.
const ON_BOTH: Duration = Duration::from_secs(5);

impl Deployment {
    /// Creates `queue` and an HTTP consumer on it through `a` (`extra` are
    /// more create fields), then waits until it runs on `b` too and the
    /// broker lists both replicas' consumers: where two-replica tests start.
    pub async fn consumer_on_both(
        &self,
        a: &GatewayProcess,
        b: &GatewayProcess,
        queue: &str,
        url: &str,
        extra: serde_json::Value,
    ) -> String {
        a.api.create_queue(queue).await;
        let consumer = a.api.create_http_consumer(queue, url, extra).await;
        b.api
            .wait_for_consumer(&consumer, ON_BOTH, "running on the second replica", |v| {
                v["state"] == "running"
            })
            .await;
        super::wait_for_queue(
            self.amqp().await,
            queue,
            ON_BOTH,
            "consumed by both replicas",
            |_, consumers| consumers == 2,
        )
        .await;
        consumer
    }
}

/// One gateway of a deployment, with an API client logged in as its admin.
pub struct GatewayProcess {
    process: testkit::GatewayProcess,
    pub instance_id: String,
    pub api: Api,
}

impl GatewayProcess {
    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM; returns at once.
    pub fn terminate(&self) {
        if let Err(err) = self.process.terminate() {
            panic!("{err}");
        }
    }

    /// Waits for the process to exit; `None` if it still runs at `deadline`.
    pub async fn wait_for_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        self.process
            .wait_for_exit(deadline)
            .await
            .expect("try_wait")
    }

    async fn wait_until_ready(&mut self) {
        if let Err(err) = self.process.wait_until_ready(READY_DEADLINE).await {
            panic!("gateway {}: {err}", self.instance_id);
        }
    }
}

//! What a test leaves on the broker and in the store, and how it goes away:
//! one `CleanupPlan` per fixture that makes broker or store objects, run
//! when the fixture is dropped — after a passing test and during a
//! panicking one alike — on a thread of its own that the drop waits for, so
//! it is done before the test process exits.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::Connection;

use super::amqp::connection_properties;
use super::env::{management_url, vhost_path, TEST_DB_PREFIX};
use super::management::{management_client, management_request, try_management_list};

/// Removing what a test made takes a few requests; a broker or store that
/// hangs must not hang the test run.
const REMOVAL_DEADLINE: Duration = Duration::from_secs(60);

/// What a test leaves on the broker and in the store, and how to remove it:
/// the queues (with their `.dlq`) and exchanges it named, everything else
/// under its prefix, and its database.
pub struct CleanupPlan {
    prefix: String,
    queues: BTreeSet<String>,
    exchanges: BTreeSet<String>,
    amqp_url: String,
    vhost_path: String,
    management_base: String,
    /// Run first, in order: what could make objects again is stopped, and
    /// what a test changed on the broker itself (a stopped cluster node) is
    /// put back, before its queues are deleted.
    restore: Vec<RestoreStep>,
    mongodb_uri: String,
    db_name: String,
}

/// A blocking step that stops or puts back something; `Err` says what
/// stays broken.
pub type RestoreStep = Box<dyn FnOnce() -> Result<(), String> + Send>;

impl CleanupPlan {
    /// Everything under `prefix`, and the database `db_name`; the broker's
    /// vhost and management API are the environment's.
    pub fn under_prefix(
        prefix: String,
        amqp_url: String,
        mongodb_uri: String,
        db_name: String,
    ) -> Self {
        CleanupPlan {
            prefix,
            queues: BTreeSet::new(),
            exchanges: BTreeSet::new(),
            amqp_url,
            vhost_path: vhost_path(),
            management_base: management_url(),
            restore: Vec::new(),
            mongodb_uri,
            db_name,
        }
    }

    /// These queues (and their `.dlq`) and exchanges too, whatever their
    /// names.
    pub fn naming(mut self, queues: BTreeSet<String>, exchanges: BTreeSet<String>) -> Self {
        self.queues = queues;
        self.exchanges = exchanges;
        self
    }

    /// The broker's vhost, as management-API paths spell it, instead of the
    /// environment's.
    pub fn in_vhost(mut self, vhost_path: String) -> Self {
        self.vhost_path = vhost_path;
        self
    }

    /// The broker's management API at `base` instead of the environment's.
    pub fn with_management(mut self, base: String) -> Self {
        self.management_base = base;
        self
    }

    /// `steps` run before anything is removed.
    pub fn restoring(mut self, steps: Vec<RestoreStep>) -> Self {
        self.restore.extend(steps);
        self
    }

    /// `step` runs before the other steps and before anything is removed.
    pub fn first(mut self, step: RestoreStep) -> Self {
        self.restore.insert(0, step);
        self
    }

    /// Runs the plan for a fixture's `Drop`, which cannot await and may run
    /// on a runtime blocked on it: on a thread and runtime of its own, waited
    /// for. A failure fails the test, unless it already fails (a second
    /// panic would abort the process and hide the first).
    pub fn run_detached(self) {
        report(
            "the test cleans up after itself",
            on_own_thread(move || self.run()),
        );
    }

    pub async fn run(mut self) -> Result<(), String> {
        let mut restore_failures = Vec::new();
        for step in std::mem::take(&mut self.restore) {
            let outcome = tokio::task::spawn_blocking(step)
                .await
                .unwrap_or_else(|e| Err(format!("the restore step panicked: {e}")));
            if let Err(err) = outcome {
                restore_failures.push(err);
            }
        }
        let outcome = tokio::time::timeout(REMOVAL_DEADLINE, self.remove_everything())
            .await
            .unwrap_or_else(|_| Err(format!("not done within {REMOVAL_DEADLINE:?}")));
        if !restore_failures.is_empty() {
            return Err(format!(
                "could not restore: {}",
                restore_failures.join("; ")
            ));
        }
        outcome
    }

    async fn remove_everything(self) -> Result<(), String> {
        // What the test registered, its companions, and whatever else the
        // broker holds under the test's prefix (retry queues, …).
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        let mut queues = self.queues.clone();
        for queue in &self.queues {
            queues.insert(format!("{queue}.dlq"));
        }
        queues.extend(self.listed(&http, "queues").await?);
        let mut exchanges = self.exchanges.clone();
        exchanges.extend(self.listed(&http, "exchanges").await?);

        let connection = Connection::connect(&self.amqp_url, connection_properties())
            .await
            .map_err(|e| format!("cannot connect to the broker: {e}"))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        for queue in &queues {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(|e| format!("cannot delete queue `{queue}`: {e}"))?;
        }
        for exchange in &exchanges {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .map_err(|e| format!("cannot delete exchange `{exchange}`: {e}"))?;
        }
        let _ = connection.close(200, "test cleanup done".into()).await;

        // Only a database the tests named themselves: a test that points
        // MONGODB_DB somewhere else must not drop what it did not make.
        if !self.db_name.starts_with(TEST_DB_PREFIX) {
            return Ok(());
        }
        let client = mongodb::Client::with_uri_str(&self.mongodb_uri)
            .await
            .map_err(|e| format!("cannot reach the store: {e}"))?;
        client
            .database(&self.db_name)
            .drop()
            .await
            .map_err(|e| format!("cannot drop database `{}`: {e}", self.db_name))?;
        Ok(())
    }

    /// The names of the vhost's `kind` (queues, exchanges) under the prefix.
    async fn listed(&self, http: &reqwest::Client, kind: &str) -> Result<Vec<String>, String> {
        let rows = try_management_list(http, &self.management_base, &self.vhost_path, kind, "name")
            .await?;
        Ok(rows
            .iter()
            .filter_map(|row| row["name"].as_str())
            .filter(|name| name.starts_with(&self.prefix))
            .map(str::to_owned)
            .collect())
    }
}

/// Deletes what a test made on the broker outside any prefix (a user, a
/// vhost: `path` in the management API), for that fixture's `Drop`; gone
/// already is as good.
pub fn delete_in_management(path: String) {
    let what = format!("DELETE {path}");
    let outcome = on_own_thread(move || async move {
        let http = management_client();
        let response = management_request(&http, reqwest::Method::DELETE, &path)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match response.status().as_u16() {
            200..=299 | 404 => Ok(()),
            status => Err(format!("status {status}")),
        }
    });
    report(&what, outcome);
}

/// Runs `work` to its end on a new thread with a runtime of its own and
/// waits for it: how a `Drop` awaits. The caller's runtime may be a
/// current-thread one blocked in that very drop, so nothing here may need
/// it.
fn on_own_thread<F, Fut>(work: F) -> Result<(), String>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>>,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("no runtime for the cleanup: {e}"))?
            .block_on(work())
    })
    .join()
    .unwrap_or_else(|_| Err("the cleanup panicked".to_owned()))
}

/// Fails the test with `what` when `outcome` is an error; only prints it
/// while the test is already failing.
fn report(what: &str, outcome: Result<(), String>) {
    if let Err(err) = outcome {
        if std::thread::panicking() {
            eprintln!("{what} failed: {err}");
        } else {
            panic!("{what} failed: {err}");
        }
    }
}

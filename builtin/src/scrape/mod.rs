//! The `scrape` handler: runs a scrape job — fetches each URL with bounded
//! concurrency (`fetch`, behind the network guard), extracts title,
//! description, links and e-mail addresses (`extract`) — and moves the job
//! record through `scrape_jobs` (`jobs`).
//!
//! Idempotent by `job_id`: a finished job is never run again. A job has an
//! overall deadline (`SCRAPE_JOB_TIMEOUT_MS`), well inside the broker's
//! consumer timeout: past it the job completes with what it has, and each
//! URL not fetched yet says so.

mod extract;
mod fetch;
pub mod jobs;

use std::time::Duration;

use futures_util::StreamExt;

use gateway::{Attempt, DeliveryTarget, IncomingMessage};

use super::events::ScrapeJob;
use super::{outcome, Failure};
use fetch::Fetcher;
use jobs::{JobStore, PageResult, COMPLETED, FAILED};
use services::Store;

pub use extract::{emails_in_text, extract, Extracted};
pub use jobs::{
    delete_queued_job, find_job, insert_queued_job, JobView, QueueJobError, QUEUED, RUNNING,
};

/// What a URL not reached before the job's deadline says.
pub const DEADLINE_PASSED: &str = "job deadline passed before this URL was fetched";

/// How the scraper fetches.
#[derive(Debug, Clone)]
pub struct ScrapeSettings {
    /// `SCRAPE_ALLOWED_HOSTS`: when set, only these hosts are fetched (also
    /// as redirect targets), whatever they resolve to; when unset, any host
    /// whose address is outside (see `network`).
    pub allowed_hosts: Option<Vec<String>>,
    /// For one URL, from connecting to the last body byte.
    pub timeout: Duration,
    /// `SCRAPE_JOB_TIMEOUT_MS`: for the whole job.
    pub job_timeout: Duration,
    /// Bytes of a body read; the rest is not downloaded.
    pub max_body_bytes: usize,
    /// URLs of one job fetched at once.
    pub concurrency: usize,
}

impl Default for ScrapeSettings {
    fn default() -> Self {
        Self {
            allowed_hosts: None,
            timeout: Duration::from_secs(10),
            job_timeout: Duration::from_secs(300),
            max_body_bytes: 2 * 1024 * 1024,
            concurrency: 4,
        }
    }
}

/// The `scrape` handler: the delivery target that runs one scrape job per
/// message and records it in `scrape_jobs`.
pub struct ScrapeHandler {
    jobs: JobStore,
    fetcher: Fetcher,
    job_timeout: Duration,
    concurrency: usize,
}

#[async_trait::async_trait]
impl DeliveryTarget for ScrapeHandler {
    async fn deliver(&self, message: &IncomingMessage) -> Attempt {
        match ScrapeJob::parse(&message.payload) {
            Ok(job) => outcome(self.run(job).await),
            Err(reason) => outcome(Err(Failure::Reject(reason.to_string()))),
        }
    }
}

impl ScrapeHandler {
    /// A handler on the store's `scrape_jobs`; fails only when the HTTP client
    /// cannot be built. A `concurrency` of 0 is taken as 1.
    pub fn new(store: Store, settings: ScrapeSettings) -> Result<Self, reqwest::Error> {
        Ok(Self {
            jobs: JobStore::new(&store),
            fetcher: Fetcher::new(
                settings.allowed_hosts,
                settings.timeout,
                settings.max_body_bytes,
            )?,
            job_timeout: settings.job_timeout,
            concurrency: settings.concurrency.max(1),
        })
    }

    async fn run(&self, job: ScrapeJob) -> Result<(), Failure> {
        let job_id = job.job_id.clone();
        if self.jobs.is_finished(&job_id).await? {
            tracing::info!(%job_id, "scrape job already finished");
            return Ok(());
        }
        if !self.jobs.start(&job).await? {
            return Ok(());
        }
        let urls = job.urls.unwrap_or_default();
        tracing::info!(%job_id, urls = urls.len(), "scrape job running");
        let (results, unfetched) = self.fetch_all(urls).await;

        let failures = results.iter().filter(|r| r.error.is_some()).count();
        let (status, error) = if !results.is_empty() && failures == results.len() {
            let first = results
                .iter()
                .find_map(|r| r.error.as_deref())
                .unwrap_or_default();
            (
                FAILED,
                Some(format!(
                    "none of the {} URL(s) could be fetched (first error: {first})",
                    results.len()
                )),
            )
        } else if unfetched > 0 {
            (
                COMPLETED,
                Some(format!(
                    "the job deadline ({} ms) passed; {unfetched} URL(s) were not fetched",
                    self.job_timeout.as_millis()
                )),
            )
        } else {
            (COMPLETED, None)
        };
        self.jobs.finish(&job_id, status, &results, error).await?;
        tracing::info!(%job_id, status, failures, unfetched, "scrape job finished");
        Ok(())
    }

    /// Every URL's result in input order, and how many the deadline cut
    /// off (their results say so).
    async fn fetch_all(&self, urls: Vec<String>) -> (Vec<PageResult>, usize) {
        let mut slots: Vec<Option<PageResult>> = vec![None; urls.len()];
        let mut fetches = futures_util::stream::iter(urls.clone().into_iter().enumerate())
            .map(|(i, url)| async move { (i, self.fetcher.fetch(url).await) })
            .buffer_unordered(self.concurrency);
        let deadline = tokio::time::sleep(self.job_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = fetches.next() => match next {
                    Some((i, result)) => slots[i] = Some(result),
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        let mut unfetched = 0;
        let results = slots
            .into_iter()
            .zip(urls)
            .map(|(slot, url)| {
                slot.unwrap_or_else(|| {
                    unfetched += 1;
                    PageResult::failed(url, DEADLINE_PASSED)
                })
            })
            .collect();
        (results, unfetched)
    }
}

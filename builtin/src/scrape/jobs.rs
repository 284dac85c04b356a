//! The `scrape_jobs` collection (`_id` = `job_id`): the record the seed
//! route writes before publishing, the handler's queued → running →
//! completed | failed moves, and the read behind `GET /jobs/{jobId}`.
//!
//! The closing write only lands on a job that is not finished yet, so two
//! deliveries racing on one job settle on the first result.

use mongodb::bson::{doc, Document};
use mongodb::Collection;
use serde::{Deserialize, Serialize};

use super::super::events::ScrapeJob;
use super::super::{is_duplicate, now_iso, store_error, Failure};
use services::{Store, StoreError};

const JOBS: &str = "scrape_jobs";
/// Status of a job recorded by the seed route and not picked up yet.
pub const QUEUED: &str = "queued";
/// Status of a job the handler is fetching.
pub const RUNNING: &str = "running";
/// Status of a finished job with at least one URL fetched (or none to fetch);
/// final.
pub const COMPLETED: &str = "completed";
/// Status of a finished job none of whose URLs could be fetched; final.
pub const FAILED: &str = "failed";

/// What one URL gave, as stored in the job's `results` and shown by
/// `GET /jobs/{jobId}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PageResult {
    /// The URL as the job gave it.
    pub url: String,
    /// The status of the last response, after redirects; `None` when none came.
    pub http_status: Option<u16>,
    /// The page's title, when it is HTML and has one.
    pub title: Option<String>,
    /// The page's meta or `og:` description, when it is HTML and has one.
    pub description: Option<String>,
    /// Absolute http(s) links on the page, without fragments, at most 500.
    pub links: Vec<String>,
    /// E-mail addresses in the page's `mailto:` links and text, lower-cased, at
    /// most 100.
    pub emails: Vec<String>,
    /// Why this URL failed; `None` when it was fetched. Never a URL.
    pub error: Option<String>,
}

impl PageResult {
    /// The result of a URL that gave nothing, and why.
    pub fn failed(url: String, error: impl Into<String>) -> Self {
        Self {
            url,
            error: Some(error.into()),
            ..Self::default()
        }
    }
}

/// A job as `GET /jobs/{jobId}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// The job's id, as published.
    pub job_id: String,
    /// `queued`, `running`, `completed` or `failed`.
    pub status: String,
    /// One result per URL in the job's order, once it finished; empty before.
    #[serde(default)]
    pub results: Vec<PageResult>,
    /// Why the job failed, or, on a completed job, that the deadline cut some
    /// URLs off; `None` otherwise.
    #[serde(default)]
    pub error: Option<String>,
}

/// Why the seed route could not record a job.
#[derive(Debug, thiserror::Error)]
pub enum QueueJobError {
    /// The `job_id` names a job already recorded, whatever its status.
    #[error("a scrape job with this job_id already exists")]
    Exists,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn jobs(store: &Store) -> Collection<Document> {
    store.database().collection(JOBS)
}

/// The handler's view of the collection.
pub(super) struct JobStore {
    jobs: Collection<Document>,
}

impl JobStore {
    pub(super) fn new(store: &Store) -> Self {
        Self { jobs: jobs(store) }
    }

    pub(super) async fn is_finished(&self, job_id: &str) -> Result<bool, Failure> {
        Ok(self
            .jobs
            .find_one(doc! { "_id": job_id, "status": { "$in": [COMPLETED, FAILED] } })
            .projection(doc! { "_id": 1 })
            .await?
            .is_some())
    }

    /// Marks the job running, recording it first when it was published
    /// without the seed route. `false`: it finished meanwhile.
    pub(super) async fn start(&self, job: &ScrapeJob) -> Result<bool, Failure> {
        let mut on_insert = mongodb::bson::to_document(job)
            .map_err(|e| Failure::Reject(format!("the job cannot be stored: {e}")))?;
        on_insert.insert("created_at", now_iso());
        let started = self
            .jobs
            .update_one(
                doc! { "_id": &job.job_id, "status": { "$nin": [COMPLETED, FAILED] } },
                doc! {
                    "$set": { "status": RUNNING, "started_at": now_iso() },
                    "$setOnInsert": on_insert,
                },
            )
            .upsert(true)
            .await;
        match started {
            Ok(_) => Ok(true),
            // The upsert collided with the job itself: it finished meanwhile.
            Err(err) if is_duplicate(&err) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    pub(super) async fn finish(
        &self,
        job_id: &str,
        status: &str,
        results: &[PageResult],
        error: Option<String>,
    ) -> Result<(), Failure> {
        let stored_results = mongodb::bson::to_bson(results)
            .map_err(|e| Failure::Retry(format!("the results cannot be stored: {e}")))?;
        self.jobs
            .update_one(
                doc! { "_id": job_id, "status": { "$nin": [COMPLETED, FAILED] } },
                doc! { "$set": {
                    "status": status,
                    "results": stored_results,
                    "error": error,
                    "finished_at": now_iso(),
                } },
            )
            .await?;
        Ok(())
    }
}

/// The job record the seed route writes before publishing, so the job can
/// be read at once; a `job_id` already used is refused.
pub async fn insert_queued_job(store: &Store, job: &ScrapeJob) -> Result<(), QueueJobError> {
    let mut record = mongodb::bson::to_document(job)
        .map_err(|e| StoreError::encode(format!("storing scrape job `{}`", job.job_id), e))?;
    record.insert("_id", &job.job_id);
    record.insert("status", QUEUED);
    record.insert("created_at", now_iso());
    match jobs(store).insert_one(record).await {
        Ok(_) => Ok(()),
        Err(err) if is_duplicate(&err) => Err(QueueJobError::Exists),
        Err(err) => Err(store_error(err).into()),
    }
}

/// Takes back a queued job whose message could not be published.
pub async fn delete_queued_job(store: &Store, job_id: &str) -> Result<(), StoreError> {
    jobs(store)
        .delete_one(doc! { "_id": job_id, "status": QUEUED })
        .await
        .map_err(store_error)?;
    Ok(())
}

/// `GET /jobs/{jobId}`.
pub async fn find_job(store: &Store, job_id: &str) -> Result<Option<JobView>, StoreError> {
    let Some(record) = jobs(store)
        .find_one(doc! { "_id": job_id })
        .projection(doc! { "job_id": 1, "status": 1, "results": 1, "error": 1 })
        .await
        .map_err(store_error)?
    else {
        return Ok(None);
    };
    let results = record
        .get_array("results")
        .ok()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| mongodb::bson::from_bson::<PageResult>(item.clone()).ok())
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(JobView {
        job_id: record.get_str("job_id").unwrap_or(job_id).to_owned(),
        status: record.get_str("status").unwrap_or(QUEUED).to_owned(),
        results,
        error: record.get_str("error").ok().map(str::to_owned),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_results_are_stored_with_the_contract_names() {
        let value = serde_json::to_value(PageResult {
            url: "http://x/".into(),
            http_status: Some(200),
            ..PageResult::default()
        })
        .unwrap();
        assert_eq!(value["httpStatus"], 200);
        assert!(value["links"].as_array().is_some());
        assert!(value.get("error").is_some());
    }
}

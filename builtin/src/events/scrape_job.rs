//! Scrape jobs, as published to `scrape_jobs` (the seed's message).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::fields::{identifier, missing, storable, typed};
use super::{object, EventError};
use services::network::http_url;
use services::FieldError;

/// Scrape jobs with more URLs are refused: one job's results must fit in one
/// MongoDB document (16 MiB).
pub const MAX_URLS: usize = 100;

/// Only `job_id` is required; the descriptive fields are kept on the job
/// record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScrapeJob {
    /// The job's id and its record's `_id`: not blank, at most 255 bytes.
    pub job_id: String,
    /// Who asked for the job: any JSON value with keys MongoDB can store, kept
    /// on the record as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Value>,
    /// Descriptive only: kept on the record, not used to scrape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub industry: Option<String>,
    /// Descriptive only: kept on the record, not used to scrape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geography: Option<String>,
    /// Descriptive only: kept on the record, not used to scrape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keywords: Option<Vec<String>>,
    /// Descriptive only: kept on the record, not used to scrape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_types: Option<Vec<String>>,
    /// Descriptive only: kept on the record, not used to scrape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_query: Option<String>,
    /// Descriptive only, any JSON value with keys MongoDB can store; kept on
    /// the record, not used to scrape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Value>,
    /// The pages to fetch, at most `MAX_URLS`; after `parse` always `Some`
    /// (empty when the message had none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

impl ScrapeJob {
    /// A job message; `event_type`, if present, is ignored (the queue says
    /// what it is). URLs are not judged here: a bad one fails alone.
    pub fn parse(payload: &[u8]) -> Result<ScrapeJob, EventError> {
        let body = object(payload)?;
        if body.get("job_id").is_none_or(Value::is_null) {
            return Err(missing("job_id").into());
        }
        let job: ScrapeJob = typed(Value::Object(body))?;
        let job_id = identifier("job_id", Some(job.job_id))?;
        let urls = job.urls.unwrap_or_default();
        if urls.len() > MAX_URLS {
            return Err(FieldError::new(
                "urls",
                format!(
                    "at most {MAX_URLS} URLs per job, this one has {}",
                    urls.len()
                ),
            )
            .into());
        }
        // Stored as given: keys the store would refuse are refused here.
        for (field, value) in [("user_id", &job.user_id), ("filters", &job.filters)] {
            if let Some(value) = value {
                storable(field, value)?;
            }
        }
        Ok(ScrapeJob {
            job_id,
            urls: Some(urls),
            ..job
        })
    }

    /// The stricter check the seed route applies before accepting a job:
    /// every URL is http(s) with a host.
    pub fn check_urls(&self) -> Result<(), FieldError> {
        for (i, raw) in self.urls.iter().flatten().enumerate() {
            http_url(raw).map_err(|problem| {
                FieldError::new(format!("urls[{i}]"), format!("the URL {problem}"))
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(err: EventError) -> String {
        match err {
            EventError::Field(err) => err.field,
            other => panic!("not a field error: {other}"),
        }
    }

    #[test]
    fn scrape_jobs_need_only_a_job_id() {
        let job =
            ScrapeJob::parse(br#"{"job_id":"j1","industry":"SaaS","filters":{"a":1}}"#).unwrap();
        assert_eq!(job.urls, Some(vec![]));
        assert_eq!(job.industry.as_deref(), Some("SaaS"));
        assert_eq!(
            field(ScrapeJob::parse(br#"{"industry":"SaaS"}"#).unwrap_err()),
            "job_id"
        );
        assert_eq!(
            field(ScrapeJob::parse(br#"{"job_id":"j","urls":"http://x"}"#).unwrap_err()),
            "urls"
        );
        let many: Vec<String> = (0..=MAX_URLS).map(|i| format!("http://h/{i}")).collect();
        let body = serde_json::to_vec(&json!({"job_id": "j", "urls": many})).unwrap();
        assert_eq!(field(ScrapeJob::parse(&body).unwrap_err()), "urls");
        let job = ScrapeJob::parse(br#"{"job_id":"j","urls":["http://ok/","ftp://x/"]}"#).unwrap();
        assert_eq!(job.check_urls().unwrap_err().field, "urls[1]");
    }

    #[test]
    fn keys_the_store_would_refuse_are_refused() {
        let err = ScrapeJob::parse(br#"{"job_id":"j","filters":{"a\u0000b":1}}"#).unwrap_err();
        assert_eq!(field(err), "filters");
        let err = ScrapeJob::parse(br#"{"job_id":"j","user_id":{"$gt":1}}"#).unwrap_err();
        assert_eq!(field(err), "user_id");
    }
}

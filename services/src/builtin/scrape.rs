//! The `scrape` handler: runs a scrape job — fetches each URL with bounded
//! concurrency, a per-URL timeout and a body cap, extracts title,
//! description, links and e-mail addresses — and keeps the job record in
//! `scrape_jobs` (`_id` = `job_id`) moving queued → running → completed |
//! failed. Also the seed route's job reads and writes.
//!
//! Idempotent by `job_id`: a finished job is never run again, and the
//! closing write only lands on a job that is not finished yet, so two
//! deliveries racing on one job settle on the first result.

use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Duration;

use futures_util::StreamExt;
use mongodb::bson::{doc, Document};
use mongodb::Collection;
use regex::Regex;
use scraper::{Html, Node, Selector};
use serde::{Deserialize, Serialize};

use gateway::{DeliveryOutcome, DeliveryTarget, IncomingMessage};

use super::events::{fetchable_url, ScrapeJob};
use super::{is_duplicate, now_iso, outcome, store_error, Failure};
use crate::{Store, StoreError};

const JOBS: &str = "scrape_jobs";
pub const QUEUED: &str = "queued";
pub const RUNNING: &str = "running";
pub const COMPLETED: &str = "completed";
pub const FAILED: &str = "failed";
const MAX_REDIRECTS: usize = 5;
/// Per page, so one job's results stay far below MongoDB's 16 MiB limit.
const MAX_LINKS: usize = 500;
const MAX_EMAILS: usize = 100;
const MAX_TITLE_CHARS: usize = 500;
const MAX_DESCRIPTION_CHARS: usize = 1_000;
const MAX_ERROR_CHARS: usize = 300;

/// How the scraper fetches.
#[derive(Debug, Clone)]
pub struct ScrapeSettings {
    /// `SCRAPE_ALLOWED_HOSTS`: when set, only these hosts are fetched, also
    /// as redirect targets, so a publisher cannot aim the gateway at
    /// internal addresses.
    pub allowed_hosts: Option<Vec<String>>,
    /// For one URL, from connecting to the last body byte.
    pub timeout: Duration,
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
            max_body_bytes: 2 * 1024 * 1024,
            concurrency: 4,
        }
    }
}

/// What one URL gave, as stored in the job's `results` and shown by
/// `GET /jobs/{jobId}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PageResult {
    pub url: String,
    pub http_status: Option<u16>,
    pub title: Option<String>,
    pub description: Option<String>,
    pub links: Vec<String>,
    pub emails: Vec<String>,
    /// Why this URL failed; `None` when it was fetched.
    pub error: Option<String>,
}

/// A job as `GET /jobs/{jobId}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub job_id: String,
    pub status: String,
    #[serde(default)]
    pub results: Vec<PageResult>,
    #[serde(default)]
    pub error: Option<String>,
}

pub struct ScrapeHandler {
    jobs: Collection<Document>,
    client: reqwest::Client,
    settings: ScrapeSettings,
}

#[async_trait::async_trait]
impl DeliveryTarget for ScrapeHandler {
    async fn deliver(&self, message: &IncomingMessage) -> DeliveryOutcome {
        match ScrapeJob::parse(&message.payload) {
            Ok(job) => outcome(self.run(job).await),
            Err(reason) => outcome(Err(Failure::Reject(reason))),
        }
    }
}

impl ScrapeHandler {
    pub fn new(store: Store, settings: ScrapeSettings) -> Result<Self, reqwest::Error> {
        let allowed = settings.allowed_hosts.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
            } else if !host_allowed(allowed.as_deref(), attempt.url()) {
                let host = attempt.url().host_str().unwrap_or_default().to_owned();
                attempt.error(format!(
                    "redirect to `{host}`, which is not in SCRAPE_ALLOWED_HOSTS"
                ))
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .redirect(redirects)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("workerrmq-scraper/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            jobs: store.database().collection(JOBS),
            client,
            settings,
        })
    }

    async fn run(&self, job: ScrapeJob) -> Result<(), Failure> {
        let job_id = job.job_id.clone();
        let finished = doc! { "$in": [COMPLETED, FAILED] };
        if self
            .jobs
            .find_one(doc! { "_id": &job_id, "status": finished.clone() })
            .projection(doc! { "_id": 1 })
            .await?
            .is_some()
        {
            tracing::info!(%job_id, "scrape job already finished");
            return Ok(());
        }

        let mut on_insert = mongodb::bson::to_document(&job)
            .map_err(|e| Failure::Reject(format!("the job cannot be stored: {e}")))?;
        on_insert.insert("created_at", now_iso());
        let started = self
            .jobs
            .update_one(
                doc! { "_id": &job_id, "status": { "$nin": [COMPLETED, FAILED] } },
                doc! {
                    "$set": { "status": RUNNING, "started_at": now_iso() },
                    "$setOnInsert": on_insert,
                },
            )
            .upsert(true)
            .await;
        match started {
            Ok(_) => {}
            // The upsert collided with the job itself: it finished meanwhile.
            Err(err) if is_duplicate(&err) => return Ok(()),
            Err(err) => return Err(err.into()),
        }

        let urls = job.urls.unwrap_or_default();
        tracing::info!(%job_id, urls = urls.len(), "scrape job running");
        // In input order (`buffered`), so results line up with `urls`.
        let results: Vec<PageResult> = futures_util::stream::iter(urls)
            .map(|url| self.fetch(url))
            .buffered(self.settings.concurrency.max(1))
            .collect()
            .await;

        let failures = results.iter().filter(|r| r.error.is_some()).count();
        let (status, error) = if !results.is_empty() && failures == results.len() {
            let first = results
                .first()
                .map(|r| format!(" (first: {}: {})", r.url, r.error.as_deref().unwrap_or("")))
                .unwrap_or_default();
            (
                FAILED,
                Some(format!(
                    "none of the {} URL(s) could be fetched{first}",
                    results.len()
                )),
            )
        } else {
            (COMPLETED, None)
        };
        let stored_results = mongodb::bson::to_bson(&results)
            .map_err(|e| Failure::Retry(format!("the results cannot be stored: {e}")))?;
        self.jobs
            .update_one(
                doc! { "_id": &job_id, "status": { "$nin": [COMPLETED, FAILED] } },
                doc! { "$set": {
                    "status": status,
                    "results": stored_results,
                    "error": error,
                    "finished_at": now_iso(),
                } },
            )
            .await?;
        tracing::info!(%job_id, status, failures, "scrape job finished");
        Ok(())
    }

    /// One URL; never fails the job, only its own result.
    async fn fetch(&self, raw: String) -> PageResult {
        let url = fetchable_url(&raw);
        let mut result = PageResult {
            url: raw,
            ..PageResult::default()
        };
        let url = match url {
            Ok(url) => url,
            Err(problem) => {
                result.error = Some(problem);
                return result;
            }
        };
        if !host_allowed(self.settings.allowed_hosts.as_deref(), &url) {
            result.error = Some(format!(
                "host `{}` is not in SCRAPE_ALLOWED_HOSTS",
                url.host_str().unwrap_or_default()
            ));
            return result;
        }
        let timeout = self.settings.timeout;
        match tokio::time::timeout(timeout, self.fetch_page(url, &mut result)).await {
            Ok(Ok(())) => {}
            Ok(Err(problem)) => result.error = Some(clip(&problem, MAX_ERROR_CHARS)),
            Err(_) => {
                result.error = Some(format!(
                    "no complete answer within {} ms",
                    timeout.as_millis()
                ))
            }
        }
        result
    }

    async fn fetch_page(&self, url: url::Url, result: &mut PageResult) -> Result<(), String> {
        let mut response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = response.status();
        result.http_status = Some(status.as_u16());
        if !status.is_success() {
            return Err(format!("the server answered HTTP {status}"));
        }
        // Links resolve against where the redirects ended.
        let page_url = response.url().clone();
        let kind = body_kind(
            response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        if kind == BodyKind::Other {
            return Ok(());
        }
        let limit = self.settings.max_body_bytes;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
            let room = limit - body.len();
            if chunk.len() >= room {
                // Past the cap the page is parsed as far as it was read.
                body.extend_from_slice(&chunk[..room]);
                tracing::debug!(limit, "page body cut at the cap");
                break;
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        // Parsing is CPU work on up to the body cap; keep it off the
        // async workers.
        let extracted = tokio::task::spawn_blocking(move || match kind {
            BodyKind::Html => extract(&text, &page_url),
            _ => Extracted {
                emails: emails_in_text(&text),
                ..Extracted::default()
            },
        })
        .await
        .map_err(|e| format!("the page could not be parsed: {e}"))?;
        result.title = extracted.title;
        result.description = extracted.description;
        result.links = extracted.links;
        result.emails = extracted.emails;
        Ok(())
    }
}

fn host_allowed(allowed: Option<&[String]>, url: &url::Url) -> bool {
    let Some(allowed) = allowed else {
        return true;
    };
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    allowed.contains(&host)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Html,
    Text,
    /// Images, archives, …: nothing to extract, so not downloaded.
    Other,
}

fn body_kind(content_type: Option<&str>) -> BodyKind {
    let Some(content_type) = content_type else {
        return BodyKind::Html;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "text/html" | "application/xhtml+xml" | "" => BodyKind::Html,
        other if other.starts_with("text/") => BodyKind::Text,
        _ => BodyKind::Other,
    }
}

/// An error with its causes ("… : Connection refused"), which is where
/// reqwest says what actually happened.
fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// What a page gave.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extracted {
    pub title: Option<String>,
    pub description: Option<String>,
    /// Absolute http(s) URLs without fragments, first occurrence first.
    pub links: Vec<String>,
    /// Lower-cased, first occurrence first.
    pub emails: Vec<String>,
}

fn selector(css: &str) -> Selector {
    Selector::parse(css).unwrap_or_else(|e| panic!("`{css}` is a valid selector: {e}"))
}

static TITLE: LazyLock<Selector> = LazyLock::new(|| selector("title"));
static META: LazyLock<Selector> = LazyLock::new(|| selector("meta[content]"));
static BASE: LazyLock<Selector> = LazyLock::new(|| selector("base[href]"));
static ANCHOR: LazyLock<Selector> = LazyLock::new(|| selector("a[href], area[href]"));
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b[a-z0-9][a-z0-9._%+-]*@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}\b",
    )
    .unwrap_or_else(|e| panic!("the e-mail pattern is valid: {e}"))
});
/// Endings that make `logo@2x.png` look like an address.
const NOT_TLDS: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "css", "js", "bmp", "tif", "tiff",
];

/// Title, description, links and e-mail addresses of an HTML page fetched
/// from `page_url`.
pub fn extract(html: &str, page_url: &url::Url) -> Extracted {
    let document = Html::parse_document(html);
    let title = document
        .select(&TITLE)
        .next()
        .map(|t| collapse(&t.text().collect::<String>(), MAX_TITLE_CHARS))
        .filter(|t| !t.is_empty());
    let meta = |attribute: &str, wanted: &str| {
        document
            .select(&META)
            .find(|m| {
                m.value()
                    .attr(attribute)
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case(wanted))
            })
            .and_then(|m| m.value().attr("content"))
            .map(|c| collapse(c, MAX_DESCRIPTION_CHARS))
            .filter(|c| !c.is_empty())
    };
    let description = meta("name", "description").or_else(|| meta("property", "og:description"));

    let base = document
        .select(&BASE)
        .next()
        .and_then(|b| b.value().attr("href"))
        .and_then(|href| page_url.join(href.trim()).ok())
        .unwrap_or_else(|| page_url.clone());
    let mut links = Unique::new(MAX_LINKS);
    let mut emails = Unique::new(MAX_EMAILS);
    for anchor in document.select(&ANCHOR) {
        let Some(href) = anchor.value().attr("href").map(str::trim) else {
            continue;
        };
        if href
            .get(..7)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("mailto:"))
        {
            let target = href[7..].split('?').next().unwrap_or_default();
            for email in emails_in_text(target) {
                emails.push(email);
            }
            continue;
        }
        if let Ok(mut link) = base.join(href) {
            if matches!(link.scheme(), "http" | "https") {
                link.set_fragment(None);
                links.push(link.to_string());
            }
        }
    }
    for email in emails_in_text(&visible_text(&document)) {
        emails.push(email);
    }
    Extracted {
        title,
        description,
        links: links.into_vec(),
        emails: emails.into_vec(),
    }
}

/// The page's text, without scripts and styles.
fn visible_text(document: &Html) -> String {
    let mut text = String::new();
    for node in document.tree.nodes() {
        let Node::Text(chunk) = node.value() else {
            continue;
        };
        let hidden = node
            .parent()
            .and_then(|p| p.value().as_element().map(|e| e.name()))
            .is_some_and(|name| matches!(name, "script" | "style" | "noscript" | "template"));
        if !hidden {
            text.push_str(chunk);
            text.push(' ');
        }
    }
    text
}

/// E-mail addresses in free text, lower-cased and deduplicated.
pub fn emails_in_text(text: &str) -> Vec<String> {
    let mut found = Unique::new(MAX_EMAILS);
    for m in EMAIL.find_iter(text) {
        let email = m.as_str().to_lowercase();
        let tld = email.rsplit('.').next().unwrap_or_default();
        if !NOT_TLDS.contains(&tld) {
            found.push(email);
        }
    }
    found.into_vec()
}

/// Keeps the first occurrence of each value, up to a limit.
struct Unique {
    seen: HashSet<String>,
    values: Vec<String>,
    limit: usize,
}

impl Unique {
    fn new(limit: usize) -> Self {
        Self {
            seen: HashSet::new(),
            values: Vec::new(),
            limit,
        }
    }

    fn push(&mut self, value: String) {
        if self.values.len() < self.limit && self.seen.insert(value.clone()) {
            self.values.push(value);
        }
    }

    fn into_vec(self) -> Vec<String> {
        self.values
    }
}

/// Whitespace runs become one space; at most `max` characters.
fn collapse(text: &str, max: usize) -> String {
    clip(&text.split_whitespace().collect::<Vec<_>>().join(" "), max)
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut clipped: String = text.chars().take(max).collect();
    clipped.push('…');
    clipped
}

fn jobs(store: &Store) -> Collection<Document> {
    store.database().collection(JOBS)
}

/// The job record the seed route writes before publishing, so the job can
/// be read at once.
pub async fn insert_queued_job(store: &Store, job: &ScrapeJob) -> Result<(), StoreError> {
    let mut record = mongodb::bson::to_document(job)
        .map_err(|e| StoreError::Unavailable(format!("the job cannot be stored: {e}")))?;
    record.insert("_id", &job.job_id);
    record.insert("status", QUEUED);
    record.insert("created_at", now_iso());
    jobs(store).insert_one(record).await.map_err(store_error)?;
    Ok(())
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
    #[test]
    fn only_allowed_hosts_are_fetched_when_a_list_is_set() {
        let url = |raw: &str| url::Url::parse(raw).unwrap();
        assert!(host_allowed(None, &url("http://169.254.169.254/latest")));
        let allowed = vec!["example.com".to_string(), "::1".to_string()];
        assert!(host_allowed(Some(&allowed), &url("https://EXAMPLE.com/a")));
        assert!(host_allowed(Some(&allowed), &url("http://[::1]:8080/")));
        assert!(!host_allowed(
            Some(&allowed),
            &url("http://169.254.169.254/latest")
        ));
    }

    use super::*;

    fn page_url() -> url::Url {
        url::Url::parse("http://example.test/dir/page.html").unwrap()
    }

    #[test]
    fn a_page_gives_title_description_links_and_emails() {
        let html = r#"<!doctype html><html><head>
            <title>
              Acme   Corp
            </title>
            <meta name="Description" content=" We make  anvils. ">
            <script>var x = "hidden@script.example";</script>
            </head><body>
            <a href="/about">About</a>
            <a href="contact.html#form">Contact</a>
            <a href="contact.html">Contact again</a>
            <a href="https://other.example/x?y=1">Other</a>
            <a href="javascript:void(0)">js</a>
            <a href="MAILTO:Sales@Acme.Example?subject=hi">Write to us</a>
            <p>Or write to support@acme.example, or SUPPORT@acme.example.</p>
            <img src="logo@2x.png">
            <p>logo@2x.png is not an address</p>
            </body></html>"#;
        let got = extract(html, &page_url());
        assert_eq!(got.title.as_deref(), Some("Acme Corp"));
        assert_eq!(got.description.as_deref(), Some("We make anvils."));
        assert_eq!(
            got.links,
            vec![
                "http://example.test/about",
                "http://example.test/dir/contact.html",
                "https://other.example/x?y=1",
            ]
        );
        assert_eq!(
            got.emails,
            vec!["sales@acme.example", "support@acme.example"]
        );
    }

    #[test]
    fn a_base_element_moves_relative_links() {
        let html = r#"<html><head><base href="https://cdn.example/root/"></head>
            <body><a href="a">a</a></body></html>"#;
        assert_eq!(
            extract(html, &page_url()).links,
            vec!["https://cdn.example/root/a"]
        );
    }

    #[test]
    fn odd_hrefs_are_skipped_without_harm() {
        let html = r#"<a href="ñandú">x</a><a href="mailto:">y</a><a href="http://[::1">z</a>
            <a href="tel:+123">t</a><a href="ftp://files.example/">f</a>"#;
        let got = extract(html, &page_url());
        assert_eq!(got.links, vec!["http://example.test/dir/%C3%B1and%C3%BA"]);
        assert!(got.emails.is_empty());
    }

    #[test]
    fn an_empty_page_gives_nothing() {
        assert_eq!(extract("", &page_url()), Extracted::default());
        assert_eq!(extract("<title>  </title>", &page_url()).title, None);
    }

    #[test]
    fn the_email_pattern_finds_addresses_and_skips_lookalikes() {
        let text = "Mail a.b+c@mail.example.co.uk; x@y; name@host.com. Image@2x.JPG \
                    user@sub-domain.example.org mailto:first.last@example.com";
        assert_eq!(
            emails_in_text(text),
            vec![
                "a.b+c@mail.example.co.uk",
                "name@host.com",
                "user@sub-domain.example.org",
                "first.last@example.com",
            ]
        );
        assert!(emails_in_text("no addresses @ all").is_empty());
    }

    #[test]
    fn bodies_are_read_only_when_there_is_something_to_extract() {
        assert_eq!(body_kind(Some("text/html; charset=utf-8")), BodyKind::Html);
        assert_eq!(body_kind(None), BodyKind::Html);
        assert_eq!(body_kind(Some("text/plain")), BodyKind::Text);
        assert_eq!(body_kind(Some("image/png")), BodyKind::Other);
    }

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

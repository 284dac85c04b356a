//! Fetching one URL for the scraper, behind the network guard: without
//! `SCRAPE_ALLOWED_HOSTS`, no request goes to an inside address (an
//! IP-literal URL or redirect hop is checked before it is sent, a host name
//! by the resolver on the addresses actually connected to); with the list,
//! only listed hosts are fetched, whatever they resolve to. Also the
//! per-URL timeout, the body cap, and errors that never carry a URL.

use std::time::Duration;

use url::Url;

use super::extract::{clip, emails_in_text, extract, Extracted};
use super::jobs::PageResult;
use services::network::{
    find_cause, host_listed, http_url, url_host, with_causes, AddressGuard, AddressNotAllowed,
};

const MAX_REDIRECTS: usize = 5;
const MAX_ERROR_CHARS: usize = 300;

/// A refusal of a host that is not on `SCRAPE_ALLOWED_HOSTS`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("address not allowed: the host is not in SCRAPE_ALLOWED_HOSTS")]
struct NotListed;

#[derive(Debug, thiserror::Error)]
#[error("more than {MAX_REDIRECTS} redirects")]
struct TooManyRedirects;

/// Why a page gave nothing; its text is the result's `error`.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("the server answered HTTP {0}")]
    Status(reqwest::StatusCode),
    /// Said without the URL (see `describe`).
    #[error("{}", describe(.0))]
    Request(#[source] reqwest::Error),
    #[error("the page could not be parsed: {0}")]
    Parse(tokio::task::JoinError),
}

impl From<reqwest::Error> for FetchError {
    fn from(err: reqwest::Error) -> Self {
        FetchError::Request(err.without_url())
    }
}

/// Which hosts the scraper may reach.
#[derive(Debug, Clone)]
struct HostPolicy {
    /// `SCRAPE_ALLOWED_HOSTS`: when set, the only hosts fetched.
    allowed: Option<Vec<String>>,
    guard: AddressGuard,
}

impl HostPolicy {
    fn new(allowed: Option<Vec<String>>) -> Self {
        let guard = AddressGuard::new(allowed.as_deref().unwrap_or_default());
        Self { allowed, guard }
    }

    /// Checked before each request and each redirect hop is sent.
    fn admit(&self, url: &Url) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        match &self.allowed {
            Some(list) => match url_host(url) {
                Some(host) if host_listed(list, &host) => Ok(()),
                _ => Err(Box::new(NotListed)),
            },
            None => Ok(self.guard.check_url(url)?),
        }
    }
}

pub(super) struct Fetcher {
    client: reqwest::Client,
    policy: HostPolicy,
    timeout: Duration,
    max_body_bytes: usize,
}

impl Fetcher {
    pub(super) fn new(
        allowed_hosts: Option<Vec<String>>,
        timeout: Duration,
        max_body_bytes: usize,
    ) -> Result<Self, reqwest::Error> {
        let policy = HostPolicy::new(allowed_hosts);
        let hops = policy.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(TooManyRedirects);
            }
            match hops.admit(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        });
        let client = reqwest::Client::builder()
            .redirect(redirects)
            .dns_resolver(policy.guard.resolver())
            // A proxy would resolve the host itself, out of the guard's sight.
            .no_proxy()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("workerrmq-scraper/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            policy,
            timeout,
            max_body_bytes,
        })
    }

    /// One URL; never fails the job, only its own result.
    pub(super) async fn fetch(&self, raw: String) -> PageResult {
        let url = match http_url(&raw) {
            Ok(url) => url,
            Err(problem) => return PageResult::failed(raw, format!("the URL {problem}")),
        };
        if let Err(refused) = self.policy.admit(&url) {
            return PageResult::failed(raw, refused.to_string());
        }
        let mut result = PageResult {
            url: raw,
            ..PageResult::default()
        };
        match tokio::time::timeout(self.timeout, self.fetch_page(url, &mut result)).await {
            Ok(Ok(())) => {}
            Ok(Err(problem)) => result.error = Some(clip(&problem.to_string(), MAX_ERROR_CHARS)),
            Err(_) => {
                result.error = Some(format!(
                    "no complete answer within {} ms",
                    self.timeout.as_millis()
                ))
            }
        }
        result
    }

    async fn fetch_page(&self, url: Url, result: &mut PageResult) -> Result<(), FetchError> {
        let mut response = self.client.get(url).send().await?;
        let status = response.status();
        result.http_status = Some(status.as_u16());
        if !status.is_success() {
            return Err(FetchError::Status(status));
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
        let limit = self.max_body_bytes;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
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
        .map_err(FetchError::Parse)?;
        result.title = extracted.title;
        result.description = extracted.description;
        result.links = extracted.links;
        result.emails = extracted.emails;
        Ok(())
    }
}

/// A reqwest error as a result's `error`: the guard's refusal as it is,
/// anything else with its causes, and never the URL.
fn describe(err: &reqwest::Error) -> String {
    if let Some(refused) = find_cause::<NotListed>(err) {
        return refused.to_string();
    }
    if AddressNotAllowed::caused(err) {
        return AddressNotAllowed.to_string();
    }
    with_causes(err.to_string(), err)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_read_only_when_there_is_something_to_extract() {
        assert_eq!(body_kind(Some("text/html; charset=utf-8")), BodyKind::Html);
        assert_eq!(body_kind(None), BodyKind::Html);
        assert_eq!(body_kind(Some("text/plain")), BodyKind::Text);
        assert_eq!(body_kind(Some("image/png")), BodyKind::Other);
    }

    #[test]
    fn a_list_admits_only_its_hosts_and_no_list_only_outside_addresses() {
        let url = |raw: &str| Url::parse(raw).unwrap();
        let open = HostPolicy::new(None);
        assert!(open.admit(&url("http://169.254.169.254/latest")).is_err());
        assert!(open.admit(&url("http://[::1]:8080/")).is_err());
        assert!(open.admit(&url("https://example.com/")).is_ok());
        let listed = HostPolicy::new(Some(vec!["example.com".into(), "::1".into()]));
        assert!(listed.admit(&url("https://EXAMPLE.com/a")).is_ok());
        assert!(listed.admit(&url("http://[::1]:8080/")).is_ok());
        assert!(listed.admit(&url("http://169.254.169.254/latest")).is_err());
        assert!(listed.admit(&url("https://other.example/")).is_err());
    }
}

//! The two URL rules every outbound caller shares: a URL is http(s) with a
//! host, and a host is on an allow-list (`FORWARD_ALLOWED_HOSTS`,
//! `SCRAPE_ALLOWED_HOSTS`) or not.

use url::{Host, Url};

/// Why a text is not an http(s) URL with a host, as a predicate ("the URL
/// has no host"). It never quotes the URL, so it can be stored and logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    /// The text does not parse as a URL.
    #[error("is not a URL ({0})")]
    NotAUrl(url::ParseError),
    /// The scheme is neither `http` nor `https`.
    #[error("is not http or https")]
    Scheme,
    /// The URL has no host.
    #[error("has no host")]
    NoHost,
}

/// An http(s) URL with a host.
pub fn http_url(raw: &str) -> Result<Url, UrlProblem> {
    let url = Url::parse(raw.trim()).map_err(UrlProblem::NotAUrl)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlProblem::Scheme);
    }
    if url.host().is_none() {
        return Err(UrlProblem::NoHost);
    }
    Ok(url)
}

/// `a.example, B.example, [::1]` → `["a.example", "b.example", "::1"]`.
pub fn host_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(normalize)
        .filter(|h| !h.is_empty())
        .collect()
}

/// The URL's host as allow-lists spell it: lower case, IPv6 without
/// brackets.
pub fn url_host(url: &Url) -> Option<String> {
    Some(match url.host()? {
        Host::Domain(domain) => normalize(domain),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => ip.to_string(),
    })
}

/// Whether `host` (a URL host or a DNS name) is on `allowed`.
pub fn host_listed(allowed: &[String], host: &str) -> bool {
    let host = normalize(host);
    allowed.contains(&host)
}

fn normalize(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_with_a_host_pass() {
        assert!(http_url(" https://example.com/a ").is_ok());
        assert_eq!(http_url("ftp://x/y"), Err(UrlProblem::Scheme));
        assert!(matches!(http_url("not a url"), Err(UrlProblem::NotAUrl(_))));
    }

    #[test]
    fn hosts_match_however_they_are_spelled() {
        let allowed = host_list(" Example.COM, [::1], ,127.0.0.1");
        assert_eq!(allowed, vec!["example.com", "::1", "127.0.0.1"]);
        let host = |raw: &str| url_host(&Url::parse(raw).unwrap()).unwrap();
        assert!(host_listed(&allowed, &host("https://EXAMPLE.com./a")));
        assert!(host_listed(&allowed, &host("http://[::1]:8080/")));
        assert!(host_listed(&allowed, "example.com"));
        assert!(!host_listed(
            &allowed,
            &host("http://169.254.169.254/latest")
        ));
    }
}

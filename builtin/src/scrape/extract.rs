//! Pure extraction from a fetched page: title, description, absolute
//! links and e-mail addresses, each capped so one job's results stay far
//! below MongoDB's 16 MiB document limit. No I/O here.

use std::collections::HashSet;
use std::sync::LazyLock;

use regex::Regex;
use scraper::{Html, Node, Selector};

const MAX_LINKS: usize = 500;
const MAX_EMAILS: usize = 100;
const MAX_TITLE_CHARS: usize = 500;
const MAX_DESCRIPTION_CHARS: usize = 1_000;

/// What a page gave.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extracted {
    /// The first `<title>`, whitespace collapsed, at most 500 characters;
    /// `None` when missing or blank.
    pub title: Option<String>,
    /// `<meta name="description">`, else `og:description`, whitespace
    /// collapsed, at most 1,000 characters.
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

pub(super) fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut clipped: String = text.chars().take(max).collect();
    clipped.push('…');
    clipped
}

#[cfg(test)]
mod tests {
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
}

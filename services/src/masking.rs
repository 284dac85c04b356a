//! Masking what a URL may carry besides where it points: userinfo, query
//! values and the fragment. Used wherever a target URL is shown to someone
//! who needs to know where messages go, not how to send them there too
//! (viewers of a consumer, attempt records).

/// What replaces every hidden value.
pub const MASK: &str = "***";

/// Scheme, host, port and path as they are; userinfo removed; each query
/// value (or a bare query item, which may be a token itself) and the
/// fragment replaced by `***`. Something that does not parse is hidden
/// whole.
pub fn masked_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return MASK.to_owned();
    };
    // Fails only for URLs without a host, which cannot carry userinfo.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    if let Some(query) = url.query() {
        let masked: Vec<String> = query
            .split('&')
            .filter(|item| !item.is_empty())
            .map(|item| match item.split_once('=') {
                Some((key, _)) => format!("{key}={MASK}"),
                None => MASK.to_owned(),
            })
            .collect();
        url.set_query(Some(&masked.join("&")));
    }
    if url.fragment().is_some() {
        url.set_fragment(Some(MASK));
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::masked_url;

    #[test]
    fn query_values_are_masked_and_keys_kept() {
        assert_eq!(
            masked_url("https://hooks.example.com/in/orders?token=abc&x=1"),
            "https://hooks.example.com/in/orders?token=***&x=***"
        );
    }

    #[test]
    fn userinfo_is_removed_and_port_kept() {
        assert_eq!(
            masked_url("http://user:pw@example.com:8080/p?a=b"),
            "http://example.com:8080/p?a=***"
        );
    }

    #[test]
    fn bare_query_items_and_fragments_are_masked() {
        assert_eq!(
            masked_url("https://example.com/hook?s3cr3t#frag"),
            "https://example.com/hook?***#***"
        );
    }

    #[test]
    fn urls_without_query_are_unchanged() {
        assert_eq!(
            masked_url("https://example.com/a/b"),
            "https://example.com/a/b"
        );
    }

    #[test]
    fn unparsable_urls_are_hidden_whole() {
        assert_eq!(masked_url("not a url with ?token=abc"), "***");
    }
}

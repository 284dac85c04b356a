//! Selecting failures by the target's HTTP status: one code (`503`) or a
//! class (`5xx`). One rule for every reader of a status, the attempt
//! records (`services::attempts`) and the dead letters a replay takes
//! (`dead_letters::ReplayFilter`), so `"5xx"` means the same to both.

use std::fmt;

/// `503` or `5xx`: one status, or any of a hundred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Exactly this status.
    Code(u16),
    /// Any status of this hundred (`5` for `5xx`).
    Class(u16),
}

/// A status filter that is neither a code from 100 to 599 nor a class from
/// `1xx` to `5xx`. Callers name the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a status code (503) or a class (5xx)")]
pub struct BadStatusFilter;

impl StatusFilter {
    /// `503`, or `5xx` (also `5XX`); 100 to 599. Blanks around it are
    /// forgiven: it often arrives from a query string typed by hand.
    pub fn parse(raw: &str) -> Result<Self, BadStatusFilter> {
        let raw = raw.trim();
        if let Some(class) = raw.strip_suffix("xx").or_else(|| raw.strip_suffix("XX")) {
            let class: u16 = class.parse().map_err(|_| BadStatusFilter)?;
            return (1..=5)
                .contains(&class)
                .then_some(Self::Class(class))
                .ok_or(BadStatusFilter);
        }
        let code: u16 = raw.parse().map_err(|_| BadStatusFilter)?;
        (100..=599)
            .contains(&code)
            .then_some(Self::Code(code))
            .ok_or(BadStatusFilter)
    }

    /// Whether `status` is one of it.
    pub fn matches(self, status: u16) -> bool {
        match self {
            Self::Code(code) => status == code,
            Self::Class(class) => status / 100 == class,
        }
    }
}

impl fmt::Display for StatusFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(code) => write!(f, "{code}"),
            Self::Class(class) => write!(f, "{class}xx"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_as_codes_or_classes() {
        assert_eq!(StatusFilter::parse("503"), Ok(StatusFilter::Code(503)));
        assert_eq!(StatusFilter::parse("5xx"), Ok(StatusFilter::Class(5)));
        assert_eq!(StatusFilter::parse(" 4XX "), Ok(StatusFilter::Class(4)));
        for bad in ["", "6xx", "0xx", "99", "600", "5x", "abc", "xx", "-1xx"] {
            assert_eq!(StatusFilter::parse(bad), Err(BadStatusFilter), "{bad}");
        }
    }

    #[test]
    fn a_code_matches_itself_and_a_class_its_hundred() {
        assert!(StatusFilter::Code(503).matches(503));
        assert!(!StatusFilter::Code(503).matches(502));
        assert!(StatusFilter::Class(5).matches(500));
        assert!(StatusFilter::Class(5).matches(599));
        assert!(!StatusFilter::Class(5).matches(422));
        assert!(!StatusFilter::Class(5).matches(600));
    }

    #[test]
    fn it_reads_back_as_written() {
        for raw in ["503", "5xx", "1xx", "100"] {
            let parsed = StatusFilter::parse(raw).expect("a status filter");
            assert_eq!(parsed.to_string(), raw);
        }
    }
}

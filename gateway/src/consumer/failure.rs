//! Why an attempt failed: one `ErrorKind` from a closed set, the target's
//! status when it answered, and a reason for people. The kind and status are
//! what dead letters are filtered by and what attempt records are searched
//! by, so they are values, not words inside the reason.

use std::fmt;

/// The closed set of failure kinds. Their names (`as_str`) are part of the
/// API: they appear in attempt records, dead-letter headers and filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The target did not answer within the consumer's timeout.
    Timeout,
    /// No connection to the target (refused, reset, unreachable).
    Connect,
    /// The target's name did not resolve.
    Dns,
    /// The TLS handshake with the target failed.
    Tls,
    /// No credentials for the target: its OAuth2 token endpoint failed or
    /// refused the client (`target.auth`).
    Auth,
    /// The target answered with a status that is not a success.
    HttpStatus,
    /// The network guard refused the target's address.
    AddressNotAllowed,
    /// A built-in handler refused or failed the message.
    Handler,
    /// The attempt failed while the circuit breaker was open: handed back
    /// without spending an attempt.
    CircuitOpen,
    /// The broker redelivered it past its attempts without an outcome.
    DeliveryLimit,
    /// The request could not be built (a message id that is no header value).
    InvalidRequest,
    /// The request broke off some other way (the connection dropped, a bad
    /// answer).
    Request,
    /// The copy to the delay or dead-letter queue could not be stored: handed
    /// back to come again.
    Broker,
    /// An ordered consumer's message without its ordering key, under
    /// `missingKey: "dead_letter"`.
    OrderingKey,
    /// An ordered consumer's retry would have held the delivery past
    /// `ORDERED_MAX_HOLD_MS`.
    HoldLimit,
    /// The consumer's filter or transform failed on the message (a type
    /// error, a missing field), under `onRuleError: "dead_letter"`.
    Rule,
}

impl ErrorKind {
    /// Every kind, in documentation order.
    pub const ALL: [ErrorKind; 16] = [
        Self::Timeout,
        Self::Connect,
        Self::Dns,
        Self::Tls,
        Self::Auth,
        Self::HttpStatus,
        Self::AddressNotAllowed,
        Self::Handler,
        Self::CircuitOpen,
        Self::DeliveryLimit,
        Self::InvalidRequest,
        Self::Request,
        Self::Broker,
        Self::OrderingKey,
        Self::HoldLimit,
        Self::Rule,
    ];

    /// The kind's name as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Dns => "dns",
            Self::Tls => "tls",
            Self::Auth => "auth",
            Self::HttpStatus => "http_status",
            Self::AddressNotAllowed => "address_not_allowed",
            Self::Handler => "handler",
            Self::CircuitOpen => "circuit_open",
            Self::DeliveryLimit => "delivery_limit",
            Self::InvalidRequest => "invalid_request",
            Self::Request => "request",
            Self::Broker => "broker",
            Self::OrderingKey => "ordering_key",
            Self::HoldLimit => "hold_limit",
            Self::Rule => "rule",
        }
    }

    /// The kind named `name`; `None` for a name outside the set.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Which kind of failure.
    pub kind: ErrorKind,
    /// The target's HTTP status, when it answered.
    pub status: Option<u16>,
    /// For people: what happened, never a URL or a secret.
    pub reason: String,
}

impl Failure {
    /// A failure of `kind` with no status.
    pub fn new(kind: ErrorKind, reason: impl Into<String>) -> Self {
        Self {
            kind,
            status: None,
            reason: reason.into(),
        }
    }

    /// The target answered `status`.
    pub fn status(status: u16, reason: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::HttpStatus,
            status: Some(status),
            reason: reason.into(),
        }
    }

    /// What the record of an attempt that failed this way and was then
    /// handed back says: the hand-back's own cause, the attempt's status.
    pub fn handed_back(&self, circuit_open: bool) -> Self {
        let (kind, why) = if circuit_open {
            (ErrorKind::CircuitOpen, "circuit open")
        } else {
            (ErrorKind::Broker, "could not store the copy")
        };
        Self {
            kind,
            status: self.status,
            reason: format!("{why}: {}", self.reason),
        }
    }

    /// The same failure with `reason` in place of its own.
    pub fn with_reason(&self, reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_name() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ErrorKind::parse("Timeout"), None);
        assert_eq!(ErrorKind::parse(""), None);
    }
}

//! What can go wrong talking to the broker, in the terms callers act on,
//! with what the gateway was doing and the driver's error underneath; and
//! `Chain`, how every crate of the product logs an error with its causes.

use std::borrow::Cow;
use std::error::Error;
use std::fmt;

use lapin::protocol::{AMQPErrorKind, AMQPSoftError};

/// What the gateway was doing when the broker failed it ("declaring queue
/// `orders`"): the context a log line needs beside the driver's error.
pub type Doing = Cow<'static, str>;

/// Any error underneath an `Unavailable`: lapin's, a task's, or `Lost`.
pub type Cause = Box<dyn Error + Send + Sync + 'static>;

/// Why a broker operation failed, in the terms a caller acts on: retry later, 404, 409 or a
/// refusal. Each carries what the gateway was doing and, where there is one, the driver's error,
/// boxed: lapin 4's error is large, and a `Result<_, BrokerError>` stays small on the delivery
/// path.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No connection, or it broke mid-operation, or the broker did not
    /// answer: worth retrying later.
    #[error("the message broker is unavailable ({doing})")]
    Unavailable {
        /// What the gateway was asking of the broker.
        doing: Doing,
        /// The driver's error, or what the gateway saw itself (`Lost`).
        #[source]
        source: Cause,
    },
    /// The broker has no such queue or exchange. `reason` is the broker's
    /// reply text (kept for the caller's answer; `source` is lapin's error),
    /// or the gateway's own words when it looked first.
    #[error("{doing}: {reason}")]
    NotFound {
        /// What the gateway was asking of the broker.
        doing: Doing,
        /// The broker's reply text, or the gateway's own words.
        reason: String,
        /// The driver's error; `None` when the gateway found out first.
        #[source]
        source: Option<Box<lapin::Error>>,
    },
    /// The broker refused because an existing object differs
    /// (PRECONDITION_FAILED) or is in use (RESOURCE_LOCKED); or the gateway
    /// refused first, for the same reason.
    #[error("{doing}: {reason}")]
    Conflict {
        /// What the gateway was asking of the broker.
        doing: Doing,
        /// The broker's reply text, or the gateway's own words.
        reason: String,
        /// The driver's error; `None` when the gateway refused first.
        #[source]
        source: Option<Box<lapin::Error>>,
    },
    /// The broker refused for another reason (access, invalid argument).
    #[error("{doing}: the broker refused the request: {reason}")]
    Refused {
        /// What the gateway was asking of the broker.
        doing: Doing,
        /// The broker's reply text.
        reason: String,
        /// The driver's error.
        #[source]
        source: Box<lapin::Error>,
    },
    /// The broker nacked a publish: it did not take responsibility for it.
    #[error("the broker did not confirm the message")]
    Nacked,
    /// The broker blocked the publish connection (`connection.blocked`, a
    /// memory or disk alarm): nothing can be published until it lifts.
    #[error(
        "the message broker is refusing new messages for now (a resource alarm); try again later"
    )]
    Blocked,
    /// The message's properties (its headers, mostly) would not fit in one
    /// frame of the negotiated size; sending it would make the broker close
    /// the whole connection.
    #[error(
        "the message properties take {size} bytes, more than the {max} bytes a frame can carry"
    )]
    FrameTooLarge {
        /// Bytes the encoded properties take.
        size: usize,
        /// Bytes a frame can carry, as negotiated with the broker.
        max: usize,
    },
}

/// Why the broker is unavailable when no driver error says so: what the
/// gateway saw itself.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    /// No connection at the moment.
    #[error("not connected to the broker")]
    NotConnected,
    /// A request timed out without a reply.
    #[error("the broker did not answer in time")]
    NoAnswer,
    /// The broker cancelled the consumer itself.
    #[error("the broker ended the consumer (was the queue deleted?)")]
    ConsumerEnded,
    /// A publish found its channel without confirms, so no confirm would ever come.
    #[error("the publish channel is not in confirm mode")]
    NotConfirming,
}

impl BrokerError {
    /// Classifies lapin's error by the broker's reply code; `doing` says
    /// what was asked of the broker.
    pub fn amqp(doing: impl Into<Doing>, err: lapin::Error) -> Self {
        let doing = doing.into();
        let lapin::ErrorKind::ProtocolError(amqp) = err.kind() else {
            return BrokerError::Unavailable {
                doing,
                source: Box::new(err),
            };
        };
        let reason = amqp.get_message().to_string();
        match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => BrokerError::NotFound {
                doing,
                reason,
                source: Some(Box::new(err)),
            },
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
            | AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED) => BrokerError::Conflict {
                doing,
                reason,
                source: Some(Box::new(err)),
            },
            AMQPErrorKind::Soft(_) => BrokerError::Refused {
                doing,
                reason,
                source: Box::new(err),
            },
            AMQPErrorKind::Hard(_) => BrokerError::Unavailable {
                doing,
                source: Box::new(err),
            },
        }
    }

    /// Unavailable, for `source` (a `Lost`, a task's `JoinError`, …).
    pub fn unavailable(doing: impl Into<Doing>, source: impl Into<Cause>) -> Self {
        BrokerError::Unavailable {
            doing: doing.into(),
            source: source.into(),
        }
    }

    /// The gateway looked and found nothing: `reason` names what is missing.
    pub fn not_found(doing: impl Into<Doing>, reason: impl Into<String>) -> Self {
        BrokerError::NotFound {
            doing: doing.into(),
            reason: reason.into(),
            source: None,
        }
    }

    /// The gateway refuses before asking the broker: `reason` says why.
    pub fn conflict(doing: impl Into<Doing>, reason: impl Into<String>) -> Self {
        BrokerError::Conflict {
            doing: doing.into(),
            reason: reason.into(),
            source: None,
        }
    }

    /// The same failure with other words for what was being done.
    pub fn while_doing(mut self, what: impl Into<Doing>) -> Self {
        match &mut self {
            BrokerError::Unavailable { doing, .. }
            | BrokerError::NotFound { doing, .. }
            | BrokerError::Conflict { doing, .. }
            | BrokerError::Refused { doing, .. } => *doing = what.into(),
            BrokerError::Nacked | BrokerError::Blocked | BrokerError::FrameTooLarge { .. } => {}
        }
        self
    }
}

/// `?` on a lapin result where no more is known than that the broker was
/// asked something; say what with `AmqpContext::doing` where it is known.
impl From<lapin::Error> for BrokerError {
    fn from(err: lapin::Error) -> Self {
        BrokerError::amqp("talking to the broker", err)
    }
}

/// Context for lapin results: `channel.queue_declare(..).await.doing(|| …)`.
pub trait AmqpContext<T> {
    /// Wraps lapin's error with `what` the gateway was doing; `what` is built only on failure.
    fn doing<D: Into<Doing>>(self, what: impl FnOnce() -> D) -> Result<T, BrokerError>;
}

impl<T> AmqpContext<T> for Result<T, lapin::Error> {
    fn doing<D: Into<Doing>>(self, what: impl FnOnce() -> D) -> Result<T, BrokerError> {
        self.map_err(|err| BrokerError::amqp(what(), err))
    }
}

/// An error and its causes on one line, `outer: cause: cause's cause`, for
/// logs: `tracing::warn!(error = %Chain(&err), "…")`. A cause whose text
/// the line already holds (drivers often repeat their source in their own
/// text) is not said twice.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&with_causes(self.0.to_string(), self.0))
    }
}

/// `head`, then each cause of `err` that the text does not hold yet, joined
/// with ": ". The one walk over an error's causes: `Chain` for logs, and the
/// forwarder's and scraper's stored error texts.
pub fn with_causes(head: String, err: &(dyn Error + 'static)) -> String {
    let mut said = head;
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !said.contains(&text) {
            said.push_str(": ");
            said.push_str(&text);
        }
        source = cause.source();
    }
    said
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_says_every_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = BrokerError::amqp(
            "declaring queue `orders`",
            lapin::Error::from(lapin::ErrorKind::IOError(std::sync::Arc::new(io))),
        );
        assert!(matches!(err, BrokerError::Unavailable { .. }));
        assert_eq!(
            Chain(&err).to_string(),
            "the message broker is unavailable (declaring queue `orders`): IO error: refused"
        );
    }

    #[test]
    fn the_broker_reply_stays_the_reason_and_lapin_the_source() {
        let amqp = lapin::protocol::AMQPError::new(
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
            "PRECONDITION_FAILED - inequivalent arg".into(),
        );
        let err = BrokerError::amqp(
            "declaring queue `q`",
            lapin::Error::from(lapin::ErrorKind::ProtocolError(amqp)),
        );
        match &err {
            BrokerError::Conflict { reason, source, .. } => {
                assert_eq!(reason, "PRECONDITION_FAILED - inequivalent arg");
                assert!(source.is_some());
            }
            other => panic!("not a conflict: {other:?}"),
        }
        assert!(err.source().is_some());
    }
}

//! What can go wrong talking to the broker, in the terms callers act on.

use lapin::protocol::{AMQPErrorKind, AMQPSoftError};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No connection, or it broke mid-operation: worth retrying later.
    #[error("the message broker is unavailable: {0}")]
    Unavailable(String),
    /// The broker has no such queue or exchange.
    #[error("{0}")]
    NotFound(String),
    /// The broker refused because an existing object differs
    /// (PRECONDITION_FAILED) or is in use (RESOURCE_LOCKED).
    #[error("{0}")]
    Conflict(String),
    /// The broker refused for another reason (access, invalid argument).
    #[error("the broker refused the request: {0}")]
    Refused(String),
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
    FrameTooLarge { size: usize, max: usize },
}

impl From<lapin::Error> for BrokerError {
    fn from(err: lapin::Error) -> Self {
        match err.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => {
                let text = amqp.get_message().to_string();
                match amqp.kind() {
                    AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => BrokerError::NotFound(text),
                    AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
                    | AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED) => {
                        BrokerError::Conflict(text)
                    }
                    AMQPErrorKind::Soft(_) => BrokerError::Refused(text),
                    AMQPErrorKind::Hard(_) => BrokerError::Unavailable(text),
                }
            }
            _ => BrokerError::Unavailable(err.to_string()),
        }
    }
}

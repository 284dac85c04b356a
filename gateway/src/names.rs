//! Names that reach the broker. Each newtype's constructor enforces the
//! broker's rules (and the gateway's reserved suffixes), so a value that
//! exists is a value RabbitMQ will accept: parse, don't validate.

use std::fmt;

/// Suffix of the dead-letter companion of a main queue.
pub const DEAD_LETTER_SUFFIX: &str = ".dlq";
/// Infix of the delay companions (`<queue>.retry.<ms>`) of a main queue.
pub const RETRY_INFIX: &str = ".retry.";

const MAX_NAME_BYTES: usize = 255;
/// The longest companion suffix, `.retry.86400000` (a day's delay).
const LONGEST_COMPANION_SUFFIX: usize = 15;
/// A queue name leaves room for its companions' suffixes: the broker's
/// limit is 255 bytes, and lapin would write a longer name as a corrupt
/// frame that closes the whole connection.
pub const MAX_QUEUE_NAME_BYTES: usize = MAX_NAME_BYTES - LONGEST_COMPANION_SUFFIX;

/// Why a queue, exchange or routing key name was refused. The `&'static str` is the field's name in
/// the API (`queueName`, …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// The name is longer than the broker (or a companion's suffix) allows.
    #[error("{what} must be at most {max} bytes, this one is {len}")]
    TooLong {
        /// The field's name in the API.
        what: &'static str,
        /// The most bytes allowed.
        max: usize,
        /// Bytes the name has.
        len: usize,
    },
    /// The name starts with `amq.`, which RabbitMQ reserves.
    #[error("{0} must not start with `amq.`: that prefix is reserved by RabbitMQ")]
    Reserved(&'static str),
    /// The name holds a control character.
    #[error("{0} must not contain control characters")]
    ControlCharacter(&'static str),
    /// The name is one the gateway's own companion queues use.
    #[error("queue names ending in `.dlq` or containing `.retry.` are reserved for the gateway's own companion queues")]
    Companion,
}

fn check_common(what: &'static str, raw: &str, max: usize) -> Result<(), NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty(what));
    }
    if raw.len() > max {
        return Err(NameError::TooLong {
            what,
            max,
            len: raw.len(),
        });
    }
    if raw.starts_with("amq.") {
        return Err(NameError::Reserved(what));
    }
    if raw.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter(what));
    }
    Ok(())
}

/// A queue an operator may create, publish to or consume from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct QueueName(String);

impl QueueName {
    /// Refuses names that are empty, too long, reserved by RabbitMQ or shaped like a companion
    /// queue's.
    pub fn parse(raw: impl Into<String>) -> Result<Self, NameError> {
        let raw = raw.into();
        check_common("queueName", &raw, MAX_QUEUE_NAME_BYTES)?;
        if raw.ends_with(DEAD_LETTER_SUFFIX) || raw.contains(RETRY_INFIX) {
            return Err(NameError::Companion);
        }
        Ok(Self(raw))
    }

    /// The name as the broker knows it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<queue>.dlq`: where messages go once their outcome is final failure.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}{DEAD_LETTER_SUFFIX}", self.0)
    }

    /// `<queue>.retry.<ms>`: a delay queue whose TTL returns messages to
    /// this queue. One per distinct delay, so a short delay never waits
    /// behind a long one at the head of a shared queue.
    pub fn retry_queue(&self, delay_ms: u64) -> String {
        format!("{}{RETRY_INFIX}{delay_ms}", self.0)
    }

    /// The main queue a companion belongs to, if `raw` names a companion.
    pub fn main_of_companion(raw: &str) -> Option<&str> {
        if let Some(main) = raw.strip_suffix(DEAD_LETTER_SUFFIX) {
            return Some(main);
        }
        let idx = raw.rfind(RETRY_INFIX)?;
        let tail = &raw[idx + RETRY_INFIX.len()..];
        (!tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit())).then(|| &raw[..idx])
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for QueueName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// An exchange an operator may create, bind or publish to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ExchangeName(String);

impl ExchangeName {
    /// Refuses names that are empty, too long or reserved by RabbitMQ.
    pub fn parse(raw: impl Into<String>) -> Result<Self, NameError> {
        let raw = raw.into();
        check_common("exchangeName", &raw, MAX_NAME_BYTES)?;
        Ok(Self(raw))
    }

    /// The name as the broker knows it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ExchangeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A routing or binding key: at most 255 bytes, may be empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(transparent)]
pub struct RoutingKey(String);

impl RoutingKey {
    /// Refuses keys longer than 255 bytes.
    pub fn parse(raw: impl Into<String>) -> Result<Self, NameError> {
        let raw = raw.into();
        if raw.len() > MAX_NAME_BYTES {
            return Err(NameError::TooLong {
                what: "routingKey",
                max: MAX_NAME_BYTES,
                len: raw.len(),
            });
        }
        Ok(Self(raw))
    }

    /// The key as sent to the broker.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_the_broker_rules() {
        assert_eq!(QueueName::parse(""), Err(NameError::Empty("queueName")));
        assert!(matches!(
            QueueName::parse("a".repeat(256)),
            Err(NameError::TooLong { len: 256, .. })
        ));
        assert!(QueueName::parse("a".repeat(241)).is_err());
        let longest = QueueName::parse("a".repeat(240)).unwrap();
        assert!(longest.retry_queue(86_400_000).len() <= 255);
        assert!(longest.dead_letter_queue().len() <= 255);
        assert_eq!(
            QueueName::parse("amq.gen-1"),
            Err(NameError::Reserved("queueName"))
        );
        assert_eq!(QueueName::parse("orders.dlq"), Err(NameError::Companion));
        assert_eq!(
            QueueName::parse("orders.retry.1000"),
            Err(NameError::Companion)
        );
        assert_eq!(
            QueueName::parse("bad\nname"),
            Err(NameError::ControlCharacter("queueName"))
        );
        assert_eq!(QueueName::parse("orders").unwrap().as_str(), "orders");
    }

    #[test]
    fn companions_fold_into_their_main_queue() {
        let q = QueueName::parse("orders").unwrap();
        assert_eq!(
            QueueName::main_of_companion(&q.dead_letter_queue()),
            Some("orders")
        );
        assert_eq!(
            QueueName::main_of_companion(&q.retry_queue(2000)),
            Some("orders")
        );
        assert_eq!(QueueName::main_of_companion("orders"), None);
        assert_eq!(QueueName::main_of_companion("orders.retry.x"), None);
    }

    #[test]
    fn routing_keys_may_be_empty_but_not_long() {
        assert!(RoutingKey::parse("").is_ok());
        assert!(RoutingKey::parse("k".repeat(256)).is_err());
    }
}

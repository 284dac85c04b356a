//! Ordered delivery per key (opt-in, `ordering`): what a message's key is,
//! and the per-key lanes that keep one key's messages one at a time and in
//! order while different keys run in parallel.
//!
//! - `OrderingPolicy`: where the key is read (a header, or a JSON pointer
//!   into the payload), what happens to a message without one, and how long
//!   a delivery may be held for retries in place.
//! - `KeyLanes`: pure scheduling. A key has a lane while one of its messages
//!   is at the target or waiting for a retry; the messages of that key that
//!   arrive meanwhile queue in the lane, in arrival order, and the next one
//!   becomes ready only when the one before is final (delivered or
//!   dead-lettered). The worker's session owns one and does the I/O.
//!
//! Retries of an ordered consumer never go through delay queues (a copy
//! there would come back behind the key's later messages): the session
//! holds the delivery unacked and tries it again itself, up to
//! `max_hold` after it took it, under the broker's consumer timeout.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lapin::types::AMQPValue;
use lapin::BasicProperties;

/// Longest a header name or JSON pointer may be.
const MAX_KEY_SOURCE_LEN: usize = 255;

/// Why an ordering was refused, naming the part at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderingError {
    /// Neither `header` nor `jsonPointer`, or both.
    #[error("exactly one of `header` or `jsonPointer`")]
    KeySource,
    /// An empty or over-long header name.
    #[error("a header name of 1 to {MAX_KEY_SOURCE_LEN} characters")]
    Header,
    /// A JSON pointer that is not one (RFC 6901: empty, or starting with `/`).
    #[error("a JSON pointer starting with `/` (RFC 6901), at most {MAX_KEY_SOURCE_LEN} characters; got `{0}`")]
    JsonPointer(String),
}

/// Where a message's ordering key is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A message header, by its exact name: a string, or a whole number.
    Header(String),
    /// A value inside the JSON payload (RFC 6901): a string, a number or a
    /// boolean.
    JsonPointer(String),
}

impl KeySource {
    /// A header name, refused when empty or over-long.
    pub fn header(name: &str) -> Result<Self, OrderingError> {
        if name.is_empty() || name.len() > MAX_KEY_SOURCE_LEN {
            return Err(OrderingError::Header);
        }
        Ok(Self::Header(name.to_owned()))
    }

    /// A JSON pointer, refused unless it starts with `/`: the empty pointer
    /// (the whole document) would make every message its own key.
    pub fn json_pointer(pointer: &str) -> Result<Self, OrderingError> {
        if !pointer.starts_with('/') || pointer.len() > MAX_KEY_SOURCE_LEN {
            return Err(OrderingError::JsonPointer(
                pointer.chars().take(40).collect(),
            ));
        }
        Ok(Self::JsonPointer(pointer.to_owned()))
    }

    /// The message's key, if it has one.
    pub fn key_of(&self, properties: &BasicProperties, payload: &[u8]) -> Option<Key> {
        let text = match self {
            Self::Header(name) => match crate::headers::value(properties, name)? {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.to_string(),
                AMQPValue::LongLongInt(n) => n.to_string(),
                AMQPValue::LongInt(n) => n.to_string(),
                AMQPValue::LongUInt(n) => n.to_string(),
                AMQPValue::ShortInt(n) => n.to_string(),
                AMQPValue::ShortUInt(n) => n.to_string(),
                AMQPValue::ShortShortInt(n) => n.to_string(),
                AMQPValue::ShortShortUInt(n) => n.to_string(),
                _ => return None,
            },
            Self::JsonPointer(pointer) => {
                let body: serde_json::Value = serde_json::from_slice(payload).ok()?;
                match body.pointer(pointer)? {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => return None,
                }
            }
        };
        Some(Key(Arc::from(text)))
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(name) => write!(f, "header `{name}`"),
            Self::JsonPointer(pointer) => write!(f, "JSON pointer `{pointer}`"),
        }
    }
}

/// What becomes of a message without a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingKey {
    /// Delivered at once, waiting for no other message.
    #[default]
    Unordered,
    /// Dead-lettered, with the reason.
    DeadLetter,
}

/// An ordered consumer's ordering, as the engine runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderingPolicy {
    /// Where each message's key is read.
    pub key: KeySource,
    /// What becomes of a message without one.
    pub missing_key: MissingKey,
    /// Longest a delivery is held, unacked, for retries in place
    /// (`ORDERED_MAX_HOLD_MS`); a retry that would wait past it
    /// dead-letters the message instead.
    pub max_hold: Duration,
}

/// One message's ordering key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(Arc<str>);

impl Key {
    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The per-key lanes of one session. `T` is what the session queues (a
/// delivery); tests use plain numbers.
#[derive(Debug)]
pub(super) struct KeyLanes<T> {
    /// Keys whose head is at the target, waiting for a retry, or ready;
    /// the lane holds the messages behind the head, in arrival order.
    lanes: HashMap<Key, VecDeque<T>>,
    /// Messages whose turn it is, waiting for a call slot.
    ready: VecDeque<T>,
    /// Messages in `lanes`, behind their key's head.
    queued: usize,
}

impl<T> Default for KeyLanes<T> {
    fn default() -> Self {
        Self {
            lanes: HashMap::new(),
            ready: VecDeque::new(),
            queued: 0,
        }
    }
}

impl<T> KeyLanes<T> {
    /// A message arrived: ready at once when its key is free (or it has
    /// none), else queued behind the key's earlier messages.
    pub fn arrive(&mut self, key: Option<&Key>, item: T) {
        let Some(key) = key else {
            self.ready.push_back(item);
            return;
        };
        match self.lanes.get_mut(key) {
            Some(lane) => {
                lane.push_back(item);
                self.queued += 1;
            }
            None => {
                self.lanes.insert(key.clone(), VecDeque::new());
                self.ready.push_back(item);
            }
        }
    }

    /// The next message whose turn it is.
    pub fn next_ready(&mut self) -> Option<T> {
        self.ready.pop_front()
    }

    /// Messages queued behind their key's head.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Whether a message waits for a call slot.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// A head whose retry is due goes before messages of other keys: its
    /// key has waited longest.
    pub fn retry_due(&mut self, item: T) {
        self.ready.push_front(item);
    }

    /// The key's head is final (delivered, dead-lettered or handed back):
    /// its next message, if any, is ready; else the key is free.
    pub fn finished(&mut self, key: Option<&Key>) {
        let Some(key) = key else { return };
        let Some(lane) = self.lanes.get_mut(key) else {
            return;
        };
        match lane.pop_front() {
            Some(next) => {
                self.queued -= 1;
                self.ready.push_back(next);
            }
            None => {
                self.lanes.remove(key);
            }
        }
    }

    /// The key's head went back to the queue: so do the messages behind it
    /// (into `behind`, in arrival order), and the key is free.
    pub fn abandon(&mut self, key: Option<&Key>, behind: &mut Vec<T>) {
        if let Some(lane) = key.and_then(|key| self.lanes.remove(key)) {
            self.queued -= lane.len();
            behind.extend(lane);
        }
    }

    /// Keys with a message at the target, waiting or ready.
    #[cfg(test)]
    pub fn active_keys(&self) -> usize {
        self.lanes.len()
    }

    /// Everything not at the target and not held for a retry: the ready
    /// messages and those queued in lanes; the lanes are emptied.
    pub fn take_all(&mut self) -> Vec<T> {
        let mut all: Vec<T> = self.ready.drain(..).collect();
        for (_, lane) in self.lanes.drain() {
            all.extend(lane);
        }
        self.queued = 0;
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Key {
        Key(Arc::from(k))
    }

    #[test]
    fn one_key_goes_one_at_a_time_in_arrival_order() {
        let mut lanes = KeyLanes::default();
        let a = key("a");
        lanes.arrive(Some(&a), 1);
        lanes.arrive(Some(&a), 2);
        lanes.arrive(Some(&key("b")), 3);
        lanes.arrive(Some(&a), 4);
        assert_eq!(lanes.next_ready(), Some(1));
        assert_eq!(lanes.next_ready(), Some(3), "b does not wait for a");
        assert_eq!(lanes.next_ready(), None, "2 waits until 1 is final");
        assert_eq!(lanes.queued(), 2);
        lanes.finished(Some(&a));
        assert_eq!(lanes.next_ready(), Some(2));
        lanes.finished(Some(&a));
        assert_eq!(lanes.next_ready(), Some(4));
        lanes.finished(Some(&a));
        assert_eq!(lanes.active_keys(), 1, "only b is left");
        lanes.finished(Some(&key("b")));
        assert_eq!(lanes.active_keys(), 0);
    }

    #[test]
    fn a_message_without_a_key_waits_for_nothing() {
        let mut lanes = KeyLanes::default();
        lanes.arrive(Some(&key("a")), 1);
        lanes.arrive(None, 2);
        lanes.arrive(None, 3);
        assert_eq!(lanes.next_ready(), Some(1));
        assert_eq!(lanes.next_ready(), Some(2));
        assert_eq!(lanes.next_ready(), Some(3));
        lanes.finished(None);
        assert_eq!(lanes.active_keys(), 1);
    }

    #[test]
    fn a_due_retry_goes_first_and_its_successors_still_wait() {
        let mut lanes = KeyLanes::default();
        let a = key("a");
        lanes.arrive(Some(&a), 1);
        lanes.arrive(Some(&a), 2);
        assert_eq!(lanes.next_ready(), Some(1));
        lanes.arrive(Some(&key("b")), 3);
        lanes.retry_due(1);
        assert_eq!(lanes.next_ready(), Some(1));
        assert_eq!(lanes.next_ready(), Some(3));
        assert_eq!(lanes.next_ready(), None);
        assert_eq!(lanes.take_all(), vec![2]);
        assert_eq!(lanes.active_keys(), 0);
    }

    #[test]
    fn a_head_handed_back_takes_its_lane_along() {
        let mut lanes = KeyLanes::default();
        let a = key("a");
        for n in 1..=3 {
            lanes.arrive(Some(&a), n);
        }
        assert_eq!(lanes.next_ready(), Some(1));
        let mut behind = Vec::new();
        lanes.abandon(Some(&a), &mut behind);
        assert_eq!(behind, vec![2, 3]);
        lanes.arrive(Some(&a), 4);
        assert_eq!(lanes.next_ready(), Some(4), "the key is free again");
    }

    #[test]
    fn key_sources_are_checked() {
        assert_eq!(KeySource::header(""), Err(OrderingError::Header));
        assert!(KeySource::header("order-id").is_ok());
        assert!(matches!(
            KeySource::json_pointer("order/id"),
            Err(OrderingError::JsonPointer(_))
        ));
        assert!(KeySource::json_pointer("").is_err());
        assert!(KeySource::json_pointer("/order/id").is_ok());
    }

    #[test]
    fn keys_are_read_from_a_header_or_the_payload() {
        use lapin::types::FieldTable;
        let mut headers = FieldTable::default();
        headers.insert("order".into(), AMQPValue::LongString("o-1".into()));
        headers.insert("n".into(), AMQPValue::LongLongInt(42));
        let properties = BasicProperties::default().with_headers(headers);
        let header = KeySource::header("order").unwrap();
        assert_eq!(header.key_of(&properties, b""), Some(key("o-1")));
        let number = KeySource::header("n").unwrap();
        assert_eq!(number.key_of(&properties, b""), Some(key("42")));
        let absent = KeySource::header("Order").unwrap();
        assert_eq!(absent.key_of(&properties, b""), None, "names are exact");

        let pointer = KeySource::json_pointer("/order/id").unwrap();
        let none = BasicProperties::default();
        assert_eq!(
            pointer.key_of(&none, br#"{"order":{"id":"x"}}"#),
            Some(key("x"))
        );
        assert_eq!(
            pointer.key_of(&none, br#"{"order":{"id":7}}"#),
            Some(key("7"))
        );
        assert_eq!(pointer.key_of(&none, br#"{"order":{"id":null}}"#), None);
        assert_eq!(pointer.key_of(&none, br#"{"order":{}}"#), None);
        assert_eq!(pointer.key_of(&none, b"not json"), None);
    }
}

//! W3C Trace Context (`traceparent`) as a value: parsed once where it
//! enters (the publish route, a delivery's AMQP headers), then carried as a
//! `Traceparent` that can only hold a valid one.
//!
//! A message carries its trace in the AMQP header `traceparent`, the name
//! W3C's AMQP propagation uses, so tracing-aware publishers and consumers
//! outside the gateway read the same thing. Every call to a target is a span
//! of its own under the message's: same trace id, new span id
//! (`Traceparent::child`).
//!
//! Only version `00` is written. A later version is read as the spec asks
//! (its first four fields as version `00`'s, anything after a `-` ignored),
//! so a newer tracer upstream does not cut the trace.

use std::fmt;

/// The header's name, in HTTP and in a message's AMQP headers alike.
pub const HEADER: &str = "traceparent";

/// The one version this code writes, and the only one it reads strictly.
const VERSION_00: u8 = 0x00;
/// Reserved by the spec as invalid.
const VERSION_INVALID: u8 = 0xff;
/// `00-` + 32 + `-` + 16 + `-` + 2.
const LEN_00: usize = 55;
/// The `sampled` bit of the flags.
const SAMPLED: u8 = 0x01;

/// A valid trace context: which trace, which span is the parent, and the
/// trace flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Traceparent {
    trace_id: TraceId,
    parent_id: SpanId,
    flags: u8,
}

/// 16 bytes, never all zero; shown as 32 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 16]);

/// 8 bytes, never all zero; shown as 16 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId([u8; 8]);

/// Why a `traceparent` value is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceparentError {
    /// Not `version-traceid-parentid-flags`, or a field of the wrong length.
    #[error("expected `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`")]
    Shape,
    /// A field holds something other than lower-case hex.
    #[error("the {0} is not lower-case hex")]
    NotHex(&'static str),
    /// Version `ff`, which the spec reserves as invalid.
    #[error("version ff is invalid")]
    InvalidVersion,
    /// Version `00` with something after its flags.
    #[error("version 00 has nothing after the flags")]
    TrailingData,
    /// The trace id is all zeros.
    #[error("the trace id is all zeros")]
    ZeroTraceId,
    /// The parent id is all zeros.
    #[error("the parent id is all zeros")]
    ZeroParentId,
}

impl Traceparent {
    /// Reads a `traceparent` value as W3C Trace Context level 1 defines it.
    pub fn parse(value: &str) -> Result<Self, TraceparentError> {
        let bytes = value.as_bytes();
        if bytes.len() < LEN_00 {
            return Err(TraceparentError::Shape);
        }
        let (head, rest) = bytes.split_at(LEN_00);
        if head[2] != b'-' || head[35] != b'-' || head[52] != b'-' {
            return Err(TraceparentError::Shape);
        }
        let [version] = hex::<1>(&head[0..2], "version")?;
        if version == VERSION_INVALID {
            return Err(TraceparentError::InvalidVersion);
        }
        match (version, rest.first()) {
            (_, None) => {}
            (VERSION_00, Some(_)) => return Err(TraceparentError::TrailingData),
            // A later version may add fields, each after a `-`.
            (_, Some(b'-')) => {}
            (_, Some(_)) => return Err(TraceparentError::Shape),
        }
        let trace_id = hex::<16>(&head[3..35], "trace id")?;
        let parent_id = hex::<8>(&head[36..52], "parent id")?;
        let [flags] = hex::<1>(&head[53..55], "flags")?;
        if trace_id == [0; 16] {
            return Err(TraceparentError::ZeroTraceId);
        }
        if parent_id == [0; 8] {
            return Err(TraceparentError::ZeroParentId);
        }
        Ok(Self {
            trace_id: TraceId(trace_id),
            parent_id: SpanId(parent_id),
            flags,
        })
    }

    /// A new trace, for a message published without one. Marked sampled:
    /// the gateway keeps each attempt's trace id, so a tracer downstream
    /// that follows its parent's decision should record its side too.
    pub fn start() -> Self {
        Self {
            trace_id: TraceId(nonzero_random()),
            parent_id: SpanId(nonzero_random()),
            flags: SAMPLED,
        }
    }

    /// A span under this one: the same trace and flags, a new span id whose
    /// parent is this one's.
    pub fn child(&self) -> Self {
        Self {
            parent_id: SpanId(nonzero_random()),
            ..*self
        }
    }

    /// The trace this context belongs to.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The span a callee's spans hang under.
    pub fn parent_id(&self) -> SpanId {
        self.parent_id
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }
}

impl std::str::FromStr for Traceparent {
    type Err = TraceparentError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

/// Always version `00`, whatever version was read: the only one this code
/// knows how to write.
impl fmt::Display for Traceparent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{VERSION_00:02x}-{}-{}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for byte in bytes {
        write!(f, "{byte:02x}")?;
    }
    Ok(())
}

/// `N` bytes from `2 * N` lower-case hex digits; the spec allows no
/// upper case.
fn hex<const N: usize>(digits: &[u8], field: &'static str) -> Result<[u8; N], TraceparentError> {
    fn nibble(digit: u8) -> Option<u8> {
        match digit {
            b'0'..=b'9' => Some(digit - b'0'),
            b'a'..=b'f' => Some(digit - b'a' + 10),
            _ => None,
        }
    }
    if digits.len() != 2 * N {
        return Err(TraceparentError::Shape);
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (Some(high), Some(low)) = (nibble(pair[0]), nibble(pair[1])) else {
            return Err(TraceparentError::NotHex(field));
        };
        *byte = high << 4 | low;
    }
    Ok(out)
}

/// Random bytes, redrawn in the (2^-64 or rarer) case they are all zero,
/// which the spec forbids.
fn nonzero_random<const N: usize>() -> [u8; N] {
    loop {
        let bytes: [u8; N] = rand::random();
        if bytes != [0; N] {
            return bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specs_example_reads_and_writes_back_unchanged() {
        let parsed = Traceparent::parse(EXAMPLE).expect("the spec's own example");
        assert_eq!(
            parsed.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parsed.parent_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(parsed.flags(), 0x01);
        assert_eq!(parsed.to_string(), EXAMPLE);
        assert_eq!(EXAMPLE.parse::<Traceparent>(), Ok(parsed));
    }

    #[test]
    fn malformed_values_are_refused_with_their_reason() {
        let cases = [
            ("", TraceparentError::Shape),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                TraceparentError::Shape,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
                TraceparentError::Shape,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceparentError::Shape,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
                TraceparentError::Shape,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                TraceparentError::NotHex("trace id"),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
                TraceparentError::NotHex("parent id"),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
                TraceparentError::NotHex("flags"),
            ),
            (
                "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceparentError::NotHex("version"),
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceparentError::InvalidVersion,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                TraceparentError::ZeroTraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                TraceparentError::ZeroParentId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                TraceparentError::TrailingData,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
                TraceparentError::TrailingData,
            ),
            // A multi-byte character where a separator belongs.
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736é0f067aa0ba902b7-01",
                TraceparentError::Shape,
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(Traceparent::parse(value), Err(expected), "{value:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_as_far_as_version_00_goes_and_written_as_00() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-comes-next";
        let parsed = Traceparent::parse(later).expect("a later version is tolerated");
        assert_eq!(
            parsed.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09"
        );
        let bare = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09";
        assert!(Traceparent::parse(bare).is_ok());
        // Whatever follows must start with a `-`.
        let glued = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09x";
        assert_eq!(Traceparent::parse(glued), Err(TraceparentError::Shape));
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_and_gets_a_new_span() {
        let parent = Traceparent::parse(EXAMPLE).expect("valid");
        let child = parent.child();
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_eq!(child.flags(), parent.flags());
        assert_ne!(child.parent_id(), parent.parent_id());
        assert_ne!(child.parent_id(), child.child().parent_id());
    }

    #[test]
    fn a_started_trace_is_valid_sampled_and_new_each_time() {
        let started = Traceparent::start();
        let written = started.to_string();
        assert_eq!(Traceparent::parse(&written), Ok(started), "{written}");
        assert_eq!(started.flags() & SAMPLED, SAMPLED);
        assert_ne!(Traceparent::start().trace_id(), started.trace_id());
    }
}

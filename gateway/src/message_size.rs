//! The size of messages as the broker receives them, measured with the
//! encoder lapin itself uses, so a limit checked here is the limit on the
//! wire: the encoded headers (`MAX_HEADER_BYTES`), and whether a message's
//! properties fit in one frame.
//!
//! AMQP carries a message's properties (its headers included) in a single
//! header frame that must not exceed the `frame_max` negotiated with the
//! broker. lapin writes an oversized one anyway, and the broker answers by
//! closing the whole connection (`FRAME_ERROR`): every consumer or publish
//! on it fails. So the size is measured before anything is sent.

use lapin::protocol::basic::gen_properties;
use lapin::types::generation::gen_field_table;
use lapin::types::FieldTable;
use lapin::BasicProperties;

use crate::BrokerError;

/// Frame type, channel and size (7 bytes) before the payload, the end
/// marker (1) after it; the content header's class id, weight and body size
/// (12) before the properties.
const HEADER_FRAME_OVERHEAD: usize = 7 + 1 + 12;

/// Bytes `headers` take in a content-header frame, the 4-byte length
/// prefix included.
pub fn encoded_headers_len(headers: &FieldTable) -> usize {
    match cookie_factory::gen(gen_field_table(headers), Vec::new()) {
        Ok((_, len)) => usize::try_from(len).unwrap_or(usize::MAX),
        // Writing to a Vec cannot run out of room; should the encoder fail
        // anyway, the table cannot be sent, so it counts as too large.
        Err(_) => usize::MAX,
    }
}

/// Bytes of the header frame that would carry these properties.
pub fn header_frame_size(properties: &BasicProperties) -> usize {
    // Serializing into a Vec cannot fail for lack of room; should the
    // encoder refuse the properties, they certainly do not fit.
    cookie_factory::gen_simple(gen_properties(properties), Vec::new()).map_or(usize::MAX, |bytes| {
        bytes.len().saturating_add(HEADER_FRAME_OVERHEAD)
    })
}

/// `Ok` when the properties fit a frame of `frame_max` bytes.
pub fn check_fits(properties: &BasicProperties, frame_max: u32) -> Result<(), BrokerError> {
    let size = header_frame_size(properties);
    let max = frame_max as usize;
    if size <= max {
        Ok(())
    } else {
        Err(BrokerError::FrameTooLarge { size, max })
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, LongString};

    use super::*;

    #[test]
    fn an_empty_table_is_its_length_prefix() {
        assert_eq!(encoded_headers_len(&FieldTable::default()), 4);
    }

    #[test]
    fn a_long_string_counts_name_type_length_and_bytes() {
        // prefix 4 + name (1 + 1) + type 1 + length 4 + 1000 bytes
        assert_eq!(encoded_headers_len(&table_of(1000)), 4 + 2 + 1 + 4 + 1000);
    }

    /// One header, `h`, of `len` bytes.
    fn table_of(len: usize) -> FieldTable {
        let mut table = FieldTable::default();
        table.insert(
            "h".into(),
            AMQPValue::LongString(LongString::from(vec![b'x'; len])),
        );
        table
    }

    fn with_header_of(len: usize) -> BasicProperties {
        BasicProperties::default().with_headers(table_of(len))
    }

    #[test]
    fn the_size_counts_every_encoded_byte() {
        // flags (2) + table length (4) + key length (1) + "h" (1) + type (1)
        // + string length (4) + the string.
        assert_eq!(
            header_frame_size(&with_header_of(100)),
            HEADER_FRAME_OVERHEAD + 2 + 4 + 1 + 1 + 1 + 4 + 100
        );
        assert_eq!(
            header_frame_size(&BasicProperties::default()),
            HEADER_FRAME_OVERHEAD + 2
        );
    }

    #[test]
    fn properties_over_the_frame_size_are_refused() {
        let fits = with_header_of(1_000);
        let size = header_frame_size(&fits);
        assert!(check_fits(&fits, size as u32).is_ok());
        assert!(matches!(
            check_fits(&fits, size as u32 - 1),
            Err(BrokerError::FrameTooLarge { .. })
        ));
    }
}

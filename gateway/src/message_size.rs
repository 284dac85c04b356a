//! The size of message headers as the broker receives them: the AMQP
//! field-table encoding, measured with the encoder lapin itself uses, so a
//! limit checked here is the limit on the wire.

use lapin::types::generation::gen_field_table;
use lapin::types::FieldTable;

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
        let mut table = FieldTable::default();
        table.insert(
            "h".into(),
            AMQPValue::LongString(LongString::from(vec![b'x'; 1000])),
        );
        // prefix 4 + name (1 + 1) + type 1 + length 4 + 1000 bytes
        assert_eq!(encoded_headers_len(&table), 4 + 2 + 1 + 4 + 1000);
    }
}

//! A delivery's envelope as a consumer's rules read it: exchange, routing
//! key, and headers as JSON. Made only for consumers with rules.

use lapin::message::Delivery;
use lapin::types::AMQPValue;

use super::target::Envelope;

impl Envelope {
    /// `delivery`'s envelope; header names in lower case.
    pub fn of(delivery: &Delivery) -> Self {
        let headers = delivery
            .properties
            .headers()
            .as_ref()
            .map(|table| {
                table
                    .inner()
                    .iter()
                    .map(|(name, value)| (name.as_str().to_ascii_lowercase(), json_of(value)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            exchange: delivery.exchange.as_str().to_owned(),
            routing_key: delivery.routing_key.as_str().to_owned(),
            headers,
        }
    }
}

/// An AMQP field value as JSON: numbers as numbers, text (and bytes that
/// are UTF-8) as strings, tables as objects.
fn json_of(value: &AMQPValue) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        AMQPValue::Boolean(b) => J::Bool(*b),
        AMQPValue::ShortShortInt(n) => J::from(*n),
        AMQPValue::ShortShortUInt(n) => J::from(*n),
        AMQPValue::ShortInt(n) => J::from(*n),
        AMQPValue::ShortUInt(n) => J::from(*n),
        AMQPValue::LongInt(n) => J::from(*n),
        AMQPValue::LongUInt(n) => J::from(*n),
        AMQPValue::LongLongInt(n) => J::from(*n),
        AMQPValue::Timestamp(n) => J::from(*n),
        AMQPValue::Float(f) => J::from(f64::from(*f)),
        AMQPValue::Double(f) => J::from(*f),
        AMQPValue::DecimalValue(d) => J::from(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => J::from(s.as_str()),
        AMQPValue::LongString(s) => text_or_bytes(s.as_bytes()),
        AMQPValue::ByteArray(b) => text_or_bytes(b.as_slice()),
        AMQPValue::FieldArray(items) => J::Array(items.as_slice().iter().map(json_of).collect()),
        AMQPValue::FieldTable(table) => J::Object(
            table
                .inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), json_of(v)))
                .collect(),
        ),
        AMQPValue::Void => J::Null,
    }
}

fn text_or_bytes(bytes: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::Value::from(text),
        Err(_) => bytes.iter().copied().map(serde_json::Value::from).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, FieldTable, LongString};
    use serde_json::json;

    #[test]
    fn header_values_read_as_json() {
        let mut inner = FieldTable::default();
        inner.insert("n".into(), AMQPValue::LongInt(3));
        let cases = [
            (
                AMQPValue::LongString(LongString::from("acme")),
                json!("acme"),
            ),
            (AMQPValue::LongLongInt(-7), json!(-7)),
            (AMQPValue::Boolean(true), json!(true)),
            (AMQPValue::Double(1.5), json!(1.5)),
            (AMQPValue::Void, json!(null)),
            (AMQPValue::FieldTable(inner), json!({ "n": 3 })),
            (
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::ShortInt(1)])),
                json!([1]),
            ),
            (
                AMQPValue::LongString(LongString::from(vec![0xff_u8, 0x00])),
                json!([255, 0]),
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(json_of(&value), expected, "{value:?}");
        }
    }
}

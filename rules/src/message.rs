//! What a rule sees of one message, bound as CEL variables: only the
//! parts the rules read are converted.

use std::sync::Arc;

use cel::{Context, Value};

use crate::convert;
use crate::Reads;

/// One message as the rules see it, borrowed from the delivery.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The payload's bytes; `body` is their JSON, or `null` when they are
    /// not JSON.
    pub payload: &'a [u8],
    /// Its headers, names in lower case, values as JSON.
    pub headers: &'a [(String, serde_json::Value)],
    /// The routing key it was published with.
    pub routing_key: &'a str,
    /// The exchange it was published to (`""`: the default exchange).
    pub exchange: &'a str,
    /// Its stable id.
    pub message_id: &'a str,
    /// Its `content_type` property.
    pub content_type: Option<&'a str>,
}

impl Message<'_> {
    /// The payload as JSON, `null` when it is not JSON.
    pub fn body(&self) -> serde_json::Value {
        serde_json::from_slice(self.payload).unwrap_or(serde_json::Value::Null)
    }

    pub(crate) fn bind(&self, context: &mut Context<'_, '_>, reads: Reads) {
        if reads.body {
            context.add_variable_from_value("body", convert::to_cel(&self.body()));
        }
        if reads.headers {
            context.add_variable_from_value(
                "headers",
                convert::object(self.headers.iter().map(|(k, v)| (k, v))),
            );
        }
        context.add_variable_from_value("routingKey", text(self.routing_key));
        context.add_variable_from_value("exchange", text(self.exchange));
        context.add_variable_from_value("messageId", text(self.message_id));
        context.add_variable_from_value("contentType", self.content_type.map_or(Value::Null, text));
    }
}

fn text(s: &str) -> Value {
    Value::String(Arc::new(s.to_owned()))
}

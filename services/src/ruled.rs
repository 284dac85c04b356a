//! `RuledTarget`: a consumer's filter and transform in front of its target.
//! The filter's refusal is an outcome (`Filtered`, acked without a call);
//! a transform hands the target a copy of the message with the new body
//! (as JSON) and the added headers, so the signature the forwarder makes
//! covers what is sent. The message as it came stays what the engine
//! settles: a retry or a dead letter carries the original, and runs the
//! rules again.

use std::sync::Arc;

use gateway::{Attempt, DeliveryOutcome, DeliveryTarget, ErrorKind, Failure, IncomingMessage};
use rules::{ConsumerRules, Message, RunError, Transformed, Verdict};
use serde::{Deserialize, Serialize};

/// What becomes of a message when a rule fails on it at run time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnRuleError {
    /// Dead-lettered with the reason (kind `rule`).
    #[default]
    DeadLetter,
    /// Delivered unchanged, untransformed.
    Deliver,
    /// Acked without a call, counted in `filtered`.
    Drop,
}

/// A target behind a consumer's rules.
pub struct RuledTarget {
    rules: ConsumerRules,
    on_error: OnRuleError,
    inner: Arc<dyn DeliveryTarget>,
}

impl RuledTarget {
    /// `inner` behind `rules`, failing as `on_error` says.
    pub fn new(
        rules: ConsumerRules,
        on_error: OnRuleError,
        inner: Arc<dyn DeliveryTarget>,
    ) -> Self {
        Self {
            rules,
            on_error,
            inner,
        }
    }
}

/// What the rules see of `message`: its envelope when the engine made one.
pub fn rule_view(message: &IncomingMessage) -> Message<'_> {
    let envelope = message.envelope.as_deref();
    Message {
        payload: &message.payload,
        headers: envelope.map_or(&[], |e| e.headers.as_slice()),
        routing_key: envelope.map_or("", |e| e.routing_key.as_str()),
        exchange: envelope.map_or("", |e| e.exchange.as_str()),
        message_id: &message.message_id,
        content_type: message.content_type.as_deref(),
    }
}

/// `message` as a transform reshaped it: the new body as JSON, the added
/// headers.
pub fn transformed(message: &IncomingMessage, transformed: Transformed) -> IncomingMessage {
    let mut out = message.clone();
    if let Some(body) = transformed.body {
        out.payload = serde_json::to_vec(&body).unwrap_or_default().into();
        out.content_type = Some("application/json".to_owned());
    }
    out.added_headers = transformed.headers;
    out
}

#[async_trait::async_trait]
impl DeliveryTarget for RuledTarget {
    async fn deliver(&self, message: &IncomingMessage) -> Attempt {
        match self.rules.apply(&rule_view(message)) {
            Ok(Verdict::Filtered) => DeliveryOutcome::Filtered { error: None }.into(),
            Ok(Verdict::Send(None)) => self.inner.deliver(message).await,
            Ok(Verdict::Send(Some(shape))) => {
                self.inner.deliver(&transformed(message, shape)).await
            }
            Err(err) => self.failed(message, err).await,
        }
    }
}

impl RuledTarget {
    async fn failed(&self, message: &IncomingMessage, err: RunError) -> Attempt {
        tracing::info!(rule = %err.field, on_rule_error = ?self.on_error, error = %err.problem, "a rule failed on the message");
        let failure = || Failure::new(ErrorKind::Rule, err.to_string());
        match self.on_error {
            OnRuleError::DeadLetter => DeliveryOutcome::reject(failure()).into(),
            OnRuleError::Deliver => self.inner.deliver(message).await,
            OnRuleError::Drop => DeliveryOutcome::Filtered {
                error: Some(failure()),
            }
            .into(),
        }
    }
}

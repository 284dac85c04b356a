use crate::{
    message::BasicReturnMessage, publisher_confirm::Confirmation, types::PayloadSize,
    BasicProperties, Promise,
};
use parking_lot::Mutex;
use std::{collections::VecDeque, fmt, sync::Arc};
use tracing::trace;

/// Called with every message the broker returns, when its last frame is
/// read: before any frame that follows it on the wire (workerrmq patch).
pub(crate) type ReturnListener = Arc<dyn Fn(&BasicReturnMessage) + Send + Sync>;

#[derive(Clone, Default)]
pub(crate) struct ReturnedMessages {
    inner: Arc<Mutex<Inner>>,
    listener: Arc<Mutex<Option<ReturnListener>>>,
}

impl ReturnedMessages {
    pub(crate) fn set_listener(&self, listener: ReturnListener) {
        *self.listener.lock() = Some(listener);
    }

    /// Hands a completed message to the listener, outside every lock of
    /// ours (the listener may take its own), then queues it as before.
    fn complete(&self, message: Option<BasicReturnMessage>, confirm_mode: bool) {
        if let Some(message) = message {
            let listener = self.listener.lock().clone();
            if let Some(listener) = listener {
                listener(&message);
            }
            self.inner.lock().queue_returned(message, confirm_mode);
        }
    }

    pub(crate) fn start_new_delivery(&self, message: BasicReturnMessage) {
        self.inner.lock().current_message = Some(message);
    }

    pub(crate) fn handle_content_header_frame(
        &self,
        size: PayloadSize,
        properties: BasicProperties,
        confirm_mode: bool,
    ) {
        let message = self.inner.lock().handle_content_header_frame(size, properties);
        self.complete(message, confirm_mode);
    }

    pub(crate) fn handle_body_frame(
        &self,
        remaining_size: PayloadSize,
        payload: Vec<u8>,
        confirm_mode: bool,
    ) {
        let message = self.inner.lock().handle_body_frame(remaining_size, payload);
        self.complete(message, confirm_mode);
    }

    pub(crate) fn drain(&self) -> Vec<BasicReturnMessage> {
        self.inner.lock().drain()
    }

    pub(crate) fn register_dropped_confirm(&self, promise: Promise<Confirmation>) {
        self.inner.lock().register_dropped_confirm(promise);
    }

    pub(crate) fn get_waiting_message(&self) -> Option<BasicReturnMessage> {
        self.inner.lock().waiting_messages.pop_front()
    }
}

impl fmt::Debug for ReturnedMessages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("ReturnedMessages");
        if let Some(inner) = self.inner.try_lock() {
            debug
                .field("waiting_messages", &inner.waiting_messages)
                .field("messages", &inner.messages)
                .field("non_confirm_messages", &inner.non_confirm_messages);
        }
        debug.finish()
    }
}

#[derive(Default)]
pub struct Inner {
    current_message: Option<BasicReturnMessage>,
    non_confirm_messages: Vec<BasicReturnMessage>,
    waiting_messages: VecDeque<BasicReturnMessage>,
    messages: Vec<BasicReturnMessage>,
    dropped_confirms: Vec<Promise<Confirmation>>,
}

impl Inner {
    /// The message, once complete.
    fn handle_content_header_frame(
        &mut self,
        size: PayloadSize,
        properties: BasicProperties,
    ) -> Option<BasicReturnMessage> {
        if let Some(message) = self.current_message.as_mut() {
            message.properties = properties;
        }
        if size == 0 {
            self.current_message.take()
        } else {
            None
        }
    }

    /// The message, once complete.
    fn handle_body_frame(
        &mut self,
        remaining_size: PayloadSize,
        payload: Vec<u8>,
    ) -> Option<BasicReturnMessage> {
        if let Some(message) = self.current_message.as_mut() {
            message.receive_content(payload);
        }
        if remaining_size == 0 {
            self.current_message.take()
        } else {
            None
        }
    }

    fn queue_returned(&mut self, message: BasicReturnMessage, confirm_mode: bool) {
        // workerrmq patch: trace, not warn: the message carries its whole payload.
        trace!(?message, "Server returned us a message");
        if confirm_mode {
            self.waiting_messages.push_back(message);
        } else {
            self.non_confirm_messages.push(message);
        }
    }

    fn register_dropped_confirm(&mut self, promise: Promise<Confirmation>) {
        if let Some(confirmation) = promise.try_wait() {
            if let Ok(Confirmation::Nack(Some(message))) | Ok(Confirmation::Ack(Some(message))) =
                confirmation
            {
                trace!("Dropped PublisherConfirm was carrying a message, storing it");
                self.messages.push(*message);
            } else {
                trace!("Dropped PublisherConfirm was ready but didn't carry a message, discarding");
            }
        } else {
            trace!("Storing dropped PublisherConfirm for further use");
            self.dropped_confirms.push(promise);
        }
    }

    fn drain(&mut self) -> Vec<BasicReturnMessage> {
        let mut messages = std::mem::take(&mut self.messages);
        if !self.non_confirm_messages.is_empty() {
            let mut non_confirm_messages = std::mem::take(&mut self.non_confirm_messages);
            non_confirm_messages.append(&mut messages);
            messages = non_confirm_messages;
        }
        let before = self.dropped_confirms.len();
        if before != 0 {
            for promise in std::mem::take(&mut self.dropped_confirms) {
                if let Some(confirmation) = promise.try_wait() {
                    if let Ok(Confirmation::Nack(Some(message)))
                    | Ok(Confirmation::Ack(Some(message))) = confirmation
                    {
                        trace!("PublisherConfirm was carrying a message, storing it");
                        messages.push(*message);
                    } else {
                        trace!("PublisherConfirm was ready but didn't carry a message, discarding");
                    }
                } else {
                    trace!("PublisherConfirm wasn't ready yet, storing it back");
                    self.dropped_confirms.push(promise);
                }
            }
            trace!(
                %before,
                after=%self.dropped_confirms.len(),
                "PublisherConfirms processed"
            );
        }
        messages
    }
}

#[cfg(test)]
mod tests {
    // workerrmq patch: the listener sees each returned message once, when
    // its last frame is read, and the message still reaches a confirm.
    use super::*;
    use crate::types::ShortString;

    fn returned(messages: &ReturnedMessages, id: &str) {
        messages.start_new_delivery(BasicReturnMessage::new(
            ShortString::from(""),
            ShortString::from("missing"),
            312,
            ShortString::from("NO_ROUTE"),
        ));
        messages.handle_content_header_frame(
            4,
            BasicProperties::default().with_message_id(id.into()),
            true,
        );
    }

    #[test]
    fn the_listener_sees_each_returned_message_when_it_is_complete() {
        let messages = ReturnedMessages::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        messages.set_listener(Arc::new(move |message: &BasicReturnMessage| {
            let id = message.properties.message_id().clone().map(|s| s.to_string());
            log.lock().push((id, message.delivery.routing_key.to_string()));
        }));
        returned(&messages, "a");
        assert!(seen.lock().is_empty(), "not before the body is complete");
        messages.handle_body_frame(2, b"ab".to_vec(), true);
        assert!(seen.lock().is_empty());
        messages.handle_body_frame(0, b"cd".to_vec(), true);
        returned(&messages, "b");
        messages.handle_body_frame(0, b"efgh".to_vec(), true);
        assert_eq!(
            *seen.lock(),
            vec![
                (Some("a".to_owned()), "missing".to_owned()),
                (Some("b".to_owned()), "missing".to_owned())
            ]
        );
        let first = messages.get_waiting_message().expect("still queued");
        assert_eq!(first.delivery.data, b"abcd");
        assert!(messages.get_waiting_message().is_some());
        assert!(messages.get_waiting_message().is_none());
    }
}

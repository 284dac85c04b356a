use crate::{
    BasicProperties, Promise, message::BasicReturnMessage, publisher_confirm::Confirmation,
    types::PayloadSize,
};
use std::{
    collections::VecDeque,
    fmt,
    sync::{Arc, Mutex, MutexGuard},
};
use tracing::trace;

/// Called with every message the broker returns on a channel, once its last
/// frame is read: before any frame that follows it on the wire.
pub(crate) type ReturnListener = Arc<dyn Fn(&BasicReturnMessage) + Send + Sync>;

#[derive(Clone, Default)]
pub(crate) struct ReturnedMessages(Arc<Mutex<Inner>>);

impl ReturnedMessages {
    pub(crate) fn set_listener(&self, listener: ReturnListener) {
        self.lock_inner().listener = Some(listener);
    }

    pub(crate) fn start_new_delivery(&self, message: BasicReturnMessage) {
        self.lock_inner().current_message = Some(message);
    }

    /// The returned message, once this frame completes it: hand it to
    /// [`Self::new_delivery_complete`] once no lock of the channel is held.
    #[must_use]
    pub(crate) fn handle_content_header_frame(
        &self,
        size: PayloadSize,
        properties: BasicProperties,
    ) -> Option<BasicReturnMessage> {
        self.lock_inner()
            .handle_content_header_frame(size, properties)
    }

    /// The returned message, once this frame completes it: hand it to
    /// [`Self::new_delivery_complete`] once no lock of the channel is held.
    #[must_use]
    pub(crate) fn handle_body_frame(
        &self,
        remaining_size: PayloadSize,
        payload: Vec<u8>,
    ) -> Option<BasicReturnMessage> {
        self.lock_inner().handle_body_frame(remaining_size, payload)
    }

    /// Shows a complete returned message to the listener, then queues it
    /// for the next publisher confirm (or for `wait_for_confirms`).
    ///
    /// The listener runs outside every lock of lapin's, so it may take its
    /// own locks and call into the channel; the message is queued only
    /// after it returns, so it has seen the message before the confirm that
    /// follows it on the wire can complete.
    pub(crate) fn new_delivery_complete(&self, message: BasicReturnMessage, confirm_mode: bool) {
        let listener = self.lock_inner().listener.clone();
        if let Some(listener) = listener {
            listener(&message);
        }
        self.lock_inner().queue_returned(message, confirm_mode);
    }

    pub(crate) fn drain(&self) -> Vec<BasicReturnMessage> {
        self.lock_inner().drain()
    }

    pub(crate) fn register_dropped_confirm(&self, promise: Promise<Confirmation>) {
        self.lock_inner().register_dropped_confirm(promise);
    }

    pub(crate) fn get_waiting_message(&self) -> Option<BasicReturnMessage> {
        self.lock_inner().waiting_messages.pop_front()
    }

    pub(crate) fn clear_dropped_confirms(&self) {
        self.lock_inner().dropped_confirms.clear();
    }

    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for ReturnedMessages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("ReturnedMessages");
        if let Ok(inner) = self.0.try_lock() {
            debug
                .field("listener", &inner.listener.is_some())
                .field("waiting_messages", &inner.waiting_messages)
                .field("messages", &inner.messages)
                .field("non_confirm_messages", &inner.non_confirm_messages);
        }
        debug.finish()
    }
}

#[derive(Default)]
struct Inner {
    current_message: Option<BasicReturnMessage>,
    non_confirm_messages: Vec<BasicReturnMessage>,
    waiting_messages: VecDeque<BasicReturnMessage>,
    messages: Vec<BasicReturnMessage>,
    dropped_confirms: Vec<Promise<Confirmation>>,
    listener: Option<ReturnListener>,
}

impl Inner {
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
        // trace, not warn: an unroutable mandatory publish is an answer the
        // publisher asked for, not a fault, and the message carries its whole
        // payload; at warn every one was logged in full.
        trace!(?message, "Server returned us a message");
        if confirm_mode {
            self.waiting_messages.push_back(message);
        } else {
            self.non_confirm_messages.push(message);
        }
    }

    fn process_dropped_confirm(
        &mut self,
        promise: Promise<Confirmation>,
        messages: Option<&mut Vec<BasicReturnMessage>>,
    ) {
        let messages = messages.unwrap_or(&mut self.messages);

        if let Some(confirmation) = promise.try_wait() {
            if let Ok(Confirmation::Nack(Some(message))) | Ok(Confirmation::Ack(Some(message))) =
                confirmation
            {
                trace!("PublisherConfirm was carrying a message, storing it");
                messages.push(message);
            } else {
                trace!("PublisherConfirm was ready but didn't carry a message, discarding");
            }
        } else {
            trace!("PublisherConfirm wasn't ready yet, storing it for further use");
            self.dropped_confirms.push(promise);
        }
    }

    fn register_dropped_confirm(&mut self, promise: Promise<Confirmation>) {
        trace!("Registering new dropped PublisherConfirm");
        self.process_dropped_confirm(promise, None)
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
                self.process_dropped_confirm(promise, Some(&mut messages))
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
    use super::*;
    use crate::{error_holder::ErrorHolder, types::ShortString};

    /// A returned message with `id`, its header frame read, 4 bytes of body
    /// to come.
    fn returned(messages: &ReturnedMessages, id: &str) {
        messages.start_new_delivery(BasicReturnMessage::new(
            ShortString::from(""),
            ShortString::from("missing"),
            312,
            ShortString::from("NO_ROUTE"),
            ErrorHolder::default(),
        ));
        let complete = messages
            .handle_content_header_frame(4, BasicProperties::default().with_message_id(id.into()));
        assert!(complete.is_none(), "not before the body is read");
    }

    #[test]
    fn the_listener_sees_each_returned_message_once_complete() {
        let messages = ReturnedMessages::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        messages.set_listener(Arc::new(move |message: &BasicReturnMessage| {
            let id = message
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string());
            log.lock()
                .unwrap()
                .push((id, message.delivery.routing_key.to_string()));
        }));
        returned(&messages, "a");
        assert!(messages.handle_body_frame(2, b"ab".to_vec()).is_none());
        let a = messages
            .handle_body_frame(0, b"cd".to_vec())
            .expect("the last body frame completes it");
        assert!(
            seen.lock().unwrap().is_empty(),
            "not before it is handed over"
        );
        messages.new_delivery_complete(a, true);
        returned(&messages, "b");
        let b = messages
            .handle_body_frame(0, b"efgh".to_vec())
            .expect("complete");
        messages.new_delivery_complete(b, true);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                (Some("a".to_owned()), "missing".to_owned()),
                (Some("b".to_owned()), "missing".to_owned())
            ]
        );
        // Each still goes to a publisher confirm, as without a listener.
        let first = messages.get_waiting_message().expect("still queued");
        assert_eq!(first.delivery.data, b"abcd");
        assert!(messages.get_waiting_message().is_some());
        assert!(messages.get_waiting_message().is_none());
    }

    #[test]
    fn an_empty_returned_message_is_complete_with_its_header() {
        let messages = ReturnedMessages::default();
        messages.start_new_delivery(BasicReturnMessage::new(
            ShortString::from(""),
            ShortString::from("missing"),
            312,
            ShortString::from("NO_ROUTE"),
            ErrorHolder::default(),
        ));
        let message = messages
            .handle_content_header_frame(0, BasicProperties::default())
            .expect("no body to wait for");
        messages.new_delivery_complete(message, false);
        assert_eq!(messages.drain().len(), 1, "kept for wait_for_confirms");
    }
}

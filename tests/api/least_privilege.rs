//! Least privilege in answers: what viewers see, who may publish to the built-in queues, what 503 bodies say.

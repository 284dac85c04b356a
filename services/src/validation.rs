//! Typed validation failures: which field was wrong and why. Routes map a
//! `FieldError` to 400 with the field in the message; nothing classifies a
//! failure by reading its text.

/// A request field that was refused, and why: 400 with the field named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {problem}")]
pub struct FieldError {
    /// The field as the caller named it, dotted for nested ones
    /// (`retry.maxAttempts`, `filters`).
    pub field: String,
    /// What is wrong, as a sentence fragment a person can act on.
    pub problem: String,
}

impl FieldError {
    /// An error naming `field` (as the caller named it) and the `problem`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The same problem, one level down: `maxAttempts` in `retry` becomes
    /// `retry.maxAttempts`.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

#[cfg(test)]
mod tests {
    use super::FieldError;

    #[test]
    fn nested_fields_are_dotted() {
        let err = FieldError::new("maxAttempts", "between 1 and 100").within("retry");
        assert_eq!(err.field, "retry.maxAttempts");
        assert_eq!(
            err.to_string(),
            "field `retry.maxAttempts`: between 1 and 100"
        );
    }
}

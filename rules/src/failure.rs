//! What a rule failing at run time says about it, without the values it
//! failed on: cel's own error text prints whole values (the body, the
//! header map), and the reason goes to logs, `lastError`, attempt records
//! and dead-letter headers, which must not carry a message's content.

use cel::{ExecutionError, Value};

use crate::convert::type_name;

/// The longest reason kept; a rule's own names (a missing key, a method)
/// are short, but they come from the rule and the message.
const MAX_REASON: usize = 200;

/// `err` told by the kinds and names involved, never a value.
pub(crate) fn describe(err: &ExecutionError) -> String {
    let types = |a: &Value, b: &Value| format!("{} and {}", type_name(a), type_name(b));
    #[allow(deprecated)]
    let reason = match err {
        ExecutionError::InvalidArgumentCount { expected, actual } => {
            format!("a function takes {expected} arguments, not {actual}")
        }
        ExecutionError::UnsupportedTargetType { target } => {
            format!("a function cannot take a {}", type_name(target))
        }
        ExecutionError::NotSupportedAsMethod { method, target } => {
            format!("`{method}` is not a method of a {}", type_name(target))
        }
        ExecutionError::UnsupportedKeyType(key) => {
            format!("a {} cannot be a map key", type_name(key))
        }
        ExecutionError::UnexpectedType { got, want } => format!("got a {got}, want a {want}"),
        ExecutionError::NoSuchKey(key) => format!("no such key: `{key}`"),
        // Types and the operator's name only: no value.
        ExecutionError::NoSuchOverload(overload) => format!(
            "`{}` does not take ({})",
            overload.function(),
            overload.argument_types().join(", ")
        ),
        ExecutionError::UndeclaredReference(name) => format!("unknown name `{name}`"),
        ExecutionError::MissingArgumentOrTarget => "a missing argument or target".to_owned(),
        ExecutionError::ValuesNotComparable(a, b) => {
            format!(
                "a {} cannot be compared to a {}",
                type_name(a),
                type_name(b)
            )
        }
        ExecutionError::UnsupportedBinaryOperator(op, a, b) => {
            format!("`{op}` does not take a {}", types(a, b))
        }
        ExecutionError::UnsupportedIndex(index, on) => {
            format!("a {} cannot index a {}", type_name(index), type_name(on))
        }
        ExecutionError::FunctionError { function, .. } => format!("`{function}` failed"),
        ExecutionError::DivisionByZero(_) => "division by zero".to_owned(),
        ExecutionError::RemainderByZero(_) => "remainder by zero".to_owned(),
        ExecutionError::Overflow(op, a, b) => format!("`{op}` overflowed on a {}", types(a, b)),
        ExecutionError::IndexOutOfBounds(_) => "a list index out of bounds".to_owned(),
        ExecutionError::DuplicateKey(_) => "a map literal repeats a key".to_owned(),
        _ => "the rule cannot be evaluated on this message".to_owned(),
    };
    cut(reason)
}

fn cut(mut reason: String) -> String {
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn reasons_name_types_never_values() {
        let secret = Value::String(Arc::new("card 4111-1111-1111-1111".to_owned()));
        let reason = describe(&ExecutionError::ValuesNotComparable(
            secret.clone(),
            Value::Int(5),
        ));
        assert_eq!(reason, "a string cannot be compared to a int");
        let reason = describe(&ExecutionError::UnsupportedBinaryOperator(
            "+",
            secret,
            Value::Null,
        ));
        assert!(!reason.contains("4111"), "{reason}");
        let long = describe(&ExecutionError::NoSuchKey(Arc::new("k".repeat(1000))));
        assert!(long.len() <= MAX_REASON + '…'.len_utf8(), "{}", long.len());
    }
}

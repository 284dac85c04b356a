//! Outbound errors as text that can be stored and logged: reqwest errors
//! stripped of their URL, followed by the causes underneath (where reqwest
//! says what actually happened: "tcp connect error: Connection refused"),
//! and a cause found by its type rather than its text.

use std::error::Error;

/// `head`, then each cause of `err` not already said (the gateway's one
/// walk over an error's causes, used for logs too).
pub use gateway::with_causes;

/// The first error of type `T` in `err` and its causes.
pub fn find_cause<'a, T: Error + 'static>(err: &'a (dyn Error + 'static)) -> Option<&'a T> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_are_appended_once_and_found_by_type() {
        let err = Outer(std::io::Error::other("refused"));
        assert_eq!(with_causes("failed".into(), &err), "failed: refused");
        assert_eq!(
            with_causes("failed: refused".into(), &err),
            "failed: refused"
        );
        assert!(find_cause::<std::io::Error>(&err).is_some());
        assert!(find_cause::<std::fmt::Error>(&err).is_none());
    }
}

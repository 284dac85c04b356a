//! Why a rule was refused (`RuleError`, when compiled: 400 naming the
//! field and the position) or failed on a message (`RunError`, handled by
//! the consumer's `onRuleError`).

use std::fmt;

/// Which rule: the API's field name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleField {
    /// `filter`.
    Filter,
    /// `transform`.
    Transform,
}

impl RuleField {
    /// The field as the API names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Filter => "filter",
            Self::Transform => "transform",
        }
    }
}

impl fmt::Display for RuleField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where in a rule's source: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
}

impl Position {
    /// The position of byte `offset` in `source`.
    pub fn at(source: &str, offset: usize) -> Self {
        let before = source.get(..offset.min(source.len())).unwrap_or(source);
        let line = before.matches('\n').count() + 1;
        let column = before
            .rsplit('\n')
            .next()
            .map_or(0, |tail| tail.chars().count())
            + 1;
        Self { line, column }
    }
}

/// A rule refused when compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct RuleError {
    /// Which rule.
    pub field: RuleField,
    /// Where, when the problem is at one place in it.
    pub position: Option<Position>,
    /// What is wrong.
    pub problem: String,
}

impl RuleError {
    /// A problem with the rule as a whole (its size, say).
    pub fn whole(field: RuleField, problem: impl Into<String>) -> Self {
        Self {
            field,
            position: None,
            problem: problem.into(),
        }
    }

    /// A problem at `position`.
    pub fn at(field: RuleField, position: Position, problem: impl Into<String>) -> Self {
        Self {
            field,
            position: Some(position),
            problem: problem.into(),
        }
    }

    /// The first of the parser's errors, with its position.
    pub(crate) fn parse(field: RuleField, errors: &cel::ParseErrors) -> Self {
        match errors.errors.first() {
            Some(first) => Self::at(
                field,
                Position {
                    line: usize::try_from(first.pos.0).unwrap_or(1).max(1),
                    column: usize::try_from(first.pos.1).unwrap_or(0) + 1,
                },
                format!("does not parse: {}", first.msg),
            ),
            None => Self::whole(field, "does not parse"),
        }
    }

    /// The problem with its position, without the field: what a
    /// `FieldError` naming the field says.
    pub fn describe(&self) -> String {
        match self.position {
            Some(Position { line, column }) => {
                format!("line {line}, column {column}: {}", self.problem)
            }
            None => self.problem.clone(),
        }
    }
}

/// A rule that failed on one message (a type error, a missing field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} failed: {problem}")]
pub struct RunError {
    /// Which rule.
    pub field: RuleField,
    /// What went wrong.
    pub problem: String,
}

impl RunError {
    pub(crate) fn new(field: RuleField, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

//! A consumer's rules: a CEL `filter` that says whether a message goes to
//! the target at all, and a CEL `transform` that reshapes what is sent
//! (its JSON body, extra headers). Pure logic, no I/O: the gateway's
//! delivery path and the dry-run endpoint both run these.
//!
//! - `error`: what a rule that cannot be compiled, or fails on a message,
//!   is reported as (the field, and where in it).
//! - `check`: the compile-time checks over the parsed expression (known
//!   variables only, no literal reserved header, a transform's keys).
//! - `convert`: JSON to CEL values and back.
//! - `headers`: the header names a transform may not set.
//! - `message`: what a rule sees of one message.
//!
//! Both are compiled once, when a consumer is created or updated (and when
//! a replica starts it), never per message.

mod check;
mod convert;
mod error;
mod failure;
mod headers;
mod message;

use std::sync::{Arc, LazyLock};

use cel::{Context, Env, Program, Value};

pub use error::{RuleError, RuleField, RunError};
pub use headers::is_reserved;
pub use message::Message;

/// Longest source a rule may have, in bytes.
pub const MAX_RULE_BYTES: usize = 4 * 1024;

/// The variables a rule may name.
pub const VARIABLES: [&str; 6] = [
    "body",
    "headers",
    "routingKey",
    "exchange",
    "messageId",
    "contentType",
];

/// The standard environment, built once: building one registers every
/// standard function.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// One compiled expression and the variables it names, so a message's
/// parts are converted only when a rule reads them.
#[derive(Debug)]
struct Rule {
    program: Program,
    reads: Reads,
}

/// Which of a message's parts a rule reads.
#[derive(Debug, Clone, Copy, Default)]
struct Reads {
    body: bool,
    headers: bool,
}

impl Reads {
    fn union(self, other: Reads) -> Reads {
        Reads {
            body: self.body || other.body,
            headers: self.headers || other.headers,
        }
    }
}

/// A consumer's filter and transform, compiled and checked.
#[derive(Debug)]
pub struct ConsumerRules {
    filter: Option<Rule>,
    transform: Option<Rule>,
    target_has_auth: bool,
}

/// What a transform asks to send in place of the message as it came.
#[derive(Debug, Clone, PartialEq)]
pub struct Transformed {
    /// The new body, sent as JSON; `None`: the message's own body, as it came.
    pub body: Option<serde_json::Value>,
    /// Headers added to the request (lower-case names), in name order.
    pub headers: Vec<(String, String)>,
}

/// What the rules say of one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The filter refused it: ack without a call.
    Filtered,
    /// Send it; `Some`: reshaped by the transform.
    Send(Option<Transformed>),
}

impl ConsumerRules {
    /// Compiles and checks `filter` and `transform`. `target_has_auth`: the
    /// target authenticates on its own, so a transform may not set
    /// `authorization` either.
    pub fn compile(
        filter: Option<&str>,
        transform: Option<&str>,
        target_has_auth: bool,
    ) -> Result<Self, RuleError> {
        let filter = filter
            .map(|source| compile_one(RuleField::Filter, source, target_has_auth))
            .transpose()?;
        let transform = transform
            .map(|source| compile_one(RuleField::Transform, source, target_has_auth))
            .transpose()?;
        Ok(Self {
            filter,
            transform,
            target_has_auth,
        })
    }

    /// Whether there is anything to run.
    pub fn is_empty(&self) -> bool {
        self.filter.is_none() && self.transform.is_none()
    }

    /// Whether there is a transform.
    pub fn transforms(&self) -> bool {
        self.transform.is_some()
    }

    /// Runs the filter, then the transform, over `message`.
    pub fn apply(&self, message: &Message<'_>) -> Result<Verdict, RunError> {
        let reads = self
            .filter
            .iter()
            .chain(self.transform.iter())
            .fold(Reads::default(), |acc, rule| acc.union(rule.reads));
        let mut context = Context::with_env(ENV.clone());
        message.bind(&mut context, reads);
        if let Some(filter) = &self.filter {
            let passed = match filter.program.execute(&context) {
                Ok(Value::Bool(passed)) => passed,
                Ok(other) => {
                    return Err(RunError::new(
                        RuleField::Filter,
                        format!("yielded {}, not a bool", convert::type_name(&other)),
                    ))
                }
                Err(err) => return Err(RunError::new(RuleField::Filter, failure::describe(&err))),
            };
            if !passed {
                return Ok(Verdict::Filtered);
            }
        }
        let Some(transform) = &self.transform else {
            return Ok(Verdict::Send(None));
        };
        let value = transform
            .program
            .execute(&context)
            .map_err(|err| RunError::new(RuleField::Transform, failure::describe(&err)))?;
        convert::transformed(&value, self.target_has_auth)
            .map(|t| Verdict::Send(Some(t)))
            .map_err(|problem| RunError::new(RuleField::Transform, problem))
    }
}

fn compile_one(field: RuleField, source: &str, target_has_auth: bool) -> Result<Rule, RuleError> {
    if source.len() > MAX_RULE_BYTES {
        return Err(RuleError::whole(
            field,
            format!(
                "{} bytes, over the {MAX_RULE_BYTES}-byte limit",
                source.len()
            ),
        ));
    }
    if source.trim().is_empty() {
        return Err(RuleError::whole(
            field,
            "empty; omit it or send null instead",
        ));
    }
    let program = ENV
        .compile(source)
        .map_err(|errors| RuleError::parse(field, &errors))?;
    let reads = check::names(field, &program)?;
    if field == RuleField::Transform {
        check::transform_shape(&program, target_has_auth)?;
    }
    Ok(Rule { program, reads })
}

#[cfg(test)]
mod tests;

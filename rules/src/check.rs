//! The checks a rule passes when compiled, over its parsed expression:
//! every variable it names is one a message has (or one a macro such as
//! `exists(x, …)` binds), and a transform's literal map sets no key but
//! `body` and `headers`, and no reserved header.

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::Program;

use crate::error::{Position, RuleError, RuleField};
use crate::headers::is_reserved;
use crate::{Reads, VARIABLES};

/// Names a rule may use besides the variables: CEL's type names
/// (`type(x) == string`).
const TYPE_NAMES: [&str; 11] = [
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
];

/// Refuses a name that is no variable; says which parts of a message the
/// rule reads.
pub(crate) fn names(field: RuleField, program: &Program) -> Result<Reads, RuleError> {
    let mut walk = Walk {
        field,
        program,
        bound: Vec::new(),
        reads: Reads::default(),
    };
    walk.expr(program.expression())?;
    Ok(walk.reads)
}

struct Walk<'p> {
    field: RuleField,
    program: &'p Program,
    /// Names bound by the comprehensions around the node walked.
    bound: Vec<&'p str>,
    reads: Reads,
}

impl<'p> Walk<'p> {
    fn expr(&mut self, node: &'p IdedExpr) -> Result<(), RuleError> {
        match &node.expr {
            Expr::Unspecified | Expr::Literal(_) => Ok(()),
            Expr::Ident(name) => self.ident(node, name),
            Expr::Call(call) => {
                if let Some(target) = &call.target {
                    self.expr(target)?;
                }
                call.args.iter().try_for_each(|arg| self.expr(arg))
            }
            Expr::Comprehension(comp) => {
                self.expr(&comp.iter_range)?;
                self.expr(&comp.accu_init)?;
                let depth = self.bound.len();
                self.bound.push(&comp.iter_var);
                if let Some(second) = &comp.iter_var2 {
                    self.bound.push(second);
                }
                self.bound.push(&comp.accu_var);
                let inner = [&comp.loop_cond, &comp.loop_step, &comp.result]
                    .into_iter()
                    .try_for_each(|e| self.expr(e));
                self.bound.truncate(depth);
                inner
            }
            Expr::List(list) => list.elements.iter().try_for_each(|e| self.expr(e)),
            Expr::Map(map) => map.entries.iter().try_for_each(|entry| match &entry.expr {
                EntryExpr::MapEntry(e) => {
                    self.expr(&e.key)?;
                    self.expr(&e.value)
                }
                EntryExpr::StructField(f) => self.expr(&f.value),
            }),
            Expr::Select(select) => self.expr(&select.operand),
            Expr::Struct(s) => Err(self.error(
                node,
                format!(
                    "`{}{{…}}`: messages are not types a rule can build",
                    s.type_name
                ),
            )),
        }
    }

    fn ident(&mut self, node: &IdedExpr, name: &str) -> Result<(), RuleError> {
        match name {
            "body" => self.reads.body = true,
            "headers" => self.reads.headers = true,
            _ if VARIABLES.contains(&name)
                || TYPE_NAMES.contains(&name)
                || name.starts_with('@')
                || self.bound.contains(&name) => {}
            _ => {
                return Err(self.error(
                    node,
                    format!(
                        "unknown variable `{name}`; a rule can use {}",
                        VARIABLES.join(", ")
                    ),
                ))
            }
        }
        Ok(())
    }

    fn error(&self, node: &IdedExpr, problem: String) -> RuleError {
        at(self.field, self.program, node, problem)
    }
}

fn at(field: RuleField, program: &Program, node: &IdedExpr, problem: String) -> RuleError {
    let info = program.source_info();
    match info.offset_for(node.id) {
        Some((start, _)) => {
            RuleError::at(field, Position::at(&info.source, start as usize), problem)
        }
        None => RuleError::whole(field, problem),
    }
}

/// A transform written as a map literal: only `body` and `headers`, and
/// `headers`' literal names not reserved.
pub(crate) fn transform_shape(program: &Program, target_has_auth: bool) -> Result<(), RuleError> {
    let root = program.expression();
    let Expr::Map(map) = &root.expr else {
        return match &root.expr {
            Expr::Literal(_) | Expr::List(_) => Err(at(
                RuleField::Transform,
                program,
                root,
                "must yield a map with `body` and/or `headers`".into(),
            )),
            _ => Ok(()),
        };
    };
    for entry in &map.entries {
        let EntryExpr::MapEntry(entry) = &entry.expr else {
            continue;
        };
        let Some(key) = literal_string(&entry.key) else {
            continue;
        };
        match key {
            "body" => {}
            "headers" => reserved_literals(program, &entry.value, target_has_auth)?,
            other => {
                return Err(at(
                    RuleField::Transform,
                    program,
                    &entry.key,
                    format!("unknown key `{other}`; a transform yields `body` and/or `headers`"),
                ))
            }
        }
    }
    Ok(())
}

fn reserved_literals(
    program: &Program,
    headers: &IdedExpr,
    target_has_auth: bool,
) -> Result<(), RuleError> {
    let Expr::Map(map) = &headers.expr else {
        return Ok(());
    };
    for entry in &map.entries {
        let EntryExpr::MapEntry(entry) = &entry.expr else {
            continue;
        };
        if let Some(name) = literal_string(&entry.key) {
            if is_reserved(name, target_has_auth) {
                return Err(at(
                    RuleField::Transform,
                    program,
                    &entry.key,
                    format!("the header `{name}` is reserved: the gateway sets it"),
                ));
            }
        }
    }
    Ok(())
}

fn literal_string(node: &IdedExpr) -> Option<&str> {
    match &node.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

//! JSON to CEL values and back, and a transform's result read as what to
//! send.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::Value;

use crate::headers::{is_reserved, is_token, is_value};
use crate::Transformed;

/// A JSON value as CEL sees it: integers stay integers (`int`, or `uint`
/// past `i64`), other numbers are `double`.
pub(crate) fn to_cel(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(items) => {
            Value::List(Arc::new(items.iter().map(to_cel).collect()))
        }
        serde_json::Value::Object(fields) => object(fields.iter()),
    }
}

/// A map of string keys.
pub(crate) fn object<'a>(
    fields: impl Iterator<Item = (&'a String, &'a serde_json::Value)>,
) -> Value {
    let map: HashMap<Key, Value> = fields
        .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
        .collect();
    Value::Map(Map { map: Arc::new(map) })
}

/// A CEL value as JSON; `Err` names what has no JSON form.
pub(crate) fn to_json(value: &Value) -> Result<serde_json::Value, String> {
    Ok(match value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::Int(i) => (*i).into(),
        Value::UInt(u) => (*u).into(),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .ok_or_else(|| format!("{f} has no JSON form"))?,
        Value::String(s) => s.as_str().into(),
        Value::List(items) => items
            .iter()
            .map(to_json)
            .collect::<Result<Vec<_>, _>>()?
            .into(),
        Value::Map(map) => {
            let mut fields = serde_json::Map::new();
            for (key, v) in map.map.iter() {
                fields.insert(key_string(key), to_json(v)?);
            }
            serde_json::Value::Object(fields)
        }
        other => return Err(format!("a {} has no JSON form", type_name(other))),
    })
}

fn key_string(key: &Key) -> String {
    match key {
        Key::String(s) => s.to_string(),
        Key::Int(i) => i.to_string(),
        Key::Uint(u) => u.to_string(),
        Key::Bool(b) => b.to_string(),
    }
}

/// CEL's name for the value's type, for error messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::UInt(_) => "uint",
        Value::Float(_) => "double",
        Value::String(_) => "string",
        Value::Bytes(_) => "bytes",
        Value::List(_) => "list",
        Value::Map(_) => "map",
        Value::Function(..) => "function",
        _ => "value of another type",
    }
}

/// A transform's result: a map with an optional `body` (any JSON) and
/// optional `headers` (string to string, none reserved).
pub(crate) fn transformed(value: &Value, target_has_auth: bool) -> Result<Transformed, String> {
    let Value::Map(map) = value else {
        return Err(format!(
            "yielded a {}, not a map with `body` and/or `headers`",
            type_name(value)
        ));
    };
    let mut out = Transformed {
        body: None,
        headers: Vec::new(),
    };
    for (key, v) in map.map.iter() {
        match key {
            Key::String(k) if k.as_str() == "body" => out.body = Some(to_json(v)?),
            Key::String(k) if k.as_str() == "headers" => out.headers = headers(v, target_has_auth)?,
            other => {
                return Err(format!(
                    "yielded the key `{}`; a transform yields `body` and/or `headers`",
                    key_string(other)
                ))
            }
        }
    }
    Ok(out)
}

fn headers(value: &Value, target_has_auth: bool) -> Result<Vec<(String, String)>, String> {
    let Value::Map(map) = value else {
        return Err(format!("`headers` is a {}, not a map", type_name(value)));
    };
    let mut headers = Vec::with_capacity(map.map.len());
    for (key, v) in map.map.iter() {
        let Key::String(name) = key else {
            return Err(format!("header name `{}` is not a string", key_string(key)));
        };
        let Value::String(text) = v else {
            return Err(format!(
                "header `{name}` is a {}, not a string",
                type_name(v)
            ));
        };
        if !is_token(name) {
            return Err(format!("`{name}` is not a header name"));
        }
        if is_reserved(name, target_has_auth) {
            return Err(format!(
                "the header `{name}` is reserved: the gateway sets it"
            ));
        }
        if !is_value(text) {
            return Err(format!(
                "header `{name}`'s value is not a valid header value"
            ));
        }
        headers.push((name.to_ascii_lowercase(), text.to_string()));
    }
    headers.sort();
    Ok(headers)
}

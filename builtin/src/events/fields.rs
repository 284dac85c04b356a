//! Field rules the event families share; each failure is a `FieldError`
//! naming the field.

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::EventError;
use services::FieldError;

pub(super) const MAX_ID_BYTES: usize = 255;
const MAX_EMAIL_BYTES: usize = 254;
/// Longest piece of a rejected value quoted back in a reason.
const QUOTE_CHARS: usize = 40;
/// Nesting allowed in free-form values that are stored (`filters`): far
/// below BSON's own limit of 100.
const MAX_DEPTH: usize = 20;

pub(super) fn missing(field: &str) -> FieldError {
    FieldError::new(field, "is required")
}

/// Trims and lower-cases an e-mail address.
pub fn normalize_email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

/// Checks an e-mail address loosely: something, `@`, something. Real
/// validation is the mailbox's business.
pub(super) fn email(raw: String) -> Result<String, FieldError> {
    let email = normalize_email(&raw);
    let valid = email.len() <= MAX_EMAIL_BYTES
        && !email.chars().any(char::is_whitespace)
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty());
    if valid {
        Ok(email)
    } else {
        Err(FieldError::new(
            "email",
            format!("`{}` is not an e-mail address", quote(&raw)),
        ))
    }
}

/// Checks an ISO-8601 date or date-time and returns it trimmed.
pub fn iso_date(field: &str, raw: &str) -> Result<String, FieldError> {
    let value = raw.trim();
    let valid = DateTime::parse_from_rfc3339(value).is_ok()
        || NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f").is_ok()
        || NaiveDate::parse_from_str(value, "%Y-%m-%d").is_ok();
    if valid {
        Ok(value.to_owned())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "`{}` is not an ISO-8601 date (YYYY-MM-DD, YYYY-MM-DDTHH:MM:SS or RFC 3339)",
                quote(raw)
            ),
        ))
    }
}

pub(super) fn optional_date(
    field: &str,
    raw: Option<String>,
) -> Result<Option<String>, FieldError> {
    raw.map(|r| iso_date(field, &r)).transpose()
}

pub(super) fn required_text(field: &str, raw: Option<String>) -> Result<String, FieldError> {
    optional_text(field, raw)?.ok_or_else(|| missing(field))
}

/// A text that, when given, is not blank.
pub(super) fn optional_text(
    field: &str,
    raw: Option<String>,
) -> Result<Option<String>, FieldError> {
    match raw {
        None => Ok(None),
        Some(text) if text.trim().is_empty() => Err(FieldError::new(field, "must not be empty")),
        Some(text) => Ok(Some(text.trim().to_owned())),
    }
}

pub(super) fn identifier(field: &str, raw: Option<String>) -> Result<String, FieldError> {
    let id = required_text(field, raw)?;
    if id.len() > MAX_ID_BYTES {
        return Err(FieldError::new(
            field,
            format!("at most {MAX_ID_BYTES} bytes"),
        ));
    }
    Ok(id)
}

/// `event_id`, when given: a non-empty string of bounded length.
pub(super) fn event_id(raw: Option<&Value>) -> Result<Option<String>, FieldError> {
    match raw {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) if !id.trim().is_empty() && id.len() <= MAX_ID_BYTES => {
            Ok(Some(id.trim().to_owned()))
        }
        Some(_) => Err(FieldError::new(
            "event_id",
            format!("a non-empty string of at most {MAX_ID_BYTES} bytes"),
        )),
    }
}

pub(super) fn positive(field: &str, value: i64) -> Result<i64, FieldError> {
    if value < 1 {
        return Err(FieldError::new(field, "must be a positive integer"));
    }
    Ok(value)
}

pub(super) fn rating(value: Option<f64>) -> Result<Option<f64>, FieldError> {
    match value {
        Some(v) if !v.is_finite() || v < 0.0 => Err(FieldError::new(
            "calificacion",
            "must be a number, zero or more",
        )),
        other => Ok(other),
    }
}

pub(super) fn visibility(value: Option<f64>) -> Result<Option<f64>, FieldError> {
    match value {
        Some(v) if !v.is_finite() => Err(FieldError::new("visibilidad", "must be a number")),
        other => Ok(other),
    }
}

pub(super) fn count(value: Option<i64>) -> Result<Option<i64>, FieldError> {
    match value {
        Some(v) if v < 0 => Err(FieldError::new("numero_reportes", "must be zero or more")),
        other => Ok(other),
    }
}

/// A free-form value that will be stored as a document: its keys are ones
/// MongoDB stores as given (no NUL, no leading `$`, no `.`), and it is not
/// nested deeper than `MAX_DEPTH`.
pub(super) fn storable(field: &str, value: &Value) -> Result<(), FieldError> {
    fn walk(path: &str, value: &Value, depth: usize) -> Result<(), FieldError> {
        if depth > MAX_DEPTH {
            return Err(FieldError::new(
                path,
                format!("nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    let problem = if key.contains('\0') {
                        Some("must not contain a NUL character")
                    } else if key.starts_with('$') {
                        Some("must not start with `$`")
                    } else if key.contains('.') {
                        Some("must not contain `.`")
                    } else {
                        None
                    };
                    let shown = quote(&key.replace('\0', "\\u0000"));
                    if let Some(problem) = problem {
                        return Err(FieldError::new(path, format!("key `{shown}` {problem}")));
                    }
                    walk(&format!("{path}.{shown}"), inner, depth + 1)?;
                }
                Ok(())
            }
            Value::Array(items) => {
                for (i, inner) in items.iter().enumerate() {
                    walk(&format!("{path}[{i}]"), inner, depth + 1)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    walk(field, value, 0)
}

/// Deserializes, naming the field whose type did not fit.
pub(super) fn typed<T: DeserializeOwned>(value: Value) -> Result<T, EventError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." || path.is_empty() {
            EventError::Shape(std::sync::Arc::new(inner))
        } else {
            FieldError::new(path, inner.to_string()).into()
        }
    })
}

pub(super) fn quote(raw: &str) -> String {
    let mut quoted: String = raw.chars().take(QUOTE_CHARS).collect();
    if raw.chars().count() > QUOTE_CHARS {
        quoted.push('…');
    }
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates_accept_the_iso_forms() {
        for ok in [
            "2024-02-29",
            "2024-02-29T13:45:00",
            "2024-02-29T13:45:00.123",
            "2024-02-29T13:45:00Z",
            "2024-02-29T13:45:00.5+02:00",
        ] {
            assert_eq!(iso_date("d", ok).as_deref(), Ok(ok), "{ok}");
        }
        for bad in ["2023-02-29", "29/02/2024", "2024-02-29 13:45", "", "now"] {
            assert!(iso_date("d", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stored_values_have_keys_the_store_keeps() {
        assert!(storable("filters", &json!({"a": {"b": [1, {"c": 2}]}})).is_ok());
        for (value, key) in [
            (json!({"a\u{0}b": 1}), "a\\u0000b"),
            (json!({"x": {"$where": 1}}), "$where"),
            (json!({"x": [{"a.b": 1}]}), "a.b"),
        ] {
            let err = storable("filters", &value).unwrap_err();
            assert!(err.field.starts_with("filters"), "{err}");
            assert!(err.problem.contains(key), "{err}");
        }
        let mut deep = json!(1);
        for _ in 0..=MAX_DEPTH {
            deep = json!([deep]);
        }
        assert!(storable("filters", &deep).is_err());
    }
}

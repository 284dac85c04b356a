//! The built-in handlers' messages, parsed and validated before anything is
//! stored: user and report events (`event_type` + the seed's snake_case
//! fields) and scrape jobs. Pure code, so the seed routes validate a request
//! with the very rules its consumer will apply, and a message that can never
//! be applied is refused with a reason (it is dead-lettered) instead of
//! half-applied.
//!
//! Lenient where leniency is harmless: extra fields are ignored, dates may be
//! RFC 3339, `YYYY-MM-DDTHH:MM:SS[.f]` or `YYYY-MM-DD`, and are stored as the
//! ISO string they were given.

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Scrape jobs with more URLs are refused: one job's results must fit in one
/// MongoDB document (16 MiB) and finish well within the broker's ack timeout.
pub const MAX_URLS: usize = 100;
const MAX_ID_BYTES: usize = 255;
const MAX_EMAIL_BYTES: usize = 254;
/// Longest piece of a rejected value quoted back in a reason.
const QUOTE_CHARS: usize = 40;

/// An event and the id it names itself by, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<T> {
    pub event: T,
    /// `event_id`: the idempotency key, when the producer set one.
    pub event_id: Option<String>,
}

impl<T> Envelope<T> {
    /// The key a handler records as applied: `event_id`, else the AMQP
    /// message id (stable across the gateway's retries).
    pub fn key<'a>(&'a self, message_id: &'a str) -> &'a str {
        self.event_id.as_deref().unwrap_or(message_id)
    }
}

// ---------------------------------------------------------------- users

#[derive(Debug, Clone, PartialEq)]
pub struct NewUser {
    /// `None`: the handler takes the next one from the store's counter.
    pub user_id: Option<i64>,
    pub nombre: String,
    pub apellido: String,
    /// Trimmed and lower-cased, so uniqueness does not depend on case.
    pub email: String,
    pub fecha_nacimiento: Option<String>,
    /// `None`: the time the handler stores the user.
    pub fecha_creacion: Option<String>,
    pub calificacion: f64,
    pub numero_reportes: i64,
    pub url_foto_perfil: Option<String>,
    pub biografia: Option<String>,
}

pub const DEFAULT_CALIFICACION: f64 = 5.0;

/// Which user an update or delete is about.
#[derive(Debug, Clone, PartialEq)]
pub enum UserRef {
    Id(i64),
    Email(String),
}

/// The fields an update sets; the others are left as they are.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UserChanges {
    pub nombre: Option<String>,
    pub apellido: Option<String>,
    /// Only when the user is named by `user_id`.
    pub email: Option<String>,
    pub fecha_nacimiento: Option<String>,
    pub fecha_creacion: Option<String>,
    pub calificacion: Option<f64>,
    pub numero_reportes: Option<i64>,
    pub url_foto_perfil: Option<String>,
    pub biografia: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UserEvent {
    Create(NewUser),
    Update { user: UserRef, changes: UserChanges },
    Delete { user: UserRef },
}

#[derive(Debug, Default, Deserialize)]
struct UserFields {
    user_id: Option<i64>,
    nombre: Option<String>,
    apellido: Option<String>,
    email: Option<String>,
    fecha_nacimiento: Option<String>,
    fecha_creacion: Option<String>,
    calificacion: Option<f64>,
    numero_reportes: Option<i64>,
    url_foto_perfil: Option<String>,
    biografia: Option<String>,
}

impl UserEvent {
    pub fn parse(payload: &[u8]) -> Result<Envelope<UserEvent>, String> {
        let (event_type, event_id, body) = envelope(payload)?;
        let fields: UserFields = typed(body)?;
        if let Some(id) = fields.user_id {
            positive("user_id", id)?;
        }
        let event = match event_type.as_str() {
            "user.create" => UserEvent::Create(NewUser {
                user_id: fields.user_id,
                nombre: required_text("nombre", fields.nombre)?,
                apellido: required_text("apellido", fields.apellido)?,
                email: email(required_text("email", fields.email)?)?,
                fecha_nacimiento: optional_date("fecha_nacimiento", fields.fecha_nacimiento)?,
                fecha_creacion: optional_date("fecha_creacion", fields.fecha_creacion)?,
                calificacion: rating(fields.calificacion)?.unwrap_or(DEFAULT_CALIFICACION),
                numero_reportes: count(fields.numero_reportes)?.unwrap_or(0),
                url_foto_perfil: fields.url_foto_perfil,
                biografia: fields.biografia,
            }),
            "user.update" => {
                let (user, email_change) = match (fields.user_id, fields.email) {
                    (Some(id), email_change) => (UserRef::Id(id), email_change),
                    (None, Some(raw)) => (UserRef::Email(email(raw)?), None),
                    (None, None) => return Err(missing("user_id` or `email")),
                };
                UserEvent::Update {
                    user,
                    changes: UserChanges {
                        nombre: optional_text("nombre", fields.nombre)?,
                        apellido: optional_text("apellido", fields.apellido)?,
                        email: email_change.map(email).transpose()?,
                        fecha_nacimiento: optional_date(
                            "fecha_nacimiento",
                            fields.fecha_nacimiento,
                        )?,
                        fecha_creacion: optional_date("fecha_creacion", fields.fecha_creacion)?,
                        calificacion: rating(fields.calificacion)?,
                        numero_reportes: count(fields.numero_reportes)?,
                        url_foto_perfil: fields.url_foto_perfil,
                        biografia: fields.biografia,
                    },
                }
            }
            "user.delete" => UserEvent::Delete {
                user: match (fields.user_id, fields.email) {
                    (Some(id), _) => UserRef::Id(id),
                    (None, Some(raw)) => UserRef::Email(email(raw)?),
                    (None, None) => return Err(missing("user_id` or `email")),
                },
            },
            other => {
                return Err(unknown_event_type(
                    other,
                    "user.create, user.update, user.delete",
                ))
            }
        };
        Ok(Envelope { event, event_id })
    }
}

// -------------------------------------------------------------- reports

#[derive(Debug, Clone, PartialEq)]
pub struct NewReport {
    pub id_reporte: String,
    /// The author's `user_id`.
    pub id_usuario: i64,
    pub tipo_reporte: i64,
    pub descripcion: String,
    pub ubicacion: Option<String>,
    pub visibilidad: f64,
    /// `None`: the time the handler stores the report.
    pub fecha_creacion: Option<String>,
}

pub const DEFAULT_VISIBILIDAD: f64 = 1.0;

#[derive(Debug, Clone, PartialEq)]
pub enum ReportEvent {
    Create(NewReport),
    UpdateVisibility {
        id_reporte: String,
        visibilidad: f64,
        penalize_author: bool,
    },
    Delete {
        id_reporte: String,
    },
}

#[derive(Debug, Default, Deserialize)]
struct ReportFields {
    id_reporte: Option<String>,
    id_usuario: Option<i64>,
    tipo_reporte: Option<i64>,
    descripcion: Option<String>,
    ubicacion: Option<String>,
    visibilidad: Option<f64>,
    fecha_creacion: Option<String>,
    penalize_author: Option<bool>,
}

impl ReportEvent {
    pub fn parse(payload: &[u8]) -> Result<Envelope<ReportEvent>, String> {
        let (event_type, event_id, body) = envelope(payload)?;
        let fields: ReportFields = typed(body)?;
        let id_reporte = || identifier("id_reporte", fields.id_reporte.clone());
        let event = match event_type.as_str() {
            "report.create" => ReportEvent::Create(NewReport {
                id_reporte: id_reporte()?,
                id_usuario: positive(
                    "id_usuario",
                    fields.id_usuario.ok_or_else(|| missing("id_usuario"))?,
                )?,
                tipo_reporte: fields.tipo_reporte.ok_or_else(|| missing("tipo_reporte"))?,
                descripcion: required_text("descripcion", fields.descripcion.clone())?,
                ubicacion: fields.ubicacion.clone(),
                visibilidad: visibility(fields.visibilidad)?.unwrap_or(DEFAULT_VISIBILIDAD),
                fecha_creacion: optional_date("fecha_creacion", fields.fecha_creacion.clone())?,
            }),
            "report.update_visibility" => ReportEvent::UpdateVisibility {
                id_reporte: id_reporte()?,
                visibilidad: visibility(fields.visibilidad)?
                    .ok_or_else(|| missing("visibilidad"))?,
                penalize_author: fields.penalize_author.unwrap_or(false),
            },
            "report.delete" => ReportEvent::Delete {
                id_reporte: id_reporte()?,
            },
            other => {
                return Err(unknown_event_type(
                    other,
                    "report.create, report.update_visibility, report.delete",
                ))
            }
        };
        Ok(Envelope { event, event_id })
    }
}

// ---------------------------------------------------------- scrape jobs

/// A scrape job as published to `scrape_jobs` (the seed's message). Only
/// `job_id` is required; the descriptive fields are kept on the job record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScrapeJob {
    pub job_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub industry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geography: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keywords: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

impl ScrapeJob {
    /// A job message; `event_type`, if present, is ignored (the queue says
    /// what it is). URLs are not judged here: a bad one fails alone.
    pub fn parse(payload: &[u8]) -> Result<ScrapeJob, String> {
        let body = object(payload)?;
        let job: ScrapeJob = typed(Value::Object(body))?;
        let job_id = identifier("job_id", Some(job.job_id))?;
        let urls = job.urls.unwrap_or_default();
        if urls.len() > MAX_URLS {
            return Err(format!(
                "field `urls`: at most {MAX_URLS} URLs per job, this one has {}",
                urls.len()
            ));
        }
        Ok(ScrapeJob {
            job_id,
            urls: Some(urls),
            ..job
        })
    }

    /// The stricter check the seed route applies before accepting a job:
    /// every URL is http(s) with a host.
    pub fn check_urls(&self) -> Result<(), String> {
        for (i, raw) in self.urls.iter().flatten().enumerate() {
            fetchable_url(raw).map_err(|problem| format!("field `urls[{i}]`: {problem}"))?;
        }
        Ok(())
    }
}

/// An http(s) URL with a host, or why not.
pub fn fetchable_url(raw: &str) -> Result<url::Url, String> {
    let url =
        url::Url::parse(raw.trim()).map_err(|e| format!("`{}` is not a URL ({e})", quote(raw)))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "`{}` is not an http(s) URL with a host",
            quote(raw)
        ));
    }
    Ok(url)
}

// -------------------------------------------------------------- helpers

/// Trims and lower-cases an e-mail address and checks its shape loosely:
/// something, `@`, something. Real validation is the mailbox's business.
pub fn normalize_email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

fn email(raw: String) -> Result<String, String> {
    let email = normalize_email(&raw);
    let valid = email.len() <= MAX_EMAIL_BYTES
        && !email.chars().any(char::is_whitespace)
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty());
    if valid {
        Ok(email)
    } else {
        Err(format!(
            "field `email`: `{}` is not an e-mail address",
            quote(&raw)
        ))
    }
}

/// Checks an ISO-8601 date or date-time and returns it trimmed.
pub fn iso_date(field: &str, raw: &str) -> Result<String, String> {
    let value = raw.trim();
    let valid = DateTime::parse_from_rfc3339(value).is_ok()
        || NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f").is_ok()
        || NaiveDate::parse_from_str(value, "%Y-%m-%d").is_ok();
    if valid {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "field `{field}`: `{}` is not an ISO-8601 date (YYYY-MM-DD, YYYY-MM-DDTHH:MM:SS or RFC 3339)",
            quote(raw)
        ))
    }
}

fn optional_date(field: &str, raw: Option<String>) -> Result<Option<String>, String> {
    raw.map(|r| iso_date(field, &r)).transpose()
}

fn required_text(field: &str, raw: Option<String>) -> Result<String, String> {
    optional_text(field, raw)?.ok_or_else(|| missing(field))
}

/// A text that, when given, is not blank.
fn optional_text(field: &str, raw: Option<String>) -> Result<Option<String>, String> {
    match raw {
        None => Ok(None),
        Some(text) if text.trim().is_empty() => Err(format!("field `{field}`: must not be empty")),
        Some(text) => Ok(Some(text.trim().to_owned())),
    }
}

fn identifier(field: &str, raw: Option<String>) -> Result<String, String> {
    let id = required_text(field, raw)?;
    if id.len() > MAX_ID_BYTES {
        return Err(format!("field `{field}`: at most {MAX_ID_BYTES} bytes"));
    }
    Ok(id)
}

fn positive(field: &str, value: i64) -> Result<i64, String> {
    if value < 1 {
        return Err(format!("field `{field}`: must be a positive integer"));
    }
    Ok(value)
}

fn rating(value: Option<f64>) -> Result<Option<f64>, String> {
    match value {
        Some(v) if !v.is_finite() || v < 0.0 => {
            Err("field `calificacion`: must be a number, zero or more".into())
        }
        other => Ok(other),
    }
}

fn visibility(value: Option<f64>) -> Result<Option<f64>, String> {
    match value {
        Some(v) if !v.is_finite() => Err("field `visibilidad`: must be a number".into()),
        other => Ok(other),
    }
}

fn count(value: Option<i64>) -> Result<Option<i64>, String> {
    match value {
        Some(v) if v < 0 => Err("field `numero_reportes`: must be zero or more".into()),
        other => Ok(other),
    }
}

fn missing(field: &str) -> String {
    format!("missing field `{field}`")
}

fn unknown_event_type(got: &str, known: &str) -> String {
    format!(
        "unknown event_type `{}`; this handler knows {known}",
        quote(got)
    )
}

/// The payload as a JSON object.
fn object(payload: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("the message is JSON but not an object".into()),
        Err(e) => Err(format!("the message is not JSON: {e}")),
    }
}

/// `event_type`, `event_id` and the whole object.
fn envelope(payload: &[u8]) -> Result<(String, Option<String>, Value), String> {
    let map = object(payload)?;
    let event_type = match map.get("event_type") {
        Some(Value::String(t)) => t.clone(),
        None | Some(Value::Null) => return Err(missing("event_type")),
        Some(_) => return Err("field `event_type`: must be a string".into()),
    };
    let event_id = match map.get("event_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if !id.trim().is_empty() && id.len() <= MAX_ID_BYTES => {
            Some(id.trim().to_owned())
        }
        Some(_) => {
            return Err(format!(
                "field `event_id`: a non-empty string of at most {MAX_ID_BYTES} bytes"
            ))
        }
    };
    Ok((event_type, event_id, Value::Object(map)))
}

/// Deserializes, naming the field whose type did not fit.
fn typed<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." || path.is_empty() {
            format!("the message does not have the expected shape: {inner}")
        } else {
            format!("field `{path}`: {inner}")
        }
    })
}

fn quote(raw: &str) -> String {
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

    fn user(value: Value) -> Result<Envelope<UserEvent>, String> {
        UserEvent::parse(&serde_json::to_vec(&value).unwrap())
    }

    fn report(value: Value) -> Result<Envelope<ReportEvent>, String> {
        ReportEvent::parse(&serde_json::to_vec(&value).unwrap())
    }

    #[test]
    fn a_user_create_gets_the_defaults() {
        let parsed = user(json!({
            "event_type": "user.create", "event_id": "e1", "nombre": " Ana ",
            "apellido": "Díaz", "email": " Ana@Example.COM ", "extra": [1, 2],
            "fecha_nacimiento": "1990-01-01T00:00:00"
        }))
        .unwrap();
        assert_eq!(parsed.event_id.as_deref(), Some("e1"));
        assert_eq!(parsed.key("m1"), "e1");
        let UserEvent::Create(new) = parsed.event else {
            panic!("not a create")
        };
        assert_eq!(new.email, "ana@example.com");
        assert_eq!(new.nombre, "Ana");
        assert_eq!((new.calificacion, new.numero_reportes), (5.0, 0));
        assert_eq!(new.user_id, None);
        assert_eq!(new.fecha_nacimiento.as_deref(), Some("1990-01-01T00:00:00"));
    }

    #[test]
    fn without_event_id_the_message_id_is_the_key() {
        let parsed = user(json!({"event_type": "user.delete", "user_id": 3})).unwrap();
        assert_eq!(parsed.key("m1"), "m1");
        assert_eq!(
            parsed.event,
            UserEvent::Delete {
                user: UserRef::Id(3)
            }
        );
    }

    #[test]
    fn invalid_user_events_are_refused_with_a_reason() {
        let cases = [
            (
                json!({"event_type": "user.create", "nombre": "a", "apellido": "b"}),
                "email",
            ),
            (
                json!({"event_type": "user.create", "nombre": "a", "email": "a@b"}),
                "apellido",
            ),
            (
                json!({"event_type": "user.create", "nombre": "a", "apellido": "b", "email": "nope"}),
                "email",
            ),
            (
                json!({"event_type": "user.create", "nombre": "a", "apellido": "b", "email": "a@b", "fecha_nacimiento": "yesterday"}),
                "fecha_nacimiento",
            ),
            (
                json!({"event_type": "user.create", "nombre": "a", "apellido": "b", "email": "a@b", "user_id": "7"}),
                "user_id",
            ),
            (
                json!({"event_type": "user.create", "nombre": "a", "apellido": "b", "email": "a@b", "calificacion": -1}),
                "calificacion",
            ),
            (
                json!({"event_type": "user.update", "nombre": "x"}),
                "user_id",
            ),
            (
                json!({"event_type": "user.explode", "user_id": 1}),
                "unknown event_type",
            ),
            (json!({"user_id": 1}), "event_type"),
            (
                json!({"event_type": "user.delete", "event_id": 5, "user_id": 1}),
                "event_id",
            ),
        ];
        for (value, expected) in cases {
            let err = user(value.clone()).unwrap_err();
            assert!(err.contains(expected), "{value}: {err}");
        }
        assert!(UserEvent::parse(b"not json")
            .unwrap_err()
            .contains("not JSON"));
        assert!(UserEvent::parse(b"[1]")
            .unwrap_err()
            .contains("not an object"));
    }

    #[test]
    fn an_update_names_its_user_and_only_the_given_fields() {
        let parsed =
            user(json!({"event_type": "user.update", "email": "A@b.c", "biografia": "hi"}))
                .unwrap();
        assert_eq!(
            parsed.event,
            UserEvent::Update {
                user: UserRef::Email("a@b.c".into()),
                changes: UserChanges {
                    biografia: Some("hi".into()),
                    ..UserChanges::default()
                }
            }
        );
        let parsed =
            user(json!({"event_type": "user.update", "user_id": 2, "email": "New@b.c"})).unwrap();
        let UserEvent::Update { user, changes } = parsed.event else {
            panic!("not an update")
        };
        assert_eq!(user, UserRef::Id(2));
        assert_eq!(changes.email.as_deref(), Some("new@b.c"));
    }

    #[test]
    fn report_events_parse_and_validate() {
        let parsed = report(json!({
            "event_type": "report.create", "id_reporte": "r1", "id_usuario": 1,
            "tipo_reporte": 2, "descripcion": "d", "fecha_creacion": "2024-05-01T10:00:00Z"
        }))
        .unwrap();
        let ReportEvent::Create(new) = parsed.event else {
            panic!("not a create")
        };
        assert_eq!(new.visibilidad, 1.0);
        assert_eq!(new.fecha_creacion.as_deref(), Some("2024-05-01T10:00:00Z"));

        let parsed = report(json!({"event_type": "report.update_visibility", "id_reporte": "r1", "visibilidad": 0.2, "penalize_author": true})).unwrap();
        assert_eq!(
            parsed.event,
            ReportEvent::UpdateVisibility {
                id_reporte: "r1".into(),
                visibilidad: 0.2,
                penalize_author: true
            }
        );
        let cases = [
            (
                json!({"event_type": "report.create", "id_reporte": "r", "id_usuario": 1, "tipo_reporte": 1}),
                "descripcion",
            ),
            (
                json!({"event_type": "report.create", "id_usuario": 1, "tipo_reporte": 1, "descripcion": "d"}),
                "id_reporte",
            ),
            (
                json!({"event_type": "report.update_visibility", "id_reporte": "r"}),
                "visibilidad",
            ),
            (
                json!({"event_type": "report.update_visibility", "id_reporte": "r", "visibilidad": "high"}),
                "field `visibilidad`",
            ),
            (
                json!({"event_type": "report.hide", "id_reporte": "r"}),
                "unknown event_type",
            ),
        ];
        for (value, expected) in cases {
            let err = report(value.clone()).unwrap_err();
            assert!(err.contains(expected), "{value}: {err}");
        }
    }

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
    fn scrape_jobs_need_only_a_job_id() {
        let job =
            ScrapeJob::parse(br#"{"job_id":"j1","industry":"SaaS","filters":{"a":1}}"#).unwrap();
        assert_eq!(job.urls, Some(vec![]));
        assert_eq!(job.industry.as_deref(), Some("SaaS"));
        assert!(ScrapeJob::parse(br#"{"industry":"SaaS"}"#)
            .unwrap_err()
            .contains("job_id"));
        assert!(ScrapeJob::parse(br#"{"job_id":"j","urls":"http://x"}"#)
            .unwrap_err()
            .contains("field `urls`"));
        let many: Vec<String> = (0..=MAX_URLS).map(|i| format!("http://h/{i}")).collect();
        let body = serde_json::to_vec(&json!({"job_id": "j", "urls": many})).unwrap();
        assert!(ScrapeJob::parse(&body).unwrap_err().contains("at most"));
        let job = ScrapeJob::parse(br#"{"job_id":"j","urls":["http://ok/","ftp://x/"]}"#).unwrap();
        assert!(job.check_urls().unwrap_err().contains("urls[1]"));
    }
}

//! `report.create`, `report.update_visibility`, `report.delete`.

use serde::Deserialize;

use super::fields::{
    identifier, missing, optional_date, positive, required_text, typed, visibility,
};
use super::{envelope, Envelope, EventError};

/// A report to store, as a `report.create` gives it, validated and with the
/// defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReport {
    /// The report's id and its document's `_id`: not blank, at most 255 bytes.
    pub id_reporte: String,
    /// The author's `user_id`.
    pub id_usuario: i64,
    /// The kind of report, a required integer stored as given.
    pub tipo_reporte: i64,
    /// What is reported, trimmed; required and not blank.
    pub descripcion: String,
    /// Where it happened, free text stored as given.
    pub ubicacion: Option<String>,
    /// How visible the report is: any finite number, `DEFAULT_VISIBILIDAD` when
    /// not given.
    pub visibilidad: f64,
    /// `None`: the time the handler stores the report.
    pub fecha_creacion: Option<String>,
}

/// The visibility a report gets when its `report.create` gives none.
pub const DEFAULT_VISIBILIDAD: f64 = 1.0;

/// A message on the reports queue, by its `event_type`.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportEvent {
    /// `report.create`: store a report and add one to its author's
    /// `numero_reportes`; retried while the author does not exist yet.
    Create(NewReport),
    /// `report.update_visibility`: set a stored report's visibility.
    UpdateVisibility {
        /// The report to change.
        id_reporte: String,
        /// Its new visibility, any finite number.
        visibilidad: f64,
        /// Also lower the author's `calificacion` by `report::PENALTY`, not below
        /// 0, once per event; `false` when not given.
        penalize_author: bool,
    },
    /// `report.delete`: remove a report; one already gone counts as deleted.
    /// The author's `numero_reportes` is left as it is.
    Delete {
        /// The report to remove.
        id_reporte: String,
    },
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(tag = "event_type")]
enum Kind {
    #[serde(rename = "report.create")]
    Create,
    #[serde(rename = "report.update_visibility")]
    UpdateVisibility,
    #[serde(rename = "report.delete")]
    Delete,
}
const KNOWN: &str = "report.create, report.update_visibility, report.delete";

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
    /// Reads and validates one message of the reports queue; the error is the
    /// reason it is dead-lettered with.
    pub fn parse(payload: &[u8]) -> Result<Envelope<ReportEvent>, EventError> {
        let (kind, event_id, body) = envelope::<Kind>(payload, KNOWN)?;
        let fields: ReportFields = typed(body)?;
        let id_reporte = identifier("id_reporte", fields.id_reporte)?;
        let event = match kind {
            Kind::Create => ReportEvent::Create(NewReport {
                id_reporte,
                id_usuario: positive(
                    "id_usuario",
                    fields.id_usuario.ok_or_else(|| missing("id_usuario"))?,
                )?,
                tipo_reporte: fields.tipo_reporte.ok_or_else(|| missing("tipo_reporte"))?,
                descripcion: required_text("descripcion", fields.descripcion)?,
                ubicacion: fields.ubicacion,
                visibilidad: visibility(fields.visibilidad)?.unwrap_or(DEFAULT_VISIBILIDAD),
                fecha_creacion: optional_date("fecha_creacion", fields.fecha_creacion)?,
            }),
            Kind::UpdateVisibility => ReportEvent::UpdateVisibility {
                id_reporte,
                visibilidad: visibility(fields.visibilidad)?
                    .ok_or_else(|| missing("visibilidad"))?,
                penalize_author: fields.penalize_author.unwrap_or(false),
            },
            Kind::Delete => ReportEvent::Delete { id_reporte },
        };
        Ok(Envelope { event, event_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn report(value: Value) -> Result<Envelope<ReportEvent>, EventError> {
        ReportEvent::parse(&serde_json::to_vec(&value).unwrap())
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
                "visibilidad",
            ),
        ];
        for (value, expected) in cases {
            match report(value.clone()).unwrap_err() {
                EventError::Field(err) => assert_eq!(err.field, expected, "{value}: {err}"),
                other => panic!("{value}: {other}"),
            }
        }
        assert!(matches!(
            report(json!({"event_type": "report.hide", "id_reporte": "r"})),
            Err(EventError::UnknownType { .. })
        ));
    }
}

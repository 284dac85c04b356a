//! The `report` handler: `report.create|update_visibility|delete` on the
//! `reports` collection (`_id` = `id_reporte`) and the author's counters in
//! `users`, and the read behind `GET /reports/{idReporte}`.
//!
//! An event touches two documents without a transaction, so each step is
//! guarded on its own document: the author's `numero_reportes` or
//! `calificacion` change records the key on the author, the report's on the
//! report. A crash between the steps is repaired by the redelivery, whose
//! already-done step is skipped by its guard.

use mongodb::bson::{doc, Bson, Document};
use mongodb::Collection;

use gateway::{Attempt, DeliveryTarget, IncomingMessage};

use super::events::{NewReport, ReportEvent};
use super::user::USERS;
use super::{
    has_applied, is_duplicate, not_applied, now_iso, outcome, public_projection, record_applied,
    store_error, to_json, Failure,
};
use services::{Store, StoreError};

const REPORTS: &str = "reports";
/// Each penalty is taken off the author's `calificacion`, never below 0.
pub const PENALTY: f64 = 0.5;
/// Read-modify-write rounds before a penalty gives up for this attempt.
const PENALTY_TRIES: usize = 5;

/// The `report` handler: the delivery target that applies report events to
/// `reports` and to the authors in `users`.
pub struct ReportHandler {
    reports: Collection<Document>,
    users: Collection<Document>,
}

#[async_trait::async_trait]
impl DeliveryTarget for ReportHandler {
    async fn deliver(&self, message: &IncomingMessage) -> Attempt {
        let envelope = match ReportEvent::parse(&message.payload) {
            Ok(envelope) => envelope,
            Err(reason) => return outcome(Err(Failure::Reject(reason.to_string()))),
        };
        let key = envelope.key(&message.message_id);
        let result = match &envelope.event {
            ReportEvent::Create(report) => self.create(report, key).await,
            ReportEvent::UpdateVisibility {
                id_reporte,
                visibilidad,
                penalize_author,
            } => {
                self.update_visibility(id_reporte, *visibilidad, *penalize_author, key)
                    .await
            }
            ReportEvent::Delete { id_reporte } => self.delete(id_reporte).await,
        };
        outcome(result)
    }
}

impl ReportHandler {
    /// A handler on the store's `reports` and `users` collections.
    pub fn new(store: Store) -> Self {
        Self {
            reports: store.database().collection(REPORTS),
            users: store.database().collection(USERS),
        }
    }

    /// Counts the report on its author, then stores it.
    async fn create(&self, report: &NewReport, key: &str) -> Result<(), Failure> {
        // The same id from another event would count its author twice.
        if let Some(existing) = self
            .reports
            .find_one(doc! { "_id": &report.id_reporte })
            .projection(doc! { "created_by_event": 1 })
            .await?
        {
            if existing.get_str("created_by_event") != Ok(key) {
                return Err(Failure::Reject(format!(
                    "a report with id_reporte `{}` already exists",
                    report.id_reporte
                )));
            }
        }

        let counted = self
            .users
            .update_one(
                doc! { "_id": report.id_usuario, "applied_events": not_applied(key) },
                doc! { "$inc": { "numero_reportes": 1_i64 }, "$push": record_applied(key) },
            )
            .await?;
        if counted.matched_count == 0
            && self
                .users
                .find_one(doc! { "_id": report.id_usuario })
                .projection(doc! { "_id": 1 })
                .await?
                .is_none()
        {
            return Err(Failure::Retry(format!(
                "the author (id_usuario {}) does not exist yet",
                report.id_usuario
            )));
        }

        let fecha_creacion = report.fecha_creacion.clone().unwrap_or_else(now_iso);
        let stored = self
            .reports
            .update_one(
                doc! { "_id": &report.id_reporte },
                doc! { "$setOnInsert": {
                    "id_reporte": &report.id_reporte,
                    "id_usuario": report.id_usuario,
                    "tipo_reporte": report.tipo_reporte,
                    "descripcion": &report.descripcion,
                    "ubicacion": report.ubicacion.clone().map_or(Bson::Null, Bson::String),
                    "visibilidad": report.visibilidad,
                    "fecha_creacion": fecha_creacion,
                    "created_by_event": key,
                    "applied_events": [key],
                } },
            )
            .upsert(true)
            .await;
        match stored {
            Ok(_) => {}
            // Two upserts of one new id raced and the other inserted: the
            // report is there, made by whichever event that was.
            Err(err) if is_duplicate(&err) => {
                let existing = self
                    .reports
                    .find_one(doc! { "_id": &report.id_reporte })
                    .projection(doc! { "created_by_event": 1 })
                    .await?;
                if existing.is_some_and(|e| e.get_str("created_by_event") != Ok(key)) {
                    return Err(Failure::Reject(format!(
                        "a report with id_reporte `{}` already exists",
                        report.id_reporte
                    )));
                }
            }
            Err(err) => return Err(err.into()),
        }
        tracing::info!(id_usuario = report.id_usuario, "report created");
        Ok(())
    }

    async fn update_visibility(
        &self,
        id_reporte: &str,
        visibilidad: f64,
        penalize_author: bool,
        key: &str,
    ) -> Result<(), Failure> {
        let Some(report) = self
            .reports
            .find_one(doc! { "_id": id_reporte })
            .projection(doc! { "id_usuario": 1 })
            .await?
        else {
            return Err(Failure::Retry(format!(
                "no report `{id_reporte}` yet (its report.create may still be on its way)"
            )));
        };
        // Matches nothing when this key was applied already: skipped.
        self.reports
            .update_one(
                doc! { "_id": id_reporte, "applied_events": not_applied(key) },
                doc! { "$set": { "visibilidad": visibilidad }, "$push": record_applied(key) },
            )
            .await?;
        if penalize_author {
            match super::user::number(report.get("id_usuario")) {
                Some(author) => self.penalize(author, key).await?,
                None => tracing::warn!("the report names no author; nobody to penalize"),
            }
        }
        tracing::info!(penalize_author, "report visibility updated");
        Ok(())
    }

    /// Lowers the author's `calificacion` by `PENALTY`, not below 0, once
    /// per key: a conditional write on the value just read, repeated when a
    /// concurrent change got there first.
    async fn penalize(&self, author: i64, key: &str) -> Result<(), Failure> {
        for _ in 0..PENALTY_TRIES {
            let Some(user) = self
                .users
                .find_one(doc! { "_id": author })
                .projection(doc! { "calificacion": 1, "applied_events": 1 })
                .await?
            else {
                // The report was stored only once its author existed, so
                // the author has been deleted since: nothing to lower.
                tracing::warn!(id_usuario = author, "the report's author no longer exists");
                return Ok(());
            };
            if has_applied(&user, key) {
                return Ok(());
            }
            let (current, guard) = match user.get("calificacion") {
                Some(Bson::Double(c)) => (*c, Bson::Double(*c)),
                Some(Bson::Int32(c)) => (f64::from(*c), Bson::Int32(*c)),
                Some(Bson::Int64(c)) => (*c as f64, Bson::Int64(*c)),
                // Unset (or not a number): the default every user starts at.
                _ => (
                    super::events::DEFAULT_CALIFICACION,
                    Bson::Document(doc! { "$exists": false }),
                ),
            };
            let lowered = penalized(current);
            let written = self
                .users
                .update_one(
                    doc! { "_id": author, "calificacion": guard, "applied_events": not_applied(key) },
                    doc! { "$set": { "calificacion": lowered }, "$push": record_applied(key) },
                )
                .await?;
            if written.matched_count > 0 {
                return Ok(());
            }
        }
        Err(Failure::Retry(
            "the author's calificacion kept changing; will try again".into(),
        ))
    }

    /// Deleting a report that is not there is done already.
    async fn delete(&self, id_reporte: &str) -> Result<(), Failure> {
        let deleted = self
            .reports
            .delete_one(doc! { "_id": id_reporte })
            .await?
            .deleted_count;
        tracing::info!(deleted, "report deleted");
        Ok(())
    }
}

fn penalized(calificacion: f64) -> f64 {
    (calificacion - PENALTY).max(0.0)
}

/// `GET /reports/{idReporte}`: the stored report with the seed's names.
pub async fn find_report(
    store: &Store,
    id_reporte: &str,
) -> Result<Option<serde_json::Value>, StoreError> {
    Ok(store
        .database()
        .collection::<Document>(REPORTS)
        .find_one(doc! { "_id": id_reporte })
        .projection(public_projection())
        .await
        .map_err(store_error)?
        .map(to_json))
}

#[cfg(test)]
mod tests {
    use super::penalized;

    #[test]
    fn penalties_stop_at_zero() {
        assert_eq!(penalized(5.0), 4.5);
        assert_eq!(penalized(0.3), 0.0);
        assert_eq!(penalized(0.0), 0.0);
    }
}

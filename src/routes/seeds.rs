//! The seed flows: `POST /users`, `POST /reports`, `POST /jobs/scrape`
//! publish an event to a built-in queue and answer 202 at once;
//! `GET /users/{email}`, `GET /reports/{idReporte}`, `GET /jobs/{jobId}`
//! read what the built-in handlers stored. Requests are validated with the
//! handlers' own parsers, so an event accepted here is one its consumer can
//! apply. The seed's documents keep the seed's snake_case names.

use actix_web::{web, HttpResponse};
use builtin::events::{EventError, ReportEvent, ScrapeJob, UserEvent};
use builtin::scrape::QueueJobError;
use builtin::{queue_name, report, scrape, user};
use gateway::{BasicProperties, OutgoingMessage, PublishOutcome, QueueName};
use middlewares::{Publisher, Viewer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use services::BuiltinHandler;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::Json;
use crate::state::AppState;

/// The seed's user fields.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    #[schema(min_length = 1)]
    pub nombre: String,
    #[schema(min_length = 1)]
    pub apellido: String,
    /// Must contain `@`; stored trimmed and lower-cased.
    #[schema(min_length = 3)]
    pub email: String,
    /// ISO-8601: `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SS` or RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fecha_nacimiento: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_foto_perfil: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub biografia: Option<String>,
}

/// The seed's report fields; `id_reporte` is assigned here.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateReportRequest {
    /// The author's `user_id`.
    #[schema(minimum = 1)]
    pub id_usuario: i64,
    pub tipo_reporte: i64,
    #[schema(min_length = 1)]
    pub descripcion: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ubicacion: Option<String>,
}

/// A scrape job; `job_id` is assigned here unless the caller names one.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScrapeJobRequest {
    /// The caller's own id for the job (1 to 255 bytes); one already used
    /// is refused with 409. A new UUID when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 255)]
    pub job_id: Option<String>,
    /// Any JSON value; kept on the job record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub industry: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geography: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keywords: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_types: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_query: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub filters: Option<Map<String, Value>>,
    /// http(s) pages to fetch (at most 100); their title, description,
    /// links and e-mail addresses become the job's results.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 100)]
    pub urls: Option<Vec<String>>,
}

/// A request the built-in handler would refuse: 400 naming the field.
fn refused(err: EventError) -> ApiError {
    match err {
        EventError::Field(field) => field.into(),
        other => ApiError::BadRequest(other.to_string()),
    }
}

/// The request's fields plus `extra`, as the event's JSON bytes.
fn event_bytes(request: &impl Serialize, extra: Value) -> Result<Vec<u8>, ApiError> {
    let mut event = match serde_json::to_value(request) {
        Ok(Value::Object(map)) => map,
        _ => return Err(ApiError::Internal("a seed request is not an object".into())),
    };
    if let Value::Object(extra) = extra {
        event.extend(extra);
    }
    serde_json::to_vec(&event).map_err(|e| ApiError::Internal(e.into()))
}

/// Publishes to the built-in queue, mandatory and confirmed.
async fn publish(
    state: &AppState,
    handler: BuiltinHandler,
    message_id: &str,
    payload: &[u8],
) -> Result<(), ApiError> {
    let queue = QueueName::parse(queue_name(&state.settings.builtin_queue_prefix, handler))?;
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(message_id.into())
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_app_id("workerrmq".into());
    let outcome = state
        .publisher
        .publish(OutgoingMessage {
            exchange: "",
            routing_key: queue.as_str(),
            payload,
            properties,
            mandatory: true,
        })
        .await?;
    match outcome {
        PublishOutcome::Confirmed => Ok(()),
        PublishOutcome::Unroutable => Err(ApiError::NotFound(format!(
            "no queue named `{queue}`; the built-in queues are made at start-up when BUILTIN_CONSUMERS=true"
        ))),
    }
}

#[utoipa::path(post, path = "/users", tag = "seed flows", request_body = CreateUserRequest,
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 202, description = "A `user.create` event is on the users queue", example = json!({"status": "queued", "email": "john@example.com"})),
        (status = 400, description = "A field is missing or invalid; the message names it", body = crate::error::ErrorBody),
        (status = 404, description = "The built-in users queue does not exist", body = crate::error::ErrorBody),
        (status = 503, description = "Broker down", body = crate::error::ErrorBody)))]
pub async fn create_user(
    _: Publisher,
    state: web::Data<AppState>,
    Json(body): Json<CreateUserRequest>,
) -> Result<HttpResponse, ApiError> {
    let event_id = uuid::Uuid::new_v4().to_string();
    let payload = event_bytes(
        &body,
        json!({ "event_type": "user.create", "event_id": event_id }),
    )?;
    let email = match UserEvent::parse(&payload).map_err(refused)?.event {
        UserEvent::Create(user) => user.email,
        _ => {
            return Err(ApiError::Internal(
                "a user.create parsed as another event".into(),
            ))
        }
    };
    publish(&state, BuiltinHandler::User, &event_id, &payload).await?;
    Ok(HttpResponse::Accepted().json(json!({ "status": "queued", "email": email })))
}

#[utoipa::path(post, path = "/reports", tag = "seed flows", request_body = CreateReportRequest,
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 202, description = "A `report.create` event is on the reports queue", example = json!({"status": "queued", "id_reporte": "5b0c…"})),
        (status = 400, description = "A field is missing or invalid; the message names it", body = crate::error::ErrorBody),
        (status = 404, description = "The built-in reports queue does not exist", body = crate::error::ErrorBody),
        (status = 503, description = "Broker down", body = crate::error::ErrorBody)))]
pub async fn create_report(
    _: Publisher,
    state: web::Data<AppState>,
    Json(body): Json<CreateReportRequest>,
) -> Result<HttpResponse, ApiError> {
    let event_id = uuid::Uuid::new_v4().to_string();
    let id_reporte = uuid::Uuid::new_v4().to_string();
    let payload = event_bytes(
        &body,
        json!({ "event_type": "report.create", "event_id": event_id, "id_reporte": id_reporte }),
    )?;
    ReportEvent::parse(&payload).map_err(refused)?;
    publish(&state, BuiltinHandler::Report, &event_id, &payload).await?;
    Ok(HttpResponse::Accepted().json(json!({ "status": "queued", "id_reporte": id_reporte })))
}

#[utoipa::path(post, path = "/jobs/scrape", tag = "seed flows", request_body = ScrapeJobRequest,
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 202, description = "The job is recorded as queued and on the scrape queue", example = json!({"status": "queued", "job_id": "987f…"})),
        (status = 400, description = "A field is invalid; the message names it", body = crate::error::ErrorBody),
        (status = 409, description = "A job with this `job_id` already exists", body = crate::error::ErrorBody),
        (status = 404, description = "The built-in scrape queue does not exist", body = crate::error::ErrorBody),
        (status = 503, description = "Broker or store down", body = crate::error::ErrorBody)))]
pub async fn create_scrape_job(
    _: Publisher,
    state: web::Data<AppState>,
    Json(body): Json<ScrapeJobRequest>,
) -> Result<HttpResponse, ApiError> {
    let job_id = body
        .job_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let payload = event_bytes(&body, json!({ "job_id": job_id }))?;
    let job = ScrapeJob::parse(&payload).map_err(refused)?;
    job.check_urls()?;
    let job_id = job.job_id.clone();
    // Recorded first, so a GET right after the 202 finds the job; the
    // record's key is what refuses a job_id used before.
    match scrape::insert_queued_job(&state.store, &job).await {
        Ok(()) => {}
        Err(QueueJobError::Exists) => {
            return Err(ApiError::Conflict(format!(
                "a scrape job with job_id `{job_id}` already exists; choose another job_id or leave it out"
            )))
        }
        Err(QueueJobError::Store(err)) => return Err(err.into()),
    }
    if let Err(err) = publish(&state, BuiltinHandler::Scrape, &job_id, &payload).await {
        // Not published: take the record back rather than leave a job that
        // stays queued forever.
        if let Err(cleanup) = scrape::delete_queued_job(&state.store, &job_id).await {
            tracing::warn!(%job_id, error = %gateway::Chain(&cleanup), "could not remove the unpublished job's record");
        }
        return Err(err);
    }
    Ok(HttpResponse::Accepted().json(json!({ "status": "queued", "job_id": job_id })))
}

#[utoipa::path(get, path = "/users/{email}", tag = "seed flows",
    security(("basic" = []), ("bearer" = [])),
    params(("email" = String, Path)),
    responses(
        (status = 200, description = "The stored user, with the seed's field names", example = json!({"user_id": 1, "nombre": "John", "apellido": "Doe", "email": "john@example.com", "fecha_nacimiento": "1990-01-01T00:00:00", "fecha_creacion": "2025-01-01T10:00:00.000Z", "calificacion": 5.0, "numero_reportes": 0, "url_foto_perfil": null, "biografia": null})),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_user(
    _: Viewer,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let email = path.into_inner();
    match user::find_user_by_email(&state.store, &email).await? {
        Some(found) => Ok(HttpResponse::Ok().json(found)),
        None => Err(ApiError::NotFound(format!("no user with email `{email}`"))),
    }
}

#[utoipa::path(get, path = "/reports/{idReporte}", tag = "seed flows",
    security(("basic" = []), ("bearer" = [])),
    params(("idReporte" = String, Path)),
    responses(
        (status = 200, description = "The stored report, with the seed's field names", example = json!({"id_reporte": "5b0c…", "id_usuario": 1, "tipo_reporte": 1, "descripcion": "…", "ubicacion": null, "visibilidad": 1.0, "fecha_creacion": "2025-01-01T10:00:00.000Z"})),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_report(
    _: Viewer,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id_reporte = path.into_inner();
    match report::find_report(&state.store, &id_reporte).await? {
        Some(found) => Ok(HttpResponse::Ok().json(found)),
        None => Err(ApiError::NotFound(format!(
            "no report with id_reporte `{id_reporte}`"
        ))),
    }
}

#[utoipa::path(get, path = "/jobs/{jobId}", tag = "seed flows",
    security(("basic" = []), ("bearer" = [])),
    params(("jobId" = String, Path)),
    responses(
        (status = 200, description = "queued → running → completed | failed", example = json!({"job_id": "987f…", "status": "completed", "results": [{"url": "https://example.com/", "httpStatus": 200, "title": "Example", "description": null, "links": ["https://example.com/about"], "emails": ["info@example.com"], "error": null}], "error": null})),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_job(
    _: Viewer,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job_id = path.into_inner();
    match scrape::find_job(&state.store, &job_id).await? {
        Some(job) => Ok(HttpResponse::Ok().json(job)),
        None => Err(ApiError::NotFound(format!("no job with job_id `{job_id}`"))),
    }
}

//! `/createApiKey`: mint a key, store only its bcrypt hash, show it once.

use actix_web::{web, HttpResponse};
use base64::Engine;
use middlewares::Admin;
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;
use services::{ApiKeyRecord, Role};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::Json;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// What the key is for, 1 to 100 characters.
    pub name: String,
    /// `admin`, `publisher` or `viewer`.
    #[schema(value_type = String, example = "publisher")]
    pub role: Role,
}

#[utoipa::path(post, path = "/createApiKey", tag = "auth", request_body = CreateApiKeyRequest,
    security(("basic" = []), ("bearer" = [])),
    responses((status = 201, description = "The key, shown this once", example = json!({"keyId": "9b1d…", "apiKey": "wrmq_9b1d…_…"}))))]
pub async fn create_api_key(
    _: Admin,
    state: web::Data<AppState>,
    Json(body): Json<CreateApiKeyRequest>,
) -> Result<HttpResponse, ApiError> {
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::BadRequest(
            "field `name`: 1 to 100 characters".into(),
        ));
    }
    let key_id = uuid::Uuid::new_v4().simple().to_string();
    let mut secret_bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret_bytes);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret_bytes);
    let record = ApiKeyRecord {
        key_id: key_id.clone(),
        name: name.clone(),
        role: body.role,
        secret_hash: services::store::hash_secret(&secret).await?,
        created_at: mongodb_now(),
    };
    state.store.insert_api_key(&record).await?;
    tracing::info!(key_id = %key_id, role = ?body.role, "API key created");
    Ok(HttpResponse::Created().json(json!({
        "keyId": key_id,
        "apiKey": format!("{}{key_id}_{secret}", middlewares::auth::API_KEY_PREFIX),
        "name": name,
        "role": body.role,
    })))
}

fn mongodb_now() -> services::store::DateTime {
    services::store::DateTime::now()
}

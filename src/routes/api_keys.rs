//! API keys: `/createApiKey` mints one and shows it once (the store keeps
//! only the SHA-256 of its secret), `/getApiKeys` lists them without any
//! secret, `/deleteApiKey` revokes one. Revocation reaches every replica
//! within seconds because replicas trust a checked key only briefly (see
//! `middlewares::auth`).

use actix_web::{web, HttpResponse};
use credentials::{ApiKey, KeyId, Role, SecretString};
use middlewares::Admin;
use serde::{Deserialize, Serialize};
use services::{ApiKeyRecord, FieldError};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::Json;
use crate::state::AppState;

const MAX_NAME_CHARS: usize = 100;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// What the key is for, 1 to 100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    pub role: Role,
}

/// A key's name: trimmed, 1 to 100 characters.
struct KeyName(String);

impl KeyName {
    fn parse(raw: &str) -> Result<KeyName, FieldError> {
        let name = raw.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            return Err(FieldError::new("name", "1 to 100 characters"));
        }
        Ok(KeyName(name.to_owned()))
    }
}

/// The answer to `/createApiKey`: the only time the key is shown. The JSON
/// carries it in clear; `Debug` does not.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiKey {
    #[schema(example = "9b1deb4d3b7d4bad9bdd2b0d7b3dcb6d")]
    pub key_id: String,
    /// Send as `Authorization: Bearer <apiKey>`.
    #[schema(value_type = String, example = "wrmq_9b1deb4d3b7d4bad9bdd2b0d7b3dcb6d_…")]
    #[serde(serialize_with = "credentials::secret_serde::expose")]
    pub api_key: SecretString,
    pub name: String,
    pub role: Role,
}

/// One row of `/getApiKeys`: never the key, its secret or its digest.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySummary {
    pub key_id: String,
    pub name: String,
    pub role: Role,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; written at most once a minute per replica, so it may lag
    /// that much. `null` when never used.
    pub last_used_at: Option<String>,
}

impl From<ApiKeyRecord> for ApiKeySummary {
    fn from(record: ApiKeyRecord) -> Self {
        Self {
            key_id: record.key_id,
            name: record.name,
            role: record.role,
            created_at: record
                .created_at
                .try_to_rfc3339_string()
                .unwrap_or_default(),
            last_used_at: record
                .last_used_at
                .and_then(|at| at.try_to_rfc3339_string().ok()),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteApiKeyRequest {
    /// The `keyId` `/createApiKey` answered with (32 hexadecimal characters).
    #[schema(pattern = "^[0-9a-f]{32}$")]
    pub key_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletedApiKey {
    #[schema(example = "API key has been deleted successfully.")]
    pub message: String,
    pub key_id: String,
}

#[utoipa::path(post, path = "/createApiKey", tag = "auth", request_body = CreateApiKeyRequest,
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 201, description = "The key, shown this once", body = CreatedApiKey),
        (status = 400, description = "Invalid name or role", body = crate::error::ErrorBody)))]
pub async fn create_api_key(
    _: Admin,
    state: web::Data<AppState>,
    Json(body): Json<CreateApiKeyRequest>,
) -> Result<HttpResponse, ApiError> {
    let KeyName(name) = KeyName::parse(&body.name)?;
    let key = ApiKey::mint();
    state
        .store
        .insert_api_key(&ApiKeyRecord::new(&key, name.clone(), body.role))
        .await?;
    tracing::info!(key_id = %key.key_id(), role = ?body.role, "API key created");
    Ok(HttpResponse::Created().json(CreatedApiKey {
        key_id: key.key_id().to_string(),
        api_key: key.reveal(),
        name,
        role: body.role,
    }))
}

#[utoipa::path(get, path = "/getApiKeys", tag = "auth",
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "Every key, oldest first; never a secret", body = Vec<ApiKeySummary>)))]
pub async fn get_api_keys(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let keys = state.store.list_api_keys().await?;
    let rows: Vec<ApiKeySummary> = keys.into_iter().map(ApiKeySummary::from).collect();
    Ok(HttpResponse::Ok().json(rows))
}

#[utoipa::path(post, path = "/deleteApiKey", tag = "auth", request_body = DeleteApiKeyRequest,
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Revoked: refused on every replica within 5 s", body = DeletedApiKey),
        (status = 400, description = "`keyId` is not a key id", body = crate::error::ErrorBody),
        (status = 404, description = "No key with this id", body = crate::error::ErrorBody)))]
pub async fn delete_api_key(
    _: Admin,
    state: web::Data<AppState>,
    Json(body): Json<DeleteApiKeyRequest>,
) -> Result<HttpResponse, ApiError> {
    let key_id = KeyId::parse(&body.key_id).map_err(|e| FieldError::new("keyId", e.to_string()))?;
    if !state.store.delete_api_key(&key_id).await? {
        return Err(ApiError::NotFound(format!("no API key `{key_id}`")));
    }
    tracing::info!(key_id = %key_id, "API key deleted");
    Ok(HttpResponse::Ok().json(DeletedApiKey {
        message: "API key has been deleted successfully.".into(),
        key_id: key_id.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use credentials::ExposeSecret;

    #[test]
    fn the_created_key_shows_in_json_but_not_in_debug() {
        let key = ApiKey::mint();
        let revealed = key.reveal().expose_secret().to_owned();
        let created = CreatedApiKey {
            key_id: key.key_id().to_string(),
            api_key: key.reveal(),
            name: "ci".into(),
            role: Role::Publisher,
        };
        let shown = format!("{created:?}");
        assert!(!shown.contains(&revealed), "{shown}");
        let json = serde_json::to_value(&created).expect("serializes");
        assert_eq!(json["apiKey"], revealed.as_str());
    }
}

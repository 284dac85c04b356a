//! `/whoami`: who the credentials belong to and what they may do, so a
//! client (the console) can show only the controls the role allows without
//! probing admin routes for a 403.

use actix_web::HttpResponse;
use credentials::Role;
use middlewares::Viewer;
use serde::Serialize;
use utoipa::ToSchema;

/// The caller as the gateway sees it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Caller {
    /// The account's user name, or the API key's name.
    #[schema(example = "admin")]
    pub name: String,
    pub role: Role,
}

#[utoipa::path(get, path = "/whoami", tag = "health",
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "The credentials' name and role", body = Caller)))]
pub async fn whoami(caller: Viewer) -> HttpResponse {
    HttpResponse::Ok().json(Caller {
        name: caller.principal.name,
        role: caller.principal.role,
    })
}

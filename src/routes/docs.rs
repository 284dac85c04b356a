//! `/openapi.json` and `/docs`: the spec of every route, and a page to read
//! it with Redoc, served from the binary itself (see `src/assets/README.md`):
//! nothing loads from a CDN, and the page's Content-Security-Policy lets it
//! load nothing from anywhere else.
//!
//! The spec itself is built by `crate::openapi` (which lists these routes)
//! and handed in as `ApiSpec` app data at start-up, so this module never
//! imports the module that imports it.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

/// The Redoc release embedded below; part of the asset's path, so a new
/// release is a new URL and the long cache never serves a stale one.
pub const REDOC_VERSION: &str = "2.5.4";
static REDOC_JS: &[u8] = include_bytes!("../assets/redoc.standalone.js");

/// Redoc renders with inline styles (styled-components), runs its search
/// index in a worker made from a `blob:` URL, and shows inline `data:`
/// images; everything else is this origin or nothing.
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
     connect-src 'self'; worker-src blob:; child-src blob:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The OpenAPI document `/openapi.json` answers with, built once.
pub struct ApiSpec(pub utoipa::openapi::OpenApi);

pub async fn openapi_json(spec: web::Data<ApiSpec>) -> HttpResponse {
    HttpResponse::Ok().json(&spec.0)
}

pub async fn docs_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, DOCS_CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(docs_html())
}

/// Where `/docs` finds Redoc: `/docs/redoc-<REDOC_VERSION>.standalone.js`.
pub fn redoc_path() -> String {
    format!("/docs/redoc-{REDOC_VERSION}.standalone.js")
}

/// The embedded Redoc bundle.
pub async fn redoc_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(REDOC_JS)
}

/// Links are relative to `/docs`, so the page also works behind a proxy
/// that serves the gateway under a path prefix.
fn docs_html() -> String {
    format!(
        r#"<!DOCTYPE html>
<html>
  <head>
    <title>workerrmq API</title>
    <meta charset="utf-8"/>
    <meta name="viewport" content="width=device-width, initial-scale=1">
  </head>
  <body>
    <redoc spec-url="openapi.json"></redoc>
    <script src="docs/redoc-{REDOC_VERSION}.standalone.js"></script>
  </body>
</html>
"#
    )
}

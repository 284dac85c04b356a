//! `/openapi.json` and `/docs`: the spec of every route, and a page to read it.

use actix_web::HttpResponse;
use utoipa::OpenApi;

use crate::openapi::ApiDoc;

pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

/// Redoc, loaded from its CDN by the reader's browser; the gateway itself
/// ships no UI assets.
pub async fn docs_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(DOCS_HTML)
}

const DOCS_HTML: &str = r#"<!DOCTYPE html>
<html>
  <head>
    <title>workerrmq API</title>
    <meta charset="utf-8"/>
    <meta name="viewport" content="width=device-width, initial-scale=1">
  </head>
  <body>
    <redoc spec-url="/openapi.json"></redoc>
    <script src="https://cdn.redoc.ly/redoc/latest/bundles/redoc.standalone.js"></script>
  </body>
</html>
"#;

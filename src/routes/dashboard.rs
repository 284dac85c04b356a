//! `/dashboard`: the operator console, a single page whose HTML, script and
//! styles are embedded in the binary (`src/assets/dashboard/`), and `/`,
//! which sends a browser there. Loading the page needs no credentials; the
//! page asks for them and sends them with every data call. Its
//! Content-Security-Policy allows this origin only, so the page can load
//! nothing and call nothing anywhere else.

use actix_web::http::header;
use actix_web::HttpResponse;

static INDEX_HTML: &str = include_str!("../assets/dashboard/index.html");
static APP_JS: &str = include_str!("../assets/dashboard/app.js");
static APP_CSS: &str = include_str!("../assets/dashboard/app.css");

/// Self only: no inline script or style, no other origin. `data:` images
/// only for the empty favicon, which keeps the browser from asking for
/// `/favicon.ico`.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        // Small, and a new binary may bring a new page: always revalidate.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

pub async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn styles() -> HttpResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// `/` is for people: the console.
pub async fn root() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, "dashboard"))
        .finish()
}

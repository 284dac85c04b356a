//! HTTP routes, one module per resource. Handlers stay thin: take the
//! caller's role, parse the body into domain types, call `gateway` or
//! `services`, map the answer.

pub mod api_keys;
pub mod connections;
pub mod consumers;
pub mod dead_letters;
pub mod docs;
pub mod exchanges;
pub mod health;
pub mod metrics;
pub mod publish;
pub mod queues;
pub mod seeds;

use actix_web::http::Method;
use actix_web::{web, FromRequest, Handler, Responder};

use crate::error::ApiError;

/// Every route, each a resource that answers its one method and 405 (with
/// `Allow`) to any other.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/health", health::health))
        .service(get("/ready", health::ready))
        .service(post("/createQueue", queues::create_queue))
        .service(get("/getQueues", queues::get_queues))
        .service(get("/getQueue/{queueName}", queues::get_queue))
        .service(post("/deleteQueue", queues::delete_queue))
        .service(post("/createExchange", exchanges::create_exchange))
        .service(post("/bindQueue", exchanges::bind_queue))
        .service(post("/messagePublish", publish::message_publish))
        .service(post("/createConsumer", consumers::create_consumer))
        .service(get("/getConsumers", consumers::get_consumers))
        .service(get("/getConsumer/{consumerId}", consumers::get_consumer))
        .service(post("/deleteConsumer", consumers::delete_consumer))
        .service(get(
            "/getDeadLetters/{queueName}",
            dead_letters::get_dead_letters,
        ))
        .service(post(
            "/replayDeadLetters",
            dead_letters::replay_dead_letters,
        ))
        .service(get("/getConnections", connections::get_connections))
        .service(post("/createApiKey", api_keys::create_api_key))
        .service(get("/getApiKeys", api_keys::get_api_keys))
        .service(post("/deleteApiKey", api_keys::delete_api_key))
        .service(get("/metrics", metrics::metrics))
        .service(post("/users", seeds::create_user))
        .service(get("/users/{email}", seeds::get_user))
        .service(post("/reports", seeds::create_report))
        .service(get("/reports/{idReporte}", seeds::get_report))
        .service(post("/jobs/scrape", seeds::create_scrape_job))
        .service(get("/jobs/{jobId}", seeds::get_job))
        .service(get("/openapi.json", docs::openapi_json))
        .service(get("/docs", docs::docs_page))
        .service(get(&docs::redoc_path(), docs::redoc_js));
}

fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    only(Method::GET, "GET", path, handler)
}

fn post<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    only(Method::POST, "POST", path, handler)
}

fn only<F, Args>(method: Method, allow: &'static str, path: &str, handler: F) -> actix_web::Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    web::resource(path)
        .route(web::method(method).to(handler))
        .default_service(web::to(move |req: actix_web::HttpRequest| async move {
            Err::<actix_web::HttpResponse, _>(ApiError::MethodNotAllowed {
                method: req.method().to_string(),
                allow,
            })
        }))
}

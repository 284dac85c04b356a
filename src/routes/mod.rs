//! HTTP routes, one module per resource. Handlers stay thin: take the
//! caller's role, parse the body into domain types, call `gateway` or
//! `services`, map the answer.

pub mod api_keys;
pub mod connections;
pub mod consumers;
pub mod dashboard;
pub mod dead_letters;
pub mod docs;
pub mod exchanges;
pub mod flow_control;
pub mod health;
pub mod history;
pub mod metrics;
pub mod publish;
pub mod publish_batch;
pub mod queues;
pub mod replicas;
pub mod seeds;
pub mod signing;
pub mod target_auth;
pub mod test_rules;
pub mod update_consumer;
pub mod whoami;

use actix_web::http::Method;
use actix_web::{web, FromRequest, Handler, Responder};

use crate::error::ApiError;
use crate::extract::BodyLimit;

/// Every route, each a resource that answers its one method and 405 (with
/// `Allow`) to any other. `batch_body` is `/messagePublishBatch`'s own body
/// limit; every other route has the app's.
pub fn configure(cfg: &mut web::ServiceConfig, batch_body: BodyLimit) {
    cfg.service(route(Method::GET, "/health", health::health))
        .service(route(Method::GET, "/ready", health::ready))
        .service(route(Method::POST, "/createQueue", queues::create_queue))
        .service(route(Method::GET, "/getQueues", queues::get_queues))
        .service(route(
            Method::GET,
            "/getQueue/{queueName}",
            queues::get_queue,
        ))
        .service(route(Method::POST, "/deleteQueue", queues::delete_queue))
        .service(route(
            Method::POST,
            "/createExchange",
            exchanges::create_exchange,
        ))
        .service(route(Method::POST, "/bindQueue", exchanges::bind_queue))
        .service(route(
            Method::POST,
            "/messagePublish",
            publish::message_publish,
        ))
        .service(
            route(
                Method::POST,
                "/messagePublishBatch",
                publish_batch::message_publish_batch,
            )
            .app_data(batch_body)
            .app_data(web::PayloadConfig::new(batch_body.bytes)),
        )
        .service(route(
            Method::POST,
            "/createConsumer",
            consumers::create_consumer,
        ))
        .service(route(
            Method::GET,
            "/getConsumers",
            consumers::get_consumers,
        ))
        .service(route(
            Method::GET,
            "/getConsumer/{consumerId}",
            consumers::get_consumer,
        ))
        .service(route(
            Method::POST,
            "/deleteConsumer",
            consumers::delete_consumer,
        ))
        .service(route(
            Method::POST,
            "/updateConsumer",
            update_consumer::update_consumer,
        ))
        .service(route(
            Method::POST,
            "/rotateSigningSecret",
            signing::rotate_signing_secret,
        ))
        .service(route(
            Method::POST,
            "/testConsumerRules",
            test_rules::test_consumer_rules,
        ))
        .service(route(
            Method::POST,
            "/pauseConsumer",
            flow_control::pause_consumer,
        ))
        .service(route(
            Method::POST,
            "/resumeConsumer",
            flow_control::resume_consumer,
        ))
        .service(route(
            Method::GET,
            "/getDeadLetters/{queueName}",
            dead_letters::get_dead_letters,
        ))
        .service(route(
            Method::POST,
            "/replayDeadLetters",
            dead_letters::replay_dead_letters,
        ))
        .service(route(
            Method::GET,
            "/getConnections",
            connections::get_connections,
        ))
        .service(route(
            Method::POST,
            "/createApiKey",
            api_keys::create_api_key,
        ))
        .service(route(Method::GET, "/getApiKeys", api_keys::get_api_keys))
        .service(route(
            Method::POST,
            "/deleteApiKey",
            api_keys::delete_api_key,
        ))
        .service(route(Method::GET, "/getAttempts", history::get_attempts))
        .service(route(
            Method::GET,
            "/getMessageHistory/{queueName}/{messageId}",
            history::get_message_history,
        ))
        .service(route(Method::GET, "/getReplicas", replicas::get_replicas))
        .service(route(Method::GET, "/metrics", metrics::metrics))
        .service(route(Method::POST, "/users", seeds::create_user))
        .service(route(Method::GET, "/users/{email}", seeds::get_user))
        .service(route(Method::POST, "/reports", seeds::create_report))
        .service(route(
            Method::GET,
            "/reports/{idReporte}",
            seeds::get_report,
        ))
        .service(route(
            Method::POST,
            "/jobs/scrape",
            seeds::create_scrape_job,
        ))
        .service(route(Method::GET, "/jobs/{jobId}", seeds::get_job))
        .service(route(Method::GET, "/openapi.json", docs::openapi_json))
        .service(route(Method::GET, "/docs", docs::docs_page))
        .service(route(Method::GET, &docs::redoc_path(), docs::redoc_js))
        .service(route(Method::GET, "/whoami", whoami::whoami))
        .service(route(Method::GET, "/", dashboard::root))
        .service(route(Method::GET, "/dashboard", dashboard::page))
        .service(route(Method::GET, "/dashboard/app.js", dashboard::script))
        .service(route(Method::GET, "/dashboard/app.css", dashboard::styles));
}

/// `path` answering `method` with `handler`, and any other method with 405.
fn route<F, Args>(method: Method, path: &str, handler: F) -> actix_web::Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    let allow = method.to_string();
    web::resource(path)
        .route(web::method(method).to(handler))
        .default_service(web::to(move |req: actix_web::HttpRequest| {
            let refused = ApiError::MethodNotAllowed {
                method: req.method().to_string(),
                allow: allow.clone(),
            };
            async move { Err::<actix_web::HttpResponse, _>(refused) }
        }))
}

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

use actix_web::web;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health::health))
        .route("/ready", web::get().to(health::ready))
        .route("/createQueue", web::post().to(queues::create_queue))
        .route("/getQueues", web::get().to(queues::get_queues))
        .route("/getQueue/{queueName}", web::get().to(queues::get_queue))
        .route("/deleteQueue", web::post().to(queues::delete_queue))
        .route(
            "/createExchange",
            web::post().to(exchanges::create_exchange),
        )
        .route("/bindQueue", web::post().to(exchanges::bind_queue))
        .route("/messagePublish", web::post().to(publish::message_publish))
        .route(
            "/createConsumer",
            web::post().to(consumers::create_consumer),
        )
        .route("/getConsumers", web::get().to(consumers::get_consumers))
        .route(
            "/getConsumer/{consumerId}",
            web::get().to(consumers::get_consumer),
        )
        .route(
            "/deleteConsumer",
            web::post().to(consumers::delete_consumer),
        )
        .route(
            "/getDeadLetters/{queueName}",
            web::get().to(dead_letters::get_dead_letters),
        )
        .route(
            "/replayDeadLetters",
            web::post().to(dead_letters::replay_dead_letters),
        )
        .route(
            "/getConnections",
            web::get().to(connections::get_connections),
        )
        .route("/createApiKey", web::post().to(api_keys::create_api_key))
        .route("/getApiKeys", web::get().to(api_keys::get_api_keys))
        .route("/deleteApiKey", web::post().to(api_keys::delete_api_key))
        .route("/metrics", web::get().to(metrics::metrics))
        .route("/users", web::post().to(seeds::create_user))
        .route("/users/{email}", web::get().to(seeds::get_user))
        .route("/reports", web::post().to(seeds::create_report))
        .route("/reports/{idReporte}", web::get().to(seeds::get_report))
        .route("/jobs/scrape", web::post().to(seeds::create_scrape_job))
        .route("/jobs/{jobId}", web::get().to(seeds::get_job))
        .route("/openapi.json", web::get().to(docs::openapi_json))
        .route("/docs", web::get().to(docs::docs_page))
        .route(&docs::redoc_path(), web::get().to(docs::redoc_js));
}

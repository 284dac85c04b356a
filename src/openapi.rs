//! The OpenAPI document, generated from the handlers' annotations by utoipa.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::routes;

/// `{"error": "<code>", "message": "<sentence>"}`
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBodySchema {
    /// bad_request, unauthorized, forbidden, not_found, conflict,
    /// payload_too_large, unsupported_media_type, broker_unavailable,
    /// store_unavailable, internal
    error: String,
    message: String,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct QueueRowSchema {
    queue_name: String,
    messages: u64,
    messages_ready: u64,
    messages_unacknowledged: u64,
    retrying_messages: u64,
    consumers: u64,
    durable: bool,
    queue_type: String,
    dead_letter_messages: u64,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct ConnectionSchema {
    connection_id: String,
    user: String,
    peer_host: Option<String>,
    peer_port: Option<u16>,
    state: Option<String>,
    channels: u32,
    connected_at: Option<String>,
    client_name: Option<String>,
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "workerrmq", description = "RabbitMQ consumer-management gateway"),
    paths(
        routes::health::health,
        routes::health::ready,
        routes::queues::create_queue,
        routes::queues::get_queues,
        routes::queues::get_queue,
        routes::queues::delete_queue,
        routes::exchanges::create_exchange,
        routes::exchanges::bind_queue,
        routes::publish::message_publish,
        routes::consumers::create_consumer,
        routes::consumers::get_consumers,
        routes::consumers::get_consumer,
        routes::consumers::delete_consumer,
        routes::dead_letters::get_dead_letters,
        routes::dead_letters::replay_dead_letters,
        routes::connections::get_connections,
        routes::api_keys::create_api_key,
        routes::api_keys::get_api_keys,
        routes::api_keys::delete_api_key,
        routes::metrics::metrics,
        routes::seeds::create_user,
        routes::seeds::get_user,
        routes::seeds::create_report,
        routes::seeds::get_report,
        routes::seeds::create_scrape_job,
        routes::seeds::get_job,
    ),
    components(schemas(ErrorBodySchema, QueueRowSchema, ConnectionSchema)),
    modifiers(&SecuritySchemes)
)]
pub struct ApiDoc;

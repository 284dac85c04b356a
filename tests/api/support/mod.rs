//! The one harness of the API tests: the application in the test process
//! (`app`) or as a child process (`gateway_process`), a client for its HTTP
//! API (`api`, `http`), a scriptable HTTP target (`target_server`), the
//! tests' own AMQP and management-API clients (`amqp`, `management`), where
//! the broker and store are (`env`), and how what a test made goes away
//! (`cleanup`). The test modules take what they use from here.

pub mod amqp;
pub mod amqp_proxy;
pub mod api;
pub mod app;
pub mod browser;
pub mod cleanup;
pub mod cluster;
pub mod env;
pub mod gateway_process;
pub mod http;
pub mod management;
pub mod target_server;
pub mod tls_target;
pub mod vhost;
pub mod wait;

pub use amqp::{
    binary_messages, connection_properties, ids_of, publish_confirmed, publish_with_properties,
    queue_counts, wait_for_queue, TestMessage,
};
pub use api::{running_consumer_on, Api};
pub use app::{spawn_app, spawn_app_with, TestApp};
pub use env::{amqp_url, amqp_urls, env_or, mongodb_uri, percent_encode};
pub use http::{
    assert_conflict_naming, assert_error, assert_json, assert_refused_naming, basic_auth, bearer,
    metric_sample,
};
pub use management::{
    connection_named, force_close_connection, management_client, management_get, management_put,
};
pub use wait::eventually;

//! Black-box tests of the HTTP API: the real application on a random port,
//! the real RabbitMQ and a real MongoDB-wire server.

mod amqp_connections;
mod api_fuzz;
mod api_keys;
mod auth;
mod bad_input;
mod batch_delivery;
mod builtin;
mod circuit_breaker;
mod cluster;
mod connections;
mod consumer_api;
mod credentials;
mod dashboard;
mod dead_letters;
mod delivery;
mod delivery_count;
mod exchanges;
mod fleet;
mod flow_control;
mod health;
mod history;
mod least_privilege;
mod metrics;
mod network_guard;
mod not_found;
mod publish;
mod publish_limits;
mod queues;
mod rate_limits;
mod resilience;
mod retries;
mod support;
mod trace;
mod try_it;
mod update_consumer;

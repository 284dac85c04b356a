//! Start-up and shutdown.
//!
//! `Application::build` connects what it can (a broker or store that is down
//! does not stop start-up: `/ready` reports it and the connection loops keep
//! trying), binds the listener and returns; `run_until_stopped` serves until
//! SIGTERM / SIGINT, then closes the broker connection cleanly.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use actix_web::body::BoxBody;
use actix_web::dev::{Server, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::{from_fn, ErrorHandlerResponse, ErrorHandlers};
use actix_web::{web, App, HttpResponse, HttpServer};
use std::sync::Arc;

use builtin::setup::BuiltinSetup;
use builtin::{BuiltinHandlers, ScrapeSettings};
use gateway::{
    Broker, BrokerSettings, Chain, ConsumerSupervisor, DeadLetters, Publisher, Topology,
};
use middlewares::{AuthSettings, Authenticator, ThrottleSettings};
use secrecy::ExposeSecret;
use services::attempts::{AttemptBuffer, AttemptHistory, AttemptWriter};
use services::{ConsumerRegistry, ManagementClient, Store};
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use crate::configuration::Settings;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::extract::BodyLimit;
use crate::openapi::ApiDoc;
use crate::routes;
use crate::state::AppState;

const FIRST_BROKER_CONNECT: Duration = Duration::from_secs(5);
const STORE_BOOTSTRAP_RETRY: Duration = Duration::from_secs(2);
/// How long shutdown waits for the attempt records still buffered to be
/// stored, after the consumers stopped.
const ATTEMPT_FLUSH_GRACE: Duration = Duration::from_secs(3);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The HTTP listener could not bind.
    #[error("cannot listen on {address}")]
    Bind {
        /// The `host:port` asked for.
        address: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be set up from `MONGODB_URI`.
    #[error("MONGODB_URI")]
    Store(#[source] services::StoreError),
    /// A stored secret does not open under `SECRETS_KEY` nor
    /// `SECRETS_KEY_PREVIOUS`: running on would mean consumers that cannot
    /// sign or authenticate, so the gateway does not start.
    #[error("SECRETS_KEY is not the key the stored secrets are sealed under")]
    SecretsKey(#[source] services::consumers::sealed::MigrationError),
    /// `client` names which: the management API's, the forwarder's, the
    /// scraper's.
    #[error("cannot build the {client} HTTP client")]
    HttpClient {
        /// Which client: the management API's, the forwarder's or the scraper's.
        client: &'static str,
        /// reqwest's error.
        #[source]
        source: reqwest::Error,
    },
}

/// The gateway, built and bound, ready to serve: its HTTP server, broker connections and consumer
/// registry, and what shuts them down in order.
pub struct Application {
    address: SocketAddr,
    server: Server,
    broker: Broker,
    registry: Arc<ConsumerRegistry>,
    /// Stores attempt records; flushed once the consumers have stopped.
    attempt_writer: Option<Arc<AttemptWriter>>,
    /// Stops background loops (the reconciler, store bootstrap).
    shutdown: CancellationToken,
    /// Closes the broker connection, after the consumers have drained.
    broker_shutdown: CancellationToken,
}

impl Application {
    /// Binds the listener, starts the broker connections, the store client and the
    /// background loops (reconciler, heartbeat); requests are served once
    /// `run_until_stopped` is called.
    pub async fn build(settings: Settings) -> Result<Application, StartupError> {
        let shutdown = CancellationToken::new();
        let broker_shutdown = CancellationToken::new();
        let listener =
            TcpListener::bind(&settings.bind_addr).map_err(|source| StartupError::Bind {
                address: settings.bind_addr.clone(),
                source,
            })?;
        let address = listener.local_addr().map_err(|source| StartupError::Bind {
            address: settings.bind_addr.clone(),
            source,
        })?;

        let broker = Broker::start(
            // `-publish` and `-consume` are appended per connection.
            BrokerSettings::new(
                // Each replica its own order, so a fleet spreads over the
                // nodes of a cluster.
                settings.amqp_urls.shuffled(),
                format!("workerrmq-{}", settings.instance_id),
            ),
            FIRST_BROKER_CONNECT,
            broker_shutdown.clone(),
        )
        .await;

        let store = Store::connect(
            settings.mongodb_uri.expose_secret(),
            &settings.mongodb_db,
            settings.secrets.clone(),
        )
        .await
        .map_err(StartupError::Store)?;
        bootstrap_store(&store, &settings, shutdown.clone()).await;
        seal_stored_secrets(&store, shutdown.clone()).await?;

        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|source| StartupError::HttpClient {
                client: "management API",
                source,
            })?;
        let management = ManagementClient::new(
            http,
            settings.management_urls.shuffled(),
            settings.management_user.clone(),
            settings.management_password.clone(),
            settings.vhost.clone(),
        );

        let metrics = Arc::new(crate::metrics::AppMetrics::new());
        let publisher = Arc::new(Publisher::new(broker.clone()));
        // Delivery history: the buffer the consumers hand records to, and
        // the writer that stores them in bulk.
        let attempts = AttemptHistory::new(&store);
        let attempt_log = settings.attempt_log;
        let attempt_writer = attempt_log.enabled.then(|| {
            let buffer = Arc::new(AttemptBuffer::new(
                attempt_log.buffer,
                services::attempts::MAX_BULK,
                metrics.attempt_log.dropped.clone(),
            ));
            let writer = attempts.start_writer(
                buffer.clone(),
                settings.instance_id.clone(),
                metrics.attempt_log.clone(),
                shutdown.clone(),
            );
            (buffer, writer)
        });
        {
            let attempts = attempts.clone();
            let retention = attempt_log.retention;
            tokio::spawn(async move {
                if let Err(err) = attempts.ensure_indexes(retention).await {
                    tracing::warn!(error = %gateway::Chain(&err), "could not create the attempt indexes; reads may be slow until the next start");
                }
            });
        }
        let mut supervisor = ConsumerSupervisor::new(
            broker.clone(),
            publisher.clone(),
            settings.instance_id.clone(),
            metrics.delivery.clone(),
        )
        // Companions take their main queue's type, as the management
        // API tells it.
        .with_companion_types(gateway::CompanionTypes::new(
            settings.default_queue_type,
            Some(Arc::new(management.clone())),
        ));
        if let Some((buffer, _)) = &attempt_writer {
            supervisor = supervisor.with_attempt_log(buffer.clone());
        }
        let supervisor = Arc::new(supervisor);
        let forward_client = services::forwarder::http_client(
            settings.forward_deny_private,
            settings.forward_allowed_hosts.as_deref(),
            settings.max_connections_per_target,
        )
        .map_err(|source| StartupError::HttpClient {
            client: "forwarder",
            source,
        })?;
        let builtins = BuiltinHandlers::new(
            store.clone(),
            ScrapeSettings {
                timeout: settings.scrape_timeout,
                job_timeout: settings.scrape_job_timeout,
                allowed_hosts: settings.scrape_allowed_hosts.clone(),
                ..ScrapeSettings::default()
            },
        )
        .map_err(|source| StartupError::HttpClient {
            client: "scraper",
            source,
        })?;
        let mut registry = ConsumerRegistry::new(
            &store,
            supervisor,
            forward_client,
            settings.forward_allowed_hosts.clone(),
            Arc::new(builtins),
        );
        if attempt_writer.is_some() {
            registry = registry.record_attempts(attempt_log.body_bytes);
        }
        let registry = registry.ordered_max_hold(settings.ordered_max_hold);
        let registry = Arc::new(registry);
        registry.spawn_reconciler(shutdown.clone());
        // Rate-limited consumers share their rate by the live replicas;
        // `/getReplicas` and the fleet-wide counters read the beats.
        services::replicas::ReplicaHeartbeat::new(
            &store,
            settings.instance_id.clone(),
            registry.supervisor().live_replicas().clone(),
            registry.clone(),
            Box::new({
                let broker = broker.clone();
                move || broker.broker_node()
            }),
        )
        .spawn(shutdown.clone());
        // Built-in queues and consumers (and the handlers' indexes); in the
        // background when the broker or store is not there yet.
        BuiltinSetup {
            topology: Topology::new(broker.clone()),
            registry: registry.clone(),
            store: store.clone(),
            prefix: settings.builtin_queue_prefix.clone(),
            declare_consumers: settings.builtin_consumers,
            queue_type: settings.default_queue_type,
        }
        .bootstrap(shutdown.clone())
        .await;

        let body_limit = settings.max_body_bytes;
        let batch_body_limit = BodyLimit {
            bytes: settings.max_batch_body_bytes,
            setting: "MAX_BATCH_BODY_BYTES",
        };
        let authenticator = web::Data::new(Authenticator::new(
            Arc::new(store.clone()),
            AuthSettings {
                throttle: ThrottleSettings {
                    max_failures: settings.auth_max_failures,
                    window: settings.auth_failure_window,
                    ..ThrottleSettings::default()
                },
                ..AuthSettings::default()
            },
            metrics.auth.clone(),
        ));
        let trusted_proxies = web::Data::new(settings.trusted_proxies.clone());
        let state = web::Data::new(AppState {
            topology: Topology::new(broker.clone()),
            dead_letters: DeadLetters::new(broker.clone(), publisher.clone()),
            attempts,
            publisher,
            registry: registry.clone(),
            metrics,
            broker: broker.clone(),
            store,
            management,
            settings,
        });

        let spec = web::Data::new(routes::docs::ApiSpec(ApiDoc::openapi()));
        let server = HttpServer::new(move || {
            App::new()
                .wrap(from_fn(middlewares::auth::authenticate))
                .wrap(from_fn(middlewares::request_id::echo_request_id))
                .wrap(middlewares::request_id::tracing_logger())
                .wrap(from_fn(middlewares::client_address::resolve))
                .app_data(state.clone())
                .app_data(trusted_proxies.clone())
                .app_data(authenticator.clone())
                .app_data(spec.clone())
                .app_data(BodyLimit {
                    bytes: body_limit,
                    setting: "MAX_BODY_BYTES",
                })
                .app_data(web::PayloadConfig::new(body_limit))
                .app_data(web::PathConfig::default().error_handler(|err, _| {
                    ApiError::BadRequest(format!("the path does not fit: {err}")).into()
                }))
                .app_data(web::QueryConfig::default().error_handler(|err, _| {
                    ApiError::BadRequest(format!("the query string does not fit: {err}")).into()
                }))
                .app_data(web::JsonConfig::default().error_handler(|err, _| {
                    ApiError::BadRequest(format!("the body does not fit: {err}")).into()
                }))
                .wrap(ErrorHandlers::new().default_handler(contract_body))
                .configure(|cfg| routes::configure(cfg, batch_body_limit))
                .default_service(web::to(not_found))
        })
        .listen(listener)
        .map_err(|source| StartupError::Bind {
            address: address.to_string(),
            source,
        })?
        .shutdown_timeout(5)
        .run();

        Ok(Application {
            address,
            server,
            broker,
            registry,
            attempt_writer: attempt_writer.map(|(_, writer)| writer),
            shutdown,
            broker_shutdown,
        })
    }

    /// The address the HTTP API listens on (with the port the system chose for `:0`).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The port the HTTP API listens on.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Serves until the server stops (SIGTERM / SIGINT), then shuts down in
    /// order: no more reconciling, consumers stop taking deliveries and
    /// finish or hand back the in-flight ones, the broker connection closes.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        tracing::info!("shutting down");
        self.shutdown.cancel();
        self.registry.supervisor().stop_all().await;
        if let Some(writer) = &self.attempt_writer {
            writer.flush_for(ATTEMPT_FLUSH_GRACE).await;
        }
        self.broker_shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.broker.stopped()).await;
        tracing::info!("stopped");
        result
    }
}

/// Indexes and the bootstrap admin. Tried once now so a fresh gateway can
/// be used at once; when the store is down, retried in the background.
async fn bootstrap_store(store: &Store, settings: &Settings, shutdown: CancellationToken) {
    let attempt = {
        let store = store.clone();
        let user = settings.admin_user.clone();
        let password = settings.admin_password.clone();
        move || {
            let store = store.clone();
            let user = user.clone();
            let password = password.clone();
            async move {
                store.ensure_indexes().await?;
                store.ensure_admin(&user, &password).await
            }
        }
    };
    match attempt().await {
        Ok(()) => return,
        Err(err) => {
            tracing::warn!(error = %Chain(&err), "store not ready; will keep trying in the background")
        }
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(STORE_BOOTSTRAP_RETRY) => {}
                _ = shutdown.cancelled() => return,
            }
            match attempt().await {
                Ok(()) => {
                    tracing::info!("store bootstrap done");
                    return;
                }
                Err(err) => tracing::debug!(error = %Chain(&err), "store still not ready"),
            }
        }
    });
}

/// Seals what earlier versions stored in clear, and what is sealed under
/// `SECRETS_KEY_PREVIOUS`, under `SECRETS_KEY`; a secret neither key opens
/// stops start-up. When the store is down, tried again in the background
/// (reads open plain and previous-key values meanwhile).
async fn seal_stored_secrets(
    store: &Store,
    shutdown: CancellationToken,
) -> Result<(), StartupError> {
    use services::consumers::sealed::{seal_stored, MigrationError};
    let collection = store.database().collection("consumers");
    match seal_stored(&collection, store.secrets()).await {
        Ok(done) => {
            if done.resealed > 0 {
                tracing::info!(
                    consumers = done.resealed,
                    key_id = store.secrets().key_id(),
                    "stored secrets sealed under SECRETS_KEY"
                );
            }
            return Ok(());
        }
        Err(err @ MigrationError::WrongKey { .. }) => return Err(StartupError::SecretsKey(err)),
        Err(MigrationError::Store(err)) => {
            tracing::warn!(error = %Chain(&err), "store not ready to seal stored secrets; will keep trying in the background")
        }
    }
    let secrets = store.secrets().clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(STORE_BOOTSTRAP_RETRY) => {}
                _ = shutdown.cancelled() => return,
            }
            match seal_stored(&collection, &secrets).await {
                Ok(_) => return,
                Err(MigrationError::Store(err)) => {
                    tracing::debug!(error = %Chain(&err), "store still not ready to seal stored secrets")
                }
                Err(err) => {
                    tracing::error!(error = %Chain(&err), "stored secrets do not open under SECRETS_KEY; the consumers they belong to cannot run");
                    return;
                }
            }
        }
    });
    Ok(())
}

/// Safety net for error answers made below the routes (actix's own
/// extractors and payload handling): any 4xx / 5xx that is not already
/// JSON gets the contract's body, with the status kept and the code it
/// implies.
fn contract_body<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .response()
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let message = match res.response().error() {
        Some(err) => err.to_string(),
        None => status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_owned(),
    };
    let (req, old) = res.into_parts();
    let mut new = HttpResponse::build(status);
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(value) = old.headers().get(&name) {
            new.insert_header((name, value.clone()));
        }
    }
    let new: HttpResponse<BoxBody> = new.json(ErrorBody {
        error: ErrorCode::for_status(status),
        message,
    });
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, new).map_into_right_body(),
    ))
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(
        "no such route; GET /openapi.json lists them all".into(),
    ))
}

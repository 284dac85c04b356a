//! Configuration from the environment (and `.env`, read in `main`).
//!
//! Every variable is parsed here, once, into a typed value; a missing or
//! malformed one stops start-up with one line naming it.

use std::fmt;

use secrecy::SecretString;

/// How log lines are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal (the default).
    Pretty,
    /// One JSON object per line, for a log collector.
    Json,
}

/// Every secret in it is a `secrecy::SecretString`: `Debug` prints it
/// redacted, and reading it takes an explicit `expose_secret()`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `BIND_ADDR`: the `host:port` the HTTP API listens on.
    pub bind_addr: String,
    /// `AMQP_URL`: one URL or a comma-separated list (a cluster's nodes),
    /// in the order given; the broker takes them shuffled.
    pub amqp_urls: gateway::AmqpUrls,
    /// `RABBITMQ_MANAGEMENT_URL`: likewise one or a comma-separated list.
    pub management_urls: ManagementUrls,
    /// `RABBITMQ_MANAGEMENT_USER`: the management API's user; the AMQP URL's unless set.
    pub management_user: String,
    /// `RABBITMQ_MANAGEMENT_PASSWORD`: that user's password; the AMQP URL's unless set.
    pub management_password: SecretString,
    /// The vhost of the AMQP URLs, which every queue and management call is in.
    pub vhost: String,
    /// It may carry a password (`mongodb://user:password@host`).
    pub mongodb_uri: SecretString,
    /// `MONGODB_DB`: the database the gateway keeps its records in.
    pub mongodb_db: String,
    /// `ADMIN_USER`: the bootstrap admin, made sure of at every start-up.
    pub admin_user: String,
    /// `ADMIN_PASSWORD`: the bootstrap admin's password, reset to this at start-up.
    pub admin_password: SecretString,
    /// `DEFAULT_TARGET_URL`: where a consumer created without a target forwards; without it a
    /// target is required.
    pub default_target_url: Option<url::Url>,
    /// `FORWARD_ALLOWED_HOSTS`: the only hosts consumer targets may name; when unset, any host.
    pub forward_allowed_hosts: Option<Vec<String>>,
    /// `SCRAPE_ALLOWED_HOSTS`: the only hosts the scrape handler fetches,
    /// whatever they resolve to; when unset, any host, connected to only on
    /// its addresses outside the network (`services::network`).
    pub scrape_allowed_hosts: Option<Vec<String>>,
    /// `MAX_BODY_BYTES`: the largest request body the API reads.
    pub max_body_bytes: usize,
    /// `MAX_BATCH_BODY_BYTES`: the largest `/messagePublishBatch` body, which
    /// carries up to 1,000 messages and so has a limit of its own.
    pub max_batch_body_bytes: usize,
    /// `LOG_FORMAT`: `pretty` or `json`.
    pub log_format: LogFormat,
    /// `BUILTIN_CONSUMERS`: whether start-up declares each built-in queue and gives it a built-in
    /// consumer.
    pub builtin_consumers: bool,
    /// `BUILTIN_QUEUE_PREFIX`: put before the built-in queues' names, so several gateways can share
    /// a broker.
    pub builtin_queue_prefix: String,
    /// `SCRAPE_TIMEOUT_MS`: how long the scrape handler gives one URL.
    pub scrape_timeout: std::time::Duration,
    /// `SCRAPE_JOB_TIMEOUT_MS`: how long one scrape job may run in all; past
    /// it the job completes with what it has.
    pub scrape_job_timeout: std::time::Duration,
    /// `FORWARD_DENY_PRIVATE`: apply the scrape handler's address guard to
    /// consumer targets too.
    pub forward_deny_private: bool,
    /// `MAX_CONNECTIONS_PER_TARGET`: requests open to one target origin at
    /// once, every consumer together.
    pub max_connections_per_target: usize,
    /// `MAX_HEADER_BYTES`: total encoded message headers `/messagePublish`
    /// accepts.
    pub max_header_bytes: usize,
    /// `ATTEMPT_LOG`, `ATTEMPT_BODY_BYTES`, `ATTEMPT_LOG_BUFFER`,
    /// `ATTEMPT_RETENTION`: delivery history.
    pub attempt_log: services::attempts::AttemptLogConfig,
    /// `MAX_CONSUMERS`: consumers this gateway runs; beyond it, 409.
    pub max_consumers: usize,
    /// `ORDERED_MAX_HOLD_MS`: how long an ordered consumer may hold a
    /// delivery, unacked, for retries in place; keep it under the broker's
    /// `consumer_timeout` (30 minutes by default).
    pub ordered_max_hold: std::time::Duration,
    /// `AUTH_MAX_FAILURES`: failed authentications one client address may
    /// make per window before it is refused with 429; 0 turns it off.
    pub auth_max_failures: u32,
    /// `AUTH_FAILURE_WINDOW_SECS`: that window.
    pub auth_failure_window: std::time::Duration,
    /// `SECRETS_KEY` (and `SECRETS_KEY_PREVIOUS`): what the secrets the
    /// store keeps are sealed with. `Debug` shows the keys' ids only.
    pub secrets: credentials::SecretsCipher,
    /// `TRUSTED_PROXIES`: the proxies whose forwarding header
    /// (`TRUSTED_PROXY_HEADER`) gives the client address (for the throttle
    /// and the logs); none unless set.
    pub trusted_proxies: middlewares::TrustedProxies,
    /// Names this process in its AMQP connection, so replicas can be told
    /// apart in `/getConnections`.
    pub instance_id: String,
    /// `DEFAULT_QUEUE_TYPE`: the type of queues created without one (the
    /// built-in ones included), and of companions whose main queue's type
    /// the management API cannot tell.
    pub default_queue_type: gateway::QueueType,
}

/// The management API's base URLs, one or more (a cluster's nodes), each an
/// http(s) URL. `Debug` leaves out any user and password in them.
#[derive(Clone, PartialEq, Eq)]
pub struct ManagementUrls(Vec<url::Url>);

impl fmt::Debug for ManagementUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|url| {
                let mut shown = url.clone();
                // Only fails for URLs that cannot have credentials anyway.
                let _ = shown.set_username("");
                let _ = shown.set_password(None);
                shown.to_string()
            }))
            .finish()
    }
}

impl ManagementUrls {
    const VARIABLE: &'static str = "RABBITMQ_MANAGEMENT_URL";

    /// A comma-separated list; every entry must be an http(s) URL.
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        let entries: Vec<&str> = raw.split(',').map(str::trim).collect();
        let count = entries.len();
        let mut urls = Vec::with_capacity(count);
        for (index, entry) in entries.into_iter().enumerate() {
            if entry.is_empty() {
                return Err(problem(
                    Self::VARIABLE,
                    format!("entry {} of {count} is empty (a stray comma?)", index + 1),
                ));
            }
            let url = services::network::http_url(entry).map_err(|why| {
                problem(
                    Self::VARIABLE,
                    format!("entry {} of {count}, `{entry}`, {why}", index + 1),
                )
            })?;
            urls.push(url);
        }
        Ok(Self(urls))
    }

    /// The URLs in the order given.
    pub fn as_slice(&self) -> &[url::Url] {
        &self.0
    }

    /// The same URLs in a random order, this replica's, so the replicas'
    /// management calls spread over the nodes.
    pub fn shuffled(&self) -> Vec<url::Url> {
        gateway::addresses::shuffled(&self.0)
    }
}

/// The most `MAX_HEADER_BYTES` may be: RabbitMQ's default frame_max
/// (131072) less 4 KiB for the other message properties.
const MAX_HEADER_BYTES_CAP: u64 = 131_072 - 4_096;

/// A variable that is missing or malformed; stops start-up with one line naming it.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    /// The environment variable's name.
    pub variable: &'static str,
    /// What is wrong with its value.
    pub problem: String,
}

fn problem(variable: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        problem: problem.into(),
    }
}

impl Settings {
    /// Reads every variable from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Builds settings from any lookup; empty values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |key: &str| get(key).filter(|v| !v.trim().is_empty());
        let or = |key: &str, default: &str| var(key).unwrap_or_else(|| default.to_owned());

        let bind_addr = or("BIND_ADDR", "127.0.0.1:8080");
        bind_addr
            .parse::<std::net::SocketAddr>()
            .map_err(|e| problem("BIND_ADDR", format!("`{bind_addr}` is not host:port ({e})")))?;

        let amqp_urls =
            gateway::AmqpUrls::parse(&or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
                .map_err(|e| problem("AMQP_URL", e.to_string()))?;
        let amqp = amqp_urls.parts().clone();

        let management_urls =
            ManagementUrls::parse(&or("RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672"))?;

        let mongodb_uri = or("MONGODB_URI", "mongodb://127.0.0.1:27017");
        if !(mongodb_uri.starts_with("mongodb://") || mongodb_uri.starts_with("mongodb+srv://")) {
            return Err(problem(
                "MONGODB_URI",
                "must start with mongodb:// or mongodb+srv://",
            ));
        }
        let mongodb_db = or("MONGODB_DB", "workerrmq");
        if mongodb_db.len() > 63 || mongodb_db.contains(['/', '\\', '.', ' ', '"', '$']) {
            return Err(problem(
                "MONGODB_DB",
                "must be at most 63 characters without / \\ . space \" or $",
            ));
        }

        let admin_password = var("ADMIN_PASSWORD").ok_or_else(|| {
            problem(
                "ADMIN_PASSWORD",
                "is required: set it in the environment or .env (./run.sh writes one on first run)",
            )
        })?;

        let default_target_url = var("DEFAULT_TARGET_URL")
            .map(|raw| parse_http_url("DEFAULT_TARGET_URL", &raw))
            .transpose()?;

        let forward_allowed_hosts =
            var("FORWARD_ALLOWED_HOSTS").map(|raw| services::network::host_list(&raw));
        let scrape_allowed_hosts =
            var("SCRAPE_ALLOWED_HOSTS").map(|raw| services::network::host_list(&raw));

        let max_body_bytes = match var("MAX_BODY_BYTES") {
            None => 1_048_576,
            Some(raw) => raw
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    problem(
                        "MAX_BODY_BYTES",
                        format!("`{raw}` is not a positive number of bytes"),
                    )
                })?,
        };

        // 1,000 messages of 16 KiB each; at most 1 GiB, which the gateway
        // would hold in memory for the length of the request.
        let max_batch_body_bytes = number(
            &var,
            "MAX_BATCH_BODY_BYTES",
            16 * 1_048_576,
            1..=1_073_741_824,
        )?;

        let log_format = match or("LOG_FORMAT", "pretty").to_ascii_lowercase().as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                return Err(problem(
                    "LOG_FORMAT",
                    format!("`{other}` is neither `pretty` nor `json`"),
                ))
            }
        };

        let builtin_consumers = boolean(&var, "BUILTIN_CONSUMERS", true)?;
        let scrape_timeout_ms = number(&var, "SCRAPE_TIMEOUT_MS", 10_000, 1..=300_000)?;
        let scrape_job_timeout_ms = number(&var, "SCRAPE_JOB_TIMEOUT_MS", 300_000, 1..=86_400_000)?;
        let forward_deny_private = boolean(&var, "FORWARD_DENY_PRIVATE", false)?;
        let max_connections_per_target =
            number(&var, "MAX_CONNECTIONS_PER_TARGET", 256, 1..=65_535)?;
        // Headers travel in one content-header frame with the other
        // properties; RabbitMQ's default frame_max is 131072, and a frame
        // beyond it closes the whole connection. 4 KiB stay for the rest.
        let max_header_bytes = number(&var, "MAX_HEADER_BYTES", 65_536, 1..=MAX_HEADER_BYTES_CAP)?;
        let max_consumers = number(&var, "MAX_CONSUMERS", 5_000, 1..=1_000_000)?;
        let ordered_max_hold_ms = number(&var, "ORDERED_MAX_HOLD_MS", 900_000, 1_000..=86_400_000)?;
        let auth_max_failures = number(&var, "AUTH_MAX_FAILURES", 10, 0..=1_000_000)?;
        let auth_failure_window_secs = number(&var, "AUTH_FAILURE_WINDOW_SECS", 60, 1..=86_400)?;

        let secrets_key = var("SECRETS_KEY").ok_or_else(|| {
            problem(
                "SECRETS_KEY",
                "is required: 32 random bytes, base64 (`openssl rand -base64 32`); \
                 set it in the environment or .env (./run.sh writes one on first run)",
            )
        })?;
        let secrets_key = credentials::SecretsKey::from_base64(&secrets_key)
            .map_err(|e| problem("SECRETS_KEY", e.to_string()))?;
        let previous_key = var("SECRETS_KEY_PREVIOUS")
            .map(|raw| {
                credentials::SecretsKey::from_base64(&raw)
                    .map_err(|e| problem("SECRETS_KEY_PREVIOUS", e.to_string()))
            })
            .transpose()?;
        let secrets = credentials::SecretsCipher::new(secrets_key, previous_key);

        let trusted_proxies = match var("TRUSTED_PROXIES") {
            None => middlewares::TrustedProxies::none(),
            Some(raw) => middlewares::TrustedProxies::parse(&raw)
                .map_err(|e| problem("TRUSTED_PROXIES", e.to_string()))?,
        };
        let trusted_proxies = match var("TRUSTED_PROXY_HEADER") {
            None => trusted_proxies,
            Some(raw) => trusted_proxies.reading(
                middlewares::ForwardingHeader::parse(&raw).ok_or_else(|| {
                    problem(
                        "TRUSTED_PROXY_HEADER",
                        format!("`{raw}` is neither `x-forwarded-for` nor `forwarded`"),
                    )
                })?,
            ),
        };

        let attempt_log = services::attempts::AttemptLogConfig {
            enabled: match var("ATTEMPT_LOG").map(|v| v.trim().to_ascii_lowercase()) {
                None => true,
                Some(v) if matches!(v.as_str(), "on" | "true" | "1" | "yes") => true,
                Some(v) if matches!(v.as_str(), "off" | "false" | "0" | "no") => false,
                Some(other) => {
                    return Err(problem(
                        "ATTEMPT_LOG",
                        format!("`{other}` is neither `on` nor `off`"),
                    ))
                }
            },
            body_bytes: number(&var, "ATTEMPT_BODY_BYTES", 4_096, 0..=65_536)? as usize,
            buffer: number(&var, "ATTEMPT_LOG_BUFFER", 100_000, 1..=10_000_000)? as usize,
            retention: match var("ATTEMPT_RETENTION") {
                None => std::time::Duration::from_secs(7 * 24 * 3600),
                Some(raw) => humantime::parse_duration(raw.trim())
                    .ok()
                    .filter(|d| d.as_secs() >= 60)
                    .ok_or_else(|| {
                        problem(
                            "ATTEMPT_RETENTION",
                            format!("`{raw}` is not a duration of a minute or more (7d, 12h, 90m)"),
                        )
                    })?,
            },
        };

        let default_queue_type = match var("DEFAULT_QUEUE_TYPE") {
            None => gateway::QueueType::Classic,
            Some(raw) => gateway::QueueType::parse(&raw).ok_or_else(|| {
                problem(
                    "DEFAULT_QUEUE_TYPE",
                    format!("`{}` is neither `classic` nor `quorum`", raw.trim()),
                )
            })?,
        };

        let instance_id = var("INSTANCE_ID").unwrap_or_else(|| {
            let short = uuid::Uuid::new_v4().simple().to_string();
            short[..8].to_owned()
        });
        // It goes into the connection name and every consumer tag (AMQP
        // short strings, at most 255 bytes).
        if instance_id.len() > 64
            || !instance_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(problem(
                "INSTANCE_ID",
                "1 to 64 characters of A-Z, a-z, 0-9, - and _",
            ));
        }

        Ok(Settings {
            bind_addr,
            management_user: var("RABBITMQ_MANAGEMENT_USER").unwrap_or(amqp.user),
            management_password: var("RABBITMQ_MANAGEMENT_PASSWORD")
                .map(SecretString::from)
                .unwrap_or(amqp.password),
            vhost: amqp.vhost,
            amqp_urls,
            management_urls,
            mongodb_uri: SecretString::from(mongodb_uri),
            mongodb_db,
            admin_user: or("ADMIN_USER", "admin"),
            admin_password: SecretString::from(admin_password),
            default_target_url,
            forward_allowed_hosts,
            scrape_allowed_hosts,
            max_body_bytes,
            max_batch_body_bytes: max_batch_body_bytes as usize,
            log_format,
            builtin_consumers,
            builtin_queue_prefix: var("BUILTIN_QUEUE_PREFIX").unwrap_or_default(),
            scrape_timeout: std::time::Duration::from_millis(scrape_timeout_ms),
            scrape_job_timeout: std::time::Duration::from_millis(scrape_job_timeout_ms),
            forward_deny_private,
            max_connections_per_target: max_connections_per_target as usize,
            max_header_bytes: max_header_bytes as usize,
            max_consumers: max_consumers as usize,
            ordered_max_hold: std::time::Duration::from_millis(ordered_max_hold_ms),
            attempt_log,
            auth_max_failures: auth_max_failures as u32,
            auth_failure_window: std::time::Duration::from_secs(auth_failure_window_secs),
            secrets,
            trusted_proxies,
            instance_id,
            default_queue_type,
        })
    }
}

/// An integer variable within `range`, `default` when unset.
fn number(
    var: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let Some(raw) = var(variable) else {
        return Ok(default);
    };
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            problem(
                variable,
                format!(
                    "`{raw}` is not a whole number between {} and {}",
                    range.start(),
                    range.end()
                ),
            )
        })
}

/// A true/false variable, `default` when unset.
fn boolean(
    var: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match var(variable).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => Ok(true),
        Some(v) if matches!(v.as_str(), "false" | "0" | "no") => Ok(false),
        Some(other) => Err(problem(
            variable,
            format!("`{other}` is neither true nor false"),
        )),
    }
}

fn parse_http_url(variable: &'static str, raw: &str) -> Result<url::Url, ConfigError> {
    services::network::http_url(raw).map_err(|why| problem(variable, format!("`{raw}` {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const A_KEY: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";

    /// `pairs` over a valid `SECRETS_KEY` (most tests are about something else).
    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut map: HashMap<String, String> =
            HashMap::from([("SECRETS_KEY".to_owned(), A_KEY.to_owned())]);
        map.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_follow_the_contract() {
        let s = settings(&[("ADMIN_PASSWORD", "pw")]).unwrap();
        assert_eq!(s.bind_addr, "127.0.0.1:8080");
        assert_eq!(s.mongodb_db, "workerrmq");
        assert_eq!(s.admin_user, "admin");
        assert_eq!(s.management_user, "guest");
        assert_eq!(s.vhost, "/");
        assert_eq!(s.max_body_bytes, 1_048_576);
        assert_eq!(s.max_batch_body_bytes, 16 * 1_048_576);
        assert!(s.builtin_consumers);
        assert_eq!(s.log_format, LogFormat::Pretty);
    }

    #[test]
    fn start_refuses_without_an_admin_password() {
        assert_eq!(settings(&[]).unwrap_err().variable, "ADMIN_PASSWORD");
    }

    #[test]
    fn malformed_values_name_their_variable() {
        let cases = [
            ("BIND_ADDR", "nope"),
            ("AMQP_URL", "http://x"),
            ("AMQP_URL", "amqp://a/%2f,,amqp://b/%2f"),
            ("RABBITMQ_MANAGEMENT_URL", "http://a:15672,ftp://b"),
            ("RABBITMQ_MANAGEMENT_URL", "http://a:15672,"),
            ("MAX_BODY_BYTES", "-3"),
            ("MAX_BATCH_BODY_BYTES", "0"),
            ("LOG_FORMAT", "xml"),
            ("BUILTIN_CONSUMERS", "maybe"),
            ("DEFAULT_TARGET_URL", "ftp://x"),
            ("MONGODB_URI", "postgres://x"),
            ("INSTANCE_ID", "has spaces"),
            ("SCRAPE_TIMEOUT_MS", "0"),
            ("SCRAPE_TIMEOUT_MS", "soon"),
            ("MAX_HEADER_BYTES", "131072"),
            ("MAX_CONSUMERS", "0"),
            ("MAX_CONNECTIONS_PER_TARGET", "0"),
            ("MAX_CONNECTIONS_PER_TARGET", "65536"),
            ("DEFAULT_QUEUE_TYPE", "stream"),
            ("TRUSTED_PROXIES", "10.0.0.0/8,proxy.internal"),
            ("TRUSTED_PROXIES", "10.0.0.0/40"),
            ("SECRETS_KEY", "c2hvcnQ="),
            ("SECRETS_KEY", "not base64!"),
            ("SECRETS_KEY_PREVIOUS", "c2hvcnQ="),
        ];
        for (key, value) in cases {
            let err = settings(&[("ADMIN_PASSWORD", "pw"), (key, value)]).unwrap_err();
            assert_eq!(err.variable, key, "{key}={value}");
        }
    }

    #[test]
    fn the_failure_throttle_defaults_to_ten_a_minute_and_can_be_turned_off() {
        let s = settings(&[("ADMIN_PASSWORD", "pw")]).unwrap();
        assert_eq!(s.auth_max_failures, 10);
        assert_eq!(s.auth_failure_window, std::time::Duration::from_secs(60));
        let off = settings(&[("ADMIN_PASSWORD", "pw"), ("AUTH_MAX_FAILURES", "0")]).unwrap();
        assert_eq!(off.auth_max_failures, 0);
        for (key, value) in [
            ("AUTH_MAX_FAILURES", "-1"),
            ("AUTH_FAILURE_WINDOW_SECS", "0"),
        ] {
            let err = settings(&[("ADMIN_PASSWORD", "pw"), (key, value)]).unwrap_err();
            assert_eq!(err.variable, key, "{key}={value}");
        }
    }

    #[test]
    fn start_refuses_without_a_secrets_key() {
        let map = HashMap::from([("ADMIN_PASSWORD", "pw")]);
        let err = Settings::from_lookup(|k| map.get(k).map(|v| v.to_string())).unwrap_err();
        assert_eq!(err.variable, "SECRETS_KEY");
        assert!(err.to_string().starts_with("SECRETS_KEY: "), "{err}");
    }

    #[test]
    fn the_secrets_keys_do_not_show_in_debug_output() {
        let s = settings(&[("ADMIN_PASSWORD", "pw"), ("SECRETS_KEY_PREVIOUS", A_KEY)]).unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains(A_KEY), "{shown}");
        assert!(!shown.contains(&A_KEY[..12]), "{shown}");
    }

    #[test]
    fn no_proxy_is_trusted_unless_named() {
        let s = settings(&[("ADMIN_PASSWORD", "pw")]).unwrap();
        assert_eq!(s.trusted_proxies, middlewares::TrustedProxies::none());
        let s = settings(&[
            ("ADMIN_PASSWORD", "pw"),
            ("TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.7"),
        ])
        .unwrap();
        assert!(s.trusted_proxies.contains("10.9.9.9".parse().unwrap()));
        assert!(s.trusted_proxies.contains("192.0.2.7".parse().unwrap()));
        assert!(!s.trusted_proxies.contains("192.0.2.8".parse().unwrap()));
    }

    #[test]
    fn broker_and_management_urls_take_comma_separated_lists() {
        let s = settings(&[
            ("ADMIN_PASSWORD", "pw"),
            (
                "AMQP_URL",
                "amqp://u:p@127.0.0.1:5691/%2f, amqp://u:p@127.0.0.1:5692/%2f",
            ),
            (
                "RABBITMQ_MANAGEMENT_URL",
                "http://127.0.0.1:15691,http://127.0.0.1:15692",
            ),
        ])
        .unwrap();
        let nodes: Vec<&str> = s.amqp_urls.iter().map(|u| u.node()).collect();
        assert_eq!(nodes, ["127.0.0.1:5691", "127.0.0.1:5692"]);
        assert_eq!(s.management_urls.as_slice().len(), 2);
        assert_eq!(s.management_user, "u");
        let one = settings(&[("ADMIN_PASSWORD", "pw")]).unwrap();
        assert_eq!(one.amqp_urls.len(), 1);
        assert_eq!(one.management_urls.as_slice().len(), 1);
    }

    #[test]
    fn the_default_queue_type_is_classic_unless_set() {
        let s = settings(&[("ADMIN_PASSWORD", "pw")]).unwrap();
        assert_eq!(s.default_queue_type, gateway::QueueType::Classic);
        let s = settings(&[("ADMIN_PASSWORD", "pw"), ("DEFAULT_QUEUE_TYPE", "Quorum")]).unwrap();
        assert_eq!(s.default_queue_type, gateway::QueueType::Quorum);
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let s = settings(&[("ADMIN_PASSWORD", "hunter2")]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        // Every other place a secret can come from, each its own.
        let s = settings(&[
            ("ADMIN_PASSWORD", "adm1nSecret"),
            (
                "AMQP_URL",
                "amqp://u:amqpSecret@127.0.0.1:5691/%2f,amqp://u:amqpSecret@127.0.0.1:5692/%2f",
            ),
            (
                "RABBITMQ_MANAGEMENT_URL",
                "http://m:urlSecret@127.0.0.1:15672",
            ),
            ("RABBITMQ_MANAGEMENT_PASSWORD", "mgmtSecret"),
            ("MONGODB_URI", "mongodb://db:mongoSecret@127.0.0.1:27017"),
        ])
        .unwrap();
        let shown = format!("{s:?}");
        for secret in [
            "adm1nSecret",
            "amqpSecret",
            "urlSecret",
            "mgmtSecret",
            "mongoSecret",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("127.0.0.1:15672"), "{shown}");
        // Without RABBITMQ_MANAGEMENT_PASSWORD, the AMQP URL's, still hidden.
        let s = settings(&[
            ("ADMIN_PASSWORD", "pw"),
            ("AMQP_URL", "amqp://u:amqpSecret@127.0.0.1:5691/%2f"),
        ])
        .unwrap();
        assert!(!format!("{s:?}").contains("amqpSecret"));
    }

    #[test]
    fn the_scrape_timeout_defaults_to_ten_seconds() {
        let s = settings(&[("ADMIN_PASSWORD", "pw")]).unwrap();
        assert_eq!(s.scrape_timeout, std::time::Duration::from_secs(10));
        let s = settings(&[("ADMIN_PASSWORD", "pw"), ("SCRAPE_TIMEOUT_MS", "1500")]).unwrap();
        assert_eq!(s.scrape_timeout, std::time::Duration::from_millis(1500));
    }
}

//! Where the tests find the broker and the store: the one place their
//! default URLs are written down. Each is read from the environment (a
//! developer or CI may point the tests at other servers) and falls back to
//! the local services.

/// The local broker, vhost `/`.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The local broker's management API.
pub const DEFAULT_MANAGEMENT_URL: &str = "http://127.0.0.1:15672";
/// The local MongoDB-wire server.
pub const DEFAULT_MONGODB_URI: &str = "mongodb://127.0.0.1:27017";
/// Databases the harness may drop start with it: every test names its own
/// `test_<uuid>`, and a test that points `MONGODB_DB` elsewhere must not lose
/// what it did not make.
pub const TEST_DB_PREFIX: &str = "test_";

/// The variable `key`, unless it is unset or blank; else `default`.
pub fn env_or(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// `AMQP_URL` as set: one URL or a comma-separated list, as the gateway
/// reads it.
pub fn amqp_urls() -> String {
    env_or("AMQP_URL", DEFAULT_AMQP_URL)
}

/// The first of `amqp_urls`: the broker the tests' own connections use.
pub fn amqp_url() -> String {
    first_of(&amqp_urls(), DEFAULT_AMQP_URL)
}

/// The first URL of `RABBITMQ_MANAGEMENT_URL`: where the tests look at and
/// clean up the broker.
pub fn management_url() -> String {
    first_of(
        &env_or("RABBITMQ_MANAGEMENT_URL", DEFAULT_MANAGEMENT_URL),
        DEFAULT_MANAGEMENT_URL,
    )
}

pub fn management_user() -> String {
    env_or("RABBITMQ_MANAGEMENT_USER", "guest")
}

pub fn management_password() -> String {
    env_or("RABBITMQ_MANAGEMENT_PASSWORD", "guest")
}

pub fn mongodb_uri() -> String {
    env_or("MONGODB_URI", DEFAULT_MONGODB_URI)
}

/// The vhost of `amqp_url`, percent-encoded as management-API paths take it.
pub fn vhost_path() -> String {
    let vhost = amqp_url()
        .parse::<lapin::uri::AMQPUri>()
        .map(|uri| uri.vhost)
        .unwrap_or_else(|e| panic!("AMQP_URL is not an AMQP URL: {e}"));
    percent_encode(&vhost)
}

/// Percent-encodes everything but RFC 3986 unreserved characters: a vhost,
/// user or queue name as one management-API path segment.
pub fn percent_encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn first_of(list: &str, default: &str) -> String {
    list.split(',')
        .map(str::trim)
        .find(|url| !url.is_empty())
        .unwrap_or(default)
        .to_owned()
}

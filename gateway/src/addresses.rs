//! The broker addresses a gateway may connect to: `AMQP_URL` as one URL or a
//! comma-separated list (the nodes of a RabbitMQ cluster). Parsed once, at
//! start-up, exactly as the connections will use them, so a malformed entry
//! is reported then rather than on the first failover.
//!
//! Each replica takes the list in its own random order (`shuffled`): the
//! replicas of a fleet then spread over the nodes instead of all landing on
//! the first, and a node's death moves only its share of them.

use std::fmt;

use rand::seq::SliceRandom;
use secrecy::{ExposeSecret, SecretString};

/// One AMQP URL of the list. `Debug` and `node` never show its password.
#[derive(Clone)]
pub struct AmqpUrl {
    /// The URL as given: it holds the password.
    raw: SecretString,
    node: String,
}

impl PartialEq for AmqpUrl {
    fn eq(&self, other: &Self) -> bool {
        self.raw.expose_secret() == other.raw.expose_secret()
    }
}

impl Eq for AmqpUrl {}

impl AmqpUrl {
    /// The URL as given, credentials included: for `Connection::connect`.
    pub fn as_str(&self) -> &str {
        self.raw.expose_secret()
    }

    /// `host:port`, what `/ready` and the heartbeat show as the node.
    pub fn node(&self) -> &str {
        &self.node
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({})", self.node)
    }
}

/// What the management API needs to know from the AMQP URLs. `Debug`
/// shows the password redacted.
#[derive(Debug, Clone)]
pub struct AmqpUrlParts {
    /// The AMQP user, which the management API is called as.
    pub user: String,
    /// The AMQP user's password, used for the management API too.
    pub password: SecretString,
    /// The vhost every URL names; the management API's queries are scoped to it.
    pub vhost: String,
}

impl PartialEq for AmqpUrlParts {
    fn eq(&self, other: &Self) -> bool {
        self.user == other.user
            && self.vhost == other.vhost
            && self.password.expose_secret() == other.password.expose_secret()
    }
}

impl Eq for AmqpUrlParts {}

/// Why `AMQP_URL` was refused. Never carries the URL itself (its password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmqpUrlsError {
    /// `AMQP_URL` is empty or only whitespace.
    #[error("no URL given")]
    Empty,
    /// Two commas in a row, or one at an end.
    #[error("entry {position} of {count} is empty (a stray comma?)")]
    EmptyEntry {
        /// 1-based place of the entry in the list.
        position: usize,
        /// How many entries the list has.
        count: usize,
    },
    /// An entry does not parse as an `amqp://` or `amqps://` URL.
    #[error("entry {position} of {count} is not a valid AMQP URL: {reason}")]
    Invalid {
        /// 1-based place of the entry in the list.
        position: usize,
        /// How many entries the list has.
        count: usize,
        /// What the URL parser objected to; never the URL.
        reason: String,
    },
    /// One gateway works in one vhost with one user: the management API
    /// calls and the queues' names would otherwise depend on the node.
    #[error(
        "entry {position} of {count} names another vhost or user than the first; \
         every URL must be the same vhost and user on another node"
    )]
    Mixed {
        /// 1-based place of the entry in the list.
        position: usize,
        /// How many entries the list has.
        count: usize,
    },
}

/// One or more AMQP URLs, in the order this replica tries them.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrls {
    urls: Vec<AmqpUrl>,
    /// The first entry's (every entry has the same user and vhost).
    parts: AmqpUrlParts,
}

impl fmt::Debug for AmqpUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.urls.iter().map(|u| &u.node))
            .finish()
    }
}

impl AmqpUrls {
    /// A comma-separated list of AMQP URLs (surrounding spaces ignored).
    pub fn parse(raw: &str) -> Result<Self, AmqpUrlsError> {
        if raw.trim().is_empty() {
            return Err(AmqpUrlsError::Empty);
        }
        let entries: Vec<&str> = raw.split(',').map(str::trim).collect();
        let count = entries.len();
        let mut urls = Vec::with_capacity(count);
        let mut first: Option<AmqpUrlParts> = None;
        for (index, entry) in entries.into_iter().enumerate() {
            let position = index + 1;
            if entry.is_empty() {
                return Err(AmqpUrlsError::EmptyEntry { position, count });
            }
            let uri: lapin::uri::AMQPUri =
                entry.parse().map_err(|reason| AmqpUrlsError::Invalid {
                    position,
                    count,
                    reason,
                })?;
            let parts = AmqpUrlParts {
                user: uri.authority.userinfo.username.clone(),
                password: SecretString::from(uri.authority.userinfo.password.clone()),
                vhost: uri.vhost.clone(),
            };
            match &first {
                None => first = Some(parts),
                Some(first) if first.vhost != parts.vhost || first.user != parts.user => {
                    return Err(AmqpUrlsError::Mixed { position, count });
                }
                Some(_) => {}
            }
            let host = &uri.authority.host;
            let node = if host.contains(':') {
                format!("[{host}]:{}", uri.authority.port)
            } else {
                format!("{host}:{}", uri.authority.port)
            };
            urls.push(AmqpUrl {
                raw: SecretString::from(entry.to_owned()),
                node,
            });
        }
        let parts = first.ok_or(AmqpUrlsError::Empty)?;
        Ok(Self { urls, parts })
    }

    /// User, password and vhost (the same in every entry).
    pub fn parts(&self) -> &AmqpUrlParts {
        &self.parts
    }

    /// The first URL in this order: where a connection starts.
    pub fn first(&self) -> &AmqpUrl {
        // `parse` refuses an empty list.
        &self.urls[0]
    }

    /// The URL after `index`, wrapping: where a connection goes next.
    pub fn get(&self, index: usize) -> &AmqpUrl {
        &self.urls[index % self.urls.len()]
    }

    /// How many URLs there are; at least one.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Never true (`parse` refuses an empty list); here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The URLs in the order they are tried.
    pub fn iter(&self) -> impl Iterator<Item = &AmqpUrl> {
        self.urls.iter()
    }

    /// The same URLs in a random order, this replica's.
    pub fn shuffled(&self) -> Self {
        Self {
            urls: shuffled(&self.urls),
            parts: self.parts.clone(),
        }
    }
}

/// `addresses` in a random order: a replica's own order of a cluster's
/// nodes (the management API's base URLs take it too).
pub fn shuffled<T: Clone>(addresses: &[T]) -> Vec<T> {
    let mut addresses = addresses.to_vec();
    addresses.shuffle(&mut rand::rng());
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_gives_credentials_vhost_and_node() {
        let urls = AmqpUrls::parse("amqp://guest:secret@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(urls.len(), 1);
        assert_eq!(urls.parts().user, "guest");
        assert_eq!(urls.parts().password.expose_secret(), "secret");
        assert_eq!(urls.parts().vhost, "/");
        assert_eq!(urls.first().node(), "127.0.0.1:5672");
        assert_eq!(urls.get(1).node(), "127.0.0.1:5672", "wraps");
    }

    #[test]
    fn a_list_keeps_every_node() {
        let urls = AmqpUrls::parse(
            "amqp://u:p@127.0.0.1:5691/%2f, amqp://u:p@127.0.0.1:5692/%2f,amqp://u:p@h3/%2f",
        )
        .unwrap();
        let nodes: Vec<&str> = urls.iter().map(AmqpUrl::node).collect();
        assert_eq!(nodes, ["127.0.0.1:5691", "127.0.0.1:5692", "h3:5672"]);
        assert_eq!(urls.get(3).node(), "127.0.0.1:5691");
        let mut shuffled: Vec<String> = urls
            .shuffled()
            .iter()
            .map(|u| u.node().to_owned())
            .collect();
        shuffled.sort();
        assert_eq!(shuffled, ["127.0.0.1:5691", "127.0.0.1:5692", "h3:5672"]);
    }

    #[test]
    fn bad_lists_are_refused_without_showing_the_password() {
        assert_eq!(AmqpUrls::parse(" "), Err(AmqpUrlsError::Empty));
        assert_eq!(
            AmqpUrls::parse("amqp://u:p@a/%2f,,amqp://u:p@b/%2f"),
            Err(AmqpUrlsError::EmptyEntry {
                position: 2,
                count: 3
            })
        );
        let err = AmqpUrls::parse("amqp://u:hunter2@a/%2f,http://u:hunter2@b").unwrap_err();
        assert!(matches!(
            err,
            AmqpUrlsError::Invalid {
                position: 2,
                count: 2,
                ..
            }
        ));
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert_eq!(
            AmqpUrls::parse("amqp://u:p@a/%2f,amqp://u:p@b/other"),
            Err(AmqpUrlsError::Mixed {
                position: 2,
                count: 2
            })
        );
    }

    #[test]
    fn debug_shows_nodes_only() {
        let urls = AmqpUrls::parse("amqp://u:hunter2@a:1/%2f,amqp://u:hunter2@b:2/%2f").unwrap();
        let shown = format!("{urls:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("a:1") && shown.contains("b:2"), "{shown}");
        for shown in [format!("{:?}", urls.parts()), format!("{:?}", urls.first())] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        assert!(format!("{:?}", urls.parts()).contains('u'));
    }
}

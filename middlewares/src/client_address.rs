//! Which address a request comes from, for the failure throttle and the
//! logs.
//!
//! The peer address, unless the peer is one of the `TRUSTED_PROXIES`: then
//! the one header those proxies write (`TRUSTED_PROXY_HEADER`:
//! `X-Forwarded-For` by default, or RFC 7239's `Forwarded`) is read from
//! the right, each proxy having appended the address it got the
//! request from, and the client is the right-most address not itself a
//! trusted proxy. Anything left of that could have been written by the
//! client, so it is never believed; from a peer that is not a trusted proxy
//! the headers are ignored altogether, or any client could pick the address
//! it is throttled under. Only the configured header is read: a proxy
//! passes the other one through as the client wrote it.

use std::net::{IpAddr, SocketAddr};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use ipnet::IpNet;

const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The proxies whose forwarding header is believed (`TRUSTED_PROXIES`):
/// address blocks, none by default, and the header they write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    blocks: Vec<IpNet>,
    header: ForwardingHeader,
}

/// The header the trusted proxies append the client's address to
/// (`TRUSTED_PROXY_HEADER`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardingHeader {
    /// `X-Forwarded-For: client, proxy1` (nginx, HAProxy, most load
    /// balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

impl ForwardingHeader {
    /// `x-forwarded-for` or `forwarded`, in any case.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Some(Self::XForwardedFor),
            "forwarded" => Some(Self::Forwarded),
            _ => None,
        }
    }
}

/// An entry of `TRUSTED_PROXIES` that is neither an address nor a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entry {position} of {count}, `{entry}`, is neither an IP address nor a CIDR block (10.0.0.0/8, fd00::/8)")]
pub struct TrustedProxiesError {
    /// Which entry, from 1.
    pub position: usize,
    /// How many entries there were.
    pub count: usize,
    /// The entry as written.
    pub entry: String,
}

impl TrustedProxies {
    /// No proxy is trusted: the client is always the peer.
    pub fn none() -> Self {
        Self::default()
    }

    /// A comma-separated list of CIDR blocks; a bare address is a block of
    /// one.
    pub fn parse(raw: &str) -> Result<Self, TrustedProxiesError> {
        let entries: Vec<&str> = raw.split(',').map(str::trim).collect();
        let count = entries.len();
        entries
            .into_iter()
            .enumerate()
            .map(|(index, entry)| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| TrustedProxiesError {
                        position: index + 1,
                        count,
                        entry: entry.to_owned(),
                    })
            })
            .collect::<Result<_, _>>()
            .map(|blocks| Self {
                blocks,
                header: ForwardingHeader::default(),
            })
    }

    /// The same proxies, writing the client's address into `header`.
    pub fn reading(self, header: ForwardingHeader) -> Self {
        Self { header, ..self }
    }

    /// Whether `addr` is one of the trusted proxies.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.blocks.iter().any(|net| net.contains(&addr))
    }

    /// The client behind a request from `peer` carrying `headers`; see the
    /// module comment for the rule.
    pub fn client_of(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let hops = forwarded_hops(headers, self.header);
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop {
                Some(addr) => {
                    client = addr.to_canonical();
                    if !self.contains(client) {
                        return client;
                    }
                }
                // `unknown`, an obfuscated name or garbage: what lies
                // beyond cannot be told, so the last proxy that could be
                // read stands for the client.
                None => return client,
            }
        }
        client
    }
}

/// The addresses a request passed through, first (the original client, as
/// claimed) to last, from every `header` of the request. `None` for an
/// entry that names no address.
pub fn forwarded_hops(headers: &HeaderMap, header: ForwardingHeader) -> Vec<Option<IpAddr>> {
    if header == ForwardingHeader::Forwarded {
        return headers
            .get_all(FORWARDED)
            .flat_map(|value| match value.to_str() {
                Ok(text) => text.split(',').map(forwarded_for).collect(),
                Err(_) => vec![None],
            })
            .collect();
    }
    headers
        .get_all(X_FORWARDED_FOR)
        .flat_map(|value| match value.to_str() {
            Ok(text) => text.split(',').map(node).collect(),
            Err(_) => vec![None],
        })
        .collect()
}

/// The `for=` of one `Forwarded` element (`for=192.0.2.60;proto=http`,
/// `for="[2001:db8::17]:4711"`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| node(value.trim().trim_matches('"')))
            .flatten()
    })
}

/// An address as proxies write it: bare, with a port, or in brackets.
fn node(raw: &str) -> Option<IpAddr> {
    let raw = raw.trim();
    raw.parse::<IpAddr>()
        .ok()
        .or_else(|| raw.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            raw.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|inner| inner.parse().ok())
        })
}

/// The client address of a request, as `resolve` found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

impl ClientAddress {
    /// The address `resolve` left on `req`, else the peer's.
    pub fn of(req: &ServiceRequest) -> Option<IpAddr> {
        req.extensions()
            .get::<ClientAddress>()
            .map(|c| c.0)
            .or_else(|| req.peer_addr().map(|a| a.ip()))
    }
}

/// Middleware: finds the client address once, with the app's
/// `TrustedProxies` (none when the app has none), and leaves it on the
/// request for the log span and the authenticator. Wrap the app with it
/// outside everything that reads it.
pub async fn resolve(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(peer) = req.peer_addr() {
        let client = match req.app_data::<web::Data<TrustedProxies>>() {
            Some(trusted) => trusted.client_of(peer.ip(), req.headers()),
            None => peer.ip().to_canonical(),
        };
        req.extensions_mut().insert(ClientAddress(client));
    }
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn ip(raw: &str) -> IpAddr {
        raw.parse().expect("an address")
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        map
    }

    fn trusted(raw: &str) -> TrustedProxies {
        TrustedProxies::parse(raw).expect("a valid list")
    }

    #[test]
    fn the_list_takes_blocks_and_bare_addresses_and_names_a_bad_entry() {
        let list = trusted("10.0.0.0/8, 192.0.2.7 ,fd00::/8");
        assert!(list.contains(ip("10.1.2.3")));
        assert!(list.contains(ip("192.0.2.7")));
        assert!(!list.contains(ip("192.0.2.8")));
        assert!(list.contains(ip("fd00::1")));
        assert!(
            list.contains(ip("::ffff:10.0.0.1")),
            "a mapped IPv4 address"
        );
        let err = TrustedProxies::parse("10.0.0.0/8,proxy.local").unwrap_err();
        assert_eq!((err.position, err.count), (2, 2));
        assert_eq!(err.entry, "proxy.local");
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("10.0.0.0/8,").is_err());
    }

    #[test]
    fn x_forwarded_for_lists_every_hop_in_order() {
        let hops = forwarded_hops(
            &headers(&[
                ("x-forwarded-for", "203.0.113.9, 198.51.100.2:4711"),
                ("x-forwarded-for", "[2001:db8::5]:80, 2001:db8::6, nonsense"),
                ("forwarded", "for=192.0.2.1"),
            ]),
            ForwardingHeader::XForwardedFor,
        );
        assert_eq!(
            hops,
            vec![
                Some(ip("203.0.113.9")),
                Some(ip("198.51.100.2")),
                Some(ip("2001:db8::5")),
                Some(ip("2001:db8::6")),
                None,
            ]
        );
    }

    #[test]
    fn forwarded_reads_the_for_of_each_element_and_only_that_header() {
        let hops = forwarded_hops(
            &headers(&[
                (
                    "forwarded",
                    "for=192.0.2.60;proto=http;by=203.0.113.43, For=\"[2001:db8:cafe::17]:4711\"",
                ),
                ("forwarded", "proto=https;for=unknown, by=10.0.0.1"),
                ("x-forwarded-for", "198.51.100.1"),
            ]),
            ForwardingHeader::Forwarded,
        );
        assert_eq!(
            hops,
            vec![
                Some(ip("192.0.2.60")),
                Some(ip("2001:db8:cafe::17")),
                None,
                None,
            ]
        );
    }

    #[test]
    fn the_client_is_the_right_most_address_that_is_not_a_trusted_proxy() {
        let proxies = trusted("10.0.0.0/8");
        let forwarded = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.2")]);
        assert_eq!(
            proxies.client_of(ip("10.0.0.1"), &forwarded),
            ip("203.0.113.9"),
            "the client's own claim (1.1.1.1) is not believed"
        );
        let only_proxies = headers(&[("x-forwarded-for", "10.0.0.3")]);
        assert_eq!(
            proxies.client_of(ip("10.0.0.1"), &only_proxies),
            ip("10.0.0.3")
        );
        let unreadable = headers(&[("x-forwarded-for", "203.0.113.9, garbage, 10.0.0.2")]);
        assert_eq!(
            proxies.client_of(ip("10.0.0.1"), &unreadable),
            ip("10.0.0.2"),
            "nothing beyond an unreadable hop is believed"
        );
        assert_eq!(
            proxies.client_of(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn a_client_cannot_pick_its_address_with_the_header_the_proxies_do_not_write() {
        // The proxy appends X-Forwarded-For and passes the client's own
        // `Forwarded` through untouched.
        let request = headers(&[
            ("forwarded", "for=198.51.100.99"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(
            trusted("10.0.0.0/8").client_of(ip("10.0.0.1"), &request),
            ip("203.0.113.9")
        );
        let forwarded_only = trusted("10.0.0.0/8").reading(ForwardingHeader::Forwarded);
        let request = headers(&[
            ("forwarded", "for=203.0.113.9"),
            ("x-forwarded-for", "198.51.100.99"),
        ]);
        assert_eq!(
            forwarded_only.client_of(ip("10.0.0.1"), &request),
            ip("203.0.113.9")
        );
        assert_eq!(
            ForwardingHeader::parse("Forwarded"),
            Some(ForwardingHeader::Forwarded)
        );
        assert_eq!(ForwardingHeader::parse("x-real-ip"), None);
    }

    #[test]
    fn the_headers_of_a_peer_that_is_not_trusted_are_ignored() {
        let forwarded = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=203.0.113.9"),
        ]);
        assert_eq!(
            trusted("10.0.0.0/8").client_of(ip("192.0.2.1"), &forwarded),
            ip("192.0.2.1")
        );
        assert_eq!(
            TrustedProxies::none().client_of(ip("127.0.0.1"), &forwarded),
            ip("127.0.0.1")
        );
    }
}

//! `AddressGuard`: refuses connections to inside addresses (see
//! `address`), judged on the addresses actually connected to. It is the
//! reqwest DNS resolver, so a public-looking name that resolves inside is
//! refused too and a second, different lookup cannot sneak past (DNS
//! rebinding); IP-literal URLs never reach a resolver, so callers check
//! those with `check_url` before sending, and on every redirect hop.
//!
//! Hosts on the operator's allow-list are trusted whatever they resolve to.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

use super::address::is_internal;
use super::errors::find_cause;
use super::hosts::host_listed;

/// The refusal, found again in a reqwest error's source chain by its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("address not allowed")]
pub struct AddressNotAllowed;

impl AddressNotAllowed {
    /// Whether `err`, or anything it was caused by, is this refusal.
    pub fn caused(err: &(dyn std::error::Error + 'static)) -> bool {
        find_cause::<AddressNotAllowed>(err).is_some()
    }
}

/// The DNS resolver of outbound clients, refusing inside addresses except for trusted hosts; see
/// the module comment.
#[derive(Debug, Clone, Default)]
pub struct AddressGuard {
    /// Trusted hosts; an inside address is fine for them.
    trusted: Arc<[String]>,
}

impl AddressGuard {
    /// A guard that trusts the hosts in `trusted` (an allow-list's entries) whatever they resolve
    /// to.
    pub fn new(trusted: &[String]) -> Self {
        Self {
            trusted: trusted.into(),
        }
    }

    /// For an IP-literal URL, whether its address may be connected to;
    /// host names are judged by the resolver when they are looked up.
    pub fn check_url(&self, url: &Url) -> Result<(), AddressNotAllowed> {
        let ip = match url.host() {
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Ok(()),
        };
        if is_internal(ip) && !host_listed(&self.trusted, &ip.to_string()) {
            return Err(AddressNotAllowed);
        }
        Ok(())
    }

    /// A reqwest resolver that applies this guard.
    pub fn resolver(&self) -> Arc<Self> {
        Arc::new(self.clone())
    }
}

impl Resolve for AddressGuard {
    fn resolve(&self, name: Name) -> Resolving {
        let trusted = host_listed(&self.trusted, name.as_str());
        Box::pin(lookup(name, trusted))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The system resolver's answer, without inside addresses unless trusted.
async fn lookup(name: Name, trusted: bool) -> Result<Addrs, BoxError> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
        .await?
        .filter(|addr| trusted || !is_internal(addr.ip()))
        .collect();
    if found.is_empty() {
        // lookup_host errs when nothing resolves, so everything was inside.
        tracing::debug!(
            host = name.as_str(),
            "refused: resolves only to inside addresses"
        );
        return Err(Box::new(AddressNotAllowed));
    }
    Ok(Box::new(found.into_iter()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_are_checked_unless_trusted() {
        let url = |raw: &str| Url::parse(raw).unwrap();
        let guard = AddressGuard::default();
        assert!(guard.check_url(&url("http://127.0.0.1:9/")).is_err());
        assert!(guard.check_url(&url("http://[::ffff:a9fe:a9fe]/")).is_err());
        // Other spellings of 127.0.0.1 are parsed to it before the check.
        assert!(guard.check_url(&url("http://2130706433/")).is_err());
        assert!(guard.check_url(&url("http://0x7f.1/")).is_err());
        assert!(guard.check_url(&url("http://8.8.8.8/")).is_ok());
        // Names are the resolver's business.
        assert!(guard.check_url(&url("http://localhost/")).is_ok());
        let trusting = AddressGuard::new(&["127.0.0.1".to_string()]);
        assert!(trusting.check_url(&url("http://127.0.0.1:9/")).is_ok());
        assert!(trusting.check_url(&url("http://127.0.0.2:9/")).is_err());
    }

    #[test]
    fn the_refusal_is_found_through_its_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] AddressNotAllowed);
        assert!(AddressNotAllowed::caused(&Outer(AddressNotAllowed)));
        assert!(!AddressNotAllowed::caused(&std::io::Error::other("x")));
    }

    #[tokio::test]
    async fn names_resolving_inside_are_refused() {
        let guard = AddressGuard::default();
        let name: Name = "localhost".parse().unwrap();
        let err = match guard.resolve(name).await {
            Ok(_) => panic!("localhost resolved through the guard"),
            Err(err) => err,
        };
        assert!(AddressNotAllowed::caused(err.as_ref()));
        let trusting = AddressGuard::new(&["localhost".to_string()]);
        let name: Name = "localhost".parse().unwrap();
        assert!(trusting.resolve(name).await.is_ok());
    }
}

//! Clients for targets with `target.tls`: a client certificate or a
//! private CA is part of a reqwest client, not of a request, so such a
//! target needs a client of its own. Consumers with the same TLS settings
//! and HTTP version share one (and its pooled connections): 1,000
//! consumers with one identity make one client, not 1,000. A client lives
//! while some forwarder holds it; the map keeps only a weak handle, keyed
//! by a SHA-256 of the settings (never the key itself).

use std::sync::{Arc, Weak};

use dashmap::DashMap;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use crate::targets::{Http2Mode, TargetTls};
use crate::FieldError;

/// A client with a target's TLS settings, shared while in use.
#[derive(Debug)]
pub struct TlsClient(pub reqwest::Client);

/// The shared TLS clients, made on first use.
#[derive(Debug, Default)]
pub struct TlsClients {
    clients: DashMap<[u8; 32], Weak<TlsClient>>,
}

impl TlsClients {
    /// The client for `tls` over `http2`, built with `builder` (the
    /// forwarder's common settings and guard) when none is in use yet.
    pub fn client(
        &self,
        tls: &TargetTls,
        http2: Http2Mode,
        builder: impl FnOnce() -> reqwest::ClientBuilder,
    ) -> Result<Arc<TlsClient>, FieldError> {
        let key = fingerprint(tls, http2);
        if let Some(client) = self.clients.get(&key).and_then(|c| c.upgrade()) {
            return Ok(client);
        }
        let client = Arc::new(TlsClient(build(tls, builder())?));
        // Two forwarders building the same client at once: the later one
        // wins the slot, the earlier one keeps its own until it stops.
        self.clients.insert(key, Arc::downgrade(&client));
        self.clients.retain(|_, client| client.strong_count() > 0);
        Ok(client)
    }

    /// Clients in use (for tests).
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether none is in use.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

fn fingerprint(tls: &TargetTls, http2: Http2Mode) -> [u8; 32] {
    let mut hash = Sha256::new();
    // Each part with its length, so parts cannot run into each other.
    for part in [
        tls.client_cert_pem.as_deref(),
        tls.client_key_pem.as_ref().map(|k| k.expose_secret()),
        tls.ca_pem.as_deref(),
    ] {
        let bytes = part.unwrap_or_default().as_bytes();
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    }
    hash.update([http2 as u8]);
    hash.finalize().into()
}

fn build(
    tls: &TargetTls,
    mut builder: reqwest::ClientBuilder,
) -> Result<reqwest::Client, FieldError> {
    if let Some(identity) = tls.identity()? {
        let identity = reqwest::Identity::from_pem(identity.to_pem().expose_secret().as_bytes())
            .map_err(|e| FieldError::new("target.tls.clientKeyPem", format!("not usable: {e}")))?;
        builder = builder.identity(identity);
    }
    if let Some(roots) = tls.roots()? {
        let certificates = roots
            .certificates()
            .map(reqwest::Certificate::from_der)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| FieldError::new("target.tls.caPem", format!("not usable: {e}")))?;
        builder = builder.tls_certs_merge(certificates);
    }
    builder.build().map_err(|e| {
        FieldError::new(
            "target.tls",
            format!("no client could be built with it: {e}"),
        )
    })
}

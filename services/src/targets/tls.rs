//! `target.tls`: a client certificate for mutual TLS and a private CA to
//! trust, as checked on create and as stored.
//!
//! `ClientIdentity` and `CaRoots` can only be made from PEM that parses,
//! with a private key that matches the certificate (rustls compares the
//! key's public half with the certificate's), so a consumer whose identity
//! could never complete a handshake is refused with a 400 naming the field.
//! The private key is a `SecretString` in the stored form and zeroed DER
//! in the parsed one.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::FieldError;

/// The longest PEM text a field takes: a chain of a few certificates.
const MAX_PEM_BYTES: usize = 64 * 1024;

/// A target's TLS settings as stored: a client certificate and its key
/// (both or neither), and CA certificates trusted besides the platform's.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetTls {
    /// PEM: the client certificate, then any intermediates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_pem: Option<String>,
    /// PEM: the certificate's private key (PKCS#8, PKCS#1 or SEC1). Secret.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "credentials::secret_serde::expose_option"
    )]
    pub client_key_pem: Option<SecretString>,
    /// PEM: CA certificates the target's certificate may chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

impl PartialEq for TargetTls {
    fn eq(&self, other: &Self) -> bool {
        self.client_cert_pem == other.client_cert_pem
            && self.ca_pem == other.ca_pem
            && self
                .client_key_pem
                .as_ref()
                .map(ExposeSecret::expose_secret)
                == other
                    .client_key_pem
                    .as_ref()
                    .map(ExposeSecret::expose_secret)
    }
}

impl std::fmt::Debug for TargetTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetTls")
            .field("client_cert", &self.client_cert_pem.is_some())
            .field("ca", &self.ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl TargetTls {
    /// Checks every part (`ClientIdentity::parse`, `CaRoots::parse`); the
    /// certificate and key come together, and at least one part is given.
    pub fn parse(
        client_cert_pem: Option<String>,
        client_key_pem: Option<SecretString>,
        ca_pem: Option<String>,
    ) -> Result<Self, FieldError> {
        match (&client_cert_pem, &client_key_pem) {
            (Some(cert), Some(key)) => {
                ClientIdentity::parse(cert, key.expose_secret())?;
            }
            (Some(_), None) => {
                return Err(FieldError::new(
                    "target.tls.clientKeyPem",
                    "required with clientCertPem",
                ))
            }
            (None, Some(_)) => {
                return Err(FieldError::new(
                    "target.tls.clientCertPem",
                    "required with clientKeyPem",
                ))
            }
            (None, None) if ca_pem.is_none() => {
                return Err(FieldError::new(
                    "target.tls",
                    "give clientCertPem and clientKeyPem, caPem, or both",
                ))
            }
            (None, None) => {}
        }
        if let Some(ca) = &ca_pem {
            CaRoots::parse(ca)?;
        }
        Ok(Self {
            client_cert_pem,
            client_key_pem,
            ca_pem,
        })
    }

    /// The client identity, when one is set.
    pub fn identity(&self) -> Result<Option<ClientIdentity>, FieldError> {
        match (&self.client_cert_pem, &self.client_key_pem) {
            (Some(cert), Some(key)) => ClientIdentity::parse(cert, key.expose_secret()).map(Some),
            _ => Ok(None),
        }
    }

    /// The extra CA roots, when some are set.
    pub fn roots(&self) -> Result<Option<CaRoots>, FieldError> {
        self.ca_pem.as_deref().map(CaRoots::parse).transpose()
    }

    /// As the API shows it to admins: the key `***`.
    pub fn masked(&self) -> Self {
        Self {
            client_key_pem: self
                .client_key_pem
                .as_ref()
                .map(|_| SecretString::from("***")),
            ..self.clone()
        }
    }

    /// As the API shows it to viewers: that there is one, nothing of it.
    pub fn hidden(&self) -> Self {
        Self::default()
    }
}

/// A client certificate chain and the private key that matches it.
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ClientIdentity {
    /// Refuses PEM that holds no certificate or no private key, and a key
    /// that is not the certificate's.
    pub fn parse(cert_pem: &str, key_pem: &str) -> Result<Self, FieldError> {
        let chain = certificates("target.tls.clientCertPem", cert_pem)?;
        let key_field = "target.tls.clientKeyPem";
        if key_pem.len() > MAX_PEM_BYTES {
            return Err(FieldError::new(
                key_field,
                format!("at most {MAX_PEM_BYTES} bytes"),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| {
            FieldError::new(
                key_field,
                "holds no PEM private key (PKCS#8 `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`)",
            )
        })?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
            |err| match err {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    FieldError::new(
                        key_field,
                        "is not the key of the certificate in clientCertPem",
                    )
                }
                rustls::Error::InvalidCertificate(_) => FieldError::new(
                    "target.tls.clientCertPem",
                    "the first certificate does not parse as X.509",
                ),
                other => FieldError::new(key_field, format!("not a usable private key: {other}")),
            },
        )?;
        Ok(Self { chain, key })
    }

    /// The chain and key as one clean PEM text (certificates, then the
    /// key): what `reqwest::Identity::from_pem` reads. Other sections the
    /// operator's files had (`EC PARAMETERS`) are gone.
    pub fn to_pem(&self) -> SecretString {
        let mut pem = String::new();
        for cert in &self.chain {
            pem.push_str(&encode_pem("CERTIFICATE", cert.as_ref()));
        }
        let label = match &self.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        pem.push_str(&encode_pem(label, self.key.secret_der()));
        SecretString::from(pem)
    }
}

/// CA certificates to trust besides the platform's.
pub struct CaRoots(Vec<CertificateDer<'static>>);

impl CaRoots {
    /// Refuses PEM that holds no certificate, or one that is no X.509
    /// trust anchor.
    pub fn parse(ca_pem: &str) -> Result<Self, FieldError> {
        let field = "target.tls.caPem";
        let certificates = certificates(field, ca_pem)?;
        let mut store = rustls::RootCertStore::empty();
        for (n, certificate) in certificates.iter().enumerate() {
            store.add(certificate.clone()).map_err(|_| {
                FieldError::new(
                    field,
                    format!("certificate {} does not parse as X.509", n + 1),
                )
            })?;
        }
        Ok(Self(certificates))
    }

    /// Each certificate, DER-encoded.
    pub fn certificates(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().map(|cert| cert.as_ref())
    }
}

/// Every `CERTIFICATE` section of `pem`, at least one.
fn certificates(field: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, FieldError> {
    if pem.len() > MAX_PEM_BYTES {
        return Err(FieldError::new(
            field,
            format!("at most {MAX_PEM_BYTES} bytes"),
        ));
    }
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| FieldError::new(field, "is not valid PEM"))?;
    if chain.is_empty() {
        return Err(FieldError::new(field, "holds no PEM `CERTIFICATE`"));
    }
    Ok(chain)
}

fn encode_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

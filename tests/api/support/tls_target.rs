//! A TLS target for the `target.tls` tests: a test CA (rcgen) that signs
//! the target's certificate (for 127.0.0.1) and a client certificate, and
//! an HTTPS server on `127.0.0.1:<random port>` that requires a client
//! certificate from that CA, answers 200 and records each request's
//! headers.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A test CA with a server certificate for 127.0.0.1, a client certificate,
/// and a key that belongs to neither.
pub struct TestPki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    pub other_key_pem: String,
}

impl TestPki {
    pub fn new() -> TestPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "workerrmq test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("a CA key"))
            .expect("a CA certificate");
        let server_key = KeyPair::generate().expect("a server key");
        let server_cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("server params")
            .signed_by(&server_key, &ca)
            .expect("a server certificate");
        let client_key = KeyPair::generate().expect("a client key");
        let mut client_params =
            CertificateParams::new(Vec::<String>::new()).expect("client params");
        client_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "workerrmq test client");
        let client_cert = client_params
            .signed_by(&client_key, &ca)
            .expect("a client certificate");
        TestPki {
            ca_pem: ca.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
            other_key_pem: KeyPair::generate().expect("a key").serialize_pem(),
        }
    }
}

/// The HTTPS target; stops when dropped.
pub struct TlsTarget {
    port: u16,
    requests: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsTarget {
    /// Serves with `pki`'s server certificate, requiring a client
    /// certificate its CA signed.
    pub async fn start(pki: &TestPki) -> TlsTarget {
        let ca = CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).expect("the CA PEM");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).expect("the CA as a root");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("a client verifier");
        let chain = vec![
            CertificateDer::from_pem_slice(pki.server_cert_pem.as_bytes())
                .expect("the server certificate"),
        ];
        let key =
            PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes()).expect("the server key");
        // TLS 1.2: the refusal of a missing client certificate is part of
        // the handshake. A TLS 1.3 server refuses it after the client has
        // finished its side, so the client learns it either from the alert
        // (`tls`) or, when the connection closes before the request is
        // written, as a closed connection (`request`): a race the test of
        // the refusal would inherit.
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("a server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = listener.local_addr().expect("an address").port();
        let requests: Arc<Mutex<Vec<BTreeMap<String, String>>>> = Arc::default();
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    // A client without a certificate fails here: nothing to serve.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let recorded = recorded.clone();
                            async move {
                                let headers = request
                                    .headers()
                                    .iter()
                                    .map(|(name, value)| {
                                        (
                                            name.as_str().to_owned(),
                                            String::from_utf8_lossy(value.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect();
                                let _ = request.into_body().collect().await;
                                recorded.lock().expect("the request log").push(headers);
                                Ok::<_, Infallible>(hyper::Response::new(String::new()))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsTarget {
            port,
            requests,
            task,
        }
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// The headers of every request served, in arrival order.
    pub fn requests(&self) -> Vec<BTreeMap<String, String>> {
        self.requests.lock().expect("the request log").clone()
    }
}

impl Drop for TlsTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

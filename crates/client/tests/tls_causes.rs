//! A TLS handshake that fails names its cause, against a real rustls server: a certificate
//! from a CA the client does not trust, a certificate for another host name, a server that
//! wants a client certificate. (Connection refused and the rest: `diagnose`'s unit tests and
//! the CLI's first-hour tests.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use rampart_client::{FetchConfig, HttpFetcher, TlsConfig};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;

/// A CA: its certificate (PEM) and what signs with it.
fn ca() -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// A TLS server on 127.0.0.1 with a certificate for `names` from `issuer`, answering one
/// request with 200; with `client_ca`, it demands a client certificate from that CA.
async fn server(
    issuer: &Issuer<'static, KeyPair>,
    names: &[&str],
    client_ca: Option<&str>,
) -> String {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let certs = vec![CertificateDer::from(cert.der().to_vec())];
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let config = match client_ca {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
                .unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    }
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}/file",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            }
        }
    });
    url
}

async fn failure(url: &str, trusted_ca: &str) -> String {
    let tls = TlsConfig {
        ca_pem: Some(trusted_ca.as_bytes().to_vec()),
        identity_pem: None,
    };
    let fetcher = HttpFetcher::new(FetchConfig::default(), &tls).unwrap();
    let err = fetcher.fetch_bytes(url, 100).await.unwrap_err();
    assert_eq!(err.rule(), "transport", "{err}");
    err.to_string()
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_named_as_such() {
    let (_, fleet) = ca();
    let (other_ca_pem, _) = ca();
    let url = server(&fleet, &["127.0.0.1"], None).await;
    let line = failure(&url, &other_ca_pem).await;
    assert!(
        line.contains("not signed by a CA this client trusts"),
        "{line}"
    );
    assert!(line.contains("check `ca`"), "{line}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_named_as_such() {
    let (ca_pem, fleet) = ca();
    let url = server(&fleet, &["ota.example"], None).await;
    let line = failure(&url, &ca_pem).await;
    assert!(line.contains("not valid for this host name"), "{line}");
}

#[tokio::test]
async fn a_server_that_wants_a_client_certificate_says_so() {
    let (ca_pem, fleet) = ca();
    let url = server(&fleet, &["127.0.0.1"], Some(&ca_pem)).await;
    let line = failure(&url, &ca_pem).await;
    assert!(line.contains("client certificate"), "{line}");
    assert!(line.contains("client_cert"), "{line}");
}

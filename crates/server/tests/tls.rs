//! End-to-end tests of the fleet PKI and the HTTPS layer: real servers on 127.0.0.1
//! ephemeral ports, real TLS clients (reqwest, tokio-rustls) with and without vehicle
//! certificates.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::routing::get;
use axum::{Extension, Json, Router};
use rampart_server::pki::{self, IssuedCert, PkiFiles};
use rampart_server::tls::{self, ClientIdentity, RequireVehicle};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

const VIN: &str = "WVWZZZ1JZXW000001";

fn server_names() -> Vec<String> {
    vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
}

fn new_pki(tmp: &tempfile::TempDir) -> PathBuf {
    let dir = tmp.path().join("pki");
    pki::init(&dir, &server_names(), 30).unwrap();
    dir
}

fn app() -> Router {
    Router::new()
        .route(
            "/whoami",
            get(|Extension(id): Extension<ClientIdentity>| async move {
                Json(json!({ "vin": id.vin, "peer": id.peer.to_string() }))
            }),
        )
        .route(
            "/vehicle",
            get(|RequireVehicle(vin): RequireVehicle| async move { vin }),
        )
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn shut_down(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server did not stop")
            .unwrap()
            .unwrap();
    }
}

async fn start_tls(pki_dir: &Path) -> Server {
    let config = tls::server_config(pki_dir).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(tls::serve_tls(listener, config, app(), async move {
        let _ = stopped.await;
    }));
    Server {
        addr,
        stop: Some(stop),
        task,
    }
}

fn client(pki_dir: &Path, identity: Option<&IssuedCert>) -> reqwest::Client {
    let ca = std::fs::read(PkiFiles::in_dir(pki_dir).ca_cert).unwrap();
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .timeout(Duration::from_secs(10));
    if let Some(issued) = identity {
        let pem = format!("{}{}", issued.cert_pem, issued.key_pem);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

async fn whoami(client: &reqwest::Client, addr: SocketAddr) -> reqwest::Result<Value> {
    client
        .get(format!("https://{addr}/whoami"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

/// Asserts that a request failed because the server refused the TLS handshake (a fatal
/// alert), not for an HTTP reason, and that the alert names `alert` if given.
fn assert_tls_refused(result: reqwest::Result<Value>, alert: Option<&str>) {
    let err = match result {
        Ok(body) => panic!("request succeeded: {body}"),
        Err(err) => err,
    };
    let mut chain = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(&err);
    while let Some(e) = source {
        chain.push(e.to_string());
        source = e.source();
    }
    let chain = chain.join(" / ");
    assert!(chain.contains("fatal alert"), "{chain}");
    if let Some(alert) = alert {
        assert!(chain.contains(alert), "{chain}");
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn parse_pem_cert(pem: &[u8]) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem).unwrap().to_vec()
}

#[test]
fn pki_init_writes_all_files_with_private_keys_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let files = pki::init(&dir, &server_names(), 30).unwrap();
    assert_eq!(files, PkiFiles::in_dir(&dir));
    for secret in [&files.ca_key, &files.server_key, &files.admin_token] {
        assert_eq!(mode(secret), 0o600, "{}", secret.display());
    }
    for public in [&files.ca_cert, &files.server_cert] {
        assert!(public.is_file(), "{}", public.display());
    }
    assert_eq!(mode(&dir), 0o700);
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 5, "{names:?}");

    // The CA: self-signed, CA:true, pathlen 0, certSign + cRLSign.
    let ca_der = parse_pem_cert(&std::fs::read(&files.ca_cert).unwrap());
    let (_, ca) = x509_parser::certificate::X509Certificate::from_der(&ca_der).unwrap();
    let cn = ca.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), "Rampart Fleet CA");
    let bc = ca.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = ca.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());

    // The server certificate: SANs as given, serverAuth only.
    let server_der = parse_pem_cert(&std::fs::read(&files.server_cert).unwrap());
    let (_, server) = x509_parser::certificate::X509Certificate::from_der(&server_der).unwrap();
    let sans = &server
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert!(sans.contains(&GeneralName::DNSName("localhost")));
    assert!(sans.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
    let eku = server.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);

    let token = pki::load_admin_token(&dir).unwrap();
    assert_eq!(token.len(), 64);
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
}

#[test]
fn pki_init_refuses_to_replace_an_existing_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_pki(&tmp);
    let files = PkiFiles::in_dir(&dir);
    let ca_before = std::fs::read(&files.ca_cert).unwrap();

    let err = pki::init(&dir, &server_names(), 30).unwrap_err();
    assert_eq!(err.rule(), "ca-exists");
    assert!(err.to_string().contains("ca-key.pem"), "{err}");
    assert_eq!(std::fs::read(&files.ca_cert).unwrap(), ca_before);

    // Only the loudly named function replaces it.
    pki::danger_reinit(&dir, &server_names(), 30).unwrap();
    assert_ne!(std::fs::read(&files.ca_cert).unwrap(), ca_before);
    assert_eq!(mode(&files.ca_key), 0o600);
}

#[test]
fn vehicle_cert_names_the_vin_in_cn_and_san_uri_with_client_auth() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_pki(&tmp);
    let issued = pki::issue_vehicle_cert(&dir, VIN, 30).unwrap();
    assert!(issued.key_pem.contains("PRIVATE KEY"));
    assert!(!format!("{issued:?}").contains("PRIVATE KEY"));

    let der = parse_pem_cert(issued.cert_pem.as_bytes());
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
    let cn = cert.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), VIN);
    let cn = cert.issuer().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), "Rampart Fleet CA");
    let sans = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    let uri = format!("urn:rampart:vin:{VIN}");
    assert!(sans.contains(&GeneralName::URI(uri.as_str())), "{sans:?}");
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(!cert.is_ca());
}

#[test]
fn vin_validation_rejects_traversal_empty_and_overlong() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_pki(&tmp);
    for bad in ["../x", "", "a/b", "VIN 1", "vin\0", &"A".repeat(33)] {
        let err = pki::issue_vehicle_cert(&dir, bad, 30).unwrap_err();
        assert_eq!(err.rule(), "invalid-vin", "{bad:?}: {err}");
    }
    assert!(pki::validate_vin("bench-07").is_ok());
    assert!(pki::validate_vin(&"A".repeat(32)).is_ok());
}

#[test]
fn admin_token_check_accepts_the_token_and_rejects_others() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_pki(&tmp);
    let token = pki::load_admin_token(&dir).unwrap();
    assert!(pki::check_admin_token(&token, &token));
    assert!(!pki::check_admin_token(&token, ""));
    assert!(!pki::check_admin_token(&token, &token[..63]));
    assert!(!pki::check_admin_token(&token, &format!("{token}0")));
    let mut flipped = token.clone().into_bytes();
    flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
    assert!(!pki::check_admin_token(
        &token,
        std::str::from_utf8(&flipped).unwrap()
    ));
    assert!(!pki::check_admin_token("", ""));
}

#[tokio::test]
async fn no_client_cert_means_no_vin() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_pki(&tmp);
    let server = start_tls(&dir).await;
    let body = whoami(&client(&dir, None), server.addr).await.unwrap();
    assert_eq!(body["vin"], Value::Null);
    assert!(body["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    server.shut_down().await;
}

#[tokio::test]
async fn vehicle_cert_identifies_its_vin() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_pki(&tmp);
    let issued = pki::issue_vehicle_cert(&dir, VIN, 30).unwrap();
    let server = start_tls(&dir).await;
    let body = whoami(&client(&dir, Some(&issued)), server.addr)
        .await
        .unwrap();
    assert_eq!(body["vin"], VIN);
    server.shut_down().await;
}

#[tokio::test]
async fn cert_from_another_ca_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_pki(&tmp);
    let other_tmp = tempfile::tempdir().unwrap();
    let other_dir = new_pki(&other_tmp);
    let foreign = pki::issue_vehicle_cert(&other_dir, VIN, 30).unwrap();
    let server = start_tls(&dir).await;

    // Same issuer name, different key: the signature check fails.
    let result = whoami(&client(&dir, Some(&foreign)), server.addr).await;
    assert_tls_refused(result, None);
    // The server is still there for honest clients.
    let body = whoami(&client(&dir, None), server.addr).await.unwrap();
    assert_eq!(body["vin"], Value::Null);
    server.shut_down().await;
}

/// A certificate the fleet CA did not sign is reported (for a `client-certificate-refused`
/// security event, which the V-SOC counts per address); an honest client without one is not.
#[tokio::test]
async fn a_refused_client_certificate_is_reported_with_its_address() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_pki(&tmp);
    let other_tmp = tempfile::tempdir().unwrap();
    let foreign = pki::issue_vehicle_cert(&new_pki(&other_tmp), VIN, 30).unwrap();
    let reports: Arc<std::sync::Mutex<Vec<(SocketAddr, String)>>> = Arc::default();
    let mut connections = rampart_server::conn::Connections::default();
    let sink = reports.clone();
    connections.on_certificate_refused = Some(Arc::new(move |peer, why| {
        sink.lock().unwrap().push((peer, why));
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(tls::serve_tls_with(
        listener,
        tls::server_config(&dir).unwrap(),
        app(),
        connections,
        async move {
            let _ = stopped.await;
        },
    ));
    whoami(&client(&dir, None), addr).await.unwrap();
    assert!(
        reports.lock().unwrap().is_empty(),
        "no certificate is not a refusal"
    );
    assert_tls_refused(whoami(&client(&dir, Some(&foreign)), addr).await, None);
    let got = reports.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0.ip(), addr.ip());
    assert!(
        got[0].1.contains("client certificate refused"),
        "{}",
        got[0].1
    );
    Server {
        addr,
        stop: Some(stop),
        task,
    }
    .shut_down()
    .await;
}

#[tokio::test]
async fn server_cert_is_not_accepted_as_a_client_cert() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_pki(&tmp);
    let files = PkiFiles::in_dir(&dir);
    // Signed by the fleet CA, but for serverAuth only.
    let server_identity = IssuedCert {
        cert_pem: std::fs::read_to_string(&files.server_cert).unwrap(),
        key_pem: std::fs::read_to_string(&files.server_key).unwrap(),
    };
    let server = start_tls(&dir).await;
    let result = whoami(&client(&dir, Some(&server_identity)), server.addr).await;
    assert_tls_refused(result, None);
    server.shut_down().await;
}

#[tokio::test]
async fn expired_vehicle_cert_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_pki(&tmp);
    let day = Duration::from_secs(24 * 3600);
    let now = SystemTime::now();
    let expired =
        pki::issue_vehicle_cert_valid_between(&dir, VIN, now - 10 * day, now - day).unwrap();
    let server = start_tls(&dir).await;
    let result = whoami(&client(&dir, Some(&expired)), server.addr).await;
    assert_tls_refused(result, Some("CertificateExpired"));
    server.shut_down().await;
}

#[tokio::test]
async fn require_vehicle_gives_401_without_cert_and_200_with() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_pki(&tmp);
    let issued = pki::issue_vehicle_cert(&dir, VIN, 30).unwrap();
    let server = start_tls(&dir).await;
    let url = format!("https://{}/vehicle", server.addr);

    let response = client(&dir, None).get(&url).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["rule"], "client-certificate-required");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));

    let response = client(&dir, Some(&issued)).get(&url).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), VIN);
    server.shut_down().await;
}

#[tokio::test]
async fn garbage_and_stalled_connections_do_not_block_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_pki(&tmp);
    let server = start_tls(&dir).await;

    // A client that connects and never says anything holds its own task, not the server.
    let _stalled = TcpStream::connect(server.addr).await.unwrap();

    // Plaintext HTTP to the TLS port: refused, connection closed.
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut sink))
        .await
        .expect("server kept a garbage connection open")
        .ok();
    assert!(!String::from_utf8_lossy(&sink).contains("200 OK"));

    // Random bytes.
    let mut garbage = TcpStream::connect(server.addr).await.unwrap();
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 1, 2, 3])
        .await
        .ok();
    garbage.write_all(&[0xAA; 4096]).await.ok();
    drop(garbage);

    // Meanwhile a good client is served promptly.
    let body = tokio::time::timeout(
        Duration::from_secs(5),
        whoami(&client(&dir, None), server.addr),
    )
    .await
    .expect("good client blocked by a stalled handshake")
    .unwrap();
    assert_eq!(body["vin"], Value::Null);
    server.shut_down().await;
}

#[tokio::test]
async fn alpn_offers_h2_and_http11() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_pki(&tmp);
    let server = start_tls(&dir).await;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(PkiFiles::in_dir(&dir).ca_cert).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    for (offered, expected) in [
        (vec![b"h2".to_vec(), b"http/1.1".to_vec()], b"h2".as_slice()),
        (vec![b"http/1.1".to_vec()], b"http/1.1".as_slice()),
    ] {
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = offered;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let stream = connector.connect(name, tcp).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(expected));
    }
    server.shut_down().await;
}

#[tokio::test]
async fn serve_plain_gives_an_identity_without_vin() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(tls::serve_plain(listener, app(), async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let body: Value = client
        .get(format!("http://{addr}/whoami"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["vin"], Value::Null);
    let response = client
        .get(format!("http://{addr}/vehicle"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
    Server {
        addr,
        stop: Some(stop),
        task,
    }
    .shut_down()
    .await;
}

#[tokio::test]
async fn shutdown_stops_accepting_and_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_pki(&tmp);
    let server = start_tls(&dir).await;
    let addr = server.addr;
    // An idle keep-alive connection must not hold the shutdown up.
    let client = client(&dir, None);
    whoami(&client, addr).await.unwrap();
    server.shut_down().await;
    assert!(whoami(&client, addr).await.is_err());
}

#[tokio::test]
async fn stalled_handshake_is_dropped_after_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_pki(&tmp);
    let server = start_tls(&dir).await;
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(
        tls::HANDSHAKE_TIMEOUT + Duration::from_secs(5),
        stalled.read_to_end(&mut sink),
    )
    .await
    .expect("server kept a silent connection open past the handshake timeout");
    // Closed by the server (EOF, or a reset on some platforms), after the timeout.
    assert!(read.map(|n| n == 0).unwrap_or(true));
    assert!(started.elapsed() >= tls::HANDSHAKE_TIMEOUT - Duration::from_millis(100));
    server.shut_down().await;
}

/// A vehicle's TLS client: its certificate, the fleet CA, a session cache of its own (shared
/// by every connection made with the returned config, as a primary keeps one).
fn vehicle_tls(pki_dir: &Path, issued: &IssuedCert) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(PkiFiles::in_dir(pki_dir).ca_cert).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap()];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

/// One request on a new connection: whether the handshake resumed a session, the status
/// line and the body.
async fn get_on_new_connection(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    path: &str,
) -> (bool, String, String) {
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let resumed = stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    // The server closes after the answer; a missing close_notify is not this test's concern.
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    (resumed, status, body.to_owned())
}

#[tokio::test]
async fn a_vehicle_resumes_its_session_and_is_identified_by_its_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_pki(&tmp);
    let server = start_tls(&dir).await;
    let config = vehicle_tls(&dir, &pki::issue_vehicle_cert(&dir, VIN, 30).unwrap());
    let (resumed, status, body) = get_on_new_connection(&config, server.addr, "/vehicle").await;
    assert!(!resumed, "the first connection is a full handshake");
    assert!(status.contains("200"), "{status}");
    assert!(body.contains(VIN), "{body}");
    // More vehicles than rustls's default session cache holds connect in between: tickets
    // do not depend on it.
    for i in 0..300 {
        let vin = format!("WVWZZZ1JZXW{i:06}");
        let other = vehicle_tls(&dir, &pki::issue_vehicle_cert(&dir, &vin, 30).unwrap());
        get_on_new_connection(&other, server.addr, "/vehicle").await;
    }
    let (resumed, status, body) = get_on_new_connection(&config, server.addr, "/vehicle").await;
    assert!(
        resumed,
        "the vehicle's second connection resumes its session"
    );
    assert!(status.contains("200"), "{status}");
    assert!(
        body.contains(VIN),
        "the resumed session names the certificate's VIN: {body}"
    );
    server.shut_down().await;
}

#[tokio::test]
async fn a_session_resumed_after_its_certificate_expired_is_anonymous() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_pki(&tmp);
    let now = SystemTime::now();
    let short = pki::issue_vehicle_cert_valid_between(
        &dir,
        VIN,
        now - Duration::from_secs(3600),
        now + Duration::from_secs(2),
    )
    .unwrap();
    let server = start_tls(&dir).await;
    let config = vehicle_tls(&dir, &short);
    let (_, status, _) = get_on_new_connection(&config, server.addr, "/vehicle").await;
    assert!(status.contains("200"), "{status}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The handshake resumes (no certificate is verified), but the expired certificate it
    // carries identifies no vehicle.
    let (resumed, status, body) = get_on_new_connection(&config, server.addr, "/vehicle").await;
    assert!(resumed);
    assert!(status.contains("401"), "{status} {body}");
    server.shut_down().await;
}

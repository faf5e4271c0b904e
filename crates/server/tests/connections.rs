//! The connection layer of `rampart serve` against hostile clients: connections that complete
//! TLS and say nothing, idle HTTP/1 keep-alive and HTTP/2 connections, and floods of
//! connections from one address or in total. Real servers on 127.0.0.1 with short timeouts
//! and small caps from `[server]` in `rampart.toml`; clients bind other loopback addresses
//! (127.0.0.2, …) to play other hosts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rampart_core::key::KeyScheme;
use rampart_core::signer::{InMemorySigner, Signer};
use rampart_server::ceremony::{self, CeremonyOptions};
use rampart_server::config::{Config, ServerConfig};
use rampart_server::db::{Db, NewEcu, NewVehicle, SecurityEvent};
use rampart_server::layout::Layout;
use rampart_server::pki::{self, PkiFiles};
use rampart_server::serve::{self, Running, ServeOptions};
use reqwest::StatusCode;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

const VIN_B: &str = "WVWZZZ1JZXW000002";

/// Loopback address number `n` (127.0.0.n): another host as far as the server can tell.
fn host(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

struct Server {
    _dir: tempfile::TempDir,
    layout: Layout,
    running: Option<Running>,
    ca_pem: Vec<u8>,
    token: String,
}

impl Server {
    /// Key ceremony, `server` written to `[server]`, server started on 127.0.0.1:0.
    async fn start(server: ServerConfig) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("data"));
        ceremony::init(&layout, &CeremonyOptions::default(), Utc::now()).unwrap();
        let mut config = Config::load(&layout).unwrap();
        config.server = server;
        config.limits.requests_per_second = 1000.0;
        config.limits.burst = 10_000.0;
        config.save(&layout).unwrap();
        let mut opts = ServeOptions::new(layout.clone());
        opts.listen = Some("127.0.0.1:0".into());
        let running = serve::start(opts).await.unwrap();
        Server {
            ca_pem: std::fs::read(PkiFiles::in_dir(&layout.pki()).ca_cert).unwrap(),
            token: pki::load_admin_token(&layout.pki()).unwrap(),
            _dir: dir,
            layout,
            running: Some(running),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.running.as_ref().unwrap().addr
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}/{path}", self.addr().port())
    }

    /// An HTTPS client (HTTP/1.1) from loopback address `from`, with `identity` (PEM).
    fn client(&self, from: IpAddr, identity: Option<&[u8]>) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&self.ca_pem).unwrap()])
            .resolve("localhost", self.addr())
            .local_address(from)
            .http1_only()
            .timeout(Duration::from_secs(10));
        if let Some(pem) = identity {
            builder = builder.identity(reqwest::Identity::from_pem(pem).unwrap());
        }
        builder.build().unwrap()
    }

    /// Security events of `rule`, through the admin API from `from`.
    async fn events(&self, from: IpAddr, rule: &str) -> Vec<SecurityEvent> {
        let response = self
            .client(from, None)
            .get(self.url(&format!("api/v1/events?rule={rule}&limit=1000")))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// `/metrics` as name → value, from `from`.
    async fn metrics(&self, from: IpAddr) -> BTreeMap<String, u64> {
        let text = self
            .client(from, None)
            .get(self.url("metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
            .collect()
    }

    /// Registers vehicle `vin` (one ECU) in the database and issues its certificate; returns
    /// the certificate and key (PEM).
    async fn vehicle(&self, vin: &str) -> Vec<u8> {
        let config = Config::load(&self.layout).unwrap();
        let db = Db::connect(&config.database_url(&self.layout))
            .await
            .unwrap();
        let signer = InMemorySigner::generate(KeyScheme::Ed25519).unwrap();
        db.register_vehicle(&NewVehicle {
            vin: vin.to_owned(),
            primary_ecu: "TBOX-1".into(),
            ecus: vec![NewEcu {
                ecu_id: "TBOX-1".into(),
                hardware_id: "tbox-hw".into(),
                public_key: serde_json::to_value(signer.public_key()).unwrap(),
                encryption_key: None,
                verification: "full".into(),
            }],
            attributes: Default::default(),
            tags: Default::default(),
        })
        .await
        .unwrap();
        let cert = pki::issue_vehicle_cert(&self.layout.pki(), vin, 30).unwrap();
        format!("{}{}", cert.cert_pem, cert.key_pem).into_bytes()
    }
}

/// A TCP connection to `to` from loopback address `from`.
async fn tcp_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// A completed TLS connection from `from`, offering `alpn`.
async fn tls_from(
    server: &Server,
    from: IpAddr,
    alpn: &[&[u8]],
    identity: Option<&[u8]>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let config = common::tls_client_config(&server.ca_pem, identity, alpn);
    let tcp = tcp_from(from, server.addr()).await?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    Ok(stream)
}

/// Waits until the server closes `stream` (EOF or reset), at most `limit`; returns how long
/// that took. Anything the server sends meanwhile is discarded.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept the connection open for more than {limit:?}"
    );
    started.elapsed()
}

/// `GET /PATH` over an HTTP/1.1 TLS connection kept alive; returns the status line.
async fn get_h1(stream: &mut TlsStream<TcpStream>, path: &str) -> String {
    stream
        .write_all(format!("GET /{path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Read the head, then exactly Content-Length bytes of body, so the connection is left
    // between requests.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("an answer")
            .unwrap();
        assert_eq!(n, 1, "connection closed before the answer: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    head.lines().next().unwrap().to_owned()
}

fn quick(first_request_ms: u64, idle_ms: u64) -> ServerConfig {
    ServerConfig {
        handshake_timeout_ms: 2_000,
        first_request_timeout_ms: first_request_ms,
        idle_timeout_ms: idle_ms,
        ..ServerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_connection_after_tls_is_closed_after_the_first_request_timeout() {
    let server = Server::start(quick(600, 30_000)).await;
    for alpn in [&[b"h2".as_slice(), b"http/1.1"][..], &[b"http/1.1"], &[]] {
        let mut silent = tls_from(&server, host(1), alpn, None).await.unwrap();
        let took = closed_within(&mut silent, Duration::from_secs(5)).await;
        assert!(
            took >= Duration::from_millis(450),
            "{alpn:?}: closed after {took:?}"
        );
    }
    // Plain TCP that never starts TLS: the handshake timeout (2 s) closes it.
    let mut tcp = tcp_from(host(1), server.addr()).await.unwrap();
    let took = closed_within(&mut tcp, Duration::from_secs(6)).await;
    assert!(
        took >= Duration::from_millis(1_800),
        "closed after {took:?}"
    );
    let metrics = server.metrics(host(2)).await;
    assert!(
        metrics["rampart_connections_idle_closed_total"] >= 3,
        "{metrics:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_http1_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let server = Server::start(quick(10_000, 700)).await;
    let mut stream = tls_from(&server, host(1), &[b"http/1.1"], None)
        .await
        .unwrap();
    // Requests keep it open: three, each within the idle timeout of the last.
    for _ in 0..3 {
        assert_eq!(get_h1(&mut stream, "health").await, "HTTP/1.1 200 OK");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let took = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(300), "closed after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_http2_connection_is_closed_after_the_idle_timeout() {
    let server = Server::start(quick(10_000, 700)).await;
    let stream = tls_from(&server, host(1), &[b"h2"], None).await.unwrap();
    let (send, connection) = h2::client::handshake(stream).await.unwrap();
    let mut connection = tokio::spawn(connection);
    for _ in 0..3 {
        let request = axum::http::Request::get(server.url("health"))
            .body(())
            .unwrap();
        let (response, _) = send
            .clone()
            .ready()
            .await
            .unwrap()
            .send_request(request, true)
            .unwrap();
        assert_eq!(response.await.unwrap().status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!connection.is_finished(), "closed while in use");
    }
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), &mut connection).await;
    assert!(
        ended.is_ok(),
        "the server kept an idle HTTP/2 connection open for more than 5 s"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// A client that asks for a large file and then stops reading keeps its request "in flight"
/// forever, so the idle timeout never applies: a response that makes no progress for
/// `stall_timeout_ms` is cut instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_reading_a_response_is_cut_after_the_stall_timeout() {
    const SIZE: usize = 64 * 1024 * 1024;
    let server = Server::start(ServerConfig {
        stall_timeout_ms: 800,
        ..quick(10_000, 10_000)
    })
    .await;
    // Far more than the socket buffers hold.
    let targets = server.layout.image_targets();
    std::fs::write(targets.join("big.bin"), vec![0x5a; SIZE]).unwrap();
    let mut stream = tls_from(&server, host(1), &[b"http/1.1"], None)
        .await
        .unwrap();
    stream
        .write_all(b"GET /image/targets/big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 1024];
    let n = stream.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    // Stop reading for longer than the stall timeout; then what is left is what was buffered.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut received = n;
    let mut buf = vec![0u8; 1 << 20];
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(k) => received += k,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the connection was not closed");
    assert!(
        received < SIZE,
        "the whole file arrived ({received} bytes): the stalled response was not cut"
    );
    let metrics = server.metrics(host(2)).await;
    assert!(
        metrics["rampart_connections_stalled_total"] >= 1,
        "{metrics:?}"
    );
}

/// The other way round: a vehicle that announces a manifest body and then sends nothing more
/// keeps the handler waiting for it; the connection is cut after `stall_timeout_ms` without
/// progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_sending_a_request_body_is_cut_after_the_stall_timeout() {
    let server = Server::start(ServerConfig {
        stall_timeout_ms: 800,
        ..quick(10_000, 10_000)
    })
    .await;
    let identity = server.vehicle(VIN_B).await;
    let mut stream = tls_from(&server, host(1), &[b"http/1.1"], Some(&identity))
        .await
        .unwrap();
    stream
        .write_all(
            format!(
                "POST /director/{VIN_B}/manifest HTTP/1.1\r\nHost: localhost\r\n\
                 Content-Type: application/json\r\nContent-Length: 50000\r\n\r\n{{\"signed\""
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let took = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(700), "cut after {took:?}");
    let metrics = server.metrics(host(2)).await;
    assert!(
        metrics["rampart_connections_stalled_total"] >= 1,
        "{metrics:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_over_the_per_address_cap_are_refused_and_reported() {
    let cap = 4;
    let server = Server::start(ServerConfig {
        max_connections_per_ip: cap,
        ..quick(30_000, 30_000)
    })
    .await;
    let vehicle_b = server.vehicle(VIN_B).await;
    // The flooder, 127.0.0.1: its first `cap` connections are served…
    let mut held = Vec::new();
    for _ in 0..cap {
        held.push(
            tls_from(&server, host(1), &[b"http/1.1"], None)
                .await
                .unwrap(),
        );
    }
    // …the next ones are closed at once (before TLS completes, or right after).
    for i in 0..5 {
        let started = Instant::now();
        match tls_from(&server, host(1), &[b"http/1.1"], None).await {
            Err(_) => {}
            Ok(mut refused) => {
                closed_within(&mut refused, Duration::from_secs(2)).await;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "excess connection {i} not refused at once"
        );
    }
    // A connection within the flooder's budget is still served.
    assert_eq!(get_h1(&mut held[0], "health").await, "HTTP/1.1 200 OK");
    // Another host, a vehicle: /health and its director metadata.
    let b = server.client(host(2), Some(&vehicle_b));
    let health = b.get(server.url("health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let timestamp = b
        .get(server.url(&format!("director/{VIN_B}/metadata/timestamp.json")))
        .send()
        .await
        .unwrap();
    assert_eq!(timestamp.status(), StatusCode::OK);
    // One event for the flood, naming the address; every refusal counted.
    let events = server.events(host(3), "connection-flood").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].source, "server");
    assert!(
        events[0]
            .remote
            .as_deref()
            .is_some_and(|r| r.starts_with("127.0.0.1")),
        "{:?}",
        events[0]
    );
    let metrics = server.metrics(host(3)).await;
    assert!(
        metrics["rampart_connections_refused_total"] >= 5,
        "{metrics:?}"
    );
    // When the flooder lets go, it is served again.
    drop(held);
    let again = server.client(host(1), None);
    let mut served = false;
    for _ in 0..50 {
        if let Ok(r) = again.get(server.url("health")).send().await {
            served = r.status() == StatusCode::OK;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the address is served again once under its cap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_over_the_total_cap_are_refused() {
    let server = Server::start(ServerConfig {
        max_connections: 6,
        max_connections_per_ip: 4,
        ..quick(30_000, 30_000)
    })
    .await;
    let mut held = Vec::new();
    for (from, count) in [(1, 4), (2, 2)] {
        for _ in 0..count {
            held.push(
                tls_from(&server, host(from), &[b"http/1.1"], None)
                    .await
                    .unwrap(),
            );
        }
    }
    match tls_from(&server, host(3), &[b"http/1.1"], None).await {
        Err(_) => {}
        Ok(mut refused) => {
            closed_within(&mut refused, Duration::from_secs(2)).await;
        }
    }
    // The held connections are served; once they are gone, so is everyone else.
    assert_eq!(get_h1(&mut held[5], "health").await, "HTTP/1.1 200 OK");
    drop(held);
    let mut served = false;
    for _ in 0..50 {
        if let Ok(r) = server
            .client(host(3), None)
            .get(server.url("health"))
            .send()
            .await
        {
            served = r.status() == StatusCode::OK;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served);
    let metrics = server.metrics(host(3)).await;
    assert!(
        metrics["rampart_connections_refused_total"] >= 1,
        "{metrics:?}"
    );
}

#[test]
fn server_section_defaults_and_round_trip() {
    let defaults = ServerConfig::default();
    assert_eq!(defaults.handshake_timeout_ms, 10_000);
    assert_eq!(defaults.stall_timeout_ms, 60_000);
    assert_eq!(defaults.first_request_timeout_ms, 10_000);
    assert_eq!(defaults.idle_timeout_ms, 60_000);
    assert_eq!(defaults.max_connections_per_ip, 256);
    // Absent fields take the defaults; present ones win.
    let parsed: ServerConfig = toml::from_str("idle_timeout_ms = 1500").unwrap();
    assert_eq!(
        parsed,
        ServerConfig {
            idle_timeout_ms: 1500,
            ..ServerConfig::default()
        }
    );
    let options = parsed.connection_options();
    assert_eq!(options.idle_timeout, Duration::from_millis(1500));
    assert_eq!(ServerConfig::from(&options), parsed);
}

//! Connection flood (denial of service against the server): instead of requests, the attacker
//! spends the server's connections and file descriptors — it opens TLS connections that
//! complete the handshake and then say nothing, and a thousand bare TCP connections, all from
//! one address, and keeps them open, hoping the server runs out before the vehicles get their
//! updates. Runs on the TLS lab; the attacker is another loopback address (127.0.0.2).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::{Findings, Harness, Info};

/// Description.
pub(super) const INFO: Info = Info {
    name: "connection-flood",
    attacker: "any host that reaches the server (one address): hundreds of TLS connections that complete the handshake and then send nothing, and a thousand bare TCP connections, all held open; no client certificate",
    attack: "connection flood (denial of service against the server)",
    control: "per-address and total connection caps (excess connections closed right after accept, counted, a rate-limited connection-flood security event); a connection must send its first request within first_request_timeout (10 s) after TLS, and idle ones are closed; the accept loop pauses on errors instead of stopping",
    expected: "defeated: past the per-address cap (256) the attacker's connections are closed at once; the server records a connection-flood event; /health answers and the vehicle completes its update during the flood; the silent TLS connections are closed by the server within the first-request timeout",
};

/// The attacker's address (loopback, but not the vehicle's).
const ATTACKER: &str = "127.0.0.2";
/// TLS connections that complete the handshake and go silent.
const SILENT_TLS: usize = 200;
/// Bare TCP connections after them.
const BARE_TCP: usize = 1_000;
/// The lab server's per-address cap (rampart.toml default).
const PER_ADDRESS: usize = 256;
/// The lab server's first-request timeout (rampart.toml default), and a margin.
const FIRST_REQUEST: Duration = Duration::from_secs(10);
const MARGIN: Duration = Duration::from_secs(4);

async fn connect_from(to: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{ATTACKER}:0").parse()?)?;
    Ok(tokio::time::timeout(Duration::from_secs(5), socket.connect(to)).await??)
}

/// Whether the server has closed `s` (EOF or reset within `wait`).
async fn closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(wait, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Runs it.
pub(super) async fn run(h: Harness) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let tbox = h.ecu_id(0);
    anyhow::ensure!(
        h.lab.url.starts_with("https://"),
        "the connection flood needs the HTTPS lab"
    );
    let image = h.release_tbox_update(150_000).await?;
    let mark = h
        .lab
        .events(None)
        .await?
        .first()
        .and_then(|e| e.get("id"))
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0);
    let url = reqwest::Url::parse(&h.lab.url)?;
    let host = url.host_str().context("server host")?.to_owned();
    let port = url.port().context("server port")?;
    let server: SocketAddr = format!("{host}:{port}").parse()?;

    // TLS that completes and then says nothing.
    let ca = std::fs::read(h.lab.layout.pki().join("ca.pem")).context("fleet CA")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(host.clone())?;
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..SILENT_TLS {
        let tcp = connect_from(server).await?;
        if let Ok(Ok(tls)) =
            tokio::time::timeout(Duration::from_secs(5), connector.connect(name.clone(), tcp)).await
        {
            silent.push(tls);
        }
    }
    // Then bare TCP connections, held open.
    let mut bare = Vec::new();
    for _ in 0..BARE_TCP {
        if let Ok(s) = connect_from(server).await {
            bare.push(s);
        }
    }
    let opened = silent.len() + bare.len();
    let mut shut_at_once = 0;
    for s in &mut bare {
        if closed(s, Duration::from_millis(5)).await {
            shut_at_once += 1;
        }
    }
    f.evidence(format!(
        "attacker at {ATTACKER} held {} silent TLS connections (handshake done) and opened {} bare TCP connections to {server}; the server closed {shut_at_once} of them at once",
        silent.len(),
        bare.len()
    ));
    let expected_shut = opened.saturating_sub(PER_ADDRESS);
    f.check(
        format!("connections past the per-address cap ({PER_ADDRESS}) were closed at once"),
        silent.len() == SILENT_TLS && shut_at_once + 8 >= expected_shut,
        format!("{shut_at_once} of {opened} closed at once (expected at least {expected_shut})"),
    );

    // The vehicles are still served.
    let health = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca)?)
        .timeout(Duration::from_secs(5))
        .build()?
        .get(format!("{}health", h.lab.url))
        .send()
        .await
        .map(|r| r.status().as_u16());
    f.check(
        "/health answers during the flood",
        matches!(health, Ok(200)),
        format!("{health:?}"),
    );
    let run = h.cycle().await?;
    f.check(
        "the vehicle completes its update during the flood",
        run.success,
        run.stderr.lines().last().unwrap_or_default().to_owned(),
    );
    h.check_runs(&mut f, "the T-BOX runs the new release", &tbox, image)
        .await?;
    // The event names the address, not a vehicle.
    let events = h.lab.events(None).await?;
    let flood = events.iter().find(|e| {
        e.get("id").and_then(serde_json::Value::as_i64).unwrap_or(0) > mark
            && e.get("rule").and_then(serde_json::Value::as_str) == Some("connection-flood")
    });
    f.check(
        "the server recorded a connection-flood security event",
        flood.is_some(),
        flood
            .and_then(|e| e.get("detail").and_then(serde_json::Value::as_str))
            .unwrap_or("no such event")
            .chars()
            .take(160)
            .collect::<String>(),
    );

    // The silent TLS connections do not stay.
    let deadline = started + FIRST_REQUEST + MARGIN;
    let mut dropped = 0;
    for s in &mut silent {
        let wait = deadline.saturating_duration_since(Instant::now());
        if closed(s, wait.max(Duration::from_millis(5))).await {
            dropped += 1;
        }
    }
    f.check(
        format!(
            "the server closed every silent TLS connection within its first-request timeout ({} s)",
            FIRST_REQUEST.as_secs()
        ),
        dropped == silent.len(),
        format!(
            "{dropped} of {} closed within {:.1} s of the flood's start",
            silent.len(),
            started.elapsed().as_secs_f64()
        ),
    );
    h.check_state(&mut f, &h.trust_state().await?, &[]);
    Ok(f)
}

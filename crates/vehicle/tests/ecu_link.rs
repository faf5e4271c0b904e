//! The ECU's in-vehicle link against hostile peers on the bus, in process: attack indicators
//! that only the director can make an ECU forget, bounded nonces, connection limits.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rampart_core::key::KeyScheme;
use rampart_core::rule::Rule;
use rampart_core::signer::{InMemorySigner, Signer};
use rampart_core::testing::{test_now, TestRepo};
use rampart_core::uptane::receipt::{sign_receipt, ManifestReceipt};
use rampart_vehicle::primary::{request_report, send_receipt};
use rampart_vehicle::protocol::{self, Kind, MAX_NONCE_LEN};
use rampart_vehicle::secondary::{serve, LinkLimits, Secondary};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Mutex;

mod common;

use common::{ecu_config, ECU, VIN};

struct Ecu {
    addr: SocketAddr,
    ecu: Arc<Mutex<Secondary>>,
    director: TestRepo,
    _dir: tempfile::TempDir,
}

async fn start(limits: LinkLimits) -> Ecu {
    let dir = tempfile::tempdir().unwrap();
    let director = TestRepo::new(test_now());
    let ecu = Secondary::open(ecu_config(
        dir.path(),
        &director.initial_root(),
        limits.clone(),
    ))
    .unwrap();
    let ecu = Arc::new(Mutex::new(ecu));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(ecu.clone(), listener, limits));
    Ecu {
        addr,
        ecu,
        director,
        _dir: dir,
    }
}

async fn indicators(ecu: &Ecu) -> String {
    let report = request_report(&ecu.addr.to_string(), &"ab".repeat(16))
        .await
        .unwrap();
    report["signed"]["attacks_detected"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn counter(report: &Value) -> u64 {
    report["signed"]["report_counter"].as_u64().unwrap()
}

fn receipt(signer: &dyn Signer, ecu_counter: u64) -> Vec<u8> {
    let r = ManifestReceipt::new(
        VIN,
        1,
        std::collections::BTreeMap::from([(ECU.to_owned(), ecu_counter)]),
    );
    sign_receipt(&r, &[signer]).unwrap()
}

/// Asking for a report (anyone on the bus can) and answering with anything but the
/// director's signed receipt forgets nothing; the director's receipt forgets exactly what
/// the acknowledged reports carried.
#[tokio::test]
async fn only_the_directors_receipt_makes_an_ecu_forget_its_indicators() {
    let ecu = start(LinkLimits::default()).await;
    let addr = ecu.addr.to_string();
    ecu.ecu
        .lock()
        .await
        .record_attack(Rule::HashMismatch, "tampered image refused");
    // A bus device asks for the report and drops it: the next report still carries it.
    let first = request_report(&addr, "ab").await.unwrap();
    assert!(first["signed"]["attacks_detected"]
        .as_str()
        .unwrap()
        .contains("hash-mismatch"));
    let report = request_report(&addr, "cd").await.unwrap();
    assert!(report["signed"]["attacks_detected"]
        .as_str()
        .unwrap()
        .contains("hash-mismatch"));
    let acknowledged = counter(&report);

    // A receipt signed by anyone but the director's targets key is refused (and noted).
    let intruder = InMemorySigner::generate(KeyScheme::Ed25519).unwrap();
    let err = send_receipt(&addr, &receipt(&intruder, acknowledged))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("threshold"), "{err}");
    let timestamp_key = &ecu.director.signers["timestamp"][0];
    assert!(send_receipt(&addr, &receipt(timestamp_key, acknowledged))
        .await
        .is_err());
    // So is garbage.
    assert!(send_receipt(&addr, b"{\"signed\":{}}").await.is_err());
    let text = indicators(&ecu).await;
    assert!(text.contains("hash-mismatch"), "{text}");
    assert!(
        text.contains("threshold: manifest receipt refused"),
        "{text}"
    );

    // A genuine receipt for a report from before the indicator forgets nothing.
    let director = &ecu.director.signers["targets"][0];
    send_receipt(&addr, &receipt(director, counter(&first) - 1))
        .await
        .unwrap();
    assert!(indicators(&ecu).await.contains("hash-mismatch"));
    // One covering the latest report forgets everything reported so far.
    let report = request_report(&addr, "ef").await.unwrap();
    let answer = send_receipt(&addr, &receipt(director, counter(&report)))
        .await
        .unwrap();
    assert!(answer.ok, "{answer:?}");
    assert_eq!(indicators(&ecu).await, "");
    // Replaying that receipt later forgets nothing new.
    ecu.ecu
        .lock()
        .await
        .record_attack(Rule::Rollback, "old image offered");
    send_receipt(&addr, &receipt(director, counter(&report)))
        .await
        .unwrap();
    assert!(indicators(&ecu).await.contains("rollback"));
}

/// A nonce too large to sign into a report that fits its frame is refused before anything
/// changes: the counter does not move and the indicators stay.
#[tokio::test]
async fn an_oversized_nonce_is_refused_without_side_effects() {
    let ecu = start(LinkLimits::default()).await;
    let addr = ecu.addr.to_string();
    ecu.ecu.lock().await.record_attack(Rule::HashMismatch, "x");
    let before = counter(&request_report(&addr, "01").await.unwrap());
    for nonce in ["a".repeat(MAX_NONCE_LEN + 1), "a".repeat(900)] {
        let err = request_report(&addr, &nonce).await.unwrap_err();
        assert!(err.to_string().contains("unexpected"), "{err}");
    }
    // A frame bigger than a REPORT_REQUEST may be is refused by its header alone.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(&protocol::header(Kind::ReportRequest, 1024 * 1024))
        .await
        .unwrap();
    let answer = protocol::read_frame(&mut s).await.unwrap();
    assert_eq!(answer.kind, Kind::Error);
    assert!(String::from_utf8_lossy(&answer.payload).contains("oversized-frame"));

    let report = request_report(&addr, "02").await.unwrap();
    assert_eq!(counter(&report), before + 1);
    let text = report["signed"]["attacks_detected"].as_str().unwrap();
    assert!(text.contains("hash-mismatch"), "{text}");
    assert!(text.contains("malformed-frame"), "{text}");
}

async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Idle connections from one address cannot take the ECU from the primary: past the
/// per-peer cap they are closed at once, and the primary (another address) is served.
#[tokio::test]
async fn a_connection_flood_from_one_address_does_not_lock_out_the_primary() {
    let limits = LinkLimits {
        max_connections: 16,
        max_connections_per_peer: 4,
        ..LinkLimits::default()
    };
    let ecu = start(limits).await;
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(connect_from("127.0.0.2", ecu.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The primary is still answered while the flood holds its connections.
    let text = indicators(&ecu).await;
    assert!(text.contains("connection-flood"), "{text}");
    // All but the per-peer cap were closed by the ECU.
    let mut closed = 0;
    for s in &mut flood {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await;
        if matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
            closed += 1;
        }
    }
    assert!(closed >= 196, "{closed} of 200 closed");
}

/// A private key anyone on the machine can read is no secret: an ECU refuses to start with
/// one, naming the file and the fix (the same rule as the server's, one shared check).
#[tokio::test]
async fn an_ecu_refuses_a_key_readable_by_others() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let director = TestRepo::new(test_now());
    let mut cfg = ecu_config(dir.path(), &director.initial_root(), LinkLimits::default());
    std::fs::set_permissions(&cfg.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Secondary::open(cfg.clone()).unwrap_err();
    assert_eq!(err.rule(), "secret-permissions", "{err}");
    assert!(err.to_string().contains("chmod 600"), "{err}");
    std::fs::set_permissions(&cfg.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let x25519 = dir.path().join("x25519.hex");
    std::fs::write(&x25519, "00".repeat(32)).unwrap();
    std::fs::set_permissions(&x25519, std::fs::Permissions::from_mode(0o640)).unwrap();
    cfg.encryption_key = Some(x25519.clone());
    let err = Secondary::open(cfg.clone()).unwrap_err();
    assert_eq!(err.rule(), "secret-permissions", "{err}");
    std::fs::set_permissions(&x25519, std::fs::Permissions::from_mode(0o600)).unwrap();
    Secondary::open(cfg).unwrap();
}

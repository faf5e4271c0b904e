//! Unit tests of the primary: configuration, opening, reports, the manifest's counter and
//! indicators, preconditions — without a server (closed ports, or a one-answer HTTP stub).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use rampart_core::testing::{test_now, TestRepo};
use std::os::unix::fs::PermissionsExt;
use tokio::io::AsyncWriteExt;

/// An address nothing listens on (bound, then closed).
fn closed_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a.to_string()
}

/// A provisioned primary in `dir`: key (0600), both roots, one ECU at `ecu_address`, the
/// server at `server`.
fn provision(dir: &Path, server: &str, ecu_address: &str) -> PrimaryConfig {
    let key = InMemorySigner::generate(rampart_core::key::KeyScheme::Ed25519).unwrap();
    std::fs::write(dir.join("primary.pem"), key.to_pkcs8_pem()).unwrap();
    std::fs::set_permissions(
        dir.join("primary.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let root = TestRepo::new(test_now()).initial_root();
    std::fs::write(dir.join("director-root.json"), &root).unwrap();
    std::fs::write(dir.join("image-root.json"), &root).unwrap();
    let toml = format!(
        r#"
vin = "VIN00000000000001"
ecu_id = "TBOX-1"
server = "{server}"
key = "primary.pem"
director_root = "director-root.json"
image_root = "image-root.json"
state_dir = "state"

[[ecus]]
ecu_id = "IVI-1"
hardware_id = "ivi-x"
address = "{ecu_address}"
verification = "partial"
"#
    );
    std::fs::write(dir.join("vehicle.toml"), toml).unwrap();
    load_config(&dir.join("vehicle.toml")).unwrap()
}

/// Answers one HTTP request with `status` and the JSON `body`, then closes; its base URL.
async fn one_answer(status: u16, body: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let _ = s.read(&mut buf).await;
        let answer = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(answer.as_bytes()).await;
        let _ = s.shutdown().await;
    });
    url
}

#[test]
fn vehicle_toml_paths_are_relative_to_its_folder_and_defaults_apply() {
    let dir = tempfile::tempdir().unwrap();
    let c = provision(dir.path(), "https://server.example/", "127.0.0.1:1");
    assert_eq!(c.key, dir.path().join("primary.pem"));
    assert_eq!(c.state_dir, dir.path().join("state"));
    assert_eq!(c.director_root, dir.path().join("director-root.json"));
    assert_eq!(
        (c.poll_seconds, c.min_bytes_per_second, c.stall_seconds),
        (300, 1024, 20)
    );
    assert_eq!(c.ecus.len(), 1);
}

#[test]
fn a_vehicle_toml_that_does_not_parse_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vehicle.toml");
    std::fs::write(&path, "vin = \"V\"\necus = 3\n").unwrap();
    let err = load_config(&path).unwrap_err();
    assert!(err.to_string().contains("vehicle.toml"), "{err}");
    let missing = load_config(&dir.path().join("nope.toml")).unwrap_err();
    assert!(missing.to_string().contains("nope.toml"), "{missing}");
}

#[test]
fn opening_archives_the_provisioned_roots_by_version() {
    let dir = tempfile::tempdir().unwrap();
    let c = provision(dir.path(), "https://server.example/", "127.0.0.1:1");
    let p = Primary::open(c).unwrap();
    for repo in ["director", "image"] {
        assert!(dir
            .path()
            .join("state/root-archive")
            .join(repo)
            .join("1.root.json")
            .exists());
    }
    assert_eq!(p.state.manifest_counter, 0);
}

#[test]
fn a_primary_key_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = provision(dir.path(), "https://server.example/", "127.0.0.1:1");
    std::fs::set_permissions(&c.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Primary::open(c).expect_err("a readable key must be refused");
    assert!(err.to_string().contains("primary.pem"), "{err}");
}

#[test]
fn a_corrupt_state_file_is_refused_not_reset() {
    // A reset state would restart the manifest counter: the director would take the next
    // manifests for replays, or an attacker's replays for new ones.
    let dir = tempfile::tempdir().unwrap();
    let c = provision(dir.path(), "https://server.example/", "127.0.0.1:1");
    std::fs::create_dir_all(&c.state_dir).unwrap();
    std::fs::write(c.state_dir.join("primary-state.json"), b"{not json").unwrap();
    let err = Primary::open(c).expect_err("a corrupt state must be refused");
    assert!(err.to_string().contains("primary state"), "{err}");
}

#[test]
fn urls_follow_the_server_and_the_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = provision(dir.path(), "https://server.example:8443", "127.0.0.1:1");
    let p = Primary::open(c.clone()).unwrap();
    assert_eq!(
        p.director_url(),
        "https://server.example:8443/director/VIN00000000000001/metadata/"
    );
    assert_eq!(p.image_base(), "https://server.example:8443/image/");
    c.image_base = Some("https://cdn.example/ota".into());
    let p = Primary::open(c).unwrap();
    assert_eq!(p.image_base(), "https://cdn.example/ota/");
}

#[tokio::test]
async fn an_unreachable_ecu_is_noted_kept_and_sent_as_an_indicator() {
    let dir = tempfile::tempdir().unwrap();
    let c = provision(dir.path(), "https://server.example/", &closed_address());
    let mut p = Primary::open(c.clone()).unwrap();
    let mut report = CycleReport::default();
    let (reports, installed) = p.collect_reports(&mut report).await;
    assert!(reports.is_empty() && installed.is_empty());
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].starts_with("ecu-unreachable: "),
        "{:?}",
        report.problems
    );
    // Persisted: a restart still reports it.
    let reopened = Primary::open(c).unwrap();
    assert_eq!(reopened.state.attacks, report.problems);
}

#[tokio::test]
async fn a_manifest_that_never_arrives_keeps_its_indicators_and_spends_its_counter() {
    let dir = tempfile::tempdir().unwrap();
    let server = format!("http://{}/", closed_address());
    let c = provision(dir.path(), &server, "127.0.0.1:1");
    let mut p = Primary::open(c.clone()).unwrap();
    p.state.attacks.push("hash-mismatch: seen earlier".into());
    let err = p.send_manifest(BTreeMap::new()).await.unwrap_err();
    assert_eq!(err.rule(), "transport", "{err}");
    // The counter moved on disk before the manifest left (never reused), and the indicator
    // waits for a manifest the director acknowledges.
    let reopened = Primary::open(c).unwrap();
    assert_eq!(reopened.state.manifest_counter, 1);
    assert_eq!(reopened.state.attacks, ["hash-mismatch: seen earlier"]);
}

#[tokio::test]
async fn a_director_refusal_names_its_rule_and_keeps_the_indicators() {
    let dir = tempfile::tempdir().unwrap();
    let server = one_answer(
        409,
        r#"{"error":"manifest counter 1 is not above 7","rule":"replay"}"#,
    )
    .await;
    let c = provision(dir.path(), &server, "127.0.0.1:1");
    let mut p = Primary::open(c).unwrap();
    p.state.attacks.push("rollback: seen earlier".into());
    let err = p.send_manifest(BTreeMap::new()).await.unwrap_err();
    match &err {
        Error::Director { status, rule, .. } => {
            assert_eq!((*status, rule.as_str()), (409, "replay"))
        }
        other => panic!("{other}"),
    }
    assert_eq!(p.state.attacks, ["rollback: seen earlier"]);
}

#[tokio::test]
async fn an_accepted_manifest_clears_the_indicators_it_carried() {
    let dir = tempfile::tempdir().unwrap();
    let server = one_answer(200, r#"{"ok":true}"#).await;
    let c = provision(dir.path(), &server, "127.0.0.1:1");
    let mut p = Primary::open(c).unwrap();
    p.state.attacks.push("rollback: seen earlier".into());
    p.send_manifest(BTreeMap::new()).await.unwrap();
    assert!(p.state.attacks.is_empty());
    assert_eq!(p.state.manifest_counter, 1);
}

#[tokio::test]
async fn a_precondition_passes_on_success_and_says_why_it_failed() {
    assert_eq!(cycle::run_precondition("true").await, Ok(()));
    let why = cycle::run_precondition("exit 3").await.unwrap_err();
    assert!(why.contains("exit 3") && why.contains('3'), "{why}");
}

#[test]
fn a_failing_random_source_is_an_error_not_a_zero_nonce() {
    let err = random_hex_from(16, |_| Err(aws_lc_rs::error::Unspecified)).unwrap_err();
    assert_eq!(err.rule(), "crypto");
    let a = random_hex(16).unwrap();
    let b = random_hex(16).unwrap();
    assert_eq!(a.len(), 32);
    assert_ne!(a, b);
    assert_ne!(a, "0".repeat(32));
}

fn update(target: &str, status: UpdateStatus) -> UpdateOutcome {
    UpdateOutcome {
        via: None,
        ecu_id: "IVI-1".into(),
        target: target.into(),
        bytes: 1,
        saved_bytes: 0,
        encrypted: false,
        status,
    }
}

#[test]
fn a_cycle_is_complete_only_when_everything_due_installed_and_everyone_answered() {
    let mut r = CycleReport::default();
    assert_eq!(r.outcome(), CycleOutcome::Complete);
    r.updates.push(update("a.bin", UpdateStatus::Installed));
    assert_eq!(r.outcome(), CycleOutcome::Complete);
    r.updates.push(update(
        "b.bin",
        UpdateStatus::Declined("the owner said no".into()),
    ));
    assert!(matches!(r.outcome(), CycleOutcome::Postponed(w) if w.contains("b.bin")));
    r.problems
        .push("ecu-unreachable: ECU BCM-1 at 127.0.0.1:9".into());
    assert!(matches!(r.outcome(), CycleOutcome::Failed(w) if w.starts_with("ecu-unreachable")));
    r.updates.push(update(
        "c.bin",
        UpdateStatus::Failed("hash-mismatch".into(), "bad bytes".into()),
    ));
    assert!(
        matches!(r.outcome(), CycleOutcome::Failed(w) if w.starts_with("1 of 3 update(s) failed: hash-mismatch: c.bin"))
    );
}

fn windowed(window: Option<&str>) -> rampart_core::uptane::VerifiedUpdate {
    rampart_core::uptane::VerifiedUpdate {
        instruction: rampart_core::uptane::DirectorInstruction {
            ecu_id: "BCM".into(),
            hardware_id: "bcm-1".into(),
            target: "bcm/fw-2.bin".into(),
            file: rampart_core::metadata::TargetFile {
                length: 1,
                hashes: Default::default(),
                custom: None,
                unrecognized: Default::default(),
            },
            release_counter: 2,
            encryption: None,
            maintenance_window: window.map(str::to_owned),
            delta: None,
        },
        image_role: "targets".into(),
    }
}

/// The window the director signed decides, on the vehicle's own clock; a window that does
/// not parse keeps the update back.
#[test]
fn an_update_waits_for_its_signed_maintenance_window() {
    use chrono::TimeZone;
    // Wednesday 2 December 2026, 02:30 in Berlin.
    let now = chrono::Utc.with_ymd_and_hms(2026, 12, 2, 1, 30, 0).unwrap();
    let open = "Mon-Fri 01:00-05:00 Europe/Berlin";
    let closed = "Sat,Sun 01:00-05:00 Europe/Berlin";
    assert_eq!(cycle::outside_window(&[windowed(None)], now), None);
    assert_eq!(cycle::outside_window(&[windowed(Some(open))], now), None);
    let why = cycle::outside_window(&[windowed(Some(open)), windowed(Some(closed))], now).unwrap();
    assert!(
        why.contains("outside its maintenance window (Sat,Sun 01:00-05:00"),
        "{why}"
    );
    let why = cycle::outside_window(&[windowed(Some("whenever"))], now).unwrap();
    assert!(why.contains("maintenance window"), "{why}");
}

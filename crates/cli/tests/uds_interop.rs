//! `rampart uds-ecu` driven by tools we did not write: Python `udsoncan` (ISO 14229 client)
//! over `doipclient` (ISO 13400), through `tests/uds/udsoncan_flash.py`.
//!
//! The ECU runs as a process on its own loopback address (127.77.x.y, TCP and UDP 13400, so
//! that doipclient's vehicle identification, which always goes to port 13400, finds it).
//! The peer discovers it, reads its DIDs, is refused a download without security access
//! (NRC 0x33), gets invalidKey (0x35) for a wrong key, unlocks with the right one, gets
//! wrongBlockSequenceCounter (0x73) and incorrectMessageLength (0x13) for a bad counter and a
//! too-long block, sees a tampered image refused by the verify routine, flashes the image
//! the director signed, resets the ECU and reads the new version back.
//!
//! Needs the project's venv with udsoncan and doipclient (`scripts/python-env`, which
//! `scripts/test` runs before setting `RAMPART_REQUIRE_UDS_PEERS=1`). Without it the test
//! says so and passes, unless `RAMPART_REQUIRE_UDS_PEERS=1`, where it fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use rampart_vehicle::testing::{image_bytes, TestDirector};
use rampart_vehicle::uds::UdsEcuConfig;

const VIN: &str = "WRAMP000000000042";
const ECU: &str = "BCM-42";
const HW: &str = "bcm-legacy";
const TARGET: &str = "bcm-legacy-2.0.bin";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv's Python, if it has the peers.
fn python() -> Option<PathBuf> {
    let python = std::env::var_os("RAMPART_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import udsoncan, doipclient"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}

struct Ecu(Child);

impl Drop for Ecu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the ECU on a free loopback address; returns it and the address.
fn start(config_path: &Path, config: &UdsEcuConfig) -> (Ecu, String) {
    let pid = std::process::id();
    for attempt in 0..40u32 {
        let ip = format!(
            "127.77.{}.{}",
            (pid / 250) % 250 + 1,
            (pid + attempt * 7) % 250 + 1
        );
        let mut c = config.clone();
        c.listen = format!("{ip}:13400");
        std::fs::write(config_path, toml::to_string(&c).unwrap()).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_rampart"))
            .args(["uds-ecu", "--config"])
            .arg(config_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        match lines.next() {
            Some(Ok(line)) if line.contains("UDS over DoIP on") => {
                // Keep reading its output, so it never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines.by_ref() {});
                return (Ecu(child), ip);
            }
            _ => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                eprintln!(
                    "{ip} not usable: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
    panic!("no loopback address to run the UDS ECU on");
}

#[test]
fn udsoncan_over_doipclient_reads_refuses_unlocks_and_flashes_our_ecu() {
    let required = std::env::var("RAMPART_REQUIRE_UDS_PEERS").is_ok_and(|v| v == "1");
    let Some(python) = python() else {
        assert!(
            !required,
            "the venv with udsoncan and doipclient is required (scripts/python-env)"
        );
        eprintln!("udsoncan/doipclient missing: UDS interop test skipped (scripts/python-env)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut director = TestDirector::new();
    let image = image_bytes("bcm-legacy-2.0", 300_000);
    let mut tampered = image.clone();
    tampered[150_000] ^= 0x5A;
    let metadata = director.assign(VIN, ECU, HW, TARGET, &image, 2);
    std::fs::write(d.join("director-root.json"), director.root()).unwrap();
    std::fs::write(d.join("bank-a"), b"bcm-legacy factory image").unwrap();
    let secret = "5ec4e7".repeat(6);
    std::fs::write(d.join("security-secret.hex"), &secret).unwrap();
    std::fs::set_permissions(
        d.join("security-secret.hex"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    for (name, bytes) in [
        ("image.bin", &image),
        ("tampered.bin", &tampered),
        ("targets.json", &metadata),
    ] {
        std::fs::write(d.join(name), bytes).unwrap();
    }
    let mut config = UdsEcuConfig::in_folder(d, ECU, HW, VIN);
    config.logical_address = 0x0042;
    config.factory_image = "bcm-legacy-1.0.bin".into();
    let (_ecu, ip) = start(&d.join("uds-ecu.toml"), &config);

    let plan = serde_json::json!({
        "ip": ip,
        "logical_address": 0x0042,
        "vin": VIN,
        "ecu_id": ECU,
        "secret": secret,
        "image": d.join("image.bin"),
        "tampered": d.join("tampered.bin"),
        "metadata": d.join("targets.json"),
        "target": TARGET,
    });
    std::fs::write(d.join("plan.json"), plan.to_string()).unwrap();
    let started = Instant::now();
    let out = Command::new(python)
        .arg(workspace().join("tests/uds/udsoncan_flash.py"))
        .arg(d.join("plan.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "{stdout}{}(peer ran {:?})",
        String::from_utf8_lossy(&out.stderr),
        started.elapsed()
    );
    assert!(out.status.success(), "the udsoncan peer failed");
    let steps: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name:?}"))
            .clone()
    };
    assert_eq!(find("download without security access")["nrc"], "0x33");
    assert_eq!(find("wrong key")["nrc"], "0x35");
    assert_eq!(find("wrong block sequence counter")["nrc"], "0x73");
    assert_eq!(
        find("block longer than maxNumberOfBlockLength")["nrc"],
        "0x13"
    );
    assert_eq!(
        find("tampered image refused by the verify routine")["rule"],
        "hash-mismatch"
    );
    assert_eq!(find("read back")["after"], TARGET);

    // The ECU kept what it refused, by rule, for the gateway to report.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("state/uds-state.json")).unwrap()).unwrap();
    let log = state["indicators"].to_string();
    for rule in [
        "security-access-denied",
        "invalid-security-key",
        "block-sequence",
        "diagnostic-request",
        "hash-mismatch",
    ] {
        assert!(log.contains(rule), "{rule} not recorded: {log}");
    }
}

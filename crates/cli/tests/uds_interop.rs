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
//! The other way round, our gateway flashes an ECU we did not write — scapy's automotive ECU
//! emulator behind the DoIP front of `tests/uds/scapy_ecu.py` — and our gateway's flash of our
//! own ECU is recorded on the wire and decoded by scapy's
//! DoIP and UDS layers (`tests/uds/scapy_decode.py`), which check the sequence and write it
//! as a pcap (`CARGO_TARGET_TMPDIR/uds-flash.pcap`) for Wireshark.
//!
//! Needs the project's venv with udsoncan, doipclient and scapy (`scripts/python-env`, which
//! `scripts/test` runs before setting `RAMPART_REQUIRE_UDS_PEERS=1`). Without it the tests
//! say so and pass, unless `RAMPART_REQUIRE_UDS_PEERS=1`, where they fail.

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
        .args(["-c", "import udsoncan, doipclient, scapy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}

/// The venv's Python with the peers; `None` (the test then passes, saying why) when they are
/// missing, unless `RAMPART_REQUIRE_UDS_PEERS=1`, where their absence fails the test.
fn peers() -> Option<PathBuf> {
    let found = python();
    if found.is_none() {
        assert!(
            !std::env::var("RAMPART_REQUIRE_UDS_PEERS").is_ok_and(|v| v == "1"),
            "the venv with udsoncan, doipclient and scapy is required (scripts/python-env)"
        );
        eprintln!("udsoncan, doipclient or scapy missing: test skipped (scripts/python-env)");
    }
    found
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
    let Some(python) = peers() else {
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

/// A relay between the gateway and the ECU that records every DoIP message both ways.
async fn recording_relay(
    ecu: std::net::SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        who: &'static str,
        log: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    ) {
        loop {
            let mut head = [0u8; 8];
            if from.read_exact(&mut head).await.is_err() {
                break;
            }
            let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
            let mut message = head.to_vec();
            message.resize(8 + len, 0);
            if from.read_exact(&mut message[8..]).await.is_err() {
                break;
            }
            log.lock()
                .unwrap()
                .push(serde_json::json!({"from": who, "hex": hex::encode(&message)}));
            if to.write_all(&message).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((gateway, _)) = listener.accept().await {
            let ecu = tokio::net::TcpStream::connect(ecu).await.unwrap();
            let (gr, gw) = gateway.into_split();
            let (er, ew) = ecu.into_split();
            tokio::spawn(pump(gr, ew, "gateway", log.clone()));
            tokio::spawn(pump(er, gw, "ecu", log.clone()));
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_gateways_flash_decoded_by_scapy_follows_the_bootloader_sequence() {
    let Some(python) = peers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut director = TestDirector::new();
    let image = image_bytes("bcm-legacy-2.0", 70_000);
    let metadata = director.assign(VIN, ECU, HW, TARGET, &image, 2);
    std::fs::write(d.join("director-root.json"), director.root()).unwrap();
    std::fs::write(d.join("bank-a"), b"factory").unwrap();
    std::fs::write(d.join("image.bin"), &image).unwrap();
    std::fs::write(d.join("security-secret.hex"), "5ec4e7".repeat(6)).unwrap();
    std::fs::set_permissions(
        d.join("security-secret.hex"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut config = UdsEcuConfig::in_folder(d, ECU, HW, VIN);
    // Small blocks: a long run of block counters for the dissector to follow.
    config.max_block_length = 1026;
    let ecu = rampart_vehicle::uds::entity::start(
        config,
        std::sync::Arc::new(rampart_vehicle::report::LogReporter),
    )
    .await
    .unwrap();
    let ecu_addr = ecu.addr();
    tokio::spawn(ecu.serve());
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let relay = recording_relay(ecu_addr, log.clone()).await.to_string();

    struct Quiet;
    impl rampart_vehicle::report::Progress for Quiet {
        fn set(&mut self, _: u64) {}
        fn finish(self: Box<Self>) {}
    }
    let link = rampart_vehicle::uds::gateway::UdsLink {
        logical_address: 0x0010,
        tester_address: 0x0E80,
        security_secret: d.join("security-secret.hex"),
    };
    rampart_vehicle::uds::gateway::Flash {
        address: &relay,
        link: &link,
        ecu_id: ECU,
        target: TARGET,
        image: &d.join("image.bin"),
        length: image.len() as u64,
        director_targets: &metadata,
    }
    .run(&mut Quiet)
    .await
    .unwrap();

    let lines: Vec<String> = log.lock().unwrap().iter().map(|v| v.to_string()).collect();
    std::fs::write(d.join("recorded.jsonl"), lines.join("\n")).unwrap();
    let pcap = Path::new(env!("CARGO_TARGET_TMPDIR")).join("uds-flash.pcap");
    let out = Command::new(python)
        .arg(workspace().join("tests/uds/scapy_decode.py"))
        .arg(d.join("recorded.jsonl"))
        .arg(&pcap)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "scapy did not decode the flash as expected"
    );
    let verdict: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(verdict["ok"], true);
    // 70,000 bytes in blocks of 1,024: 69 blocks, counters 1..=69.
    assert_eq!(verdict["transfer_blocks"], 69);
    assert!(verdict["response_pending"].as_u64().unwrap() >= 2);
    assert!(pcap.exists());
}

/// Our gateway flashes an ECU we did not write: scapy's automotive ECU emulator
/// (`EcuAnsweringMachine`: its UDS codec and its session, security-level and download state)
/// behind the DoIP front of `tests/uds/scapy_ecu.py`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_gateway_flashes_scapys_ecu_emulator() {
    let Some(python) = peers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let secret = "5ec4e7".repeat(6);
    for (name, text) in [
        ("secret.hex", secret.clone()),
        ("wrong.hex", "ab".repeat(16)),
    ] {
        std::fs::write(d.join(name), text).unwrap();
        std::fs::set_permissions(
            d.join(name),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }
    let image = image_bytes("seat-emulated", 50_000);
    std::fs::write(d.join("image.bin"), &image).unwrap();
    let mut director = TestDirector::new();
    let metadata = director.assign(VIN, ECU, HW, TARGET, &image, 2);
    let plan = serde_json::json!({
        "listen": "127.0.0.1",
        "port_file": d.join("port"),
        "logical_address": 0x0010,
        "secret": secret,
        "image_out": d.join("received.bin"),
        "report": d.join("report.json"),
    });
    std::fs::write(d.join("plan.json"), plan.to_string()).unwrap();
    let child = Command::new(python)
        .arg(workspace().join("tests/uds/scapy_ecu.py"))
        .arg(d.join("plan.json"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("ecu.log")).unwrap())
        .spawn()
        .unwrap();
    let _ecu = Ecu(child);
    let started = Instant::now();
    let port = loop {
        if let Ok(p) = std::fs::read_to_string(d.join("port")) {
            break p;
        }
        assert!(
            started.elapsed().as_secs() < 30,
            "the scapy ECU did not start: {}",
            std::fs::read_to_string(d.join("ecu.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let address = format!("127.0.0.1:{}", port.trim());
    struct Quiet;
    impl rampart_vehicle::report::Progress for Quiet {
        fn set(&mut self, _: u64) {}
        fn finish(self: Box<Self>) {}
    }
    let flash = |secret: &str| {
        let link = rampart_vehicle::uds::gateway::UdsLink {
            logical_address: 0x0010,
            tester_address: 0x0E80,
            security_secret: d.join(secret),
        };
        let (address, image_path, metadata) =
            (address.clone(), d.join("image.bin"), metadata.clone());
        let length = image.len() as u64;
        async move {
            rampart_vehicle::uds::gateway::Flash {
                address: &address,
                link: &link,
                ecu_id: ECU,
                target: TARGET,
                image: &image_path,
                length,
                director_targets: &metadata,
            }
            .run(&mut Quiet)
            .await
        }
    };
    // scapy's ECU refuses the key made with another secret (its general reject).
    let refused = flash("wrong.hex").await.unwrap_err();
    assert!(
        refused.to_string().contains("service 0x27 refused"),
        "{refused}"
    );
    flash("secret.hex").await.unwrap();
    assert_eq!(std::fs::read(d.join("received.bin")).unwrap(), image);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("report.json")).unwrap()).unwrap();
    eprintln!("{report}");
    assert_eq!(report["flashed"], TARGET);
    let answered = report["answered"].as_array().unwrap();
    // The end of the second flash (13 blocks of 4,096 bytes, exit, verify, reset): all answered.
    let last: Vec<&serde_json::Value> = answered.iter().rev().take(12).collect();
    assert!(last.iter().all(|a| a["ok"] == true), "{report}");
}

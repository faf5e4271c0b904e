//! An ECU process (`rampart-agent ecu`) under resource-exhaustion attacks from the bus: it
//! must neither exit nor grow without bound. `RAMPART_AGENT` may name another agent binary
//! (e.g. an older build, to see these tests fail against it).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{agent, ecu_config, wait_for_address};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rampart_core::testing::{test_now, TestRepo};
use rampart_vehicle::primary::request_report;
use rampart_vehicle::protocol::{header, Kind, MAX_PAYLOAD};
use rampart_vehicle::secondary::LinkLimits;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

struct EcuProcess {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for EcuProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl EcuProcess {
    /// Starts an ECU with `limits`, at most `max_fds` open files.
    fn start(limits: LinkLimits, max_fds: u32) -> EcuProcess {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let config = ecu_config(d, &TestRepo::new(test_now()).initial_root(), limits);
        std::fs::write(d.join("ecu.toml"), toml::to_string(&config).unwrap()).unwrap();
        let child = Command::new("prlimit")
            .arg(format!("--nofile={max_fds}:{max_fds}"))
            .arg(agent())
            .args(["ecu", "--config"])
            .arg(d.join("ecu.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = wait_for_address(&d.join("state/listen-address"));
        EcuProcess {
            child,
            addr,
            _dir: dir,
        }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Resident memory of the ECU process, in KiB (prlimit execs it, so the PID is its own).
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

async fn connect_from(ip: &str, to: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(format!("{ip}:0").parse().ok()?).ok()?;
    tokio::time::timeout(Duration::from_secs(2), socket.connect(to))
        .await
        .ok()?
        .ok()
}

fn unlimited() -> LinkLimits {
    LinkLimits {
        max_connections: 100_000,
        max_connections_per_peer: 100_000,
        ..LinkLimits::default()
    }
}

/// Running out of file descriptors makes `accept` fail; the ECU must pause and go on, not
/// exit (limits off here, so nothing but the accept loop stands between the flood and it).
#[tokio::test]
async fn an_ecu_survives_running_out_of_file_descriptors() {
    let mut ecu = EcuProcess::start(unlimited(), 64);
    let mut flood = Vec::new();
    for _ in 0..150 {
        if let Some(s) = connect_from("127.0.0.3", ecu.addr).await {
            flood.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(ecu.alive(), "the ECU exited when accept failed");
    drop(flood);
    // Once the flood is gone, the primary is served again.
    let start = Instant::now();
    loop {
        match request_report(&ecu.addr.to_string(), "ab").await {
            Ok(report) => {
                assert_eq!(report["signed"]["ecu_id"], "IVI-1");
                break;
            }
            Err(e) if start.elapsed() > Duration::from_secs(10) => panic!("{e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(ecu.alive());
}

/// Hundreds of connections each announcing a 1 MiB frame and sending half of it: the ECU's
/// memory is bounded by its buffer budget, not by connections × announced size (limits on
/// connections are off here, so the budget alone is what holds).
#[tokio::test]
async fn frames_in_flight_cannot_grow_an_ecu_beyond_its_budget() {
    let ecu = EcuProcess::start(unlimited(), 4096);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = ecu.rss_kib();
    let half = vec![b' '; MAX_PAYLOAD as usize / 2];
    let mut flood = Vec::new();
    for i in 0..400 {
        let Some(mut s) = connect_from(&format!("127.0.1.{}", 1 + i % 200), ecu.addr).await else {
            continue;
        };
        if s.write_all(&header(Kind::InstallBegin, MAX_PAYLOAD))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_millis(200), s.write_all(&half)).await;
        }
        flood.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown_mib = ecu.rss_kib().saturating_sub(before) / 1024;
    eprintln!(
        "ECU RSS grew by {grown_mib} MiB (from {} MiB)",
        before / 1024
    );
    drop(flood);
    // The default budget is 8 MiB; allow for allocator and socket overhead.
    assert!(
        grown_mib < 40,
        "ECU grew by {grown_mib} MiB under 400 half-sent 1 MiB frames"
    );
}

//! `rampart ecu` says what it does without `-v`: that it is up and where it listens, then
//! each install and refusal — on stdout, for the person who started it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rampart_lab::{Lab, LabOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecu_says_it_is_up_and_where_it_listens_without_v() {
    let dir = tempfile::tempdir().unwrap();
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_rampart"));
    let lab = Lab::create(LabOptions::new(dir.path(), bin.clone(), 1))
        .await
        .unwrap();
    let ivi = &lab.vehicles[0].ecus[1];
    let mut child = Command::new(&bin)
        .args(["ecu", "--config"])
        .arg(&ivi.config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < Duration::from_secs(20) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(line);
            if seen
                .iter()
                .any(|l| l.contains("listening for the primary on 127.0.0.1:"))
            {
                break;
            }
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    let line = seen
        .iter()
        .find(|l| l.contains("listening for the primary on 127.0.0.1:"))
        .unwrap_or_else(|| panic!("no start line on stdout: {seen:?}"));
    assert!(line.starts_with(&ivi.ecu_id), "{line}");
    assert!(line.contains("up, running"), "{line}");
}

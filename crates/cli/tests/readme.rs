//! The README's by-hand path, run literally: every command of its "By hand" block, in an
//! empty folder, with the `rampart` just built first on the `PATH` — from `repo init` to an
//! installed image and the security events. The only change is the server's port (8443 → a
//! free one). So the README cannot drift from the binary again.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The commands of the README's "By hand" block: continuation lines joined, comment lines
/// and blank lines left out.
fn by_hand_commands() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let section = readme
        .split("## By hand")
        .nth(1)
        .expect("README has a By hand section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the By hand section has a sh block");
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let line = line.trim_end();
        if current.is_empty() && (line.trim().is_empty() || line.trim_start().starts_with('#')) {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(line);
            commands.push(std::mem::take(&mut current));
        }
    }
    commands
}

/// `line` without its trailing comment, and whether it runs in the background (`&`).
fn split_line(line: &str) -> (String, bool) {
    let code = match line.find(" #") {
        Some(i) => &line[..i],
        None => line,
    }
    .trim_end();
    match code.strip_suffix('&') {
        Some(c) => (c.trim_end().to_owned(), true),
        None => (code.to_owned(), false),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Background(Vec<Child>);

impl Drop for Background {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn the_readme_by_hand_path_works_as_written() {
    let commands = by_hand_commands();
    assert!(
        commands.iter().any(|c| c.starts_with("rampart vehicle")),
        "the block runs a vehicle: {commands:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_rampart")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let port = free_port().to_string();
    let mut background = Background(Vec::new());
    let mut transcript = String::new();
    let mut vehicle_runs = 0;
    for line in &commands {
        let (command, in_background) = split_line(&line.replace("8443", &port));
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(format!("exec {command}"))
            .current_dir(dir.path())
            .env("PATH", &path)
            .stdin(Stdio::null());
        if in_background {
            let log = std::fs::File::create(
                dir.path()
                    .join(format!("background-{}.log", background.0.len())),
            )
            .unwrap();
            let child = sh
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            background.0.push(child);
            if command.starts_with("rampart serve") {
                wait_for("the server", || {
                    TcpStream::connect(format!("127.0.0.1:{port}")).is_ok()
                });
            } else if let Some(config) = command
                .strip_prefix("rampart ecu --config ")
                .or_else(|| command.strip_prefix("rampart uds-ecu --config "))
            {
                let state = dir
                    .path()
                    .join(config.trim())
                    .parent()
                    .unwrap()
                    .join("state/listen-address");
                wait_for(config, || state.exists());
            }
            transcript.push_str(&format!("$ {command} &\n"));
            continue;
        }
        let out = sh.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        transcript.push_str(&format!("$ {command}\n{stdout}{stderr}"));
        assert!(
            out.status.success(),
            "README command failed ({}): {command}\n--- transcript\n{transcript}",
            out.status
        );
        if command.starts_with("rampart vehicle") {
            vehicle_runs += 1;
        }
        if command.starts_with("rampart vehicle") && vehicle_runs == 1 {
            // What the publisher stated is what the owner is told (UNECE R156 §7.2).
            assert!(
                stdout.contains("navigation maps and routing fixes") && stdout.contains("40 s"),
                "the owner is not told the purpose and duration\n--- transcript\n{transcript}"
            );
            for (target, ecu) in [
                ("tbox/fw-2.0.bin", "TBOX-1"),
                ("ivi/nav-3.1.bin", "IVI-1"),
                ("seat/fw-5.2.bin", "SEAT-1"),
            ] {
                assert!(
                    stdout.contains(&format!("{target} installed on {ecu}")),
                    "{target} not installed on {ecu}\n--- transcript\n{transcript}"
                );
            }
        }
        if command.starts_with("rampart vehicle") && vehicle_runs == 2 {
            // The campaign's canary wave is this vehicle.
            assert!(
                stdout.contains("tbox/fw-2.1.bin installed on TBOX-1"),
                "the campaign's image was not installed\n--- transcript\n{transcript}"
            );
        }
        if command.starts_with("rampart campaign --data-dir srv status") {
            // Its one wave is installed; it soaks (--soak 10m) before it completes.
            assert!(
                stdout.contains("[##########] 1") && stdout.contains("soaks 600 s"),
                "the campaign's wave is not done\n--- transcript\n{transcript}"
            );
        }
        if command.starts_with("rampart admin --data-dir srv vehicle WVW") {
            // The legacy ECU's reports are the gateway's word, and the director says so.
            assert!(
                stdout.lines().any(|l| l.contains("SEAT-1")
                    && l.contains("gateway-vouched")
                    && l.contains("seat/fw-5.2.bin")),
                "the legacy ECU is not shown as gateway-vouched\n--- transcript\n{transcript}"
            );
        }
        if command.starts_with("rampart admin --data-dir srv rxswin") {
            assert!(
                stdout.contains("RXSWIN R156-ID4-2.1"),
                "the RXSWIN did not follow the install\n--- transcript\n{transcript}"
            );
        }
    }
    // README_TRANSCRIPT=1 cargo test -p rampart-cli --test readme -- --nocapture: what a new
    // operator sees, command by command.
    if std::env::var_os("README_TRANSCRIPT").is_some() {
        eprintln!("{transcript}");
    }
}

#[test]
fn readme_lines_split_into_command_and_background() {
    assert_eq!(
        split_line("rampart serve --data-dir srv &   # https://127.0.0.1:8443/"),
        ("rampart serve --data-dir srv".to_owned(), true)
    );
    assert_eq!(
        split_line("rampart delegate --path 'acme/*'   # a supplier"),
        ("rampart delegate --path 'acme/*'".to_owned(), false)
    );
}

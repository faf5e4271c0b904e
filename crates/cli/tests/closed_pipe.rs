//! No command panics on a closed pipe (`rampart … | head`): output to a reader that went
//! away ends the command quietly, as for any Unix tool (killed by SIGPIPE, or exit 0) —
//! never Rust's "failed printing to stdout" panic and exit 101.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn bin(name: &str) -> PathBuf {
    match name {
        "rampart" => PathBuf::from(env!("CARGO_BIN_EXE_rampart")),
        // The other binaries sit beside it in the target folder.
        other => Path::new(env!("CARGO_BIN_EXE_rampart"))
            .with_file_name(other)
            .to_path_buf(),
    }
}

/// Runs `bin args` with stdout a pipe whose reader is already closed.
fn run_into_closed_pipe(bin: &Path, args: &[&str]) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_quiet_end(what: &str, status: std::process::ExitStatus, stderr: &str) {
    assert!(
        !stderr.contains("panicked"),
        "{what} panicked on a closed pipe: {stderr}"
    );
    assert_ne!(status.code(), Some(101), "{what}: {stderr}");
    assert!(
        status.success() || status.signal() == Some(13),
        "{what} ended with {status}: {stderr}"
    );
}

#[test]
fn commands_that_print_end_quietly_when_the_reader_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let key_arg = key.to_str().unwrap();
    let rampart = bin("rampart");
    for args in [
        vec!["keygen", "--out", key_arg],
        vec!["--help"],
        vec!["--version"],
        vec!["repo", "--help"],
    ] {
        let (status, stderr) = run_into_closed_pipe(&rampart, &args);
        assert_quiet_end(&format!("rampart {}", args.join(" ")), status, &stderr);
    }
}

//! The demo as a new user runs it: `--keep` with a relative folder works, a non-empty
//! folder is refused rather than overwritten, and without `--keep` nothing is left in the
//! temporary directory (private keys included), whatever the outcome.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::process::{Command, Output, Stdio};

fn demo(cwd: &std::path::Path, tmp: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rampart-lab"))
        .arg("demo")
        .args(["--vehicles", "1"])
        .args(args)
        .current_dir(cwd)
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// What the demo printed: both streams, one after the other.
fn text(o: &Output) -> String {
    String::from_utf8_lossy(&[o.stdout.as_slice(), b"\n", o.stderr.as_slice()].concat())
        .into_owned()
}

#[test]
fn keep_takes_a_relative_folder_refuses_a_full_one_and_temp_leaves_nothing() {
    let cwd = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();

    let kept = demo(cwd.path(), tmp.path(), &["--keep", "keep"]);
    assert!(kept.status.success(), "{}", text(&kept));
    // The fleet includes a legacy ECU that the primary flashed as its gateway.
    let summary = text(&kept);
    assert!(
        summary.lines().any(|l| l.contains("SEAT-001")
            && l.contains("seat/fw-5.2.bin")
            && l.contains("flashed over UDS/DoIP")),
        "{summary}"
    );
    // One update goes as a delta, and the demo says what it saved.
    assert!(
        summary
            .lines()
            .any(|l| l.contains("IVI built nav 3.2 from 3.1") && l.contains("saved")),
        "{summary}"
    );
    // One install from a workshop's bundle, which the director learns of from the reports.
    assert!(
        summary
            .lines()
            .any(|l| l.contains("the director now sees bcm/fw-1.6.bin")),
        "{summary}"
    );
    let kept_files = cwd.path().join("keep").read_dir().unwrap().count();
    assert!(kept_files > 0, "--keep kept nothing");

    let again = demo(cwd.path(), tmp.path(), &["--keep", "keep"]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("not empty"), "{}", text(&again));

    let temp = demo(cwd.path(), tmp.path(), &[]);
    assert!(temp.status.success(), "{}", text(&temp));
    let left: Vec<_> = tmp
        .path()
        .read_dir()
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left in the temporary directory: {left:?}");
}

//! What the command line tells a new operator: usage lines that show what is required, and
//! options that work where people put them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::process::{Command, Output};

fn rampart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn tuf_client_usage_shows_the_metadata_url_its_workflow_needs() {
    let help = rampart(&["tuf-client", "--help"]);
    assert!(help.status.success());
    assert!(
        text(&help).contains("--metadata-url URL --metadata-dir DIR refresh"),
        "{}",
        text(&help)
    );
    let dir = tempfile::tempdir().unwrap();
    let missing = rampart(&[
        "tuf-client",
        "--metadata-dir",
        dir.path().to_str().unwrap(),
        "refresh",
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing).contains("--metadata-url URL is required"),
        "{}",
        text(&missing)
    );
}

#[test]
fn admin_options_work_after_the_subcommand_too() {
    // Before and after: both parse (and fail the same way, on the missing data dir).
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nowhere");
    let data = data.to_str().unwrap();
    let before = rampart(&["admin", "--data-dir", data, "events"]);
    let after = rampart(&["admin", "events", "--data-dir", data]);
    for o in [&before, &after] {
        assert_eq!(o.status.code(), Some(1), "{}", text(o));
        assert!(text(o).contains("nowhere"), "{}", text(o));
    }
}

//! Publishing as a release engineer meets it: one meaning of "version" per line, no silent
//! replacement of a published image, and what the owner will be told (purpose, duration)
//! stated by the publisher.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::Path;
use std::process::{Command, Output};

fn rampart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_version_is_named_once_and_a_published_image_is_not_replaced_silently() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("srv");
    assert!(rampart(&["repo", "init", "--data-dir", s(&data)])
        .status
        .success());
    let v1 = dir.path().join("fw-a.bin");
    let v1b = dir.path().join("fw-b.bin");
    std::fs::write(&v1, b"firmware A").unwrap();
    std::fs::write(&v1b, b"firmware B, same name").unwrap();
    let publish = |file: &Path, extra: &[&str]| {
        let mut args = vec![
            "publish",
            "--data-dir",
            s(&data),
            s(file),
            "--name",
            "tbox/fw.bin",
            "--hardware-id",
            "tbox-a",
            "--version",
            "2.0",
        ];
        args.extend_from_slice(extra);
        rampart(&args)
    };
    let first = publish(
        &v1,
        &["--purpose", "fixes the modem", "--install-seconds", "90"],
    );
    assert!(first.status.success(), "{}", text(&first));
    let line = text(&first);
    assert!(
        line.contains("version 2.0") && line.contains("release counter 1"),
        "{line}"
    );
    assert!(line.contains("targets metadata v2"), "{line}");
    assert!(!line.contains("targets version"), "{line}");

    // The same name with other bytes: refused, and the published image stays.
    let again = publish(&v1b, &[]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("--replace"), "{}", text(&again));
    let listed: serde_json::Value = serde_json::from_slice(
        &std::fs::read(newest_targets(&data.join("public/image/metadata"))).unwrap(),
    )
    .unwrap();
    let custom = &listed["signed"]["targets"]["tbox/fw.bin"]["custom"];
    assert_eq!(custom["purpose"], "fixes the modem", "{custom}");
    assert_eq!(custom["install_seconds"], 90, "{custom}");

    // Said on purpose, it replaces.
    let replaced = publish(&v1b, &["--replace"]);
    assert!(replaced.status.success(), "{}", text(&replaced));
}

/// The newest `N.targets.json` of a metadata folder.
fn newest_targets(dir: &Path) -> std::path::PathBuf {
    let mut versions: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_suffix(".targets.json")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    versions.sort();
    versions.pop().unwrap().1
}

//! `rampart pki issue / revoke / revoked / unrevoke` on a data directory, as an operator runs
//! them (the server's refusal of revoked vehicles is tested in the server's API suite).
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

fn ok(args: &[&str]) -> String {
    let out = rampart(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "rampart {args:?}: {text}");
    text
}

#[test]
fn revoke_by_vin_and_serial_then_list_and_lift() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let out_dir = dir.path().join("certs");
    ok(&["repo", "init", "--data-dir", data]);
    let issued = ok(&[
        "pki",
        "issue",
        "--data-dir",
        data,
        "--vin",
        "WVWZZZ1JZXW000001",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let serial = issued
        .lines()
        .find_map(|l| l.strip_prefix("serial "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("pki issue prints the serial")
        .to_owned();
    assert!(Path::new(&out_dir.join("WVWZZZ1JZXW000001.pem")).is_file());

    assert!(ok(&["pki", "revoked", "--data-dir", data]).contains("no revoked certificates"));
    ok(&[
        "pki",
        "revoke",
        "--data-dir",
        data,
        "--vin",
        "WVWZZZ1JZXW000001",
        "--reason",
        "stolen vehicle",
    ]);
    ok(&["pki", "revoke", "--data-dir", data, "--serial", &serial]);
    let listed = ok(&["pki", "revoked", "--data-dir", data]);
    assert!(listed.contains("vin WVWZZZ1JZXW000001"), "{listed}");
    assert!(listed.contains("stolen vehicle"), "{listed}");
    assert!(listed.contains(&format!("serial {serial}")), "{listed}");

    // Nothing to revoke, a bad VIN, a bad serial: refused, nothing written.
    for bad in [
        &["pki", "revoke", "--data-dir", data][..],
        &["pki", "revoke", "--data-dir", data, "--vin", "../x"],
        &["pki", "revoke", "--data-dir", data, "--serial", "not-hex"],
    ] {
        assert!(!rampart(bad).status.success(), "{bad:?}");
    }
    assert_eq!(
        ok(&["pki", "revoked", "--data-dir", data]).lines().count(),
        2
    );
    assert!(ok(&[
        "pki",
        "unrevoke",
        "--data-dir",
        data,
        "--vin",
        "WVWZZZ1JZXW000001"
    ])
    .contains("lifted 1"));
    let listed = ok(&["pki", "revoked", "--data-dir", data]);
    assert!(!listed.contains("vin WVWZZZ1JZXW000001"), "{listed}");
}

#[test]
fn content_kek_rotates_to_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    ok(&["repo", "init", "--data-dir", data_s]);
    let image = dir.path().join("nav.bin");
    std::fs::write(&image, b"maps").unwrap();
    ok(&[
        "publish",
        "--data-dir",
        data_s,
        image.to_str().unwrap(),
        "--name",
        "ivi/nav.bin",
        "--hardware-id",
        "ivi-x",
        "--encrypt",
    ]);
    // --to is required for the KEK.
    assert!(
        !rampart(&["rotate", "--data-dir", data_s, "--role", "content-kek"])
            .status
            .success()
    );
    let new = data.join("online-keys").join("content-kek-2");
    let out = ok(&[
        "rotate",
        "--data-dir",
        data_s,
        "--role",
        "content-kek",
        "--to",
        new.to_str().unwrap(),
    ]);
    assert!(out.contains("1 content key(s) re-sealed"), "{out}");
    let config = std::fs::read_to_string(data.join("rampart.toml")).unwrap();
    assert!(config.contains("content-kek-2"), "{config}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&new).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

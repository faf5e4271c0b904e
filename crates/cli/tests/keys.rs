//! Keys a new operator makes with `rampart keygen` are standard files other tools read:
//! PKCS#8 private keys and SubjectPublicKeyInfo public keys that OpenSSL 3 opens (an
//! implementation we did not write), and the public half is what `rampart delegate --key`
//! takes, as the README shows.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn rampart(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `rampart args`, which must succeed.
fn rampart_ok(args: &[&str]) {
    let out = rampart(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rampart {}: {stderr}", args.join(" "));
}

fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed (scripts/test checks it)")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn keygen_writes_keys_openssl_reads_and_a_public_key_it_matches() {
    let dir = tempfile::tempdir().unwrap();
    for scheme in ["ed25519", "ecdsa", "rsa"] {
        let private: PathBuf = dir.path().join(format!("{scheme}.pem"));
        let public: PathBuf = dir.path().join(format!("{scheme}.pub.pem"));
        rampart_ok(&[
            "keygen",
            "--scheme",
            scheme,
            "--out",
            s(&private),
            "--public-out",
            s(&public),
        ]);
        let read = openssl(&["pkey", "-in", s(&private), "-noout"]);
        assert!(
            read.status.success(),
            "OpenSSL cannot read the {scheme} private key: {}",
            String::from_utf8_lossy(&read.stderr)
        );
        // OpenSSL's public half of the private key is exactly the public key file.
        let derived = openssl(&["pkey", "-in", s(&private), "-pubout"]);
        assert!(derived.status.success());
        let written = std::fs::read(&public).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&derived.stdout).trim(),
            String::from_utf8_lossy(&written).trim(),
            "{scheme}"
        );
        let pubin = openssl(&["pkey", "-pubin", "-in", s(&public), "-noout"]);
        assert!(pubin.status.success(), "{scheme}");
    }
}

#[test]
fn a_public_key_openssl_made_is_what_delegate_takes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("srv");
    rampart_ok(&["repo", "init", "--data-dir", s(&data)]);
    // A supplier makes its key with OpenSSL and sends the public half.
    let private = dir.path().join("acme.pem");
    let public = dir.path().join("acme.pub.pem");
    assert!(
        openssl(&["genpkey", "-algorithm", "ed25519", "-out", s(&private)])
            .status
            .success()
    );
    assert!(
        openssl(&["pkey", "-in", s(&private), "-pubout", "-out", s(&public)])
            .status
            .success()
    );
    rampart_ok(&[
        "delegate",
        "--data-dir",
        s(&data),
        "--name",
        "acme",
        "--path",
        "acme/*",
        "--hardware-id",
        "ivi-x",
        "--key",
        s(&public),
    ]);
    // The private key file OpenSSL made is read too (its public half is taken).
    rampart_ok(&[
        "delegate",
        "--data-dir",
        s(&data),
        "--name",
        "acme-tools",
        "--path",
        "tools/*",
        "--key",
        s(&private),
    ]);
}

/// After the offline keys moved away, as the README says, publishing says where the key was
/// looked for and how to sign instead: `--key`, or `--export-unsigned` and offline signing.
#[test]
fn publishing_without_the_offline_key_says_how_to_sign() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("srv");
    rampart_ok(&["repo", "init", "--data-dir", s(&data)]);
    std::fs::rename(data.join("offline-keys"), dir.path().join("usb-stick")).unwrap();
    let image = dir.path().join("fw.bin");
    std::fs::write(&image, b"firmware").unwrap();
    let out = rampart(&[
        "publish",
        "--data-dir",
        s(&data),
        s(&image),
        "--hardware-id",
        "tbox-a",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for hint in [
        "image-targets.pem",
        "--key",
        "--export-unsigned",
        "rampart sign",
    ] {
        assert!(stderr.contains(hint), "{hint} missing: {stderr}");
    }
    // And the hint works: signing with the key where it now is.
    let key = dir.path().join("usb-stick/image-targets.pem");
    rampart_ok(&[
        "publish",
        "--data-dir",
        s(&data),
        s(&image),
        "--hardware-id",
        "tbox-a",
        "--key",
        s(&key),
    ]);
}

//! The commands an operator types, run as the operator runs them: fleet PKI (`pki issue /
//! revoke / revoked / unrevoke`, the content KEK), keys that other tools read (`keygen`, and
//! OpenSSL — an implementation we did not write — on the other side), publishing (one meaning
//! of "version" per line, no silent replacement, what the owner will be told), and what the
//! command line itself tells a new operator.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn rampart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(args)
        .output()
        .unwrap()
}

/// What a command printed, stdout then stderr.
fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `rampart args`, which must succeed; what it printed.
fn rampart_ok(args: &[&str]) -> String {
    let out = rampart(args);
    let printed = text(&out);
    assert!(
        out.status.success(),
        "rampart {}: {printed}",
        args.join(" ")
    );
    printed
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

mod pki {
    use super::*;

    #[test]
    fn revoke_by_vin_and_serial_then_list_and_lift() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let data = data.to_str().unwrap();
        let out_dir = dir.path().join("certs");
        rampart_ok(&["repo", "init", "--data-dir", data]);
        let issued = rampart_ok(&[
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

        assert!(
            rampart_ok(&["pki", "revoked", "--data-dir", data]).contains("no revoked certificates")
        );
        rampart_ok(&[
            "pki",
            "revoke",
            "--data-dir",
            data,
            "--vin",
            "WVWZZZ1JZXW000001",
            "--reason",
            "stolen vehicle",
        ]);
        rampart_ok(&["pki", "revoke", "--data-dir", data, "--serial", &serial]);
        let listed = rampart_ok(&["pki", "revoked", "--data-dir", data]);
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
            rampart_ok(&["pki", "revoked", "--data-dir", data])
                .lines()
                .count(),
            2
        );
        assert!(rampart_ok(&[
            "pki",
            "unrevoke",
            "--data-dir",
            data,
            "--vin",
            "WVWZZZ1JZXW000001"
        ])
        .contains("lifted 1"));
        let listed = rampart_ok(&["pki", "revoked", "--data-dir", data]);
        assert!(!listed.contains("vin WVWZZZ1JZXW000001"), "{listed}");
    }

    #[test]
    fn content_kek_rotates_to_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let data_s = data.to_str().unwrap();
        rampart_ok(&["repo", "init", "--data-dir", data_s]);
        let image = dir.path().join("nav.bin");
        std::fs::write(&image, b"maps").unwrap();
        rampart_ok(&[
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
        let out = rampart_ok(&[
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
}

mod keys {
    use super::*;

    fn openssl(args: &[&str]) -> std::process::Output {
        Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl is installed (scripts/test checks it)")
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
        let publish = |extra: &[&str]| {
            let mut args = vec!["publish", "--data-dir", s(&data), s(&image)];
            args.extend_from_slice(&["--hardware-id", "tbox-a"]);
            args.extend_from_slice(extra);
            rampart(&args)
        };
        let out = publish(&[]);
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
        let signed = publish(&["--key", s(&key)]);
        assert!(signed.status.success(), "{}", text(&signed));
    }
}

mod publish {
    use super::*;

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
}

mod usage {
    use super::*;

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
}

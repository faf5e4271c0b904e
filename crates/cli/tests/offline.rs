//! End to end, offline updates (issue 18): `rampart offline-bundle create` for a vehicle with
//! pending updates, `rampart vehicle --from-bundle` with real ECU processes (full verification
//! of both repositories from the bundle, an encrypted image, installs), the signed reports
//! written to a file, and `rampart admin import-reports` telling the director — once: the same
//! file again is a replay.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::Path;
use std::process::{Command, Output};

use rampart_lab::{image_bytes, Lab, LabOptions};

fn bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_rampart"))
}

fn text(o: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn rampart(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// `rampart vehicle --from-bundle BUNDLE` for the lab's vehicle 0, with automatic consent.
fn from_bundle(lab: &Lab, bundle: &Path, reports: &Path) -> Output {
    rampart(&[
        os("vehicle"),
        os("--config"),
        lab.vehicles[0].primary_config.as_os_str(),
        os("--from-bundle"),
        bundle.as_os_str(),
        os("--reports"),
        reports.as_os_str(),
        os("--consent"),
        os("auto"),
        os("--json"),
    ])
}

fn import(lab: &Lab, reports: &Path) -> Output {
    rampart(&[
        os("admin"),
        os("--data-dir"),
        lab.layout.root().as_os_str(),
        os("--server"),
        os(lab.url.trim_end_matches('/')),
        os("import-reports"),
        reports.as_os_str(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workshop_bundle_installs_offline_and_the_reports_reach_the_director_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::create(LabOptions::new(dir.path(), bin(), 1))
        .await
        .unwrap();
    lab.start_ecus().await.unwrap();
    for (name, hw, len, encrypt) in [
        ("tbox/fw-2.0.bin", "tbox-a", 300_000, false),
        ("ivi/app-3.1.bin", "ivi-x", 400_000, true),
        ("bcm/fw-1.4.bin", "bcm-1", 64_000, false),
    ] {
        lab.release(name, hw, "2", &image_bytes(name, len), encrypt)
            .await
            .unwrap();
    }
    let vin = lab.vehicles[0].vin.clone();
    let before = lab.installed(&vin).await.unwrap();

    // The workshop's bundle.
    let bundle = dir.path().join("usb/WRAMPART.bundle");
    std::fs::create_dir_all(bundle.parent().unwrap()).unwrap();
    let made = rampart(&[
        os("offline-bundle"),
        os("create"),
        os("--data-dir"),
        lab.layout.root().as_os_str(),
        os("--vin"),
        os(&vin),
        os("--out"),
        bundle.as_os_str(),
    ]);
    assert!(made.status.success(), "{}", text(&made));
    assert!(
        String::from_utf8_lossy(&made.stdout).contains("3 image file(s)"),
        "{}",
        text(&made)
    );

    // The vehicle, from the bundle.
    let reports = dir.path().join("usb/reports.jsonl");
    let run = from_bundle(&lab, &bundle, &reports);
    assert!(run.status.success(), "{}", text(&run));
    let stdout = String::from_utf8_lossy(&run.stdout);
    let report: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .expect("a JSON report"),
    )
    .unwrap();
    let updates = report["updates"].as_array().unwrap();
    assert_eq!(updates.len(), 3, "{report}");
    assert!(
        updates.iter().all(|u| u["status"] == "Installed"),
        "{report}\n{}",
        text(&run)
    );
    let v = &lab.vehicles[0];
    assert!(
        std::fs::read(v.ecus[1].dir.join("slot-b")).unwrap()
            == image_bytes("ivi/app-3.1.bin", 400_000)
    );
    // The director does not know yet: the vehicle never went online.
    assert_eq!(lab.installed(&vin).await.unwrap(), before);
    let lines = std::fs::read_to_string(&reports).unwrap();
    assert!(lines.lines().count() >= 2, "{lines}");

    // The workshop uploads the reports: the director sees what was installed.
    let imported = import(&lab, &reports);
    assert!(imported.status.success(), "{}", text(&imported));
    let installed = lab.installed(&vin).await.unwrap();
    assert_eq!(
        installed.values().cloned().collect::<Vec<_>>(),
        ["bcm/fw-1.4.bin", "ivi/app-3.1.bin", "tbox/fw-2.0.bin"],
        "{installed:?}"
    );
    // The same file again: every manifest is a replay.
    let again = import(&lab, &reports);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("replay"),
        "{}",
        text(&again)
    );
    lab.stop().await.unwrap();
}

//! End to end, deltas (issue 18): a server, a primary and its ECUs as real processes. A
//! release published with `--delta-from` the running one reaches a full-verification ECU
//! (encrypted for it) and a partial-verification ECU (plain) as deltas, each built from the
//! running slot into the other and checked against the full image's signed hashes; an ECU
//! whose running slot is not the delta's source refuses the delta, and the primary installs the
//! whole image instead.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use rampart_lab::{image_bytes, Lab, LabOptions};
use rampart_server::ops::PublishRequest;

fn bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_rampart"))
}

fn dump(run: &rampart_lab::VehicleRun) -> String {
    format!("--- stdout\n{}\n--- stderr\n{}", run.stdout, run.stderr)
}

/// The next release of `old`: some bytes changed, some inserted, a new tail.
fn next(old: &[u8]) -> Vec<u8> {
    let mut new = old.to_vec();
    for b in new.iter_mut().skip(4096).step_by(509).take(300) {
        *b = b.wrapping_add(1);
    }
    new.splice(90_000..90_000, image_bytes("inserted", 2_000));
    new.extend_from_slice(&image_bytes("tail", 3_000));
    new
}

/// Publishes `v1` of the IVI (encrypted) and BCM images, installs them, then publishes `v2`
/// of each with a delta from `v1` and assigns it.
async fn installed_v1_then_v2_with_deltas(lab: &Lab) -> [(String, Vec<u8>); 2] {
    let ivi1 = image_bytes("ivi 1", 400_000);
    let bcm1 = image_bytes("bcm 1", 200_000);
    lab.release("ivi/app-1.bin", "ivi-x", "1", &ivi1, true)
        .await
        .unwrap();
    lab.release("bcm/fw-1.bin", "bcm-1", "1", &bcm1, false)
        .await
        .unwrap();
    let run = lab.run_vehicle(0, "auto").await.unwrap();
    assert!(run.success, "{}", dump(&run));
    let mut out = Vec::new();
    for (old_name, name, hw, old, encrypt) in [
        ("ivi/app-1.bin", "ivi/app-2.bin", "ivi-x", &ivi1, true),
        ("bcm/fw-1.bin", "bcm/fw-2.bin", "bcm-1", &bcm1, false),
    ] {
        let new = next(old);
        let req = lab.image_request(name, hw, &new).unwrap();
        let published = lab
            .publish(&PublishRequest {
                encrypt,
                delta_from: vec![old_name.to_owned()],
                ..req
            })
            .await
            .unwrap();
        assert_eq!(published.deltas.len(), 1);
        assert!(
            published.deltas[0].1 < new.len() as u64 / 10,
            "{:?}",
            published.deltas
        );
        lab.assign_all(name, hw, encrypt).await.unwrap();
        out.push((name.to_owned(), new));
    }
    [out[0].clone(), out[1].clone()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_install_plain_and_encrypted_and_save_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::create(LabOptions::new(dir.path(), bin(), 1))
        .await
        .unwrap();
    lab.start_ecus().await.unwrap();
    let [(ivi2, ivi_bytes), (bcm2, bcm_bytes)] = installed_v1_then_v2_with_deltas(&lab).await;

    let run = lab.run_vehicle(0, "auto").await.unwrap();
    assert!(run.success, "{}", dump(&run));
    let report = run.report.clone().unwrap();
    let updates = report["updates"].as_array().unwrap();
    assert_eq!(updates.len(), 2, "{report}");
    for u in updates {
        assert_eq!(u["status"], "Installed", "{report}\n{}", dump(&run));
        let (sent, saved) = (u["bytes"].as_u64().unwrap(), u["saved_bytes"].as_u64());
        assert!(
            saved.is_some_and(|s| s > sent * 5),
            "{u}: a delta should save most of the bytes\n{}",
            dump(&run)
        );
    }
    assert!(run.stdout.contains("(delta)") || run.stderr.contains("(delta)"));
    // The slots hold exactly the new images, built from the old ones.
    let v = &lab.vehicles[0];
    let slot = |i: usize| std::fs::read(v.ecus[i].dir.join("slot-a")).unwrap();
    assert!(slot(1) == ivi_bytes, "IVI slot A is not {ivi2}");
    assert!(slot(2) == bcm_bytes, "BCM slot A is not {bcm2}");
    let installed = lab.installed(&v.vin).await.unwrap();
    assert!(installed.values().any(|t| *t == ivi2), "{installed:?}");
    assert!(installed.values().any(|t| *t == bcm2), "{installed:?}");
    // The encrypted delta is public only as ciphertext.
    for f in std::fs::read_dir(lab.layout.image_targets().join("ivi")).unwrap() {
        assert!(f.unwrap().file_name().to_string_lossy().ends_with(".enc"));
    }
    lab.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_slot_that_is_not_the_source_gets_the_whole_image() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::create(LabOptions::new(dir.path(), bin(), 1))
        .await
        .unwrap();
    lab.start_ecus().await.unwrap();
    let [_, (bcm2, bcm_bytes)] = installed_v1_then_v2_with_deltas(&lab).await;
    // The BCM's running slot (B, after the first update) changed under its record.
    let v = &lab.vehicles[0];
    let running = v.ecus[2].dir.join("slot-b");
    let mut bytes = std::fs::read(&running).unwrap();
    bytes[100] ^= 0xFF;
    std::fs::write(&running, &bytes).unwrap();

    let run = lab.run_vehicle(0, "auto").await.unwrap();
    assert!(run.success, "{}", dump(&run));
    let report = run.report.clone().unwrap();
    let bcm = report["updates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["target"] == bcm2.as_str())
        .unwrap()
        .clone();
    assert_eq!(bcm["status"], "Installed", "{report}\n{}", dump(&run));
    assert!(
        bcm.get("saved_bytes").is_none(),
        "the whole image went: {bcm}"
    );
    assert!(
        run.stdout.contains("delta-source-mismatch")
            || run.stderr.contains("delta-source-mismatch"),
        "{}",
        dump(&run)
    );
    assert!(std::fs::read(v.ecus[2].dir.join("slot-a")).unwrap() == bcm_bytes);
    lab.stop().await.unwrap();
}

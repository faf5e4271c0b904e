//! `rampart vehicle --once` exits as its help says: 0 only when every update due installed
//! and every ECU answered; 1 when something failed (an update, an ECU, the server); 3 when
//! nothing failed but the owner declined (or a precondition held the update back). The JSON
//! report is printed in every case.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use rampart_lab::{image_bytes, Lab, LabOptions};

fn bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_rampart"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_exits_1_when_an_ecu_is_unreachable_3_when_declined_0_when_complete() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::create(LabOptions::new(dir.path(), bin(), 1))
        .await
        .unwrap();
    lab.start_ecus().await.unwrap();
    lab.release(
        "ivi/app-2.0.bin",
        "ivi-x",
        "2.0",
        &image_bytes("ivi 2.0", 100_000),
        false,
    )
    .await
    .unwrap();

    // The owner declines: nothing failed, nothing installed.
    let declined = lab.run_vehicle(0, "deny").await.unwrap();
    assert_eq!(declined.code, Some(3), "{}", declined.stderr);
    assert!(declined.report.is_some(), "the JSON report is printed");

    // The body controller does not answer: the IVI installs, the cycle still failed.
    lab.vehicles[0].ecus[2].stop().await.unwrap();
    let unreachable = lab.run_vehicle(0, "auto").await.unwrap();
    assert_eq!(unreachable.code, Some(1), "{}", unreachable.stderr);
    let report = unreachable
        .report
        .clone()
        .expect("the JSON report is printed");
    assert!(
        report["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("ecu-unreachable"),
        "{report}"
    );
    assert!(
        unreachable.stderr.contains("ecu-unreachable"),
        "the error line names the rule: {}",
        unreachable.stderr
    );

    // Every ECU back: nothing is due and everyone answered.
    let bin = lab.options.bin.clone();
    let bcm = &mut lab.vehicles[0].ecus[2];
    bcm.start(&bin).unwrap();
    bcm.listening().await.unwrap();
    lab.write_primary_config(0, None).unwrap();
    let complete = lab.run_vehicle(0, "auto").await.unwrap();
    assert_eq!(complete.code, Some(0), "{}", complete.stderr);
}

//! Every attack-lab scenario is a test: `rampart attack --scenario NAME --json` against a real
//! fleet on loopback must report `defeated` (the attack reached the vehicle and every check
//! held). A scenario that cannot show the attack reached the system reports `inconclusive`
//! and fails here too.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::process::Command;

/// Runs `rampart attack --json ARGS…` in a fresh lab; returns the first JSON outcome and
/// whether the command succeeded.
fn attack(args: &[&str]) -> (serde_json::Value, bool) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rampart-lab"))
        .args(["attack", "--json"])
        .args(args)
        .arg("--keep")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let outcome = stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no JSON outcome for {args:?}:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (outcome, out.status.success())
}

/// Scenarios that set the vehicle's clock with faketime (a Debian package).
const NEED_FAKETIME: &[&str] = &["bundle-expired"];

fn run(name: &str) {
    if NEED_FAKETIME.contains(&name)
        && !["/usr/bin/faketime", "/usr/local/bin/faketime"]
            .iter()
            .any(|p| std::path::Path::new(p).exists())
    {
        // scripts/test installs faketime and sets RAMPART_REQUIRE_FAKETIME=1, so CI runs
        // this; a plain `cargo test` on a machine without it says so and goes on.
        assert!(
            !std::env::var("RAMPART_REQUIRE_FAKETIME").is_ok_and(|v| v == "1"),
            "faketime is missing (apt: faketime; scripts/test installs it)"
        );
        eprintln!(
            "skipped {name}: faketime is not installed (apt: faketime; scripts/test installs it)"
        );
        return;
    }
    let (outcome, success) = attack(&["--scenario", name]);
    assert_eq!(outcome["name"], name);
    assert_eq!(
        outcome["verdict"],
        "defeated",
        "{}",
        serde_json::to_string_pretty(&outcome).unwrap()
    );
    assert!(
        !outcome["evidence"].as_array().unwrap().is_empty(),
        "no evidence: {outcome}"
    );
    assert_eq!(
        outcome["incident"]["ok"], true,
        "the V-SOC did not raise the incident this attack should: {}",
        outcome["incident"]
    );
    assert!(success);
}

macro_rules! scenarios {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                run($name);
            }
        )*

        #[test]
        fn every_scenario_of_the_lab_has_a_test() {
            let listed = Command::new(env!("CARGO_BIN_EXE_rampart-lab")).args(["attack", "--list"]).output().unwrap();
            let listed = String::from_utf8_lossy(&listed.stdout);
            let listed = listed.split("Negative controls").next().unwrap();
            let tested = [$($name),*];
            for line in listed.lines().filter(|l| l.starts_with("  ") && !l.starts_with("    ")) {
                assert!(tested.contains(&line.trim()), "scenario {} has no test", line.trim());
            }
            assert_eq!(listed.lines().filter(|l| l.trim_start().starts_with("attack:")).count(), tested.len());
        }
    };
}

scenarios! {
    eavesdrop => "eavesdrop",
    drop_request => "drop-request",
    slow_retrieval => "slow-retrieval",
    freeze => "freeze",
    partial_bundle => "partial-bundle",
    rollback => "rollback",
    endless_data => "endless-data",
    mix_and_match => "mix-and-match",
    arbitrary_software => "arbitrary-software",
    director_key_compromise => "director-key-compromise",
    image_online_keys_compromise => "image-online-keys-compromise",
    root_rotation => "root-rotation",
    compromised_secondary => "compromised-secondary",
    replayed_manifest => "replayed-manifest",
    in_vehicle_tamper => "in-vehicle-tamper",
    bus_indicator_erasure => "bus-indicator-erasure",
    request_flood => "request-flood",
    connection_flood => "connection-flood",
    uds_unauthenticated_download => "uds-unauthenticated-download",
    uds_security_brute_force => "uds-security-brute-force",
    uds_replayed_flash => "uds-replayed-flash",
    uds_wrong_block_counter => "uds-wrong-block-counter",
    uds_interrupted_flash => "uds-interrupted-flash",
    bundle_other_vehicle => "bundle-other-vehicle",
    bundle_expired => "bundle-expired",
    bundle_tampered => "bundle-tampered",
    bundle_rollback => "bundle-rollback",
    bundle_mixed => "bundle-mixed",
    bundle_truncated => "bundle-truncated",
    bundle_path_traversal => "bundle-path-traversal",
}

/// A negative control: the scenario against a deliberately naive component must come out
/// `succeeded`, failing the check that watches the missing control.
fn control(name: &str) {
    let (outcome, success) = attack(&["--control", name]);
    let pretty = serde_json::to_string_pretty(&outcome).unwrap();
    assert_eq!(outcome["outcome"]["verdict"], "succeeded", "{pretty}");
    assert_eq!(outcome["caught"], true, "{pretty}");
    let must_fail = outcome["control"]["failing_check"].as_str().unwrap();
    assert!(
        outcome["outcome"]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["ok"] == false && c["what"].as_str().unwrap().starts_with(must_fail)),
        "{pretty}"
    );
    assert!(success);
}

macro_rules! controls {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                control($name);
            }
        )*

        #[test]
        fn every_negative_control_has_a_test_and_every_position_a_control() {
            let listed = Command::new(env!("CARGO_BIN_EXE_rampart-lab")).args(["attack", "--list"]).output().unwrap();
            let listed = String::from_utf8_lossy(&listed.stdout);
            let controls = listed.split("Negative controls").nth(1).unwrap();
            let tested = [$($name),*];
            let names: Vec<&str> = controls
                .lines()
                .filter(|l| l.starts_with("  ") && !l.starts_with("    "))
                .map(str::trim)
                .collect();
            assert_eq!(names, tested);
            for position in ["network man in the middle", "hostile mirror", "in-vehicle link", "stolen online key", "compromised ECU", "replay to the server", "diagnostic link"] {
                assert!(controls.contains(&format!("position: {position}")), "no control for {position}");
            }
        }
    };
}

controls! {
    control_mitm_naive_vehicle => "mitm-naive-vehicle",
    control_mirror_naive_vehicle => "mirror-naive-vehicle",
    control_bus_naive_ecu => "bus-naive-ecu",
    control_stolen_key_naive_vehicle => "stolen-key-naive-vehicle",
    control_ecu_naive_director => "ecu-naive-director",
    control_replay_naive_director => "replay-naive-director",
    control_diag_naive_bootloader => "diag-naive-bootloader",
    control_diag_naive_verify => "diag-naive-verify",
}

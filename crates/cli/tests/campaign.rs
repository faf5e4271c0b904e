//! Campaigns end to end: a server, four vehicles with real primaries and ECUs as processes,
//! the operator's `rampart campaign` commands. A good release rolls out wave by wave; a
//! release whose image fails the body controller's health check halts by itself on the
//! canary (which rolls back), and the later wave never hears of it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::process::Command;

use rampart_lab::{image_bytes, Lab, LabOptions};
use serde_json::Value;

fn bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_rampart"))
}

/// `rampart campaign ARGS` against the lab's server; its stdout (it must succeed).
fn campaign(lab: &Lab, args: &[&str]) -> String {
    run(lab, "campaign", args)
}

/// `rampart SUBCOMMAND ARGS` against the lab's server; its stdout (it must succeed).
fn run(lab: &Lab, subcommand: &str, args: &[&str]) -> String {
    let out = Command::new(bin())
        .arg(subcommand)
        .args(args)
        .arg("--data-dir")
        .arg(lab.layout.root())
        .args(["--server", lab.url.trim_end_matches('/')])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "campaign {args:?}\n{stdout}\n{stderr}"
    );
    stdout
}

fn status(lab: &Lab, name: &str) -> Value {
    serde_json::from_str(&campaign(lab, &["status", name, "--json"])).unwrap()
}

/// The lab index of each vehicle of a campaign, in rollout order.
fn rollout(lab: &Lab, name: &str) -> Vec<usize> {
    status(lab, name)["vehicles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            lab.vehicles
                .iter()
                .position(|h| h.vin == v["vin"].as_str().unwrap())
                .unwrap()
        })
        .collect()
}

async fn bcm_of(lab: &Lab, i: usize) -> String {
    let v = &lab.vehicles[i];
    let bcm = &v.ecus[2].ecu_id;
    let installed = lab.installed(&v.vin).await.unwrap();
    installed
        .get(bcm)
        .cloned()
        .unwrap_or_else(|| panic!("{bcm}: {installed:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_rolls_out_in_waves_and_halts_itself_on_a_failing_canary() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::create(LabOptions::new(dir.path(), bin(), 4))
        .await
        .unwrap();
    lab.start_ecus().await.unwrap();

    // A good release, canary first.
    lab.publish_bytes(
        "bcm/fw-2.0.bin",
        "bcm-1",
        "2.0",
        &image_bytes("bcm 2.0", 40_000),
        false,
    )
    .await
    .unwrap();
    let created = campaign(
        &lab,
        &[
            "create",
            "--name",
            "bcm-2.0",
            "--image",
            "bcm/fw-2.0.bin",
            "--waves",
            "1,all",
            "--min-success",
            "100",
            "--max-failure",
            "0",
            "--soak",
            "0s",
            "--start",
            "--rxswin",
            "R156-BCM-2.0",
        ],
    );
    assert!(
        created.contains("campaign bcm-2.0: running, wave 1 of 2"),
        "{created}"
    );
    let order = rollout(&lab, "bcm-2.0");
    // A vehicle of the second wave is told nothing yet.
    let later = lab.run_vehicle(order[1], "auto").await.unwrap();
    assert!(later.success, "{}", later.stderr);
    assert_eq!(bcm_of(&lab, order[1]).await, "factory-bcm-1");
    // The canary installs; its confirming manifest starts wave 2.
    let canary = lab.run_vehicle(order[0], "auto").await.unwrap();
    assert!(canary.success, "{}", canary.stderr);
    assert_eq!(bcm_of(&lab, order[0]).await, "bcm/fw-2.0.bin");
    assert_eq!(status(&lab, "bcm-2.0")["campaign"]["wave"], 1);
    for &i in &order[1..] {
        let run = lab.run_vehicle(i, "auto").await.unwrap();
        assert!(run.success, "{}", run.stderr);
    }
    let done = status(&lab, "bcm-2.0");
    assert_eq!(done["campaign"]["state"], "completed", "{done:#}");
    let table = campaign(&lab, &["status", "bcm-2.0"]);
    assert!(table.contains("[##########] 3"), "{table}");
    // R156: the RXSWIN follows the confirmed install; the records export as CSV.
    let vin = lab.vehicles[order[0]].vin.clone();
    let rxswin = run(&lab, "admin", &["rxswin", "--vin", &vin]);
    assert!(
        rxswin.contains("RXSWIN R156-BCM-2.0") && rxswin.contains("bcm-2.0"),
        "{rxswin}\n{}\n{done:#}",
        run(&lab, "admin", &["records"])
    );
    let csv = run(
        &lab,
        "admin",
        &["records", "--campaign", "bcm-2.0", "--csv"],
    );
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 5, "{csv}");
    assert!(
        rows[0].starts_with("id,vin,ecu_id,from_target,to_target,rxswin"),
        "{csv}"
    );
    assert!(
        rows[1..]
            .iter()
            .all(|r| r.contains(",factory-bcm-1,bcm/fw-2.0.bin,R156-BCM-2.0,bcm-2.0,installed,")),
        "{csv}"
    );

    // A release whose image fails the BCM's health check after it boots.
    let mut broken = image_bytes("bcm 2.1", 40_000);
    broken.extend_from_slice(b"BROKEN");
    lab.publish_bytes("bcm/fw-2.1.bin", "bcm-1", "2.1", &broken, false)
        .await
        .unwrap();
    campaign(
        &lab,
        &[
            "create",
            "--name",
            "bcm-2.1",
            "--image",
            "bcm/fw-2.1.bin",
            "--waves",
            "1,all",
            "--max-failure",
            "0",
            "--soak",
            "0s",
            "--start",
        ],
    );
    let order = rollout(&lab, "bcm-2.1");
    let canary = lab.run_vehicle(order[0], "auto").await.unwrap();
    assert!(!canary.success, "the canary's install failed");
    assert!(canary.stderr.contains("boot-failed") || canary.stdout.contains("boot-failed"));
    // Rolled back to the release before, and the campaign halted at that check-in.
    assert_eq!(bcm_of(&lab, order[0]).await, "bcm/fw-2.0.bin");
    let halted = status(&lab, "bcm-2.1");
    assert_eq!(halted["campaign"]["state"], "halted", "{halted:#}");
    let reason = halted["campaign"]["reason"].as_str().unwrap();
    assert!(reason.contains("boot-failed"), "{reason}\n{halted:#}");
    assert_eq!(halted["vehicles"][0]["progress"], "rolled-back");
    // The later wave never receives it.
    for &i in &order[1..] {
        let run = lab.run_vehicle(i, "auto").await.unwrap();
        assert!(run.success, "{}", run.stderr);
        assert_eq!(bcm_of(&lab, i).await, "bcm/fw-2.0.bin");
    }
    let records = run(&lab, "admin", &["records", "--campaign", "bcm-2.1"]);
    assert!(
        records.contains("rolled-back") && records.contains("boot-failed"),
        "{records}"
    );
    let shown = campaign(&lab, &["status", "bcm-2.1"]);
    assert!(
        shown.contains("halted") && shown.contains("rolled-back"),
        "{shown}"
    );
    // The operator cancels it; it cannot be resumed after.
    let cancelled = campaign(
        &lab,
        &["cancel", "bcm-2.1", "--reason", "health check fails"],
    );
    assert!(cancelled.contains("cancelled"), "{cancelled}");
    let list = campaign(&lab, &["list"]);
    assert!(
        list.contains("bcm-2.0") && list.contains("completed"),
        "{list}"
    );
    lab.stop().await.unwrap();
}

/// The maintenance window travels signed with the instruction and the vehicle enforces it on
/// its own clock (here moved twelve hours on by `faketime`, while the server's says the window
/// is open); a paused campaign gives its next wave nothing until it is resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vehicle_keeps_its_window_and_a_paused_campaign_waits_for_resume() {
    let Some(faketime) = ["/usr/bin/faketime", "/usr/local/bin/faketime"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|p| p.exists())
    else {
        // scripts/test installs faketime and sets RAMPART_REQUIRE_FAKETIME=1, so CI runs
        // this; a plain `cargo test` on a machine without it says so and goes on.
        assert!(
            !std::env::var("RAMPART_REQUIRE_FAKETIME").is_ok_and(|v| v == "1"),
            "faketime is missing (apt: faketime; scripts/test installs it)"
        );
        eprintln!("skipped: faketime is not installed (apt: faketime; scripts/test installs it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::create(LabOptions::new(dir.path(), bin(), 2))
        .await
        .unwrap();
    lab.start_ecus().await.unwrap();
    lab.publish_bytes(
        "bcm/fw-2.0.bin",
        "bcm-1",
        "2.0",
        &image_bytes("bcm 2.0", 30_000),
        false,
    )
    .await
    .unwrap();
    // Open now on the server's clock, for an hour at least: two hours either side of this one.
    let now = chrono::Utc::now();
    let hour = |h: i64| {
        (now + chrono::Duration::hours(h))
            .format("%H:00")
            .to_string()
    };
    let window = format!("daily {}-{} UTC", hour(-2), hour(2));
    let vins: Vec<String> = lab.vehicles.iter().map(|v| v.vin.clone()).collect();
    campaign(
        &lab,
        &[
            "create",
            "--name",
            "windowed",
            "--image",
            "bcm/fw-2.0.bin",
            "--vin",
            &vins.join(","),
            "--waves",
            "1,all",
            "--min-success",
            "100",
            "--soak",
            "0s",
            "--window",
            &window,
            "--start",
        ],
    );
    campaign(&lab, &["pause", "windowed", "--reason", "hotline briefing"]);
    // Twelve hours on, on the vehicle's clock, the window is closed: it postpones (exit 3).
    let later = lab
        .run_vehicle_under(0, "auto", Some((faketime, &["-f", "+12h"])))
        .await
        .unwrap();
    assert_eq!(later.code, Some(3), "{}\n{}", later.stdout, later.stderr);
    assert!(
        later.stdout.contains("outside its maintenance window"),
        "{}",
        later.stdout
    );
    assert_eq!(bcm_of(&lab, 0).await, "factory-bcm-1");
    // On the real clock it installs (pausing did not take the canary's instruction back).
    let run = lab.run_vehicle(0, "auto").await.unwrap();
    assert!(run.success, "{}", run.stderr);
    assert_eq!(bcm_of(&lab, 0).await, "bcm/fw-2.0.bin");
    // Paused: the second wave is not started, whatever the canary did.
    let run = lab.run_vehicle(1, "auto").await.unwrap();
    assert!(run.success, "{}", run.stderr);
    assert_eq!(bcm_of(&lab, 1).await, "factory-bcm-1");
    assert_eq!(status(&lab, "windowed")["campaign"]["state"], "paused");
    // Resumed: judged at once, the second wave starts and the vehicle installs.
    let resumed = campaign(&lab, &["resume", "windowed"]);
    assert!(resumed.contains("running, wave 2 of 2"), "{resumed}");
    let run = lab.run_vehicle(1, "auto").await.unwrap();
    assert!(run.success, "{}", run.stderr);
    assert_eq!(bcm_of(&lab, 1).await, "bcm/fw-2.0.bin");
    lab.stop().await.unwrap();
}

//! End to end: a server, a vehicle's primary and its three ECUs (T-BOX and IVI with full
//! verification, a body controller with partial verification) as real processes on
//! loopback. An update — one image encrypted for its ECU — installs, and the director sees
//! it installed. Then the same images come from a plain static file server (the CDN case).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::process::Stdio;
use std::time::Duration;

use rampart_lab::{image_bytes, Lab, LabOptions};

fn bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_rampart"))
}

async fn lab(dir: &std::path::Path) -> Lab {
    let mut lab = Lab::create(LabOptions::new(dir, bin(), 1)).await.unwrap();
    lab.start_ecus().await.unwrap();
    lab
}

fn dump(run: &rampart_lab::VehicleRun) -> String {
    format!("--- stdout\n{}\n--- stderr\n{}", run.stdout, run.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_installs_on_full_and_partial_ecus_and_the_director_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab(dir.path()).await;
    for (name, hw, version, len, encrypt) in [
        ("tbox/fw-2.0.bin", "tbox-a", "2.0", 300_000, false),
        ("ivi/app-3.1.bin", "ivi-x", "3.1", 500_000, true),
        ("bcm/fw-1.4.bin", "bcm-1", "1.4", 64_000, false),
    ] {
        let seed = format!("{} {version}", &name[..name.find('/').unwrap()]);
        let bytes = image_bytes(&seed, len);
        lab.release(name, hw, version, &bytes, encrypt)
            .await
            .unwrap();
    }

    let run = lab.run_vehicle(0, "auto").await.unwrap();
    assert!(run.success, "{}", dump(&run));
    let report = run.report.clone().unwrap();
    let statuses: Vec<_> = report["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["status"].clone())
        .collect();
    assert_eq!(statuses.len(), 3, "{report}");
    assert!(
        statuses.iter().all(|s| s == "Installed"),
        "{report}\n{}",
        dump(&run)
    );
    assert!(report["updates"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["encrypted"] == true));

    let vin = lab.vehicles[0].vin.clone();
    let installed = lab.installed(&vin).await.unwrap();
    assert_eq!(
        installed.values().cloned().collect::<Vec<_>>(),
        ["bcm/fw-1.4.bin", "ivi/app-3.1.bin", "tbox/fw-2.0.bin"],
        "{installed:?}"
    );
    let assignments = lab
        .admin_get(&format!("assignments?vin={vin}"))
        .await
        .unwrap();
    assert!(
        assignments
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["status"] == "installed"),
        "{assignments}"
    );

    // The slots hold exactly the published images.
    let ivi = &lab.vehicles[0].ecus[1];
    assert_eq!(
        std::fs::read(ivi.dir.join("slot-b")).unwrap(),
        image_bytes("ivi 3.1", 500_000)
    );
    // The encrypted image never existed in plaintext on the public side.
    let public = lab.layout.image_targets().join("ivi");
    for f in std::fs::read_dir(&public).unwrap() {
        assert!(f.unwrap().file_name().to_string_lossy().ends_with(".enc"));
    }

    // Later cycles find nothing new: the director's answer to the manifest names the
    // timestamp the primary holds, so the primary does not ask for it (a request that would
    // have been answered 304) and verifies its copy again.
    let requests = || async {
        lab.metric("rampart_director_metadata_not_modified_total")
            .await
            .unwrap()
            + lab
                .metric("rampart_director_metadata_served_total")
                .await
                .unwrap()
    };
    // (The first cycle after the install gets new documents: its report completed the
    // assignments, which changes the instructions.)
    let mut counts = vec![requests().await];
    for _ in 0..2 {
        let again = lab.run_vehicle(0, "auto").await.unwrap();
        assert!(again.success, "{}", dump(&again));
        assert_eq!(
            again.report.unwrap()["updates"].as_array().unwrap().len(),
            0
        );
        counts.push(requests().await);
    }
    assert!(counts[1] > counts[0], "the first cycle fetched: {counts:?}");
    assert_eq!(
        counts[2], counts[1],
        "director metadata asked for on an unchanged cycle: {counts:?}"
    );
    lab.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_come_from_a_plain_static_mirror_the_cdn_case() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab(dir.path()).await;
    let bytes = image_bytes("tbox 2.1", 200_000);
    lab.release("tbox/fw-2.1.bin", "tbox-a", "2.1", &bytes, false)
        .await
        .unwrap();

    // A dumb static server (Python's http.server) on the public image folder.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut mirror = tokio::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(lab.layout.root().join("public/image"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mirror_url = format!("http://127.0.0.1:{port}/");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lab.write_primary_config(0, Some((&lab.url.clone(), Some(&mirror_url))))
        .unwrap();
    let run = lab.run_vehicle(0, "auto").await.unwrap();
    assert!(run.success, "{}", dump(&run));
    let report = run.report.unwrap();
    assert_eq!(report["updates"][0]["status"], "Installed", "{report}");
    assert_eq!(
        lab.installed(&lab.vehicles[0].vin).await.unwrap()[&lab.vehicles[0].ecus[0].ecu_id],
        "tbox/fw-2.1.bin"
    );
    mirror.kill().await.unwrap();
    lab.stop().await.unwrap();
}

/// `rampart vehicle --once` exits as its help says: 0 only when every update due installed
/// and every ECU answered; 1 when something failed (an update, an ECU, the server); 3 when
/// nothing failed but the owner declined (or a precondition held the update back). The JSON
/// report is printed whenever the cycle ran to its end.
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

/// A vehicle that trusts another fleet's CA, or whose server is down, says which, and what
/// to check — not reqwest's bare "error sending request".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_failures_name_their_cause_and_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = lab(dir.path()).await;
    let other = rampart_server::pki::init(&dir.path().join("other-pki"), &["localhost".into()], 30)
        .unwrap();
    let ca = lab.vehicles[0].dir.join("ca.pem");
    let genuine = std::fs::read(&ca).unwrap();
    std::fs::copy(&other.ca_cert, &ca).unwrap();
    let wrong_ca = lab.run_vehicle(0, "auto").await.unwrap();
    assert_eq!(wrong_ca.code, Some(1), "{}", dump(&wrong_ca));
    assert!(
        wrong_ca
            .stderr
            .contains("not signed by a CA this client trusts: check `ca`"),
        "{}",
        dump(&wrong_ca)
    );

    std::fs::write(&ca, genuine).unwrap();
    lab.stop_server().await.unwrap();
    let down = lab.run_vehicle(0, "auto").await.unwrap();
    assert_eq!(down.code, Some(1), "{}", dump(&down));
    assert!(
        down.stderr.contains("connection refused") && down.stderr.contains("is the server running"),
        "{}",
        dump(&down)
    );
}

/// An assignment the vehicle can never install — an older release than the ECU runs, written
/// into the director's database by an insider past the API's check — ends as `failed` with
/// the vehicle's rule instead of pending for ever, and the next cycle completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_the_vehicle_refuses_ends_failed_with_its_rule() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab(dir.path()).await;
    let vin = lab.vehicles[0].vin.clone();
    let bcm = lab.vehicles[0].ecus[2].ecu_id.clone();
    let current = image_bytes("bcm 2.0", 50_000);
    lab.release("bcm/fw-2.0.bin", "bcm-1", "2.0", &current, false)
        .await
        .unwrap();
    let first = lab.run_vehicle(0, "auto").await.unwrap();
    assert_eq!(first.code, Some(0), "{}", dump(&first));

    let old = image_bytes("bcm 0.9", 40_000);
    let file = dir.path().join("fw-0.9.bin");
    std::fs::write(&file, &old).unwrap();
    lab.publish(&rampart_server::ops::PublishRequest {
        name: Some("bcm/fw-0.9.bin".into()),
        release_counter: Some(0),
        ..rampart_server::ops::PublishRequest::new(file, "bcm-1")
    })
    .await
    .unwrap();
    lab.insider_assign(&vin, &bcm, "bcm/fw-0.9.bin", &old, 0)
        .await
        .unwrap();
    let refused = lab.run_vehicle(0, "auto").await.unwrap();
    assert_eq!(refused.code, Some(1), "{}", dump(&refused));

    let assignments = lab
        .admin_get(&format!("assignments?vin={vin}"))
        .await
        .unwrap();
    let old_one = assignments
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["target"] == "bcm/fw-0.9.bin")
        .unwrap();
    assert_eq!(old_one["status"], "failed", "{old_one}");
    let last_error = old_one["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.starts_with("release-counter-decreased: "),
        "{old_one}"
    );
    let next = lab.run_vehicle(0, "auto").await.unwrap();
    assert_eq!(next.code, Some(0), "{}", dump(&next));
}

/// `rampart publish --hash sha256`: the image lists one hash (what the vehicle then computes
/// per byte), and full and partial verification ECUs (one of them encrypted) install it; an
/// algorithm Rampart does not list is refused at publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_listing_only_sha256_install_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab(dir.path()).await;
    for (name, hw, encrypt) in [
        ("ivi/app-3.2.bin", "ivi-x", true),
        ("bcm/fw-1.5.bin", "bcm-1", false),
    ] {
        let request = lab
            .image_request(name, hw, &image_bytes(name, 150_000))
            .unwrap();
        lab.publish(&rampart_server::ops::PublishRequest {
            encrypt,
            hash_algorithms: vec!["sha256".into()],
            ..request
        })
        .await
        .unwrap();
        lab.assign_all(name, hw, encrypt).await.unwrap();
    }
    let images = lab.admin_get("images").await.unwrap();
    let listed: Vec<_> = images
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i.to_string().contains("3.2.bin") || i.to_string().contains("1.5.bin"))
        .collect();
    assert_eq!(listed.len(), 2, "{images}");
    for image in &listed {
        let hashes = &image["hashes"];
        assert!(
            hashes.get("sha256").is_some() && hashes.get("sha512").is_none(),
            "{image}"
        );
    }
    let run = lab.run_vehicle(0, "auto").await.unwrap();
    assert!(run.success, "{}", dump(&run));
    let report = run.report.unwrap();
    let updates = report["updates"].as_array().unwrap();
    assert_eq!(updates.len(), 2, "{report}");
    assert!(
        updates.iter().all(|u| u["status"] == "Installed"),
        "{report}"
    );

    let request = lab
        .image_request("bcm/fw-1.6.bin", "bcm-1", &image_bytes("x", 1000))
        .unwrap();
    let refused = lab
        .publish(&rampart_server::ops::PublishRequest {
            hash_algorithms: vec!["md5".into()],
            ..request
        })
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("--hash md5"), "{refused}");
    lab.stop().await.unwrap();
}

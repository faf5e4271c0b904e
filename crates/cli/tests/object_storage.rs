//! The image repository on S3-compatible object storage (`[image_store]`), against an S3
//! server we did not write (moto, `rampart_lab::s3`):
//! - a fleet updates from it: `rampart repo init --image-store`, images published (one only
//!   encrypted) into the bucket, a vehicle installs them through the server's `/image/`,
//!   another straight from the bucket as from a CDN; python-tuf's own client updates from
//!   the bucket too; nothing is written to the data directory's folder;
//! - writers on one bucket: concurrent publishes beside a re-signer all land, each in its own
//!   version (the lease serialises them);
//! - the fences: a lease held by a writer that died is taken over once it ended; a writer
//!   whose lease was lost cannot replace the timestamp; versions left by a writer that died
//!   mid-commit are skipped or replaced, never served half-written.
//!
//! Needs `moto_server` (`scripts/test` installs it into `.venv`); without it the tests say so
//! and pass, unless `RAMPART_REQUIRE_S3=1`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rampart_core::metadata::Envelope;
use rampart_lab::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use rampart_lab::{image_bytes, Lab, LabOptions};
use rampart_server::layout::Layout;
use rampart_server::ops::{self, PublishRequest};
use rampart_server::store::{ObjectStorage, PublicStore};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rampart"))
}

/// The S3 server, or `None` (test skipped) when moto is not installed.
fn s3() -> Option<S3Server> {
    // Every AWS client of this process (the repository's) signs with these.
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    match S3Server::start().unwrap() {
        Some(s) => Some(s),
        None => {
            assert!(
                std::env::var("RAMPART_REQUIRE_S3").ok().as_deref() != Some("1"),
                "moto_server is missing: ./scripts/python-env installs it into .venv"
            );
            eprintln!("skipped: moto_server (an S3-compatible server) is not installed");
            None
        }
    }
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(rampart_core::hash::sha256(bytes))
}

fn python() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    venv.exists().then_some(venv)
}

/// python-tuf's ngclient updates from `base` and checks `targets` (name, sha256).
fn python_tuf_updates_from(base: &str, root: &Path, targets: &[(&str, String)]) {
    let Some(python) = python() else {
        eprintln!("python-tuf check skipped: no .venv (./scripts/python-env)");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/tuf_over_http.py");
    let mut cmd = std::process::Command::new(python);
    cmd.arg(script).arg(base).arg(root);
    for (name, sha) in targets {
        cmd.arg(name).arg(sha);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python-tuf from {base}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok negative control"), "{stdout}");
}

/// The updates of a vehicle's cycle report.
fn updates(run: &rampart_lab::VehicleRun) -> impl Iterator<Item = &serde_json::Value> {
    run.report.as_ref().unwrap()["updates"]
        .as_array()
        .unwrap()
        .iter()
}

/// Files directly in a local folder (none when it does not exist).
fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_updates_from_an_image_repository_on_object_storage() {
    let Some(s3) = s3() else { return };
    s3.create_bucket("fleet-images").unwrap();
    // The CDN in front of the bucket reads it anonymously; writers sign.
    s3.allow_public_reads("fleet-images").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = LabOptions {
        image_store: Some(s3.image_store("fleet-images", "oem/prod")),
        ..LabOptions::new(dir.path(), bin(), 2)
    };
    let mut lab = Lab::create(options).await.unwrap();
    lab.start_ecus().await.unwrap();
    let images = [
        ("tbox/fw-2.0.bin", "tbox-a", "2.0", 300_000, false),
        ("ivi/app-3.1.bin", "ivi-x", "3.1", 500_000, true),
        ("bcm/fw-1.4.bin", "bcm-1", "1.4", 64_000, false),
    ];
    for (name, hw, version, len, encrypt) in images {
        let bytes = image_bytes(name, len);
        lab.release(name, hw, version, &bytes, encrypt)
            .await
            .unwrap();
    }

    // Nothing of the repository in the data directory: it is all in the bucket.
    assert_eq!(files_in(&lab.layout.image_metadata()), Vec::<String>::new());
    assert_eq!(files_in(&lab.layout.image_targets()), Vec::<String>::new());
    let config = std::fs::read_to_string(lab.layout.config_file()).unwrap();
    assert!(
        config.contains("[image_store]") && config.contains("s3://fleet-images/oem/prod"),
        "{config}"
    );

    // The server answers what the bucket holds, and resumes a download from an offset.
    let base = lab.url.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(
                &std::fs::read(lab.layout.pki().join("ca.pem")).unwrap(),
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    let (status, from_bucket) = s3
        .get("/fleet-images/oem/prod/metadata/timestamp.json")
        .unwrap();
    assert_eq!(status, 200);
    let via_server = http
        .get(format!("{base}/image/metadata/timestamp.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        via_server.status(),
        200,
        "{:?}",
        via_server.headers().clone()
    );
    assert_eq!(via_server.bytes().await.unwrap().as_ref(), from_bucket);
    let tbox = image_bytes("tbox/fw-2.0.bin", 300_000);
    let path = format!("{base}/image/targets/tbox/{}.fw-2.0.bin", sha256(&tbox));
    let tail = http
        .get(&path)
        .header("Range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!(
        tail.headers()["content-range"].to_str().unwrap(),
        "bytes 100000-299999/300000"
    );
    assert_eq!(tail.bytes().await.unwrap().as_ref(), &tbox[100_000..]);
    for missing in [
        "/image/metadata/99.root.json",
        "/image/.writer-lease",
        "/image/targets/..%2Fmetadata%2F1.root.json",
    ] {
        let r = http.get(format!("{base}{missing}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{missing}");
    }
    // Through the server's /image/ (read from the bucket), as a vehicle configured with only
    // the server's address does.
    let run = lab.run_vehicle(0, "auto").await.unwrap();
    assert!(run.success, "{}\n{}", run.stdout, run.stderr);
    let statuses: Vec<String> = updates(&run)
        .map(|u| u["status"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(statuses, ["Installed"; 3], "{}", run.stderr);

    // Straight from the bucket, as from a CDN in front of it (path-style URL).
    let bucket_base = format!("{}/fleet-images/oem/prod", s3.endpoint());
    lab.write_primary_config(1, Some((&lab.url.clone(), Some(&bucket_base))))
        .unwrap();
    let run = lab.run_vehicle(1, "auto").await.unwrap();
    assert!(run.success, "{}\n{}", run.stdout, run.stderr);
    let installed = updates(&run).filter(|u| u["status"] == "Installed").count();
    assert_eq!(installed, 3, "{}", run.stderr);

    // Only the ciphertext of the encrypted image is in the bucket.
    let ivi = image_bytes("ivi/app-3.1.bin", 500_000);
    let (status, _) = s3
        .get(&format!(
            "/fleet-images/oem/prod/targets/ivi/{}.app-3.1.bin",
            sha256(&ivi)
        ))
        .unwrap();
    assert_eq!(
        status, 404,
        "the plaintext of an encrypted image was stored"
    );

    // Key rotation on the bucket: root v2 (old and new root keys), then a new release the
    // vehicle installs after following the chain 1 → 2 from the bucket.
    let rotated = ops::rotate(&lab.layout, ops::Which::Image, "root", chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(rotated.root_version, 2);
    let (status, _) = s3
        .get("/fleet-images/oem/prod/metadata/2.root.json")
        .unwrap();
    assert_eq!(status, 200, "the new root is in the bucket");
    assert!(files_in(&lab.layout.image_metadata()).is_empty());
    let tbox3 = image_bytes("tbox/fw-3.0.bin", 100_000);
    lab.release("tbox/fw-3.0.bin", "tbox-a", "3.0", &tbox3, false)
        .await
        .unwrap();
    lab.write_primary_config(0, None).unwrap();
    let run = lab.run_vehicle(0, "auto").await.unwrap();
    assert!(run.success, "{}\n{}", run.stdout, run.stderr);
    let after_rotation: Vec<String> = updates(&run)
        .map(|u| format!("{} {}", u["target"], u["status"]))
        .collect();
    assert!(
        after_rotation
            .iter()
            .any(|u| u.contains("fw-3.0") && u.contains("Installed")),
        "{after_rotation:?}\n{}",
        run.stderr
    );

    // python-tuf (not our client) updates from the bucket and from the server.
    let root = dir.path().join("image-root-1.json");
    std::fs::write(
        &root,
        ops::image_repo(&lab.layout).unwrap().root_bytes(1).unwrap(),
    )
    .unwrap();
    let plain = [
        ("tbox/fw-2.0.bin", sha256(&tbox)),
        (
            "bcm/fw-1.4.bin",
            sha256(&image_bytes("bcm/fw-1.4.bin", 64_000)),
        ),
    ];
    python_tuf_updates_from(&bucket_base, &root, &plain);
}

/// A data directory whose image repository is in `bucket` of `s3`, made by the CLI.
fn init_with_bucket(s3: &S3Server, dir: &Path, bucket: &str) -> Layout {
    s3.create_bucket(bucket).unwrap();
    let data = dir.join("data");
    let out = std::process::Command::new(bin())
        .args(["repo", "init", "--data-dir"])
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--image-store"])
        .arg(format!("s3://{bucket}/repo"))
        .args(["--image-store-endpoint", &s3.endpoint()])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Layout::new(&data)
}

fn publish_blocking(layout: &Layout, dir: &Path, name: &str) -> u64 {
    let file = dir.join(name.replace('/', "-"));
    std::fs::write(&file, format!("{name}: {}", "y".repeat(5000))).unwrap();
    let req = PublishRequest {
        name: Some(name.into()),
        ..PublishRequest::new(file, "ecu-hw")
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(ops::publish(layout, &req, Utc::now()))
        .unwrap()
        .role_version
}

#[test]
fn concurrent_publishes_into_one_bucket_all_land_in_their_own_versions() {
    let Some(s3) = s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let layout = init_with_bucket(&s3, dir.path(), "concurrent");
    let config = rampart_server::config::Config::load(&layout).unwrap();
    let online = config.image_online_keys(&layout).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A server's re-signer, non-stop, beside the publishes.
    let refresher = {
        let (layout, stop) = (layout.clone(), stop.clone());
        std::thread::spawn(move || {
            let repo = ops::image_repo(&layout).unwrap();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                repo.resign_online(&online, Utc::now()).unwrap();
                n += 1;
            }
            n
        })
    };
    let publishers: Vec<_> = (0..6)
        .map(|i| {
            let (layout, dir) = (layout.clone(), dir.path().to_path_buf());
            std::thread::spawn(move || publish_blocking(&layout, &dir, &format!("ecu/fw-{i}.bin")))
        })
        .collect();
    let mut versions: Vec<u64> = publishers.into_iter().map(|p| p.join().unwrap()).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let resigned = refresher.join().unwrap();
    versions.sort_unstable();
    assert_eq!(versions, [2, 3, 4, 5, 6, 7], "each publish its own version");
    let state = ops::image_repo(&layout).unwrap().state().unwrap();
    let targets = &state.roles["targets"];
    assert_eq!(targets.version, 7);
    for i in 0..6 {
        assert!(
            targets.targets.contains_key(&format!("ecu/fw-{i}.bin")),
            "publish {i} lost"
        );
    }
    assert!(resigned > 0);
    eprintln!(
        "6 publishes, {resigned} re-signings beside them, timestamp v{}",
        state.timestamp.version
    );
    assert!(files_in(&layout.image_metadata()).is_empty());
}

fn bucket(s3: &S3Server, bucket: &str, lease_secs: u64) -> ObjectStorage {
    let mut config = s3.image_store(bucket, "repo");
    config.lease_secs = Some(lease_secs);
    ObjectStorage::open(&config).unwrap()
}

#[test]
fn a_dead_writers_lease_is_taken_over_once_it_ended_and_a_live_one_is_waited_for() {
    let Some(s3) = s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let layout = init_with_bucket(&s3, dir.path(), "leases");
    let store = bucket(&s3, "leases", 30);
    // A writer that died holding the lease until 2 s from now.
    let until = Utc::now() + chrono::Duration::seconds(2);
    let lease = serde_json::json!({"holder": "dead-writer:1:0", "until": until});
    assert!(
        store.put_new(".writer-lease", b"x").is_err(),
        "keys outside metadata/ and targets/ are refused"
    );
    // Written as the dead writer left it (beside metadata/ and targets/).
    let (status, _) = s3
        .put("/leases/repo/.writer-lease", lease.to_string().as_bytes())
        .unwrap();
    assert_eq!(status, 200);

    let started = Instant::now();
    let guard = store.lock().unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "the lease was taken before it ended ({waited:?})"
    );
    // While held (30 s), a second writer waits (its own lease of 1 s + 5 s), then gives up.
    let second = bucket(&s3, "leases", 1);
    let started = Instant::now();
    let refused = second.lock().unwrap_err().to_string();
    assert!(
        refused.contains("being written by another writer"),
        "{refused}"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    drop(guard);
    // Released: taken at once.
    let started = Instant::now();
    drop(second.lock().unwrap());
    assert!(started.elapsed() < Duration::from_secs(1));
    // And the repository still publishes.
    assert_eq!(publish_blocking(&layout, dir.path(), "ecu/after.bin"), 2);
}

#[test]
fn a_writer_that_lost_its_lease_cannot_replace_the_timestamp() {
    let Some(s3) = s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let layout = init_with_bucket(&s3, dir.path(), "fences");
    let repo = ops::image_repo(&layout).unwrap();
    let store = bucket(&s3, "fences", 60);
    // The stalled writer read the timestamp…
    let stale = store.get("metadata/timestamp.json").unwrap().unwrap();
    // …then another writer published.
    assert_eq!(publish_blocking(&layout, dir.path(), "ecu/one.bin"), 2);
    let current = store.get("metadata/timestamp.json").unwrap().unwrap();
    assert_ne!(current.tag, stale.tag);
    // The stalled writer's timestamp (naming the older snapshot) is refused.
    assert!(!store
        .replace("metadata/timestamp.json", &stale.bytes, Some(&stale.tag))
        .unwrap());
    assert_eq!(
        store.get("metadata/timestamp.json").unwrap().unwrap().bytes,
        current.bytes
    );
    // A version another writer created is not overwritten by put_new.
    assert!(!store
        .put_new("metadata/2.targets.json", b"not this")
        .unwrap());
    assert!(repo.state().unwrap().roles["targets"]
        .targets
        .contains_key("ecu/one.bin"));
}

#[test]
fn versions_left_by_a_writer_that_died_mid_commit_are_skipped_or_replaced() {
    let Some(s3) = s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let layout = init_with_bucket(&s3, dir.path(), "orphans");
    let store = bucket(&s3, "orphans", 60);
    // A writer died after writing targets v2 and snapshot v2, before its timestamp.
    assert!(store.put_new("metadata/2.targets.json", b"half").unwrap());
    assert!(store.put_new("metadata/2.snapshot.json", b"half").unwrap());
    assert_eq!(publish_blocking(&layout, dir.path(), "ecu/fw.bin"), 2);
    let state = ops::image_repo(&layout).unwrap().state().unwrap();
    assert_eq!(
        state.snapshot.version, 3,
        "the orphaned snapshot version is skipped"
    );
    assert_eq!(state.timestamp.snapshot_meta().unwrap().version, 3);
    let targets = store.get("metadata/2.targets.json").unwrap().unwrap();
    let parsed: rampart_core::metadata::Targets = Envelope::parse(&targets.bytes, "targets")
        .unwrap()
        .typed("targets")
        .unwrap();
    assert!(
        parsed.targets.contains_key("ecu/fw.bin"),
        "the orphaned targets version replaced"
    );
}

//! The image repository with several writers at once: `rampart publish` run twice at the
//! same moment, or a publish while a running `rampart serve` re-signs the timestamp (every
//! instance of a multi-instance deployment does). Each writer reads the current versions and
//! writes the next ones; without one writer at a time, two of them write the same version
//! with different content and one publish is lost.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use chrono::Utc;
use rampart_server::ceremony::{self, CeremonyOptions};
use rampart_server::config::Config;
use rampart_server::layout::Layout;
use rampart_server::ops::{self, PublishRequest};
use tokio::sync::Barrier;

fn data_dir() -> (tempfile::TempDir, Layout) {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path().join("data"));
    ceremony::init(&layout, &CeremonyOptions::default(), Utc::now()).unwrap();
    (dir, layout)
}

fn request(layout: &Layout, name: &str) -> PublishRequest {
    let file = layout.root().join("..").join(name.replace('/', "-"));
    std::fs::write(&file, format!("the image {name}")).unwrap();
    PublishRequest {
        name: Some(name.to_owned()),
        release_counter: Some(1),
        ..PublishRequest::new(file, "ivi-hw")
    }
}

/// The newest `N.snapshot.json` written.
fn newest_snapshot(layout: &Layout) -> u64 {
    std::fs::read_dir(layout.image_metadata())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".snapshot.json")?.parse::<u64>().ok()
        })
        .max()
        .unwrap()
}

/// The timestamp's version and the snapshot version it names.
fn timestamp(layout: &Layout) -> (u64, u64) {
    let bytes = std::fs::read(layout.image_metadata().join("timestamp.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    (
        doc["signed"]["version"].as_u64().unwrap(),
        doc["signed"]["meta"]["snapshot.json"]["version"]
            .as_u64()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishes_are_all_listed_each_in_its_own_version() {
    let (_dir, layout) = data_dir();
    let names: Vec<String> = (0..6).map(|i| format!("ivi/app-{i}.bin")).collect();
    let barrier = Arc::new(Barrier::new(names.len()));
    let mut tasks = Vec::new();
    for name in &names {
        let (layout, barrier, req) = (layout.clone(), barrier.clone(), request(&layout, name));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            ops::publish(&layout, &req, Utc::now()).await
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        let outcome = t.await.unwrap().expect("every publish succeeds");
        versions.push(outcome.role_version);
    }
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(
        versions.len(),
        names.len(),
        "two publishes wrote one version"
    );

    let state = ops::image_repo(&layout).unwrap().state().unwrap();
    let listed = &state.roles["targets"].targets;
    for name in &names {
        assert!(listed.contains_key(name), "{name} was lost: {listed:?}");
    }
    // Every targets version written is the one its publish reported, and the timestamp
    // names the newest snapshot.
    assert_eq!(state.roles["targets"].version, 1 + names.len() as u64);
    assert_eq!(timestamp(&layout).1, newest_snapshot(&layout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timestamp_refreshes_racing_publishes_never_drop_one() {
    let (_dir, layout) = data_dir();
    let config = Config::load(&layout).unwrap();
    let repo = ops::image_repo(&layout).unwrap();
    // A server whose clock says the timestamp is always about to expire: it re-signs it
    // (and the snapshot) as fast as it can while publishes go on.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refresher = {
        let (repo, stop) = (repo.clone(), stop.clone());
        let online = config.image_online_keys(&layout).unwrap();
        tokio::task::spawn_blocking(move || {
            let mut rounds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                repo.refresh_online(&online, Utc::now() + chrono::Duration::days(365))?;
                rounds += 1;
            }
            Ok::<_, rampart_server::Error>(rounds)
        })
    };
    let names: Vec<String> = (0..30).map(|i| format!("ivi/round-{i}.bin")).collect();
    for name in &names {
        ops::publish(&layout, &request(&layout, name), Utc::now())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = refresher.await.unwrap().unwrap();
    assert!(rounds > 0);
    let state = repo.state().unwrap();
    let lost: Vec<&String> = names
        .iter()
        .filter(|n| !state.roles["targets"].targets.contains_key(n))
        .collect();
    assert!(lost.is_empty(), "publishes lost to a refresh: {lost:?}");
    assert_eq!(timestamp(&layout).1, newest_snapshot(&layout));
}

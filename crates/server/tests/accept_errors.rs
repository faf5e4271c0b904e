//! `accept` failing for want of file descriptors (EMFILE) pauses the accept loop for a second
//! instead of spinning or stopping, and the server serves again once descriptors are free.
//! Alone in its test binary: it lowers the process's open-files limit.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use chrono::Utc;
use rampart_server::ceremony::{self, CeremonyOptions};
use rampart_server::config::{Config, ServerConfig};
use rampart_server::layout::Layout;
use rampart_server::serve::{self, ServeOptions};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use tokio::net::TcpSocket;

fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

async fn health(url: &str) -> Option<u16> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let response = client.get(format!("{url}health")).send().await.ok()?;
    Some(response.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_pauses_accept_and_serving_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path().join("data"));
    let ceremony_opts = CeremonyOptions {
        tls: false,
        ..CeremonyOptions::default()
    };
    ceremony::init(&layout, &ceremony_opts, Utc::now()).unwrap();
    let mut config = Config::load(&layout).unwrap();
    // The caps would refuse before the descriptors run out: out of the way here.
    config.server = ServerConfig {
        max_connections: 100_000,
        max_connections_per_ip: 100_000,
        ..ServerConfig::default()
    };
    config.save(&layout).unwrap();
    let mut opts = ServeOptions::new(layout.clone());
    opts.listen = Some("127.0.0.1:0".into());
    let server = serve::start(opts).await.unwrap();
    let url = server.url();
    assert_eq!(health(&url).await, Some(200));

    // The client's sockets are made before the limit is lowered, so that connecting them
    // needs no descriptor in this process: only the server's `accept` does, and it runs out
    // after a few (whichever side ran out first would otherwise depend on how many
    // descriptors happened to be free).
    let sockets: Vec<TcpSocket> = (0..64).map(|_| TcpSocket::new_v4().unwrap()).collect();
    let original = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(open_descriptors() + 8),
            maximum: original.maximum,
        },
    )
    .unwrap();
    let mut hog = Vec::new();
    for socket in sockets {
        if let Ok(s) = socket.connect(server.addr).await {
            hog.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held = hog.len();
    drop(hog);
    setrlimit(Resource::Nofile, original).unwrap();

    // The server is back within its pause.
    let mut status = None;
    for _ in 0..50 {
        status = health(&url).await;
        if status == Some(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, Some(200), "after {held} hogging connections");
    let metrics = reqwest::get(format!("{url}metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rampart_accept_errors_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(errors >= 1, "accept never failed: {metrics}");
    server.stop().await.unwrap();
}

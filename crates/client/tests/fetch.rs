//! The fetcher against a hostile HTTP server on loopback: endless data, slow retrieval,
//! stalls, resumed downloads, wrong content.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rampart_client::{download_target, DownloadOutcome, FetchConfig, HttpFetcher, TlsConfig};
use rampart_core::hash::compute_hashes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone, Copy)]
enum Behaviour {
    /// Serve the body, honouring `Range: bytes=N-`.
    Honest,
    /// Ignore Range requests.
    NoRange,
    /// Send the body then keep sending garbage forever.
    Endless,
    /// Send one byte every `ms` milliseconds.
    Trickle(u64),
    /// Send half the body and close.
    CutHalf,
    /// Lie in Content-Length (claim huge).
    HugeLength,
}

struct Server {
    url: String,
    requests: Arc<AtomicUsize>,
}

async fn serve(body: Vec<u8>, behaviour: Behaviour) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/file", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut req = vec![0u8; 4096];
                let n = sock.read(&mut req).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&req[..n]).to_string();
                let start: usize = req
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("range: bytes=")
                            .map(|r| r.trim_end_matches('-').trim().to_string())
                    })
                    .and_then(|s| s.trim_end_matches('-').parse().ok())
                    .unwrap_or(0);
                if req.starts_with("GET /missing") {
                    let _ = sock
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                match behaviour {
                    Behaviour::Honest if start > 0 => {
                        let rest = &body[start.min(body.len())..];
                        let head = format!(
                            "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\n\r\n",
                            rest.len()
                        );
                        let _ = sock.write_all(head.as_bytes()).await;
                        let _ = sock.write_all(rest).await;
                    }
                    Behaviour::Honest | Behaviour::NoRange => {
                        let head =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        let _ = sock.write_all(head.as_bytes()).await;
                        let _ = sock.write_all(&body).await;
                    }
                    Behaviour::Endless => {
                        let _ = sock.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
                        let _ = sock.write_all(&body).await;
                        let junk = vec![b'x'; 65536];
                        while sock.write_all(&junk).await.is_ok() {}
                    }
                    Behaviour::Trickle(ms) => {
                        let head =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        let _ = sock.write_all(head.as_bytes()).await;
                        for b in &body {
                            if sock.write_all(&[*b]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                    }
                    Behaviour::CutHalf => {
                        let head =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        let _ = sock.write_all(head.as_bytes()).await;
                        let _ = sock.write_all(&body[..body.len() / 2]).await;
                    }
                    Behaviour::HugeLength => {
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 999999999999\r\n\r\n")
                            .await;
                        let _ = sock.write_all(&body).await;
                    }
                }
            });
        }
    });
    Server { url, requests }
}

fn fetcher(min_speed: u64, window_ms: u64, stall_ms: u64) -> HttpFetcher {
    HttpFetcher::new(
        FetchConfig {
            connect_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_millis(stall_ms),
            min_bytes_per_second: min_speed,
            speed_window: Duration::from_millis(window_ms),
        },
        &TlsConfig::default(),
    )
    .unwrap()
}

fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn fetches_within_the_bound_and_reports_not_found() {
    let s = serve(body(1000), Behaviour::Honest).await;
    let f = fetcher(1, 10_000, 5_000);
    assert_eq!(
        f.fetch_bytes(&s.url, 1000).await.unwrap().unwrap(),
        body(1000)
    );
    let missing = s.url.replace("/file", "/missing");
    assert_eq!(f.fetch_bytes(&missing, 1000).await.unwrap(), None);
}

/// Fetches at most `bound` bytes of `s`'s file with `f`, which must refuse; the rule it names.
async fn refusal(f: HttpFetcher, s: &Server, bound: u64) -> String {
    let err = f.fetch_bytes(&s.url, bound).await.unwrap_err();
    err.rule().to_string()
}

#[tokio::test]
async fn endless_data_is_cut_at_the_bound() {
    let s = serve(body(1000), Behaviour::Endless).await;
    assert_eq!(
        refusal(fetcher(1, 10_000, 5_000), &s, 5000).await,
        "endless-data"
    );
}

#[tokio::test]
async fn announced_length_above_the_bound_is_refused_before_reading() {
    let s = serve(body(10), Behaviour::HugeLength).await;
    assert_eq!(
        refusal(fetcher(1, 10_000, 5_000), &s, 5000).await,
        "endless-data"
    );
}

#[tokio::test]
async fn slow_retrieval_is_detected_by_average_speed() {
    // 1 byte per 20 ms = 50 B/s, required 1000 B/s over 300 ms windows.
    let s = serve(body(200), Behaviour::Trickle(20)).await;
    let started = std::time::Instant::now();
    assert_eq!(
        refusal(fetcher(1000, 300, 5_000), &s, 200).await,
        "slow-retrieval"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "detected within the bound"
    );
}

#[tokio::test]
async fn a_stalled_server_is_detected() {
    let s = serve(body(10), Behaviour::Trickle(2_000)).await;
    assert_eq!(
        refusal(fetcher(1, 60_000, 300), &s, 10).await,
        "slow-retrieval"
    );
}

async fn download(
    f: &HttpFetcher,
    url: &str,
    dest: &Path,
    data: &[u8],
) -> rampart_client::Result<DownloadOutcome> {
    download_target(
        f,
        url,
        dest,
        data.len() as u64,
        &compute_hashes(data),
        &mut |_, _| {},
    )
    .await
}

#[tokio::test]
async fn download_verifies_and_skips_a_file_already_in_place() {
    let data = body(100_000);
    let s = serve(data.clone(), Behaviour::Honest).await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("image.bin");
    let f = fetcher(1, 10_000, 5_000);
    assert_eq!(
        download(&f, &s.url, &dest, &data).await.unwrap(),
        DownloadOutcome::Downloaded
    );
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(
        download(&f, &s.url, &dest, &data).await.unwrap(),
        DownloadOutcome::AlreadyPresent
    );
    assert_eq!(s.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn interrupted_download_resumes_with_range() {
    let data = body(100_000);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("image.bin");
    let f = fetcher(1, 10_000, 5_000);
    let cut = serve(data.clone(), Behaviour::CutHalf).await;
    assert!(download(&f, &cut.url, &dest, &data).await.is_err());
    assert!(!dest.exists(), "nothing in place before it verifies");
    let part = dir.path().join("image.bin#partial");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 50_000);
    let honest = serve(data.clone(), Behaviour::Honest).await;
    assert_eq!(
        download(&f, &honest.url, &dest, &data).await.unwrap(),
        DownloadOutcome::Resumed { from: 50_000 }
    );
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

#[tokio::test]
async fn server_ignoring_range_restarts_cleanly() {
    let data = body(10_000);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("image.bin");
    std::fs::write(dir.path().join("image.bin#partial"), &data[..4000]).unwrap();
    let s = serve(data.clone(), Behaviour::NoRange).await;
    let f = fetcher(1, 10_000, 5_000);
    assert_eq!(
        download(&f, &s.url, &dest, &data).await.unwrap(),
        DownloadOutcome::Downloaded
    );
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

#[tokio::test]
async fn wrong_content_is_rejected_and_not_kept() {
    let data = body(10_000);
    let mut evil = data.clone();
    evil[5000] ^= 1;
    let s = serve(evil, Behaviour::Honest).await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("image.bin");
    let err = download(&fetcher(1, 10_000, 5_000), &s.url, &dest, &data)
        .await
        .unwrap_err();
    assert_eq!(err.rule(), "hash-mismatch");
    assert!(!dest.exists());
    assert!(!dir.path().join("image.bin#partial").exists());
}

#[tokio::test]
async fn longer_image_than_signed_is_endless_data() {
    let data = body(10_000);
    let mut longer = data.clone();
    longer.extend_from_slice(b"extra");
    let s = serve(longer, Behaviour::Honest).await;
    let dir = tempfile::tempdir().unwrap();
    let err = download(
        &fetcher(1, 10_000, 5_000),
        &s.url,
        &dir.path().join("x"),
        &data,
    )
    .await
    .unwrap_err();
    assert_eq!(err.rule(), "endless-data");
}

/// A failure that no retry can cure (too many bytes, wrong bytes, no such file) leaves only
/// verified targets behind: no `#partial` staging file next to them.
#[tokio::test]
async fn a_download_that_cannot_be_resumed_leaves_nothing_behind() {
    let data = body(10_000);
    let mut longer = data.clone();
    longer.extend_from_slice(b"extra");
    let cases = [
        (serve(longer, Behaviour::Honest).await, "endless-data"),
        (
            serve(data.clone(), Behaviour::Endless).await,
            "endless-data",
        ),
        (
            serve(data.clone(), Behaviour::HugeLength).await,
            "endless-data",
        ),
    ];
    for (server, rule) in cases {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("image.bin");
        let err = download(&fetcher(1, 10_000, 5_000), &server.url, &dest, &data)
            .await
            .unwrap_err();
        assert_eq!(err.rule(), rule);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{rule}: left {left:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("image.bin");
    let server = serve(data.clone(), Behaviour::Honest).await;
    let missing = server.url.replace("/file", "/missing");
    let err = download(&fetcher(1, 10_000, 5_000), &missing, &dest, &data)
        .await
        .unwrap_err();
    assert_eq!(err.rule(), "http-status");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "http-status: left {left:?}");
}

/// The offline fetcher (an unpacked offline bundle): files inside its folder are fetched with
/// the usual limits; a URL that leaves the folder (`..`, its percent-encoded form), another
/// scheme, or a file longer than allowed is refused — the file outside is never read.
#[tokio::test]
async fn the_offline_fetcher_reads_only_inside_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bundle");
    std::fs::create_dir_all(root.join("image/metadata")).unwrap();
    std::fs::write(root.join("image/metadata/timestamp.json"), b"{}").unwrap();
    std::fs::write(dir.path().join("secret"), b"outside").unwrap();
    let f = HttpFetcher::offline(&root).unwrap();
    let base = f.offline_base().unwrap();
    assert!(base.starts_with("file://") && base.ends_with('/'), "{base}");

    let inside = format!("{base}image/metadata/timestamp.json");
    assert_eq!(f.fetch_bytes(&inside, 100).await.unwrap().unwrap(), b"{}");
    assert!(f
        .fetch_bytes(&format!("{base}image/metadata/none.json"), 100)
        .await
        .unwrap()
        .is_none());
    let err = f.fetch_bytes(&inside, 1).await.unwrap_err();
    assert_eq!(err.rule().as_str(), "endless-data", "{err}");
    for escape in [
        format!("{base}../secret"),
        format!("{base}image/../../secret"),
        format!("{base}%2e%2e/secret"),
        format!("{base}image/%2E%2E/%2e%2e/secret"),
        "http://127.0.0.1:1/secret".to_owned(),
    ] {
        let err = f.fetch_bytes(&escape, 100).await.unwrap_err();
        assert_eq!(err.rule().as_str(), "bad-url", "{escape}: {err}");
    }
    assert!(f
        .post_json(&inside, b"{}".to_vec(), 10)
        .await
        .is_err_and(|e| e.rule().as_str() == "bad-url"));
}

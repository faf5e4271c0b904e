//! Secrets at rest on the server: content keys of encrypted images are stored encrypted under
//! the key-encryption key (KEK), the data directory and the SQLite files are private to the
//! server's user, and the server refuses to start while a secret file is readable by others.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use chrono::Utc;
use rampart_core::encryption::{decrypt_all, ContentKey};
use rampart_server::ceremony::{self, CeremonyOptions};
use rampart_server::config::Config;
use rampart_server::db::{Db, ImageKey};
use rampart_server::keys::kek::ContentKek;
use rampart_server::layout::Layout;
use rampart_server::ops::{self, PublishRequest};
use rampart_server::serve::{self, ServeOptions};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A data directory after the key ceremony (default umask: files 0644 unless made private).
fn ceremony() -> (tempfile::TempDir, Layout) {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path().join("data"));
    ceremony::init(&layout, &CeremonyOptions::default(), Utc::now()).unwrap();
    (dir, layout)
}

fn serve_options(layout: &Layout) -> ServeOptions {
    let mut opts = ServeOptions::new(layout.clone());
    opts.listen = Some("127.0.0.1:0".into());
    opts
}

async fn db(layout: &Layout) -> Db {
    let config = Config::load(layout).unwrap();
    Db::connect(&config.database_url(layout)).await.unwrap()
}

/// Publishes `content` encrypted as `name`.
async fn publish_encrypted(layout: &Layout, name: &str, content: &[u8]) {
    let file = layout.root().join("..").join("image.bin");
    std::fs::write(&file, content).unwrap();
    let request = PublishRequest {
        name: Some(name.to_owned()),
        release_counter: Some(1),
        encrypt: true,
        ..PublishRequest::new(file, "ivi-hw")
    };
    ops::publish(layout, &request, Utc::now()).await.unwrap();
}

fn is_plain_hex_key(stored: &str) -> bool {
    stored.len() == 64 && stored.chars().all(|c| c.is_ascii_hexdigit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directory_and_database_files_are_private() {
    let (_dir, layout) = ceremony();
    assert_eq!(mode(layout.root()), 0o700, "data directory");
    // The configuration may name a database URL with a password.
    assert_eq!(mode(&layout.config_file()), 0o600, "rampart.toml");
    assert_eq!(mode(&layout.online_keys().join("content-kek")), 0o600);
    let running = serve::start(serve_options(&layout)).await.unwrap();
    // A write, so the WAL and its index exist.
    publish_encrypted(&layout, "ivi/app.bin", b"firmware").await;
    let db_file = layout.root().join("rampart.db");
    for suffix in ["", "-wal", "-shm"] {
        let path = Path::new(&format!("{}{suffix}", db_file.display())).to_path_buf();
        if suffix.is_empty() || path.exists() {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
    running.stop().await.unwrap();
}

/// A database made before files were created private (0644) is narrowed to 0600 at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_database_readable_by_others_is_made_private() {
    let (_dir, layout) = ceremony();
    let db_file = layout.root().join("rampart.db");
    drop(db(&layout).await);
    chmod(&db_file, 0o644);
    let running = serve::start(serve_options(&layout)).await.unwrap();
    assert_eq!(mode(&db_file), 0o600);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_keys_are_not_stored_in_plain_text() {
    let (_dir, layout) = ceremony();
    publish_encrypted(&layout, "ivi/app.bin", b"firmware of the IVI").await;
    let stored = db(&layout)
        .await
        .image_key("ivi/app.bin")
        .await
        .unwrap()
        .unwrap();
    assert!(
        !is_plain_hex_key(&stored.content_key),
        "content key stored in plain text: {}",
        stored.content_key
    );
    assert!(
        stored.content_key.starts_with("kek1:"),
        "{}",
        stored.content_key
    );
    // The KEK opens it, and what it opens decrypts the published ciphertext.
    let kek = ContentKek::load(&layout.online_keys().join("content-kek")).unwrap();
    let key =
        ContentKey::from_bytes(&kek.open("ivi/app.bin", &stored.content_key).unwrap()).unwrap();
    let ciphertext = std::fs::read(layout.image_targets().join(&stored.ciphertext_path)).unwrap();
    assert_eq!(
        decrypt_all(&key, &ciphertext).unwrap(),
        b"firmware of the IVI"
    );
    // Another target's row cannot borrow it.
    assert!(kek.open("ivi/other.bin", &stored.content_key).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_content_keys_are_encrypted_on_first_start() {
    let (_dir, layout) = ceremony();
    let legacy = ImageKey {
        target: "ivi/old.bin".into(),
        content_key: "ab".repeat(32),
        ciphertext_path: "ivi/x.old.bin.enc".into(),
        ciphertext_length: 1,
        ciphertext_hashes: "{}".into(),
    };
    db(&layout).await.store_image_key(&legacy).await.unwrap();
    let running = serve::start(serve_options(&layout)).await.unwrap();
    let stored = db(&layout)
        .await
        .image_key("ivi/old.bin")
        .await
        .unwrap()
        .unwrap();
    assert!(
        !is_plain_hex_key(&stored.content_key),
        "still plain text after start: {}",
        stored.content_key
    );
    assert_eq!(
        ImageKey {
            content_key: legacy.content_key.clone(),
            ..stored.clone()
        },
        legacy,
        "only the key column changes"
    );
    let kek = ContentKek::load(&layout.online_keys().join("content-kek")).unwrap();
    assert_eq!(
        kek.open("ivi/old.bin", &stored.content_key).unwrap(),
        [0xab; 32],
        "the same key, sealed"
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_refuses_to_start_while_a_secret_is_readable_by_others() {
    let (_dir, layout) = ceremony();
    let secrets = [
        layout.pki().join("admin-token"),
        layout.pki().join("server-key.pem"),
        layout.online_keys().join("director-targets.pem"),
        layout.online_keys().join("image-timestamp.pem"),
        layout.online_keys().join("content-kek"),
    ];
    for secret in &secrets {
        assert_eq!(mode(secret), 0o600, "{}", secret.display());
        for loose in [0o644, 0o640, 0o604] {
            chmod(secret, loose);
            let err = match serve::start(serve_options(&layout)).await {
                Ok(running) => {
                    running.stop().await.unwrap();
                    panic!("started with {} mode {loose:o}", secret.display())
                }
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains(&secret.display().to_string()),
                "{loose:o}: {err}"
            );
            assert!(err.contains("chmod 600"), "{loose:o}: {err}");
        }
        chmod(secret, 0o600);
    }
    let running = serve::start(serve_options(&layout)).await.unwrap();
    running.stop().await.unwrap();
}

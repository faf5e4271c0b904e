//! The image repository on S3-compatible object storage (the `object_store` crate), for a
//! deployment whose servers share no filesystem and whose CDN serves a bucket.
//!
//! One writer at a time is a *lease*: an object `PREFIX/.writer-lease` created with
//! `If-None-Match: *`, naming its holder and the time it ends, deleted when the writer is
//! done. A lease that outlived its end (a killed writer) is taken over with `If-Match` on its
//! `ETag`, so two writers cannot both take it. A lease can still be lost by a writer that
//! stalls past it; the conditional writes of [`super::PublicStore`] then refuse that
//! writer's snapshot or timestamp, so what clients see stays one consistent repository.
//!
//! Every request runs on a runtime of this module's own (two threads, never dropped), so the
//! blocking interface can be called from any thread, a server's runtime threads included,
//! and a connection pooled by one runtime is never used by another.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as ObjectPath;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion, WriteMultipart,
};
use serde::{Deserialize, Serialize};

use super::{ImageStoreConfig, PublicStore, Stored, WriterGuard};
use crate::error::{Error, Result};

/// Parts of a large image upload (S3 needs at least 5 MiB per part but the last).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Default lease.
const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// The lease object, beside `metadata/` and `targets/` (not served to vehicles).
const LEASE_KEY: &str = ".writer-lease";

/// An object being read: its whole size and its bytes from the requested offset.
pub type Reading = (u64, tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>);

/// A bucket (and prefix) holding `metadata/` and `targets/`.
#[derive(Debug, Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
    lease: Duration,
}

fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> =
        OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("rampart-object-store")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Storage(format!("cannot start its runtime: {e}")))
}

/// Runs `fut` on the store's runtime and waits for it (blocking).
fn run<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| Error::Storage("a request to object storage was cancelled".into()))
}

/// Runs `fut` on the store's runtime and awaits it from another runtime.
async fn run_async<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    runtime()?.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.await
        .map_err(|_| Error::Storage("a request to object storage was cancelled".into()))
}

fn storage_error(what: impl std::fmt::Display, e: object_store::Error) -> Error {
    Error::Storage(format!("{what}: {e}"))
}

#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    holder: String,
    until: DateTime<Utc>,
}

/// The lease while held: deleted on drop if it is still ours.
struct HeldLease {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    e_tag: Option<String>,
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        let (store, path, ours) = (self.store.clone(), self.path.clone(), self.e_tag.clone());
        let released = run(async move {
            // Not ours any more (taken over after we overran it): leave it to its holder.
            match store.head(&path).await {
                Ok(meta) if meta.e_tag == ours => store.delete(&path).await,
                Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        });
        let failed = match released {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(error = %failed, "could not release the image repository's lease (it expires)");
    }
}

impl ObjectStorage {
    /// The bucket `config` names (`s3://BUCKET/PREFIX`).
    pub fn open(config: &ImageStoreConfig) -> Result<Self> {
        let rest = config.url.strip_prefix("s3://").ok_or_else(|| {
            Error::Config(format!(
                "[image_store] url = {:?}: only s3://BUCKET/PREFIX is supported",
                config.url
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Config(format!(
                "[image_store] url = {:?}: no bucket",
                config.url
            )));
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch);
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let region = config
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into());
        builder = builder.with_region(region);
        let store = builder
            .build()
            .map_err(|e| Error::Config(format!("[image_store] {}: {e}", config.url)))?;
        Ok(ObjectStorage {
            store: Arc::new(store),
            prefix: prefix.trim_matches('/').to_owned(),
            url: config.url.clone(),
            lease: config.lease_secs.map_or(DEFAULT_LEASE, Duration::from_secs),
        })
    }

    /// Where `key` (`metadata/…` or `targets/…`, nothing else) is in the bucket.
    fn path(&self, key: &str) -> Result<ObjectPath> {
        super::split_key(key)?;
        Ok(self.object_path(key))
    }

    fn object_path(&self, name: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    /// Opens `key` for serving from byte `offset`: the object's whole size and a stream of
    /// its bytes from there, or `None` when absent. The stream is fed from the store's
    /// runtime. An offset past the end is [`Error::BadRequest`].
    pub async fn open_for_reading(&self, key: &str, offset: u64) -> Result<Option<Reading>> {
        let (store, path) = (self.store.clone(), self.path(key)?);
        let opened = run_async(async move {
            let options = object_store::GetOptions {
                range: (offset > 0).then_some(object_store::GetRange::Offset(offset)),
                ..Default::default()
            };
            match store.get_opts(&path, options).await {
                Ok(got) => {
                    let size = got.meta.size;
                    let (tx, rx) = tokio::sync::mpsc::channel(4);
                    tokio::spawn(async move {
                        let mut stream = got.into_stream();
                        while let Some(chunk) = stream.next().await {
                            let chunk = chunk.map_err(std::io::Error::other);
                            if tx.send(chunk).await.is_err() {
                                break;
                            }
                        }
                    });
                    Ok(Some((size, rx)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await?;
        opened.map_err(|e| match e {
            object_store::Error::Generic { .. } if offset > 0 => {
                Error::BadRequest(format!("{key}: no byte {offset}"))
            }
            e => storage_error(format!("reading {key}"), e),
        })
    }

    fn holder() -> String {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!(
            "{}:{}:{:016x}",
            host.trim(),
            std::process::id(),
            crate::random::u64()
        )
    }
}

impl PublicStore for ObjectStorage {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn get(&self, key: &str) -> Result<Option<Stored>> {
        let (store, path) = (self.store.clone(), self.path(key)?);
        let got = run(async move {
            match store.get(&path).await {
                Ok(got) => {
                    let tag = got.meta.e_tag.clone().unwrap_or_default();
                    Ok(Some((got.bytes().await?, tag)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?
        .map_err(|e| storage_error(format!("{}/{key}", self.url), e))?;
        Ok(got.map(|(bytes, tag)| Stored {
            bytes: bytes.to_vec(),
            tag,
        }))
    }

    fn exists(&self, key: &str) -> Result<bool> {
        let (store, path) = (self.store.clone(), self.path(key)?);
        run(async move {
            match store.head(&path).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        })?
        .map_err(|e| storage_error(format!("{}/{key}", self.url), e))
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let (store, path) = (self.store.clone(), self.object_path(dir));
        let listed = run(async move { store.list_with_delimiter(Some(&path)).await })?
            .map_err(|e| storage_error(format!("listing {}/{dir}", self.url), e))?;
        Ok(listed
            .objects
            .into_iter()
            .filter_map(|o| o.location.filename().map(str::to_owned))
            .collect())
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let (store, path) = (self.store.clone(), self.path(key)?);
        let payload = PutPayload::from(bytes.to_vec());
        run(async move { store.put(&path, payload).await })?
            .map(|_| ())
            .map_err(|e| storage_error(format!("writing {}/{key}", self.url), e))
    }

    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        let (store, path) = (self.store.clone(), self.path(key)?);
        let payload = PutPayload::from(bytes.to_vec());
        let put = run(async move {
            store
                .put_opts(&path, payload, PutOptions::from(PutMode::Create))
                .await
        })?;
        match put {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(storage_error(format!("creating {}/{key}", self.url), e)),
        }
    }

    fn replace(&self, key: &str, bytes: &[u8], expected: Option<&str>) -> Result<bool> {
        let Some(expected) = expected else {
            return self.put_new(key, bytes);
        };
        let (store, path) = (self.store.clone(), self.path(key)?);
        let payload = PutPayload::from(bytes.to_vec());
        let mode = PutMode::Update(UpdateVersion {
            e_tag: Some(expected.to_owned()),
            version: None,
        });
        let put = run(async move { store.put_opts(&path, payload, PutOptions::from(mode)).await })?;
        match put {
            Ok(_) => Ok(true),
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(storage_error(format!("replacing {}/{key}", self.url), e)),
        }
    }

    fn staging_path(&self, key: &str) -> Result<PathBuf> {
        super::split_key(key)?;
        let base = key.rsplit('/').next().unwrap_or(key);
        Ok(std::env::temp_dir().join(format!(
            "rampart-upload-{}-{:016x}-{}",
            std::process::id(),
            crate::random::u64(),
            rampart_core::client::safe_file_name(base)
        )))
    }

    fn put_file(&self, key: &str, staged: &Path) -> Result<()> {
        let (store, path) = (self.store.clone(), self.path(key)?);
        let file = staged.to_path_buf();
        let uploaded = run(async move {
            use tokio::io::AsyncReadExt;
            let mut input = tokio::fs::File::open(&file)
                .await
                .map_err(|e| Error::io(&file, e))?;
            let upload = store
                .put_multipart(&path)
                .await
                .map_err(|e| storage_error("starting an upload", e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut buf = vec![0u8; 1024 * 1024];
            loop {
                let n = input
                    .read(&mut buf)
                    .await
                    .map_err(|e| Error::io(&file, e))?;
                if n == 0 {
                    break;
                }
                writer
                    .wait_for_capacity(4)
                    .await
                    .map_err(|e| storage_error("uploading", e))?;
                writer.write(buf.get(..n).unwrap_or_default());
            }
            writer
                .finish()
                .await
                .map_err(|e| storage_error("finishing an upload", e))?;
            Ok::<_, Error>(())
        })?;
        let _ = std::fs::remove_file(staged);
        uploaded.map_err(|e| Error::Storage(format!("{}/{key}: {e}", self.url)))
    }

    fn copy(&self, from: &str, to: &str) -> Result<()> {
        let (store, from_path, to_path) = (self.store.clone(), self.path(from)?, self.path(to)?);
        run(async move { store.copy(&from_path, &to_path).await })?
            .map_err(|e| storage_error(format!("copying {}/{from} to {to}", self.url), e))
    }

    /// Takes the lease, waiting for its holder up to the lease's length (and taking it over
    /// once it ended).
    fn lock(&self) -> Result<WriterGuard> {
        let path = self.object_path(LEASE_KEY);
        let holder = Self::holder();
        let give_up = std::time::Instant::now() + self.lease + Duration::from_secs(5);
        let mut pause = Duration::from_millis(10);
        loop {
            let lease = Lease {
                holder: holder.clone(),
                until: Utc::now()
                    + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::MAX),
            };
            let body = serde_json::to_vec(&lease).map_err(|e| Error::Storage(e.to_string()))?;
            let (store, p) = (self.store.clone(), path.clone());
            let taken = run(async move {
                let created = store
                    .put_opts(
                        &p,
                        PutPayload::from(body.clone()),
                        PutOptions::from(PutMode::Create),
                    )
                    .await;
                match created {
                    Ok(put) => return Ok(Ok(put.e_tag)),
                    Err(object_store::Error::AlreadyExists { .. })
                    | Err(object_store::Error::Precondition { .. }) => {}
                    Err(e) => return Err(e),
                }
                // Held: by whom, until when? Taken over only once it ended.
                let got = match store.get(&p).await {
                    Ok(got) => got,
                    Err(object_store::Error::NotFound { .. }) => {
                        return Ok(Err("released just now".to_owned()))
                    }
                    Err(e) => return Err(e),
                };
                let e_tag = got.meta.e_tag.clone();
                let current: Option<Lease> = serde_json::from_slice(&got.bytes().await?).ok();
                let ended = current.as_ref().is_none_or(|l| l.until < Utc::now());
                if !ended {
                    let who = current
                        .map(|l| format!("held by {} until {}", l.holder, l.until))
                        .unwrap_or_default();
                    return Ok(Err(who));
                }
                let mode = PutMode::Update(UpdateVersion {
                    e_tag,
                    version: None,
                });
                match store
                    .put_opts(&p, PutPayload::from(body), PutOptions::from(mode))
                    .await
                {
                    Ok(put) => {
                        tracing::warn!("took over an image repository lease that had ended");
                        Ok(Ok(put.e_tag))
                    }
                    Err(object_store::Error::Precondition { .. })
                    | Err(object_store::Error::NotFound { .. }) => {
                        Ok(Err("taken by another writer".to_owned()))
                    }
                    Err(e) => Err(e),
                }
            })?
            .map_err(|e| storage_error(format!("the writer lease of {}", self.url), e))?;
            match taken {
                Ok(e_tag) => {
                    return Ok(WriterGuard(Box::new(HeldLease {
                        store: self.store.clone(),
                        path,
                        e_tag,
                    })))
                }
                Err(why) if std::time::Instant::now() >= give_up => {
                    return Err(Error::WriterRaced(format!(
                        "the image repository at {} is being written by another writer ({why})",
                        self.url
                    )))
                }
                Err(_) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
            }
        }
    }

    fn objects(&self) -> Option<&ObjectStorage> {
        Some(self)
    }
}

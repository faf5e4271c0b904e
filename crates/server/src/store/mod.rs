//! Where the image repository's public files live: a local folder (the embedded default,
//! `D/public/image/`), or an S3-compatible bucket that the CDN serves
//! (`[image_store] url = "s3://BUCKET/PREFIX"`).
//!
//! The repository ([`crate::repo::Repository`]) decides what to write; a store only moves
//! bytes, under two keys' namespaces: `metadata/NAME` (the signed roles) and
//! `targets/PATH` (images, content-addressed). What a store must give the repository is
//! one writer at a time *and* a fence for when that fails:
//!
//! - [`PublicStore::lock`]: the writer lock, held from reading the current versions to
//!   writing the next (a `flock` on the folder; on a bucket, a lease object created with
//!   `If-None-Match: *`, taken over only once expired);
//! - [`PublicStore::put_new`] and [`PublicStore::replace`]: conditional writes. A snapshot
//!   version is created only if no writer created it first, and `timestamp.json` is replaced
//!   only if it is still the one the writer read (`If-Match` on a bucket). A writer whose
//!   lease was taken over (it stalled past it) therefore fails instead of publishing a
//!   timestamp that names an older snapshot.
//!
//! The interface is blocking because the repository is: it signs and writes in one
//! sequence, from the CLI (no runtime) and from the server (on blocking threads). The
//! bucket adapter runs its requests on a runtime of its own ([`ObjectStorage`]).

mod local;
mod object;

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use local::LocalFolder;
pub use object::{ObjectStorage, Reading};

/// A stored file and the tag that names this content (an `ETag` on a bucket, the SHA-256 of
/// the bytes in a folder), for [`PublicStore::replace`].
#[derive(Debug, Clone)]
pub struct Stored {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// This content's tag.
    pub tag: String,
}

/// Held by the one writer; released when dropped.
pub struct WriterGuard(#[allow(dead_code)] Box<dyn Send>);

impl Debug for WriterGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriterGuard")
    }
}

/// The public files of a repository. Keys are `metadata/NAME` or `targets/PATH`.
pub trait PublicStore: Send + Sync + Debug {
    /// Where it is, for messages (`/srv/…/public/image`, `s3://bucket/prefix`).
    fn describe(&self) -> String;

    /// The file at `key` with its tag, or `None` when there is none.
    fn get(&self, key: &str) -> Result<Option<Stored>>;

    /// Whether `key` exists.
    fn exists(&self, key: &str) -> Result<bool>;

    /// Names of the files directly under `dir` (`metadata`, say): file names, not keys.
    fn list(&self, dir: &str) -> Result<Vec<String>>;

    /// Writes `key`, replacing what is there.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;

    /// Writes `key` only if it does not exist; `false` when it did (nothing written).
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool>;

    /// Replaces `key` only if its content is still the one tagged `expected` (`None`: only
    /// if there is none); `false` when it changed (nothing written).
    fn replace(&self, key: &str, bytes: &[u8], expected: Option<&str>) -> Result<bool>;

    /// A local path to write a large file to before [`PublicStore::put_file`] moves it to
    /// `key` (beside it in a folder, so the move is a rename; a scratch file otherwise).
    fn staging_path(&self, key: &str) -> Result<PathBuf>;

    /// Moves the file at `staged` (from [`PublicStore::staging_path`]) to `key`, streaming
    /// it in parts to a bucket; the staged file is gone afterwards.
    fn put_file(&self, key: &str, staged: &Path) -> Result<()>;

    /// Makes `to` hold what `from` holds (a hard link in a folder, a server-side copy).
    fn copy(&self, from: &str, to: &str) -> Result<()>;

    /// Takes the writer lock, waiting for the holder.
    fn lock(&self) -> Result<WriterGuard>;

    /// The local folder (metadata, targets) when the store is one.
    fn folders(&self) -> Option<(&Path, &Path)> {
        None
    }

    /// The bucket, for serving its files over HTTP when it is one.
    fn objects(&self) -> Option<&ObjectStorage> {
        None
    }
}

/// `[image_store]` in `rampart.toml`: where the image repository's public files are kept.
/// Credentials come from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, as every AWS tool reads them), never from this file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageStoreConfig {
    /// `s3://BUCKET/PREFIX`; empty: the data directory's `public/image/` folder.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// An S3-compatible server's address (`http://127.0.0.1:9000`); AWS when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The bucket's region (default `us-east-1`, or `AWS_REGION`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Seconds a writer's lease on the bucket lasts before another writer may take it
    /// over (default 60; a write takes milliseconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_secs: Option<u64>,
}

impl ImageStoreConfig {
    /// Whether the files are kept on object storage.
    pub fn is_remote(&self) -> bool {
        !self.url.is_empty()
    }

    /// Whether the files are kept in the data directory (the default).
    pub fn is_local(&self) -> bool {
        !self.is_remote()
    }
}

/// The store `config` names, or the local folders.
pub fn open(
    config: &ImageStoreConfig,
    metadata_dir: &Path,
    targets_dir: &Path,
) -> Result<Arc<dyn PublicStore>> {
    if config.is_remote() {
        Ok(Arc::new(ObjectStorage::open(config)?))
    } else {
        Ok(Arc::new(LocalFolder::new(metadata_dir, targets_dir)))
    }
}

/// Whether `key` names a file of the repository (`metadata/NAME` or `targets/PATH`).
pub(crate) fn is_public_key(key: &str) -> bool {
    split_key(key).is_ok()
}

/// Splits `metadata/NAME` or `targets/PATH` into its namespace and the rest.
fn split_key(key: &str) -> Result<(Namespace, &str)> {
    match key.split_once('/') {
        Some(("metadata", rest)) if !rest.is_empty() => Ok((Namespace::Metadata, rest)),
        Some(("targets", rest)) if !rest.is_empty() => Ok((Namespace::Targets, rest)),
        _ => Err(Error::BadRequest(format!(
            "{key:?}: a repository file is metadata/NAME or targets/PATH"
        ))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Namespace {
    Metadata,
    Targets,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_namespace() {
        assert_eq!(
            split_key("metadata/1.root.json").unwrap(),
            (Namespace::Metadata, "1.root.json")
        );
        assert_eq!(
            split_key("targets/ecu/abc.fw").unwrap(),
            (Namespace::Targets, "ecu/abc.fw")
        );
        for bad in ["", "metadata/", "other/x", "metadata"] {
            assert!(split_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_folder_is_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(
            &ImageStoreConfig::default(),
            &dir.path().join("m"),
            &dir.path().join("t"),
        )
        .unwrap();
        assert!(store.folders().is_some());
        assert!(store.objects().is_none());
    }
}

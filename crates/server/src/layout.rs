//! Where things live in a data directory.
//!
//! ```text
//! D/                              0700: keys, database and configuration are private
//! D/rampart.toml                  configuration (0600; written by `repo init`, edited by people)
//! D/offline-keys/                 root and targets keys of both repositories (0700/0600):
//!                                 move this folder to offline storage after the ceremony
//! D/online-keys/                  snapshot/timestamp (image) and targets/snapshot/timestamp
//!                                 (director) keys the running server signs with, and
//!                                 `content-kek`, which seals the content keys of encrypted
//!                                 images in the database (all 0600)
//! D/pki/                          fleet CA, TLS server certificate, admin token
//! D/public/image/metadata/        the image repository, as any static server or CDN serves it
//! D/public/image/targets/         images, content-addressed (HASH.NAME) and encrypted copies
//! D/public/director/              the director's root chain (N.root.json), the same for all
//! D/staging/                      unsigned metadata exported for offline signing
//! D/rampart.db                    SQLite database, with its -wal/-shm files 0600 (unless
//!                                 PostgreSQL is configured)
//! ```

use std::path::{Path, PathBuf};

/// Paths inside one data directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout of data directory `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Configuration file.
    pub fn config_file(&self) -> PathBuf {
        self.root.join("rampart.toml")
    }

    /// Default offline keys folder.
    pub fn offline_keys(&self) -> PathBuf {
        self.root.join("offline-keys")
    }

    /// Online keys folder.
    pub fn online_keys(&self) -> PathBuf {
        self.root.join("online-keys")
    }

    /// PKI folder.
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }

    /// Public image repository metadata.
    pub fn image_metadata(&self) -> PathBuf {
        self.root.join("public/image/metadata")
    }

    /// Public image repository targets.
    pub fn image_targets(&self) -> PathBuf {
        self.root.join("public/image/targets")
    }

    /// Public director root chain.
    pub fn director_public(&self) -> PathBuf {
        self.root.join("public/director")
    }

    /// Staging folder for offline signing.
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// Default SQLite database URL.
    pub fn default_database_url(&self) -> String {
        format!("sqlite://{}", self.root.join("rampart.db").display())
    }
}

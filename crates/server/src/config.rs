//! `D/rampart.toml`: what `rampart serve` needs, written by the key ceremony and edited by
//! people. Command-line flags override it.
//!
//! ```toml
//! listen = "127.0.0.1:8443"
//! tls = true
//! # database = "postgres://rampart@db.internal/rampart"   (default: SQLite in the data dir)
//! offline_keys = "offline-keys"
//!
//! [online_keys]   # file paths (relative to the data dir) or pkcs11:… key sources
//! image_snapshot = "online-keys/image-snapshot.pem"
//! image_timestamp = "online-keys/image-timestamp.pem"
//! director_targets = "online-keys/director-targets.pem"
//! director_snapshot = "online-keys/director-snapshot.pem"
//! director_timestamp = "online-keys/director-timestamp.pem"
//!
//! [limits]
//! max_body_bytes = 1048576
//! requests_per_second = 20.0
//! burst = 60.0
//! ```

use std::fs;

use serde::{Deserialize, Serialize};

use crate::api::Limits;
use crate::director::DirectorKeys;
use crate::error::{Error, Result};
use crate::keys::KeySource;
use crate::layout::Layout;
use crate::repo::OnlineKeys;

/// The configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Address to listen on.
    pub listen: String,
    /// Serve HTTPS with the fleet PKI (`false` only for labs: vehicle identity then rests on
    /// manifest signatures alone).
    #[serde(default = "yes")]
    pub tls: bool,
    /// Database URL; SQLite in the data directory when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Where the offline keys were written (move them away after the ceremony).
    pub offline_keys: String,
    /// Online key sources.
    pub online_keys: OnlineKeyConfig,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsConfig,
}

fn yes() -> bool {
    true
}

/// Key sources of the online keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineKeyConfig {
    /// Image repository snapshot key.
    pub image_snapshot: String,
    /// Image repository timestamp key.
    pub image_timestamp: String,
    /// Director targets key.
    pub director_targets: String,
    /// Director snapshot key.
    pub director_snapshot: String,
    /// Director timestamp key.
    pub director_timestamp: String,
}

impl OnlineKeyConfig {
    /// Points the online key of `repository` (`image`, `director`) `role` at `source`.
    pub fn set(&mut self, repository: &str, role: &str, source: &str) -> Result<()> {
        let slot = match (repository, role) {
            ("image", "snapshot") => &mut self.image_snapshot,
            ("image", "timestamp") => &mut self.image_timestamp,
            ("director", "targets") => &mut self.director_targets,
            ("director", "snapshot") => &mut self.director_snapshot,
            ("director", "timestamp") => &mut self.director_timestamp,
            _ => {
                return Err(Error::Config(format!(
                    "{repository} {role} is not an online key"
                )))
            }
        };
        *slot = source.to_owned();
        Ok(())
    }
}

/// Request limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitsConfig {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Sustained requests per second per client.
    pub requests_per_second: f64,
    /// Burst per client.
    pub burst: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = Limits::default();
        LimitsConfig {
            max_body_bytes: l.max_body_bytes,
            requests_per_second: l.requests_per_second,
            burst: l.burst,
        }
    }
}

impl LimitsConfig {
    /// As API limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            requests_per_second: self.requests_per_second,
            burst: self.burst,
        }
    }
}

impl Config {
    /// Reads `D/rampart.toml`.
    pub fn load(layout: &Layout) -> Result<Self> {
        let path = layout.config_file();
        let text = fs::read_to_string(&path).map_err(|e| {
            Error::Config(format!(
                "{}: {e} (run `rampart repo init` first)",
                path.display()
            ))
        })?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Writes `D/rampart.toml`.
    pub fn save(&self, layout: &Layout) -> Result<()> {
        let text = toml::to_string_pretty(self).map_err(|e| Error::Config(e.to_string()))?;
        let path = layout.config_file();
        fs::write(&path, text).map_err(|e| Error::io(&path, e))
    }

    /// The database URL in force.
    pub fn database_url(&self, layout: &Layout) -> String {
        self.database
            .clone()
            .unwrap_or_else(|| layout.default_database_url())
    }

    fn source(&self, layout: &Layout, s: &str) -> KeySource {
        KeySource::parse(s, layout.root())
    }

    /// Opens the image repository's online keys.
    pub fn image_online_keys(&self, layout: &Layout) -> Result<OnlineKeys> {
        Ok(OnlineKeys {
            snapshot: self
                .source(layout, &self.online_keys.image_snapshot)
                .load()?,
            timestamp: self
                .source(layout, &self.online_keys.image_timestamp)
                .load()?,
        })
    }

    /// Opens the director's online keys.
    pub fn director_keys(&self, layout: &Layout) -> Result<DirectorKeys> {
        Ok(DirectorKeys {
            targets: self
                .source(layout, &self.online_keys.director_targets)
                .load()?,
            snapshot: self
                .source(layout, &self.online_keys.director_snapshot)
                .load()?,
            timestamp: self
                .source(layout, &self.online_keys.director_timestamp)
                .load()?,
        })
    }

    /// The offline keys folder (absolute).
    pub fn offline_keys_dir(&self, layout: &Layout) -> std::path::PathBuf {
        let p = std::path::Path::new(&self.offline_keys);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            layout.root().join(p)
        }
    }
}

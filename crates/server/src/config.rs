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
//! content_kek = "online-keys/content-kek"   # seals content keys of encrypted images (0600)
//!
//! [limits]
//! max_body_bytes = 1048576
//! requests_per_second = 20.0
//! burst = 60.0
//!
//! [server]                          # connections (see crate::conn); every field optional
//! handshake_timeout_ms = 10000      # TLS handshake
//! first_request_timeout_ms = 10000  # from accept (after TLS) to the first request's headers
//! header_read_timeout_ms = 30000    # HTTP/1: one request's headers
//! idle_timeout_ms = 60000           # HTTP/1 keep-alive and HTTP/2: no request in flight
//! stall_timeout_ms = 60000          # a request whose client stopped sending or reading is cut
//! h2_keep_alive_interval_ms = 30000 # HTTP/2 PING every … (0: none)
//! h2_keep_alive_timeout_ms = 10000  # … and close if it is not answered within
//! max_connections = 10000           # in total (capped below the open-files limit)
//! max_connections_per_ip = 256      # per client address (IPv6: per /64)
//!
//! [pki]
//! revocation_refresh_ms = 1000      # revocations take effect within this (0: every request)
//!
//! [events]                          # security events; every field optional
//! window_secs = 60                  # identical events within this are one row with a count
//! max_new_per_minute = 30           # new rows per (client address, rule); more are counted
//! max_age_days = 90                 # pruned when last seen longer ago (0: never), and
//!                                   # webhook deliveries done with, queued as long ago
//! max_rows = 1000000                # at most this many rows, the newest kept (0: no limit)
//! prune_every_secs = 3600           # pruning runs at start and then this often
//!
//! [manifests]                       # stored vehicle manifests; every field optional
//! quiet_max_age_days = 7            # one whose check-in changed nothing: pruned after (0: never)
//! max_age_days = 0                  # any other: pruned after (0: never); a vehicle's newest stays
//! prune_every_secs = 3600           # pruning runs at start and then this often
//!
//! [vsoc]                            # the V-SOC engine (crate::vsoc); every field optional
//! check_every_secs = 10
//! window_secs = 900                 # the correlation rules look at this much history
//! fleet_vehicles = 3                # one attack rule from this many vehicles: fleet incident
//! vehicle_rejections = 5            # one vehicle refusing metadata this often: vehicle incident
//! address_events = 50               # certificate / identity refusals of one address
//! address_floods = 3                # flood episodes (rate limited, connection cap) of one address
//! key_vehicles = 2                  # signature failures from this many vehicles: key compromise
//! silent_after_secs = 21600         # instructed by a running campaign, silent this long
//! halt_campaigns = true             # an incident about an image halts the campaigns shipping it
//! quarantine_automatically = false  # a vehicle incident quarantines the vehicle at once
//!
//! [vsoc.export]                     # a SIEM webhook (off while webhook_url is empty)
//! webhook_url = "https://siem.example/rampart"
//! webhook_secret_file = "/etc/rampart/webhook-secret"  # HMAC key, 0600, ≥ 16 bytes
//!
//! [console]
//! session_minutes = 480             # a console session ends this long after sign-in
//!
//! [image_store]                     # absent: the image repository is in D/public/image/
//! url = "s3://oem-images/prod"      # an S3-compatible bucket/prefix (crate::store)
//! endpoint = "http://127.0.0.1:9000"  # not AWS; credentials from AWS_ACCESS_KEY_ID/…
//! region = "us-east-1"
//! lease_secs = 60                   # a writer's lease on the bucket
//! ```

use std::fs;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::Limits;
use crate::conn::ConnectionOptions;
use crate::director::{DirectorKeys, EventPolicy};
use crate::error::{Error, Result};
use crate::keys::kek::ContentKek;
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
    /// Connection timeouts and caps.
    #[serde(default)]
    pub server: ServerConfig,
    /// Recording and retention of security events.
    #[serde(default)]
    pub events: EventsConfig,
    /// Retention of stored vehicle manifests.
    #[serde(default)]
    pub manifests: ManifestsConfig,
    /// Vehicle certificates.
    #[serde(default)]
    pub pki: PkiConfig,
    /// Campaigns.
    #[serde(default)]
    pub campaigns: CampaignsConfig,
    /// "Check in now" nudges over MQTT.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// The V-SOC engine: correlation thresholds, responses, export.
    #[serde(default)]
    pub vsoc: crate::vsoc::VsocConfig,
    /// The web console.
    #[serde(default)]
    pub console: crate::console::ConsoleConfig,
    /// Where the image repository's public files are kept (default: `D/public/image/`).
    #[serde(
        default,
        skip_serializing_if = "crate::store::ImageStoreConfig::is_local"
    )]
    pub image_store: crate::store::ImageStoreConfig,
}

/// `[mqtt]`: where "check in now" nudges are published (off while `url` is empty). See
/// `docs/deployment.md` for the broker's TLS and per-VIN ACL.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MqttConfig {
    /// `mqtt://HOST:PORT`, or `mqtts://HOST:PORT` for TLS; empty: no nudges (vehicles poll).
    pub url: String,
    /// Topic prefix: a vehicle's nudges go to `PREFIX/VIN/nudge`.
    pub topic_prefix: Option<String>,
    /// CA certificate of the broker for `mqtts` (default: the fleet CA, `pki/ca.pem`).
    pub ca: Option<std::path::PathBuf>,
    /// User name at the broker, if it asks for one.
    pub username: Option<String>,
    /// File holding its password (0600).
    pub password_file: Option<std::path::PathBuf>,
}

/// `[campaigns]`: how often running campaigns are judged without a check-in (a wave's soak
/// time and a campaign's deadline pass with no vehicle reporting).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CampaignsConfig {
    /// Seconds between two judgements of every running campaign.
    pub check_every_secs: u64,
}

impl Default for CampaignsConfig {
    fn default() -> Self {
        CampaignsConfig {
            check_every_secs: 10,
        }
    }
}

impl CampaignsConfig {
    /// The interval (at least 1 s).
    pub fn check_every(&self) -> Duration {
        Duration::from_secs(self.check_every_secs.max(1))
    }
}

/// `[pki]`: vehicle certificates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PkiConfig {
    /// How often (ms) each server re-reads the revoked certificates from the database: a
    /// revocation takes effect within this (0: every vehicle request reads the database).
    pub revocation_refresh_ms: u64,
}

impl Default for PkiConfig {
    fn default() -> Self {
        PkiConfig {
            revocation_refresh_ms: millis(crate::revocation::DEFAULT_REFRESH),
        }
    }
}

impl PkiConfig {
    /// The refresh interval of the revocation list.
    pub fn revocation_refresh(&self) -> Duration {
        Duration::from_millis(self.revocation_refresh_ms)
    }
}

/// `[events]`: how security events are recorded and how long they are kept — anyone can
/// make the server refuse something, so without bounds the event table grows without end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventsConfig {
    /// Identical events (same source, rule, vehicle, ECU, detail, client address) within this
    /// many seconds are stored as one row with a count.
    pub window_secs: u64,
    /// New rows a minute per (client address, rule); past it, events are counted on the
    /// latest row of that address and rule.
    pub max_new_per_minute: u32,
    /// Events last seen longer ago than this many days are deleted (0: kept), and so are the
    /// webhook's deliveries queued that long ago and done with (`vsoc::export::prune`).
    pub max_age_days: u32,
    /// At most this many rows are kept, the newest (0: no limit).
    pub max_rows: u64,
    /// Pruning runs when the server starts and then every this many seconds.
    pub prune_every_secs: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            window_secs: 60,
            max_new_per_minute: EventPolicy::default().max_new_per_minute,
            max_age_days: 90,
            max_rows: 1_000_000,
            prune_every_secs: 3600,
        }
    }
}

impl EventsConfig {
    /// The director's event policy.
    pub fn policy(&self) -> EventPolicy {
        EventPolicy {
            max_new_per_minute: self.max_new_per_minute,
        }
    }

    /// Identical events within this are counted on one row.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }

    /// Age past which events are pruned (`None`: kept).
    pub fn max_age(&self) -> Option<Duration> {
        days(self.max_age_days)
    }

    /// Rows kept at most (`None`: no limit).
    pub fn max_rows(&self) -> Option<u64> {
        (self.max_rows > 0).then_some(self.max_rows)
    }

    /// How often pruning runs (at least once a second).
    pub fn prune_every(&self) -> Duration {
        Duration::from_secs(self.prune_every_secs.max(1))
    }
}

/// `[manifests]`: how long stored vehicle manifests are kept. Every accepted check-in stores
/// its signed manifest (3–4 KB); a fleet polling every 15 minutes adds ~100 a day per vehicle,
/// so without pruning the table grows without end. Most say only "nothing changed": those
/// (`quiet`) go after `quiet_max_age_days` — a week by default, which at a 15-minute poll is
/// 672 a vehicle, about 2 MB as PostgreSQL stores them (`bench/run`'s fleet measures it). The
/// others — a completed update, an update failure or progress, a security event, a refused
/// ECU report — are what an audit of an update or an incident looks for, and are kept unless
/// `max_age_days` is set (their outcome is also in the update records and events). Each
/// vehicle's newest manifest is always kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ManifestsConfig {
    /// Quiet manifests received longer ago than this many days are deleted (0: kept).
    pub quiet_max_age_days: u32,
    /// Any manifest received longer ago than this many days is deleted (0: kept).
    pub max_age_days: u32,
    /// Pruning runs when the server starts and then every this many seconds.
    pub prune_every_secs: u64,
}

impl Default for ManifestsConfig {
    fn default() -> Self {
        ManifestsConfig {
            quiet_max_age_days: 7,
            max_age_days: 0,
            prune_every_secs: 3600,
        }
    }
}

impl ManifestsConfig {
    /// Age past which quiet manifests are pruned (`None`: kept).
    pub fn quiet_max_age(&self) -> Option<Duration> {
        days(self.quiet_max_age_days)
    }

    /// Age past which any manifest is pruned (`None`: kept).
    pub fn max_age(&self) -> Option<Duration> {
        days(self.max_age_days)
    }

    /// How often pruning runs (at least once a second).
    pub fn prune_every(&self) -> Duration {
        Duration::from_secs(self.prune_every_secs.max(1))
    }
}

/// `n` days, or `None` for 0 (a retention that keeps).
fn days(n: u32) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(u64::from(n) * 86_400))
}

/// `[server]`: how long connections may take or idle, and how many there may be — against
/// clients that connect and go silent, and floods of connections from one address.
/// Durations in milliseconds; absent fields take the defaults of
/// [`ConnectionOptions::default`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Longest a TLS handshake may take.
    pub handshake_timeout_ms: u64,
    /// Longest from the connection's start (after TLS) to its first request's headers: a
    /// connection that says nothing is closed then.
    pub first_request_timeout_ms: u64,
    /// Longest an HTTP/1 client may take to send one request's headers.
    pub header_read_timeout_ms: u64,
    /// A connection (HTTP/1 keep-alive or HTTP/2) with no request in flight for this long is
    /// closed.
    pub idle_timeout_ms: u64,
    /// A connection whose requests in flight make no progress for this long — the client
    /// stopped sending a request body or reading a response — is cut.
    pub stall_timeout_ms: u64,
    /// Interval of HTTP/2 keep-alive PINGs (0: none).
    pub h2_keep_alive_interval_ms: u64,
    /// An HTTP/2 connection whose PING is not answered within this is closed.
    pub h2_keep_alive_timeout_ms: u64,
    /// Most open connections in total; more are closed at once. Capped at start below the
    /// process's open-files limit.
    pub max_connections: usize,
    /// Most open connections from one client address (an IPv6 /64 counts as one address);
    /// more are closed at once and reported as a `connection-flood` security event.
    pub max_connections_per_ip: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig::from(&ConnectionOptions::default())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<&ConnectionOptions> for ServerConfig {
    fn from(o: &ConnectionOptions) -> Self {
        ServerConfig {
            handshake_timeout_ms: millis(o.handshake_timeout),
            first_request_timeout_ms: millis(o.first_request_timeout),
            header_read_timeout_ms: millis(o.header_read_timeout),
            idle_timeout_ms: millis(o.idle_timeout),
            stall_timeout_ms: millis(o.stall_timeout),
            h2_keep_alive_interval_ms: o.h2_keep_alive_interval.map_or(0, millis),
            h2_keep_alive_timeout_ms: millis(o.h2_keep_alive_timeout),
            max_connections: o.max_connections,
            max_connections_per_ip: o.max_connections_per_ip,
        }
    }
}

impl ServerConfig {
    /// As connection options.
    pub fn connection_options(&self) -> ConnectionOptions {
        let ms = Duration::from_millis;
        ConnectionOptions {
            handshake_timeout: ms(self.handshake_timeout_ms),
            first_request_timeout: ms(self.first_request_timeout_ms),
            header_read_timeout: ms(self.header_read_timeout_ms),
            idle_timeout: ms(self.idle_timeout_ms),
            stall_timeout: ms(self.stall_timeout_ms),
            h2_keep_alive_interval: (self.h2_keep_alive_interval_ms > 0)
                .then(|| ms(self.h2_keep_alive_interval_ms)),
            h2_keep_alive_timeout: ms(self.h2_keep_alive_timeout_ms),
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
        }
    }
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
    /// Key-encryption key of the content keys of encrypted images (a file; see
    /// [`crate::keys::kek`]).
    #[serde(default = "default_content_kek")]
    pub content_kek: String,
}

/// The content KEK's place in the data directory.
pub fn default_content_kek() -> String {
    format!("online-keys/{}", crate::keys::kek::DEFAULT_FILE_NAME)
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

    /// Writes `D/rampart.toml`, mode 0600: the database URL may carry a password.
    pub fn save(&self, layout: &Layout) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let text = toml::to_string_pretty(self).map_err(|e| Error::Config(e.to_string()))?;
        let path = layout.config_file();
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // An existing file keeps its mode through `open`: narrow it too.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .and_then(|()| f.write_all(text.as_bytes()))
            .map_err(|e| Error::io(&path, e))
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

    /// Opens the content KEK: a file or a PKCS#11 token. The default file is created if
    /// missing (data directories made before content keys were sealed); a configured one
    /// must exist.
    pub fn content_kek(&self, layout: &Layout) -> Result<ContentKek> {
        match self.source(layout, &self.online_keys.content_kek) {
            KeySource::Pkcs11(spec) => ContentKek::open_pkcs11(&spec),
            KeySource::File(path) => {
                let default = layout.root().join(default_content_kek());
                if path == default {
                    let (kek, created) = ContentKek::load_or_create(&path)?;
                    if created {
                        tracing::info!(path = %path.display(), "created the content key-encryption key");
                    }
                    Ok(kek)
                } else {
                    ContentKek::load(&path)
                }
            }
        }
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

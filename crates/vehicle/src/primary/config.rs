//! `vehicle.toml`: what a primary is provisioned with.

use std::path::{Path, PathBuf};

use super::*;

/// One ECU as the primary knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EcuRef {
    /// ECU identifier.
    pub ecu_id: String,
    /// Hardware identifier.
    pub hardware_id: String,
    /// Where the gateway reaches it (host:port).
    pub address: String,
    /// Full or partial verification.
    pub verification: Verification,
    /// What it does, for the owner ("infotainment (IVI)").
    #[serde(default)]
    pub description: String,
    /// What is unavailable while it updates.
    #[serde(default)]
    pub unavailable: String,
    /// A legacy ECU, flashed by this gateway over UDS on DoIP (`address` is its DoIP entity):
    /// its logical address and security-access secret. Its reports are made and signed by
    /// the primary (`vouched_by`); it is registered with the primary's key. Absent: an
    /// Uptane secondary on the in-vehicle protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uds: Option<crate::uds::gateway::UdsLink>,
}

/// `vehicle.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrimaryConfig {
    /// Vehicle identification number.
    pub vin: String,
    /// ECU ID of the primary (its key signs the manifest).
    pub ecu_id: String,
    /// Server base URL (`https://host:port/`).
    pub server: String,
    /// Image repository base URL (default `SERVER/image/`); a CDN or static mirror works.
    #[serde(default)]
    pub image_base: Option<String>,
    /// CA certificate(s) to trust for HTTPS (the fleet CA).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) identifying the vehicle.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The primary's signing key (PKCS#8 PEM).
    pub key: PathBuf,
    /// Director root provisioned at the factory.
    pub director_root: PathBuf,
    /// Image repository root provisioned at the factory.
    pub image_root: PathBuf,
    /// Trusted state.
    pub state_dir: PathBuf,
    /// Seconds between cycles.
    #[serde(default = "default_poll")]
    pub poll_seconds: u64,
    /// Shell command checked before installing (battery, parked…); non-zero exit refuses.
    #[serde(default)]
    pub precondition: Option<String>,
    /// Minimum download speed (bytes/s) before a download counts as slow retrieval.
    #[serde(default = "default_min_speed")]
    pub min_bytes_per_second: u64,
    /// Longest pause in a download (seconds).
    #[serde(default = "default_stall")]
    pub stall_seconds: u64,
    /// The vehicle's ECUs (the primary's own firmware ECU included).
    pub ecus: Vec<EcuRef>,
    /// "Check in now" nudges over MQTT (optional; polling stays the fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nudges: Option<NudgeConfig>,
}

/// `[nudges]` of `vehicle.toml`: the MQTT broker the server publishes "check in now" on.
/// A nudge carries no authority: it can only make the vehicle check in early, at most once
/// every `min_interval_seconds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NudgeConfig {
    /// `mqtt://HOST:PORT`, or `mqtts://HOST:PORT` (TLS with `ca`, and the vehicle's
    /// `client_cert` as its identity).
    pub url: String,
    /// Topic prefix: the vehicle listens on `PREFIX/VIN/nudge`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// At most one early check-in per this many seconds, however many nudges arrive.
    #[serde(default = "default_nudge_interval")]
    pub min_interval_seconds: u64,
    /// User name at the broker, if it asks for one (often the VIN, for its ACL).
    #[serde(default)]
    pub username: Option<String>,
}

fn default_prefix() -> String {
    rampart_client::nudge::DEFAULT_PREFIX.to_owned()
}

fn default_nudge_interval() -> u64 {
    30
}

fn default_poll() -> u64 {
    300
}

fn default_min_speed() -> u64 {
    1024
}

fn default_stall() -> u64 {
    20
}

/// Loads `vehicle.toml`, making relative paths relative to its folder.
pub fn load_config(path: &Path) -> Result<PrimaryConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut c: PrimaryConfig =
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    for p in [
        &mut c.key,
        &mut c.director_root,
        &mut c.image_root,
        &mut c.state_dir,
    ] {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    let secrets = c
        .ecus
        .iter_mut()
        .filter_map(|e| e.uds.as_mut().map(|u| &mut u.security_secret));
    for p in [c.ca.as_mut(), c.client_cert.as_mut()]
        .into_iter()
        .flatten()
        .chain(secrets)
    {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    Ok(c)
}

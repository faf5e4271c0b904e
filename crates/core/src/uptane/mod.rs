//! Uptane 2.1 on top of TUF: what the director and the image repository must say, and how a
//! vehicle checks that they agree.
//!
//! Rampart's Uptane profile (its "POUF"), as signed into TUF `custom` fields:
//!
//! *Image repository target* (`targets` or a supplier's delegated role):
//! ```json
//! "firmware/tbox-2.1.bin": {"length": 1048576, "hashes": {"sha256": "…", "sha512": "…"},
//!   "custom": {"hardware_id": "tbox-a", "release_counter": 7, "version": "2.1.0"}}
//! ```
//! *Director target* for one vehicle: the same path, length and hashes (of the plaintext),
//! the same release counter, and the ECUs that must install it:
//! ```json
//! "firmware/tbox-2.1.bin": {"length": 1048576, "hashes": {…},
//!   "custom": {"release_counter": 7, "ecus": {"TBOX-0001": {"hardware_id": "tbox-a",
//!     "encryption": {"key": {WrappedKey}, "ciphertext": {"path": "…", "length": …, "hashes": {…}}}}}}}
//! ```
//! and the director's targets document names its vehicle at top level (`"uptane": {"vin": …}`)
//! so that an answer for one car — even an empty one — cannot be replayed to another.

mod director;
mod full;
pub mod manifest;
mod partial;
pub mod receipt;
pub mod window;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use director::{
    check_against_image, check_delta_against_image, verify_director_targets, DirectorInstruction,
};
pub use full::{FullVerifier, Repo, Scope, UptaneAction, Verdict, VerifiedUpdate};
pub use partial::{PartialOutcome, PartialVerifier};

use crate::encryption::WrappedKey;
use crate::error::{Error, Result};
use crate::hash::Hashes;
use crate::metadata::TargetFile;

/// Uptane fields of an image repository target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageCustom {
    /// Hardware the image is built for.
    pub hardware_id: String,
    /// Anti-rollback counter: an ECU never installs a lower one.
    pub release_counter: u64,
    /// Human-readable version, for people (not used in any decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// What the update is for, in the publisher's words: what the owner is told (UNECE R156
    /// §7.2). Not used in any decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// How long installing it takes, in seconds, as the publisher measured it: what the owner
    /// is told. Not used in any decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_seconds: Option<u64>,
    /// Present on a delta target: the images it joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaOf>,
}

/// One image named by path, length and hashes (a delta's source or result).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// Target path.
    pub filename: String,
    /// Exact length.
    pub length: u64,
    /// Hashes.
    pub hashes: Hashes,
}

impl ImageRef {
    /// Whether `installed` is this image (same length and hashes; the name is not compared,
    /// the bytes are what a delta applies to).
    pub fn is(&self, installed: &InstalledImage) -> bool {
        self.length == installed.length && self.hashes == installed.hashes
    }
}

/// What an image repository delta target joins (`custom.delta`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaOf {
    /// The delta format ([`DELTA_FORMAT`]).
    pub format: String,
    /// The image the delta applies to.
    pub source: ImageRef,
    /// The image it makes.
    pub result: ImageRef,
}

/// The one delta format Rampart makes and applies: BSDIFF40 (bsdiff 4.3's).
pub const DELTA_FORMAT: &str = "bsdiff40";

/// A delta the director offers one ECU in place of downloading the full image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeltaOffer {
    /// The delta's target path in the image repository.
    pub path: String,
    /// Length of the delta (its plaintext), as the image repository signs it.
    pub length: u64,
    /// Hashes of the delta (its plaintext).
    pub hashes: Hashes,
    /// The delta format ([`DELTA_FORMAT`]).
    pub format: String,
    /// The image the ECU must run for the delta to apply.
    pub source: ImageRef,
    /// The delta encrypted for this ECU, if the image is sent encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptedImage>,
}

impl ImageCustom {
    /// The custom object as a JSON value for `TargetFile::custom`.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Where and what the encrypted form of an image is, for one ECU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncryptedImage {
    /// The content key, wrapped for this ECU's X25519 key.
    pub key: WrappedKey,
    /// The ciphertext file the primary downloads (hashes and length checked on download).
    pub ciphertext: CiphertextFile,
}

/// The ciphertext of an encrypted image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CiphertextFile {
    /// Path relative to the targets base URL.
    pub path: String,
    /// Exact length.
    pub length: u64,
    /// Hashes of the ciphertext.
    pub hashes: Hashes,
}

/// What the director tells one ECU about one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EcuAssignment {
    /// The ECU's hardware ID, as the director's inventory knows it.
    pub hardware_id: String,
    /// Encryption parameters if the image is sent encrypted to this ECU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptedImage>,
    /// A delta from the image this ECU reported to the target, if one is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaOffer>,
}

/// Uptane fields of a director target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectorCustom {
    /// Must equal the image repository's.
    pub release_counter: u64,
    /// ECU ID → assignment.
    pub ecus: BTreeMap<String, EcuAssignment>,
    /// When the vehicle may install it ([`window::MaintenanceWindow`] syntax); absent: any
    /// time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<String>,
}

impl DirectorCustom {
    /// The custom object as a JSON value for `TargetFile::custom`.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// What an ECU runs now, as its version report states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledImage {
    /// Target path of the installed image.
    pub filename: String,
    /// Its length.
    pub length: u64,
    /// Its hashes.
    pub hashes: Hashes,
    /// Its release counter (the anti-rollback floor of this ECU).
    pub release_counter: u64,
}

/// Top-level Uptane field of director targets metadata (an unrecognised field to TUF).
pub const DIRECTOR_VEHICLE_FIELD: &str = "uptane";

/// The vehicle a director targets document is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectorVehicle {
    /// Vehicle identification number.
    pub vin: String,
}

fn parse_custom<T: serde::de::DeserializeOwned>(
    target: &str,
    file: &TargetFile,
    field: &str,
) -> Result<T> {
    let custom = file.custom.clone().ok_or_else(|| Error::MissingCustom {
        target: target.to_owned(),
        field: field.to_owned(),
    })?;
    serde_json::from_value(custom).map_err(|e| Error::MissingCustom {
        target: target.to_owned(),
        field: format!("{field} ({e})"),
    })
}

/// Reads the Uptane fields of an image repository target.
pub fn image_custom(target: &str, file: &TargetFile) -> Result<ImageCustom> {
    parse_custom(target, file, "hardware_id/release_counter")
}

/// Reads the Uptane fields of a director target.
pub fn director_custom(target: &str, file: &TargetFile) -> Result<DirectorCustom> {
    parse_custom(target, file, "release_counter/ecus")
}

/// Uptane 5.4.4.x: a release counter must never go down on an ECU.
pub fn check_release_counter(target: &str, installed: Option<u64>, new: u64) -> Result<()> {
    match installed {
        Some(trusted) if new < trusted => Err(Error::ReleaseCounterDecreased {
            target: target.to_owned(),
            trusted,
            new,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;

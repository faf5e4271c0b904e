//! Signed ECU version reports and vehicle version manifests (Uptane 5.4.2).
//!
//! Both use TUF's envelope (`{"signed": …, "signatures": […]}`, signatures over canonical
//! JSON). Every field is filled for real: the installed image as the ECU measured it, the
//! attack it noticed (empty if none), the time it last verified metadata, and a counter that
//! grows every cycle plus a fresh nonce, so the director can refuse replays.
//!
//! ```json
//! {"signed": {"_type": "ecu_version_report", "ecu_id": "IVI-0001",
//!   "installed_image": {"filename": "ivi/app-3.bin", "length": 12, "hashes": {…}, "release_counter": 3},
//!   "attacks_detected": "", "latest_verified_time": "2030-01-01T00:00:00Z",
//!   "report_counter": 17, "nonce": "9f…"}, "signatures": [{"keyid": "…", "sig": "…"}]}
//! ```
//! The vehicle manifest wraps the reports (as received, signatures included):
//! ```json
//! {"signed": {"_type": "vehicle_manifest", "vin": "…", "primary_ecu_id": "TBOX-0001",
//!   "manifest_counter": 17, "nonce": "…", "attacks_detected": "",
//!   "ecu_version_reports": {"IVI-0001": {report}}},
//!  "signatures": […]}
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::InstalledImage;
use crate::error::{Error, Result};
use crate::key::PreparedKey;
use crate::metadata::{sign_role, Envelope, Expiry};
use crate::signer::Signer;

/// `_type` of an ECU version report.
pub const ECU_REPORT_TYPE: &str = "ecu_version_report";
/// `_type` of a vehicle version manifest.
pub const VEHICLE_MANIFEST_TYPE: &str = "vehicle_manifest";

/// Field of an ECU version report that a primary made itself, from what a legacy ECU (one
/// without Uptane keys, flashed over UDS) answered: the primary's ECU ID. Such a report is
/// signed with the primary's key, which is what that ECU is registered with; the director
/// can tell it from a report the ECU signed.
pub const VOUCHED_BY_FIELD: &str = "vouched_by";

/// The signed part of an ECU version report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EcuVersionReport {
    /// Always `ecu_version_report`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// ECU identifier (serial).
    pub ecu_id: String,
    /// What the ECU runs now.
    pub installed_image: InstalledImage,
    /// What went wrong in the last cycle, if anything (an `Error::rule()` and message), else "".
    pub attacks_detected: String,
    /// When the ECU last verified metadata successfully.
    pub latest_verified_time: Expiry,
    /// Grows by at least one every cycle.
    pub report_counter: u64,
    /// Fresh random value of this cycle (hex).
    pub nonce: String,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl EcuVersionReport {
    /// The primary that made this report for a legacy ECU ([`VOUCHED_BY_FIELD`]), if one did.
    pub fn vouched_by(&self) -> Option<&str> {
        self.unrecognized
            .get(VOUCHED_BY_FIELD)
            .and_then(Value::as_str)
    }
}

/// The signed part of a vehicle version manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VehicleManifest {
    /// Always `vehicle_manifest`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// Vehicle identification number.
    pub vin: String,
    /// ECU ID of the primary that signed this manifest.
    pub primary_ecu_id: String,
    /// Grows by at least one every cycle.
    pub manifest_counter: u64,
    /// Fresh random value of this cycle (hex).
    pub nonce: String,
    /// ECU ID → signed report document, as the ECU produced it.
    pub ecu_version_reports: BTreeMap<String, Value>,
    /// What the primary itself noticed since its last manifest (`rule: message`, one per
    /// line), e.g. a rejected repository or a slow download; empty if nothing.
    #[serde(default)]
    pub attacks_detected: String,
    /// Updates the director instructed that failed since the last accepted manifest, each
    /// with the rule that stopped it: the director records them on its assignments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub update_failures: Vec<UpdateFailure>,
    /// Instructed updates under way (a manifest sent during a cycle, between the first and
    /// the last): the director shows them, and does not take back an instruction an ECU is
    /// installing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub progress: Vec<UpdateProgress>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

/// An instructed update that failed, as the primary reports it in its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateFailure {
    /// The image.
    pub target: String,
    /// The ECU it was for, when known (a verification failure may concern every ECU the
    /// image was assigned to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecu_id: Option<String>,
    /// The rule that stopped it.
    pub rule: String,
    /// What happened.
    pub message: String,
}

/// An instructed update under way, as the primary reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateProgress {
    /// The image.
    pub target: String,
    /// The ECU it is for.
    pub ecu_id: String,
    /// How far it got.
    pub stage: UpdateStage,
}

/// A stage of an update under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateStage {
    /// Being downloaded (and verified) by the primary.
    Downloading,
    /// Handed to its ECU, which writes, verifies and boots it.
    Installing,
}

impl UpdateStage {
    /// The name (`downloading`).
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateStage::Downloading => "downloading",
            UpdateStage::Installing => "installing",
        }
    }
}

/// Signs an ECU version report; returns the document bytes.
pub fn sign_ecu_report(report: &EcuVersionReport, signer: &dyn Signer) -> Result<Vec<u8>> {
    sign_role(report, &[signer])
}

/// Signs a vehicle manifest; returns the document bytes.
pub fn sign_vehicle_manifest(manifest: &VehicleManifest, signer: &dyn Signer) -> Result<Vec<u8>> {
    sign_role(manifest, &[signer])
}

fn verify_single(env: &Envelope, what: &str, key: &PreparedKey) -> Result<()> {
    let keyid = key.key_id()?;
    if !key.signed(&env.canonical_signed, &env.signatures) {
        return Err(Error::BadSignature {
            what: what.to_owned(),
            keyid: keyid.0.clone(),
        });
    }
    Ok(())
}

fn check_type(env: &Envelope, expected: &str) -> Result<()> {
    match env.type_field() {
        Some(t) if t == expected => Ok(()),
        found => Err(Error::WrongType {
            expected: expected.to_owned(),
            found: found.unwrap_or("(none)").to_owned(),
        }),
    }
}

/// Verifies an ECU version report document (as found in a parsed vehicle manifest): signed by
/// `key`, for `expected_ecu`.
pub fn verify_ecu_report(
    document: &Value,
    expected_ecu: &str,
    key: &PreparedKey,
) -> Result<EcuVersionReport> {
    let env = Envelope::from_tree(document, "ECU version report")?;
    check_type(&env, ECU_REPORT_TYPE)?;
    let what = format!("ECU version report of {expected_ecu}");
    verify_single(&env, &what, key)?;
    refuse_nul(&what, &env.canonical_signed)?;
    let report: EcuVersionReport = env.signed_as("ECU version report")?;
    if report.ecu_id != expected_ecu {
        return Err(Error::Manifest(format!(
            "report listed under ECU {expected_ecu} is signed for ECU {}",
            report.ecu_id
        )));
    }
    Ok(report)
}

/// Refuses signed text holding U+0000 (`canonical` is its canonical JSON, where the
/// character stays a zero byte). No Uptane field needs it, and what a director keeps cannot
/// hold it (PostgreSQL's text refuses it; a C string ends at it): refused here, naming the
/// rule, it never reaches a database as an error of its own. The error does not repeat the
/// text, for it becomes a security event.
fn refuse_nul(what: &str, canonical: &[u8]) -> Result<()> {
    if canonical.contains(&0) {
        return Err(Error::Manifest(format!(
            "{what} holds a NUL character (U+0000) in its signed fields"
        )));
    }
    Ok(())
}

/// A manifest's canonical JSON with each report's document left out (its ECU ID kept): what
/// the primary alone answers for.
fn outside_reports(manifest: &VehicleManifest) -> Result<Vec<u8>> {
    let mut outer = manifest.clone();
    for report in outer.ecu_version_reports.values_mut() {
        *report = Value::Null;
    }
    crate::canonical::to_canonical_from(&outer)
}

/// A vehicle manifest whose primary signature verified.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedManifest {
    /// The manifest.
    pub manifest: VehicleManifest,
    /// ECU reports that verified, by ECU ID.
    pub reports: BTreeMap<String, EcuVersionReport>,
    /// ECU reports that did not (ECU ID, reason): a compromised or faulty secondary. They are
    /// dropped, not trusted, and must be recorded as security events.
    pub rejected_reports: Vec<(String, Error)>,
}

/// The keys a director knows for one vehicle, prepared ([`PreparedKey`]) so that checking
/// them again on every manifest costs only the signatures.
#[derive(Debug, Clone)]
pub struct VehicleKeys<'a> {
    /// The VIN the request is authenticated as (e.g. from the client certificate).
    pub vin: &'a str,
    /// Registered primary ECU ID.
    pub primary_ecu_id: &'a str,
    /// Registered primary key.
    pub primary_key: &'a PreparedKey,
    /// Registered ECU keys, by ECU ID (the primary's own ECU included).
    pub ecu_keys: &'a BTreeMap<String, PreparedKey>,
}

/// Verifies a vehicle manifest: parsed strictly, signed by the registered primary key, for the
/// authenticated VIN and registered primary; then each ECU report against that ECU's key.
/// Reports that fail are returned in `rejected_reports` rather than failing the whole
/// manifest, so one compromised secondary cannot block the rest of the vehicle.
///
/// Freshness (counter and nonce) is the caller's to check against its stored state: see
/// [`check_counter`].
pub fn verify_vehicle_manifest(bytes: &[u8], keys: &VehicleKeys<'_>) -> Result<VerifiedManifest> {
    let env = Envelope::parse(bytes, "vehicle manifest")?;
    check_type(&env, VEHICLE_MANIFEST_TYPE)?;
    verify_single(
        &env,
        &format!("vehicle manifest of {}", keys.vin),
        keys.primary_key,
    )?;
    let manifest: VehicleManifest = env.signed_as("vehicle manifest")?;
    // Canonical JSON keeps control characters as they are: a NUL anywhere in the signed part
    // is a zero byte of it (one scan). Each report's own are its report's to answer for.
    if env.canonical_signed.contains(&0) {
        refuse_nul("vehicle manifest", &outside_reports(&manifest)?)?;
    }
    if manifest.vin != keys.vin {
        return Err(Error::WrongVehicle {
            expected: keys.vin.to_owned(),
            found: manifest.vin,
        });
    }
    if manifest.primary_ecu_id != keys.primary_ecu_id {
        return Err(Error::Manifest(format!(
            "primary ECU {} is not the registered primary {}",
            manifest.primary_ecu_id, keys.primary_ecu_id
        )));
    }
    let mut reports = BTreeMap::new();
    let mut rejected_reports = Vec::new();
    for (ecu_id, document) in &manifest.ecu_version_reports {
        let result = keys
            .ecu_keys
            .get(ecu_id)
            .ok_or_else(|| {
                Error::Manifest(format!(
                    "ECU {ecu_id} is not registered for vehicle {}",
                    keys.vin
                ))
            })
            .and_then(|key| {
                let report = verify_ecu_report(document, ecu_id, key)?;
                check_vouching(&report, key, keys)?;
                Ok(report)
            });
        match result {
            Ok(report) => {
                reports.insert(ecu_id.clone(), report);
            }
            Err(e) => rejected_reports.push((ecu_id.clone(), e)),
        }
    }
    Ok(VerifiedManifest {
        manifest,
        reports,
        rejected_reports,
    })
}

/// A report says who made it, truthfully: an ECU registered with the primary's key is a
/// legacy ECU whose reports the primary makes, so they must say `vouched_by` this primary;
/// a report that says so must be for such an ECU. Either lie is refused.
fn check_vouching(
    report: &EcuVersionReport,
    key: &PreparedKey,
    keys: &VehicleKeys<'_>,
) -> Result<()> {
    let primary_key =
        key.key_id()? == keys.primary_key.key_id()? && report.ecu_id != keys.primary_ecu_id;
    match (report.vouched_by(), primary_key) {
        (Some(by), true) if by == keys.primary_ecu_id => Ok(()),
        (Some(by), _) => Err(Error::Manifest(format!(
            "report of ECU {} says the gateway {by} vouches for it, but {}",
            report.ecu_id,
            if primary_key {
                format!("the primary is {}", keys.primary_ecu_id)
            } else {
                "the ECU is registered with a key of its own".to_owned()
            }
        ))),
        (None, true) => Err(Error::Manifest(format!(
            "ECU {} is registered with the primary's key (a legacy ECU), but its report does \
             not say the gateway made it",
            report.ecu_id
        ))),
        (None, false) => Ok(()),
    }
}

/// Replay protection: a counter must be strictly above the last accepted one.
pub fn check_counter(what: &str, last: Option<u64>, new: u64) -> Result<()> {
    match last {
        Some(last) if new <= last => Err(Error::Replay {
            what: what.to_owned(),
            last,
            new,
        }),
        _ => Ok(()),
    }
}

//! Rules on the director's targets metadata (Uptane 5.4.4.2 step 8, 5.4.4.3) and on its
//! agreement with the image repository (5.4.4.2 step 10).

use std::collections::{BTreeMap, BTreeSet};

use super::{
    director_custom, image_custom, DeltaOffer, DirectorVehicle, EncryptedImage,
    DIRECTOR_VEHICLE_FIELD,
};
use crate::client::TargetInfo;
use crate::error::{Error, Result};
use crate::metadata::{TargetFile, Targets};

/// One ECU's instruction, taken from verified director targets.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectorInstruction {
    /// ECU that must install the image.
    pub ecu_id: String,
    /// Its hardware ID (as the director and the vehicle agree).
    pub hardware_id: String,
    /// Target path (same name in the image repository).
    pub target: String,
    /// Length and hashes of the plaintext image, as the director signed them.
    pub file: TargetFile,
    /// Release counter the director signed.
    pub release_counter: u64,
    /// Encryption parameters, if the image is sent encrypted to this ECU.
    pub encryption: Option<EncryptedImage>,
    /// When it may be installed, as the director signed it (see [`super::window`]).
    pub maintenance_window: Option<String>,
    /// A delta from the image the ECU reported, if the director offers one.
    pub delta: Option<DeltaOffer>,
}

/// Checks verified director targets for a vehicle and returns one instruction per ECU.
///
/// * no delegations (the director signs everything itself);
/// * the document names this vehicle (`vin`), so another car's answer cannot be replayed here;
/// * every target carries Uptane custom fields; no ECU is listed twice;
/// * with `vehicle_ecus` (the primary's view: ECU ID → hardware ID), every listed ECU is in the
///   vehicle and its hardware ID is the one the vehicle knows.
pub fn verify_director_targets(
    targets: &Targets,
    vin: &str,
    vehicle_ecus: Option<&BTreeMap<String, String>>,
) -> Result<Vec<DirectorInstruction>> {
    if targets.delegations.is_some() {
        return Err(Error::DirectorDelegates);
    }
    let vehicle: DirectorVehicle = targets
        .unrecognized
        .get(DIRECTOR_VEHICLE_FIELD)
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| Error::MissingCustom {
            target: "(director targets)".into(),
            field: format!("{DIRECTOR_VEHICLE_FIELD}.vin"),
        })?;
    if vehicle.vin != vin {
        return Err(Error::WrongVehicle {
            expected: vin.to_owned(),
            found: vehicle.vin,
        });
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (name, file) in &targets.targets {
        let custom = director_custom(name, file)?;
        for (ecu_id, assignment) in custom.ecus {
            if !seen.insert(ecu_id.clone()) {
                return Err(Error::DuplicateEcu { ecu: ecu_id });
            }
            if let Some(ecus) = vehicle_ecus {
                let known = ecus.get(&ecu_id).ok_or_else(|| Error::EcuNotInVehicle {
                    ecu: ecu_id.clone(),
                })?;
                if *known != assignment.hardware_id {
                    return Err(Error::HardwareIdMismatch {
                        target: name.to_owned(),
                        expected: known.clone(),
                        found: assignment.hardware_id,
                    });
                }
            }
            out.push(DirectorInstruction {
                ecu_id,
                hardware_id: assignment.hardware_id,
                target: name.to_owned(),
                file: file.clone(),
                release_counter: custom.release_counter,
                encryption: assignment.encryption,
                maintenance_window: custom.maintenance_window.clone(),
                delta: assignment.delta,
            });
        }
    }
    Ok(out)
}

/// Uptane 5.4.4.2 step 10: the image repository's target (found through its delegations)
/// must equal the director's in length, in every hash, in hardware ID and release counter.
pub fn check_against_image(instruction: &DirectorInstruction, image: &TargetInfo) -> Result<()> {
    let target = &instruction.target;
    let mismatch = |field: &str| Error::DirectorImageMismatch {
        target: target.clone(),
        field: field.to_owned(),
    };
    if instruction.file.length != image.file.length {
        return Err(mismatch("length"));
    }
    compare_hashes(&instruction.file.hashes, &image.file.hashes, "")
        .map_err(|field| mismatch(&field))?;
    let custom = image_custom(target, &image.file)?;
    if custom.hardware_id != instruction.hardware_id {
        return Err(Error::HardwareIdMismatch {
            target: target.clone(),
            expected: custom.hardware_id,
            found: instruction.hardware_id.clone(),
        });
    }
    if custom.release_counter != instruction.release_counter {
        return Err(mismatch("release_counter"));
    }
    Ok(())
}

/// Every hash of `director` in `image` with the same digest, and no more in `image`; the
/// field that differs otherwise.
fn compare_hashes(
    director: &BTreeMap<String, String>,
    image: &BTreeMap<String, String>,
    what: &str,
) -> std::result::Result<(), String> {
    for (alg, digest) in director {
        if image.get(alg) != Some(digest) {
            return Err(format!("{what}{alg} hash"));
        }
    }
    for alg in image.keys() {
        if !director.contains_key(alg) {
            return Err(format!("{what}{alg} hash (missing from director)"));
        }
    }
    Ok(())
}

/// The delta the director offers for `instruction` must be the image repository's delta
/// target at that path (found through its delegations with the ECU's hardware ID): the same
/// length and hashes, signed for the same hardware ID and release counter, from the source the
/// director names to exactly the image the director instructs. A director that offers bytes the
/// image repository did not sign as that step is refused like any other disagreement.
pub fn check_delta_against_image(
    instruction: &DirectorInstruction,
    offer: &DeltaOffer,
    image: &TargetInfo,
) -> Result<()> {
    let mismatch = |field: &str| Error::DirectorImageMismatch {
        target: offer.path.clone(),
        field: field.to_owned(),
    };
    if offer.length != image.file.length {
        return Err(mismatch("length"));
    }
    compare_hashes(&offer.hashes, &image.file.hashes, "").map_err(|f| mismatch(&f))?;
    let custom = image_custom(&offer.path, &image.file)?;
    if custom.hardware_id != instruction.hardware_id {
        return Err(Error::HardwareIdMismatch {
            target: offer.path.clone(),
            expected: custom.hardware_id,
            found: instruction.hardware_id.clone(),
        });
    }
    if custom.release_counter != instruction.release_counter {
        return Err(mismatch("release_counter"));
    }
    let delta = custom
        .delta
        .ok_or_else(|| mismatch("delta (the image repository does not sign it as a delta)"))?;
    if delta.format != offer.format {
        return Err(mismatch("delta format"));
    }
    let result = &delta.result;
    if result.filename != instruction.target || result.length != instruction.file.length {
        return Err(mismatch("delta result (not the instructed image)"));
    }
    compare_hashes(&instruction.file.hashes, &result.hashes, "delta result ")
        .map_err(|f| mismatch(&f))?;
    if delta.source != offer.source {
        return Err(mismatch("delta source"));
    }
    Ok(())
}

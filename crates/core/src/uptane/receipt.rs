//! Manifest receipts: the director's signed word that it accepted a vehicle manifest, and which
//! ECU version reports in it.
//!
//! An ECU keeps its attack indicators until the director has them. "The director has them"
//! must be something a device on the in-vehicle bus cannot fake: anyone there can ask an ECU
//! for a report, drop it, or claim it was delivered. So the director signs a receipt with its
//! targets key (online, and already trusted by every ECU through the director root), naming
//! the vehicle and the report counter it accepted per ECU; an ECU forgets only the indicators
//! carried by a report at or below that counter, after checking the signature against its own
//! trusted director root.
//!
//! ```json
//! {"signed": {"_type": "manifest_receipt", "vin": "…", "manifest_counter": 17,
//!   "ecu_reports": {"IVI-0001": 42, "TBOX-0001": 17}},
//!  "signatures": [{"keyid": "…", "sig": "…"}]}
//! ```
//! The `_type` keeps a receipt from ever passing as targets metadata (and the reverse), although
//! both are signed by the same key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::metadata::{sign_role_compact, Envelope, Root};
use crate::signer::Signer;

/// `_type` of a manifest receipt.
pub const RECEIPT_TYPE: &str = "manifest_receipt";

/// The signed part of a manifest receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestReceipt {
    /// Always `manifest_receipt`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// The vehicle whose manifest was accepted.
    pub vin: String,
    /// Counter of the accepted manifest.
    pub manifest_counter: u64,
    /// ECU ID → report counter of each ECU version report the director accepted with it
    /// (reports it refused are not listed).
    pub ecu_reports: BTreeMap<String, u64>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl ManifestReceipt {
    /// A receipt for `vin`'s manifest `manifest_counter` and the accepted reports.
    pub fn new(vin: &str, manifest_counter: u64, ecu_reports: BTreeMap<String, u64>) -> Self {
        ManifestReceipt {
            type_: RECEIPT_TYPE.into(),
            vin: vin.to_owned(),
            manifest_counter,
            ecu_reports,
            unrecognized: BTreeMap::new(),
        }
    }
}

/// Signs a receipt with the director's targets key(s); returns the document bytes, compact
/// JSON: a receipt rides in every check-in's answer and is passed on to every ECU.
pub fn sign_receipt(receipt: &ManifestReceipt, signers: &[&dyn Signer]) -> Result<Vec<u8>> {
    sign_role_compact(receipt, signers)
}

/// Verifies a receipt for one ECU against the director root it trusts: the threshold of the
/// root's `targets` keys signed it, it is for `vin`, and it lists `ecu_id`. Returns the report
/// counter the director accepted for that ECU.
pub fn verify_receipt(bytes: &[u8], director_root: &Root, vin: &str, ecu_id: &str) -> Result<u64> {
    let env = Envelope::parse(bytes, "manifest receipt")?;
    match env.type_field() {
        Some(RECEIPT_TYPE) => {}
        found => {
            return Err(Error::WrongType {
                expected: RECEIPT_TYPE.into(),
                found: found.unwrap_or("(none)").to_owned(),
            })
        }
    }
    let role = director_root.role("targets")?;
    env.verify(
        "manifest receipt",
        &director_root.keys,
        &role.keyids,
        role.threshold,
    )?;
    let receipt: ManifestReceipt = env.signed_as("manifest receipt")?;
    if receipt.vin != vin {
        return Err(Error::WrongVehicle {
            expected: vin.to_owned(),
            found: receipt.vin,
        });
    }
    receipt
        .ecu_reports
        .get(ecu_id)
        .copied()
        .ok_or_else(|| Error::NoTargetForEcu {
            ecu: ecu_id.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyScheme;
    use crate::signer::InMemorySigner;
    use crate::testing::{test_now, TestRepo};

    fn receipt() -> ManifestReceipt {
        ManifestReceipt::new("VIN1", 7, BTreeMap::from([("IVI".to_owned(), 42)]))
    }

    #[test]
    fn a_receipt_signed_by_the_director_targets_key_names_the_counter() {
        let repo = TestRepo::new(test_now());
        let signer: &dyn Signer = &repo.signers["targets"][0];
        let bytes = sign_receipt(&receipt(), &[signer]).unwrap();
        assert_eq!(
            verify_receipt(&bytes, &repo.root, "VIN1", "IVI").unwrap(),
            42
        );
    }

    #[test]
    fn a_receipt_not_signed_by_the_targets_key_is_refused() {
        let repo = TestRepo::new(test_now());
        let intruder = InMemorySigner::generate(KeyScheme::Ed25519).unwrap();
        for signer in [&intruder, &repo.signers["timestamp"][0]] {
            let bytes = sign_receipt(&receipt(), &[signer as &dyn Signer]).unwrap();
            let err = verify_receipt(&bytes, &repo.root, "VIN1", "IVI").unwrap_err();
            assert_eq!(err.rule(), "threshold");
        }
    }

    #[test]
    fn a_receipt_for_another_vehicle_ecu_or_type_is_refused() {
        let repo = TestRepo::new(test_now());
        let signer: &dyn Signer = &repo.signers["targets"][0];
        let bytes = sign_receipt(&receipt(), &[signer]).unwrap();
        assert_eq!(
            verify_receipt(&bytes, &repo.root, "VIN2", "IVI")
                .unwrap_err()
                .rule(),
            "wrong-vehicle"
        );
        assert_eq!(
            verify_receipt(&bytes, &repo.root, "VIN1", "TBOX")
                .unwrap_err()
                .rule(),
            "no-target-for-ecu"
        );
        // Targets metadata signed by the same key is not a receipt.
        let targets = repo.metadata["1.targets.json"].clone();
        assert_eq!(
            verify_receipt(&targets, &repo.root, "VIN1", "IVI")
                .unwrap_err()
                .rule(),
            "wrong-type"
        );
        for garbage in [&b"{"[..], b"[]", b"{\"signed\": 1, \"signatures\": []}"] {
            assert!(verify_receipt(garbage, &repo.root, "VIN1", "IVI").is_err());
        }
    }
}

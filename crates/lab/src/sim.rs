//! Simulated vehicles: real ed25519 keys and signed manifests, no processes. A [`SimVehicle`]
//! is what the director sees of a car — its registration, its signed version manifests with
//! one signed report per ECU, its counters — and "installs" what its director targets
//! instruct by reporting it. For loads no fleet of real processes could make on one machine
//! (the multi-instance test, the fleet-scale bench); what a real primary and ECU do is shown
//! by [`crate::Lab`].

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::Utc;
use rampart_core::hash::{compute_hashes, Hashes};
use rampart_core::key::KeyScheme;
use rampart_core::metadata::Expiry;
use rampart_core::signer::{InMemorySigner, Signer};
use rampart_core::uptane::manifest::{
    sign_ecu_report, sign_vehicle_manifest, EcuVersionReport, VehicleManifest, ECU_REPORT_TYPE,
    VEHICLE_MANIFEST_TYPE,
};
use rampart_core::uptane::InstalledImage;
use serde_json::{json, Value};

/// One ECU of a simulated vehicle.
#[derive(Debug)]
pub struct SimEcu {
    /// ECU ID.
    pub id: String,
    /// Hardware ID.
    pub hardware_id: String,
    /// Its signing key.
    pub signer: InMemorySigner,
    /// What it reports as installed.
    pub installed: InstalledImage,
    /// Its last report counter.
    pub report_counter: u64,
    /// How it verifies (`full` or `partial`), as registered.
    pub verification: &'static str,
}

/// A simulated vehicle.
#[derive(Debug)]
pub struct SimVehicle {
    /// VIN.
    pub vin: String,
    /// Its ECUs; the first is the primary (its key signs the vehicle manifest).
    pub ecus: Vec<SimEcu>,
    /// The last manifest counter signed.
    pub counter: u64,
}

fn nonce() -> String {
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut b);
    hex::encode(b)
}

impl SimVehicle {
    /// A vehicle with one ECU per `(name, hardware ID)`, each running its factory image; ECU
    /// IDs are `NAME-<last 6 of the VIN>`.
    pub fn new(vin: &str, ecus: &[(&str, &str)]) -> anyhow::Result<SimVehicle> {
        let suffix = vin.get(vin.len().saturating_sub(6)..).unwrap_or(vin);
        let ecus = ecus
            .iter()
            .map(|(name, hw)| {
                let factory = format!("factory firmware of {name}-{suffix}\n");
                Ok(SimEcu {
                    id: format!("{name}-{suffix}"),
                    hardware_id: (*hw).to_owned(),
                    signer: InMemorySigner::generate(KeyScheme::Ed25519)?,
                    installed: InstalledImage {
                        filename: format!("factory-{hw}"),
                        length: factory.len() as u64,
                        hashes: compute_hashes(factory.as_bytes()),
                        release_counter: 0,
                    },
                    report_counter: 0,
                    verification: "full",
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!ecus.is_empty(), "a vehicle needs a primary ECU");
        Ok(SimVehicle {
            vin: vin.to_owned(),
            ecus,
            counter: 0,
        })
    }

    /// The body of `POST /api/v1/vehicles` for it.
    pub fn registration(&self) -> Value {
        let ecus: Vec<Value> = self
            .ecus
            .iter()
            .map(|e| {
                json!({"ecu_id": e.id, "hardware_id": e.hardware_id,
                       "public_key": e.signer.public_key(), "verification": e.verification})
            })
            .collect();
        let primary = self.ecus.first().map(|e| e.id.clone()).unwrap_or_default();
        json!({"vin": self.vin, "primary_ecu": primary, "ecus": ecus})
    }

    /// Signs its next manifest (counters move forward, fresh nonces).
    pub fn next_manifest(&mut self) -> anyhow::Result<Vec<u8>> {
        let now = Expiry::new(Utc::now());
        self.counter += 1;
        let mut reports = BTreeMap::new();
        for e in &mut self.ecus {
            e.report_counter += 1;
            let report = EcuVersionReport {
                type_: ECU_REPORT_TYPE.into(),
                ecu_id: e.id.clone(),
                installed_image: e.installed.clone(),
                attacks_detected: String::new(),
                latest_verified_time: now.clone(),
                report_counter: e.report_counter,
                nonce: nonce(),
                unrecognized: BTreeMap::new(),
            };
            let doc: Value = serde_json::from_slice(&sign_ecu_report(&report, &e.signer)?)?;
            reports.insert(e.id.clone(), doc);
        }
        let primary = self.ecus.first().context("a vehicle needs a primary ECU")?;
        let manifest = VehicleManifest {
            type_: VEHICLE_MANIFEST_TYPE.into(),
            vin: self.vin.clone(),
            primary_ecu_id: primary.id.clone(),
            manifest_counter: self.counter,
            nonce: nonce(),
            ecu_version_reports: reports,
            attacks_detected: String::new(),
            update_failures: Vec::new(),
            progress: Vec::new(),
            unrecognized: BTreeMap::new(),
        };
        Ok(sign_vehicle_manifest(&manifest, &primary.signer)?)
    }

    /// "Installs" what a director targets document instructs its ECUs (each ECU then
    /// reports that image): returns the `(ECU ID, target)` pairs that changed. The document
    /// is taken as served; checking it is the real primary's work, not this simulation's.
    pub fn install_instructed(
        &mut self,
        targets_doc: &[u8],
    ) -> anyhow::Result<Vec<(String, String)>> {
        let doc: Value = serde_json::from_slice(targets_doc).context("director targets")?;
        let mut changed = Vec::new();
        let Some(targets) = doc.pointer("/signed/targets").and_then(Value::as_object) else {
            return Ok(changed);
        };
        for (name, t) in targets {
            let Some(ecus) = t.pointer("/custom/ecus").and_then(Value::as_object) else {
                continue;
            };
            for ecu_id in ecus.keys() {
                let Some(e) = self.ecus.iter_mut().find(|e| &e.id == ecu_id) else {
                    continue;
                };
                if e.installed.filename == *name {
                    continue;
                }
                let hashes: Hashes =
                    serde_json::from_value(t.get("hashes").cloned().unwrap_or_default())
                        .context("target hashes")?;
                e.installed = InstalledImage {
                    filename: name.clone(),
                    length: t
                        .get("length")
                        .and_then(Value::as_u64)
                        .context("target length")?,
                    hashes,
                    release_counter: t
                        .pointer("/custom/release_counter")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                };
                changed.push((ecu_id.clone(), name.clone()));
            }
        }
        Ok(changed)
    }
}

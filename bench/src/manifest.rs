//! Measure: the director's verification of one vehicle manifest against its floor.
//!
//! A check-in's manifest carries four signatures (the primary's over the manifest, one per
//! ECU report, three ECUs as in `checkin`), and Uptane asks the director to check every one.
//! Those four ed25519 verifications are the floor no implementation removes; everything else
//! (parsing, canonical bytes, key IDs, typed reads) is overhead this measure makes visible.
//!
//! `manifest [--rounds N]` prints `verify_us` (the director's verification, keys prepared as
//! the director keeps them), `floor_us` (the four signatures alone, over the same canonical
//! bytes, keys parsed beforehand) and their ratio. Best of five passes of `--rounds` each.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Context};
use rampart_core::key::PreparedKey;
use rampart_core::metadata::Envelope;
use rampart_core::signer::Signer;
use rampart_core::uptane::manifest::{verify_vehicle_manifest, VehicleKeys, VehicleManifest};
use rampart_lab::sim::SimVehicle;
use serde_json::{json, Value};

use crate::Args;

const ECUS: [(&str, &str); 3] = [("TBOX", "tbox-a"), ("IVI", "ivi-x"), ("BCM", "bcm-1")];
const PASSES: usize = 5;

/// Runs the measure.
pub(crate) fn main(args: &Args) -> anyhow::Result<Value> {
    let rounds: u32 = args.num("rounds", 2000)?;
    let mut vehicle = SimVehicle::new("WBMANIFEST0000001", &ECUS)?;
    let manifest = vehicle.next_manifest()?;
    let signatures = signatures_of(&manifest, &vehicle)?;
    let mut verify = f64::INFINITY;
    let mut floor = f64::INFINITY;
    for _ in 0..PASSES {
        verify = verify.min(verify_us(&vehicle, &manifest, rounds)?);
        let t = Instant::now();
        for _ in 0..rounds {
            for (message, signature, key) in &signatures {
                if !key.verify(message, signature) {
                    bail!("a signature did not verify");
                }
            }
        }
        floor = floor.min(t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds));
    }
    Ok(json!({
        "measure": "manifest",
        "signatures": signatures.len(),
        "manifest_bytes": manifest.len(),
        "rounds": rounds,
        "verify_us": verify,
        "floor_us": floor,
        "verify_vs_floor": verify / floor,
    }))
}

/// Microseconds the director spends verifying `manifest` of `vehicle` (its first ECU the
/// primary), on one core, over `rounds` rounds: keys prepared once, as the director keeps
/// them (`director::known`).
pub(crate) fn verify_us(vehicle: &SimVehicle, manifest: &[u8], rounds: u32) -> anyhow::Result<f64> {
    let primary = vehicle.ecus.first().context("no ECU")?;
    let primary_key = PreparedKey::new(primary.signer.public_key());
    let ecu_keys: BTreeMap<String, PreparedKey> = vehicle
        .ecus
        .iter()
        .map(|e| (e.id.clone(), PreparedKey::new(e.signer.public_key())))
        .collect();
    let keys = VehicleKeys {
        vin: &vehicle.vin,
        primary_ecu_id: &primary.id,
        primary_key: &primary_key,
        ecu_keys: &ecu_keys,
    };
    let t = Instant::now();
    for _ in 0..rounds {
        let v = verify_vehicle_manifest(manifest, &keys)?;
        if v.reports.len() != vehicle.ecus.len() {
            bail!("a report did not verify");
        }
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds))
}

/// Canonical signed bytes, a signature over them and the key that made it.
type Signed = (Vec<u8>, Vec<u8>, rampart_core::key::PublicKey);

/// The manifest's and each report's canonical signed bytes, signature and parsed key: what
/// the four verifications of the floor check.
fn signatures_of(manifest: &[u8], vehicle: &SimVehicle) -> anyhow::Result<Vec<Signed>> {
    let mut out = Vec::new();
    let mut add = |env: &Envelope, key: &rampart_core::key::Key| -> anyhow::Result<()> {
        let id = key.key_id()?;
        let sig = env
            .signatures
            .iter()
            .find(|s| s.keyid == id)
            .and_then(|s| s.bytes())
            .context("no signature by the key")?;
        out.push((env.canonical_signed.clone(), sig, key.parse(&id)?));
        Ok(())
    };
    let env = Envelope::parse(manifest, "vehicle manifest")?;
    let primary = vehicle.ecus.first().context("no ECU")?;
    add(&env, primary.signer.public_key())?;
    let parsed: VehicleManifest = env.signed_as("vehicle manifest")?;
    for ecu in &vehicle.ecus {
        let report = parsed
            .ecu_version_reports
            .get(&ecu.id)
            .context("a report is missing")?;
        let env = Envelope::parse(&serde_json::to_vec(report)?, "ECU version report")?;
        add(&env, ecu.signer.public_key())?;
    }
    Ok(out)
}

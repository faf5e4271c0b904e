//! A simulated fleet for the server's tests: vehicles with real primary and ECU keys that
//! sign manifests and ECU reports, install what the director instructs (or fail to, as
//! told), and check in with the director in process.
#![allow(dead_code)]

use std::collections::BTreeMap;

use chrono::Utc;
use rampart_core::hash::compute_hashes;
use rampart_core::key::KeyScheme;
use rampart_core::metadata::Expiry;
use rampart_core::signer::{InMemorySigner, Signer};
use rampart_core::uptane::manifest::{
    sign_ecu_report, sign_vehicle_manifest, EcuVersionReport, UpdateFailure, UpdateProgress,
    UpdateStage, VehicleManifest, ECU_REPORT_TYPE, VEHICLE_MANIFEST_TYPE,
};
use rampart_core::uptane::InstalledImage;
use rampart_server::campaign::ReleaseImage;
use rampart_server::db::{Assignment, Db, NewEcu, NewVehicle};
use rampart_server::director::{Director, DirectorKeys};
use serde_json::Value;

pub(crate) fn signer() -> InMemorySigner {
    InMemorySigner::generate(KeyScheme::Ed25519).unwrap()
}

pub(crate) fn vin(i: usize) -> String {
    format!("WVWZZZ1JZXW{i:06}")
}

pub(crate) fn image(target: &str, hw: &str, counter: u64) -> ReleaseImage {
    let bytes = format!("contents of {target}");
    ReleaseImage {
        target: target.into(),
        hardware_id: hw.into(),
        length: bytes.len() as u64,
        hashes: serde_json::to_value(compute_hashes(bytes.as_bytes())).unwrap(),
        release_counter: counter,
        encrypted: false,
    }
}

pub(crate) struct Ecu {
    pub(crate) id: String,
    pub(crate) signer: InMemorySigner,
    pub(crate) installed: InstalledImage,
    pub(crate) counter: u64,
}

/// A vehicle: a primary (T-BOX) and an IVI, each with its own key.
pub(crate) struct Car {
    pub(crate) vin: String,
    pub(crate) primary: InMemorySigner,
    pub(crate) ecus: Vec<Ecu>,
    pub(crate) counter: u64,
    /// What the car will do with its next instruction.
    pub(crate) behaviour: Behaviour,
    pub(crate) failures: Vec<UpdateFailure>,
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Behaviour {
    Install,
    /// The image fails its boot check; the ECU rolls back.
    FailBoot,
    /// The image does not match its signed hash.
    Tampered,
}

impl Car {
    pub(crate) fn new(i: usize) -> Car {
        let ecu = |id: &str| Ecu {
            id: id.into(),
            signer: signer(),
            installed: InstalledImage {
                filename: format!("factory/{id}.bin"),
                length: 7,
                hashes: compute_hashes(b"factory"),
                release_counter: 0,
            },
            counter: 0,
        };
        Car {
            vin: vin(i),
            primary: signer(),
            ecus: vec![ecu("TBOX"), ecu("IVI")],
            counter: 0,
            behaviour: Behaviour::Install,
            failures: Vec::new(),
        }
    }

    pub(crate) fn registration(&self, model: &str) -> NewVehicle {
        NewVehicle {
            vin: self.vin.clone(),
            primary_ecu: "TBOX".into(),
            ecus: self
                .ecus
                .iter()
                .map(|e| NewEcu {
                    ecu_id: e.id.clone(),
                    hardware_id: format!("{}-hw", e.id.to_lowercase()),
                    public_key: serde_json::to_value(if e.id == "TBOX" {
                        self.primary.public_key()
                    } else {
                        e.signer.public_key()
                    })
                    .unwrap(),
                    encryption_key: None,
                    verification: "full".into(),
                })
                .collect(),
            attributes: BTreeMap::from([("model".into(), model.into())]),
            tags: Default::default(),
        }
    }

    /// A manifest sent during a cycle: no ECU reports, the updates under way at `stage`.
    pub(crate) async fn report_progress(&mut self, d: &Director, stage: UpdateStage) {
        let progress = d
            .db()
            .assignments(Some(&self.vin), Some("pending"))
            .await
            .unwrap()
            .into_iter()
            .map(|a| UpdateProgress {
                target: a.target,
                ecu_id: a.ecu_id,
                stage,
            })
            .collect();
        self.counter += 1;
        let manifest = VehicleManifest {
            type_: VEHICLE_MANIFEST_TYPE.into(),
            vin: self.vin.clone(),
            primary_ecu_id: "TBOX".into(),
            manifest_counter: self.counter,
            nonce: "01".into(),
            ecu_version_reports: BTreeMap::new(),
            attacks_detected: String::new(),
            update_failures: Vec::new(),
            progress,
            unrecognized: BTreeMap::new(),
        };
        let body = sign_vehicle_manifest(&manifest, &self.primary).unwrap();
        d.check_in(&self.vin, &body, None, Utc::now())
            .await
            .unwrap();
    }

    pub(crate) fn manifest(&mut self) -> Vec<u8> {
        let mut reports = BTreeMap::new();
        for e in &mut self.ecus {
            e.counter += 1;
            let signer: &dyn Signer = if e.id == "TBOX" {
                &self.primary
            } else {
                &e.signer
            };
            let report = EcuVersionReport {
                type_: ECU_REPORT_TYPE.into(),
                ecu_id: e.id.clone(),
                installed_image: e.installed.clone(),
                attacks_detected: String::new(),
                latest_verified_time: Expiry::new(Utc::now()),
                report_counter: e.counter,
                nonce: "00".into(),
                unrecognized: BTreeMap::new(),
            };
            let doc: Value =
                serde_json::from_slice(&sign_ecu_report(&report, signer).unwrap()).unwrap();
            reports.insert(e.id.clone(), doc);
        }
        self.counter += 1;
        // As the real primary does, a failure that names an attack rule is also an attack
        // indicator (a boot failure is not).
        let attacks: String = self
            .failures
            .iter()
            .filter(|f| f.rule != "boot-failed")
            .map(|f| format!("{}: {} for {}\n", f.rule, f.message, f.target))
            .collect();
        let manifest = VehicleManifest {
            type_: VEHICLE_MANIFEST_TYPE.into(),
            vin: self.vin.clone(),
            primary_ecu_id: "TBOX".into(),
            manifest_counter: self.counter,
            nonce: "00".into(),
            ecu_version_reports: reports,
            attacks_detected: attacks,
            update_failures: std::mem::take(&mut self.failures),
            progress: Vec::new(),
            unrecognized: BTreeMap::new(),
        };
        sign_vehicle_manifest(&manifest, &self.primary).unwrap()
    }

    /// One update cycle: report, then act on the instructions the director now signs (the
    /// outcome shows in the next report).
    pub(crate) async fn cycle(&mut self, d: &Director) -> Vec<String> {
        let body = self.manifest();
        d.check_in(&self.vin, &body, None, Utc::now())
            .await
            .unwrap();
        let instructed = instructions(d, &self.vin).await;
        for a in d
            .db()
            .assignments(Some(&self.vin), Some("pending"))
            .await
            .unwrap()
        {
            let Some(e) = self.ecus.iter_mut().find(|e| e.id == a.ecu_id) else {
                continue;
            };
            if e.installed.filename == a.target || a.last_error.is_some() {
                continue;
            }
            match self.behaviour {
                Behaviour::Install => {
                    e.installed = InstalledImage {
                        filename: a.target.clone(),
                        length: a.length,
                        hashes: serde_json::from_value(a.hashes.clone()).unwrap(),
                        release_counter: a.release_counter,
                    }
                }
                Behaviour::FailBoot => self.failures.push(UpdateFailure {
                    target: a.target.clone(),
                    ecu_id: Some(a.ecu_id.clone()),
                    rule: "boot-failed".into(),
                    message: "no heartbeat after the new image booted; back on the old slot".into(),
                }),
                Behaviour::Tampered => self.failures.push(UpdateFailure {
                    target: a.target.clone(),
                    ecu_id: Some(a.ecu_id.clone()),
                    rule: "hash-mismatch".into(),
                    message: "downloaded image does not match its signed hash".into(),
                }),
            }
        }
        instructed
    }
}

/// The targets the director's signed targets for `vin` list (what the vehicle is told).
pub(crate) async fn instructions(d: &Director, vin: &str) -> Vec<String> {
    let docs = d.documents(vin, Utc::now()).await.unwrap();
    let doc: Value = serde_json::from_str(&docs.targets.document).unwrap();
    doc["signed"]["targets"]
        .as_object()
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

pub(crate) async fn director(url: &str) -> (Director, tempfile::TempDir) {
    let db = Db::connect(url).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = DirectorKeys {
        targets: Box::new(signer()),
        snapshot: Box::new(signer()),
        timestamp: Box::new(signer()),
    };
    (Director::new(db, keys, dir.path()), dir)
}

pub(crate) async fn fleet(d: &Director, n: usize, model: &str) -> Vec<Car> {
    let mut cars = Vec::new();
    for i in 0..n {
        let car = Car::new(i);
        d.db()
            .register_vehicle(&car.registration(model))
            .await
            .unwrap();
        cars.push(car);
    }
    cars
}

/// An operator's instruction (`admin assign`): `target` on one ECU, release counter `n`.
pub(crate) fn operator_assignment(vin: &str, ecu: &str, target: &str, n: u64) -> Assignment {
    Assignment {
        id: 0,
        vin: vin.into(),
        ecu_id: ecu.into(),
        target: target.into(),
        length: n,
        hashes: serde_json::json!({"sha256": format!("{n:0>64}")}),
        release_counter: n,
        encrypt: false,
        status: "pending".into(),
        created_at: String::new(),
        completed_at: None,
        last_error: None,
        maintenance_window: None,
    }
}

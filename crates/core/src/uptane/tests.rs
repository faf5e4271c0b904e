//! Tests of Uptane full and partial verification and of version manifests.

use std::collections::BTreeMap;

use chrono::Duration;
use serde_json::json;

use super::manifest::*;
use super::*;
use crate::client::{Client, Config, Fetched};
use crate::error::Error;
use crate::key::{KeyScheme, PreparedKey};
use crate::metadata::Expiry;
use crate::signer::{InMemorySigner, Signer};
use crate::testing::{test_now, Files, TestRepo};

const VIN: &str = "WRAMPART000000001";

/// A director and an image repository for one vehicle with a T-BOX and an IVI.
struct Fleet {
    director: TestRepo,
    image: TestRepo,
    director_local: Files,
    image_local: Files,
    ecus: BTreeMap<String, String>,
}

fn fleet() -> Fleet {
    let now = test_now();
    let mut image = TestRepo::new(now);
    image.add_target(
        "targets",
        "tbox-2.bin",
        b"tbox firmware v2",
        Some(image_custom_value("tbox-a", 2)),
    );
    image.delegate("targets", "acme", &["ivi/*"], false, Some(&["ivi-x"]));
    image.add_target(
        "acme",
        "ivi/app-3.bin",
        b"ivi app v3",
        Some(image_custom_value("ivi-x", 3)),
    );
    image.bump("targets");
    image.publish();
    let mut director = TestRepo::new(now);
    director_vehicle(&mut director, VIN);
    director.publish();
    Fleet {
        director,
        image,
        director_local: Files::new(),
        image_local: Files::new(),
        ecus: BTreeMap::from([
            ("TBOX-1".to_string(), "tbox-a".to_string()),
            ("IVI-1".to_string(), "ivi-x".to_string()),
        ]),
    }
}

fn image_custom_value(hw: &str, counter: u64) -> serde_json::Value {
    ImageCustom {
        hardware_id: hw.into(),
        release_counter: counter,
        version: None,
        purpose: None,
        install_seconds: None,
        delta: None,
    }
    .to_value()
}

fn director_vehicle(director: &mut TestRepo, vin: &str) {
    let t = director.targets.get_mut("targets").unwrap();
    t.unrecognized
        .insert(DIRECTOR_VEHICLE_FIELD.into(), json!({ "vin": vin }));
}

/// Director assigns `name` (copied from the image repository) to `ecu`.
fn assign(f: &mut Fleet, ecu: &str, hw: &str, name: &str, role: &str) {
    let file = f.image.targets[role].targets.get(name).unwrap().clone();
    let counter = image_custom(name, &file).unwrap().release_counter;
    let t = f.director.targets.get_mut("targets").unwrap();
    let mut ecus = t
        .targets
        .get(name)
        .and_then(|existing| director_custom(name, existing).ok())
        .map(|c| c.ecus)
        .unwrap_or_default();
    ecus.insert(
        ecu.into(),
        EcuAssignment {
            hardware_id: hw.into(),
            encryption: None,
            delta: None,
        },
    );
    let mut file = file;
    file.custom = Some(
        DirectorCustom {
            release_counter: counter,
            ecus,
            maintenance_window: None,
        }
        .to_value(),
    );
    t.targets.insert(name.into(), file);
    t.version += 1;
    f.director.publish();
}

fn run_full(
    f: &mut Fleet,
    scope: Scope,
    installed: BTreeMap<String, InstalledImage>,
) -> crate::Result<Verdict> {
    let now = f.director.now;
    let d = Client::new(
        "director",
        &f.director.initial_root(),
        now,
        Config::default(),
    )?;
    let i = Client::new("image", &f.image.initial_root(), now, Config::default())?;
    let mut v = FullVerifier::new(d, i, VIN, scope, installed);
    v.start();
    loop {
        match v.next_action()? {
            UptaneAction::Done => break,
            UptaneAction::Repo { repo, action } => {
                let (remote, local) = match repo {
                    Repo::Director => (&f.director.metadata, &mut f.director_local),
                    Repo::Image => (&f.image.metadata, &mut f.image_local),
                };
                match action {
                    crate::client::Action::ReadLocal { name } => {
                        v.provide_local(repo, local.get(&name).cloned())?
                    }
                    crate::client::Action::Fetch { path, .. } => {
                        let fetched = remote
                            .get(&path)
                            .cloned()
                            .map_or(Fetched::NotFound, Fetched::Bytes);
                        v.provide_fetched(repo, &path, fetched)?;
                    }
                    crate::client::Action::Persist { name, bytes } => {
                        local.insert(name, bytes);
                    }
                    crate::client::Action::Remove { name } => {
                        local.remove(&name);
                    }
                    crate::client::Action::Done => unreachable!(),
                }
            }
        }
    }
    Ok(v.verdict().cloned().unwrap())
}

fn run_primary(
    f: &mut Fleet,
    installed: BTreeMap<String, InstalledImage>,
) -> crate::Result<Verdict> {
    let scope = Scope::Primary {
        ecus: f.ecus.clone(),
    };
    run_full(f, scope, installed)
}

#[test]
fn full_verification_accepts_images_both_repositories_agree_on() {
    let mut f = fleet();
    assign(&mut f, "TBOX-1", "tbox-a", "tbox-2.bin", "targets");
    assign(&mut f, "IVI-1", "ivi-x", "ivi/app-3.bin", "acme");
    let verdict = run_primary(&mut f, BTreeMap::new()).unwrap();
    let mut got: Vec<_> = verdict
        .updates
        .iter()
        .map(|u| (u.instruction.ecu_id.clone(), u.image_role.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("IVI-1".to_string(), "acme".to_string()),
            ("TBOX-1".to_string(), "targets".to_string())
        ]
    );
    assert_eq!(verdict.director_targets_version, 3);
}

#[test]
fn nothing_assigned_stops_before_the_image_repository() {
    let mut f = fleet();
    let verdict = run_primary(&mut f, BTreeMap::new()).unwrap();
    assert!(verdict.updates.is_empty());
    assert!(f.image_local.is_empty(), "image repository not contacted");
}

#[test]
fn already_installed_images_are_not_updates() {
    let mut f = fleet();
    assign(&mut f, "TBOX-1", "tbox-a", "tbox-2.bin", "targets");
    let file = &f.image.targets["targets"]
        .targets
        .get("tbox-2.bin")
        .unwrap();
    let installed = BTreeMap::from([(
        "TBOX-1".to_string(),
        InstalledImage {
            filename: "tbox-2.bin".into(),
            length: file.length,
            hashes: file.hashes.clone(),
            release_counter: 2,
        },
    )]);
    let verdict = run_primary(&mut f, installed).unwrap();
    assert!(verdict.updates.is_empty());
    assert_eq!(verdict.up_to_date, ["TBOX-1"]);
}

#[test]
fn director_image_the_image_repository_does_not_have_is_rejected() {
    // A compromised director signs an image the OEM never published.
    let mut f = fleet();
    let evil = crate::metadata::TargetFile {
        length: 4,
        hashes: crate::hash::compute_hashes(b"evil"),
        custom: Some(
            DirectorCustom {
                release_counter: 9,
                maintenance_window: None,
                ecus: BTreeMap::from([(
                    "TBOX-1".into(),
                    EcuAssignment {
                        hardware_id: "tbox-a".into(),
                        encryption: None,
                        delta: None,
                    },
                )]),
            }
            .to_value(),
        ),
        unrecognized: BTreeMap::new(),
    };
    let t = f.director.targets.get_mut("targets").unwrap();
    t.targets.insert("evil.bin".into(), evil);
    t.version += 1;
    f.director.publish();
    let err = run_primary(&mut f, BTreeMap::new()).unwrap_err();
    assert_eq!(err.rule(), "target-not-found");
}

#[test]
fn director_and_image_hashes_must_match() {
    let mut f = fleet();
    assign(&mut f, "TBOX-1", "tbox-a", "tbox-2.bin", "targets");
    let t = f.director.targets.get_mut("targets").unwrap();
    t.targets
        .get_mut("tbox-2.bin")
        .unwrap()
        .hashes
        .insert("sha256".into(), hex::encode(crate::hash::sha256(b"other")));
    t.version += 1;
    f.director.publish();
    let err = run_primary(&mut f, BTreeMap::new()).unwrap_err();
    assert_eq!(
        err,
        Error::DirectorImageMismatch {
            target: "tbox-2.bin".into(),
            field: "sha256 hash".into()
        }
    );
}

#[test]
fn director_and_image_lengths_must_match() {
    let mut f = fleet();
    assign(&mut f, "TBOX-1", "tbox-a", "tbox-2.bin", "targets");
    let t = f.director.targets.get_mut("targets").unwrap();
    t.targets.get_mut("tbox-2.bin").unwrap().length += 1;
    t.version += 1;
    f.director.publish();
    let err = run_primary(&mut f, BTreeMap::new()).unwrap_err();
    assert_eq!(
        err,
        Error::DirectorImageMismatch {
            target: "tbox-2.bin".into(),
            field: "length".into()
        }
    );
}

#[test]
fn release_counter_must_match_the_image_repository() {
    let mut f = fleet();
    assign(&mut f, "TBOX-1", "tbox-a", "tbox-2.bin", "targets");
    let t = f.director.targets.get_mut("targets").unwrap();
    let file = t.targets.get_mut("tbox-2.bin").unwrap();
    let mut custom = director_custom("tbox-2.bin", file).unwrap();
    custom.release_counter = 5;
    file.custom = Some(custom.to_value());
    t.version += 1;
    f.director.publish();
    let err = run_primary(&mut f, BTreeMap::new()).unwrap_err();
    assert_eq!(
        err,
        Error::DirectorImageMismatch {
            target: "tbox-2.bin".into(),
            field: "release_counter".into()
        }
    );
}

#[test]
fn release_counter_below_the_installed_one_is_a_rollback() {
    let mut f = fleet();
    assign(&mut f, "TBOX-1", "tbox-a", "tbox-2.bin", "targets");
    let installed = BTreeMap::from([(
        "TBOX-1".to_string(),
        InstalledImage {
            filename: "tbox-3.bin".into(),
            length: 1,
            hashes: crate::hash::compute_hashes(b"x"),
            release_counter: 3,
        },
    )]);
    let err = run_primary(&mut f, installed).unwrap_err();
    assert_eq!(
        err,
        Error::ReleaseCounterDecreased {
            target: "tbox-2.bin".into(),
            trusted: 3,
            new: 2
        }
    );
}

#[test]
fn hardware_id_must_be_the_one_the_vehicle_knows() {
    let mut f = fleet();
    assign(&mut f, "TBOX-1", "ivi-x", "tbox-2.bin", "targets");
    let err = run_primary(&mut f, BTreeMap::new()).unwrap_err();
    assert_eq!(err.rule(), "hardware-id-mismatch");
}

#[test]
fn image_built_for_other_hardware_is_rejected_even_if_the_director_agrees() {
    let mut f = fleet();
    f.ecus.insert("TBOX-1".into(), "ivi-x".into());
    // Director (compromised) sends the T-BOX image to hardware "ivi-x".
    assign(&mut f, "TBOX-1", "ivi-x", "tbox-2.bin", "targets");
    let err = run_primary(&mut f, BTreeMap::new()).unwrap_err();
    assert_eq!(err.rule(), "hardware-id-mismatch");
}

#[test]
fn supplier_delegation_is_resolved_with_the_hardware_id() {
    let mut f = fleet();
    // The IVI image is only signed by acme for hardware ivi-x; a T-BOX asking for it fails.
    f.ecus.insert("TBOX-1".into(), "tbox-a".into());
    let file = f.image.targets["acme"]
        .targets
        .get("ivi/app-3.bin")
        .unwrap()
        .clone();
    let t = f.director.targets.get_mut("targets").unwrap();
    let mut file2 = file.clone();
    file2.custom = Some(
        DirectorCustom {
            release_counter: 3,
            maintenance_window: None,
            ecus: BTreeMap::from([(
                "TBOX-1".into(),
                EcuAssignment {
                    hardware_id: "tbox-a".into(),
                    encryption: None,
                    delta: None,
                },
            )]),
        }
        .to_value(),
    );
    t.targets.insert("ivi/app-3.bin".into(), file2);
    t.version += 1;
    f.director.publish();
    let err = run_primary(&mut f, BTreeMap::new()).unwrap_err();
    assert_eq!(err.rule(), "target-not-found");
}

#[test]
fn director_targets_may_not_delegate() {
    let mut f = fleet();
    f.director
        .delegate("targets", "sneaky", &["*"], false, None);
    f.director.bump("targets");
    f.director.publish();
    assert_eq!(
        run_primary(&mut f, BTreeMap::new()).unwrap_err(),
        Error::DirectorDelegates
    );
}

#[test]
fn director_may_not_list_an_ecu_twice() {
    let mut f = fleet();
    assign(&mut f, "TBOX-1", "tbox-a", "tbox-2.bin", "targets");
    assign(&mut f, "TBOX-1", "tbox-a", "ivi/app-3.bin", "acme");
    assert_eq!(
        run_primary(&mut f, BTreeMap::new()).unwrap_err(),
        Error::DuplicateEcu {
            ecu: "TBOX-1".into()
        }
    );
}

#[test]
fn ecu_not_in_the_vehicle_is_rejected_on_the_primary() {
    let mut f = fleet();
    assign(&mut f, "OTHER-9", "tbox-a", "tbox-2.bin", "targets");
    assert_eq!(
        run_primary(&mut f, BTreeMap::new()).unwrap_err(),
        Error::EcuNotInVehicle {
            ecu: "OTHER-9".into()
        }
    );
}

#[test]
fn director_targets_for_another_vehicle_are_rejected() {
    let mut f = fleet();
    director_vehicle(&mut f.director, "WOTHERCAR00000000");
    f.director.bump("targets");
    f.director.publish();
    assert_eq!(
        run_primary(&mut f, BTreeMap::new()).unwrap_err().rule(),
        "wrong-vehicle"
    );
}

#[test]
fn director_targets_without_vehicle_binding_are_rejected() {
    let mut f = fleet();
    f.director
        .targets
        .get_mut("targets")
        .unwrap()
        .unrecognized
        .clear();
    f.director.bump("targets");
    f.director.publish();
    assert_eq!(
        run_primary(&mut f, BTreeMap::new()).unwrap_err().rule(),
        "missing-custom"
    );
}

#[test]
fn full_verification_secondary_checks_only_its_own_instruction() {
    let mut f = fleet();
    assign(&mut f, "TBOX-1", "tbox-a", "tbox-2.bin", "targets");
    assign(&mut f, "IVI-1", "ivi-x", "ivi/app-3.bin", "acme");
    let scope = Scope::Secondary {
        ecu_id: "IVI-1".into(),
        hardware_id: "ivi-x".into(),
    };
    let verdict = run_full(&mut f, scope, BTreeMap::new()).unwrap();
    assert_eq!(verdict.updates.len(), 1);
    assert_eq!(verdict.updates[0].instruction.ecu_id, "IVI-1");
}

#[test]
fn full_verification_secondary_rejects_an_instruction_for_other_hardware() {
    let mut f = fleet();
    assign(&mut f, "IVI-1", "ivi-x", "ivi/app-3.bin", "acme");
    let scope = Scope::Secondary {
        ecu_id: "IVI-1".into(),
        hardware_id: "ivi-y".into(),
    };
    assert_eq!(
        run_full(&mut f, scope, BTreeMap::new()).unwrap_err().rule(),
        "hardware-id-mismatch"
    );
}

// ---- partial verification ----

fn director_targets_bytes(f: &Fleet) -> Vec<u8> {
    let v = f.director.targets["targets"].version;
    f.director.metadata[&format!("{v}.targets.json")].clone()
}

#[test]
fn partial_verification_accepts_the_ecus_instruction() {
    let mut f = fleet();
    assign(&mut f, "IVI-1", "ivi-x", "ivi/app-3.bin", "acme");
    let mut p = PartialVerifier::new(&f.director.initial_root(), None, f.director.now).unwrap();
    let out = p
        .verify(&director_targets_bytes(&f), VIN, "IVI-1", "ivi-x", None)
        .unwrap();
    assert_eq!(out.instruction.unwrap().target, "ivi/app-3.bin");
    assert_eq!(out.targets_version, 2);
}

#[test]
fn partial_verification_rejects_older_director_targets() {
    let mut f = fleet();
    assign(&mut f, "IVI-1", "ivi-x", "ivi/app-3.bin", "acme");
    let mut p = PartialVerifier::new(&f.director.initial_root(), Some(5), f.director.now).unwrap();
    let err = p
        .verify(&director_targets_bytes(&f), VIN, "IVI-1", "ivi-x", None)
        .unwrap_err();
    assert_eq!(
        err,
        Error::OlderMetadata {
            role: "director targets".into(),
            trusted: 5,
            new: 2
        }
    );
}

#[test]
fn partial_verification_rejects_other_signers() {
    let mut f = fleet();
    assign(&mut f, "IVI-1", "ivi-x", "ivi/app-3.bin", "acme");
    f.director.signers.insert(
        "targets".into(),
        vec![InMemorySigner::generate(KeyScheme::Ed25519).unwrap()],
    );
    f.director.publish();
    let mut p = PartialVerifier::new(&f.director.initial_root(), None, f.director.now).unwrap();
    let err = p
        .verify(&director_targets_bytes(&f), VIN, "IVI-1", "ivi-x", None)
        .unwrap_err();
    assert_eq!(err.rule(), "threshold");
}

#[test]
fn partial_verification_rejects_expired_targets_and_wrong_hardware() {
    let mut f = fleet();
    assign(&mut f, "IVI-1", "ivi-x", "ivi/app-3.bin", "acme");
    let later = f.director.now + Duration::days(366);
    let mut p = PartialVerifier::new(&f.director.initial_root(), None, later).unwrap();
    assert_eq!(
        p.verify(&director_targets_bytes(&f), VIN, "IVI-1", "ivi-x", None)
            .unwrap_err()
            .rule(),
        "expired"
    );
    let mut p = PartialVerifier::new(&f.director.initial_root(), None, f.director.now).unwrap();
    assert_eq!(
        p.verify(&director_targets_bytes(&f), VIN, "IVI-1", "ivi-z", None)
            .unwrap_err()
            .rule(),
        "hardware-id-mismatch"
    );
}

#[test]
fn partial_verification_rejects_release_counter_rollback() {
    let mut f = fleet();
    assign(&mut f, "IVI-1", "ivi-x", "ivi/app-3.bin", "acme");
    let installed = InstalledImage {
        filename: "ivi/app-4.bin".into(),
        length: 1,
        hashes: crate::hash::compute_hashes(b"4"),
        release_counter: 4,
    };
    let mut p = PartialVerifier::new(&f.director.initial_root(), None, f.director.now).unwrap();
    let err = p
        .verify(
            &director_targets_bytes(&f),
            VIN,
            "IVI-1",
            "ivi-x",
            Some(&installed),
        )
        .unwrap_err();
    assert_eq!(err.rule(), "release-counter-decreased");
}

#[test]
fn partial_verification_follows_director_root_rotation() {
    let mut f = fleet();
    let root1 = f.director.initial_root();
    f.director.rotate_keys("targets", 1, 1);
    assign(&mut f, "IVI-1", "ivi-x", "ivi/app-3.bin", "acme");
    let mut p = PartialVerifier::new(&root1, None, f.director.now).unwrap();
    assert_eq!(
        p.verify(&director_targets_bytes(&f), VIN, "IVI-1", "ivi-x", None)
            .unwrap_err()
            .rule(),
        "threshold"
    );
    p.update_root(&f.director.metadata["2.root.json"]).unwrap();
    assert!(p
        .verify(&director_targets_bytes(&f), VIN, "IVI-1", "ivi-x", None)
        .unwrap()
        .instruction
        .is_some());
}

// ---- manifests ----

fn report(ecu: &str, counter: u64, signer: &InMemorySigner) -> serde_json::Value {
    let r = EcuVersionReport {
        type_: ECU_REPORT_TYPE.into(),
        ecu_id: ecu.into(),
        installed_image: InstalledImage {
            filename: "fw.bin".into(),
            length: 2,
            hashes: crate::hash::compute_hashes(b"fw"),
            release_counter: 1,
        },
        attacks_detected: String::new(),
        latest_verified_time: Expiry::new(test_now()),
        report_counter: counter,
        nonce: "00ff".into(),
        unrecognized: BTreeMap::new(),
    };
    serde_json::from_slice(&sign_ecu_report(&r, signer).unwrap()).unwrap()
}

struct Vehicle {
    primary: InMemorySigner,
    ivi: InMemorySigner,
    primary_key: PreparedKey,
    ecu_keys: BTreeMap<String, PreparedKey>,
}

fn vehicle() -> Vehicle {
    let primary = InMemorySigner::generate(KeyScheme::Ed25519).unwrap();
    let ivi = InMemorySigner::generate(KeyScheme::EcdsaP256Sha256).unwrap();
    let ecu_keys = BTreeMap::from([
        ("TBOX-1".to_string(), PreparedKey::new(primary.public_key())),
        ("IVI-1".to_string(), PreparedKey::new(ivi.public_key())),
    ]);
    Vehicle {
        primary_key: PreparedKey::new(primary.public_key()),
        primary,
        ivi,
        ecu_keys,
    }
}

/// The manifest of [`VIN`] (counter 7) carrying `reports`, unsigned.
fn manifest_of(reports: BTreeMap<String, serde_json::Value>) -> VehicleManifest {
    VehicleManifest {
        type_: VEHICLE_MANIFEST_TYPE.into(),
        vin: VIN.into(),
        primary_ecu_id: "TBOX-1".into(),
        manifest_counter: 7,
        nonce: "abcd".into(),
        ecu_version_reports: reports,
        attacks_detected: String::new(),
        update_failures: Vec::new(),
        progress: Vec::new(),
        unrecognized: BTreeMap::new(),
    }
}

fn manifest(v: &Vehicle, reports: BTreeMap<String, serde_json::Value>) -> Vec<u8> {
    sign_vehicle_manifest(&manifest_of(reports), &v.primary).unwrap()
}

fn keys(v: &Vehicle) -> VehicleKeys<'_> {
    VehicleKeys {
        vin: VIN,
        primary_ecu_id: "TBOX-1",
        primary_key: &v.primary_key,
        ecu_keys: &v.ecu_keys,
    }
}

#[test]
fn vehicle_manifest_round_trip_verifies_every_report() {
    let v = vehicle();
    let reports = BTreeMap::from([
        ("TBOX-1".to_string(), report("TBOX-1", 1, &v.primary)),
        ("IVI-1".to_string(), report("IVI-1", 1, &v.ivi)),
    ]);
    let verified = verify_vehicle_manifest(&manifest(&v, reports), &keys(&v)).unwrap();
    assert_eq!(verified.reports.len(), 2);
    assert!(verified.rejected_reports.is_empty());
    assert_eq!(verified.manifest.manifest_counter, 7);
}

fn vouched(ecu: &str, by: &str, signer: &InMemorySigner) -> serde_json::Value {
    let mut r = report(ecu, 1, signer);
    let mut signed: EcuVersionReport = serde_json::from_value(r["signed"].clone()).unwrap();
    signed.unrecognized.insert(
        VOUCHED_BY_FIELD.into(),
        serde_json::Value::String(by.into()),
    );
    r = serde_json::from_slice(&sign_ecu_report(&signed, signer).unwrap()).unwrap();
    r
}

/// A legacy ECU (flashed over UDS) has no key: it is registered with the primary's, and the
/// primary makes its reports, saying so. Each way of lying about that is refused.
#[test]
fn a_gateway_vouched_report_says_so_and_only_for_an_ecu_registered_with_the_primary_key() {
    let mut v = vehicle();
    v.ecu_keys
        .insert("BCM-1".into(), PreparedKey::new(v.primary.public_key()));
    let reports = BTreeMap::from([
        ("BCM-1".to_string(), vouched("BCM-1", "TBOX-1", &v.primary)),
        ("IVI-1".to_string(), report("IVI-1", 1, &v.ivi)),
    ]);
    let verified = verify_vehicle_manifest(&manifest(&v, reports), &keys(&v)).unwrap();
    assert!(
        verified.rejected_reports.is_empty(),
        "{:?}",
        verified.rejected_reports
    );
    assert_eq!(verified.reports["BCM-1"].vouched_by(), Some("TBOX-1"));
    assert_eq!(verified.reports["IVI-1"].vouched_by(), None);

    let cases = [
        // The legacy ECU's report without the mark: a self-signed claim it cannot make.
        (
            "BCM-1",
            report("BCM-1", 1, &v.primary),
            "does not say the gateway",
        ),
        // Vouched by someone who is not this vehicle's primary.
        (
            "BCM-1",
            vouched("BCM-1", "TBOX-9", &v.primary),
            "the primary is TBOX-1",
        ),
        // An ECU with its own key does not get a gateway's word instead.
        (
            "IVI-1",
            vouched("IVI-1", "TBOX-1", &v.ivi),
            "a key of its own",
        ),
    ];
    for (ecu, doc, why) in cases {
        let reports = BTreeMap::from([(ecu.to_string(), doc)]);
        let verified = verify_vehicle_manifest(&manifest(&v, reports), &keys(&v)).unwrap();
        assert!(verified.reports.is_empty(), "{why}");
        let (_, err) = &verified.rejected_reports[0];
        assert!(err.to_string().contains(why), "{err}");
    }
}

#[test]
fn forged_ecu_report_is_rejected_but_the_rest_is_kept() {
    let v = vehicle();
    // A compromised primary forges the IVI's report with its own key.
    let reports = BTreeMap::from([
        ("TBOX-1".to_string(), report("TBOX-1", 1, &v.primary)),
        ("IVI-1".to_string(), report("IVI-1", 1, &v.primary)),
    ]);
    let verified = verify_vehicle_manifest(&manifest(&v, reports), &keys(&v)).unwrap();
    assert_eq!(verified.reports.len(), 1);
    assert_eq!(verified.rejected_reports[0].0, "IVI-1");
    assert_eq!(verified.rejected_reports[0].1.rule(), "bad-signature");
}

/// A report changed after its ECU signed it (a primary claiming the ECU runs another image),
/// or signed by another key under the ECU's key ID, keeps its place in the manifest but is
/// refused: the registered key is checked against the report's own canonical bytes.
#[test]
fn ecu_report_altered_after_signing_or_signed_under_a_borrowed_key_id_is_rejected() {
    let v = vehicle();
    let mut altered = report("IVI-1", 1, &v.ivi);
    altered["signed"]["installed_image"]["filename"] = json!("attacker.bin");
    let mut borrowed = report("IVI-1", 1, &v.primary);
    borrowed["signatures"][0]["keyid"] = json!(v.ivi.key_id().0);
    for doc in [altered, borrowed] {
        let reports = BTreeMap::from([
            ("TBOX-1".to_string(), report("TBOX-1", 1, &v.primary)),
            ("IVI-1".to_string(), doc),
        ]);
        let verified = verify_vehicle_manifest(&manifest(&v, reports), &keys(&v)).unwrap();
        assert_eq!(verified.reports.keys().collect::<Vec<_>>(), ["TBOX-1"]);
        assert_eq!(verified.rejected_reports[0].0, "IVI-1");
        assert_eq!(verified.rejected_reports[0].1.rule(), "bad-signature");
    }
}

/// U+0000 in anything an ECU signed refuses its report alone (the rest of the vehicle is
/// kept); in the manifest's own fields (a report's ECU ID included) the whole manifest. The
/// error names the rule and never carries the character itself (it becomes an event).
#[test]
fn nul_characters_in_signed_fields_are_refused() {
    let v = vehicle();
    let with_nul = |mut doc: serde_json::Value, field: &str, signer: &InMemorySigner| {
        let mut signed: EcuVersionReport = serde_json::from_value(doc["signed"].take()).unwrap();
        match field {
            "filename" => signed.installed_image.filename.push('\0'),
            "attacks" => signed.attacks_detected = "rollback: \0".into(),
            _ => {
                signed
                    .unrecognized
                    .insert("note".into(), json!(["a", {"b": "\0"}]));
            }
        }
        serde_json::from_slice::<serde_json::Value>(&sign_ecu_report(&signed, signer).unwrap())
            .unwrap()
    };
    for field in ["filename", "attacks", "unrecognized"] {
        let reports = BTreeMap::from([
            ("TBOX-1".to_string(), report("TBOX-1", 1, &v.primary)),
            (
                "IVI-1".to_string(),
                with_nul(report("IVI-1", 1, &v.ivi), field, &v.ivi),
            ),
        ]);
        let verified = verify_vehicle_manifest(&manifest(&v, reports), &keys(&v)).unwrap();
        assert_eq!(
            verified.reports.keys().collect::<Vec<_>>(),
            ["TBOX-1"],
            "{field}"
        );
        let (ecu, err) = &verified.rejected_reports[0];
        assert_eq!(ecu, "IVI-1", "{field}");
        assert_eq!(err.rule(), "manifest", "{field}: {err}");
        assert!(err.to_string().contains("U+0000"), "{err}");
        assert!(!err.to_string().contains('\0'), "{err}");
    }

    let outer = |change: &dyn Fn(&mut VehicleManifest)| {
        let reports = BTreeMap::from([("TBOX-1".to_string(), report("TBOX-1", 1, &v.primary))]);
        let mut m = manifest_of(reports);
        change(&mut m);
        verify_vehicle_manifest(&sign_vehicle_manifest(&m, &v.primary).unwrap(), &keys(&v))
    };
    assert!(outer(&|_| ()).is_ok());
    type Change<'a> = &'a dyn Fn(&mut VehicleManifest);
    let changes: [(&str, Change<'_>); 6] = [
        ("nonce", &|m| m.nonce.push('\0')),
        ("vin", &|m| m.vin.push('\0')),
        ("attacks", &|m| m.attacks_detected = "\0".into()),
        ("failure", &|m| {
            m.update_failures.push(UpdateFailure {
                target: "fw.bin".into(),
                ecu_id: None,
                rule: "hash-mismatch".into(),
                message: "\0".into(),
            })
        }),
        ("ECU ID", &|m| {
            let doc = report("TBOX-1", 1, &v.primary);
            m.ecu_version_reports.insert("IVI-1\0".into(), doc);
        }),
        ("unrecognized", &|m| {
            m.unrecognized.insert("x\0".into(), json!(1));
        }),
    ];
    for (what, change) in changes {
        let err = outer(change).unwrap_err();
        assert_eq!(err.rule(), "manifest", "{what}: {err}");
        assert!(err.to_string().contains("U+0000"), "{what}: {err}");
        assert!(!err.to_string().contains('\0'), "{what}: {err}");
    }
}

#[test]
fn report_filed_under_another_ecu_is_rejected() {
    let v = vehicle();
    let reports = BTreeMap::from([("IVI-1".to_string(), report("TBOX-1", 1, &v.ivi))]);
    let verified = verify_vehicle_manifest(&manifest(&v, reports), &keys(&v)).unwrap();
    assert_eq!(verified.rejected_reports[0].1.rule(), "manifest");
}

#[test]
fn report_from_an_unregistered_ecu_is_rejected() {
    let v = vehicle();
    let reports = BTreeMap::from([("ROGUE-1".to_string(), report("ROGUE-1", 1, &v.ivi))]);
    let verified = verify_vehicle_manifest(&manifest(&v, reports), &keys(&v)).unwrap();
    assert_eq!(verified.rejected_reports[0].0, "ROGUE-1");
}

#[test]
fn manifest_signed_by_another_key_is_rejected() {
    let v = vehicle();
    let other = vehicle();
    let err = verify_vehicle_manifest(&manifest(&other, BTreeMap::new()), &keys(&v)).unwrap_err();
    assert_eq!(err.rule(), "bad-signature");
}

#[test]
fn manifest_for_another_vin_is_rejected() {
    let v = vehicle();
    let bytes = manifest(&v, BTreeMap::new());
    let mut k = keys(&v);
    k.vin = "WSOMEONEELSE00000";
    assert_eq!(
        verify_vehicle_manifest(&bytes, &k).unwrap_err().rule(),
        "wrong-vehicle"
    );
}

#[test]
fn tampered_manifest_is_rejected() {
    let v = vehicle();
    let bytes = manifest(&v, BTreeMap::new());
    let mut doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    doc["signed"]["manifest_counter"] = json!(8);
    let err = verify_vehicle_manifest(&serde_json::to_vec(&doc).unwrap(), &keys(&v)).unwrap_err();
    assert_eq!(err.rule(), "bad-signature");
}

#[test]
fn garbage_manifests_are_malformed_not_panics() {
    let v = vehicle();
    for garbage in [
        &b""[..],
        b"{",
        b"[]",
        b"{\"signed\": 1, \"signatures\": []}",
        &[0xff; 64],
    ] {
        assert!(verify_vehicle_manifest(garbage, &keys(&v)).is_err());
    }
}

#[test]
fn replayed_counters_are_rejected() {
    assert!(check_counter("manifest", None, 1).is_ok());
    assert!(check_counter("manifest", Some(1), 2).is_ok());
    assert_eq!(
        check_counter("manifest", Some(2), 2).unwrap_err().rule(),
        "replay"
    );
    assert_eq!(
        check_counter("manifest", Some(2), 1).unwrap_err().rule(),
        "replay"
    );
}

#[test]
fn signer_key_ids_match_the_registered_keys() {
    let v = vehicle();
    assert_eq!(&v.primary.key_id(), v.ecu_keys["TBOX-1"].key_id().unwrap());
}

#[test]
fn encrypted_assignment_reaches_only_its_ecu() {
    use crate::encryption::{
        decrypt_all, encrypt_all, unwrap_key, wrap_key, ContentKey, EcuKeyPair,
    };
    let mut f = fleet();
    let ivi_key = EcuKeyPair::generate().unwrap();
    let other_ecu = EcuKeyPair::generate().unwrap();
    let content_key = ContentKey::generate().unwrap();
    let plaintext = b"ivi app v3";
    let ciphertext = encrypt_all(&content_key, plaintext).unwrap();
    let encryption = EncryptedImage {
        key: wrap_key(&ivi_key.public_key(), &content_key).unwrap(),
        ciphertext: CiphertextFile {
            path: "ivi/app-3.bin.IVI-1.enc".into(),
            length: ciphertext.len() as u64,
            hashes: crate::hash::compute_hashes(&ciphertext),
        },
    };
    let file = f.image.targets["acme"]
        .targets
        .get("ivi/app-3.bin")
        .unwrap()
        .clone();
    let t = f.director.targets.get_mut("targets").unwrap();
    let mut entry = file.clone();
    entry.custom = Some(
        DirectorCustom {
            release_counter: 3,
            maintenance_window: None,
            ecus: BTreeMap::from([(
                "IVI-1".into(),
                EcuAssignment {
                    hardware_id: "ivi-x".into(),
                    encryption: Some(encryption),
                    delta: None,
                },
            )]),
        }
        .to_value(),
    );
    t.targets.insert("ivi/app-3.bin".into(), entry);
    t.version += 1;
    f.director.publish();
    let verdict = run_primary(&mut f, BTreeMap::new()).unwrap();
    let enc = verdict.updates[0].instruction.encryption.clone().unwrap();
    // The primary checks the ciphertext it downloads against the signed ciphertext hashes…
    crate::hash::verify_bytes(
        "ciphertext",
        &ciphertext,
        Some(enc.ciphertext.length),
        Some(&enc.ciphertext.hashes),
    )
    .unwrap();
    // …only the IVI can unwrap the key, and the plaintext matches the image repository's hashes.
    assert!(unwrap_key(&other_ecu, &enc.key).is_err());
    let key = unwrap_key(&ivi_key, &enc.key).unwrap();
    let plain = decrypt_all(&key, &ciphertext).unwrap();
    crate::hash::verify_bytes("image", &plain, Some(file.length), Some(&file.hashes)).unwrap();
}

/// Deltas: the image repository publishes `ivi/app-3.bin.from-v2` (from "ivi app v2"), the
/// director offers it to IVI-1 with the instruction for `ivi/app-3.bin`; `tamper` changes
/// the director's offer before it is signed.
fn delta_fleet(image_delta: Option<DeltaOf>, tamper: impl FnOnce(&mut DeltaOffer)) -> Fleet {
    let mut f = fleet();
    let v2 = b"ivi app v2";
    let v3 = &f.image.targets["acme"]
        .targets
        .get("ivi/app-3.bin")
        .unwrap()
        .clone();
    let source = ImageRef {
        filename: "ivi/app-2.bin".into(),
        length: v2.len() as u64,
        hashes: crate::hash::compute_hashes(v2),
    };
    let delta_bytes = b"BSDIFF40 pretend";
    let of = image_delta.unwrap_or_else(|| DeltaOf {
        format: DELTA_FORMAT.into(),
        source: source.clone(),
        result: ImageRef {
            filename: "ivi/app-3.bin".into(),
            length: v3.length,
            hashes: v3.hashes.clone(),
        },
    });
    let mut custom = ImageCustom {
        hardware_id: "ivi-x".into(),
        release_counter: 3,
        version: None,
        purpose: None,
        install_seconds: None,
        delta: Some(of),
    };
    custom.delta.as_mut().unwrap().format = DELTA_FORMAT.into();
    f.image.add_target(
        "acme",
        "ivi/app-3.bin.from-v2",
        delta_bytes,
        Some(custom.to_value()),
    );
    f.image.bump("acme");
    f.image.bump("targets");
    f.image.publish();
    assign(&mut f, "IVI-1", "ivi-x", "ivi/app-3.bin", "acme");
    let mut offer = DeltaOffer {
        path: "ivi/app-3.bin.from-v2".into(),
        length: delta_bytes.len() as u64,
        hashes: crate::hash::compute_hashes(delta_bytes),
        format: DELTA_FORMAT.into(),
        source,
        encryption: None,
    };
    tamper(&mut offer);
    let t = f.director.targets.get_mut("targets").unwrap();
    let file = t.targets.get_mut("ivi/app-3.bin").unwrap();
    let mut custom = director_custom("ivi/app-3.bin", file).unwrap();
    custom.ecus.get_mut("IVI-1").unwrap().delta = Some(offer);
    file.custom = Some(custom.to_value());
    t.version += 1;
    f.director.publish();
    f
}

#[test]
fn a_delta_both_repositories_agree_on_is_part_of_the_verified_update() {
    let mut f = delta_fleet(None, |_| {});
    let verdict = run_primary(&mut f, BTreeMap::new()).unwrap();
    let update = &verdict.updates[0];
    assert_eq!(update.image_role, "acme");
    let offer = update.instruction.delta.as_ref().unwrap();
    assert_eq!(offer.path, "ivi/app-3.bin.from-v2");
    let v2 = InstalledImage {
        filename: "whatever".into(),
        length: 10,
        hashes: crate::hash::compute_hashes(b"ivi app v2"),
        release_counter: 2,
    };
    assert!(offer.source.is(&v2), "the bytes decide, not the name");
    assert!(!offer.source.is(&InstalledImage {
        hashes: crate::hash::compute_hashes(b"ivi app v1"),
        ..v2
    }));
}

#[test]
fn a_delta_the_image_repository_does_not_sign_as_that_step_is_refused() {
    // The director offers other bytes than the image repository signed.
    let mut f = delta_fleet(None, |o| {
        o.hashes = crate::hash::compute_hashes(b"evil delta");
    });
    let err = run_primary(&mut f, BTreeMap::new()).unwrap_err();
    assert_eq!(err.rule(), "director-image-mismatch", "{err}");
    // … or names another source than the image repository's delta.
    let mut f = delta_fleet(None, |o| o.source.length += 1);
    let err = run_primary(&mut f, BTreeMap::new()).unwrap_err();
    assert!(err.to_string().contains("delta source"), "{err}");
    // … or a path the image repository does not have.
    let mut f = delta_fleet(None, |o| o.path = "ivi/app-3.bin.from-v1".into());
    let err = run_primary(&mut f, BTreeMap::new()).unwrap_err();
    assert_eq!(err.rule(), "target-not-found", "{err}");
    // The image repository's delta makes another image than the one instructed (a delta of
    // another release, mixed in).
    let other = DeltaOf {
        format: DELTA_FORMAT.into(),
        source: ImageRef {
            filename: "ivi/app-2.bin".into(),
            length: 10,
            hashes: crate::hash::compute_hashes(b"ivi app v2"),
        },
        result: ImageRef {
            filename: "ivi/app-4.bin".into(),
            length: 10,
            hashes: crate::hash::compute_hashes(b"ivi app v4"),
        },
    };
    let mut f = delta_fleet(Some(other), |_| {});
    let err = run_primary(&mut f, BTreeMap::new()).unwrap_err();
    assert!(err.to_string().contains("delta result"), "{err}");
}

#[test]
fn a_full_image_offered_as_a_delta_is_refused() {
    // The director points the delta at the full image (no `delta` custom field).
    let mut f = delta_fleet(None, |o| {
        o.path = "ivi/app-3.bin".into();
        o.length = 10;
        o.hashes = crate::hash::compute_hashes(b"ivi app v3");
    });
    let err = run_primary(&mut f, BTreeMap::new()).unwrap_err();
    assert!(
        err.to_string()
            .contains("the image repository does not sign it as a delta"),
        "{err}"
    );
}

//! Compromise of the director's online keys: the attacker holds the director's targets,
//! snapshot and timestamp keys (read from the server's `online-keys/`) and, as a man in the
//! middle, serves this vehicle director metadata of its own — validly signed — instructing
//! ECUs to install images the image repository does not back. Then the OEM rotates the
//! director keys, and the stolen keys are worth nothing.
//!
//! Also home of the forging helpers the image-repository key compromise scenario shares
//! (a snapshot and a timestamp signed with whatever key the attacker holds).

use rampart_core::rule::Rule;
use std::collections::BTreeMap;

use chrono::{Duration, Utc};
use rampart_core::hash::compute_hashes;
use rampart_core::metadata::{
    sign_role, Expiry, MetaFile, Snapshot, TargetFile, Targets, Timestamp, SPEC_VERSION,
};
use rampart_core::signer::{InMemorySigner, Signer};
use rampart_core::uptane::{
    DirectorCustom, DirectorVehicle, EcuAssignment, DIRECTOR_VEHICLE_FIELD,
};
use rampart_lab::image_bytes;
use rampart_server::keys::load_key_file;
use rampart_server::ops::{rotate, Which};

use super::rollback::{
    check_unchanged, evidence_forged, finish_genuine, partial_targets_version, release, runs,
    trusted_version,
};
use crate::harness::Attempt;
use crate::proxy::{Action, Intercept};
use crate::{Findings, Harness, Info};

/// Description.
pub(super) const INFO: Info = Info {
    name: "director-key-compromise",
    attack: "compromise of the director's online keys",
    attacker: "holds the director's targets, snapshot and timestamp keys (stolen from the server's online-keys folder) and sits between vehicle and server: it serves this vehicle complete director metadata of its own, validly signed",
    control: "Uptane full verification on the primary: every image the director names must be found in the image repository (signed with offline keys) through its delegations and match it in length, every hash, hardware ID and release counter; the primary verifies everything before any ECU — the partial-verification BCM included — is handed anything; rotation of the director keys (new director root, signed by the offline root keys) makes the stolen keys worthless",
    expected: "defeated: an image the image repository does not list refused (target-not-found), a listed name with the attacker's bytes refused for the T-BOX and for the partial-verification BCM (director-image-mismatch); nothing installed, the BCM never sent anything; the vehicle reports it, the server records it; after the OEM rotates the director keys the stolen keys no longer verify (threshold), and the genuine release installs once the attacker leaves",
};

/// A snapshot of `version` listing `meta`, signed with `key`.
pub(super) fn forge_snapshot(
    version: u64,
    meta: BTreeMap<String, MetaFile>,
    key: &dyn Signer,
) -> anyhow::Result<Vec<u8>> {
    let snapshot = Snapshot {
        type_: "snapshot".into(),
        spec_version: SPEC_VERSION.into(),
        version,
        expires: Expiry::new(Utc::now() + Duration::days(7)),
        meta,
        unrecognized: BTreeMap::new(),
    };
    Ok(sign_role(&snapshot, &[key])?)
}

/// A timestamp of `version` pinning these snapshot bytes (of `snapshot_version`), signed
/// with `key`.
pub(super) fn forge_timestamp(
    version: u64,
    snapshot_version: u64,
    snapshot: &[u8],
    key: &dyn Signer,
) -> anyhow::Result<Vec<u8>> {
    let timestamp = Timestamp {
        type_: "timestamp".into(),
        spec_version: SPEC_VERSION.into(),
        version,
        expires: Expiry::new(Utc::now() + Duration::days(1)),
        meta: BTreeMap::from([(
            "snapshot.json".to_owned(),
            pinned(snapshot_version, snapshot),
        )]),
        unrecognized: BTreeMap::new(),
    };
    Ok(sign_role(&timestamp, &[key])?)
}

/// A `METAFILES` entry pinning `bytes` (version, length, hashes).
pub(super) fn pinned(version: u64, bytes: &[u8]) -> MetaFile {
    let mut m = MetaFile::version_only(version);
    m.length = Some(bytes.len() as u64);
    m.hashes = Some(compute_hashes(bytes));
    m
}

/// The director keys the attacker stole.
struct Stolen {
    targets: InMemorySigner,
    snapshot: InMemorySigner,
    timestamp: InMemorySigner,
}

/// One instruction of the attacker's: `ecu` (of `hardware_id`) installs `bytes` as `name`.
struct Instruction<'a> {
    name: &'a str,
    ecu: String,
    hardware_id: &'a str,
    bytes: Vec<u8>,
    release_counter: u64,
}

/// The attacker's complete director metadata for `vin` (next versions after the ones the
/// vehicle trusts), put in place on the proxy. Returns the versions served.
async fn serve_forged(
    h: &Harness,
    stolen: &Stolen,
    instruction: &Instruction<'_>,
) -> anyhow::Result<(u64, u64, u64)> {
    let vin = h.vin();
    let next = |role: &'static str| async move {
        trusted_version(h, &format!("primary/director/{role}"))
            .await
            .map(|v| v + 1)
    };
    let (tv, sv, tsv) = (
        next("targets").await?,
        next("snapshot").await?,
        next("timestamp").await?,
    );
    let custom = DirectorCustom {
        release_counter: instruction.release_counter,
        maintenance_window: None,
        ecus: BTreeMap::from([(
            instruction.ecu.clone(),
            EcuAssignment {
                hardware_id: instruction.hardware_id.to_owned(),
                encryption: None,
                delta: None,
            },
        )]),
    };
    let targets = Targets {
        type_: "targets".into(),
        spec_version: SPEC_VERSION.into(),
        version: tv,
        expires: Expiry::new(Utc::now() + Duration::days(7)),
        targets: BTreeMap::from([(
            instruction.name.to_owned(),
            TargetFile {
                length: instruction.bytes.len() as u64,
                hashes: compute_hashes(&instruction.bytes),
                custom: Some(custom.to_value()),
                unrecognized: BTreeMap::new(),
            },
        )])
        .into(),
        delegations: None,
        unrecognized: BTreeMap::from([(
            DIRECTOR_VEHICLE_FIELD.to_owned(),
            serde_json::to_value(DirectorVehicle { vin: vin.clone() })?,
        )]),
    };
    let targets = sign_role(&targets, &[&stolen.targets as &dyn Signer])?;
    let snapshot = forge_snapshot(
        sv,
        BTreeMap::from([("targets.json".to_owned(), pinned(tv, &targets))]),
        &stolen.snapshot,
    )?;
    let timestamp = forge_timestamp(tsv, sv, &snapshot, &stolen.timestamp)?;
    let base = format!("/director/{vin}/metadata/");
    h.proxy.only(Intercept::get(
        &format!("{base}timestamp.json"),
        Action::Replace(timestamp),
    ));
    h.proxy.add(Intercept::get(
        &format!("{base}{sv}.snapshot.json"),
        Action::Replace(snapshot),
    ));
    h.proxy.add(Intercept::get(
        &format!("{base}{tv}.targets.json"),
        Action::Replace(targets),
    ));
    // And the bytes its instruction names, where a vehicle following the instruction alone
    // would fetch them: if anything installed the attacker's choice, it would be these.
    let sha = hex::encode(rampart_core::hash::sha256(&instruction.bytes));
    let image_path = match instruction.name.rsplit_once('/') {
        Some((dir, file)) => format!("/image/targets/{dir}/{sha}.{file}"),
        None => format!("/image/targets/{sha}.{}", instruction.name),
    };
    h.proxy.add(Intercept::get(
        &image_path,
        Action::Replace(instruction.bytes.clone()),
    ));
    Ok((tsv, sv, tv))
}

/// Runs it.
pub(super) async fn run(mut h: Harness) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let mut missing = Vec::new();
    let vin = h.vin();
    let (tbox, bcm) = (h.ecu_id(0), h.ecu_id(2));
    let director_meta = format!("/director/{vin}/metadata/");
    let keys = h.lab.layout.online_keys();
    let stolen = Stolen {
        targets: load_key_file(&keys.join("director-targets.pem"))?,
        snapshot: load_key_file(&keys.join("director-snapshot.pem"))?,
        timestamp: load_key_file(&keys.join("director-timestamp.pem"))?,
    };
    // The OEM's release is in flight: new T-BOX and BCM firmware.
    release(&h, "tbox/fw-2.0.bin", "tbox-a", "2.0").await?;
    release(&h, "bcm/fw-2.0.bin", "bcm-1", "2.0").await?;
    let before = h.trust_state().await?;
    let bcm_before = partial_targets_version(&h, 2);
    let forbidden = ["tbox/fw-6.6.bin", "bcm/fw-6.6.bin"];
    let attacks = [
        (
            "an image the image repository does not list, for the T-BOX",
            Instruction {
                name: "tbox/fw-6.6.bin",
                ecu: tbox.clone(),
                hardware_id: "tbox-a",
                bytes: image_bytes("attacker firmware for the T-BOX", 90_000),
                release_counter: 99,
            },
            Rule::TargetNotFound,
        ),
        (
            "the listed name tbox/fw-2.0.bin with the attacker's bytes, for the T-BOX",
            Instruction {
                name: "tbox/fw-2.0.bin",
                ecu: tbox.clone(),
                hardware_id: "tbox-a",
                bytes: image_bytes("attacker firmware posing as 2.0", 90_000),
                release_counter: 2,
            },
            Rule::DirectorImageMismatch,
        ),
        (
            "the listed name bcm/fw-2.0.bin with the attacker's bytes, for the BCM (partial verification: on its own it checks only director targets)",
            Instruction {
                name: "bcm/fw-2.0.bin",
                ecu: bcm.clone(),
                hardware_id: "bcm-1",
                bytes: image_bytes("attacker firmware for the BCM", 90_000),
                release_counter: 2,
            },
            Rule::DirectorImageMismatch,
        ),
    ];
    for (what, instruction, rule) in &attacks {
        let (tsv, sv, tv) = serve_forged(&h, &stolen, instruction).await?;
        h.attempt(
            &mut f,
            &mut missing,
            &before,
            Attempt::new(
                format!(
                    "director metadata signed with the stolen keys (timestamp v{tsv}, snapshot v{sv}, targets v{tv}) naming {what}",
                ),
                &director_meta,
                &[*rule],
            )
            .forbid(&forbidden)
            .at_least(3),
        )
        .await?;
    }
    let after = h.trust_state().await?;
    let bcm_after = partial_targets_version(&h, 2);
    f.check(
        "the BCM installed nothing and was never handed the attacker's director targets",
        bcm_after == bcm_before && after.running.get(&bcm) == before.running.get(&bcm),
        format!(
            "BCM runs {}; its last accepted director targets version: {} before, {} after",
            runs(&after, &bcm),
            bcm_before.map_or("none".into(), |v| v.to_string()),
            bcm_after.map_or("none".into(), |v| v.to_string())
        ),
    );

    // The OEM answers the indicators: new director targets, snapshot and timestamp keys (a
    // new director root for each, signed with the offline root keys), the server restarted
    // with them. The attacker keeps serving with the stolen keys.
    let now = Utc::now();
    let mut root_version = 0;
    for role in ["targets", "snapshot", "timestamp"] {
        root_version = rotate(&h.lab.layout, Which::Director, role, now)
            .await?
            .root_version;
    }
    h.lab.restart_server().await?;
    let first = attacks
        .first()
        .map(|(_, i, _)| i)
        .ok_or_else(|| anyhow::anyhow!("no attack"))?;
    let (tsv, sv, tv) = serve_forged(&h, &stolen, first).await?;
    let run = h.cycle().await?;
    let roots = h.proxy.roots_served(&director_meta);
    let n = evidence_forged(
        &mut f,
        &h,
        &director_meta,
        &format!(
            "after the rotation (director root v{root_version}; the vehicle fetched {}), metadata signed with the stolen keys again (timestamp v{tsv}, snapshot v{sv}, targets v{tv})",
            roots.join(", ")
        ),
    );
    if n == 0 {
        missing.push(
            "the forged director timestamp after the rotation was never requested".to_owned(),
        );
    }
    let after = h
        .check_rejected(&mut f, &run, &[Rule::Threshold], &forbidden)
        .await?;
    check_unchanged(&mut f, &before, &after);

    // The attacker leaves: the genuine release installs on the T-BOX and the BCM.
    let installs = [(0, "tbox/fw-2.0.bin"), (2, "bcm/fw-2.0.bin")];
    finish_genuine(f, &h, &missing, &installs, &forbidden).await
}

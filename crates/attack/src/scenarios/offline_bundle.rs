//! Attacks on offline updates (issue 18): the attacker controls the USB stick or the
//! workshop laptop, so every byte of the bundle (`rampart offline-bundle create`) — but no
//! signing key. Seven scenarios, each run through `rampart vehicle --from-bundle` with real
//! ECUs, then the vehicle's report file uploaded as the workshop would
//! (`rampart admin import-reports`), so the server records what the vehicle noticed:
//!
//! * `bundle-other-vehicle` — a genuine bundle made for another car, given to this one;
//! * `bundle-expired` — a genuine bundle used after it expired (the vehicle's clock two days on);
//! * `bundle-tampered` — an image, then the director's targets, changed in the file;
//! * `bundle-rollback` — an older genuine bundle replayed after a newer install;
//! * `bundle-mixed` — the director's metadata of one release with the image repository's
//!   metadata and images of an earlier one;
//! * `bundle-truncated` — the file cut short (a pulled stick, a bad copy);
//! * `bundle-path-traversal` — an entry named `image/targets/../../…` that would write outside
//!   the unpack folder.

use std::path::{Path, PathBuf};

use rampart_core::rule::Rule;
use rampart_lab::{image_bytes, VehicleRun};
use serde_json::Value;

use super::freeze::faketime;
use super::rollback::finish;
use crate::harness::{check_succeeded, check_unchanged};
use crate::{Findings, Harness, Info};

/// Description.
pub(super) const OTHER_VEHICLE: Info = Info {
    name: "bundle-other-vehicle",
    attack: "offline bundle for another vehicle",
    attacker: "holds a genuine offline bundle made for another car (its director metadata validly signed for that VIN) and gives it to this one, renamed to this VIN's places",
    control: "the director signs each vehicle's targets with its VIN (`uptane.vin`); the primary refuses director targets for another vehicle, wherever they come from",
    expected: "defeated: wrong-vehicle on the primary, nothing installed, the refusal in the report file and recorded by the server at import; this vehicle's own bundle installs",
};

/// Description.
pub(super) const EXPIRED: Info = Info {
    name: "bundle-expired",
    attack: "expired offline bundle",
    attacker: "keeps a genuine bundle and uses it after it expired (the vehicle's clock two days on, under faketime): instructions the director no longer stands behind",
    control: "a bundle is as old as its director timestamp (one day): the primary checks every expiry against its own clock, as online",
    expected: "defeated: expired on the primary, nothing installed, recorded at import; a fresh bundle installs",
};

/// Description.
pub(super) const TAMPERED: Info = Info {
    name: "bundle-tampered",
    attack: "tampered offline bundle (arbitrary software)",
    attacker: "changes the director's timestamp in the bundle (another version under the same signature), then (second attempt) bytes of an image; re-packs the file; holds no key",
    control: "images are checked against the signed length and hashes while they are read from the bundle; metadata signatures are checked over the bytes as received, against the vehicle's own trusted roots",
    expected: "defeated: hash-mismatch for the image, a signature threshold failure for the metadata; nothing installed, both recorded at import; the genuine bundle installs",
};

/// Description.
pub(super) const ROLLBACK: Info = Info {
    name: "bundle-rollback",
    attack: "rollback with an older offline bundle",
    attacker: "kept the genuine bundle of release 2.0 and replays it after the vehicle installed 3.0 (online)",
    control: "trusted metadata only moves forward (the director's timestamp, snapshot and targets versions), and release counters never go down, whatever the source of the bytes",
    expected: "defeated: rollback on the primary, 3.0 stays, recorded at import",
};

/// Description.
pub(super) const MIXED: Info = Info {
    name: "bundle-mixed",
    attack: "offline bundle mixing two releases (mix-and-match)",
    attacker: "combines the director metadata of release 3.0's bundle with the image repository metadata and images of release 2.0's bundle",
    control: "full verification: every image the director instructs must be in the image repository's signed targets with the same length, hashes, hardware ID and release counter",
    expected: "defeated: target-not-found (the image repository the bundle carries does not list 3.0), nothing installed, recorded at import; the genuine bundle installs",
};

/// Description.
pub(super) const TRUNCATED: Info = Info {
    name: "bundle-truncated",
    attack: "truncated offline bundle",
    attacker: "cuts the bundle file short (a pulled USB stick, an interrupted copy) in the middle of an image",
    control: "the bundle is unpacked whole before anything is used: an entry that ends early, or a bundle without its description, refuses the bundle and leaves nothing unpacked",
    expected: "defeated: bundle-malformed on the primary, nothing installed, the refusal in a signed manifest of the report file and recorded at import",
};

/// Description.
pub(super) const TRAVERSAL: Info = Info {
    name: "bundle-path-traversal",
    attack: "path traversal in an offline bundle",
    attacker: "adds an entry named `image/targets/../../../<outside>` (raw tar header) hoping the vehicle writes it outside the unpack folder",
    control: "every entry name is checked before anything is written (only the bundle's places; no `..`, absolute paths, links or devices); one bad entry refuses the whole bundle",
    expected: "defeated: bundle-entry on the primary, no file written outside the folder, nothing installed, recorded at import",
};

/// What an entry of a rewritten bundle becomes: its raw name and bytes.
type Rewritten = Vec<(Vec<u8>, Vec<u8>)>;

/// Copies the bundle at `src` to `dst`, each entry through `edit` (an empty answer drops it).
fn rewrite(
    src: &Path,
    dst: &Path,
    mut edit: impl FnMut(&str, Vec<u8>) -> Rewritten,
) -> anyhow::Result<()> {
    use std::io::Read;
    let mut archive = tar::Archive::new(std::fs::File::open(src)?);
    let mut out = tar::Builder::new(std::fs::File::create(dst)?);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        for (raw, data) in edit(&name, bytes) {
            let mut header = tar::Header::new_old();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            // The raw name, as an attacker writes it (set_path would refuse `..`).
            let slot = &mut header.as_old_mut().name;
            if raw.len() > slot.len() {
                anyhow::bail!(
                    "entry name over 100 bytes: {}",
                    String::from_utf8_lossy(&raw)
                );
            }
            slot.fill(0);
            if let Some(dst) = slot.get_mut(..raw.len()) {
                dst.copy_from_slice(&raw);
            }
            header.set_cksum();
            out.append(&header, data.as_slice())?;
        }
    }
    out.finish()?;
    Ok(())
}

fn keep(name: &str, bytes: Vec<u8>) -> Rewritten {
    vec![(name.as_bytes().to_vec(), bytes)]
}

/// A folder of the scenario's files.
fn work(h: &Harness) -> anyhow::Result<PathBuf> {
    let dir = h.lab.layout.root().join("offline-attack");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Makes the genuine bundle of this vehicle's pending updates at `out`.
async fn genuine(h: &Harness, out: &Path) -> anyhow::Result<()> {
    h.lab.offline_bundle(&[h.vin()], out).await?;
    Ok(())
}

/// One offline attempt with the bundle at `bundle`: the vehicle's cycle from it (through
/// `wrapper`), the report file uploaded; the vehicle must refuse, name one of `rules`, the
/// server must record it, and nothing may move.
async fn attempt(
    h: &Harness,
    f: &mut Findings,
    missing: &mut Vec<String>,
    bundle: &Path,
    rules: &[Rule],
    wrapper: Option<(&Path, &[&str])>,
    what: &str,
) -> anyhow::Result<VehicleRun> {
    let before = h.trust_state().await?;
    h.mark_events().await?;
    let reports = bundle.with_extension("reports.jsonl");
    let _ = std::fs::remove_file(&reports);
    let run = h
        .lab
        .run_vehicle_from_bundle(0, bundle, &reports, wrapper)
        .await?;
    let output = format!("{}\n{}", run.stderr, run.stdout);
    if output.contains("offline bundle") || output.contains("Offline bundle") {
        f.evidence(format!(
            "{what}: the vehicle read {} ({} bytes) with `rampart vehicle --from-bundle`",
            bundle.display(),
            std::fs::metadata(bundle).map(|m| m.len()).unwrap_or(0)
        ));
    } else {
        missing.push(format!("{what}: the vehicle never read the bundle"));
    }
    h.check_refused(f, &run);
    let imported = if reports.exists() {
        h.lab.import_reports(&reports).await?
    } else {
        Vec::new()
    };
    f.check(
        format!("{what}: the vehicle's signed report of the refusal is in its report file"),
        imported.iter().any(Result::is_ok),
        format!(
            "{} line(s) in {}, {} accepted at import",
            imported.len(),
            reports.display(),
            imported.iter().filter(|r| r.is_ok()).count()
        ),
    );
    h.check_noticed(f, &run, rules, "vehicle").await?;
    let after = h.trust_state().await?;
    h.check_state(f, &after, &[]);
    check_unchanged(f, &before, &after);
    Ok(run)
}

/// The genuine bundle installs once the attacker is gone (a fresh one from the workshop).
async fn recovers(h: &Harness, f: &mut Findings, image: &str) -> anyhow::Result<()> {
    let dir = work(h)?;
    let bundle = dir.join("genuine-again.bundle");
    genuine(h, &bundle).await?;
    let reports = dir.join("genuine-again.reports.jsonl");
    let run = h
        .lab
        .run_vehicle_from_bundle(0, &bundle, &reports, None)
        .await?;
    check_succeeded(
        f,
        "a genuine bundle installs once the attacker is gone",
        &run,
        "the vehicle installed from the workshop's own bundle",
    );
    for r in h.lab.import_reports(&reports).await? {
        r?;
    }
    h.check_runs(
        f,
        "the update runs after the genuine bundle",
        &h.ecu_id(0),
        image,
    )
    .await?;
    Ok(())
}

/// Release 2.0 of the T-BOX, pending for this vehicle.
async fn pending_release(h: &Harness) -> anyhow::Result<&'static str> {
    h.release_tbox_update(120_000).await
}

/// What a scenario starts from: release 2.0 pending, a work folder, the workshop's genuine
/// bundle of it.
struct Start {
    f: Findings,
    missing: Vec<String>,
    image: &'static str,
    dir: PathBuf,
    bundle: PathBuf,
}

async fn start(h: &Harness) -> anyhow::Result<Start> {
    let image = pending_release(h).await?;
    let dir = work(h)?;
    let bundle = dir.join("genuine.bundle");
    genuine(h, &bundle).await?;
    Ok(Start {
        f: Findings::default(),
        missing: Vec::new(),
        image,
        dir,
        bundle,
    })
}

/// How a scenario ends: the genuine bundle installs `image`, and the verdict.
async fn end(
    h: &Harness,
    mut f: Findings,
    missing: &[String],
    image: &str,
) -> anyhow::Result<Findings> {
    recovers(h, &mut f, image).await?;
    finish(&mut f, missing);
    Ok(f)
}

/// `bundle-other-vehicle`.
pub(super) async fn other_vehicle(h: Harness) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let mut missing = Vec::new();
    // Release 2.0, pending for this car and (below) the other.
    let image = pending_release(&h).await?;
    // Another car of the fleet (same ECU keys: the attacker needs none of them).
    let vin = h.vin();
    let other = "WRAMPART000000B2X";
    let mut record = h.lab.admin_get(&format!("vehicles/{vin}")).await?;
    let ecus: Vec<Value> = record
        .get_mut("ecus")
        .and_then(Value::as_array_mut)
        .map(|list| {
            list.iter()
                .map(|e| {
                    let id = e.get("ecu_id").and_then(Value::as_str).unwrap_or("ECU");
                    serde_json::json!({
                        "ecu_id": format!("{id}-B"),
                        "hardware_id": e.get("hardware_id"),
                        "public_key": e.get("public_key"),
                        "encryption_key": e.get("encryption_key"),
                        "verification": e.get("verification"),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let primary = format!(
        "{}-B",
        record
            .get("primary_ecu")
            .and_then(Value::as_str)
            .unwrap_or("TBOX")
    );
    h.lab
        .admin_post(
            "vehicles",
            &serde_json::json!({"vin": other, "primary_ecu": primary, "ecus": ecus}),
        )
        .await?;
    let dir = work(&h)?;
    let theirs = dir.join("other.bundle");
    // Signed once before the assignment and once after: the other car's director metadata is
    // newer than what this vehicle trusts, so the vehicle reads it (an equal version would be
    // taken for "nothing new").
    h.lab.offline_bundle(&[other.to_owned()], &theirs).await?;
    h.lab
        .admin_post(
            "assignments",
            &serde_json::json!({"target": image, "vins": [other], "hardware_id": "tbox-a"}),
        )
        .await?;
    h.lab.offline_bundle(&[other.to_owned()], &theirs).await?;
    let forged = dir.join("other-renamed.bundle");
    let from = format!("director/{other}/");
    let to = format!("director/{vin}/");
    rewrite(&theirs, &forged, |name, bytes| {
        keep(&name.replacen(&from, &to, 1), bytes)
    })?;
    attempt(
        &h,
        &mut f,
        &mut missing,
        &forged,
        &[Rule::WrongVehicle],
        None,
        "another car's bundle",
    )
    .await?;
    end(&h, f, &missing, image).await
}

/// `bundle-expired`.
pub(super) async fn expired(h: Harness) -> anyhow::Result<Findings> {
    let Start {
        mut f,
        mut missing,
        image,
        bundle,
        ..
    } = start(&h).await?;
    let Some(faketime) = faketime() else {
        f.check(
            "faketime is installed (the vehicle's clock two days on)",
            false,
            "install faketime (Debian package) to run this scenario",
        );
        return Ok(f);
    };
    attempt(
        &h,
        &mut f,
        &mut missing,
        &bundle,
        &[Rule::Expired],
        Some((&faketime, &["-f", "+2d"])),
        "the bundle two days later",
    )
    .await?;
    end(&h, f, &missing, image).await
}

/// `bundle-tampered`.
pub(super) async fn tampered(h: Harness) -> anyhow::Result<Findings> {
    let Start {
        mut f,
        mut missing,
        image,
        dir,
        bundle,
    } = start(&h).await?;
    // 1. The director's timestamp (which a vehicle always reads): another version, same
    //    signature.
    let evil_meta = dir.join("evil-metadata.bundle");
    rewrite(&bundle, &evil_meta, |name, bytes| {
        if name.starts_with("director/") && name.ends_with("/timestamp.json") {
            if let Ok(mut doc) = serde_json::from_slice::<Value>(&bytes) {
                if let Some(v) = doc.pointer_mut("/signed/version") {
                    *v = Value::from(v.as_u64().unwrap_or(0) + 10);
                }
                return keep(name, serde_json::to_vec_pretty(&doc).unwrap_or(bytes));
            }
        }
        keep(name, bytes)
    })?;
    attempt(
        &h,
        &mut f,
        &mut missing,
        &evil_meta,
        &[Rule::Threshold, Rule::BadSignature],
        None,
        "the director's timestamp changed in the bundle",
    )
    .await?;
    // 2. An image's bytes.
    let evil_image = dir.join("evil-image.bundle");
    rewrite(&bundle, &evil_image, |name, mut bytes| {
        if name.starts_with("image/targets/") {
            if let Some(b) = bytes.get_mut(1000) {
                *b ^= 0x55;
            }
        }
        keep(name, bytes)
    })?;
    attempt(
        &h,
        &mut f,
        &mut missing,
        &evil_image,
        &[Rule::HashMismatch],
        None,
        "an image changed in the bundle",
    )
    .await?;
    end(&h, f, &missing, image).await
}

/// `bundle-rollback`.
pub(super) async fn rollback(h: Harness) -> anyhow::Result<Findings> {
    let Start {
        mut f,
        mut missing,
        bundle: old,
        ..
    } = start(&h).await?;
    // 3.0 is released and installed online.
    let newer = "tbox/fw-3.0.bin";
    h.lab
        .release(newer, "tbox-a", "3.0", &image_bytes(newer, 120_000), false)
        .await?;
    let run = h.cycle().await?;
    if !run.success {
        anyhow::bail!("the online install of 3.0 failed:\n{}", run.stderr);
    }
    attempt(
        &h,
        &mut f,
        &mut missing,
        &old,
        &[Rule::Rollback, Rule::ReleaseCounterDecreased],
        None,
        "release 2.0's bundle after 3.0",
    )
    .await?;
    h.check_runs(&mut f, "the T-BOX still runs 3.0", &h.ecu_id(0), newer)
        .await?;
    finish(&mut f, &missing);
    Ok(f)
}

/// `bundle-mixed`.
pub(super) async fn mixed(h: Harness) -> anyhow::Result<Findings> {
    let Start {
        mut f,
        mut missing,
        image: first,
        dir,
        bundle: old,
    } = start(&h).await?;
    let newer = "tbox/fw-3.0.bin";
    h.lab
        .release(newer, "tbox-a", "3.0", &image_bytes(newer, 120_000), false)
        .await?;
    let new = dir.join("release-3.0.bundle");
    genuine(&h, &new).await?;
    // Director metadata of 3.0; image repository metadata and images of 2.0.
    let mut old_image_side = Vec::new();
    rewrite(&old, &dir.join("scratch.bundle"), |name, bytes| {
        if name.starts_with("image/") {
            old_image_side.push((name.as_bytes().to_vec(), bytes.clone()));
        }
        keep(name, bytes)
    })?;
    let forged = dir.join("mixed.bundle");
    let mut inserted = false;
    rewrite(&new, &forged, |name, bytes| {
        if name.starts_with("image/") {
            if inserted {
                return Vec::new();
            }
            inserted = true;
            return std::mem::take(&mut old_image_side);
        }
        keep(name, bytes)
    })?;
    attempt(
        &h,
        &mut f,
        &mut missing,
        &forged,
        &[Rule::TargetNotFound, Rule::DirectorImageMismatch],
        None,
        "3.0's director metadata with 2.0's image repository",
    )
    .await?;
    f.evidence(format!(
        "{first} was pending when release 2.0's bundle was made"
    ));
    end(&h, f, &missing, newer).await
}

/// `bundle-truncated`.
pub(super) async fn truncated(h: Harness) -> anyhow::Result<Findings> {
    let Start {
        mut f,
        mut missing,
        image,
        dir,
        bundle,
    } = start(&h).await?;
    let bytes = std::fs::read(&bundle)?;
    let cut = dir.join("cut.bundle");
    std::fs::write(&cut, bytes.get(..bytes.len() / 2).unwrap_or_default())?;
    attempt(
        &h,
        &mut f,
        &mut missing,
        &cut,
        &[Rule::BundleMalformed],
        None,
        "the bundle cut in half",
    )
    .await?;
    end(&h, f, &missing, image).await
}

/// `bundle-path-traversal`.
pub(super) async fn path_traversal(h: Harness) -> anyhow::Result<Findings> {
    let Start {
        mut f,
        mut missing,
        image,
        dir,
        bundle,
    } = start(&h).await?;
    // Relative to the unpack folder (STATE/offline-bundle), five levels up is outside the
    // vehicle's folder altogether.
    let target = "planted-by-bundle";
    let forged = dir.join("traversal.bundle");
    let mut added = false;
    rewrite(&bundle, &forged, |name, bytes| {
        let mut out = keep(name, bytes);
        if !added {
            added = true;
            out.insert(
                0,
                (
                    format!("image/targets/../../../../../{target}").into_bytes(),
                    b"#!/bin/sh\necho owned\n".to_vec(),
                ),
            );
        }
        out
    })?;
    attempt(
        &h,
        &mut f,
        &mut missing,
        &forged,
        &[Rule::BundleEntry],
        None,
        "an entry named image/targets/../../../../../planted-by-bundle",
    )
    .await?;
    let planted: Vec<String> = walk(&h.lab.options.root)
        .into_iter()
        .filter(|p| p.ends_with(target))
        .map(|p| p.display().to_string())
        .collect();
    f.check_none(
        "no file written outside the unpack folder",
        &planted,
        "no planted-by-bundle anywhere under the lab",
    );
    end(&h, f, &missing, image).await
}

/// Every file under `dir` (depth-first).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

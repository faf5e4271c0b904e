//! Root key rotation after compromise: the image repository's offline keys (its three root
//! keys and the targets key) were copied. The OEM rotates them — root v2 signed by the old
//! and the new root keys, then a new targets key in root v3 — the vehicle follows the chain,
//! and from then on whatever the attacker signs with the retired keys is worthless: its own
//! next root version, and targets signed with the retired targets key.

use rampart_core::rule::Rule;
use std::path::{Path, PathBuf};

use chrono::{Duration, Utc};
use rampart_core::hash::compute_hashes;
use rampart_core::key::KeyScheme;
use rampart_core::metadata::{sign_role, Envelope, Expiry, RoleKeys, Root, Targets};
use rampart_core::signer::{InMemorySigner, Signer};
use rampart_lab::image_bytes;
use rampart_server::keys::load_key_file;
use rampart_server::ops::{image_repo, rotate, Which};

use super::rollback::{check_genuine, check_unchanged, finish_genuine, genuine_cycle, release};
use crate::proxy::{Action, Intercept};
use crate::{Findings, Harness, Info};

/// Description.
pub(super) const INFO: Info = Info {
    name: "root-rotation",
    attack: "root key rotation after compromise",
    attacker: "holds copies of the image repository's offline keys (all root keys and the targets key) and sits between vehicle and server, after the OEM rotated those keys",
    control: "TUF root rotation: each new root version must be signed by the threshold of the trusted root's keys and of its own, so the vehicle walks the OEM's chain (v1 → v2 → v3) and afterwards trusts only the new keys; targets are pinned by snapshot and must be signed by the keys the current root lists",
    expected: "defeated: the vehicle follows the OEM's rotation; an attacker's next root signed with the retired root keys refused (threshold); targets signed with the retired targets key refused (the snapshot pins the genuine targets: length/hash; the vehicle's trusted root no longer lists that key); nothing installed, the vehicle reports it, the server records it; the genuine release installs once the attacker leaves",
};

/// Retired key files (`NAME.retired-TIME`) in `dir` whose name starts with `prefix`.
fn retired(dir: &Path, prefix: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .is_some_and(|n| n.starts_with(prefix) && n.contains(".retired-"))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// A document's root, parsed without checking signatures (the caller knows where it is from).
fn root_of(bytes: &[u8]) -> anyhow::Result<Root> {
    Ok(Envelope::parse(bytes, "root")?.typed("root")?)
}

/// Runs it.
pub(super) async fn run(h: Harness) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let mut missing = Vec::new();
    let tbox = h.ecu_id(0);
    let offline = h.lab.layout.offline_keys();
    let meta_dir = h.lab.layout.image_metadata();
    let forbidden = ["tbox/fw-6.6.bin"];

    // 0. The OEM learns that the offline keys were copied and rotates them: root (v2, signed
    //    by the old and the new root keys), then targets (v3, signed by the new root keys;
    //    targets re-signed with the new key). A release is in flight; the vehicle follows.
    let now = Utc::now();
    let v2 = rotate(&h.lab.layout, Which::Image, "root", now).await?;
    let v3 = rotate(&h.lab.layout, Which::Image, "targets", now).await?;
    let old_roots = retired(&offline, "image-root-")?;
    let old_targets = retired(&offline, "image-targets.pem")?;
    if old_roots.is_empty() || old_targets.is_empty() {
        anyhow::bail!(
            "no retired image root or targets keys in {}",
            offline.display()
        );
    }
    release(&h, "tbox/fw-2.0.bin", "tbox-a", "2.0").await?;
    h.proxy.clear_log();
    genuine_cycle(&h, "release 2.0 after the rotation").await?;
    let chain = h.proxy.roots_served("/image/metadata/");
    let state = h.trust_state().await?;
    let root_of_who = |who: &str| {
        state
            .versions
            .get(&format!("{who}/image/root"))
            .copied()
            .unwrap_or(0)
    };
    f.check(
        "the vehicle follows the OEM's rotation (primary and T-BOX trust the newest root)",
        root_of_who("primary") == v3.root_version && root_of_who(&tbox) == v3.root_version,
        format!(
            "rotation to v{} (root) and v{} (targets); the primary fetched {}; trusted: primary v{}, {tbox} v{}",
            v2.root_version,
            v3.root_version,
            chain.join(", "),
            root_of_who("primary"),
            root_of_who(&tbox)
        ),
    );
    check_genuine(
        &mut f,
        &h,
        0,
        "tbox/fw-2.0.bin",
        "the release in flight installs under the new keys",
    );

    // 1. The attacker's next root (v4), signed with the retired root keys — all three, more
    //    than the old threshold — naming them as root keys again and its own key for every
    //    other role; its own threshold is met, the trusted root's is not.
    release(&h, "tbox/fw-2.1.bin", "tbox-a", "2.1").await?;
    let before = h.trust_state().await?;
    let signers: Vec<InMemorySigner> = old_roots
        .iter()
        .map(|p| load_key_file(p))
        .collect::<Result<_, _>>()?;
    let own = InMemorySigner::generate(KeyScheme::Ed25519)?;
    let trusted_root = root_of(&std::fs::read(
        meta_dir.join(format!("{}.root.json", v3.root_version)),
    )?)?;
    let mut forged = trusted_root.clone();
    forged.version = v3.root_version + 1;
    forged.expires = Expiry::new(Utc::now() + Duration::days(365));
    forged.keys.clear();
    let mut old_ids = Vec::new();
    for s in &signers {
        forged.keys.insert(s.key_id(), s.public_key().clone());
        old_ids.push(s.key_id());
    }
    forged.keys.insert(own.key_id(), own.public_key().clone());
    let threshold = trusted_root.role("root").map_or(1, |r| r.threshold);
    forged
        .roles
        .insert("root".into(), RoleKeys::new(old_ids, threshold));
    for role in ["timestamp", "snapshot", "targets"] {
        forged
            .roles
            .insert(role.into(), RoleKeys::new(vec![own.key_id()], 1));
    }
    let refs: Vec<&dyn Signer> = signers.iter().map(|s| s as &dyn Signer).collect();
    let forged_root = sign_role(&forged, &refs)?;
    let path = format!("/image/metadata/{}.root.json", forged.version);
    h.proxy.clear_log();
    h.proxy
        .add(Intercept::get(&path, Action::Replace(forged_root)));
    let what = format!(
        "the attacker's root v{} signed with the {} retired root keys (retired files: {})",
        forged.version,
        signers.len(),
        old_roots
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let run = h
        .forged_cycle(&mut f, &mut missing, &path, 1, &what)
        .await?;
    let after = h
        .check_rejected(&mut f, &run, &[Rule::Threshold], &forbidden)
        .await?;
    check_unchanged(&mut f, &before, &after);

    // 2. Targets signed with the retired targets key: the current targets, release 2.1
    //    pointing at the attacker's firmware.
    h.proxy.clear();
    h.proxy.clear_log();
    let old_key = old_targets
        .first()
        .map(|p| load_key_file(p))
        .transpose()?
        .ok_or_else(|| anyhow::anyhow!("no retired targets key"))?;
    let current = image_repo(&h.lab.layout)?.state()?;
    let version = current
        .roles
        .get("targets")
        .map(|t| t.version)
        .ok_or_else(|| anyhow::anyhow!("no targets role"))?;
    let mut targets: Targets = current
        .roles
        .get("targets")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no targets role"))?;
    let evil = image_bytes("attacker firmware", 90_000);
    for (name, file) in targets.targets.iter_mut() {
        if name == "tbox/fw-2.1.bin" {
            file.length = evil.len() as u64;
            file.hashes = compute_hashes(&evil);
        }
    }
    let forged_targets = sign_role(&targets, &[&old_key as &dyn Signer])?;
    let path = format!("/image/metadata/{version}.targets.json");
    h.proxy.add(Intercept::get(
        &path,
        Action::Replace(forged_targets.clone()),
    ));
    let what = format!(
        "targets v{version} signed with the retired targets key ({}), release 2.1 pointing at the attacker's firmware",
        old_targets
            .first()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let run = h
        .forged_cycle(&mut f, &mut missing, &path, 1, &what)
        .await?;
    h.check_refused(&mut f, &run);
    h.check_noticed(
        &mut f,
        &run,
        &[Rule::LengthMismatch, Rule::HashMismatch, Rule::EndlessData],
        "vehicle",
    )
    .await?;
    // The vehicle never got as far as the signature (the snapshot pins the genuine bytes);
    // its trusted root would refuse it there too.
    let vehicle_root = h
        .lab
        .vehicles
        .first()
        .map(|v| v.dir.join("primary-state/image/root.json"))
        .ok_or_else(|| anyhow::anyhow!("no vehicle"))?;
    let vehicle_root = root_of(&std::fs::read(vehicle_root)?)?;
    let role = vehicle_root.role("targets")?;
    let verdict = Envelope::parse(&forged_targets, "targets")?.verify(
        "targets",
        &vehicle_root.keys,
        &role.keyids,
        role.threshold,
    );
    f.check(
        "the vehicle's trusted root no longer authorises the retired targets key",
        verdict.is_err(),
        match verdict {
            Ok(()) => format!("root v{} still accepts it", vehicle_root.version),
            Err(e) => format!("against the vehicle's root v{}: {e}", vehicle_root.version),
        },
    );
    let after = h.trust_state().await?;
    h.check_state(&mut f, &after, &forbidden);
    check_unchanged(&mut f, &before, &after);

    // 3. The attacker leaves: the genuine release installs under the new keys.
    finish_genuine(f, &h, &missing, &[(0, "tbox/fw-2.1.bin")], &forbidden).await
}

//! Compromise of the image repository's online keys: the attacker holds the timestamp and
//! snapshot keys (read from the server's `online-keys/`) and, as a man in the middle, signs
//! image-repository timestamps and snapshots of its own: a fast-forward to version 1000, a
//! snapshot pointing at older targets, a snapshot pinning targets it altered. The targets
//! role is signed offline, which it does not have. Then the OEM rotates both keys, and the
//! vehicle recovers from the fast-forward (TUF 5.3.11: it deletes its trusted timestamp and
//! snapshot when their keys rotate).

use rampart_core::rule::Rule;
use std::collections::BTreeMap;

use chrono::Utc;
use rampart_core::hash::compute_hashes;
use rampart_core::metadata::{sign_role, Envelope, Targets};
use rampart_core::signer::InMemorySigner;
use rampart_lab::image_bytes;
use rampart_server::keys::load_key_file;
use rampart_server::ops::{image_repo, rotate, Which};

use super::director_key_compromise::{forge_snapshot, forge_timestamp, pinned};
use super::rollback::{
    active_image, check_genuine, check_unchanged, evidence_forged, finish, genuine_sha256, release,
    trusted_version,
};
use crate::harness::Attempt;
use crate::proxy::{Action, Intercept};
use crate::{Findings, Harness, Info};

/// Description.
pub(super) const INFO: Info = Info {
    name: "image-online-keys-compromise",
    attack: "compromise of the image repository's timestamp and snapshot keys",
    attacker: "holds the image repository's timestamp and snapshot keys (stolen from the server's online-keys folder), not the offline targets key, and sits between vehicle and server",
    control: "targets metadata is signed with an offline key: with the online keys the attacker can only re-order what the OEM signed, and the trusted snapshot never lets a targets role go back; key rotation (a new root, signed with the offline root keys) plus TUF fast-forward recovery (trusted timestamp and snapshot deleted when their keys rotate)",
    expected: "limited, then defeated: a fast-forward to version 1000 is accepted (valid signatures) but installs only what the OEM signed and the director assigned; a snapshot pointing at older targets refused (rollback); altered targets refused (threshold); until rotation the vehicle refuses the genuine, lower-numbered metadata (rollback, reported); after the OEM rotates both keys the stolen keys no longer verify (threshold) and the vehicle recovers and installs the genuine release",
};

/// The keys the attacker stole.
struct Stolen {
    snapshot: InMemorySigner,
    timestamp: InMemorySigner,
}

const TS: &str = "/image/metadata/timestamp.json";

/// Serves a timestamp and snapshot of `version` (signed with the stolen keys) whose snapshot
/// lists `meta`, plus any extra documents (path → bytes).
fn serve(
    h: &Harness,
    stolen: &Stolen,
    version: u64,
    meta: BTreeMap<String, rampart_core::metadata::MetaFile>,
    extra: Vec<(String, Vec<u8>)>,
) -> anyhow::Result<()> {
    let snapshot = forge_snapshot(version, meta, &stolen.snapshot)?;
    let timestamp = forge_timestamp(version, version, &snapshot, &stolen.timestamp)?;
    h.proxy.only(Intercept::get(TS, Action::Replace(timestamp)));
    h.proxy.add(Intercept::get(
        &format!("/image/metadata/{version}.snapshot.json"),
        Action::Replace(snapshot),
    ));
    for (path, bytes) in extra {
        h.proxy.add(Intercept::get(&path, Action::Replace(bytes)));
    }
    Ok(())
}

/// Runs it.
pub(super) async fn run(mut h: Harness) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let mut missing = Vec::new();
    let meta_dir = h.lab.layout.image_metadata();
    let keys = h.lab.layout.online_keys();
    let stolen = Stolen {
        snapshot: load_key_file(&keys.join("image-snapshot.pem"))?,
        timestamp: load_key_file(&keys.join("image-timestamp.pem"))?,
    };
    let forbidden = ["tbox/fw-6.6.bin"];

    // 1. Fast-forward: timestamp and snapshot v1000, the snapshot listing the genuine
    //    targets, while the OEM's release 2.0 is in flight.
    release(&h, "tbox/fw-2.0.bin", "tbox-a", "2.0").await?;
    let tbox_before = active_image(&h, 0);
    let genuine = image_repo(&h.lab.layout)?.state()?;
    serve(&h, &stolen, 1000, genuine.snapshot.meta.clone(), Vec::new())?;
    let what = format!(
        "fast-forward: image timestamp and snapshot v1000 signed with the stolen keys (the genuine ones are v{} and v{})",
        genuine.timestamp.version, genuine.snapshot.version
    );
    let run = h
        .forged_cycle(&mut f, &mut missing, "/image/metadata/", 2, &what)
        .await?;
    let after = h.trust_state().await?;
    let trusted = after
        .versions
        .get("primary/image/timestamp")
        .copied()
        .unwrap_or(0);
    let (file, sha) = active_image(&h, 0);
    f.evidence(format!(
        "the vehicle {} the fast-forward (the cycle {}): it now trusts image timestamp v{trusted}; the T-BOX runs {file}",
        if trusted >= 1000 { "accepted (valid signatures of the stolen keys)" } else { "refused" },
        if run.success { "succeeded" } else { "failed" }
    ));
    // Whatever it did, the T-BOX runs what it ran or exactly the OEM's release 2.0.
    let genuine_20 = genuine_sha256("tbox/fw-2.0.bin");
    f.check(
        "the fast-forward installs nothing the OEM did not sign (targets are signed offline)",
        (file.clone(), sha.clone()) == tbox_before
            || (file == "tbox/fw-2.0.bin" && sha == genuine_20),
        format!(
            "T-BOX runs {file} (sha256 {}…); before the attack: {}; the OEM's 2.0: {}…",
            sha.get(..12).unwrap_or(&sha),
            tbox_before.0,
            genuine_20.get(..12).unwrap_or("")
        ),
    );
    h.check_state(&mut f, &after, &forbidden);

    // 2. A snapshot pointing at older targets (two releases back: without 2.0 or 2.1), to
    //    hide the next release.
    release(&h, "tbox/fw-2.1.bin", "tbox-a", "2.1").await?;
    let before = h.trust_state().await?;
    let current = image_repo(&h.lab.layout)?.state()?;
    let now_targets = current
        .roles
        .get("targets")
        .map(|t| t.version)
        .ok_or_else(|| anyhow::anyhow!("no targets role"))?;
    let old_version = now_targets.saturating_sub(2).max(1);
    let old_targets = std::fs::read(meta_dir.join(format!("{old_version}.targets.json")))?;
    serve(
        &h,
        &stolen,
        1001,
        BTreeMap::from([("targets.json".to_owned(), pinned(old_version, &old_targets))]),
        Vec::new(),
    )?;
    h.attempt(
        &mut f,
        &mut missing,
        &before,
        Attempt::new(
            format!(
                "timestamp and snapshot v1001 signed with the stolen keys, the snapshot pointing at targets v{old_version} (the current one is v{now_targets})",
            ),
            "/image/metadata/",
            &[Rule::Rollback],
        )
        .about("targets")
        .forbid(&forbidden)
        .at_least(2),
    )
    .await?;

    // 3. Altered targets: the current targets with release 2.1 pointing at the attacker's
    //    firmware, pinned by its own snapshot, signed with the only keys it has.
    let env = Envelope::parse(
        &std::fs::read(meta_dir.join(format!("{now_targets}.targets.json")))?,
        "targets",
    )?;
    let mut altered: Targets = env.typed("targets")?;
    let evil = image_bytes("attacker firmware", 90_000);
    for (name, file) in altered.targets.iter_mut() {
        if name == "tbox/fw-2.1.bin" {
            file.length = evil.len() as u64;
            file.hashes = compute_hashes(&evil);
        }
    }
    let altered = sign_role(
        &altered,
        &[&stolen.snapshot as &dyn rampart_core::signer::Signer],
    )?;
    serve(
        &h,
        &stolen,
        1002,
        BTreeMap::from([("targets.json".to_owned(), pinned(now_targets, &altered))]),
        vec![(
            format!("/image/metadata/{now_targets}.targets.json"),
            altered.clone(),
        )],
    )?;
    let run = h.cycle().await?;
    let n = evidence_forged(
        &mut f,
        &h,
        "/image/metadata/",
        &format!(
            "timestamp and snapshot v1002 pinning targets v{now_targets} altered to point release 2.1 at the attacker's firmware and signed with the stolen snapshot key"
        ),
    );
    let reached = h
        .proxy
        .forged()
        .iter()
        .any(|s| s.path.ends_with(".targets.json"));
    if n < 3 || !reached {
        missing.push(format!(
            "only {n} of the 3 documents of the altered targets were requested"
        ));
    }
    let after = h
        .check_rejected(&mut f, &run, &[Rule::Threshold], &forbidden)
        .await?;
    check_unchanged(&mut f, &before, &after);

    // 4. The attacker leaves. The genuine timestamp now has a lower version than the one the
    //    vehicle trusts: the vehicle refuses it and reports it — the fast-forward's damage,
    //    which only a rotation of the keys repairs.
    h.proxy.clear();
    h.proxy.clear_log();
    let trusted = trusted_version(&h, "primary/image/timestamp").await?;
    let run = h.cycle().await?;
    let genuine_ts = image_repo(&h.lab.layout)?.state()?.timestamp.version;
    f.evidence(format!(
        "after the attacker left, the vehicle (trusting image timestamp v{trusted}) was offered the genuine v{genuine_ts}: {}",
        if run.success { "accepted" } else { "refused" }
    ));
    if trusted > genuine_ts {
        // Fast-forwarded: the genuine timestamp must be refused as a rollback, and reported.
        h.check_refused(&mut f, &run);
        h.check_noticed(&mut f, &run, &[Rule::Rollback], "vehicle")
            .await?;
    }
    let after = h.trust_state().await?;
    h.check_state(&mut f, &after, &forbidden);
    check_unchanged(&mut f, &before, &after);

    // 5. The OEM rotates the timestamp and snapshot keys (a new root each, signed with the
    //    offline root keys) and restarts the server. The attacker comes back with the stolen
    //    keys.
    let now = Utc::now();
    let mut root_version = 0;
    for role in ["timestamp", "snapshot"] {
        root_version = rotate(&h.lab.layout, Which::Image, role, now)
            .await?
            .root_version;
    }
    h.lab.restart_server().await?;
    let genuine = image_repo(&h.lab.layout)?.state()?;
    serve(&h, &stolen, 1003, genuine.snapshot.meta.clone(), Vec::new())?;
    let run = h.cycle().await?;
    let roots = h.proxy.roots_served("/image/metadata/");
    let n = evidence_forged(
        &mut f,
        &h,
        TS,
        &format!(
            "after the rotation (image root v{root_version}; the vehicle fetched {}), a timestamp v1003 signed with the stolen key",
            roots.join(", ")
        ),
    );
    if n == 0 {
        missing.push("the forged timestamp after the rotation was never requested".to_owned());
    }
    h.check_rejected(&mut f, &run, &[Rule::Threshold], &forbidden)
        .await?;

    // 6. The attacker leaves: fast-forward recovery, the genuine release 2.1 installs.
    let run = h.check_recovers(&mut f).await?;
    let after = h.trust_state().await?;
    let genuine_ts = image_repo(&h.lab.layout)?.state()?.timestamp.version;
    let tbox = h.ecu_id(0);
    let trusted: Vec<(String, u64)> = ["primary".to_owned(), tbox]
        .into_iter()
        .map(|who| {
            let v = after
                .versions
                .get(&format!("{who}/image/timestamp"))
                .copied()
                .unwrap_or(0);
            (who, v)
        })
        .collect();
    f.check(
        "the primary and the T-BOX trust the genuine timestamp again (fast-forward recovery)",
        run.success && trusted.iter().all(|(_, v)| *v == genuine_ts),
        format!(
            "genuine image timestamp v{genuine_ts}; trusted: {}",
            trusted
                .iter()
                .map(|(w, v)| format!("{w} v{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    check_genuine(
        &mut f,
        &h,
        0,
        "tbox/fw-2.1.bin",
        "the genuine release 2.1 (the OEM's bytes) installs after the rotation",
    );
    h.check_state(&mut f, &after, &forbidden);
    finish(&mut f, &missing);
    Ok(f)
}

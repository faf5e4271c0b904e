//! Mix-and-match: the attacker combines metadata of different versions — each document
//! genuinely signed, recorded from earlier cycles — so that the vehicle would act on a set
//! no repository ever published together: the current image timestamp with an older
//! snapshot, the current snapshot with an older targets, the director's current timestamp and
//! snapshot with its older targets.

use rampart_core::rule::Rule;

use rampart_lab::image_bytes;

use super::rollback::{check_runs, fetched, finish, genuine_cycle, release, version_of};
use crate::harness::Attempt;
use crate::proxy::{Action, Intercept};
use crate::{Findings, Harness, Info};

/// Description.
pub(super) const INFO: Info = Info {
    name: "mix-and-match",
    attack: "mix-and-match",
    attacker: "man in the middle between vehicle and server that recorded earlier, validly signed metadata of both repositories and serves it mixed with current metadata (no signing keys)",
    control: "each document pins the next: timestamp signs the length and hashes of snapshot, snapshot those of every targets role (image repository and director alike); the vehicle checks them before it parses a document, so only a set published together is ever accepted",
    expected: "defeated: older snapshot under the current timestamp, older targets under the current snapshot (image repository) and older director targets under the director's current snapshot all refused against the length and hashes the newer document signed (hash-mismatch, length-mismatch, or endless-data when the older document is longer and the download is cut at the signed length); nothing installed, no trusted version goes down; the vehicle reports it, the server records it; the complete current set installs once the attacker leaves",
};

/// A T-BOX beta build, offered and declined, then replaced.
const BETA: &str = "tbox/fw-3.0-beta.bin";
/// The build that replaced it.
const FINAL: &str = "tbox/fw-3.0.bin";

/// The snapshot and top-level targets versions the image repository serves now.
fn current_image_versions(h: &Harness) -> anyhow::Result<(u64, u64)> {
    let state = rampart_server::ops::image_repo(&h.lab.layout)?.state()?;
    let targets = state
        .roles
        .get("targets")
        .map(|t| t.version)
        .ok_or_else(|| anyhow::anyhow!("image repository has no targets role"))?;
    Ok((state.snapshot.version, targets))
}

/// Runs it.
pub(super) async fn run(h: Harness) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let mut missing = Vec::new();
    let vin = h.vin();
    let (tbox, ivi, bcm) = (h.ecu_id(0), h.ecu_id(1), h.ecu_id(2));
    let director_meta = format!("/director/{vin}/metadata/");
    // Which rule fires depends on the bytes: a shorter or equally long document fails its
    // signed length or hashes, a longer one is cut off at the signed length (endless-data).
    let mismatch = [Rule::LengthMismatch, Rule::HashMismatch, Rule::EndlessData];

    // 0. A genuine release of two ECUs passes the attacker, who records the image snapshot
    //    and targets and the director targets the vehicle fetches.
    h.lab
        .release(
            "ivi/app-2.0.bin",
            "ivi-x",
            "2.0",
            &image_bytes("ivi/app-2.0.bin", 110_000),
            true,
        )
        .await?;
    release(&h, "tbox/fw-2.0.bin", "tbox-a", "2.0").await?;
    genuine_cycle(&h, "release 2.0").await?;
    let recorded = |prefix: &str, suffix: &str, what: &str| {
        fetched(&h, prefix, suffix)
            .map(|(_, b)| b)
            .ok_or_else(|| anyhow::anyhow!("the vehicle fetched no {what}"))
    };
    let old_snapshot = recorded("/image/metadata/", ".snapshot.json", "image snapshot")?;
    let old_targets = recorded("/image/metadata/", ".targets.json", "image targets")?;
    let old_director_targets = recorded(&director_meta, ".targets.json", "director targets")?;

    // The next release is in flight during the attacks.
    release(&h, "tbox/fw-2.1.bin", "tbox-a", "2.1").await?;
    let before = h.trust_state().await?;
    let (snapshot_now, targets_now) = current_image_versions(&h)?;

    // 1. The current timestamp (it names snapshot v{snapshot_now}) with an older snapshot.
    let path = format!("/image/metadata/{snapshot_now}.snapshot.json");
    h.proxy
        .add(Intercept::get(&path, Action::Replace(old_snapshot.clone())));
    h.attempt(
        &mut f,
        &mut missing,
        &before,
        Attempt::new(
            format!(
                "image snapshot v{} served under the current timestamp, which names snapshot v{snapshot_now}",
                version_of(&old_snapshot),
            ),
            &path,
            &mismatch,
        )
        .about("snapshot"),
    )
    .await?;

    // 2. The current timestamp and snapshot (naming targets v{targets_now}) with an older
    //    targets.
    h.proxy.clear();
    let path = format!("/image/metadata/{targets_now}.targets.json");
    h.proxy
        .add(Intercept::get(&path, Action::Replace(old_targets.clone())));
    h.attempt(
        &mut f,
        &mut missing,
        &before,
        Attempt::new(
            format!(
                "image targets v{} served under the current snapshot, which names targets v{targets_now}",
                version_of(&old_targets),
            ),
            &path,
            &mismatch,
        )
        .about("targets"),
    )
    .await?;

    // 3. The director's instructions change (the body controller joins the release); the
    //    attacker serves the director's current timestamp and snapshot with its older targets,
    //    which no longer carry the pending instructions.
    h.proxy.clear();
    h.proxy.clear_log();
    release(&h, "bcm/fw-2.0.bin", "bcm-1", "2.0").await?;
    let old = old_director_targets.clone();
    h.proxy.add(Intercept::get(
        &director_meta,
        Action::on_role("targets", move |_| old.clone()),
    ));
    // Only targets answers were changed (timestamp and snapshot went through as they were).
    h.attempt(
        &mut f,
        &mut missing,
        &before,
        Attempt::new(
            format!(
                "director targets v{} served under the director's current snapshot",
                version_of(&old_director_targets)
            ),
            ".targets.json",
            &mismatch,
        )
        .about("targets"),
    )
    .await?;

    // 4. A mix whose images exist: the operator offered the T-BOX a beta build, its owner
    //    declined, and the operator replaced the beta by the final build. The attacker
    //    recorded the director targets that named the beta and serves them under the
    //    director's current timestamp and snapshot. The beta's bytes are genuinely published,
    //    exactly as those targets name them: a vehicle that took the mix would install the
    //    beta, so "nothing the attacker chose is installed" can fail here.
    h.proxy.clear();
    h.proxy.clear_log();
    release(&h, BETA, "tbox-a", "3.0-beta").await?;
    h.lab.run_vehicle(0, "deny").await?;
    let beta_targets = recorded(
        &director_meta,
        ".targets.json",
        "director targets naming the beta",
    )?;
    anyhow::ensure!(
        String::from_utf8_lossy(&beta_targets).contains(BETA),
        "the recorded director targets do not name {BETA}"
    );
    release(&h, FINAL, "tbox-a", "3.0").await?;
    let before_mix = h.trust_state().await?;
    h.proxy.clear_log();
    let beta = beta_targets.clone();
    h.proxy.add(Intercept::get(
        &director_meta,
        Action::on_role("targets", move |_| beta.clone()),
    ));
    h.attempt(
        &mut f,
        &mut missing,
        &before_mix,
        Attempt::new(
            format!(
                "director targets v{} naming {BETA} (declined, then replaced by {FINAL}) served under the director's current snapshot; {BETA}'s bytes are published as those targets name them",
                version_of(&beta_targets),
            ),
            ".targets.json",
            &mismatch,
        )
        .about("targets")
        .forbid(&[BETA]),
    )
    .await?;

    // 5. The attacker leaves: the complete current set installs, and only that set.
    h.check_recovers(&mut f).await?;
    let after = h.trust_state().await?;
    check_runs(
        &mut f,
        &after,
        &tbox,
        FINAL,
        "the current T-BOX release installs once the attacker leaves",
    );
    check_runs(
        &mut f,
        &after,
        &bcm,
        "bcm/fw-2.0.bin",
        "the current BCM release installs with it",
    );
    check_runs(
        &mut f,
        &after,
        &ivi,
        "ivi/app-2.0.bin",
        "the IVI keeps its (current) release",
    );
    h.check_state(&mut f, &after, &[BETA]);
    finish(&mut f, &missing);
    Ok(f)
}

//! Freeze attack: the attacker on the network keeps the vehicle on old metadata so it never
//! learns of new releases (a fix for a vulnerability, say). It replays a validly signed
//! image-repository timestamp it captured earlier, after the vehicle has seen a newer one;
//! and it freezes the vehicle on the metadata it already trusts while time passes (the
//! vehicle's clock two days on, under `faketime`), so that nothing looks newer than what
//! the vehicle has.
//!
//! Under `faketime` only the vehicle's clock moves: the server still signs with today's date,
//! so the director's timestamp (checked first) is what the vehicle finds expired, and the
//! frozen image timestamp is never reached. That is the freeze as the vehicle lives it: any
//! metadata whose lifetime has passed on its own clock is refused.

use anyhow::Context;
use rampart_core::rule::Rule;
use rampart_lab::{image_bytes, VehicleRun};
use serde_json::Value;

use crate::harness::sha12;
use crate::proxy::{json_at, Action, Intercept};
use crate::{Findings, Harness, Info};

/// Description.
pub(super) const INFO: Info = Info {
    name: "freeze",
    attack: "freeze attack",
    attacker: "man in the middle between vehicle and server: captures validly signed timestamps and replays them later, or has the director's answers name the frozen one as current so the vehicle does not ask (no signing keys)",
    control: "the vehicle never accepts a timestamp older than the one it trusts (rollback), and refuses any metadata whose signed expiry has passed (expired): a frozen vehicle notices within the timestamp's lifetime (1 day)",
    expected: "defeated: the replayed older image timestamp is refused (rollback); frozen metadata two days later is refused (expired); nothing installed, trusted versions never go back; the server records the vehicle's indicators; the new release installs once the attacker leaves",
};

/// How far ahead the vehicle's clock is set for the expiry variant (timestamps live 1 day).
const FAKETIME_OFFSET: &str = "+2d";

fn signed_field(body: &[u8], pointer: &str) -> String {
    json_at(body, pointer)
        .map(|v| match v {
            Value::String(s) => s,
            other => other.to_string(),
        })
        .unwrap_or_else(|| "?".into())
}

/// Where `faketime` is installed, if it is.
pub(super) fn faketime() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("faketime"))
            .find(|p| p.is_file())
    })
}

/// One cycle of the vehicle (like [`Harness::cycle`]) with its clock `offset` ahead.
async fn cycle_in_future(
    h: &Harness,
    faketime: &std::path::Path,
    offset: &str,
) -> anyhow::Result<VehicleRun> {
    h.mark_events().await?;
    h.lab
        .run_vehicle_under(0, "auto", Some((faketime, &["-f", offset])))
        .await
}

/// Runs it.
pub(super) async fn run(h: Harness) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let vin = h.vin();
    let tbox = h.ecu_id(0);
    let image_ts = "/image/metadata/timestamp.json";
    let director_ts = format!("/director/{vin}/metadata/timestamp.json");

    // 0. Release 2.0 installs through the attacker, who captures the image timestamp of the
    //    day; then the repository moves on (2.1) and the vehicle sees that too: it now
    //    trusts a newer timestamp than the captured one.
    let mut stale = None;
    for (name, version) in [("tbox/fw-2.0.bin", "2.0"), ("tbox/fw-2.1.bin", "2.1")] {
        h.lab
            .release(name, "tbox-a", version, &image_bytes(name, 120_000), false)
            .await?;
        let run = h.cycle().await?;
        if !run.success {
            anyhow::bail!("update to {name} failed:\n{}", run.stderr);
        }
        if stale.is_none() {
            stale = h.proxy.captured(image_ts);
        }
    }
    let stale = stale.context("the proxy captured no image timestamp")?;
    let stale_version = signed_field(&stale, "/signed/version");
    let seen = h.trust_state().await?;
    let trusted = seen
        .versions
        .get("primary/image/timestamp")
        .copied()
        .unwrap_or(0);

    // 1. A new release (2.2) is out; the attacker replays the captured older timestamp.
    let v22 = "tbox/fw-2.2.bin";
    h.lab
        .release(v22, "tbox-a", "2.2", &image_bytes(v22, 120_000), false)
        .await?;
    h.proxy.clear_log();
    h.proxy
        .add(Intercept::get(image_ts, Action::Replace(stale.clone())));
    let run = h.cycle().await?;
    let replayed: Vec<_> = h.proxy.forged();
    for s in &replayed {
        f.evidence(format!(
            "the vehicle requested {} and the attacker replayed the captured timestamp version {stale_version} (validly signed, sha256 {}…, {} bytes) while the vehicle trusts version {trusted}",
            s.path,
            sha12(&stale),
            s.bytes
        ));
    }
    f.check(
        "the replayed timestamp is older than the one the vehicle trusts",
        stale_version.parse::<u64>().is_ok_and(|v| v < trusted),
        format!("replayed version {stale_version}, trusted {trusted}"),
    );
    let after = h
        .check_rejected(&mut f, &run, &[Rule::Rollback], &[v22])
        .await?;
    let still = after
        .versions
        .get("primary/image/timestamp")
        .copied()
        .unwrap_or(0);
    f.check(
        "the vehicle still trusts the newer timestamp",
        still >= trusted,
        format!("trusted image timestamp version {still}"),
    );

    // 2. Freeze on what the vehicle already trusts, two days later (its clock under faketime).
    h.proxy.clear();
    h.proxy.clear_log();
    match faketime() {
        None => f.check(
            "expiry variant (needs faketime)",
            true,
            "faketime is not installed: the expiry variant was not run",
        ),
        Some(ft) => {
            let frozen_director = h
                .proxy
                .captured(&director_ts)
                .context("the proxy captured no director timestamp")?;
            let frozen_image = h
                .proxy
                .captured(image_ts)
                .context("the proxy captured no image timestamp")?;
            h.proxy.add(Intercept::get(
                &director_ts,
                Action::Replace(frozen_director.clone()),
            ));
            h.proxy.add(Intercept::get(
                image_ts,
                Action::Replace(frozen_image.clone()),
            ));
            // The director's answer to the manifest names the current timestamp, for a
            // primary that holds it not to ask: the attacker names the frozen one (what a
            // 304 would say).
            let frozen_tag = rampart_core::hash::entity_tag(&frozen_director);
            h.proxy
                .add(Intercept::timestamp_named(&vin, Some(frozen_tag.clone())));
            let run = cycle_in_future(&h, &ft, FAKETIME_OFFSET).await?;
            for s in h.proxy.forged() {
                if s.path.ends_with("/manifest") {
                    f.evidence(format!(
                        "the director's answer to the vehicle's manifest ({}) named the frozen director timestamp version {} ({frozen_tag}) as current, so the vehicle checked the copy it holds",
                        s.path,
                        signed_field(&frozen_director, "/signed/version"),
                    ));
                    continue;
                }
                let body = if s.path.contains("/director/") {
                    &frozen_director
                } else {
                    &frozen_image
                };
                f.evidence(format!(
                    "the vehicle, its clock {FAKETIME_OFFSET} ahead ({}), requested {} and the attacker replayed the frozen timestamp version {} (sha256 {}…) that expires {}",
                    ft.display(),
                    s.path,
                    signed_field(body, "/signed/version"),
                    sha12(body),
                    signed_field(body, "/signed/expires"),
                ));
            }
            f.check(
                "the frozen timestamp reached the vehicle (replayed, or named current)",
                !h.proxy.forged().is_empty(),
                format!("{} frozen answers", h.proxy.forged().len()),
            );
            h.check_rejected(&mut f, &run, &[Rule::Expired], &[v22])
                .await?;
        }
    }

    // 3. The attacker leaves: the new release installs.
    h.check_installs_once_gone(&mut f, &tbox, v22).await?;
    Ok(f)
}

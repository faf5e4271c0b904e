//! Rollback: the attacker makes the vehicle go back — to older metadata it recorded earlier
//! (validly signed, only no longer current), or to an older image that the OEM-signed image
//! repository still lists and that an insider makes the director assign.
//!
//! Also home of small helpers the other metadata scenarios (mix-and-match, key compromises,
//! root rotation) share: what the vehicle fetched through the proxy, what an ECU runs, and
//! "the attack changed nothing" checks against the state just before it.

use rampart_core::rule::Rule;
use rampart_lab::image_bytes;
use rampart_server::ops::PublishRequest;
use serde_json::Value;

use crate::harness::Attempt;
use crate::harness::TrustState;
use crate::proxy::{json_at, Action, Intercept};
use crate::{Findings, Harness, Info};

/// Description.
pub(super) const INFO: Info = Info {
    name: "rollback",
    attack: "rollback",
    attacker: "man in the middle between vehicle and server that recorded earlier, validly signed metadata of both repositories and replays it (no signing keys); an insider who makes the director assign an older release the OEM-signed image repository still lists (through the admin API, then straight into its database)",
    control: "trusted metadata only moves forward: a timestamp older than the trusted one is refused (TUF 5.4), in both repositories; Uptane release counters: no ECU installs an image whose release counter is below the one it runs, checked by the primary for every ECU (the partial-verification BCM included) before anything is downloaded; the admin API refuses to assign a release older than the one the ECU runs (and records it)",
    expected: "defeated: replayed image-repository and director timestamps refused (rollback), older images refused (release-counter-decreased) by the admin API at assign time and, when written past it into the database, by the vehicle; nothing installed, no trusted version goes down; the vehicle reports it, the server records it; the current release installs once the attacker leaves",
};

/// The newest body the proxy forwarded (200, not forged) for a GET whose path starts with
/// `prefix` and ends with `suffix`: what the vehicle really fetched, as the attacker saw it.
pub(super) fn fetched(h: &Harness, prefix: &str, suffix: &str) -> Option<(String, Vec<u8>)> {
    let path = h
        .proxy
        .log()
        .into_iter()
        .rev()
        .find(|s| {
            s.method == "GET"
                && s.status == 200
                && !s.forged()
                && s.path.starts_with(prefix)
                && s.path.ends_with(suffix)
        })?
        .path;
    let body = h.proxy.captured(&path)?;
    Some((path, body))
}

/// `signed.version` of a metadata document (0 if it has none).
pub(super) fn version_of(bytes: &[u8]) -> u64 {
    json_at(bytes, "/signed/version")
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

/// The image `ecu` runs.
pub(super) fn runs(state: &TrustState, ecu: &str) -> String {
    state
        .running
        .get(ecu)
        .map(|(img, counter)| format!("{img}#{counter}"))
        .unwrap_or_else(|| "(nothing)".to_owned())
}

/// Checks that `ecu` runs `image`.
pub(super) fn check_runs(f: &mut Findings, state: &TrustState, ecu: &str, image: &str, what: &str) {
    let ok = state.running.get(ecu).map(|(i, _)| i.as_str()) == Some(image);
    f.check(
        what,
        ok,
        format!("{ecu} runs {} (expected {image})", runs(state, ecu)),
    );
}

pub(super) use crate::harness::check_unchanged;

/// [`Harness::evidence_forged`].
pub(super) fn evidence_forged(f: &mut Findings, h: &Harness, filter: &str, what: &str) -> usize {
    h.evidence_forged(f, filter, what)
}

/// Marks the verdict inconclusive if some step of the attack never reached the vehicle.
pub(super) fn finish(f: &mut Findings, missing: &[String]) {
    if !missing.is_empty() {
        f.reached = false;
        f.evidence.push(format!(
            "NOT REACHED (verdict cannot be `defeated`): {}",
            missing.join("; ")
        ));
    }
}

/// Publishes a plain image and assigns it to every ECU of its hardware ID.
pub(super) async fn release(
    h: &Harness,
    name: &str,
    hardware_id: &str,
    version: &str,
) -> anyhow::Result<()> {
    h.lab
        .release(
            name,
            hardware_id,
            version,
            &image_bytes(name, 90_000),
            false,
        )
        .await?;
    Ok(())
}

/// A cycle the attacker only watches; it must succeed (the lab is broken otherwise).
pub(super) async fn genuine_cycle(h: &Harness, what: &str) -> anyhow::Result<()> {
    let run = h.cycle().await?;
    if !run.success {
        anyhow::bail!(
            "{what}: a cycle without attack failed:\n{}",
            run.stderr
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(())
}

/// The snapshot version a timestamp document lists.
fn snapshot_listed(timestamp: &[u8]) -> u64 {
    json_at(timestamp, "/signed/meta/snapshot.json/version")
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

/// Has the image repository re-sign its timestamp alone (same snapshot), as the server does
/// when the timestamp nears expiry and nothing else changed.
fn resign_image_timestamp_only(h: &Harness) -> anyhow::Result<()> {
    let config = rampart_server::config::Config::load(&h.lab.layout)?;
    let online = config.image_online_keys(&h.lab.layout)?;
    let repo = rampart_server::ops::image_repo(&h.lab.layout)?;
    let state = repo.state()?;
    // "Now" is the moment the timestamp is within half its lifetime of expiring, while the
    // snapshot is not: only the timestamp is re-signed.
    let left = state.timestamp.expires.at() - chrono::Utc::now();
    let later = chrono::Utc::now() + left - chrono::Duration::seconds(left.num_seconds() / 4);
    let done = repo.refresh_online(&online, later)?;
    anyhow::ensure!(
        done == ["timestamp"],
        "expected the timestamp alone to be re-signed, got {done:?}"
    );
    Ok(())
}

/// Runs it.
pub(super) async fn run(h: Harness) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let mut missing = Vec::new();
    let vin = h.vin();
    let (tbox, bcm) = (h.ecu_id(0), h.ecu_id(2));
    let director_meta = format!("/director/{vin}/metadata/");
    let director_ts = format!("{director_meta}timestamp.json");
    let image_ts = "/image/metadata/timestamp.json";

    // 0. Two genuine releases pass the attacker, who records every document the vehicle
    //    fetches. The vehicle ends up trusting newer metadata than the first recording.
    release(&h, "tbox/fw-2.0.bin", "tbox-a", "2.0").await?;
    genuine_cycle(&h, "release 2.0").await?;
    let (_, old_image_ts) = fetched(&h, image_ts, "")
        .ok_or_else(|| anyhow::anyhow!("the vehicle fetched no image timestamp"))?;
    let (_, old_director_ts) = fetched(&h, &director_ts, "")
        .ok_or_else(|| anyhow::anyhow!("the vehicle fetched no director timestamp"))?;
    release(&h, "tbox/fw-2.1.bin", "tbox-a", "2.1").await?;
    genuine_cycle(&h, "release 2.1").await?;
    let before = h.trust_state().await?;
    if before.running.get(&tbox).map(|(i, _)| i.as_str()) != Some("tbox/fw-2.1.bin") {
        anyhow::bail!(
            "release 2.1 did not install: {tbox} runs {}",
            runs(&before, &tbox)
        );
    }

    // The OEM's next release is in flight during the attacks.
    release(&h, "tbox/fw-2.2.bin", "tbox-a", "2.2").await?;

    // 1. Replay of the older image-repository timestamp.
    let trusted = trusted_version(&h, "primary/image/timestamp").await?;
    h.proxy.add(Intercept::get(
        image_ts,
        Action::Replace(old_image_ts.clone()),
    ));
    h.attempt(
        &mut f,
        &mut missing,
        &before,
        Attempt::new(
            format!(
                "image timestamp v{} replayed (validly signed, recorded two releases ago) while the vehicle trusts v{trusted}",
                version_of(&old_image_ts),
            ),
            image_ts,
            &[Rule::Rollback],
        )
        .about("timestamp version")
        .forbid(&["tbox/fw-2.0.bin"]),
    )
    .await?;

    // 1b. A replayed timestamp that names the *current* snapshot: the server re-signs its
    //     timestamp as it nears expiry without a new snapshot, so the one the attacker
    //     recorded just before is older yet lists the very snapshot the vehicle trusts. Only
    //     the timestamp's own version check stands between it and the vehicle.
    h.proxy.clear();
    h.proxy.clear_log();
    let current_ts = std::fs::read(h.lab.layout.image_metadata().join("timestamp.json"))?;
    resign_image_timestamp_only(&h)?;
    // The vehicle verifies (and so trusts) the re-signed timestamp; its owner declines 2.2
    // for now, so the release stays in flight and the next cycle fetches the image
    // repository again.
    h.lab.run_vehicle(0, "deny").await?;
    let trusted = trusted_version(&h, "primary/image/timestamp").await?;
    if trusted <= version_of(&current_ts) {
        missing.push(format!(
            "the vehicle did not take the re-signed timestamp (trusts v{trusted})"
        ));
    }
    let before_1b = h.trust_state().await?;
    h.proxy.add(Intercept::get(
        image_ts,
        Action::Replace(current_ts.clone()),
    ));
    h.attempt(
        &mut f,
        &mut missing,
        &before_1b,
        Attempt::new(
            format!(
                "image timestamp v{} replayed while the vehicle trusts v{trusted}; both list snapshot v{}",
                version_of(&current_ts),
                snapshot_listed(&current_ts),
            ),
            image_ts,
            &[Rule::Rollback],
        )
        .about("timestamp version"),
    )
    .await?;

    // 2. Replay of the older director timestamp (it led to the instruction to install 2.0).
    //    The director's answer to the manifest names the copy the vehicle holds, so the
    //    attacker first strips that, for the vehicle to ask.
    let trusted = trusted_version(&h, "primary/director/timestamp").await?;
    h.proxy.clear();
    h.proxy.add(Intercept::timestamp_named(&vin, None));
    h.proxy.add(Intercept::get(
        &director_ts,
        Action::Replace(old_director_ts.clone()),
    ));
    h.attempt(
        &mut f,
        &mut missing,
        &before,
        Attempt::new(
            format!(
                "director timestamp v{} replayed (validly signed, recorded two releases ago) while the vehicle trusts v{trusted}",
                version_of(&old_director_ts),
            ),
            &director_ts,
            &[Rule::Rollback],
        )
        .about("timestamp version")
        .forbid(&["tbox/fw-2.0.bin"]),
    )
    .await?;

    // 3. An older image: release 2.0 is still listed, genuinely signed, by the image
    //    repository; the insider makes the director assign it again (release counter 2, the
    //    T-BOX runs 3). The admin API refuses that; the insider writes the assignment into
    //    the director's database itself, and the vehicle must still refuse it.
    h.proxy.clear();
    h.proxy.clear_log();
    let through_api = h.lab.assign_all("tbox/fw-2.0.bin", "tbox-a", false).await;
    f.check(
        "the admin API refuses to assign an older release (release-counter-decreased)",
        through_api
            .as_ref()
            .is_err_and(|e| e.to_string().contains("release-counter-decreased")),
        match &through_api {
            Ok(ids) => format!("assigned: {ids:?}"),
            Err(e) => crate::harness::first_line_with(&e.to_string(), "release"),
        },
    );
    insider_reassign(&h, &vin, &tbox, "tbox/fw-2.0.bin").await?;
    let run = h.cycle().await?;
    older_image_evidence(
        &mut f,
        &h,
        &director_meta,
        "tbox/fw-2.0.bin",
        &tbox,
        &mut missing,
    );
    let after = h
        .check_rejected(
            &mut f,
            &run,
            &[Rule::ReleaseCounterDecreased],
            &["tbox/fw-2.0.bin"],
        )
        .await?;
    check_unchanged(&mut f, &before, &after);

    // 4. An old body-controller build, signed by the OEM with release counter 0, published
    //    late and assigned to the BCM (partial verification, runs counter 1); the T-BOX gets
    //    2.2 again in the same instructions. The primary checks every ECU's counter before
    //    anything is downloaded or handed to any ECU.
    h.proxy.clear_log();
    let bcm_before = partial_targets_version(&h, 2);
    let dir = h.dir.join("old-build");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("fw-0.9.bin");
    let old_build = image_bytes("bcm/fw-0.9.bin", 60_000);
    std::fs::write(&file, &old_build)?;
    h.lab
        .publish(&PublishRequest {
            name: Some("bcm/fw-0.9.bin".into()),
            version: Some("0.9".into()),
            release_counter: Some(0),
            ..PublishRequest::new(file, "bcm-1")
        })
        .await?;
    h.lab.assign_all("tbox/fw-2.2.bin", "tbox-a", false).await?;
    // The admin API would refuse the old build (as in 3.): the insider writes it in.
    h.lab
        .insider_assign(&h.vin(), &bcm, "bcm/fw-0.9.bin", &old_build, 0)
        .await?;
    let run = h.cycle().await?;
    older_image_evidence(
        &mut f,
        &h,
        &director_meta,
        "bcm/fw-0.9.bin",
        &bcm,
        &mut missing,
    );
    let after = h
        .check_rejected(
            &mut f,
            &run,
            &[Rule::ReleaseCounterDecreased],
            &["tbox/fw-2.0.bin", "bcm/fw-0.9.bin"],
        )
        .await?;
    check_unchanged(&mut f, &before, &after);
    let bcm_after = partial_targets_version(&h, 2);
    f.check(
        "the BCM (partial verification) was never sent the instruction",
        bcm_after == bcm_before,
        format!(
            "BCM's last accepted director targets version: {} before, {} after",
            bcm_before.map_or("none".into(), |v| v.to_string()),
            bcm_after.map_or("none".into(), |v| v.to_string())
        ),
    );

    // 5. The attacker leaves and the operator restores the assignments: 2.2 installs.
    h.lab.assign_all("bcm/fw-1.0.bin", "bcm-1", false).await?;
    let forbidden = ["tbox/fw-2.0.bin", "bcm/fw-0.9.bin"];
    finish_genuine(f, &h, &missing, &[(0, "tbox/fw-2.2.bin")], &forbidden).await
}

/// The director's database, as an insider with access to it sees it.
async fn insider_db(h: &Harness) -> anyhow::Result<rampart_server::db::Db> {
    let layout = &h.lab.layout;
    let url = rampart_server::config::Config::load(layout)?.database_url(layout);
    Ok(rampart_server::db::Db::connect(&url).await?)
}

/// The insider with access to the director's database: an earlier assignment of `target` to
/// `ecu` issued again, written straight into the database (past the admin API's checks).
async fn insider_reassign(h: &Harness, vin: &str, ecu: &str, target: &str) -> anyhow::Result<()> {
    let db = insider_db(h).await?;
    let earlier = db
        .assignments(Some(vin), None)
        .await?
        .into_iter()
        .find(|a| a.target == target && a.ecu_id == ecu)
        .ok_or_else(|| anyhow::anyhow!("no earlier assignment of {target} to {ecu}"))?;
    db.create_assignment(&rampart_server::db::Assignment {
        id: 0,
        status: "pending".into(),
        completed_at: None,
        ..earlier
    })
    .await?;
    Ok(())
}

/// Evidence that the vehicle fetched director targets instructing `ecu` to install `target`.
fn older_image_evidence(
    f: &mut Findings,
    h: &Harness,
    director_meta: &str,
    target: &str,
    ecu: &str,
    missing: &mut Vec<String>,
) {
    match fetched(h, director_meta, ".targets.json") {
        Some((path, body)) if String::from_utf8_lossy(&body).contains(target) => {
            f.evidence(format!(
                "older image: the vehicle fetched director targets v{} ({path}) instructing {ecu} to install {target}",
                version_of(&body)
            ));
        }
        _ => missing.push(format!(
            "the vehicle never fetched director targets naming {target}"
        )),
    }
}

/// The last director targets version a partial-verification ECU (number `i`) accepted.
pub(super) fn partial_targets_version(h: &Harness, i: usize) -> Option<u64> {
    let dir = h
        .lab
        .vehicles
        .first()?
        .ecus
        .get(i)?
        .dir
        .join("state/ecu-state.json");
    let v: Value = serde_json::from_slice(&std::fs::read(dir).ok()?).ok()?;
    v.get("partial_targets_version").and_then(Value::as_u64)
}

/// The version of `key` (`who/repo/role`) the vehicle trusts now (0 if none).
pub(super) async fn trusted_version(h: &Harness, key: &str) -> anyhow::Result<u64> {
    Ok(h.trust_state()
        .await?
        .versions
        .get(key)
        .copied()
        .unwrap_or(0))
}

/// The image ECU number `i` boots from its active slot: (file name, sha256), from its
/// boot-control file.
pub(super) fn active_image(h: &Harness, i: usize) -> (String, String) {
    let active = h
        .lab
        .vehicles
        .first()
        .and_then(|v| v.ecus.get(i))
        .and_then(|e| std::fs::read(e.dir.join("boot-control.json")).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|bc| {
            let slot = bc.get("active")?.as_str()?.to_owned();
            bc.get(slot).cloned()
        })
        .unwrap_or(Value::Null);
    let field = |p: &str| {
        active
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    (field("/filename"), field("/hashes/sha256"))
}

/// The sha256 (hex) of the bytes [`release`] publishes as `name`.
pub(super) fn genuine_sha256(name: &str) -> String {
    hex::encode(rampart_core::hash::sha256(&image_bytes(name, 90_000)))
}

/// Checks that ECU number `i` runs `name` with exactly the bytes [`release`] published
/// under that name (not an attacker's bytes under the same name).
/// The end of a scenario: the attacker leaves, a cycle succeeds, each ECU `i` of `installs`
/// runs the OEM's genuine bytes of its image and nothing in `forbidden` is trusted or runs;
/// steps the attack never reached are recorded.
pub(super) async fn finish_genuine(
    mut f: Findings,
    h: &Harness,
    missing: &[String],
    installs: &[(usize, &str)],
    forbidden: &[&str],
) -> anyhow::Result<Findings> {
    h.check_recovers(&mut f).await?;
    let after = h.trust_state().await?;
    for (i, image) in installs {
        let what =
            format!("the genuine {image} (the OEM's bytes) installs once the attacker leaves");
        check_genuine(&mut f, h, *i, image, &what);
    }
    h.check_state(&mut f, &after, forbidden);
    finish(&mut f, missing);
    Ok(f)
}

/// ECU `i` runs `name`, and its bytes are the OEM's (not an attacker's under that name).
pub(super) fn check_genuine(f: &mut Findings, h: &Harness, i: usize, name: &str, what: &str) {
    let ecu = h.ecu_id(i);
    let (file, sha) = active_image(h, i);
    let genuine = genuine_sha256(name);
    f.check(
        what,
        file == name && sha == genuine,
        format!(
            "{ecu} runs {file} (sha256 {}…; the OEM's {name} is {}…)",
            sha.get(..12).unwrap_or(&sha),
            genuine.get(..12).unwrap_or("")
        ),
    );
}

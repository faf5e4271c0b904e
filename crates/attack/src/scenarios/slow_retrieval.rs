//! Slow retrieval attack: the attacker on the network serves the genuine bytes, but so slowly
//! that the download would take for ever — just under the vehicle's minimum speed for the
//! image, a few bytes a second for metadata — without ever stalling long enough to trip a
//! simple idle timeout.

use rampart_core::rule::Rule;
use std::time::{Duration, Instant};

use rampart_lab::VehicleRun;

use crate::proxy::{Action, Intercept};
use crate::{Findings, Harness, Info};

/// Description.
pub(super) const INFO: Info = Info {
    name: "slow-retrieval",
    attack: "slow retrieval attack",
    attacker: "man in the middle between vehicle and server: forwards the genuine bytes at a trickle, just under the vehicle's minimum speed, never pausing long enough to look stalled",
    control: "bounded downloads: an average below min_bytes_per_second over any 10 s window, or no byte for stall_seconds, ends the download as slow-retrieval; the cycle fails, the indicator goes to the director, the next cycle resumes the partial download",
    expected: "defeated: image trickled at 4000 B/s (limit 4096 B/s) and image timestamp at 20 B/s are cut as slow-retrieval within 15 s of the slow answer (10 s speed window + 5 s stall), the cycle failing within 20 s; nothing installed; the server records the vehicle's indicator; the update installs once the attacker leaves",
};

/// Lab primaries: `min_bytes_per_second`.
const MIN_SPEED: u64 = 4096;
/// The fetcher's speed window (its default).
const SPEED_WINDOW: Duration = Duration::from_secs(10);
/// Lab primaries: `stall_seconds`.
const STALL: Duration = Duration::from_secs(5);

/// Size of the new image: at the trickle it would take ~40 s, far past the window.
const IMAGE_LEN: usize = 160_000;

/// Runs a cycle under attack and measures how long it took to give up.
async fn attacked_cycle(h: &Harness) -> anyhow::Result<(VehicleRun, Duration)> {
    let started = Instant::now();
    let run = h.cycle().await?;
    Ok((run, started.elapsed()))
}

fn check_detected(f: &mut Findings, what: &str, run: &VehicleRun, took: Duration) {
    // The cycle includes the work before the slow request (ECU reports, manifest, the other
    // metadata): allow 5 s for it on top of window + stall.
    let bound = SPEED_WINDOW + STALL + Duration::from_secs(5);
    f.check(
        format!(
            "{what}: slow retrieval detected within {} s ({} s speed window at {MIN_SPEED} B/s + {} s stall + 5 s for the rest of the cycle)",
            bound.as_secs(),
            SPEED_WINDOW.as_secs(),
            STALL.as_secs()
        ),
        took <= bound && run.stderr.contains("slow retrieval"),
        format!(
            "cycle ended after {:.1} s: {}",
            took.as_secs_f64(),
            crate::harness::first_line_with(&run.stderr, "slow retrieval")
        ),
    );
}

/// Runs it.
pub(super) async fn run(h: Harness) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let tbox = h.ecu_id(0);
    let image = h.release_tbox_update(IMAGE_LEN).await?;

    // 1. The image at 4000 B/s, just under the vehicle's 4096 B/s.
    let rate = MIN_SPEED - 96;
    h.proxy
        .add(Intercept::get("/image/targets/", Action::Trickle(rate)));
    let (run, took) = attacked_cycle(&h).await?;
    let slowed: Vec<_> = h
        .proxy
        .forged()
        .into_iter()
        .filter(|s| s.path.contains("/image/targets/"))
        .collect();
    for s in &slowed {
        f.evidence(format!(
            "image: the vehicle requested {} and the attacker trickled its {} genuine bytes at {rate} B/s ({}; {:.0} s for the whole file)",
            s.path,
            s.bytes,
            s.action,
            s.bytes as f64 / rate as f64
        ));
    }
    f.check(
        "the trickled image reached the vehicle",
        !slowed.is_empty(),
        format!("{} slowed image responses", slowed.len()),
    );
    check_detected(&mut f, "image", &run, took);
    h.check_rejected(&mut f, &run, &[Rule::SlowRetrieval], &[image])
        .await?;

    // 2. The image repository's timestamp at 20 B/s (~700 bytes: ~35 s in all).
    h.proxy.only(Intercept::get(
        "/image/metadata/timestamp.json",
        Action::Trickle(20),
    ));
    let (run, took) = attacked_cycle(&h).await?;
    let slowed = h.proxy.forged();
    for s in &slowed {
        f.evidence(format!(
            "metadata: the vehicle requested {} and the attacker trickled its {} genuine bytes at 20 B/s ({})",
            s.path, s.bytes, s.action
        ));
    }
    f.check(
        "the trickled timestamp reached the vehicle",
        !slowed.is_empty(),
        format!("{} slowed metadata responses", slowed.len()),
    );
    check_detected(&mut f, "metadata", &run, took);
    h.check_rejected(&mut f, &run, &[Rule::SlowRetrieval], &[image])
        .await?;

    // 3. The attacker leaves: the update installs.
    h.check_installs_once_gone(&mut f, &tbox, image).await?;
    Ok(f)
}

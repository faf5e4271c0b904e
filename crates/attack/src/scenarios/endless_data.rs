//! Endless data attack: the attacker on the network answers a request with more data than
//! the vehicle asked for — the genuine bytes followed by junk that never ends (no
//! `Content-Length`), or a 10 MB file announced as such — to fill the vehicle's memory or
//! disk, or keep it downloading for ever.

use rampart_core::rule::Rule;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use rampart_lab::VehicleRun;
use serde_json::Value;

use crate::proxy::{Action, Intercept};
use crate::{Findings, Harness, Info};

/// Description.
pub(super) const INFO: Info = Info {
    name: "endless-data",
    attack: "endless data attack",
    attacker: "man in the middle between vehicle and server: after the genuine bytes, sends junk without end (image timestamp, image), or serves a 10 MB director targets file",
    control: "every download has a hard byte limit — the length signed by the trusted delegator (snapshot/timestamp for metadata, targets for images) or a fixed maximum (16 KiB for timestamp) — and is cut at the first byte past it, whatever Content-Length says; images stream to disk, never to memory",
    expected: "defeated: each download is cut as endless-data right away; the vehicle keeps at most the signed length, its memory stays bounded; nothing installed; the server records the vehicle's indicator; the update installs once the attacker leaves",
};

/// Fixed maximum of timestamp metadata (`rampart_core::client::Config` default).
const TIMESTAMP_MAX: u64 = 16_384;
/// Size of the new image (its signed length is the bound of its download).
const IMAGE_LEN: usize = 150_000;
/// What the attacker serves for the director's targets metadata.
const HUGE: usize = 10 * 1024 * 1024;
/// Peak memory a primary may reach under attack: its normal footprint is well under this,
/// and the limits above keep what it buffers to tens of KiB.
const MEMORY_BOUND_KIB: u64 = 64 * 1024;
/// An endless answer must be cut right away: the time the cycle may take at most.
const TIME_BOUND: Duration = Duration::from_secs(10);

/// Peak resident memory (KiB) of process `pid` so far, from `/proc`.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// One cycle of the vehicle (like [`Harness::cycle`]), measuring the primary's peak memory.
async fn measured_cycle(h: &Harness) -> anyhow::Result<(VehicleRun, u64, Duration)> {
    h.mark_events().await?;
    let v = h.lab.vehicles.first().context("no vehicle")?;
    let started = Instant::now();
    let child = tokio::process::Command::new(&h.lab.options.bin)
        .args(v.once_args("auto"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    let output = child.wait_with_output();
    tokio::pin!(output);
    let mut peak = 0u64;
    let out = loop {
        tokio::select! {
            out = &mut output => break out?,
            () = tokio::time::sleep(Duration::from_millis(5)) => {
                if let Some(kib) = peak_rss_kib(pid) {
                    peak = peak.max(kib);
                }
            }
        }
    };
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = stdout.lines().rev().find_map(|l| {
        serde_json::from_str::<Value>(l)
            .ok()
            .filter(Value::is_object)
    });
    Ok((
        VehicleRun {
            success: out.status.success(),
            code: out.status.code(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            report,
        },
        peak,
        took,
    ))
}

fn check_bounded(f: &mut Findings, what: &str, peak_kib: u64, took: Duration) {
    f.check(
        format!(
            "{what}: the primary's memory stays bounded (peak under {} MiB)",
            MEMORY_BOUND_KIB / 1024
        ),
        peak_kib > 0 && peak_kib < MEMORY_BOUND_KIB,
        format!("peak resident memory {:.1} MiB", peak_kib as f64 / 1024.0),
    );
    f.check(
        format!(
            "{what}: the oversized answer is cut at once (cycle within {} s)",
            TIME_BOUND.as_secs()
        ),
        took <= TIME_BOUND,
        format!("cycle ended after {:.1} s", took.as_secs_f64()),
    );
}

/// Size of the partial download left on the vehicle's disk (0 if none).
fn partial_bytes(h: &Harness) -> u64 {
    let Some(v) = h.lab.vehicles.first() else {
        return 0;
    };
    std::fs::read_dir(v.dir.join("primary-state").join("downloads"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Runs it.
pub(super) async fn run(h: Harness) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let vin = h.vin();
    let tbox = h.ecu_id(0);
    let image = h.release_tbox_update(IMAGE_LEN).await?;

    // 1. The director's targets metadata (new: the assignment changed it) padded to 10 MB.
    h.proxy.add(Intercept::get(
        &format!("/director/{vin}/metadata/"),
        Action::on_role("targets", |body| {
            let mut huge = body.to_vec();
            huge.resize(HUGE, b' ');
            huge
        }),
    ));
    let (run, peak, took) = measured_cycle(&h).await?;
    let huge: Vec<_> = h
        .proxy
        .forged()
        .into_iter()
        .filter(|s| s.bytes >= HUGE as u64)
        .collect();
    for s in &huge {
        f.evidence(format!(
            "director targets: the vehicle requested {} and the attacker served {} bytes (the genuine file padded; bound: the length the director's snapshot signs)",
            s.path, s.bytes
        ));
    }
    f.check(
        "the 10 MB targets file reached the vehicle",
        !huge.is_empty(),
        format!("{} oversized answers", huge.len()),
    );
    check_bounded(&mut f, "10 MB targets", peak, took);
    h.check_rejected(
        &mut f,
        &run,
        &[Rule::EndlessData, Rule::LengthMismatch, Rule::HashMismatch],
        &[image],
    )
    .await?;

    // 2. The image repository's timestamp, followed by junk without end.
    h.proxy.only(Intercept::get(
        "/image/metadata/timestamp.json",
        Action::Endless,
    ));
    let (run, peak, took) = measured_cycle(&h).await?;
    for s in h.proxy.forged() {
        f.evidence(format!(
            "timestamp: the vehicle requested {} and the attacker sent its {} genuine bytes followed by junk without end and without Content-Length (bound: {TIMESTAMP_MAX} bytes)",
            s.path, s.bytes
        ));
    }
    check_bounded(&mut f, "endless timestamp", peak, took);
    h.check_rejected(&mut f, &run, &[Rule::EndlessData], &[image])
        .await?;

    // 3. The image, followed by junk without end.
    h.proxy.clear();
    h.proxy.clear_log();
    h.proxy
        .add(Intercept::get("/image/targets/", Action::Endless));
    let (run, peak, took) = measured_cycle(&h).await?;
    let endless: Vec<_> = h.proxy.forged();
    for s in &endless {
        f.evidence(format!(
            "image: the vehicle requested {} and the attacker sent its {} genuine bytes followed by junk without end and without Content-Length (bound: the signed length, {IMAGE_LEN} bytes)",
            s.path, s.bytes
        ));
    }
    f.check(
        "the endless image reached the vehicle",
        !endless.is_empty(),
        format!("{} endless image answers", endless.len()),
    );
    check_bounded(&mut f, "endless image", peak, took);
    let kept = partial_bytes(&h);
    f.check(
        "the vehicle kept no more than the signed length on disk",
        kept <= IMAGE_LEN as u64,
        format!("{kept} bytes of partial download kept (signed length {IMAGE_LEN})"),
    );
    h.check_rejected(&mut f, &run, &[Rule::EndlessData], &[image])
        .await?;

    // 4. The attacker leaves: the update installs.
    h.check_installs_once_gone(&mut f, &tbox, image).await?;
    Ok(f)
}

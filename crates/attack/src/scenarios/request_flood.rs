//! Request flood (denial of service against the server): an attacker with no vehicle identity
//! floods the server's public image-repository route with concurrent requests over HTTPS,
//! hoping to starve the vehicles that need the server for their updates. Runs on the TLS lab:
//! the vehicle is identified by its client certificate, the attacker by its address.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rampart_lab::VehicleRun;
use serde_json::Value;

use crate::{Findings, Harness, Info};

/// Description.
pub(super) const INFO: Info = Info {
    name: "request-flood",
    attack: "request flood (denial of service against the server)",
    attacker: "any host that reaches the server: thousands of concurrent HTTPS requests on a public route, no client certificate",
    control: "per-client token buckets (vehicle = certificate VIN, anyone else = address): past the burst, 429 with Retry-After; the first refusal is recorded as a security event; each vehicle has its own bucket, so the flood cannot use up a vehicle's share",
    expected: "defeated: the flooder gets 429s and at most burst + rate × duration of its requests through; the server records a rate-limited event; the vehicle completes its update during the flood",
};

/// `[limits]` of the lab server (rampart.toml defaults).
const RATE: f64 = 20.0;
/// Burst of the same.
const BURST: f64 = 60.0;
/// Concurrent connections of the flooder.
const WORKERS: usize = 48;
/// The flood lasts at least this long (and until the vehicle's cycle is over).
const MIN_FLOOD: Duration = Duration::from_secs(4);

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    limited: AtomicU64,
    other: AtomicU64,
    failed: AtomicU64,
    /// Milliseconds from the start of the flood to the first 429 (0: none yet).
    first_limited_ms: AtomicU64,
    /// Requests answered 200 before the first 429.
    ok_before_limited: AtomicU64,
}

fn flood(
    client: reqwest::Client,
    url: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    started: Instant,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        let (client, url, stop, tally) = (client.clone(), url.clone(), stop.clone(), tally.clone());
        set.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let _ = r.bytes().await;
                        match status {
                            200 => tally.ok.fetch_add(1, Ordering::Relaxed),
                            429 => {
                                let ms = (started.elapsed().as_millis() as u64).max(1);
                                if tally
                                    .first_limited_ms
                                    .compare_exchange(0, ms, Ordering::Relaxed, Ordering::Relaxed)
                                    .is_ok()
                                {
                                    tally
                                        .ok_before_limited
                                        .store(tally.ok.load(Ordering::Relaxed), Ordering::Relaxed);
                                }
                                tally.limited.fetch_add(1, Ordering::Relaxed)
                            }
                            _ => tally.other.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    Err(_) => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }
    set
}

fn newest_id(events: &[Value]) -> i64 {
    events
        .iter()
        .filter_map(|e| e.get("id").and_then(Value::as_i64))
        .max()
        .unwrap_or(0)
}

fn installed(run: &VehicleRun) -> Vec<String> {
    run.report
        .as_ref()
        .and_then(|r| r.get("updates"))
        .and_then(Value::as_array)
        .map(|u| {
            u.iter()
                .filter(|u| u.get("status").and_then(Value::as_str) == Some("Installed"))
                .filter_map(|u| u.get("target").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The first line of the vehicle's log that reports an HTTP 429 from the server, the way the
/// client and the primary word it ("HTTP status 429", "HTTP 429", the rule's name). A bare
/// "429" is not enough: ports, sizes and hashes in a verbose log contain it by chance.
fn refused_line(log: &str) -> Option<&str> {
    log.lines().find(|l| {
        l.contains("HTTP status 429")
            || l.contains("HTTP 429")
            || l.contains("429 Too Many")
            || l.contains(rampart_core::rule::Rule::RateLimited.as_str())
    })
}

/// Runs it.
pub(super) async fn run(h: Harness) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let tbox = h.ecu_id(0);
    let image = h.release_tbox_update(150_000).await?;
    anyhow::ensure!(
        h.lab.url.starts_with("https://"),
        "the request flood needs the HTTPS lab"
    );

    // Every admin call of the lab comes from this host without a client certificate too, so
    // it shares the flooder's bucket: read what we need before, and after the flood.
    let mark = newest_id(&h.lab.events(None).await?);
    h.mark_events().await?;

    // The flooder: trusts the fleet CA (so the handshake succeeds), presents no certificate.
    let ca = std::fs::read(h.lab.layout.pki().join("ca.pem")).context("fleet CA")?;
    let client = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca)?)
        .pool_max_idle_per_host(WORKERS)
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = format!("{}image/metadata/timestamp.json", h.lab.url);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let mut workers = flood(client, url.clone(), stop.clone(), tally.clone(), started);

    // Let the flood exhaust its burst, then the vehicle runs its cycle in the middle of it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before_cycle = (
        tally.ok.load(Ordering::Relaxed),
        tally.limited.load(Ordering::Relaxed),
    );
    let cycle_started = started.elapsed();
    let run = h.lab.run_vehicle(0, "auto").await?;
    let cycle_ended = started.elapsed();
    let during_cycle = (
        tally.ok.load(Ordering::Relaxed) - before_cycle.0,
        tally.limited.load(Ordering::Relaxed) - before_cycle.1,
    );
    if let Some(rest) = MIN_FLOOD.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    stop.store(true, Ordering::Relaxed);
    while workers.join_next().await.is_some() {}
    let flood_for = started.elapsed();
    let (ok, limited, other, failed) = (
        tally.ok.load(Ordering::Relaxed),
        tally.limited.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    let first_429 = tally.first_limited_ms.load(Ordering::Relaxed);

    // Evidence: the flood reached the server and was throttled, while the vehicle ran.
    if limited > 0 {
        f.evidence(format!(
            "flood: {WORKERS} concurrent HTTPS connections without a client certificate sent {} GET {url} in {:.1} s: {ok} answered 200, {limited} answered 429, {other} other, {failed} failed",
            ok + limited + other + failed,
            flood_for.as_secs_f64()
        ));
        f.evidence(format!(
            "the vehicle's cycle ran from {:.1} s to {:.1} s into the flood; meanwhile the flooder got {} answers 200 and {} answers 429",
            cycle_started.as_secs_f64(),
            cycle_ended.as_secs_f64(),
            during_cycle.0,
            during_cycle.1
        ));
    }
    let allowed = BURST + RATE * flood_for.as_secs_f64() + WORKERS as f64;
    f.check(
        format!(
            "the flooder is throttled: at most burst {BURST} + {RATE}/s × duration (+{WORKERS} in flight) of its requests pass"
        ),
        limited > 0 && (ok as f64) <= allowed,
        format!(
            "{ok} passed (allowed {allowed:.0} in {:.1} s), {limited} refused with 429; first 429 after {first_429} ms",
            flood_for.as_secs_f64()
        ),
    );
    // Throttling starts as soon as the burst is spent: before the first 429, at most the
    // burst plus what the sustained rate refilled meanwhile (plus requests in flight) pass.
    let ok_before = tally.ok_before_limited.load(Ordering::Relaxed);
    let bound = BURST + RATE * first_429 as f64 / 1000.0 + WORKERS as f64;
    f.check(
        format!(
            "throttling starts once the burst is spent: at most {BURST} + {RATE}/s × t (+{WORKERS} in flight) requests before the first 429"
        ),
        first_429 > 0 && ok_before as f64 <= bound,
        format!(
            "first 429 after {first_429} ms and {ok_before} requests answered 200 (bound {bound:.0})"
        ),
    );

    // The vehicle, with its own bucket, completed its update during the flood.
    let vehicle_429 = refused_line(&run.stderr);
    f.check(
        "the vehicle completes its update during the flood",
        run.success && installed(&run).iter().any(|t| t == image) && vehicle_429.is_none(),
        if run.success {
            format!(
                "cycle succeeded; installed: {}; {}",
                installed(&run).join(", "),
                vehicle_429.map_or("the vehicle saw no 429".to_owned(), |l| format!(
                    "the vehicle saw a 429: {l}"
                ))
            )
        } else {
            crate::harness::first_line_with(&run.stderr, "error:")
        },
    );

    // The flooder's bucket (shared with the lab's admin client) refills: wait before asking.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = h.lab.events(None).await?;
    let hit = events.iter().find(|e| {
        e.get("id").and_then(Value::as_i64).unwrap_or(0) > mark
            && e.get("rule").and_then(Value::as_str) == Some("rate-limited")
            && e.get("source").and_then(Value::as_str) == Some("server")
    });
    let count = events
        .iter()
        .filter(|e| {
            e.get("id").and_then(Value::as_i64).unwrap_or(0) > mark
                && e.get("rule").and_then(Value::as_str) == Some("rate-limited")
        })
        .count();
    f.check(
        "the server recorded a server security event (rate-limited)",
        hit.is_some(),
        hit.map(|e| {
            format!(
                "{} ({} rate-limited events; remote {})",
                e.get("detail").and_then(Value::as_str).unwrap_or(""),
                count,
                e.get("remote").and_then(Value::as_str).unwrap_or("?")
            )
        })
        .unwrap_or_else(|| "no such event".into()),
    );
    let vehicle_limited = events.iter().any(|e| {
        e.get("id").and_then(Value::as_i64).unwrap_or(0) > mark
            && e.get("rule").and_then(Value::as_str) == Some("rate-limited")
            && e.get("vin").and_then(Value::as_str) == Some(h.vin().as_str())
    });
    f.check(
        "the vehicle was never rate-limited (its own bucket)",
        !vehicle_limited,
        if vehicle_limited {
            "a rate-limited event names the vehicle".to_owned()
        } else {
            "no rate-limited event names the vehicle".to_owned()
        },
    );
    let after = h.trust_state().await?;
    h.check_state(&mut f, &after, &[]);
    let ok_installed = after.running.get(&tbox).map(|(i, _)| i.as_str()) == Some(image);
    f.check(
        "the director saw the update installed",
        ok_installed && after.director_view.get(&tbox).map(String::as_str) == Some(image),
        format!(
            "{tbox} runs {:?}; director view {:?}",
            after.running.get(&tbox).map(|(i, _)| i),
            after.director_view.get(&tbox)
        ),
    );

    // Once the flood stops, the server serves everyone again.
    h.check_recovers(&mut f).await?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::refused_line;

    #[test]
    fn a_429_is_found_by_its_wording_not_by_its_digits() {
        let clean = "INFO listening on 127.0.0.1:42913\nINFO fetched 150429 bytes sha256=ab429f";
        assert_eq!(refused_line(clean), None);
        let refused = "INFO start\nerror: https://x/director/V/manifest: HTTP status 429\n";
        assert_eq!(
            refused_line(refused),
            Some("error: https://x/director/V/manifest: HTTP status 429")
        );
        let director = "error: director refused the manifest (HTTP 429, rate-limited): too many";
        assert!(refused_line(director).is_some());
    }
}

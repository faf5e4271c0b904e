//! Drop-request attack: the attacker on the network lets the vehicle's requests go nowhere —
//! image downloads answered 503, director metadata and the vehicle's manifest swallowed
//! without an answer — so that updates never arrive and the vehicle, if it waited forever,
//! would never learn that it is being kept back.

use rampart_core::rule::Rule;
use std::time::{Duration, Instant};

use rampart_lab::VehicleRun;

use crate::proxy::{Action, Intercept, TIMESTAMP_TAG_FIELD};
use crate::{Findings, Harness, Info};

/// Description.
pub(super) const INFO: Info = Info {
    name: "drop-request",
    attack: "drop-request attack",
    attacker: "man in the middle between vehicle and server: answers image downloads with 503, swallows director metadata requests and the vehicle manifest (never answers)",
    control: "every request has a deadline (10 s connect + 5 s stall for the answer's headers, then the slow-retrieval clocks); a failed cycle names its rule, is recorded as an attack indicator and reported to the director with the next manifest that gets through; the next cycle starts over (downloads resume)",
    expected: "defeated: each cycle fails within 20 s naming http-status or slow-retrieval, nothing installed, the director records the vehicle's indicators (for the swallowed manifest, once it gets through), and the update installs once the attacker leaves",
};

/// Lab primaries: `connect_timeout` (10 s, the fetcher's default) plus `stall_seconds` (5).
const HEADER_DEADLINE: Duration = Duration::from_secs(15);
/// Headroom for the rest of a cycle (ECU reports, other requests, process start).
const SLACK: Duration = Duration::from_secs(5);

/// `target: status` of every update a cycle handled.
fn statuses(run: &VehicleRun) -> Vec<String> {
    run.report
        .as_ref()
        .and_then(|r| r.get("updates"))
        .and_then(serde_json::Value::as_array)
        .map(|u| {
            u.iter()
                .map(|u| {
                    let target = u.get("target").and_then(|t| t.as_str()).unwrap_or("?");
                    let status = match u.get("status") {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(serde_json::Value::Object(o)) => o
                            .iter()
                            .map(|(k, v)| {
                                let rule = v
                                    .as_array()
                                    .and_then(|a| a.first())
                                    .and_then(|r| r.as_str())
                                    .unwrap_or("");
                                format!("{k}({rule})")
                            })
                            .collect::<Vec<_>>()
                            .join(","),
                        _ => "?".into(),
                    };
                    format!("{target}: {status}")
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs a cycle and checks that it ended within `bound`.
async fn timed_cycle(
    h: &Harness,
    f: &mut Findings,
    what: &str,
    bound: Duration,
) -> anyhow::Result<VehicleRun> {
    let started = Instant::now();
    let run = h.cycle().await?;
    let took = started.elapsed();
    f.check(
        format!(
            "{what}: the cycle ends within {} s (10 s connect + 5 s stall deadline + {} s for the rest of the cycle)",
            bound.as_secs(),
            SLACK.as_secs()
        ),
        took <= bound,
        format!(
            "cycle ended after {:.1} s ({})",
            took.as_secs_f64(),
            if run.success { "succeeded" } else { "failed" }
        ),
    );
    Ok(run)
}

/// Evidence: every answer of the attacker, with what the vehicle had asked for (`step`
/// names the part of the scenario).
fn record_evidence(h: &Harness, f: &mut Findings, step: &str) -> usize {
    let (rewritten, forged): (Vec<_>, Vec<_>) = h
        .proxy
        .forged()
        .into_iter()
        .partition(|s| s.action == "Mutate" && s.path.contains("/manifest"));
    if !rewritten.is_empty() {
        f.evidence(format!(
            "{step}: the attacker removed {TIMESTAMP_TAG_FIELD} from the director's answer to {} manifest(s), for the vehicle to ask for its timestamp",
            rewritten.len()
        ));
    }
    for s in &forged {
        let answer = if s.status == 0 {
            "no answer at all".to_owned()
        } else {
            format!("HTTP {}", s.status)
        };
        let what = if s.path.contains("/manifest") {
            "its manifest"
        } else if s.path.contains("/image/targets/") {
            "an image download"
        } else {
            "a metadata request"
        };
        f.evidence(format!(
            "{step}: the vehicle sent {what}, {} {}, and the attacker dropped it ({}: {answer})",
            s.method, s.path, s.action
        ));
    }
    forged.len()
}

/// Lets the vehicle's first two manifests of the cycle through (its report, then the one
/// saying its update is downloading), then answers the next one (the report sent after the
/// failed downloads, carrying the attack indicator) with 503.
fn drop_last_manifest(h: &Harness, vin: &str) {
    let pattern = format!("/director/{vin}/manifest");
    h.proxy.add(Intercept {
        pattern: pattern.clone(),
        method: Some("POST".into()),
        action: Action::Forward,
        times: Some(2),
    });
    h.proxy.add(Intercept {
        pattern,
        method: Some("POST".into()),
        action: Action::Status(503),
        times: Some(1),
    });
}

/// Runs it.
pub(super) async fn run(h: Harness) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let vin = h.vin();
    let tbox = h.ecu_id(0);
    let image = h.release_tbox_update(150_000).await?;
    let bound = HEADER_DEADLINE + SLACK;

    // 1. The image repository answers every image download with 503, and the attacker also
    //    drops the manifest that would tell the director (the one sent after the downloads):
    //    the indicator must still arrive with the next manifest that gets through.
    h.proxy
        .add(Intercept::get("/image/targets/", Action::Status(503)));
    drop_last_manifest(&h, &vin);
    let run = timed_cycle(&h, &mut f, "image download answered 503", bound).await?;
    let n = record_evidence(&h, &mut f, "step 1 (image repository)");
    f.check(
        "the dropped image download reached the vehicle",
        h.proxy
            .forged()
            .iter()
            .any(|s| s.path.contains("/image/targets/")),
        format!("{n} requests dropped"),
    );
    h.check_refused(&mut f, &run);
    let output = format!("{}\n{}", run.stderr, run.stdout);
    f.check(
        "the vehicle names the rule (http-status)",
        output.contains("http-status"),
        crate::harness::first_line_with(&output, "http-status"),
    );
    h.check_state(&mut f, &h.trust_state().await?, &[image]);

    // 2. The director's metadata is swallowed: the request is accepted and never answered.
    //    (The director's answer to the manifest names the timestamp the vehicle holds: the
    //    attacker strips that, for the vehicle to ask.)
    h.proxy.only(Intercept::get(
        &format!("/director/{vin}/metadata/timestamp.json"),
        Action::Blackhole,
    ));
    h.proxy.add(Intercept::timestamp_named(&vin, None));
    let run = timed_cycle(&h, &mut f, "director metadata swallowed", bound).await?;
    let n = record_evidence(&h, &mut f, "step 2 (director metadata)");
    f.check(
        "the swallowed director request came from the vehicle",
        n > 0,
        format!("{n} director requests swallowed"),
    );
    h.check_refused(&mut f, &run);
    h.check_noticed(
        &mut f,
        &run,
        &[Rule::SlowRetrieval, Rule::Transport],
        "vehicle",
    )
    .await?;
    // This cycle's manifests went through: the indicator of step 1 must be in them.
    h.check_event(&mut f, &[Rule::HttpStatus], "vehicle")
        .await?;
    h.check_state(&mut f, &h.trust_state().await?, &[image]);

    // 3. The vehicle's manifest is swallowed: the director hears nothing this cycle, so the
    //    indicator can only arrive with the next manifest that gets through.
    h.proxy.only(Intercept {
        pattern: format!("/director/{vin}/manifest"),
        method: Some("POST".into()),
        action: Action::Blackhole,
        times: None,
    });
    let run = timed_cycle(&h, &mut f, "manifest swallowed", bound).await?;
    let n = record_evidence(&h, &mut f, "step 3 (director manifest)");
    f.check(
        "the swallowed manifest came from the vehicle",
        n > 0,
        format!("{n} manifests swallowed"),
    );
    h.check_refused(&mut f, &run);
    let output = format!("{}\n{}", run.stderr, run.stdout);
    let said = [Rule::SlowRetrieval, Rule::Transport]
        .iter()
        .find(|r| output.contains(r.as_str()));
    f.check(
        "the vehicle names the rule (slow-retrieval or transport)",
        said.is_some(),
        said.map_or_else(
            || "no rule named in its output".to_owned(),
            |r| crate::harness::first_line_with(&output, r.as_str()),
        ),
    );
    h.check_state(&mut f, &h.trust_state().await?, &[image]);

    // 4. The attacker leaves: the indicator of the swallowed manifest reaches the director
    //    with the next manifest, and the update installs.
    let run = h.check_recovers(&mut f).await?;
    h.check_event(&mut f, &[Rule::SlowRetrieval, Rule::Transport], "vehicle")
        .await?;
    let after = h.trust_state().await?;
    let ok = after.running.get(&tbox).map(|(i, _)| i.as_str()) == Some(image);
    f.check(
        "the update installs once the attacker leaves",
        ok,
        format!(
            "{tbox} runs {:?}; cycle: {}",
            after.running.get(&tbox).map(|(i, _)| i),
            statuses(&run).join("; ")
        ),
    );
    Ok(f)
}

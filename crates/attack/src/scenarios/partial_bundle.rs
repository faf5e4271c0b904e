//! Partial bundle installation attack: a campaign updates two ECUs together (T-BOX and body
//! controller). The attacker on the network lets the first image through and blocks the
//! other, hoping the vehicle installs half the bundle and ends up running a combination the
//! OEM never released.

use rampart_core::rule::Rule;
use std::sync::Arc;

use rampart_lab::{image_bytes, VehicleRun};
use serde_json::Value;

use crate::proxy::{Action, Intercept};
use crate::{Findings, Harness, Info};

/// Description.
pub(super) const INFO: Info = Info {
    name: "partial-bundle",
    attack: "partial bundle installation attack",
    attacker: "man in the middle between vehicle and server: passes the first image of a two-ECU campaign, answers every further image download with 503",
    control: "the primary downloads and verifies every image of the cycle before installing any: if one cannot be had, none is installed (the others are reported partial-bundle); the blocked download is an attack indicator",
    expected: "defeated: neither image is installed (blocked one failed http-status, the downloaded one failed partial-bundle), every ECU keeps its release; the server records the vehicle's indicator; both install once the attacker leaves",
};

/// `target → (status, rule)` of every update the cycle handled.
fn outcomes(run: &VehicleRun) -> Vec<(String, String, String)> {
    run.report
        .as_ref()
        .and_then(|r| r.get("updates"))
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|u| {
                    let target = u
                        .get("target")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_owned();
                    let (status, rule) = match u.get("status") {
                        Some(Value::String(s)) => (s.clone(), String::new()),
                        Some(Value::Object(o)) => o
                            .iter()
                            .next()
                            .map(|(k, v)| {
                                let rule = v
                                    .as_array()
                                    .and_then(|a| a.first())
                                    .and_then(Value::as_str)
                                    .unwrap_or("")
                                    .to_owned();
                                (k.clone(), rule)
                            })
                            .unwrap_or_default(),
                        _ => ("?".into(), String::new()),
                    };
                    (target, status, rule)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs it.
pub(super) async fn run(h: Harness) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let bundle = [
        ("tbox/fw-2.0.bin", "tbox-a", 0usize),
        ("bcm/fw-2.0.bin", "bcm-1", 2usize),
    ];
    for (name, hw, _) in bundle {
        h.lab
            .release(name, hw, "2.0", &image_bytes(name, 150_000), false)
            .await?;
    }
    let names: Vec<&str> = bundle.iter().map(|(n, _, _)| *n).collect();

    // The first image download passes unchanged; every later one is answered 503.
    h.proxy.add(Intercept {
        pattern: "/image/targets/".into(),
        method: Some("GET".into()),
        action: Action::Mutate(Arc::new(|b: &[u8]| b.to_vec())),
        times: Some(1),
    });
    h.proxy
        .add(Intercept::get("/image/targets/", Action::Status(503)));
    let run = h.cycle().await?;

    let log = h.proxy.forged();
    let passed: Vec<_> = log.iter().filter(|s| s.action == "Mutate").collect();
    let blocked: Vec<_> = log.iter().filter(|s| s.status == 503).collect();
    for s in &passed {
        f.evidence(format!(
            "the vehicle downloaded {} ({} genuine bytes, HTTP {}): the attacker let the first image of the bundle through",
            s.path, s.bytes, s.status
        ));
    }
    for s in &blocked {
        f.evidence(format!(
            "the vehicle requested {} and the attacker blocked it (HTTP 503)",
            s.path
        ));
    }
    f.check(
        "one image of the bundle downloaded, the other blocked",
        passed.len() == 1 && !blocked.is_empty(),
        format!("{} passed, {} blocked", passed.len(), blocked.len()),
    );

    h.check_refused(&mut f, &run);
    let out = outcomes(&run);
    let described = out
        .iter()
        .map(|(t, s, r)| format!("{t}: {s}({r})"))
        .collect::<Vec<_>>()
        .join("; ");
    let partial = out
        .iter()
        .filter(|(_, s, r)| s == "Failed" && r == "partial-bundle")
        .count();
    let failed_blocked = out
        .iter()
        .filter(|(_, s, r)| s == "Failed" && r == "http-status")
        .count();
    f.check(
        "the downloaded image is held back as partial-bundle, the blocked one fails http-status",
        out.len() == bundle.len() && partial == 1 && failed_blocked == 1,
        if described.is_empty() {
            "no update outcomes in the report".to_owned()
        } else {
            described
        },
    );
    h.check_noticed(&mut f, &run, &[Rule::HttpStatus], "vehicle")
        .await?;
    h.check_state(&mut f, &h.trust_state().await?, &names);
    let after = h.trust_state().await?;
    let unchanged = h.baseline.running == after.running;
    f.check(
        "every ECU still runs its baseline image (no half-installed bundle)",
        unchanged,
        after
            .running
            .iter()
            .map(|(e, (i, c))| format!("{e}={i}#{c}"))
            .collect::<Vec<_>>()
            .join(", "),
    );

    // The attacker leaves: the whole bundle installs.
    h.check_recovers(&mut f).await?;
    let after = h.trust_state().await?;
    let mut missing = Vec::new();
    for (name, _, i) in bundle {
        let ecu = h.ecu_id(i);
        let runs = after.running.get(&ecu).map(|(img, _)| img.as_str());
        if runs != Some(name) {
            missing.push(format!("{ecu} runs {runs:?}, not {name}"));
        }
    }
    f.check(
        "both images install once the attacker leaves",
        missing.is_empty(),
        if missing.is_empty() {
            names.join(" and ") + " installed"
        } else {
            missing.join("; ")
        },
    );
    Ok(f)
}

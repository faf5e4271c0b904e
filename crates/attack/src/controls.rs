//! Negative controls: the lab must be able to fail.
//!
//! For each attacker position, one scenario runs against a vehicle or server where the
//! control that position relies on is missing ([`crate::naive`]). The lab must then report
//! `succeeded`, and the check that fails must be the one that watches the missing control —
//! otherwise that check, and every `defeated` verdict resting on it, proves nothing.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::harness::Weakness;
use crate::{scenarios, Findings, Harness, Outcome, Verdict};

/// One negative control.
#[derive(Debug, Clone, Serialize)]
pub struct Control {
    /// Name (`--control NAME`).
    pub name: &'static str,
    /// The attacker position it covers.
    pub position: &'static str,
    /// The scenario it runs.
    pub scenario: &'static str,
    /// What is naive, in words.
    pub naive: &'static str,
    /// The check that must fail (its `what`, or the start of it).
    pub failing_check: &'static str,
    /// What is swapped.
    #[serde(skip)]
    pub weakness: fn() -> Weakness,
}

fn naive_vehicle() -> Weakness {
    Weakness {
        naive_ecus: vec![0, 1, 2],
        naive_primary: true,
        naive_director: false,
        naive_uds: false,
    }
}

fn naive_ivi_and_bcm() -> Weakness {
    Weakness {
        naive_ecus: vec![1, 2],
        ..Weakness::default()
    }
}

fn naive_legacy_ecu() -> Weakness {
    Weakness {
        naive_uds: true,
        ..Weakness::default()
    }
}

fn naive_director() -> Weakness {
    Weakness {
        naive_director: true,
        ..Weakness::default()
    }
}

/// Every negative control, one per attacker position.
pub fn all() -> Vec<Control> {
    vec![
        Control {
            name: "mitm-naive-vehicle",
            position: "network man in the middle",
            scenario: "arbitrary-software",
            naive: "a primary that checks no signature and never asks the image repository, and ECUs that install whatever they are handed",
            failing_check: "nothing the attacker chose is installed",
            weakness: naive_vehicle,
        },
        Control {
            name: "mirror-naive-vehicle",
            position: "hostile mirror (replays genuine, older metadata)",
            scenario: "rollback",
            naive: "a primary that takes whatever the director URL answers, without version or release-counter checks, and ECUs that install whatever they are handed",
            failing_check: "no ECU moved to an older or mixed set",
            weakness: naive_vehicle,
        },
        Control {
            name: "bus-naive-ecu",
            position: "in-vehicle link",
            scenario: "in-vehicle-tamper",
            naive: "an IVI and a BCM that write whatever bytes arrive into their slot, without metadata, hash or decryption checks",
            failing_check: "the IVI keeps its old slot, intact",
            weakness: naive_ivi_and_bcm,
        },
        Control {
            name: "stolen-key-naive-vehicle",
            position: "stolen online key (director)",
            scenario: "director-key-compromise",
            naive: "a primary that skips the image-repository check (director instructions alone decide), and ECUs that install whatever they are handed",
            failing_check: "nothing the attacker chose is installed",
            weakness: naive_vehicle,
        },
        Control {
            name: "ecu-naive-director",
            position: "compromised ECU",
            scenario: "compromised-secondary",
            naive: "a director that records whatever a manifest's ECU reports claim, without checking ECU keys or IDs",
            failing_check: "the director's view of the BCM is unchanged",
            weakness: naive_director,
        },
        Control {
            name: "replay-naive-director",
            position: "replay to the server",
            scenario: "replayed-manifest",
            naive: "a director that records whatever a manifest claims, without checking its signature or counter",
            failing_check: "the director's stored record of the vehicle is unchanged",
            weakness: naive_director,
        },
        Control {
            name: "diag-naive-bootloader",
            position: "diagnostic link (rogue tester)",
            scenario: "uds-unauthenticated-download",
            naive: "a legacy ECU whose bootloader serves programming to any tester, without security access",
            failing_check: "RequestDownload refused",
            weakness: naive_legacy_ecu,
        },
        Control {
            name: "diag-naive-verify",
            position: "diagnostic link (man in the middle)",
            scenario: "uds-replayed-flash",
            naive: "a legacy ECU whose verify routine switches to whatever was written, without checking the director's targets",
            failing_check: "the legacy ECU runs its image, unchanged",
            weakness: naive_legacy_ecu,
        },
    ]
}

/// The control called `name`.
pub fn find(name: &str) -> Option<Control> {
    all().into_iter().find(|c| c.name == name)
}

/// What a negative control showed.
#[derive(Debug, Clone, Serialize)]
pub struct ControlOutcome {
    /// The control.
    pub control: Control,
    /// The scenario's outcome against the naive component.
    pub outcome: Outcome,
    /// Whether the lab caught the missing control: verdict `succeeded`, with the expected
    /// check among the failed ones.
    pub caught: bool,
}

/// Runs `control` in a fresh lab under `dir`, with `bin` as the `rampart` binary.
pub async fn run(control: &Control, bin: &Path, dir: &Path) -> ControlOutcome {
    let started = Instant::now();
    let result = async {
        let scenario = scenarios::find(control.scenario)
            .ok_or_else(|| anyhow::anyhow!("no scenario {}", control.scenario))?;
        let h = Harness::build(
            bin,
            &dir.join(control.name),
            scenario.tls,
            (control.weakness)(),
            scenario.legacy,
        )
        .await?;
        (scenario.run)(h).await
    }
    .await;
    let (findings, error) = match result {
        Ok(f) => (f, None),
        Err(e) => (Findings::default(), Some(format!("{e:#}"))),
    };
    let verdict = if error.is_some() {
        Verdict::Inconclusive
    } else {
        findings.verdict()
    };
    let caught = verdict == Verdict::Succeeded
        && findings
            .checks
            .iter()
            .any(|c| !c.ok && c.what.starts_with(control.failing_check));
    ControlOutcome {
        control: control.clone(),
        outcome: Outcome {
            name: control.scenario.to_owned(),
            attack: control.position.to_owned(),
            verdict,
            evidence: findings.evidence,
            checks: findings.checks,
            error,
            incident: None,
            seconds: started.elapsed().as_secs_f64(),
        },
        caught,
    }
}

//! # rampart-attack
//!
//! The attack lab. Every scenario starts a real fleet ([`rampart_lab`]: server, primary and
//! ECUs as processes on loopback) with a baseline release installed, puts an attacker where
//! the scenario says — a man in the middle between vehicle and server ([`proxy`]), one on the
//! in-vehicle link ([`bus`]), a hostile mirror, a stolen key, a compromised ECU — runs an
//! update cycle, and checks:
//!
//! 1. nothing the attacker chose was installed, and no ECU moved to an older or mixed set;
//! 2. the trusted state (metadata versions, release counters) is unchanged or only moved
//!    forward legitimately;
//! 3. the vehicle noticed: the rejection names the rule, it reached the director as an attack
//!    indicator, and the server recorded a security event;
//! 4. for availability attacks: detection within a stated bound, and recovery once the
//!    attacker leaves.
//!
//! Every scenario must also show that the attack *reached* the system (the proxy served the
//! forged bytes and the vehicle fetched them); without that evidence the verdict is
//! `inconclusive`, never `defeated`.

pub mod bus;
pub mod controls;
pub mod detection;
pub mod diag;
pub mod harness;
pub mod naive;
pub mod naive_uds;
pub mod proxy;
pub mod scenarios;

use std::path::Path;
use std::time::Instant;

use futures_util::future::BoxFuture;
use serde::Serialize;

pub use harness::Harness;

/// One check of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub what: String,
    /// Whether it held.
    pub ok: bool,
    /// What was seen.
    pub detail: String,
}

/// What a scenario found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Findings {
    /// Proof that the attack reached the system (forged bytes served and fetched…).
    pub evidence: Vec<String>,
    /// Whether that proof is there.
    pub reached: bool,
    /// Safety and detection checks.
    pub checks: Vec<Check>,
}

impl Findings {
    /// Adds a check.
    pub fn check(&mut self, what: impl Into<String>, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            what: what.into(),
            ok,
            detail: detail.into(),
        });
    }

    /// A check that holds when `found` (the problems seen, each described) is empty; its
    /// detail is `fine` then, and the problems otherwise.
    pub fn check_none(
        &mut self,
        what: impl Into<String>,
        found: &[String],
        fine: impl Into<String>,
    ) {
        let detail = if found.is_empty() {
            fine.into()
        } else {
            found.join("; ")
        };
        self.check(what, found.is_empty(), detail);
    }

    /// Adds evidence that the attack reached the system.
    pub fn evidence(&mut self, line: impl Into<String>) {
        self.reached = true;
        self.evidence.push(line.into());
    }

    /// The verdict these findings support: `succeeded` if any check failed; `defeated` only
    /// if the attack reached the system *and* at least one check ran and every check held; a
    /// scenario that checked nothing proves nothing and is `inconclusive`.
    pub fn verdict(&self) -> Verdict {
        if self.checks.iter().any(|c| !c.ok) {
            Verdict::Succeeded
        } else if !self.reached || self.checks.is_empty() {
            Verdict::Inconclusive
        } else {
            Verdict::Defeated
        }
    }
}

/// The verdict of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The attack reached the system and every check held.
    Defeated,
    /// A check failed: the attack got somewhere.
    Succeeded,
    /// The attack could not be shown to reach the system, or the lab failed.
    Inconclusive,
}

/// Description of a scenario (shown in `--help`, the table and the JSON).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Info {
    /// Scenario name (`--scenario NAME`).
    pub name: &'static str,
    /// The Uptane / seed name of the attack.
    pub attack: &'static str,
    /// What the attacker can do.
    pub attacker: &'static str,
    /// The control that defeats it.
    pub control: &'static str,
    /// The expected verdict and how the vehicle notices.
    pub expected: &'static str,
}

/// A scenario: its description and how to run it.
pub struct Scenario {
    /// Description.
    pub info: Info,
    /// Runs it against a fresh harness.
    pub run: fn(Harness) -> BoxFuture<'static, anyhow::Result<Findings>>,
    /// Whether it needs the lab over HTTPS (client certificates) instead of plain HTTP.
    pub tls: bool,
    /// Whether the vehicle carries a legacy ECU (UDS on DoIP) as ECU 3.
    pub legacy: bool,
}

/// The outcome of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Scenario name.
    pub name: String,
    /// Attack.
    pub attack: String,
    /// Verdict.
    pub verdict: Verdict,
    /// Evidence that it reached the system.
    pub evidence: Vec<String>,
    /// Checks.
    pub checks: Vec<Check>,
    /// Error of the lab, if any.
    pub error: Option<String>,
    /// What the V-SOC's rules made of the events it left (`None`: not checked).
    pub incident: Option<detection::IncidentCheck>,
    /// Duration.
    pub seconds: f64,
}

impl Outcome {
    /// Defeated, and seen by the V-SOC as it should be.
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Defeated && self.incident.as_ref().is_none_or(|i| i.ok)
    }
}

/// Runs one scenario in a fresh lab under `dir`, with `bin` as the `rampart` binary.
pub async fn run(scenario: &Scenario, bin: &Path, dir: &Path) -> Outcome {
    let started = Instant::now();
    let info = scenario.info;
    let mut lab = None;
    let result = async {
        let h = Harness::build(
            bin,
            &dir.join(info.name),
            scenario.tls,
            harness::Weakness::default(),
            scenario.legacy,
        )
        .await?;
        lab = Some((h.lab.layout.clone(), chrono::Utc::now()));
        (scenario.run)(h).await
    }
    .await;
    let incident = match (&result, lab) {
        (Ok(_), Some((layout, since))) => {
            let expected = scenarios::expected_incidents(info.name);
            match detection::check(&layout, since, expected).await {
                Ok(check) => Some(check),
                Err(e) => Some(detection::IncidentCheck {
                    expected: expected.iter().map(|k| k.as_str()).collect(),
                    found: vec![format!("the lab's events could not be read: {e:#}")],
                    ok: false,
                }),
            }
        }
        _ => None,
    };
    let (verdict, findings, error) = match result {
        Ok(f) => {
            let error = f
                .checks
                .is_empty()
                .then(|| "the scenario ran no check: nothing was shown to hold".to_owned());
            (f.verdict(), f, error)
        }
        Err(e) => (
            Verdict::Inconclusive,
            Findings::default(),
            Some(format!("{e:#}")),
        ),
    };
    Outcome {
        name: info.name.to_owned(),
        attack: info.attack.to_owned(),
        verdict,
        evidence: findings.evidence,
        checks: findings.checks,
        error,
        incident,
        seconds: started.elapsed().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_is_defeated_only_with_evidence_and_at_least_one_check_that_held() {
        let mut f = Findings::default();
        assert_eq!(f.verdict(), Verdict::Inconclusive);
        f.evidence("forged bytes served");
        assert_eq!(f.verdict(), Verdict::Inconclusive, "no check ran");
        f.check("nothing installed", true, "");
        assert_eq!(f.verdict(), Verdict::Defeated);
        f.check("the server recorded it", false, "");
        assert_eq!(f.verdict(), Verdict::Succeeded);
        let mut unreached = Findings::default();
        unreached.check("nothing installed", true, "");
        assert_eq!(unreached.verdict(), Verdict::Inconclusive);
    }
}

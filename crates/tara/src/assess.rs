//! The assessment: the model rated (impact, feasibility, risk, CAL) and checked against this
//! run's results. Residual risk is computed here, never read from the model: a control
//! lowers an attack path's feasibility only when every piece of its evidence passed.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::evidence::{Ref, Results, Status};
use crate::model::{Model, Treatment};
use crate::r155;
use crate::rating::{self, Factors, Feasibility, Impact};

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// The model is inconsistent: fails every use of it.
    Model,
    /// The evidence of this run does not hold: fails `--verify`.
    Evidence,
}

/// A problem that fails `rampart tara --verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Model or evidence.
    pub kind: FindingKind,
    /// The model element it is about (`TS-…`, `C-…`, `r156 7.2.1.1`, a scenario name).
    pub subject: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.subject, self.message)
    }
}

/// One piece of evidence and what it showed.
#[derive(Debug, Clone, Serialize)]
pub struct EvidenceResult {
    /// The reference (`attack:…`, `detect:…`, `test:…`).
    pub reference: String,
    /// What it showed in this run.
    #[serde(flatten)]
    pub status: Status,
}

/// A control and whether its evidence held.
#[derive(Debug, Clone, Serialize)]
pub struct ControlResult {
    /// Control id.
    pub id: String,
    /// Every piece of its evidence.
    pub evidence: Vec<EvidenceResult>,
    /// True when it has evidence and all of it passed: only then does it count.
    pub effective: bool,
    /// The threats it serves.
    pub threats: Vec<String>,
}

/// One attack path rated before and after the effective controls.
#[derive(Debug, Clone, Serialize)]
pub struct PathResult {
    /// The path's title.
    pub title: String,
    /// Factors without controls.
    pub before: Factors,
    /// Their attack potential.
    pub potential_before: u8,
    /// Feasibility without controls.
    pub feasibility_before: Feasibility,
    /// Factors with the effective controls.
    pub after: Factors,
    /// Their attack potential.
    pub potential_after: u8,
    /// Feasibility with the effective controls.
    pub feasibility_after: Feasibility,
}

/// A threat scenario rated.
#[derive(Debug, Clone, Serialize)]
pub struct ThreatResult {
    /// Threat id.
    pub id: String,
    /// The worst impact of its damage scenarios.
    pub impact: Impact,
    /// Each path.
    pub paths: Vec<PathResult>,
    /// The most feasible path's rating, before.
    pub feasibility_before: Feasibility,
    /// After the effective controls.
    pub feasibility_after: Feasibility,
    /// Risk value 1–5 before treatment.
    pub risk_before: u8,
    /// Residual risk value 1–5.
    pub risk_after: u8,
    /// CAL of the threat (impact × vector).
    pub cal: Option<u8>,
    /// Its controls that counted.
    pub effective_controls: Vec<String>,
}

/// A goal with its computed CAL.
#[derive(Debug, Clone, Serialize)]
pub struct GoalResult {
    /// Goal id.
    pub id: String,
    /// Threats that name it.
    pub threats: Vec<String>,
    /// The highest CAL of its threats.
    pub cal: Option<u8>,
}

/// An R155 Annex 5 entry and how the item answers it.
#[derive(Debug, Clone, Serialize)]
pub struct R155Row {
    /// Entry number.
    pub number: String,
    /// Threats that realise it.
    pub threats: Vec<String>,
    /// Highest residual risk among them.
    pub worst_residual: Option<u8>,
    /// Why it is outside the item, when it is.
    pub out_of_scope: Option<String>,
}

/// An R156 requirement with its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct R156Result {
    /// Paragraph.
    pub paragraph: String,
    /// Evidence results.
    pub evidence: Vec<EvidenceResult>,
    /// Every piece passed (and there is at least one).
    pub proven: bool,
}

/// Counts of threats per risk value, before and after.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Threat scenarios.
    pub threats: usize,
    /// Threats per risk value 1–5 before treatment (index 0 = risk 1).
    pub risk_before: [usize; 5],
    /// Per residual risk value.
    pub risk_after: [usize; 5],
    /// Controls that counted / all.
    pub controls_effective: usize,
    /// All controls.
    pub controls: usize,
}

/// The whole assessment.
#[derive(Debug, Clone, Serialize)]
pub struct Assessment {
    /// Threats, in model order.
    pub threats: Vec<ThreatResult>,
    /// Controls, in model order.
    pub controls: Vec<ControlResult>,
    /// Goals.
    pub goals: Vec<GoalResult>,
    /// Annex 5 coverage, in the regulation's order.
    pub r155: Vec<R155Row>,
    /// R156 §7.
    pub r156: Vec<R156Result>,
    /// Scenarios with results that no control links.
    pub unlinked_scenarios: Vec<String>,
    /// Problems that fail verification.
    pub findings: Vec<Finding>,
    /// Threats retained, shared or avoided with a residual risk of 3 or more: not failures
    /// (the decision and its reason are the OEM's), said aloud in every report.
    pub accepted: Vec<String>,
    /// Totals.
    pub counts: Counts,
    /// Whether attack-lab results were given.
    pub attack_results: bool,
    /// Whether test results were given.
    pub test_results: bool,
}

impl Assessment {
    /// The rating of threat `id`.
    pub fn threat(&self, id: &str) -> Option<&ThreatResult> {
        self.threats.iter().find(|t| t.id == id)
    }

    /// The result of control `id`.
    pub fn control(&self, id: &str) -> Option<&ControlResult> {
        self.controls.iter().find(|c| c.id == id)
    }
}

/// The risk value at or above which a threat must be reduced by a control that works.
pub const MUST_REDUCE: u8 = 3;

/// Rates `model` and checks it against `results`.
pub fn assess(model: &Model, results: &Results) -> Assessment {
    let mut findings = validate(model);

    let mut threats_of_control: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for t in &model.threats {
        for c in &t.controls {
            threats_of_control
                .entry(c.as_str())
                .or_default()
                .push(t.id.clone());
        }
    }

    let evidence_results = |refs: &[String]| -> Vec<EvidenceResult> {
        refs.iter()
            .map(|r| EvidenceResult {
                reference: r.clone(),
                status: results.status(r),
            })
            .collect()
    };

    let controls: Vec<ControlResult> = model
        .controls
        .iter()
        .map(|c| {
            let evidence = evidence_results(&c.evidence);
            let effective = !evidence.is_empty() && evidence.iter().all(|e| e.status.passed());
            ControlResult {
                id: c.id.clone(),
                effective,
                evidence,
                threats: threats_of_control.remove(c.id.as_str()).unwrap_or_default(),
            }
        })
        .collect();

    let mut accepted = Vec::new();
    let threats: Vec<ThreatResult> = model
        .threats
        .iter()
        .map(|t| {
            let impact = t
                .damage
                .iter()
                .filter_map(|d| model.damage(d))
                .map(|d| d.impact.overall())
                .max()
                .unwrap_or(Impact::Negligible);
            let effective: Vec<&ControlResult> = t
                .controls
                .iter()
                .filter_map(|id| controls.iter().find(|c| &c.id == id))
                .filter(|c| c.effective)
                .collect();
            let paths: Vec<PathResult> = t
                .paths
                .iter()
                .map(|p| {
                    let after = effective
                        .iter()
                        .filter_map(|c| model.control(&c.id))
                        .fold(p.factors, |f, c| f.raised(&c.raises));
                    PathResult {
                        title: p.title.clone(),
                        before: p.factors,
                        potential_before: p.factors.potential(),
                        feasibility_before: p.factors.feasibility(),
                        after,
                        potential_after: after.potential(),
                        feasibility_after: after.feasibility(),
                    }
                })
                .collect();
            let feasibility_before = paths
                .iter()
                .map(|p| p.feasibility_before)
                .max()
                .unwrap_or(Feasibility::VeryLow);
            let feasibility_after = paths
                .iter()
                .map(|p| p.feasibility_after)
                .max()
                .unwrap_or(Feasibility::VeryLow);
            let risk_before = rating::risk(impact, feasibility_before);
            let risk_after = rating::risk(impact, feasibility_after);
            if risk_before >= MUST_REDUCE {
                match t.treatment {
                    Treatment::Reduce if effective.is_empty() => {
                        let why: Vec<String> = t
                            .controls
                            .iter()
                            .filter_map(|id| controls.iter().find(|c| &c.id == id))
                            .map(|c| {
                                let failed: Vec<String> = c
                                    .evidence
                                    .iter()
                                    .filter(|e| !e.status.passed())
                                    .map(|e| format!("{} {}", e.reference, e.status.label()))
                                    .collect();
                                format!("{} ({})", c.id, failed.join(", "))
                            })
                            .collect();
                        findings.push(Finding {
                            kind: FindingKind::Evidence,
                            subject: t.id.clone(),
                            message: format!(
                                "initial risk {risk_before} and no control whose evidence passed: {}",
                                if why.is_empty() {
                                    "it names no control".to_owned()
                                } else {
                                    why.join("; ")
                                }
                            ),
                        });
                    }
                    _ => {}
                }
            }
            if t.treatment != Treatment::Reduce && risk_after >= MUST_REDUCE {
                accepted.push(t.id.clone());
            }
            ThreatResult {
                id: t.id.clone(),
                impact,
                paths,
                feasibility_before,
                feasibility_after,
                risk_before,
                risk_after,
                cal: rating::cal(impact, t.vector),
                effective_controls: effective.iter().map(|c| c.id.clone()).collect(),
            }
        })
        .collect();

    // Evidence that names nothing of this run.
    let named = model
        .controls
        .iter()
        .map(|c| (format!("control {}", c.id), &c.evidence))
        .chain(
            model
                .r156
                .iter()
                .map(|r| (format!("R156 {}", r.paragraph), &r.evidence)),
        );
    let mut linked_scenarios = BTreeSet::new();
    for (subject, refs) in named {
        for r in refs {
            let status = results.status(r);
            if let Ok(parsed) = Ref::parse(r) {
                if let Some(s) = parsed.scenario() {
                    linked_scenarios.insert(s.to_owned());
                }
                if status == Status::Missing {
                    let what = match parsed {
                        Ref::Test(_) => "a test that is not in this run's test results (no such test, or it did not run)",
                        Ref::Attack(_) | Ref::Detect(_) => "an attack-lab scenario with no result in this run (no such scenario, or it did not run)",
                    };
                    findings.push(Finding {
                        kind: FindingKind::Evidence,
                        subject: subject.clone(),
                        message: format!("names {r}: {what}"),
                    });
                }
            }
        }
    }
    let unlinked_scenarios: Vec<String> = results
        .attacks
        .iter()
        .flat_map(|a| a.keys())
        .filter(|s| !linked_scenarios.contains(*s))
        .cloned()
        .collect();
    for s in &unlinked_scenarios {
        findings.push(Finding {
            kind: FindingKind::Evidence,
            subject: format!("scenario {s}"),
            message: "the attack lab runs it but no control names it: it is linked to no threat"
                .into(),
        });
    }

    let goals: Vec<GoalResult> = model
        .goals
        .iter()
        .map(|g| {
            let mine: Vec<&crate::model::Threat> = model
                .threats
                .iter()
                .filter(|t| t.goal.as_deref() == Some(g.id.as_str()))
                .collect();
            let cal = mine
                .iter()
                .filter_map(|t| threats.iter().find(|r| r.id == t.id).and_then(|r| r.cal))
                .max();
            GoalResult {
                id: g.id.clone(),
                threats: mine.iter().map(|t| t.id.clone()).collect(),
                cal,
            }
        })
        .collect();

    let r155 = r155::ENTRIES
        .iter()
        .map(|e| {
            let realised: Vec<&ThreatResult> = model
                .threats
                .iter()
                .filter(|t| t.r155.iter().any(|n| n == e.number))
                .filter_map(|t| threats.iter().find(|r| r.id == t.id))
                .collect();
            R155Row {
                number: e.number.to_owned(),
                threats: realised.iter().map(|t| t.id.clone()).collect(),
                worst_residual: realised.iter().map(|t| t.risk_after).max(),
                out_of_scope: model
                    .r155_out_of_scope
                    .iter()
                    .find(|o| o.numbers.iter().any(|n| n == e.number))
                    .map(|o| o.reason.clone()),
            }
        })
        .collect();

    let r156 = model
        .r156
        .iter()
        .map(|r| {
            let evidence = evidence_results(&r.evidence);
            R156Result {
                paragraph: r.paragraph.clone(),
                proven: !evidence.is_empty() && evidence.iter().all(|e| e.status.passed()),
                evidence,
            }
        })
        .collect();

    let mut counts = Counts {
        threats: threats.len(),
        controls: controls.len(),
        controls_effective: controls.iter().filter(|c| c.effective).count(),
        ..Counts::default()
    };
    for t in &threats {
        if let Some(n) = counts.risk_before.get_mut(usize::from(t.risk_before) - 1) {
            *n += 1;
        }
        if let Some(n) = counts.risk_after.get_mut(usize::from(t.risk_after) - 1) {
            *n += 1;
        }
    }

    Assessment {
        threats,
        controls,
        goals,
        r155,
        r156,
        unlinked_scenarios,
        findings,
        accepted,
        counts,
        attack_results: results.attacks.is_some(),
        test_results: results.tests.is_some(),
    }
}

/// Checks the model on its own: identifiers unique, every reference resolves, every R155
/// number exists and every Annex 5 entry is either realised by a threat or declared out of
/// scope, every decision has what it needs.
pub fn validate(model: &Model) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut fail = |subject: &str, message: String| {
        out.push(Finding {
            kind: FindingKind::Model,
            subject: subject.to_owned(),
            message,
        })
    };
    if model.item.is_none() {
        fail("item", "the model has no item definition".into());
    }
    let mut seen = BTreeSet::new();
    let ids = model
        .assets
        .iter()
        .map(|a| &a.id)
        .chain(model.damages.iter().map(|d| &d.id))
        .chain(model.threats.iter().map(|t| &t.id))
        .chain(model.controls.iter().map(|c| &c.id))
        .chain(model.goals.iter().map(|g| &g.id));
    for id in ids {
        if !seen.insert(id.as_str()) {
            fail(id, "identifier used twice".into());
        }
    }
    for t in &model.threats {
        let Some(asset) = model.asset(&t.asset) else {
            fail(&t.id, format!("asset {} does not exist", t.asset));
            continue;
        };
        if !asset.properties.contains(&t.property) {
            fail(
                &t.id,
                format!(
                    "asset {} does not list the property {} the threat compromises",
                    asset.id,
                    t.property.label()
                ),
            );
        }
        if t.damage.is_empty() {
            fail(&t.id, "names no damage scenario".into());
        }
        for d in &t.damage {
            if model.damage(d).is_none() {
                fail(&t.id, format!("damage scenario {d} does not exist"));
            }
        }
        if t.r155.is_empty() {
            fail(&t.id, "names no UNECE R155 Annex 5 entry".into());
        }
        for n in &t.r155 {
            if r155::entry(n).is_none() {
                fail(
                    &t.id,
                    format!(
                        "R155 Annex 5 has no entry {n} (see the list in rampart-tara's r155.rs)"
                    ),
                );
            }
        }
        if t.paths.is_empty() {
            fail(&t.id, "has no attack path".into());
        }
        for c in &t.controls {
            if model.control(c).is_none() {
                fail(&t.id, format!("control {c} does not exist"));
            }
        }
        if let Some(g) = &t.goal {
            if !model.goals.iter().any(|x| &x.id == g) {
                fail(&t.id, format!("goal {g} does not exist"));
            }
        }
        match t.treatment {
            Treatment::Reduce => {
                if t.controls.is_empty() {
                    fail(&t.id, "treatment reduce names no control".into());
                }
                if t.goal.is_none() {
                    fail(&t.id, "treatment reduce names no cybersecurity goal".into());
                }
            }
            Treatment::Share | Treatment::Retain | Treatment::Avoid => {
                if t.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
                    fail(
                        &t.id,
                        format!(
                            "treatment {} needs a reason (the cybersecurity claim)",
                            t.treatment.label()
                        ),
                    );
                }
                if t.treatment == Treatment::Share && t.shared_with.is_none() {
                    fail(&t.id, "treatment share names no party (shared_with)".into());
                }
            }
        }
    }
    for c in &model.controls {
        if c.evidence.is_empty() {
            fail(&c.id, "names no evidence".into());
        }
        if c.raises.is_empty() {
            fail(&c.id, "raises no attack-potential factor".into());
        }
        for e in &c.evidence {
            if let Err(e) = Ref::parse(e) {
                fail(&c.id, e);
            }
        }
        if !model.threats.iter().any(|t| t.controls.contains(&c.id)) {
            fail(&c.id, "no threat names this control".into());
        }
    }
    for r in &model.r156 {
        for e in &r.evidence {
            if let Err(e) = Ref::parse(e) {
                fail(&format!("R156 {}", r.paragraph), e);
            }
        }
        if r.evidence.is_empty() && r.note.is_none() {
            fail(
                &format!("R156 {}", r.paragraph),
                "names no evidence and no note saying who meets it".into(),
            );
        }
    }
    for o in &model.r155_out_of_scope {
        for n in &o.numbers {
            if r155::entry(n).is_none() {
                fail(
                    "r155_out_of_scope",
                    format!("R155 Annex 5 has no entry {n}"),
                );
            }
        }
    }
    for a in &model.assets {
        if !model.threats.iter().any(|t| t.asset == a.id) {
            fail(&a.id, "no threat scenario targets this asset".into());
        }
    }
    // Coverage of Annex 5 is demanded only of a model that declares scope at all (a fixture
    // of three threats is not an analysis of the whole regulation).
    if !model.r155_out_of_scope.is_empty() {
        for e in r155::ENTRIES {
            let realised = model
                .threats
                .iter()
                .any(|t| t.r155.iter().any(|n| n == e.number));
            let excluded = model
                .r155_out_of_scope
                .iter()
                .any(|o| o.numbers.iter().any(|n| n == e.number));
            if !realised && !excluded {
                fail(
                    &format!("R155 {}", e.number),
                    "realised by no threat and not declared out of scope".into(),
                );
            }
        }
    }
    out
}

//! Reports of an assessment: the terminal summary, Markdown, self-contained HTML, SVG
//! pictures and JSON. Every report is a pure function of the model and the assessment, with
//! no clock in it, so the committed report under `docs/tara/` changes only when the analysis
//! or its evidence does, and CI can tell when it is stale.

use std::path::Path;

use serde::Serialize;

use crate::assess::{Assessment, ThreatResult};
use crate::model::{Model, Threat};
use crate::rating::Factors;

mod html;
mod markdown;
pub mod svg;

/// A file of a report: its path under the report folder and its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Relative path (`index.html`, `trees/TS-01.svg`, …).
    pub path: String,
    /// Contents.
    pub contents: String,
}

/// Every file of the report: `README.md`, `index.html`, `heatmap.svg`, `trees/*.svg`.
pub fn files(model: &Model, assessment: &Assessment) -> Vec<File> {
    let mut out = vec![
        File {
            path: "README.md".into(),
            contents: markdown::report(model, assessment),
        },
        File {
            path: "index.html".into(),
            contents: html::report(model, assessment),
        },
        File {
            path: "heatmap.svg".into(),
            contents: svg::heat_map(assessment),
        },
    ];
    for (t, r) in pairs(model, assessment) {
        out.push(File {
            path: format!("trees/{}.svg", t.id),
            contents: svg::attack_tree(model, t, r, assessment),
        });
    }
    out
}

/// Writes the report's files under `dir` (creating it), removing stale attack trees.
pub fn write(dir: &Path, files: &[File]) -> std::io::Result<()> {
    let trees = dir.join("trees");
    if trees.is_dir() {
        for e in std::fs::read_dir(&trees)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "svg") {
                std::fs::remove_file(p)?;
            }
        }
    }
    for f in files {
        let p = dir.join(&f.path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(p, &f.contents)?;
    }
    Ok(())
}

/// The files under `dir` that differ from `files`, are missing, or are not part of it.
pub fn stale(dir: &Path, files: &[File]) -> Vec<String> {
    let mut out: Vec<String> = files
        .iter()
        .filter(|f| {
            std::fs::read_to_string(dir.join(&f.path)).ok().as_deref() != Some(f.contents.as_str())
        })
        .map(|f| f.path.clone())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir.join("trees")) {
        for e in entries.flatten() {
            let name = format!("trees/{}", e.file_name().to_string_lossy());
            if !files.iter().any(|f| f.path == name) {
                out.push(name);
            }
        }
    }
    out
}

/// The JSON for tools: the model and the assessment.
pub fn json(model: &Model, assessment: &Assessment) -> serde_json::Result<String> {
    #[derive(Serialize)]
    struct Out<'a> {
        model: &'a Model,
        assessment: &'a Assessment,
    }
    serde_json::to_string_pretty(&Out { model, assessment })
}

/// The summary table `rampart tara` prints.
pub fn summary(model: &Model, assessment: &Assessment) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:<7} {:<58} {:<9} {:<14} {:<19} {:<9} {}\n",
        "threat", "title", "impact", "feas.", "risk before→after", "treatment", "controls"
    ));
    for (t, r) in pairs(model, assessment) {
        let title: String = t.title.chars().take(58).collect();
        let controls = if t.controls.is_empty() {
            "—".to_owned()
        } else {
            format!("{}/{} proven", r.effective_controls.len(), t.controls.len())
        };
        s.push_str(&format!(
            "{:<7} {:<58} {:<9} {:<14} {:<19} {:<9} {}\n",
            t.id,
            title,
            r.impact.label(),
            format!(
                "{}→{}",
                short(r.feasibility_before.label()),
                short(r.feasibility_after.label())
            ),
            format!("{} → {}", r.risk_before, r.risk_after),
            t.treatment.label(),
            controls
        ));
    }
    let c = &assessment.counts;
    s.push_str(&format!(
        "\n{} threat scenarios · risk before (1..5): {:?} · after: {:?} · controls proven {}/{}\n",
        c.threats, c.risk_before, c.risk_after, c.controls_effective, c.controls
    ));
    if !assessment.accepted.is_empty() {
        s.push_str(&format!(
            "retained or shared with residual risk ≥ 3 (see their reasons): {}\n",
            assessment.accepted.join(", ")
        ));
    }
    if !assessment.attack_results || !assessment.test_results {
        s.push_str("evidence: ");
        s.push_str(match (assessment.attack_results, assessment.test_results) {
            (false, false) => "no results given: no control counts, residual risk = initial risk",
            (false, true) => "no attack-lab results given: controls proven by the lab do not count",
            _ => "no test results given: controls proven by tests do not count",
        });
        s.push('\n');
    }
    s
}

fn short(label: &str) -> &str {
    match label {
        "Very low" => "VLow",
        other => other,
    }
}

/// Threats with their results, in model order.
fn pairs<'a>(model: &'a Model, assessment: &'a Assessment) -> Vec<(&'a Threat, &'a ThreatResult)> {
    model
        .threats
        .iter()
        .filter_map(|t| assessment.threat(&t.id).map(|r| (t, r)))
        .collect()
}

/// A path's factors as `elapsed/expertise/knowledge/window/equipment = sum`.
fn factors_line(f: &Factors) -> String {
    format!(
        "{} ({}) · {} ({}) · {} ({}) · {} ({}) · {} ({}) = {}",
        f.elapsed.label(),
        f.elapsed.value(),
        f.expertise.label(),
        f.expertise.value(),
        f.knowledge.label(),
        f.knowledge.value(),
        f.window.label(),
        f.window.value(),
        f.equipment.label(),
        f.equipment.value(),
        f.potential()
    )
}

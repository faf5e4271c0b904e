//! `rampart tara`: the threat analysis and risk assessment of Rampart's OTA item (ISO/SAE
//! 21434 clause 15), checked against the results of a run. The model and the decisions are
//! in rampart-tara; this module reads files, runs the attack lab when asked, and prints.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use clap::Args;
use rampart_cli::exit::{Status, FAILED};
use rampart_cli::{say, say_err};
use rampart_tara::assess::FindingKind;
use rampart_tara::{assess, report, Model, Results};

/// `rampart tara [--model DIR] [--attack-results PATH] [--test-results FILE] [--verify]
/// [--report DIR [--check]] [--json]`.
#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub(crate) struct TaraArgs {
    /// The model: a folder of .toml files or one file [default: the model built into this
    /// binary, tara/ of its source].
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// Attack-lab results: a folder of JSON outcomes (`rampart-lab attack --results DIR`) or
    /// a file of JSON lines (`rampart-lab attack --all --json`).
    #[arg(long, value_name = "PATH")]
    attack_results: Option<PathBuf>,
    /// Run every attack-lab scenario now (`rampart-lab attack --all`, found beside this
    /// binary or on PATH) and use its results.
    #[arg(long, conflicts_with = "attack_results")]
    run_attacks: bool,
    /// The report of `cargo test` (its standard output), for evidence named `test:…`.
    #[arg(long, value_name = "FILE")]
    test_results: Option<PathBuf>,
    /// Exit 1, naming each problem, when a threat of initial risk ≥ 3 treated by reduction
    /// has no control whose evidence passed, when evidence names a scenario or test with no
    /// result, when a scenario is linked to no threat, or when the model is inconsistent.
    /// Needs both kinds of results.
    #[arg(long)]
    verify: bool,
    /// Write the report into DIR: README.md, index.html (self-contained), heatmap.svg,
    /// trees/TS-….svg.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// With --report: write nothing, exit 1 if DIR is not what would be written.
    #[arg(long, requires = "report")]
    check: bool,
    /// Print the model and the assessment as JSON instead of the table.
    #[arg(long)]
    json: bool,
}

const AFTER_HELP: &str = "\
Evidence comes from a run: scripts/test sets RAMPART_ATTACK_RESULTS=target/tara/attack
(every attack-lab scenario writes its outcome there) and keeps cargo test's report in
target/tara/cargo-test.txt, then runs:

  rampart tara --model tara --verify \\
      --attack-results target/tara/attack --test-results target/tara/cargo-test.txt \\
      --report docs/tara --check

Without results no control counts and residual risk equals initial risk.
scripts/tara-report regenerates docs/tara from the latest results.";

pub(crate) fn main(args: TaraArgs) -> anyhow::Result<()> {
    let model = match &args.model {
        Some(p) => Model::load(p)?,
        None => Model::rampart()?,
    };
    let mut results = Results::default();
    let lab_output;
    let attack_results = if args.run_attacks {
        lab_output = run_attack_lab()?;
        Some(lab_output.path().to_owned())
    } else {
        args.attack_results.clone()
    };
    if let Some(p) = &attack_results {
        results
            .read_attacks(p)
            .with_context(|| format!("reading attack-lab results {}", p.display()))?;
    }
    if let Some(p) = &args.test_results {
        results
            .read_tests(p)
            .with_context(|| format!("reading test results {}", p.display()))?;
    }
    if args.verify && (results.attacks.is_none() || results.tests.is_none()) {
        bail!(
            "--verify needs the results of a run: --attack-results PATH (or --run-attacks) and --test-results FILE"
        );
    }
    let assessment = assess(&model, &results);

    if args.json {
        say!("{}", report::json(&model, &assessment)?);
    } else {
        rampart_cli::ask!("{}", report::summary(&model, &assessment));
    }

    let mut failures = Vec::new();
    if let Some(dir) = &args.report {
        let files = report::files(&model, &assessment);
        if args.check {
            let stale = report::stale(dir, &files);
            if !stale.is_empty() {
                failures.push(format!(
                    "{} is not the report of this model and these results ({}); run scripts/tara-report",
                    dir.display(),
                    stale.join(", ")
                ));
            }
        } else {
            report::write(dir, &files)
                .with_context(|| format!("writing the report into {}", dir.display()))?;
            if !args.json {
                say!(
                    "report: {} ({} files)",
                    dir.join("index.html").display(),
                    files.len()
                );
            }
        }
    }
    // A broken model fails every use of it; missing or failed evidence fails --verify.
    failures.extend(
        assessment
            .findings
            .iter()
            .filter(|f| args.verify || f.kind == FindingKind::Model)
            .map(|f| f.to_string()),
    );
    if failures.is_empty() {
        if args.verify && !args.json {
            say!(
                "verified: {} threats, {} of {} controls proven by this run, every scenario linked",
                assessment.counts.threats,
                assessment.counts.controls_effective,
                assessment.counts.controls
            );
        }
        return Ok(());
    }
    for f in &failures {
        say_err!("tara: {f}");
    }
    Err(Status {
        code: FAILED,
        message: format!("{} problem(s) in the TARA", failures.len()),
    }
    .into())
}

/// A JSON-lines file of the lab's outcomes, removed when dropped.
struct LabOutput(PathBuf);

impl LabOutput {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for LabOutput {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `rampart-lab attack --all --json` and keeps its outcomes.
fn run_attack_lab() -> anyhow::Result<LabOutput> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("rampart-lab")))
        .filter(|p| p.is_file());
    let lab = beside.unwrap_or_else(|| PathBuf::from("rampart-lab"));
    say_err!("running the attack lab: {} attack --all", lab.display());
    let out = Command::new(&lab)
        .args(["attack", "--all", "--json"])
        .output()
        .with_context(|| {
            format!(
                "cannot run {} (build it: cargo build --bin rampart-lab)",
                lab.display()
            )
        })?;
    // The lab exits 1 when a scenario was not defeated: that is a result, not an error.
    let path = std::env::temp_dir().join(format!("rampart-tara-lab-{}.jsonl", std::process::id()));
    std::fs::write(&path, &out.stdout).with_context(|| format!("writing {}", path.display()))?;
    if out.stdout.is_empty() {
        bail!(
            "the attack lab printed no outcome: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(LabOutput(path))
}

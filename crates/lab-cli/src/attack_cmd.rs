//! `rampart-lab attack`: runs the attack lab's scenarios against a real fleet on loopback.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use rampart_attack::{controls, scenarios, Verdict};

/// `rampart-lab attack [--scenario NAME | --all | --controls] [--json]`.
#[derive(Debug, Args)]
#[command(after_long_help = scenario_help())]
pub(crate) struct AttackArgs {
    /// Run this scenario (repeatable); see the list below.
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// Run every scenario.
    #[arg(long)]
    all: bool,
    /// One JSON object per scenario on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write each scenario's outcome to DIR/NAME.json (the evidence `rampart tara`
    /// reads; scripts/test sets it for the whole test run).
    #[arg(long, value_name = "DIR", env = "RAMPART_ATTACK_RESULTS")]
    results: Option<PathBuf>,
    /// Keep each scenario's lab in this folder.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Run the negative controls instead: each scenario of the list against a deliberately
    /// naive component, which the lab must report as `succeeded`.
    #[arg(long, conflicts_with_all = ["scenarios", "all"])]
    controls: bool,
    /// Run this negative control (repeatable; see --controls).
    #[arg(long = "control", conflicts_with_all = ["scenarios", "all"])]
    control: Vec<String>,
}

fn scenario_help() -> String {
    let mut s = String::from("Scenarios:\n");
    for i in scenarios::infos() {
        s.push_str(&format!(
            "\n  {}\n    attack:   {}\n    attacker: {}\n    control:  {}\n    expected: {}\n",
            i.name, i.attack, i.attacker, i.control, i.expected
        ));
    }
    s
}

/// Runs the lab; exit status 1 if any attack succeeded or a scenario was inconclusive.
pub(crate) fn main(args: AttackArgs) -> anyhow::Result<()> {
    if args.list {
        rampart_cli::ask!("{}", scenario_help());
        rampart_cli::say!("\nNegative controls (--controls):");
        for c in controls::all() {
            rampart_cli::say!(
                "\n  {}\n    position: {}\n    scenario: {}\n    naive:    {}\n    must fail: {}",
                c.name,
                c.position,
                c.scenario,
                c.naive,
                c.failing_check
            );
        }
        return Ok(());
    }
    if args.controls || !args.control.is_empty() {
        return run_controls(&args);
    }
    let selected: Vec<_> = if args.all {
        scenarios::all()
    } else if args.scenarios.is_empty() {
        bail!("give --scenario NAME or --all (see --help for the list)");
    } else {
        args.scenarios
            .iter()
            .map(|n| {
                scenarios::find(n)
                    .ok_or_else(|| anyhow::anyhow!("unknown scenario {n:?} (see --list)"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let bin = std::env::current_exe()?;
    let root = match &args.keep {
        Some(p) => p.clone(),
        None => std::env::temp_dir().join(format!("rampart-attack-{}", std::process::id())),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut outcomes = Vec::new();
    let tty = std::io::stdout().is_terminal();
    if !args.json {
        rampart_cli::say!(
            "{:<28} {:<40} {:<12} evidence / failed checks",
            "scenario",
            "attack",
            "verdict"
        );
    }
    for s in &selected {
        let o = rt.block_on(rampart_attack::run(s, &bin, &root));
        if let Some(dir) = &args.results {
            std::fs::create_dir_all(dir)?;
            let file = dir.join(format!("{}.json", o.name));
            std::fs::write(&file, serde_json::to_string(&o)? + "\n")
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", file.display()))?;
        }
        if args.json {
            rampart_cli::say!("{}", serde_json::to_string(&o)?);
        } else {
            let mark = match o.verdict {
                Verdict::Defeated => {
                    if tty {
                        "\u{1b}[32mdefeated\u{1b}[0m"
                    } else {
                        "defeated"
                    }
                }
                Verdict::Succeeded => {
                    if tty {
                        "\u{1b}[31mSUCCEEDED\u{1b}[0m"
                    } else {
                        "SUCCEEDED"
                    }
                }
                Verdict::Inconclusive => "inconclusive",
            };
            let detail = match o.verdict {
                Verdict::Defeated => match &o.incident {
                    Some(i) if !i.ok => format!(
                        "V-SOC MISSED IT: expected {}, found {}",
                        i.expected.join(" or "),
                        if i.found.is_empty() {
                            "nothing".to_owned()
                        } else {
                            i.found.join(", ")
                        }
                    ),
                    Some(i) if !i.found.is_empty() => format!(
                        "V-SOC: {} · {}",
                        i.found.join(", "),
                        o.evidence.first().cloned().unwrap_or_default()
                    ),
                    _ => o.evidence.first().cloned().unwrap_or_default(),
                },
                _ => o
                    .checks
                    .iter()
                    .filter(|c| !c.ok)
                    .map(|c| format!("{}: {}", c.what, c.detail))
                    .chain(o.error.clone())
                    .chain(
                        (!o.checks.is_empty() && o.evidence.is_empty())
                            .then(|| "no evidence the attack reached the vehicle".to_owned()),
                    )
                    .collect::<Vec<_>>()
                    .join("; "),
            };
            rampart_cli::say!(
                "{:<28} {:<40} {:<12} {}",
                o.name,
                o.attack,
                mark,
                detail.chars().take(140).collect::<String>()
            );
        }
        outcomes.push(o);
    }
    if args.keep.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    let defeated = outcomes
        .iter()
        .filter(|o| o.verdict == Verdict::Defeated)
        .count();
    let unseen: Vec<String> = outcomes
        .iter()
        .filter(|o| o.incident.as_ref().is_some_and(|i| !i.ok))
        .map(|o| o.name.clone())
        .collect();
    if !args.json {
        rampart_cli::say!("\n{defeated} of {} attacks defeated", outcomes.len());
        rampart_cli::say!(
            "{} of {} raised the V-SOC incident they should",
            outcomes.len() - unseen.len(),
            outcomes.len()
        );
    }
    if defeated != outcomes.len() {
        bail!("{} scenario(s) not defeated", outcomes.len() - defeated);
    }
    if !unseen.is_empty() {
        bail!(
            "the V-SOC did not raise the expected incident for: {}",
            unseen.join(", ")
        );
    }
    Ok(())
}

/// Runs negative controls; exit status 1 unless the lab caught every missing control.
fn run_controls(args: &AttackArgs) -> anyhow::Result<()> {
    let selected: Vec<_> = if args.controls {
        controls::all()
    } else {
        args.control
            .iter()
            .map(|n| {
                controls::find(n)
                    .ok_or_else(|| anyhow::anyhow!("unknown control {n:?} (see --list)"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let bin = std::env::current_exe()?;
    let root = match &args.keep {
        Some(p) => p.clone(),
        None => std::env::temp_dir().join(format!("rampart-controls-{}", std::process::id())),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if !args.json {
        rampart_cli::say!(
            "{:<26} {:<40} {:<26} {:<12} failed check",
            "control",
            "position",
            "scenario",
            "verdict"
        );
    }
    let mut missed = 0;
    for c in &selected {
        let o = rt.block_on(controls::run(c, &bin, &root));
        if !o.caught {
            missed += 1;
        }
        if args.json {
            rampart_cli::say!("{}", serde_json::to_string(&o)?);
        } else {
            let failed = o
                .outcome
                .checks
                .iter()
                .find(|ch| !ch.ok && ch.what.starts_with(c.failing_check))
                .map(|ch| format!("{}: {}", ch.what, ch.detail))
                .or_else(|| o.outcome.error.clone())
                .unwrap_or_else(|| format!("NOT CAUGHT: '{}' held", c.failing_check));
            rampart_cli::say!(
                "{:<26} {:<40} {:<26} {:<12} {}",
                c.name,
                c.position,
                c.scenario,
                format!("{:?}", o.outcome.verdict).to_lowercase(),
                failed.chars().take(120).collect::<String>()
            );
        }
    }
    if args.keep.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    if !args.json {
        rampart_cli::say!(
            "\n{} of {} negative controls caught (the lab reports succeeded against a naive component)",
            selected.len() - missed,
            selected.len()
        );
    }
    if missed > 0 {
        bail!("{missed} negative control(s) not caught: the lab cannot fail there");
    }
    Ok(())
}

//! `rampart-bench`: the measuring programs behind `bench/run` (issue 7).
//!
//! Each subcommand does one measure and prints one JSON object on stdout; `bench/run` turns
//! them into ratios against peers and limits. They are not timed unit tests: nothing here
//! fails because something is slow.
//!
//! | subcommand | measure |
//! |---|---|
//! | `refresh-gen DIR` | writes an image repository with many targets and a director for one vehicle |
//! | `refresh DIR` | times Rampart's full-verification refresh over those files, and its crypto floor |
//! | `image-prepare` | writes a plaintext image and its STREAM ciphertext (for a server to serve) |
//! | `image-fetch` | download + verify + decrypt + write one image, as the vehicle does |
//! | `crypto-speed` | SHA-256, SHA-512 and ed25519 speed of aws-lc-rs here (context for the ratios) |
//! | `checkin` | drives director check-ins (or a static server of the same sizes) |
//! | `manifest` | the director's verification of one vehicle manifest against its four signatures |
//! | `footprint` | runs a lab update with the slim agent and records its peak RSS |
//! | `campaign` | the director's cost of campaigns: creation over a fleet, check-ins with one running |
//! | `flash` | a legacy ECU flashed over UDS on DoIP against the same image over the in-vehicle protocol |
//! | `fleet` | a fleet at scale against a running server: registration, one wave over all, the storm, steady state (`--until campaign` stops after the wave) |
//! | `delta-create`, `delta-apply`, `delta-synth` | deltas: made by Rampart or qbsdiff as shipped, applied by the ECU's streaming applier, a large synthetic release pair |
//!
//! Built as a `[[bench]]` target of `rampart-lab` (`harness = false`), so it is compiled with
//! the release settings and never shipped.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{bail, Context};

mod campaign;
mod checkin;
mod delta;
mod flash;
mod fleet;
mod footprint;
mod http;
mod image;
mod manifest;
mod refresh;

/// Parsed `--name value` options and bare words.
#[derive(Debug, Default)]
struct Args {
    words: Vec<String>,
    options: BTreeMap<String, String>,
}

impl Args {
    fn parse(raw: impl Iterator<Item = String>) -> anyhow::Result<Args> {
        let mut out = Args::default();
        let mut raw = raw.peekable();
        while let Some(a) = raw.next() {
            if a == "--bench" {
                // Added by `cargo bench`.
                continue;
            }
            if let Some(name) = a.strip_prefix("--") {
                let value = match raw.peek() {
                    Some(v) if !v.starts_with("--") => raw.next().unwrap_or_default(),
                    _ => "true".into(),
                };
                out.options.insert(name.to_owned(), value);
            } else {
                out.words.push(a);
            }
        }
        Ok(out)
    }

    fn word(&self, i: usize, what: &str) -> anyhow::Result<&str> {
        self.words
            .get(i)
            .map(String::as_str)
            .with_context(|| format!("missing {what}"))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }

    fn req(&self, name: &str) -> anyhow::Result<&str> {
        self.get(name).with_context(|| format!("missing --{name}"))
    }

    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| anyhow::anyhow!("--{name} {v}: {e}")),
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse(std::env::args().skip(1))?;
    let command = args.word(0, "subcommand")?.to_owned();
    let result = match command.as_str() {
        "refresh-gen" => refresh::generate(&args)?,
        "refresh" => refresh::measure(&args)?,
        "image-prepare" => image::prepare(&args)?,
        "image-fetch" => image::fetch(&args)?,
        "crypto-speed" => image::crypto_speed(&args)?,
        "checkin" => checkin::main(&args)?,
        "manifest" => manifest::main(&args)?,
        "campaign" => campaign::main(&args)?,
        "footprint" => footprint::main(&args)?,
        "flash" => flash::main(&args)?,
        "fleet" => fleet::main(&args)?,
        "delta-create" => delta::create(&args)?,
        "delta-apply" => delta::apply(&args)?,
        "delta-synth" => delta::synth(&args)?,
        other => bail!("unknown subcommand {other:?}"),
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rampart-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Median of a list of durations in seconds (the list is sorted in place).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    let mid = n / 2;
    let at = |i: usize| values.get(i).copied().unwrap_or_default();
    if n % 2 == 1 {
        at(mid)
    } else {
        (at(mid - 1) + at(mid)) / 2.0
    }
}

/// The value at quantile `q` (0..=1) of a sorted list (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied().unwrap_or_default()
}

//! Evidence: what a control's proof names, and the results of this run that say whether it
//! held. Results come from the attack lab (`rampart-lab attack --json`, one outcome per
//! scenario) and from `cargo test` (libtest's own report lines); neither is trusted to exist:
//! a name with no result is reported as missing, never as passed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A parsed evidence reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ref<'a> {
    /// `attack:NAME`: the attack-lab scenario is defeated.
    Attack(&'a str),
    /// `detect:NAME`: the scenario raises the V-SOC incident it should.
    Detect(&'a str),
    /// `test:TARGET::PATH`: the test passed.
    Test(&'a str),
}

impl<'a> Ref<'a> {
    /// Parses `kind:name`.
    pub fn parse(s: &'a str) -> Result<Ref<'a>, String> {
        match s.split_once(':') {
            Some(("attack", n)) if !n.is_empty() => Ok(Ref::Attack(n)),
            Some(("detect", n)) if !n.is_empty() => Ok(Ref::Detect(n)),
            Some(("test", n)) if n.contains("::") => Ok(Ref::Test(n)),
            _ => Err(format!(
                "evidence {s:?} is not attack:SCENARIO, detect:SCENARIO or test:TARGET::PATH"
            )),
        }
    }

    /// The attack-lab scenario it names, if any.
    pub fn scenario(&self) -> Option<&'a str> {
        match *self {
            Ref::Attack(n) | Ref::Detect(n) => Some(n),
            Ref::Test(_) => None,
        }
    }
}

/// What one piece of evidence showed in this run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "kebab-case")]
pub enum Status {
    /// It held.
    Passed,
    /// It ran and did not hold: why.
    Failed(String),
    /// Results were given, but none for this name: it does not exist or did not run.
    Missing,
    /// No results of its kind were given to this run.
    NotRun,
}

impl Status {
    /// True only for a pass.
    pub fn passed(&self) -> bool {
        matches!(self, Status::Passed)
    }

    /// One word for tables.
    pub fn label(&self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Failed(_) => "FAILED",
            Status::Missing => "MISSING",
            Status::NotRun => "not run",
        }
    }
}

/// One attack-lab outcome, as `rampart-lab attack --json` prints it.
#[derive(Debug, Clone, Deserialize)]
pub struct AttackOutcome {
    /// Scenario name.
    pub name: String,
    /// `defeated`, `succeeded` or `inconclusive`.
    pub verdict: String,
    /// Evidence that the attack reached the system.
    #[serde(default)]
    pub evidence: Vec<String>,
    /// What the V-SOC made of it.
    #[serde(default)]
    pub incident: Option<IncidentOutcome>,
}

/// The V-SOC part of an outcome.
#[derive(Debug, Clone, Deserialize)]
pub struct IncidentOutcome {
    /// Incident kinds expected.
    #[serde(default)]
    pub expected: Vec<String>,
    /// Incidents found.
    #[serde(default)]
    pub found: Vec<String>,
    /// Whether an expected one was found.
    pub ok: bool,
}

/// One test's result in libtest's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestResult {
    /// `ok`.
    Passed,
    /// `FAILED`.
    Failed,
    /// `ignored`: it did not run.
    Ignored,
}

/// Where results could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// A file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line or file is not an attack-lab outcome.
    #[error("{path}: not an attack-lab outcome ({source})")]
    Outcome {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// The results of this run.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// Attack-lab outcomes by scenario; `None` when none were given.
    pub attacks: Option<BTreeMap<String, AttackOutcome>>,
    /// Test results by `TARGET::PATH`; `None` when none were given.
    pub tests: Option<BTreeMap<String, TestResult>>,
}

impl Results {
    /// Reads attack-lab outcomes: a folder of `*.json` files (one outcome each, as
    /// `rampart-lab attack --results DIR` writes them) or a file of JSON lines.
    pub fn read_attacks(&mut self, path: &Path) -> Result<(), ResultsError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| ResultsError::Read {
                path: p.to_owned(),
                source,
            })
        };
        let mut texts = Vec::new();
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| ResultsError::Read {
                path: path.to_owned(),
                source,
            })?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            files.sort();
            for f in files {
                texts.push((read(&f)?, f));
            }
        } else {
            texts.push((read(path)?, path.to_owned()));
        }
        let attacks = self.attacks.get_or_insert_with(BTreeMap::new);
        for (text, file) in texts {
            for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
                let o: AttackOutcome =
                    serde_json::from_str(line).map_err(|source| ResultsError::Outcome {
                        path: file.clone(),
                        source,
                    })?;
                attacks.insert(o.name.clone(), o);
            }
        }
        Ok(())
    }

    /// Reads the report of `cargo test` (its standard output, which libtest writes).
    pub fn read_tests(&mut self, path: &Path) -> Result<(), ResultsError> {
        let text = std::fs::read_to_string(path).map_err(|source| ResultsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let tests = self.tests.get_or_insert_with(BTreeMap::new);
        for (name, result) in parse_libtest(&text) {
            // A name run twice (two test binaries of one name in different crates) counts
            // as failed if either failed.
            let merged = match (tests.get(&name), result) {
                (Some(TestResult::Failed), _) | (_, TestResult::Failed) => TestResult::Failed,
                (Some(TestResult::Passed), _) | (_, TestResult::Passed) => TestResult::Passed,
                _ => TestResult::Ignored,
            };
            tests.insert(name, merged);
        }
        Ok(())
    }

    /// What `evidence` showed.
    pub fn status(&self, evidence: &str) -> Status {
        let Ok(r) = Ref::parse(evidence) else {
            return Status::Missing;
        };
        match r {
            Ref::Attack(name) => match &self.attacks {
                None => Status::NotRun,
                Some(a) => match a.get(name) {
                    None => Status::Missing,
                    Some(o) if o.verdict == "defeated" => Status::Passed,
                    Some(o) => Status::Failed(format!("verdict {}", o.verdict)),
                },
            },
            Ref::Detect(name) => match &self.attacks {
                None => Status::NotRun,
                Some(a) => match a.get(name).map(|o| &o.incident) {
                    None => Status::Missing,
                    Some(None) => Status::Failed("the V-SOC was not checked".into()),
                    Some(Some(i)) if i.expected.is_empty() => {
                        Status::Failed("the scenario expects no incident".into())
                    }
                    Some(Some(i)) if i.ok => Status::Passed,
                    Some(Some(i)) => Status::Failed(format!(
                        "expected {}, found {}",
                        i.expected.join(" or "),
                        if i.found.is_empty() {
                            "nothing".to_owned()
                        } else {
                            i.found.join(", ")
                        }
                    )),
                },
            },
            Ref::Test(name) => match &self.tests {
                None => Status::NotRun,
                Some(t) => match t.get(name) {
                    None => Status::Missing,
                    Some(TestResult::Passed) => Status::Passed,
                    Some(TestResult::Failed) => Status::Failed("test failed".into()),
                    Some(TestResult::Ignored) => Status::Failed("test ignored".into()),
                },
            },
        }
    }
}

/// Parses libtest's report: each `Running … (…/deps/TARGET-HASH)` line names the test
/// binary, each `test PATH ... ok|FAILED|ignored` line a result; the key is `TARGET::PATH`.
/// Doc-tests are skipped (they have no stable names).
pub fn parse_libtest(text: &str) -> Vec<(String, TestResult)> {
    let mut target: Option<String> = None;
    let mut out = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("Running ") {
            target = rest
                .rsplit_once("deps/")
                .and_then(|(_, file)| file.trim_end_matches(')').rsplit_once('-'))
                .map(|(name, _hash)| name.to_owned());
            continue;
        }
        if trimmed.starts_with("Doc-tests ") {
            target = None;
            continue;
        }
        let (Some(t), Some(rest)) = (&target, line.strip_prefix("test ")) else {
            continue;
        };
        let Some((path, result)) = rest.split_once(" ... ") else {
            continue;
        };
        let result = match result.split([' ', ',']).next() {
            Some("ok") => TestResult::Passed,
            Some("FAILED") => TestResult::Failed,
            Some("ignored") => TestResult::Ignored,
            _ => continue,
        };
        out.push((format!("{t}::{path}"), result));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
     Running unittests src/lib.rs (target/debug/deps/rampart_core-0123abcd)

running 2 tests
test trusted::tests::rollback_refused ... ok
test trusted::tests::slow ... ignored, needs a bench
     Running tests/vsoc.rs (target/debug/deps/vsoc-99ff)
test fleet_attack_opens_one_incident ... FAILED
   Doc-tests rampart_core
test crates/core/src/lib.rs - (line 3) ... ok
";

    #[test]
    fn libtest_report_is_keyed_by_binary_and_path() {
        let r = parse_libtest(REPORT);
        assert_eq!(
            r,
            vec![
                (
                    "rampart_core::trusted::tests::rollback_refused".to_owned(),
                    TestResult::Passed
                ),
                (
                    "rampart_core::trusted::tests::slow".to_owned(),
                    TestResult::Ignored
                ),
                (
                    "vsoc::fleet_attack_opens_one_incident".to_owned(),
                    TestResult::Failed
                ),
            ]
        );
    }

    #[test]
    fn status_tells_passed_failed_missing_and_not_run() {
        let mut results = Results::default();
        assert_eq!(results.status("test:a::b"), Status::NotRun);
        assert_eq!(results.status("attack:rollback"), Status::NotRun);
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let log = dir.path().join("tests.txt");
        std::fs::write(&log, REPORT).unwrap_or_else(|e| unreachable!("{e}"));
        results
            .read_tests(&log)
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert!(results
            .status("test:rampart_core::trusted::tests::rollback_refused")
            .passed());
        assert!(matches!(
            results.status("test:vsoc::fleet_attack_opens_one_incident"),
            Status::Failed(_)
        ));
        assert!(matches!(
            results.status("test:rampart_core::trusted::tests::slow"),
            Status::Failed(_)
        ));
        assert_eq!(results.status("test:nowhere::at_all"), Status::Missing);

        let lab = dir.path().join("attack.jsonl");
        std::fs::write(
            &lab,
            concat!(
                r#"{"name":"rollback","verdict":"defeated","evidence":["x"],"incident":{"expected":["fleet-attack"],"found":["fleet-attack: ecu"],"ok":true}}"#,
                "\n",
                r#"{"name":"freeze","verdict":"succeeded","incident":{"expected":["fleet-attack"],"found":[],"ok":false}}"#,
                "\n",
                r#"{"name":"eavesdrop","verdict":"defeated","incident":{"expected":[],"found":[],"ok":true}}"#,
                "\n"
            ),
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        results
            .read_attacks(&lab)
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert!(results.status("attack:rollback").passed());
        assert!(results.status("detect:rollback").passed());
        assert_eq!(
            results.status("attack:freeze"),
            Status::Failed("verdict succeeded".into())
        );
        assert!(matches!(results.status("detect:freeze"), Status::Failed(_)));
        assert!(matches!(
            results.status("detect:eavesdrop"),
            Status::Failed(_)
        ));
        assert_eq!(results.status("attack:teleport"), Status::Missing);
    }

    #[test]
    fn evidence_references_parse() {
        assert_eq!(Ref::parse("attack:rollback"), Ok(Ref::Attack("rollback")));
        assert_eq!(Ref::parse("test:vsoc::x"), Ok(Ref::Test("vsoc::x")));
        assert!(Ref::parse("test:nocolons").is_err());
        assert!(Ref::parse("attack:").is_err());
        assert!(Ref::parse("bench:x").is_err());
    }
}

//! `rampart tara` on a test-only model (tests/fixtures/tara) and hand-made results of a run:
//! --verify passes when the linked evidence passed, and fails, naming what, when a linked
//! scenario is made to fail or is removed, when a linked test failed or does not exist, or
//! when a scenario is linked to no threat. The report is written, self-contained, and
//! --check tells when it is stale.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tara/model.toml")
}

/// One attack-lab outcome as `rampart-lab attack --results` writes it.
fn outcome(name: &str, verdict: &str, incident_ok: bool) -> String {
    serde_json::json!({
        "name": name,
        "attack": name,
        "verdict": verdict,
        "evidence": ["the attack reached the vehicle"],
        "checks": [],
        "error": null,
        "incident": {"expected": ["fleet-attack"], "found": if incident_ok { vec!["fleet-attack: x"] } else { vec![] }, "ok": incident_ok},
        "seconds": 1.0
    })
    .to_string()
}

/// A run's results: the attack folder and the cargo test report.
struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    /// Every linked scenario defeated and seen, every linked test passed.
    fn passing() -> Run {
        let dir = tempfile::tempdir().unwrap();
        let attack = dir.path().join("attack");
        std::fs::create_dir(&attack).unwrap();
        let run = Run { dir };
        run.scenario("rollback", "defeated", true);
        run.scenario("freeze", "defeated", true);
        run.tests(&[
            ("fixture_suite", "rollback_is_refused", "ok"),
            (
                "rampart_core",
                "client::tests::expired_timestamp_is_a_freeze_attack",
                "ok",
            ),
        ]);
        run
    }

    fn attack(&self) -> PathBuf {
        self.dir.path().join("attack")
    }

    fn test_report(&self) -> PathBuf {
        self.dir.path().join("cargo-test.txt")
    }

    fn scenario(&self, name: &str, verdict: &str, incident_ok: bool) {
        std::fs::write(
            self.attack().join(format!("{name}.json")),
            outcome(name, verdict, incident_ok),
        )
        .unwrap();
    }

    fn remove_scenario(&self, name: &str) {
        std::fs::remove_file(self.attack().join(format!("{name}.json"))).unwrap();
    }

    /// Writes a libtest report: (binary, test path, result).
    fn tests(&self, tests: &[(&str, &str, &str)]) {
        let mut report = String::new();
        let mut binary = "";
        for (b, path, result) in tests {
            if *b != binary {
                report.push_str(&format!(
                    "     Running tests/{b}.rs (target/debug/deps/{b}-0123456789abcdef)\n\nrunning 1 test\n"
                ));
                binary = b;
            }
            report.push_str(&format!("test {path} ... {result}\n"));
        }
        std::fs::write(self.test_report(), report).unwrap();
    }

    fn verify(&self) -> Output {
        tara(&[
            "--verify",
            "--attack-results",
            self.attack().to_str().unwrap(),
            "--test-results",
            self.test_report().to_str().unwrap(),
        ])
    }
}

fn tara(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rampart"))
        .arg("tara")
        .arg("--model")
        .arg(fixture())
        .args(args)
        .output()
        .unwrap()
}

/// The standard error of a run that must have failed (exit 1).
fn failed(o: &Output) -> String {
    let (out, err) = text(o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    err
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn verify_passes_when_every_linked_scenario_and_test_passed() {
    let run = Run::passing();
    let o = run.verify();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        out.contains("verified: 3 threats, 2 of 2 controls"),
        "{out}"
    );
    // Residual risk is computed from the evidence: 5 → 3 for both reduced threats.
    assert!(out.contains("5 → 3"), "{out}");
    // The retained threat of risk 3 is said aloud, and does not fail verification.
    assert!(
        out.contains("residual risk ≥ 3 (see their reasons): TS-3"),
        "{out}"
    );
}

#[test]
fn verify_fails_naming_a_linked_scenario_that_was_not_defeated() {
    let run = Run::passing();
    run.scenario("rollback", "succeeded", true);
    let o = run.verify();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(
        err.contains("TS-1: initial risk 5 and no control whose evidence passed: C-ROLLBACK (attack:rollback FAILED)"),
        "{err}"
    );
    // The control no longer counts: TS-1's residual risk is its initial risk.
    assert!(
        out.lines()
            .any(|l| l.starts_with("TS-1 ") && l.contains("5 → 5")),
        "{out}"
    );
    // The other threat is unaffected.
    assert!(!err.contains("TS-2"), "{err}");
}

#[test]
fn verify_fails_when_the_v_soc_missed_a_linked_detection() {
    let run = Run::passing();
    run.scenario("freeze", "defeated", false);
    let err = failed(&run.verify());
    assert!(
        err.contains("TS-2:") && err.contains("detect:freeze FAILED"),
        "{err}"
    );
}

#[test]
fn verify_fails_naming_a_linked_scenario_that_was_removed() {
    let run = Run::passing();
    run.remove_scenario("rollback");
    let err = failed(&run.verify());
    assert!(
        err.contains("control C-ROLLBACK: names attack:rollback: an attack-lab scenario with no result in this run"),
        "{err}"
    );
    assert!(err.contains("R156 7.2.1.1: names attack:rollback"), "{err}");
    assert!(err.contains("TS-1: initial risk 5"), "{err}");
}

#[test]
fn verify_fails_on_a_scenario_linked_to_no_threat() {
    let run = Run::passing();
    run.scenario("teleport", "defeated", true);
    let err = failed(&run.verify());
    assert!(
        err.contains("scenario teleport: the attack lab runs it but no control names it"),
        "{err}"
    );
}

#[test]
fn verify_fails_on_a_linked_test_that_failed_or_does_not_exist() {
    let run = Run::passing();
    run.tests(&[
        ("fixture_suite", "rollback_is_refused", "FAILED"),
        (
            "rampart_core",
            "client::tests::expired_timestamp_is_a_freeze_attack",
            "ok",
        ),
    ]);
    let (_, err) = text(&run.verify());
    assert!(
        err.contains("C-ROLLBACK (test:fixture_suite::rollback_is_refused FAILED)"),
        "{err}"
    );

    run.tests(&[(
        "rampart_core",
        "client::tests::expired_timestamp_is_a_freeze_attack",
        "ok",
    )]);
    let err = failed(&run.verify());
    assert!(
        err.contains("names test:fixture_suite::rollback_is_refused: a test that is not in this run's test results"),
        "{err}"
    );
}

#[test]
fn verify_needs_the_results_of_a_run() {
    let err = failed(&tara(&["--verify"]));
    assert!(err.contains("--verify needs the results of a run"), "{err}");
}

#[test]
fn without_results_no_control_counts() {
    let o = tara(&[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("no results given"), "{out}");
    assert!(
        out.lines()
            .filter(|l| l.starts_with("TS-1 ") || l.starts_with("TS-2 "))
            .all(|l| l.contains("5 → 5")),
        "{out}"
    );
}

#[test]
fn a_broken_model_fails_every_use_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.toml");
    let text_ = std::fs::read_to_string(fixture())
        .unwrap()
        .replace("r155 = [\"13.1\"]", "r155 = [\"14.1\"]");
    std::fs::write(&model, text_).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["tara", "--model"])
        .arg(&model)
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("TS-2: R155 Annex 5 has no entry 14.1"),
        "{err}"
    );

    std::fs::write(&model, "[[threat]]\nid = 3\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["tara", "--model"])
        .arg(&model)
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("model.toml"), "{err}");
}

#[test]
fn the_report_is_self_contained_and_check_tells_when_it_is_stale() {
    let run = Run::passing();
    let out_dir = run.dir.path().join("report");
    let (attack, tests) = (run.attack(), run.test_report());
    let args = [
        "--attack-results",
        attack.to_str().unwrap(),
        "--test-results",
        tests.to_str().unwrap(),
        "--report",
        out_dir.to_str().unwrap(),
    ];
    let o = tara(&args);
    assert!(o.status.success(), "{:?}", text(&o));
    for f in [
        "README.md",
        "index.html",
        "heatmap.svg",
        "trees/TS-1.svg",
        "trees/TS-3.svg",
    ] {
        assert!(out_dir.join(f).is_file(), "{f} missing");
    }
    let html = std::fs::read_to_string(out_dir.join("index.html")).unwrap();
    // Nothing fetched: no external scripts, styles or images.
    for needle in ["<script", "src=\"http", "href=\"http", "<link"] {
        assert!(
            !html.contains(needle),
            "the report fetches something: {needle}"
        );
    }
    assert!(html.contains("<svg"), "pictures are inline");
    assert!(html.contains("12.1") && html.contains("7.2.1.1"));
    let md = std::fs::read_to_string(out_dir.join("README.md")).unwrap();
    assert!(md.contains("| 12.1 |") && md.contains("TS-1"), "{md}");
    assert!(md.contains("`attack:rollback` passed"), "{md}");
    // Every Annex 5 entry is in the coverage table, and the fixture's gaps are named.
    assert!(
        md.contains("| 4.2 |") && md.contains("**not covered**"),
        "{md}"
    );

    let mut check = args.to_vec();
    check.push("--check");
    let o = tara(&check);
    assert!(o.status.success(), "{:?}", text(&o));

    // The evidence changes: the committed report is stale.
    run.scenario("freeze", "succeeded", true);
    let err = failed(&tara(&check));
    assert!(
        err.contains("is not the report of this model and these results"),
        "{err}"
    );
    assert!(
        err.contains("README.md") && err.contains("trees/TS-2.svg"),
        "{err}"
    );
}

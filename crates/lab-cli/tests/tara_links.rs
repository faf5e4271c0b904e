//! The TARA (tara/) and the attack lab name the same scenarios: every scenario of the lab is
//! evidence for some control, and every scenario the TARA names exists. `rampart tara
//! --verify` checks the same against a run's results; this catches a renamed or new scenario
//! in a plain `cargo test`, before any run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use rampart_tara::evidence::Ref;
use rampart_tara::Model;

#[test]
fn every_scenario_is_linked_and_every_linked_scenario_exists() {
    let model = Model::rampart().unwrap();
    let named: BTreeSet<String> = model
        .controls
        .iter()
        .flat_map(|c| c.evidence.iter())
        .chain(model.r156.iter().flat_map(|r| r.evidence.iter()))
        .filter_map(|e| {
            Ref::parse(e)
                .ok()
                .and_then(|r| r.scenario())
                .map(str::to_owned)
        })
        .collect();
    let lab: BTreeSet<String> = rampart_attack::scenarios::infos()
        .iter()
        .map(|i| i.name.to_owned())
        .collect();
    let unlinked: Vec<_> = lab.difference(&named).collect();
    assert!(
        unlinked.is_empty(),
        "scenarios linked to no threat: {unlinked:?}"
    );
    let unknown: Vec<_> = named.difference(&lab).collect();
    assert!(
        unknown.is_empty(),
        "the TARA names scenarios the lab does not have: {unknown:?}"
    );
}

#[test]
fn detection_evidence_names_scenarios_that_expect_an_incident() {
    let model = Model::rampart().unwrap();
    for c in &model.controls {
        for e in &c.evidence {
            if let Ok(Ref::Detect(name)) = Ref::parse(e) {
                assert!(
                    !rampart_attack::scenarios::expected_incidents(name).is_empty(),
                    "{}: {e} expects no incident, so it can never pass",
                    c.id
                );
            }
        }
    }
}

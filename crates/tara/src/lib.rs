//! TARA as code: Rampart's threat analysis and risk assessment (ISO/SAE 21434 clause 15) kept
//! as data in `tara/`, rated by the standard's example scales, tied to the attack-lab
//! scenarios and tests that prove its controls, and reported.
//!
//! The crate decides and reads files; it runs nothing. `rampart tara` gives it the results
//! of a run (the attack lab's JSON outcomes, `cargo test`'s report) and prints or writes what
//! it decided. A control lowers a threat's feasibility only when every piece of its evidence
//! passed in those results: residual risk is computed from what was shown, never typed in.

pub mod assess;
pub mod evidence;
pub mod model;
pub mod r155;
pub mod rating;
pub mod report;

pub use assess::{assess, validate, Assessment, Finding};
pub use evidence::Results;
pub use model::Model;

/// The model of Rampart's own OTA item, built in (file name, TOML), so `rampart tara` works
/// from any folder; `--model tara/` reads the files instead.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("tara/item.toml", include_str!("../../../tara/item.toml")),
    (
        "tara/threats.toml",
        include_str!("../../../tara/threats.toml"),
    ),
    (
        "tara/controls.toml",
        include_str!("../../../tara/controls.toml"),
    ),
    (
        "tara/regulation.toml",
        include_str!("../../../tara/regulation.toml"),
    ),
];

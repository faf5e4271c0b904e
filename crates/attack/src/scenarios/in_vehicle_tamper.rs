//! man in the middle inside the vehicle (tampered image) (placeholder: being written).

use crate::{Findings, Harness, Info};

/// Description.
pub const INFO: Info = Info {
    name: "in-vehicle-tamper",
    attack: "man in the middle inside the vehicle (tampered image)",
    attacker: "(to be written)",
    control: "(to be written)",
    expected: "(to be written)",
};

/// Runs it.
pub async fn run(_h: Harness) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    f.check("scenario written", false, "not yet implemented");
    Ok(f)
}

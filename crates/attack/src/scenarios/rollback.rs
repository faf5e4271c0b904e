//! rollback (placeholder: being written).

use crate::{Findings, Harness, Info};

/// Description.
pub const INFO: Info = Info {
    name: "rollback",
    attack: "rollback",
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

//! root key rotation after compromise (placeholder: being written).

use crate::{Findings, Harness, Info};

/// Description.
pub const INFO: Info = Info {
    name: "root-rotation",
    attack: "root key rotation after compromise",
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

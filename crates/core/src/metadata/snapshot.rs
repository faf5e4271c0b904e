//! The snapshot role (TUF 4.4): the version of every targets metadata file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Expiry, MetaFile, RoleMetadata};
use crate::error::Result;

/// The `signed` part of snapshot metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Always `snapshot`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// TUF specification version.
    pub spec_version: String,
    /// Version.
    pub version: u64,
    /// Expiry.
    pub expires: Expiry,
    /// `ROLE.json` → version (and optional length and hashes) for targets and delegated roles.
    pub meta: BTreeMap<String, MetaFile>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl RoleMetadata for Snapshot {
    const TYPE: &'static str = "snapshot";

    super::common_role_fields!();
    fn validate(&self, role: &str) -> Result<()> {
        for (name, meta) in &self.meta {
            meta.validate(&format!("{role} meta {name}"))?;
        }
        Ok(())
    }
}

//! The timestamp role (TUF 4.6): the current snapshot version, re-signed often.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Expiry, MetaFile, RoleMetadata};
use crate::error::{Error, Result};

/// The `signed` part of timestamp metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timestamp {
    /// Always `timestamp`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// TUF specification version.
    pub spec_version: String,
    /// Version.
    pub version: u64,
    /// Expiry.
    pub expires: Expiry,
    /// Exactly one entry: `snapshot.json`.
    pub meta: BTreeMap<String, MetaFile>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl Timestamp {
    /// The snapshot entry (validated to exist at parse time).
    pub fn snapshot_meta(&self) -> Result<&MetaFile> {
        self.meta
            .get("snapshot.json")
            .ok_or_else(|| Error::MissingRole {
                role: "snapshot.json".into(),
                listed_in: "timestamp".into(),
            })
    }
}

impl RoleMetadata for Timestamp {
    const TYPE: &'static str = "timestamp";

    super::common_role_fields!();
    fn validate(&self, role: &str) -> Result<()> {
        if self.meta.len() != 1 {
            return Err(Error::malformed(
                role,
                "timestamp meta must list exactly snapshot.json",
            ));
        }
        self.snapshot_meta()?
            .validate(&format!("{role} meta snapshot.json"))
    }
}

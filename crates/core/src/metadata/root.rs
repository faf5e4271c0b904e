//! The root role (TUF 4.3): the keys and thresholds of every top-level role.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Expiry, RoleMetadata, TOP_LEVEL_ROLES};
use crate::error::{Error, Result};
use crate::key::{Key, KeyId};

/// Keys and threshold of one role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleKeys {
    /// Authorised key IDs.
    pub keyids: Vec<KeyId>,
    /// How many distinct keys must sign.
    pub threshold: u32,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl RoleKeys {
    /// Keys and threshold.
    pub fn new(keyids: Vec<KeyId>, threshold: u32) -> Self {
        RoleKeys {
            keyids,
            threshold,
            unrecognized: BTreeMap::new(),
        }
    }
}

/// Checks what every keys-and-threshold object must satisfy: threshold ≥ 1 and unique key IDs.
pub(crate) fn validate_role_keys(role: &str, keyids: &[KeyId], threshold: u32) -> Result<()> {
    if threshold == 0 {
        return Err(Error::malformed(role, "threshold must be at least 1"));
    }
    let unique: BTreeSet<&KeyId> = keyids.iter().collect();
    if unique.len() != keyids.len() {
        return Err(Error::malformed(role, "a key ID is listed twice"));
    }
    Ok(())
}

/// The `signed` part of root metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Root {
    /// Always `root`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// TUF specification version.
    pub spec_version: String,
    /// Whether the repository publishes consistent snapshots (`N.role.json`, `HASH.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_snapshot: Option<bool>,
    /// Version.
    pub version: u64,
    /// Expiry.
    pub expires: Expiry,
    /// All keys used by the top-level roles.
    pub keys: BTreeMap<KeyId, Key>,
    /// Keys and threshold of root, timestamp, snapshot and targets.
    pub roles: BTreeMap<String, RoleKeys>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl Root {
    /// Keys and threshold of a top-level role (validated to exist at parse time).
    pub fn role(&self, name: &str) -> Result<&RoleKeys> {
        self.roles.get(name).ok_or_else(|| Error::MissingRole {
            role: name.to_owned(),
            listed_in: "root".to_owned(),
        })
    }

    /// Whether consistent snapshots are on (absent means off).
    pub fn consistent_snapshot(&self) -> bool {
        self.consistent_snapshot.unwrap_or(false)
    }

    /// The set of key material authorised for `role`, to tell whether keys rotated.
    pub fn role_key_material(&self, role: &str) -> BTreeSet<Vec<u8>> {
        let mut out = BTreeSet::new();
        if let Some(r) = self.roles.get(role) {
            for id in &r.keyids {
                if let Some(public) = self.keys.get(id).and_then(|k| k.parse(id).ok()) {
                    out.insert(public.material().to_vec());
                } else {
                    // Unusable keys still count as "different" material for rotation purposes.
                    out.insert(id.0.as_bytes().to_vec());
                }
            }
        }
        out
    }
}

impl RoleMetadata for Root {
    const TYPE: &'static str = "root";

    super::common_role_fields!();
    fn validate(&self, role: &str) -> Result<()> {
        for name in TOP_LEVEL_ROLES {
            let r = self.role(name)?;
            validate_role_keys(&format!("{role} role {name}"), &r.keyids, r.threshold)?;
        }
        if let Some(extra) = self
            .roles
            .keys()
            .find(|k| !TOP_LEVEL_ROLES.contains(&k.as_str()))
        {
            return Err(Error::malformed(
                role,
                format!("unknown role {extra:?} in root"),
            ));
        }
        Ok(())
    }
}

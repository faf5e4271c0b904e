//! The targets role and delegated targets roles (TUF 4.5).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::root::validate_role_keys;
use super::{delegation, Expiry, RoleMetadata, TargetMap, TOP_LEVEL_ROLES};
use crate::error::{Error, Result};
use crate::hash::Hashes;
use crate::key::{Key, KeyId};

/// A target file's description: length, hashes, and the opaque `custom` object where Uptane
/// puts hardware IDs, release counters, ECU IDs and encryption parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetFile {
    /// Exact length in bytes.
    pub length: u64,
    /// At least one hash.
    pub hashes: Hashes,
    /// Application-specific data, kept verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Value>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

/// A role that a targets role delegates to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DelegatedRole {
    /// Role name (also its metadata file name, `NAME.json`).
    pub name: String,
    /// Authorised key IDs (looked up in the delegating role's `delegations.keys`).
    pub keyids: Vec<KeyId>,
    /// Signatures needed.
    pub threshold: u32,
    /// If this role is trusted for a target, stop looking further down the list.
    pub terminating: bool,
    /// Shell-style path patterns this role may sign for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Hex prefixes of SHA-256(target path) this role may sign for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hash_prefixes: Option<Vec<String>>,
    /// Unknown fields (Rampart's `hardware_ids` restriction among them), kept verbatim.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

/// Name of the Uptane extension field on a delegated role that restricts it to hardware IDs.
pub const HARDWARE_IDS_FIELD: &str = "hardware_ids";

impl DelegatedRole {
    /// Whether this role may sign for `target_path`.
    pub fn is_delegated_path(&self, target_path: &str) -> bool {
        delegation::is_delegated_path(
            self.paths.as_deref(),
            self.path_hash_prefixes.as_deref(),
            target_path,
        )
    }

    /// The hardware IDs this role is restricted to (Uptane image repository delegations to
    /// suppliers); `None` means no restriction.
    pub fn hardware_ids(&self) -> Option<Vec<String>> {
        let list = self.unrecognized.get(HARDWARE_IDS_FIELD)?.as_array()?;
        Some(
            list.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        )
    }
}

/// A role that may sign for a given target, as the delegation walk sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegate {
    /// Role name.
    pub name: String,
    /// Stop after this role if it is consulted.
    pub terminating: bool,
    /// Uptane hardware-ID restriction, if any.
    pub hardware_ids: Option<Vec<String>>,
}

/// TAP 15 succinct hash-bin delegations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuccinctRoles {
    /// Key IDs shared by every bin.
    pub keyids: Vec<KeyId>,
    /// Signatures needed.
    pub threshold: u32,
    /// Number of leading hash bits that select a bin (1–32).
    pub bit_length: u32,
    /// Bin roles are named `PREFIX-HEX`.
    pub name_prefix: String,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl SuccinctRoles {
    /// Whether `name` is one of the bins.
    pub fn is_bin(&self, name: &str) -> bool {
        let Some(suffix) = name
            .strip_prefix(self.name_prefix.as_str())
            .and_then(|s| s.strip_prefix('-'))
        else {
            return false;
        };
        let width = self.bit_length.div_ceil(4) as usize;
        suffix.len() == width
            && suffix
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && u64::from_str_radix(suffix, 16).is_ok_and(|n| n < (1u64 << self.bit_length))
    }
}

/// The `delegations` object of a targets role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delegations {
    /// Keys of the delegated roles.
    pub keys: BTreeMap<KeyId, Key>,
    /// Delegated roles in priority order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<DelegatedRole>>,
    /// Hash-bin delegations (instead of `roles`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succinct_roles: Option<SuccinctRoles>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl Delegations {
    /// Key IDs and threshold for the delegated role `name`, if this object delegates to it.
    pub fn role_keys(&self, name: &str) -> Option<(&[KeyId], u32)> {
        if let Some(roles) = &self.roles {
            return roles
                .iter()
                .find(|r| r.name == name)
                .map(|r| (r.keyids.as_slice(), r.threshold));
        }
        if let Some(s) = &self.succinct_roles {
            if s.is_bin(name) {
                return Some((s.keyids.as_slice(), s.threshold));
            }
        }
        None
    }

    /// The roles that may sign for `target_path`, in the order to visit them.
    pub fn roles_for_target(&self, target_path: &str) -> Vec<Delegate> {
        if let Some(roles) = &self.roles {
            return roles
                .iter()
                .filter(|r| r.is_delegated_path(target_path))
                .map(|r| Delegate {
                    name: r.name.clone(),
                    terminating: r.terminating,
                    hardware_ids: r.hardware_ids(),
                })
                .collect();
        }
        if let Some(s) = &self.succinct_roles {
            return vec![Delegate {
                name: delegation::succinct_role_for(s, target_path),
                terminating: false,
                hardware_ids: None,
            }];
        }
        Vec::new()
    }

    fn validate(&self, role: &str) -> Result<()> {
        match (&self.roles, &self.succinct_roles) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(Error::malformed(
                    role,
                    "delegations need exactly one of roles and succinct_roles",
                ))
            }
            (Some(roles), None) => {
                let mut names = BTreeSet::new();
                for r in roles {
                    if TOP_LEVEL_ROLES.contains(&r.name.as_str()) {
                        return Err(Error::malformed(
                            role,
                            format!("delegated role may not be named {:?}", r.name),
                        ));
                    }
                    if !names.insert(r.name.as_str()) {
                        return Err(Error::malformed(
                            role,
                            format!("delegated role {:?} listed twice", r.name),
                        ));
                    }
                    if r.paths.is_some() && r.path_hash_prefixes.is_some() {
                        return Err(Error::malformed(
                            role,
                            format!("role {:?} has both paths and path_hash_prefixes", r.name),
                        ));
                    }
                    validate_role_keys(
                        &format!("{role} delegation {}", r.name),
                        &r.keyids,
                        r.threshold,
                    )?;
                }
            }
            (None, Some(s)) => {
                if !(1..=32).contains(&s.bit_length) {
                    return Err(Error::malformed(
                        role,
                        "succinct_roles bit_length must be 1..=32",
                    ));
                }
                validate_role_keys(&format!("{role} succinct_roles"), &s.keyids, s.threshold)?;
            }
        }
        Ok(())
    }
}

/// The `signed` part of targets (or delegated targets) metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    /// Always `targets`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// TUF specification version.
    pub spec_version: String,
    /// Version.
    pub version: u64,
    /// Expiry.
    pub expires: Expiry,
    /// Target path → description (entries of a document read are built when used).
    pub targets: TargetMap,
    /// Delegations to other roles, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegations: Option<Delegations>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl RoleMetadata for Targets {
    const TYPE: &'static str = "targets";

    super::common_role_fields!();
    fn validate(&self, role: &str) -> Result<()> {
        if let Some(name) = self.targets.first_without_hashes() {
            return Err(Error::malformed(
                role,
                format!("target {name:?} has no hashes"),
            ));
        }
        if let Some(d) = &self.delegations {
            d.validate(role)?;
        }
        Ok(())
    }
}

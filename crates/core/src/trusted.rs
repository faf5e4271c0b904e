//! The trusted metadata set: every check of the TUF client workflow (TUF 5.3–5.6), one
//! method per role update.
//!
//! A [`TrustedSet`] starts from a trusted root and only ever moves forward. Each `update_*`
//! method takes the bytes of one document and either accepts them (they become trusted and the
//! caller should persist exactly those bytes) or names the rule that failed and leaves the set
//! as it was — with one deliberate exception kept from python-tuf: an *expired* timestamp or a
//! snapshot that is not yet the final one is kept as trusted (and an error returned) so that
//! it still protects against rollback of the next one, while the refresh as a whole fails.
//!
//! The order is enforced: root updates only before timestamp, snapshot after timestamp,
//! targets after snapshot, a delegated role after its delegator.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::hash;
use crate::metadata::{Envelope, MetaFile, RoleMetadata, Root, Snapshot, Targets, Timestamp};

/// A verified document and the exact bytes it was read from.
#[derive(Debug, Clone)]
pub struct Verified<T> {
    /// The typed `signed` part.
    pub signed: T,
    /// The bytes that were accepted (what a client persists).
    pub bytes: Vec<u8>,
}

/// Trusted metadata of one repository.
#[derive(Debug, Clone)]
pub struct TrustedSet {
    repository: String,
    reference_time: DateTime<Utc>,
    root: Verified<Root>,
    timestamp: Option<Verified<Timestamp>>,
    snapshot: Option<Verified<Snapshot>>,
    targets: BTreeMap<String, Verified<Targets>>,
    /// The delegator each targets role was last verified against. A role may be delegated
    /// by several parents with different keys; trust through one says nothing about another.
    verified_under: BTreeMap<String, String>,
}

fn check_expiry<T: RoleMetadata>(role: &str, signed: &T, now: DateTime<Utc>) -> Result<()> {
    if signed.expires().is_expired(now) {
        return Err(Error::ExpiredMetadata {
            role: role.to_owned(),
            expires: signed.expires().to_string(),
            now: now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        });
    }
    Ok(())
}

fn check_meta(what: &str, bytes: &[u8], meta: &MetaFile) -> Result<()> {
    hash::verify_bytes(what, bytes, meta.length, meta.hashes.as_ref())
}

impl TrustedSet {
    /// Starts from a root the caller already trusts (shipped with the device or persisted by an
    /// earlier run). It must be signed by its own root threshold; its expiry is *not* checked
    /// here (an expired local root is fine as a starting point for rotation, TUF 5.3.2).
    pub fn new(repository: &str, root_bytes: &[u8], reference_time: DateTime<Utc>) -> Result<Self> {
        let env = Envelope::parse(root_bytes, "root")?;
        let root: Root = env.typed("root")?;
        let role = root.role("root")?;
        env.verify("root", &root.keys, &role.keyids, role.threshold)?;
        Ok(TrustedSet {
            repository: repository.to_owned(),
            reference_time,
            root: Verified {
                signed: root,
                bytes: root_bytes.to_vec(),
            },
            timestamp: None,
            snapshot: None,
            targets: BTreeMap::new(),
            verified_under: BTreeMap::new(),
        })
    }

    /// Name of the repository (for errors and logs).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The reference time all expiry checks use.
    pub fn reference_time(&self) -> DateTime<Utc> {
        self.reference_time
    }

    /// Trusted root.
    pub fn root(&self) -> &Verified<Root> {
        &self.root
    }

    /// Trusted timestamp, if loaded.
    pub fn timestamp(&self) -> Option<&Verified<Timestamp>> {
        self.timestamp.as_ref()
    }

    /// Trusted snapshot, if loaded.
    pub fn snapshot(&self) -> Option<&Verified<Snapshot>> {
        self.snapshot.as_ref()
    }

    /// Trusted top-level or delegated targets role, if loaded.
    pub fn targets(&self, role: &str) -> Option<&Verified<Targets>> {
        self.targets.get(role)
    }

    /// The delegator `role` was last verified against (`root` for top-level targets).
    pub fn delegator_of(&self, role: &str) -> Option<&str> {
        self.verified_under.get(role).map(String::as_str)
    }

    /// Checks an already trusted targets role again, against `delegator`'s keys and
    /// threshold: the delegation walk reached it through a parent other than the one it was
    /// verified under (TUF 5.6.7.2 holds per delegation, not per role name).
    pub fn reverify_targets(&mut self, role: &str, delegator: &str) -> Result<()> {
        let bytes = self
            .targets
            .get(role)
            .map(|v| v.bytes.clone())
            .ok_or_else(|| Error::Workflow(format!("role {role} is not loaded")))?;
        self.update_delegated_targets(&bytes, role, delegator)
    }

    /// Every loaded targets role (top-level and delegated), by name.
    pub fn target_roles(&self) -> impl Iterator<Item = (&String, &Verified<Targets>)> {
        self.targets.iter()
    }

    /// TUF 5.3.4–5.3.9: accepts root version N+1, signed by the threshold of the trusted root
    /// *and* by its own threshold. Expiry is checked later, on the final root.
    pub fn update_root(&mut self, bytes: &[u8]) -> Result<()> {
        if self.timestamp.is_some() {
            return Err(Error::Workflow(
                "root cannot be updated after timestamp".into(),
            ));
        }
        let env = Envelope::parse(bytes, "root")?;
        if let Some(found) = env.type_field() {
            if found != "root" {
                return Err(Error::WrongType {
                    expected: "root".into(),
                    found: found.into(),
                });
            }
        }
        // Signatures by the old root first: nothing of an unauthorised document is trusted.
        let old = &self.root.signed;
        let old_role = old.role("root")?;
        env.verify("root", &old.keys, &old_role.keyids, old_role.threshold)?;
        let new: Root = env.typed("root")?;
        let new_role = new.role("root")?;
        env.verify("root", &new.keys, &new_role.keyids, new_role.threshold)?;
        let expected = old.version.saturating_add(1);
        if new.version != expected {
            if new.version < expected {
                return Err(Error::OlderMetadata {
                    role: "root".into(),
                    trusted: old.version,
                    new: new.version,
                });
            }
            return Err(Error::VersionMismatch {
                role: "root".into(),
                expected,
                found: new.version,
                listed_by: "the root chain".into(),
            });
        }
        self.root = Verified {
            signed: new,
            bytes: bytes.to_vec(),
        };
        Ok(())
    }

    /// TUF 5.3.10: the final root must not be expired.
    pub fn check_root_not_expired(&self) -> Result<()> {
        check_expiry("root", &self.root.signed, self.reference_time)
    }

    /// TUF 5.4: timestamp signed by the root's timestamp keys, not older than the trusted one,
    /// not listing an older snapshot, not expired.
    ///
    /// Returns [`Error::EqualVersion`] when the offered version is the trusted one (the trusted
    /// copy is kept; not an error for the workflow).
    pub fn update_timestamp(&mut self, bytes: &[u8]) -> Result<()> {
        if self.snapshot.is_some() {
            return Err(Error::Workflow(
                "timestamp cannot be updated after snapshot".into(),
            ));
        }
        self.check_root_not_expired()?;
        let env = Envelope::parse(bytes, "timestamp")?;
        let root = &self.root.signed;
        let role = root.role("timestamp")?;
        if let Some(found) = env.type_field().filter(|t| *t != "timestamp") {
            return Err(Error::WrongType {
                expected: "timestamp".into(),
                found: found.into(),
            });
        }
        env.verify("timestamp", &root.keys, &role.keyids, role.threshold)?;
        let new: Timestamp = env.typed("timestamp")?;
        if let Some(old) = &self.timestamp {
            let old = &old.signed;
            if new.version < old.version {
                return Err(Error::OlderMetadata {
                    role: "timestamp".into(),
                    trusted: old.version,
                    new: new.version,
                });
            }
            if new.version == old.version {
                return Err(Error::EqualVersion {
                    role: "timestamp".into(),
                    version: new.version,
                });
            }
            let (old_snap, new_snap) = (old.snapshot_meta()?.version, new.snapshot_meta()?.version);
            if new_snap < old_snap {
                return Err(Error::OlderMetadata {
                    role: "snapshot (as listed by timestamp)".into(),
                    trusted: old_snap,
                    new: new_snap,
                });
            }
        }
        // Kept even if expired: it still guards against rollback of the next timestamp.
        self.timestamp = Some(Verified {
            signed: new,
            bytes: bytes.to_vec(),
        });
        self.check_final_timestamp().map(|_| ())
    }

    fn check_final_timestamp(&self) -> Result<&Timestamp> {
        let ts = self
            .timestamp
            .as_ref()
            .ok_or_else(|| Error::Workflow("timestamp must be loaded first".into()))?;
        check_expiry("timestamp", &ts.signed, self.reference_time)?;
        Ok(&ts.signed)
    }

    /// TUF 5.5: snapshot matching the timestamp's hashes and length (unless it was read from
    /// local trusted storage), signed by the root's snapshot keys, not dropping or rolling
    /// back any role listed by the trusted snapshot, not expired, and of the version the
    /// timestamp names.
    pub fn update_snapshot(&mut self, bytes: &[u8], from_local_storage: bool) -> Result<()> {
        if !self.targets.is_empty() {
            return Err(Error::Workflow(
                "snapshot cannot be updated after targets".into(),
            ));
        }
        let ts = self.check_final_timestamp()?;
        let snapshot_meta = ts.snapshot_meta()?.clone();
        if !from_local_storage {
            check_meta("snapshot", bytes, &snapshot_meta)?;
        }
        let env = Envelope::parse(bytes, "snapshot")?;
        if let Some(found) = env.type_field().filter(|t| *t != "snapshot") {
            return Err(Error::WrongType {
                expected: "snapshot".into(),
                found: found.into(),
            });
        }
        let root = &self.root.signed;
        let role = root.role("snapshot")?;
        env.verify("snapshot", &root.keys, &role.keyids, role.threshold)?;
        let new: Snapshot = env.typed("snapshot")?;
        if let Some(old) = &self.snapshot {
            for (name, old_meta) in &old.signed.meta {
                let new_meta = new.meta.get(name).ok_or_else(|| Error::MissingRole {
                    role: name.clone(),
                    listed_in: format!("snapshot version {}", new.version),
                })?;
                if new_meta.version < old_meta.version {
                    return Err(Error::OlderMetadata {
                        role: format!("{} (as listed by snapshot)", name.trim_end_matches(".json")),
                        trusted: old_meta.version,
                        new: new_meta.version,
                    });
                }
            }
        }
        self.snapshot = Some(Verified {
            signed: new,
            bytes: bytes.to_vec(),
        });
        self.check_final_snapshot().map(|_| ())
    }

    fn check_final_snapshot(&self) -> Result<&Snapshot> {
        let snap = self
            .snapshot
            .as_ref()
            .ok_or_else(|| Error::Workflow("snapshot must be loaded first".into()))?;
        check_expiry("snapshot", &snap.signed, self.reference_time)?;
        let expected = self.check_final_timestamp()?.snapshot_meta()?.version;
        if snap.signed.version != expected {
            return Err(Error::VersionMismatch {
                role: "snapshot".into(),
                expected,
                found: snap.signed.version,
                listed_by: "timestamp".into(),
            });
        }
        Ok(&snap.signed)
    }

    /// TUF 5.6: the top-level targets role.
    pub fn update_targets(&mut self, bytes: &[u8]) -> Result<()> {
        self.update_delegated_targets(bytes, "targets", "root")
    }

    /// TUF 5.6 (and 5.6.7.2 for delegated roles): the role must be listed in the snapshot,
    /// match its length and hashes if listed, be signed by the threshold of keys its delegator
    /// names, have the version the snapshot names, and not be expired.
    pub fn update_delegated_targets(
        &mut self,
        bytes: &[u8],
        role: &str,
        delegator: &str,
    ) -> Result<()> {
        let snapshot = self.check_final_snapshot()?;
        let meta = snapshot
            .meta
            .get(&format!("{role}.json"))
            .ok_or_else(|| Error::MissingRole {
                role: role.to_owned(),
                listed_in: "snapshot".into(),
            })?
            .clone();
        let new = hash::verify_bytes_while(role, bytes, meta.length, meta.hashes.as_ref(), || {
            self.read_targets(bytes, role, delegator)
        })?;
        if new.version != meta.version {
            return Err(Error::VersionMismatch {
                role: role.to_owned(),
                expected: meta.version,
                found: new.version,
                listed_by: "snapshot".into(),
            });
        }
        check_expiry(role, &new, self.reference_time)?;
        self.verified_under
            .insert(role.to_owned(), delegator.to_owned());
        self.targets.insert(
            role.to_owned(),
            Verified {
                signed: new,
                bytes: bytes.to_vec(),
            },
        );
        Ok(())
    }

    /// A targets role's bytes parsed, checked against its delegator's keys and threshold, and
    /// typed; nothing is changed (see [`hash::verify_bytes_while`]).
    fn read_targets(&self, bytes: &[u8], role: &str, delegator: &str) -> Result<Targets> {
        let env = Envelope::parse(bytes, role)?;
        if let Some(found) = env.type_field().filter(|t| *t != "targets") {
            return Err(Error::WrongType {
                expected: "targets".into(),
                found: found.into(),
            });
        }
        if delegator == "root" {
            let root = &self.root.signed;
            let keys = root.role(role)?;
            env.verify(role, &root.keys, &keys.keyids, keys.threshold)?;
        } else {
            let parent = self.targets.get(delegator).ok_or_else(|| {
                Error::Workflow(format!(
                    "delegator {delegator} must be loaded before {role}"
                ))
            })?;
            let delegations =
                parent
                    .signed
                    .delegations
                    .as_ref()
                    .ok_or_else(|| Error::MissingRole {
                        role: role.to_owned(),
                        listed_in: format!("{delegator} delegations"),
                    })?;
            let (keyids, threshold) =
                delegations
                    .role_keys(role)
                    .ok_or_else(|| Error::MissingRole {
                        role: role.to_owned(),
                        listed_in: format!("{delegator} delegations"),
                    })?;
            env.verify(role, &delegations.keys, keyids, threshold)?;
        }
        env.typed(role)
    }
}

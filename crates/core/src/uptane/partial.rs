//! Uptane partial verification (Uptane 5.4.4.1), for ECUs too small for full verification:
//! only the director's targets metadata, checked against the director's targets key.

use chrono::{DateTime, Utc};

use super::director::{verify_director_targets, DirectorInstruction};
use super::{check_release_counter, InstalledImage};
use crate::error::{Error, Result};
use crate::metadata::{Envelope, RoleMetadata, Targets};
use crate::trusted::TrustedSet;

/// The outcome of one partial verification.
#[derive(Debug, Clone, PartialEq)]
pub struct PartialOutcome {
    /// Version of the director targets accepted (persist it: it is the new floor).
    pub targets_version: u64,
    /// The instruction for this ECU, unless the director has none or it is already installed.
    pub instruction: Option<DirectorInstruction>,
}

/// Partial verification state of one ECU: the director's root and the last targets version.
#[derive(Debug, Clone)]
pub struct PartialVerifier {
    trusted: TrustedSet,
    targets_version: Option<u64>,
}

impl PartialVerifier {
    /// Starts from the ECU's trusted director root and the last accepted targets version.
    pub fn new(
        director_root: &[u8],
        targets_version: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<Self> {
        Ok(PartialVerifier {
            trusted: TrustedSet::new("director", director_root, now)?,
            targets_version,
        })
    }

    /// Follows a director root rotation sent by the primary (same rules as TUF 5.3).
    pub fn update_root(&mut self, bytes: &[u8]) -> Result<()> {
        self.trusted.update_root(bytes)
    }

    /// The trusted director root bytes (persist them after root updates).
    pub fn root_bytes(&self) -> &[u8] {
        &self.trusted.root().bytes
    }

    /// Checks director targets for this ECU: signed by the director's targets threshold, not
    /// expired, not older than the last accepted, naming this vehicle; this ECU's entry has its
    /// hardware ID and no lower release counter than installed.
    pub fn verify(
        &mut self,
        director_targets: &[u8],
        vin: &str,
        ecu_id: &str,
        hardware_id: &str,
        installed: Option<&InstalledImage>,
    ) -> Result<PartialOutcome> {
        self.trusted.check_root_not_expired()?;
        let env = Envelope::parse(director_targets, "targets")?;
        if let Some(found) = env.type_field().filter(|t| *t != "targets") {
            return Err(Error::WrongType {
                expected: "targets".into(),
                found: found.into(),
            });
        }
        let root = &self.trusted.root().signed;
        let role = root.role("targets")?;
        env.verify("targets", &root.keys, &role.keyids, role.threshold)?;
        let targets: Targets = env.typed("targets")?;
        if let Some(trusted) = self.targets_version {
            if targets.version < trusted {
                return Err(Error::OlderMetadata {
                    role: "director targets".into(),
                    trusted,
                    new: targets.version,
                });
            }
        }
        let now = self.trusted.reference_time();
        if targets.expires().is_expired(now) {
            return Err(Error::ExpiredMetadata {
                role: "director targets".into(),
                expires: targets.expires().to_string(),
                now: now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            });
        }
        let instruction = verify_director_targets(&targets, vin, None)?
            .into_iter()
            .find(|i| i.ecu_id == ecu_id);
        if let Some(i) = &instruction {
            if i.hardware_id != hardware_id {
                return Err(Error::HardwareIdMismatch {
                    target: i.target.clone(),
                    expected: hardware_id.to_owned(),
                    found: i.hardware_id.clone(),
                });
            }
            check_release_counter(
                &i.target,
                installed.map(|x| x.release_counter),
                i.release_counter,
            )?;
        }
        self.targets_version = Some(targets.version);
        let already = |i: &DirectorInstruction| {
            installed.is_some_and(|x| {
                x.filename == i.target && x.length == i.file.length && x.hashes == i.file.hashes
            })
        };
        Ok(PartialOutcome {
            targets_version: targets.version,
            instruction: instruction.filter(|i| !already(i)),
        })
    }
}

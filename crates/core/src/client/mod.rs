//! The TUF client workflow (TUF 5.3–5.7) as a sans-IO state machine.
//!
//! The [`Client`] decides what to read, fetch, persist and delete; the caller performs it and
//! hands the result back. Driving it looks like this:
//!
//! ```text
//! let mut client = Client::new("image", &local_root, now, Config::default())?;
//! client.start_refresh();
//! loop {
//!     match client.next_action()? {
//!         Action::ReadLocal { name } => client.provide_local(read_file(&name))?,
//!         Action::Fetch { path, max_length } => client.provide_fetched(&path, http_get(&path, max_length))?,
//!         Action::Persist { name, bytes } => write_atomically(&name, &bytes),
//!         Action::Remove { name } => remove_file(&name),
//!         Action::Done => break,
//!     }
//! }
//! ```
//!
//! The same machine runs on a primary (fetching over HTTPS), on a full-verification secondary
//! (answering fetches from the bundle its primary sent) and in tests (answering from memory).
//! Persist actions carry exactly the bytes that were accepted, under unversioned names
//! (`root.json`, `timestamp.json`, `snapshot.json`, `targets.json`, `ROLE.json` with the role
//! name percent-encoded).

use std::collections::{BTreeSet, VecDeque};

use chrono::{DateTime, Utc};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::error::{Error, Result};
use crate::metadata::TargetFile;
use crate::trusted::TrustedSet;

/// Limits of the workflow. Defaults follow python-tuf's `UpdaterConfig`.
#[derive(Debug, Clone)]
pub struct Config {
    /// How many root versions one refresh may walk (TUF 5.3.3).
    pub max_root_rotations: u32,
    /// How many roles one target search may visit (TUF 5.6.7).
    pub max_delegations: u32,
    /// How deep one target search may go below the top-level targets role.
    pub max_delegation_depth: u32,
    /// Fixed maximum for root metadata when no signed length is known.
    pub root_max_length: u64,
    /// Fixed maximum for timestamp metadata.
    pub timestamp_max_length: u64,
    /// Fixed maximum for snapshot metadata when timestamp lists no length.
    pub snapshot_max_length: u64,
    /// Fixed maximum for targets metadata when snapshot lists no length.
    pub targets_max_length: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_root_rotations: 256,
            max_delegations: 32,
            max_delegation_depth: 32,
            root_max_length: 512_000,
            timestamp_max_length: 16_384,
            snapshot_max_length: 2_000_000,
            targets_max_length: 5_000_000,
        }
    }
}

/// What the caller must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read a file from trusted local storage and call [`Client::provide_local`].
    ReadLocal {
        /// Unversioned file name (`timestamp.json`, `ROLE.json`, …).
        name: String,
    },
    /// Fetch a file from the repository (relative to its metadata URL), reading at most
    /// `max_length` bytes, and call [`Client::provide_fetched`].
    Fetch {
        /// Path relative to the metadata base (`2.root.json`, `timestamp.json`, …).
        path: String,
        /// Hard bound on the download (endless data).
        max_length: u64,
    },
    /// Write these exact bytes to trusted local storage (write temp, fsync, rename).
    Persist {
        /// Unversioned file name.
        name: String,
        /// Accepted bytes.
        bytes: Vec<u8>,
    },
    /// Delete a trusted local file (fast-forward recovery after key rotation, TUF 5.3.11).
    Remove {
        /// Unversioned file name.
        name: String,
    },
    /// The requested operation is complete; see [`Client::found_target`] after a lookup.
    Done,
}

/// Result of a fetch, as far as the workflow cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The bytes received (already cut at `max_length` by the caller, or longer: the machine
    /// checks again).
    Bytes(Vec<u8>),
    /// The server answered 403/404: the file does not exist.
    NotFound,
}

/// A target found by the delegation walk.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetInfo {
    /// Target path.
    pub path: String,
    /// Length, hashes and custom data as signed.
    pub file: TargetFile,
    /// The role that signed it.
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    RootChain {
        next_version: u64,
        fetched: u32,
    },
    LocalTimestamp,
    RemoteTimestamp,
    LocalSnapshot,
    RemoteSnapshot,
    /// Loading one targets role, then going on with `then`.
    LoadTargets {
        load: Load,
        then: Box<Then>,
    },
    Walk(Walk),
    Finished,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Then {
    FinishRefresh,
    ContinueWalk(Walk),
}

/// Loading one targets role: the local copy first, then the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Load {
    role: String,
    delegator: String,
    remote: bool,
}

/// The pre-order delegation walk for one target (TUF 5.6.7).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Walk {
    target: String,
    hardware_id: Option<String>,
    /// Roles still to visit: (role, delegator, depth).
    stack: Vec<(String, String, u32)>,
    visited: BTreeSet<String>,
    /// The role being visited; it is loaded when the walk resumes.
    current: Option<(String, u32)>,
}

/// The TUF client state machine for one repository.
#[derive(Debug, Clone)]
pub struct Client {
    config: Config,
    trusted: TrustedSet,
    phase: Phase,
    pending: VecDeque<Action>,
    initial_root: Option<crate::metadata::Root>,
    found: Option<TargetInfo>,
    refreshed: bool,
}

/// Characters `quote` leaves as they are: python-tuf's `urllib.parse.quote(name, "")` keeps
/// ASCII letters, digits and `_.-~`; everything else (`/` included) is percent-encoded, so
/// `../x` becomes `..%2Fx` and can never leave the metadata directory.
const QUOTE_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~');

/// `urllib.parse.quote(s, "")`: the encoding python-tuf uses for role names in file names and
/// URLs.
pub fn quote(s: &str) -> String {
    utf8_percent_encode(s, QUOTE_KEEP).to_string()
}

/// The unversioned file name of a role's metadata (`ROLE.json`, role name quoted). Because
/// `.json` is appended, even the roles `.` and `..` give plain names (`..json`, `...json`),
/// exactly as python-tuf names them.
pub fn metadata_file_name(role: &str) -> String {
    format!("{}.json", quote(role))
}

/// A name made safe to use *alone* as a file name or URL path segment: quoted, and `.` / `..`
/// (which quoting keeps) escaped so they cannot mean "this" or "parent" directory.
pub fn safe_file_name(name: &str) -> String {
    match name {
        "." => "%2E".into(),
        ".." => "%2E%2E".into(),
        _ => quote(name),
    }
}

impl Client {
    /// A client for `repository` starting from a trusted root (see [`TrustedSet::new`]).
    pub fn new(
        repository: &str,
        trusted_root: &[u8],
        reference_time: DateTime<Utc>,
        config: Config,
    ) -> Result<Self> {
        Ok(Client {
            config,
            trusted: TrustedSet::new(repository, trusted_root, reference_time)?,
            phase: Phase::Idle,
            pending: VecDeque::new(),
            initial_root: None,
            found: None,
            refreshed: false,
        })
    }

    /// The trusted metadata.
    pub fn trusted(&self) -> &TrustedSet {
        &self.trusted
    }

    /// Whether a refresh has completed: top-level metadata is current and verified.
    pub fn is_refreshed(&self) -> bool {
        self.refreshed
    }

    /// Begins the refresh: root chain, timestamp, snapshot, top-level targets (TUF 5.3–5.6).
    pub fn start_refresh(&mut self) {
        self.initial_root = Some(self.trusted.root().signed.clone());
        let next_version = self.trusted.root().signed.version.saturating_add(1);
        self.phase = Phase::RootChain {
            next_version,
            fetched: 0,
        };
    }

    /// Begins a search for `target` through the delegation graph (TUF 5.6.7). With a hardware
    /// ID, delegated roles restricted to other hardware IDs are skipped (Uptane). Requires a
    /// completed refresh.
    pub fn start_lookup(&mut self, target: &str, hardware_id: Option<&str>) -> Result<()> {
        if !self.refreshed {
            return Err(Error::Workflow(
                "refresh must complete before a target lookup".into(),
            ));
        }
        self.found = None;
        self.phase = Phase::Walk(Walk {
            target: target.to_owned(),
            hardware_id: hardware_id.map(str::to_owned),
            stack: vec![("targets".into(), "root".into(), 0)],
            visited: BTreeSet::new(),
            current: None,
        });
        Ok(())
    }

    /// The target found by the last lookup.
    pub fn found_target(&self) -> Option<&TargetInfo> {
        self.found.as_ref()
    }

    /// The next thing the caller must do.
    pub fn next_action(&mut self) -> Result<Action> {
        if let Some(action) = self.pending.pop_front() {
            return Ok(action);
        }
        if let Phase::Walk(walk) = &self.phase {
            let walk = walk.clone();
            self.advance_walk(walk)?;
            if let Some(action) = self.pending.pop_front() {
                return Ok(action);
            }
        }
        Ok(match &self.phase {
            Phase::Idle | Phase::Finished | Phase::Walk(_) => Action::Done,
            Phase::RootChain { next_version, .. } => Action::Fetch {
                path: format!("{next_version}.root.json"),
                max_length: self.config.root_max_length,
            },
            Phase::LocalTimestamp => Action::ReadLocal {
                name: "timestamp.json".into(),
            },
            Phase::RemoteTimestamp => Action::Fetch {
                path: "timestamp.json".into(),
                max_length: self.config.timestamp_max_length,
            },
            Phase::LocalSnapshot => Action::ReadLocal {
                name: "snapshot.json".into(),
            },
            Phase::RemoteSnapshot => {
                let ts = self
                    .trusted
                    .timestamp()
                    .ok_or_else(|| Error::Workflow("no timestamp".into()))?;
                let meta = ts.signed.snapshot_meta()?;
                let path = if self.trusted.root().signed.consistent_snapshot() {
                    format!("{}.snapshot.json", meta.version)
                } else {
                    "snapshot.json".into()
                };
                Action::Fetch {
                    path,
                    max_length: meta.length.unwrap_or(self.config.snapshot_max_length),
                }
            }
            Phase::LoadTargets { load, .. } => self.load_action(load)?,
        })
    }

    fn load_action(&self, load: &Load) -> Result<Action> {
        let name = metadata_file_name(&load.role);
        if !load.remote {
            return Ok(Action::ReadLocal { name });
        }
        let snapshot = self
            .trusted
            .snapshot()
            .ok_or_else(|| Error::Workflow("no snapshot".into()))?;
        let meta = snapshot
            .signed
            .meta
            .get(&format!("{}.json", load.role))
            .ok_or_else(|| Error::MissingRole {
                role: load.role.clone(),
                listed_in: "snapshot".into(),
            })?;
        let path = if self.trusted.root().signed.consistent_snapshot() {
            format!("{}.{name}", meta.version)
        } else {
            name
        };
        Ok(Action::Fetch {
            path,
            max_length: meta.length.unwrap_or(self.config.targets_max_length),
        })
    }

    /// Hands over the result of [`Action::ReadLocal`] (`None` if the file does not exist).
    pub fn provide_local(&mut self, bytes: Option<Vec<u8>>) -> Result<()> {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::LocalTimestamp => {
                if let Some(bytes) = bytes {
                    // A local copy that no longer verifies (keys rotated, corrupted) is simply
                    // not trusted; an expired one is kept for rollback protection.
                    let _ = self.trusted.update_timestamp(&bytes);
                }
                self.phase = Phase::RemoteTimestamp;
            }
            Phase::LocalSnapshot => {
                let valid = bytes.is_some_and(|b| self.trusted.update_snapshot(&b, true).is_ok());
                if valid {
                    self.begin_top_level_targets();
                } else {
                    self.phase = Phase::RemoteSnapshot;
                }
            }
            Phase::LoadTargets { mut load, then } => {
                let valid = bytes.is_some_and(|b| {
                    self.trusted
                        .update_delegated_targets(&b, &load.role, &load.delegator)
                        .is_ok()
                });
                if valid {
                    self.after_load(*then);
                } else {
                    load.remote = true;
                    self.phase = Phase::LoadTargets { load, then };
                }
            }
            other => {
                let msg = format!("no local read expected in phase {other:?}");
                self.phase = other;
                return Err(Error::Workflow(msg));
            }
        }
        Ok(())
    }

    /// Hands over the result of [`Action::Fetch`] for `path`. On error the refresh or lookup
    /// is over; the trusted set keeps what was accepted before.
    pub fn provide_fetched(&mut self, path: &str, fetched: Fetched) -> Result<()> {
        let phase = std::mem::replace(&mut self.phase, Phase::Finished);
        let not_found = Error::NotFound {
            path: path.to_owned(),
            repository: self.trusted.repository().to_owned(),
        };
        match phase {
            Phase::RootChain {
                next_version,
                fetched: count,
            } => match fetched {
                Fetched::NotFound => self.finish_root_chain()?,
                Fetched::Bytes(bytes) => {
                    bound(path, &bytes, self.config.root_max_length)?;
                    self.trusted.update_root(&bytes)?;
                    self.pending.push_back(Action::Persist {
                        name: "root.json".into(),
                        bytes,
                    });
                    let count = count.saturating_add(1);
                    if count >= self.config.max_root_rotations {
                        self.finish_root_chain()?;
                    } else {
                        self.phase = Phase::RootChain {
                            next_version: next_version.saturating_add(1),
                            fetched: count,
                        };
                    }
                }
            },
            Phase::RemoteTimestamp => {
                let Fetched::Bytes(bytes) = fetched else {
                    return Err(not_found);
                };
                bound(path, &bytes, self.config.timestamp_max_length)?;
                match self.trusted.update_timestamp(&bytes) {
                    Ok(()) => self.pending.push_back(Action::Persist {
                        name: "timestamp.json".into(),
                        bytes,
                    }),
                    // Same version as trusted: nothing new; keep the trusted copy.
                    Err(Error::EqualVersion { .. }) => {}
                    Err(e) => return Err(e),
                }
                self.phase = Phase::LocalSnapshot;
            }
            Phase::RemoteSnapshot => {
                let Fetched::Bytes(bytes) = fetched else {
                    return Err(not_found);
                };
                self.trusted.update_snapshot(&bytes, false)?;
                self.pending.push_back(Action::Persist {
                    name: "snapshot.json".into(),
                    bytes,
                });
                self.begin_top_level_targets();
            }
            Phase::LoadTargets { load, then } if load.remote => {
                let Fetched::Bytes(bytes) = fetched else {
                    return Err(not_found);
                };
                self.trusted
                    .update_delegated_targets(&bytes, &load.role, &load.delegator)?;
                self.pending.push_back(Action::Persist {
                    name: metadata_file_name(&load.role),
                    bytes,
                });
                self.after_load(*then);
            }
            other => {
                let msg = format!("no fetch expected in phase {other:?}");
                self.phase = other;
                return Err(Error::Workflow(msg));
            }
        }
        Ok(())
    }

    /// TUF 5.3.10–5.3.11: the final root must not be expired; if the timestamp or snapshot
    /// keys changed, trusted timestamp and snapshot are deleted (fast-forward recovery).
    fn finish_root_chain(&mut self) -> Result<()> {
        self.trusted.check_root_not_expired()?;
        let new = &self.trusted.root().signed;
        let rotated = self.initial_root.as_ref().is_some_and(|old| {
            ["timestamp", "snapshot"]
                .iter()
                .any(|r| old.role_key_material(r) != new.role_key_material(r))
        });
        if rotated {
            self.pending.push_back(Action::Remove {
                name: "timestamp.json".into(),
            });
            self.pending.push_back(Action::Remove {
                name: "snapshot.json".into(),
            });
            self.phase = Phase::RemoteTimestamp;
        } else {
            self.phase = Phase::LocalTimestamp;
        }
        Ok(())
    }

    fn begin_top_level_targets(&mut self) {
        self.phase = Phase::LoadTargets {
            load: Load {
                role: "targets".into(),
                delegator: "root".into(),
                remote: false,
            },
            then: Box::new(Then::FinishRefresh),
        };
    }

    fn after_load(&mut self, then: Then) {
        match then {
            Then::FinishRefresh => {
                self.refreshed = true;
                self.phase = Phase::Finished;
            }
            Then::ContinueWalk(walk) => self.phase = Phase::Walk(walk),
        }
    }

    /// Runs the walk until it needs a role that is not loaded yet, finds the target, or runs
    /// out of roles.
    fn advance_walk(&mut self, mut walk: Walk) -> Result<()> {
        loop {
            if let Some((role, depth)) = walk.current.take() {
                let targets = self
                    .trusted
                    .targets(&role)
                    .ok_or_else(|| Error::Workflow(format!("role {role} should be loaded")))?;
                if let Some(file) = targets.signed.targets.get(&walk.target) {
                    self.found = Some(TargetInfo {
                        path: walk.target.clone(),
                        file: file.clone(),
                        role: role.clone(),
                    });
                    self.phase = Phase::Finished;
                    return Ok(());
                }
                walk.visited.insert(role.clone());
                if let Some(delegations) = &targets.signed.delegations {
                    let mut children = Vec::new();
                    for delegate in delegations.roles_for_target(&walk.target) {
                        let excluded = match (&walk.hardware_id, &delegate.hardware_ids) {
                            (Some(hw), Some(allowed)) => !allowed.contains(hw),
                            _ => false,
                        };
                        if excluded {
                            continue;
                        }
                        children.push((
                            delegate.name.clone(),
                            role.clone(),
                            depth.saturating_add(1),
                        ));
                        if delegate.terminating {
                            walk.stack.clear();
                            break;
                        }
                    }
                    children.reverse();
                    walk.stack.extend(children);
                }
                continue;
            }
            let Some((role, delegator, depth)) = walk.stack.pop() else {
                self.phase = Phase::Finished;
                return Err(Error::TargetNotFound {
                    target: walk.target,
                    repository: self.trusted.repository().to_owned(),
                });
            };
            if walk.visited.contains(&role) {
                continue;
            }
            if walk.visited.len() as u64 >= u64::from(self.config.max_delegations)
                || depth > self.config.max_delegation_depth
            {
                self.phase = Phase::Finished;
                return Err(Error::DelegationLimit {
                    target: walk.target,
                    max: self.config.max_delegations,
                });
            }
            walk.current = Some((role.clone(), depth));
            match self.trusted.delegator_of(&role) {
                Some(verified_under) if verified_under == delegator => {}
                Some(_) => {
                    // Trusted through another parent: this parent's keys decide here.
                    if let Err(e) = self.trusted.reverify_targets(&role, &delegator) {
                        self.phase = Phase::Finished;
                        return Err(e);
                    }
                }
                None => {
                    self.phase = Phase::LoadTargets {
                        load: Load {
                            role,
                            delegator,
                            remote: false,
                        },
                        then: Box::new(Then::ContinueWalk(walk)),
                    };
                    return Ok(());
                }
            }
        }
    }
}

fn bound(path: &str, bytes: &[u8], max: u64) -> Result<()> {
    if bytes.len() as u64 > max {
        return Err(Error::LengthExceeded {
            what: path.to_owned(),
            max,
        });
    }
    Ok(())
}

/// The path (relative to the targets base URL) under which a repository serves a target: with
/// consistent snapshots, `DIR/HASH.NAME` using the sha256 digest (or the first one listed).
pub fn target_url_path(info: &TargetInfo, consistent_snapshot: bool) -> String {
    if !consistent_snapshot {
        return info.path.clone();
    }
    let digest = info
        .file
        .hashes
        .get("sha256")
        .or_else(|| info.file.hashes.values().next())
        .cloned()
        .unwrap_or_default();
    match info.path.rsplit_once('/') {
        Some((dir, base)) => format!("{dir}/{digest}.{base}"),
        None => format!("{digest}.{}", info.path),
    }
}

#[cfg(test)]
mod tests;

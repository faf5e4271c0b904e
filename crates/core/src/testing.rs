//! In-memory TUF repositories and a driver for the client state machine, for tests.
//!
//! [`TestRepo`] builds a complete repository (root, timestamp, snapshot, targets, delegated
//! roles) with freshly generated keys and publishes its files into a map, the way a static
//! server would serve them. [`drive`] runs a [`Client`] against such a map and a local store.
//! Tests of this crate and of the crates above it use them to reach every rule without a
//! network.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

use crate::client::{metadata_file_name, Action, Client, Fetched};
use crate::error::Result;
use crate::hash::compute_hashes;
use crate::key::{KeyId, KeyScheme};
use crate::metadata::{
    sign_role, DelegatedRole, Delegations, Expiry, MetaFile, RoleKeys, Root, Snapshot, TargetFile,
    TargetMap, Targets, Timestamp, HARDWARE_IDS_FIELD, SPEC_VERSION,
};
use crate::signer::{InMemorySigner, Signer};

/// A fixed reference time for tests: 2030-01-01T00:00:00Z.
pub fn test_now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_893_456_000, 0).unwrap_or_default()
}

/// Files a repository serves, by path relative to its metadata or targets base.
pub type Files = BTreeMap<String, Vec<u8>>;

/// An in-memory repository.
pub struct TestRepo {
    /// Reference time; documents expire a year after it unless changed.
    pub now: DateTime<Utc>,
    /// Signing keys per role (top-level and delegated).
    pub signers: BTreeMap<String, Vec<InMemorySigner>>,
    /// Root (edit, then [`TestRepo::publish_root`]).
    pub root: Root,
    /// Timestamp.
    pub timestamp: Timestamp,
    /// Snapshot.
    pub snapshot: Snapshot,
    /// Top-level and delegated targets roles.
    pub targets: BTreeMap<String, Targets>,
    /// Published metadata files.
    pub metadata: Files,
    /// Published target files (`HASH.NAME` and `NAME`).
    pub target_files: Files,
}

fn expiry(at: DateTime<Utc>) -> Expiry {
    Expiry::new(at)
}

fn empty_targets(now: DateTime<Utc>) -> Targets {
    Targets {
        type_: "targets".into(),
        spec_version: SPEC_VERSION.into(),
        version: 1,
        expires: expiry(now + Duration::days(365)),
        targets: TargetMap::new(),
        delegations: None,
        unrecognized: BTreeMap::new(),
    }
}

impl TestRepo {
    /// A repository with one ed25519 key per top-level role, consistent snapshots, and every
    /// role at version 1, published.
    pub fn new(now: DateTime<Utc>) -> Self {
        let mut signers = BTreeMap::new();
        let mut keys = BTreeMap::new();
        let mut roles = BTreeMap::new();
        for role in ["root", "timestamp", "snapshot", "targets"] {
            let s = gen();
            keys.insert(s.key_id(), s.public_key().clone());
            roles.insert(role.to_owned(), RoleKeys::new(vec![s.key_id()], 1));
            signers.insert(role.to_owned(), vec![s]);
        }
        let year = now + Duration::days(365);
        let root = Root {
            type_: "root".into(),
            spec_version: SPEC_VERSION.into(),
            consistent_snapshot: Some(true),
            version: 1,
            expires: expiry(year),
            keys,
            roles,
            unrecognized: BTreeMap::new(),
        };
        let mut targets = BTreeMap::new();
        targets.insert("targets".to_owned(), empty_targets(now));
        let mut repo = TestRepo {
            now,
            signers,
            root,
            timestamp: Timestamp {
                type_: "timestamp".into(),
                spec_version: SPEC_VERSION.into(),
                version: 0,
                expires: expiry(now + Duration::days(1)),
                meta: BTreeMap::new(),
                unrecognized: BTreeMap::new(),
            },
            snapshot: Snapshot {
                type_: "snapshot".into(),
                spec_version: SPEC_VERSION.into(),
                version: 0,
                expires: expiry(now + Duration::days(7)),
                meta: BTreeMap::new(),
                unrecognized: BTreeMap::new(),
            },
            targets,
            metadata: Files::new(),
            target_files: Files::new(),
        };
        repo.publish_root();
        repo.publish();
        repo
    }

    /// Bytes of root version 1 (what a client is provisioned with).
    pub fn initial_root(&self) -> Vec<u8> {
        self.metadata
            .get("1.root.json")
            .cloned()
            .unwrap_or_default()
    }

    fn signer_refs(&self, role: &str) -> Vec<&dyn Signer> {
        self.signers
            .get(role)
            .map(|v| v.iter().map(|s| s as &dyn Signer).collect())
            .unwrap_or_default()
    }

    /// Signs the current root with the current root keys and publishes `N.root.json` and
    /// `root.json`.
    pub fn publish_root(&mut self) {
        let signers = self.signer_refs("root");
        let bytes = sign_role(&self.root, &signers).unwrap_or_default();
        self.metadata
            .insert(format!("{}.root.json", self.root.version), bytes.clone());
        self.metadata.insert("root.json".into(), bytes);
    }

    /// Rotates root: replaces the keys of `role` by `count` new keys with `threshold`, bumps
    /// the root version and signs it with the old *and* new root keys.
    pub fn rotate_keys(&mut self, role: &str, count: usize, threshold: u32) {
        let new: Vec<InMemorySigner> = (0..count).map(|_| gen()).collect();
        if let Some(old) = self.root.roles.get(role) {
            for id in old.keyids.clone() {
                self.root.keys.remove(&id);
            }
        }
        for s in &new {
            self.root.keys.insert(s.key_id(), s.public_key().clone());
        }
        let ids = new.iter().map(|s| s.key_id()).collect();
        self.root
            .roles
            .insert(role.to_owned(), RoleKeys::new(ids, threshold));
        let old_root = if role == "root" {
            self.signers.remove("root")
        } else {
            None
        };
        self.signers.insert(role.to_owned(), new);
        self.root.version += 1;
        let mut signers = self.signer_refs("root");
        if let Some(old) = &old_root {
            signers.extend(old.iter().map(|s| s as &dyn Signer));
        }
        let bytes = sign_role(&self.root, &signers).unwrap_or_default();
        self.metadata
            .insert(format!("{}.root.json", self.root.version), bytes.clone());
        self.metadata.insert("root.json".into(), bytes);
    }

    /// Adds a target to `role` (publish afterwards).
    pub fn add_target(&mut self, role: &str, name: &str, content: &[u8], custom: Option<Value>) {
        let file = TargetFile {
            length: content.len() as u64,
            hashes: compute_hashes(content),
            custom,
            unrecognized: BTreeMap::new(),
        };
        if let Some(sha) = file.hashes.get("sha256") {
            let path = match name.rsplit_once('/') {
                Some((dir, base)) => format!("{dir}/{sha}.{base}"),
                None => format!("{sha}.{name}"),
            };
            self.target_files.insert(path, content.to_vec());
        }
        self.target_files.insert(name.to_owned(), content.to_vec());
        if let Some(t) = self.targets.get_mut(role) {
            t.targets.insert(name.to_owned(), file);
        }
    }

    /// Delegates from `parent` to a new role `name` with one fresh key (publish afterwards).
    pub fn delegate(
        &mut self,
        parent: &str,
        name: &str,
        paths: &[&str],
        terminating: bool,
        hardware_ids: Option<&[&str]>,
    ) {
        let s = gen();
        let mut unrecognized = BTreeMap::new();
        if let Some(hw) = hardware_ids {
            unrecognized.insert(
                HARDWARE_IDS_FIELD.to_owned(),
                Value::from(hw.iter().map(|h| Value::from(*h)).collect::<Vec<_>>()),
            );
        }
        let role = DelegatedRole {
            name: name.to_owned(),
            keyids: vec![s.key_id()],
            threshold: 1,
            terminating,
            paths: Some(paths.iter().map(|p| (*p).to_owned()).collect()),
            path_hash_prefixes: None,
            unrecognized,
        };
        if let Some(t) = self.targets.get_mut(parent) {
            let d = t.delegations.get_or_insert_with(|| Delegations {
                keys: BTreeMap::new(),
                roles: Some(Vec::new()),
                succinct_roles: None,
                unrecognized: BTreeMap::new(),
            });
            d.keys.insert(s.key_id(), s.public_key().clone());
            d.roles.get_or_insert_with(Vec::new).push(role);
        }
        self.signers.insert(name.to_owned(), vec![s]);
        self.targets
            .insert(name.to_owned(), empty_targets(self.now));
    }

    /// Signs and publishes every targets role, then snapshot and timestamp, bumping snapshot
    /// and timestamp versions (targets versions are bumped by the caller when it edits them).
    pub fn publish(&mut self) {
        let mut meta = BTreeMap::new();
        let roles: Vec<String> = self.targets.keys().cloned().collect();
        for role in roles {
            let Some(t) = self.targets.get(&role) else {
                continue;
            };
            let bytes = sign_role(t, &self.signer_refs(&role)).unwrap_or_default();
            let name = metadata_file_name(&role);
            self.metadata
                .insert(format!("{}.{name}", t.version), bytes.clone());
            self.metadata.insert(name, bytes.clone());
            meta.insert(format!("{role}.json"), MetaFile::version_only(t.version));
        }
        self.snapshot.version += 1;
        self.snapshot.meta = meta;
        let snap = sign_role(&self.snapshot, &self.signer_refs("snapshot")).unwrap_or_default();
        self.metadata.insert(
            format!("{}.snapshot.json", self.snapshot.version),
            snap.clone(),
        );
        self.metadata.insert("snapshot.json".into(), snap.clone());
        let snapshot_meta = MetaFile::pinning(self.snapshot.version, &snap);
        self.timestamp.version += 1;
        self.timestamp.meta = BTreeMap::from([("snapshot.json".to_owned(), snapshot_meta)]);
        self.publish_timestamp();
    }

    /// Signs and publishes the current timestamp as it is.
    pub fn publish_timestamp(&mut self) {
        let ts = sign_role(&self.timestamp, &self.signer_refs("timestamp")).unwrap_or_default();
        self.metadata.insert("timestamp.json".into(), ts);
    }

    /// Bumps the version of a targets role (call before [`TestRepo::publish`]).
    pub fn bump(&mut self, role: &str) {
        if let Some(t) = self.targets.get_mut(role) {
            t.version += 1;
        }
    }

    /// Key IDs of a role's signers.
    pub fn key_ids(&self, role: &str) -> Vec<KeyId> {
        self.signers
            .get(role)
            .map(|v| v.iter().map(|s| s.key_id()).collect())
            .unwrap_or_default()
    }
}

fn gen() -> InMemorySigner {
    // Key generation only fails if the OS RNG does; tests cannot continue without keys.
    #[allow(clippy::expect_used)]
    InMemorySigner::generate(KeyScheme::Ed25519).expect("generate ed25519 key")
}

/// What a [`drive`] run did: every fetched path and the local store afterwards.
#[derive(Debug, Default, Clone)]
pub struct Trace {
    /// Paths fetched, in order.
    pub fetched: Vec<String>,
    /// Names persisted, in order.
    pub persisted: Vec<String>,
    /// Names removed, in order.
    pub removed: Vec<String>,
}

/// Runs `client` until [`Action::Done`], serving fetches from `remote` and local reads and
/// writes from `local`.
pub fn drive(client: &mut Client, remote: &Files, local: &mut Files) -> Result<Trace> {
    let mut trace = Trace::default();
    loop {
        match client.next_action()? {
            Action::ReadLocal { name } => client.provide_local(local.get(&name).cloned())?,
            Action::Fetch { path, max_length } => {
                trace.fetched.push(path.clone());
                let fetched = match remote.get(&path) {
                    Some(bytes) => {
                        let cut = bytes.len().min(
                            usize::try_from(max_length.saturating_add(1)).unwrap_or(usize::MAX),
                        );
                        Fetched::Bytes(bytes.get(..cut).unwrap_or_default().to_vec())
                    }
                    None => Fetched::NotFound,
                };
                client.provide_fetched(&path, fetched)?;
            }
            Action::Persist { name, bytes } => {
                trace.persisted.push(name.clone());
                local.insert(name, bytes);
            }
            Action::Remove { name } => {
                trace.removed.push(name.clone());
                local.remove(&name);
            }
            Action::Done => return Ok(trace),
        }
    }
}

//! The image repository: the OEM's (and its suppliers') signed images, as a folder of
//! content-addressed files that any static server or CDN can serve unchanged.
//!
//! Source of truth is the signed metadata in `D/public/image/metadata/` (or under
//! `metadata/` on the bucket of `[image_store]`, [`crate::store`]); nothing else is kept.
//! Every change follows the same path, so the online and offline workflows are one:
//!
//! 1. *stage*: a new version of a targets role is computed (unsigned);
//! 2. *sign*: with the role's keys here, or exported, signed elsewhere (`rampart sign`) and
//!    brought back;
//! 3. *commit*: the signature threshold is checked against the delegating role, the file is
//!    written as `N.ROLE.json`, then a new snapshot and timestamp are signed with the online
//!    keys. `timestamp.json` is replaced last, atomically, so a client never sees a
//!    half-published state.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use rampart_core::client::metadata_file_name;
use rampart_core::hash::Hashes;
use rampart_core::key::{Key, KeyId};
use rampart_core::metadata::{
    sign_role, DelegatedRole, Delegations, Envelope, Expiry, MetaFile, RoleKeys, Root, Snapshot,
    TargetFile, Targets, Timestamp, HARDWARE_IDS_FIELD, SPEC_VERSION,
};
use rampart_core::signer::Signer;
use rampart_core::uptane::ImageCustom;

use crate::store::{LocalFolder, PublicStore, Stored, WriterGuard};

use crate::error::{Error, Result};

/// How long each role's metadata stays valid when signed.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// Root.
    pub root: Duration,
    /// Targets and delegated targets.
    pub targets: Duration,
    /// Snapshot.
    pub snapshot: Duration,
    /// Timestamp.
    pub timestamp: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            root: Duration::days(365),
            targets: Duration::days(90),
            snapshot: Duration::days(7),
            timestamp: Duration::days(1),
        }
    }
}

/// Who may sign a role: the delegating role, its key table, the authorised key IDs and the
/// threshold.
#[derive(Debug, Clone)]
pub struct Authority {
    /// `root` for the top-level targets role, else the delegating targets role.
    pub delegator: String,
    /// Keys the delegator lists.
    pub keys: BTreeMap<KeyId, Key>,
    /// Authorised key IDs.
    pub keyids: Vec<KeyId>,
    /// Threshold.
    pub threshold: u32,
}

/// The current state of a repository, read from its metadata folder.
#[derive(Debug, Clone)]
pub struct RepoState {
    /// Latest root.
    pub root: Root,
    /// Current timestamp.
    pub timestamp: Timestamp,
    /// Current snapshot.
    pub snapshot: Snapshot,
    /// Every targets role listed by the snapshot, at its current version.
    pub roles: BTreeMap<String, Targets>,
    /// The tag of the `timestamp.json` read (what a conditional replace expects).
    timestamp_tag: String,
}

impl RepoState {
    /// The role that delegates to `role` and the keys and threshold it names
    /// (`root` for the top-level targets role).
    pub fn authority(&self, role: &str) -> Result<Authority> {
        if role == "targets" {
            let r = self.root.role("targets")?;
            return Ok(Authority {
                delegator: "root".into(),
                keys: self.root.keys.clone(),
                keyids: r.keyids.clone(),
                threshold: r.threshold,
            });
        }
        for (parent, t) in &self.roles {
            if let Some(d) = &t.delegations {
                if let Some((ids, threshold)) = d.role_keys(role) {
                    return Ok(Authority {
                        delegator: parent.clone(),
                        keys: d.keys.clone(),
                        keyids: ids.to_vec(),
                        threshold,
                    });
                }
            }
        }
        Err(Error::NotFound(format!("no role delegates to {role:?}")))
    }

    /// The delegation entry for `role`, if it is a delegated role.
    pub fn delegation(&self, role: &str) -> Option<&DelegatedRole> {
        self.roles
            .values()
            .filter_map(|t| t.delegations.as_ref()?.roles.as_ref())
            .flatten()
            .find(|r| r.name == role)
    }
}

/// The online keys a repository re-signs snapshot and timestamp with.
pub struct OnlineKeys {
    /// Snapshot key.
    pub snapshot: Box<dyn Signer>,
    /// Timestamp key.
    pub timestamp: Box<dyn Signer>,
}

/// A repository (the image repository, or the director's root folder) in its public store.
#[derive(Debug, Clone)]
pub struct Repository {
    store: Arc<dyn PublicStore>,
    /// Lifetimes used when signing.
    pub lifetimes: Lifetimes,
}

/// How many snapshot versions a writer skips that a writer which died before its timestamp
/// left behind.
const SNAPSHOT_ATTEMPTS: u64 = 16;

fn raced(what: &str) -> Error {
    Error::WriterRaced(format!(
        "another writer published first ({what}); nothing of this write is visible: stage again"
    ))
}

fn signer_refs(signers: &[Box<dyn Signer>]) -> Vec<&dyn Signer> {
    signers.iter().map(|s| s.as_ref()).collect()
}

/// Signs `root` with every signer given (old and new root keys during a rotation).
pub fn sign_root(root: &Root, signers: &[&dyn Signer]) -> Result<Vec<u8>> {
    Ok(sign_role(root, signers)?)
}

/// A fresh, empty targets role.
pub fn empty_targets(now: DateTime<Utc>, lifetime: Duration) -> Targets {
    Targets {
        type_: "targets".into(),
        spec_version: SPEC_VERSION.into(),
        version: 1,
        expires: Expiry::new(now + lifetime),
        targets: Default::default(),
        delegations: None,
        unrecognized: BTreeMap::new(),
    }
}

/// Builds a root for the given role keys (`role → (keys, threshold)`).
pub fn new_root(
    roles: &BTreeMap<String, (Vec<Key>, u32)>,
    version: u64,
    expires: DateTime<Utc>,
) -> Result<Root> {
    let mut keys = BTreeMap::new();
    let mut role_keys = BTreeMap::new();
    for (role, (list, threshold)) in roles {
        let mut ids = Vec::new();
        for k in list {
            let id = k.key_id()?;
            keys.insert(id.clone(), k.clone());
            ids.push(id);
        }
        role_keys.insert(role.clone(), RoleKeys::new(ids, *threshold));
    }
    Ok(Root {
        type_: "root".into(),
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: Some(true),
        version,
        expires: Expiry::new(expires),
        keys,
        roles: role_keys,
        unrecognized: BTreeMap::new(),
    })
}

/// An image stored only in encrypted form.
#[derive(Debug, Clone)]
pub struct EncryptedCopy {
    /// Plaintext length (signed in targets metadata).
    pub length: u64,
    /// Plaintext hashes (signed in targets metadata).
    pub hashes: Hashes,
    /// Ciphertext path relative to the targets base URL.
    pub ciphertext_path: String,
    /// Ciphertext length.
    pub ciphertext_length: u64,
    /// Ciphertext hashes.
    pub ciphertext_hashes: Hashes,
}

/// What [`Repository::stage_target`] added.
#[derive(Debug, Clone)]
pub struct StagedTarget {
    /// Target path.
    pub name: String,
    /// Its description as it will be signed.
    pub file: TargetFile,
    /// The new (unsigned) version of the role.
    pub role: Targets,
}

impl Repository {
    /// A repository whose metadata and targets live in these local folders.
    pub fn new(metadata_dir: impl Into<PathBuf>, targets_dir: impl Into<PathBuf>) -> Self {
        Self::on(Arc::new(LocalFolder::new(metadata_dir, targets_dir)))
    }

    /// A repository in `store` (a folder or a bucket).
    pub fn on(store: Arc<dyn PublicStore>) -> Self {
        Repository {
            store,
            lifetimes: Lifetimes::default(),
        }
    }

    /// Where its public files are.
    pub fn store(&self) -> &dyn PublicStore {
        self.store.as_ref()
    }

    /// One writer at a time, held from reading the current versions to writing the next ones
    /// (a `flock` on the folder, a lease on a bucket: [`PublicStore::lock`]). Every instance
    /// of a multi-instance deployment re-signs the timestamp, and `rampart publish` may run
    /// beside them: without it, two writers that read version N both write N + 1 with
    /// different content and one publish is lost. Waits for the holder (writes take
    /// milliseconds).
    fn lock(&self) -> Result<WriterGuard> {
        self.store.lock()
    }

    /// The bytes of metadata file `name`.
    fn read_metadata(&self, name: &str) -> Result<Stored> {
        self.store.get(&format!("metadata/{name}"))?.ok_or_else(|| {
            Error::NotFound(format!(
                "{name} is not in the repository at {}",
                self.store.describe()
            ))
        })
    }

    fn read_role<T: rampart_core::metadata::RoleMetadata>(
        &self,
        name: &str,
        role: &str,
    ) -> Result<T> {
        let stored = self.read_metadata(name)?;
        Ok(Envelope::parse(&stored.bytes, role)?.typed(role)?)
    }

    /// The bytes of the published image (or ciphertext) at `path` under the targets.
    pub fn read_target(&self, path: &str) -> Result<Vec<u8>> {
        check_target_name(path)?;
        self.store
            .get(&format!("targets/{path}"))?
            .map(|s| s.bytes)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "{path} is not among the images at {}",
                    self.store.describe()
                ))
            })
    }

    /// Highest `N` with an `N.root.json`.
    pub fn latest_root_version(&self) -> Result<u64> {
        let latest = self
            .store
            .list("metadata")?
            .iter()
            .filter_map(|name| name.strip_suffix(".root.json")?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        if latest == 0 {
            return Err(Error::NotFound(format!(
                "no root metadata in {}",
                self.store.describe()
            )));
        }
        Ok(latest)
    }

    /// Bytes of `N.root.json`.
    pub fn root_bytes(&self, version: u64) -> Result<Vec<u8>> {
        Ok(self.read_metadata(&format!("{version}.root.json"))?.bytes)
    }

    /// Reads the current state (latest root, timestamp, snapshot and every targets role).
    pub fn state(&self) -> Result<RepoState> {
        let root_version = self.latest_root_version()?;
        let root: Root = self.read_role(&format!("{root_version}.root.json"), "root")?;
        let stored = self.read_metadata("timestamp.json")?;
        let timestamp: Timestamp =
            Envelope::parse(&stored.bytes, "timestamp")?.typed("timestamp")?;
        let snapshot_version = timestamp.snapshot_meta()?.version;
        let snapshot: Snapshot =
            self.read_role(&format!("{snapshot_version}.snapshot.json"), "snapshot")?;
        let mut roles = BTreeMap::new();
        for (file, meta) in &snapshot.meta {
            let role = file.strip_suffix(".json").unwrap_or(file);
            let name = format!("{}.{}", meta.version, metadata_file_name(role));
            roles.insert(role.to_owned(), self.read_role::<Targets>(&name, role)?);
        }
        Ok(RepoState {
            root,
            timestamp,
            snapshot,
            roles,
            timestamp_tag: stored.tag,
        })
    }

    /// Writes a root version (`N.root.json` and `root.json`).
    pub fn write_root(&self, root: &Root, bytes: &[u8]) -> Result<()> {
        let _lock = self.lock()?;
        self.store
            .put(&format!("metadata/{}.root.json", root.version), bytes)?;
        self.store.put("metadata/root.json", bytes)
    }

    /// Creates the repository: root v1 and an empty targets v1 (signed by the given keys),
    /// then snapshot and timestamp with the online keys.
    pub fn create(
        &self,
        root: &Root,
        root_signers: &[&dyn Signer],
        targets_signers: &[&dyn Signer],
        online: &OnlineKeys,
        now: DateTime<Utc>,
    ) -> Result<()> {
        if let Some((metadata, targets)) = self.store.folders() {
            fs::create_dir_all(metadata).map_err(|e| Error::io(metadata, e))?;
            fs::create_dir_all(targets).map_err(|e| Error::io(targets, e))?;
        }
        if self.store.exists("metadata/timestamp.json")? {
            return Err(Error::Conflict(format!(
                "{} already holds a repository",
                self.store.describe()
            )));
        }
        self.write_root(root, &sign_root(root, root_signers)?)?;
        let targets = empty_targets(now, self.lifetimes.targets);
        let bytes = sign_role(&targets, targets_signers)?;
        self.store.put(
            &format!("metadata/1.{}", metadata_file_name("targets")),
            &bytes,
        )?;
        let mut roles = BTreeMap::new();
        roles.insert("targets".to_owned(), (1u64, bytes));
        self.write_snapshot_and_timestamp(None, &roles, online, now)
    }

    /// Signs and writes snapshot (version after `previous`) and timestamp for the given
    /// roles (`role → (version, bytes)`).
    fn write_snapshot_and_timestamp(
        &self,
        previous: Option<&RepoState>,
        roles: &BTreeMap<String, (u64, Vec<u8>)>,
        online: &OnlineKeys,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut meta = BTreeMap::new();
        for (role, (version, bytes)) in roles {
            meta.insert(format!("{role}.json"), MetaFile::pinning(*version, bytes));
        }
        let mut snapshot = Snapshot {
            type_: "snapshot".into(),
            spec_version: SPEC_VERSION.into(),
            version: previous.map_or(1, |p| p.snapshot.version + 1),
            expires: Expiry::new(now + self.lifetimes.snapshot),
            meta,
            unrecognized: BTreeMap::new(),
        };
        // Created only if absent: a version already there was left by a writer that died
        // before its timestamp (skipped: snapshot versions need only increase), or written
        // by one whose lease was taken over (its timestamp then fails below).
        let mut attempts = 0;
        let snapshot_bytes = loop {
            let bytes = sign_role(&snapshot, &[online.snapshot.as_ref()])?;
            let name = format!("metadata/{}.snapshot.json", snapshot.version);
            if self.store.put_new(&name, &bytes)? {
                break bytes;
            }
            attempts += 1;
            if attempts == SNAPSHOT_ATTEMPTS {
                return Err(raced(&format!("{name} exists")));
            }
            tracing::warn!(
                version = snapshot.version,
                "snapshot version taken; skipping it"
            );
            snapshot.version += 1;
        };
        self.write_timestamp(previous, snapshot.version, &snapshot_bytes, online, now)
    }

    /// Signs and writes a timestamp after `previous`'s, replacing `timestamp.json` only if it
    /// is still the one `previous` read.
    fn write_timestamp(
        &self,
        previous: Option<&RepoState>,
        snapshot_version: u64,
        snapshot_bytes: &[u8],
        online: &OnlineKeys,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let previous_version = previous.map_or(0, |p| p.timestamp.version);
        let snapshot_meta = MetaFile::pinning(snapshot_version, snapshot_bytes);
        let timestamp = Timestamp {
            type_: "timestamp".into(),
            spec_version: SPEC_VERSION.into(),
            version: previous_version + 1,
            expires: Expiry::new(now + self.lifetimes.timestamp),
            meta: BTreeMap::from([("snapshot.json".to_owned(), snapshot_meta)]),
            unrecognized: BTreeMap::new(),
        };
        let bytes = sign_role(&timestamp, &[online.timestamp.as_ref()])?;
        let expected = previous.map(|p| p.timestamp_tag.as_str());
        if !self
            .store
            .replace("metadata/timestamp.json", &bytes, expected)?
        {
            return Err(raced("timestamp.json changed since it was read"));
        }
        Ok(())
    }

    /// Computes the new (unsigned) version of `role` listing `name` with this length,
    /// hashes and Uptane custom fields (the image itself is stored separately: plaintext with
    /// [`Repository::store_image`], or only encrypted with [`Repository::store_encrypted`]).
    #[allow(clippy::too_many_arguments)]
    pub fn stage_target(
        &self,
        state: &RepoState,
        role: &str,
        name: &str,
        length: u64,
        hashes: Hashes,
        custom: &ImageCustom,
        now: DateTime<Utc>,
    ) -> Result<StagedTarget> {
        check_target_name(name)?;
        let current = match state.roles.get(role) {
            Some(t) => t.clone(),
            // A delegated role that never published starts from an empty version 0.
            None if state.delegation(role).is_some() => {
                let mut t = empty_targets(now, self.lifetimes.targets);
                t.version = 0;
                t
            }
            None => {
                return Err(Error::NotFound(format!(
                    "role {role:?} does not exist (delegate it first)"
                )))
            }
        };
        if let Some(delegation) = state.delegation(role) {
            if !delegation.is_delegated_path(name) {
                return Err(Error::BadRequest(format!(
                    "role {role} may not sign for {name} (paths {:?})",
                    delegation.paths
                )));
            }
            if let Some(hw) = delegation.hardware_ids() {
                if !hw.contains(&custom.hardware_id) {
                    return Err(Error::BadRequest(format!(
                        "role {role} may not sign for hardware ID {} (allowed {hw:?})",
                        custom.hardware_id
                    )));
                }
            }
        }
        let file = TargetFile {
            length,
            hashes,
            custom: Some(custom.to_value()),
            unrecognized: BTreeMap::new(),
        };
        let mut next = current.clone();
        next.targets.insert(name.to_owned(), file.clone());
        next.version = current.version + 1;
        next.expires = Expiry::new(now + self.lifetimes.targets);
        Ok(StagedTarget {
            name: name.to_owned(),
            file,
            role: next,
        })
    }

    /// Encrypts `image` for per-ECU delivery: only the ciphertext goes to the public folder
    /// (as `DIR/SHA256.BASE.enc`), so a mirror or an eavesdropper never sees the plaintext.
    /// Returns the plaintext length and hashes (what the repository signs: sha256 and
    /// sha512) and where the ciphertext is, its length and its SHA-256.
    ///
    /// The ciphertext gets one hash, not two: it is what the director lists for the
    /// primary's download check, a transport check. What makes the image trustworthy is
    /// checked after decryption — every 64 KiB chunk authenticated by AES-256-GCM under a key
    /// only the ECU can unwrap, then the plaintext's length, sha256 *and* sha512 signed by
    /// the offline image repository. A second ciphertext hash would add a full SHA-512 pass
    /// over the image on the T-BOX (no SHA-512 instructions on most automotive SoCs) and
    /// buy nothing (BENCHMARKS.md, image path).
    pub fn store_encrypted(
        &self,
        image: &Path,
        name: &str,
        key: &rampart_core::encryption::ContentKey,
    ) -> Result<EncryptedCopy> {
        use aws_lc_rs::digest::{Context, SHA256};
        use rampart_core::encryption::{Encryptor, DEFAULT_CHUNK_SIZE};
        check_target_name(name)?;
        let (rel_dir, base) = match name.rsplit_once('/') {
            Some((d, b)) => (format!("{d}/"), b.to_owned()),
            None => (String::new(), name.to_owned()),
        };
        let tmp = crate::delta::Scratch(
            self.store
                .staging_path(&format!("targets/{rel_dir}{base}.enc"))?,
        );
        let tmp = tmp.path();
        let mut out = fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        let mut enc = Encryptor::new(key, DEFAULT_CHUNK_SIZE)?;
        let mut c256 = Context::new(&SHA256);
        let mut cipher = Vec::with_capacity(256 * 1024 + 4096);
        let mut cipher_len = 0u64;
        let mut emit = |cipher: &mut Vec<u8>| -> Result<()> {
            c256.update(cipher);
            cipher_len += cipher.len() as u64;
            out.write_all(cipher).map_err(|e| Error::io(tmp, e))?;
            cipher.clear();
            Ok(())
        };
        let (plain_len, plain) = read_hashing(image, |chunk| {
            enc.update(chunk, &mut cipher)?;
            emit(&mut cipher)
        })?;
        enc.finish(&mut cipher)?;
        emit(&mut cipher)?;
        out.sync_all().map_err(|e| Error::io(tmp, e))?;
        drop(out);
        let mut cipher_hashes = Hashes::new();
        let c256 = hex::encode(c256.finish());
        cipher_hashes.insert("sha256".into(), c256.clone());
        let file_name = format!("{c256}.{base}.enc");
        self.store
            .put_file(&format!("targets/{rel_dir}{file_name}"), tmp)?;
        Ok(EncryptedCopy {
            length: plain_len,
            hashes: plain,
            ciphertext_path: format!("{rel_dir}{file_name}"),
            ciphertext_length: cipher_len,
            ciphertext_hashes: cipher_hashes,
        })
    }

    /// Streams `image` into the targets folder as `DIR/SHA256.BASE` (and a hard link as
    /// `DIR/SHA512.BASE`), returning its length and hashes.
    pub fn store_image(&self, image: &Path, name: &str) -> Result<(u64, Hashes)> {
        check_target_name(name)?;
        let (dir, base) = match name.rsplit_once('/') {
            Some((d, b)) => (format!("targets/{d}/"), b.to_owned()),
            None => ("targets/".to_owned(), name.to_owned()),
        };
        let tmp = crate::delta::Scratch(self.store.staging_path(&format!("{dir}{base}"))?);
        let (length, hashes) = copy_hashing(image, tmp.path())?;
        let by = |alg: &str| hashes.get(alg).cloned().unwrap_or_default();
        let primary = format!("{dir}{}.{base}", by("sha256"));
        self.store.put_file(&primary, tmp.path())?;
        let secondary = format!("{dir}{}.{base}", by("sha512"));
        if !self.store.exists(&secondary)? {
            self.store.copy(&primary, &secondary)?;
        }
        Ok((length, hashes))
    }

    /// Checks signatures and version of a signed targets role and makes it current, with a
    /// new snapshot and timestamp.
    pub fn commit_role(
        &self,
        role: &str,
        signed: &[u8],
        online: &OnlineKeys,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let _lock = self.lock()?;
        self.commit_role_locked(role, signed, online, now)
    }

    /// [`Repository::commit_role`], the lock held by the caller.
    fn commit_role_locked(
        &self,
        role: &str,
        signed: &[u8],
        online: &OnlineKeys,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let state = self.state()?;
        let authority = state.authority(role)?;
        let env = Envelope::parse(signed, role)?;
        env.verify(
            role,
            &authority.keys,
            &authority.keyids,
            authority.threshold,
        )?;
        let new: Targets = env.typed(role)?;
        let current = state.roles.get(role).map_or(0, |t| t.version);
        if new.version != current + 1 {
            return Err(Error::Verification(rampart_core::Error::VersionMismatch {
                role: role.to_owned(),
                expected: current + 1,
                found: new.version,
                listed_by: "the repository (current version + 1)".into(),
            }));
        }
        // Created if absent. One already there was left by a writer that died before its
        // snapshot, unless another writer committed since `state` was read (its lease was
        // taken over): then nothing is overwritten.
        let name = format!("metadata/{}.{}", new.version, metadata_file_name(role));
        if !self.store.put_new(&name, signed)? {
            let now_tag = self.read_metadata("timestamp.json")?.tag;
            if now_tag != state.timestamp_tag {
                return Err(raced(&format!("{name} was committed by another writer")));
            }
            self.store.put(&name, signed)?;
        }
        let mut roles = self.current_roles(&state)?;
        roles.insert(role.to_owned(), (new.version, signed.to_vec()));
        self.write_snapshot_and_timestamp(Some(&state), &roles, online, now)?;
        Ok(new.version)
    }

    /// Signs a staged role with `signers` and commits it.
    pub fn sign_and_commit(
        &self,
        role: &str,
        next: &Targets,
        signers: &[Box<dyn Signer>],
        online: &OnlineKeys,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let bytes = sign_role(next, &signer_refs(signers))?;
        self.commit_role(role, &bytes, online, now)
    }

    /// The unsigned document for offline signing (`{"signed": …, "signatures": []}`).
    pub fn unsigned_document(next: &Targets) -> Result<Vec<u8>> {
        let doc = serde_json::json!({ "signed": next, "signatures": [] });
        serde_json::to_vec_pretty(&doc).map_err(|e| Error::BadRequest(e.to_string()))
    }

    /// Adds (or replaces) a delegation from `parent` to `name`: keys, threshold, path
    /// patterns and an Uptane hardware-ID restriction. Returns the new unsigned parent.
    #[allow(clippy::too_many_arguments)]
    pub fn stage_delegation(
        &self,
        state: &RepoState,
        parent: &str,
        name: &str,
        keys: &[Key],
        threshold: u32,
        paths: &[String],
        hardware_ids: &[String],
        terminating: bool,
        now: DateTime<Utc>,
    ) -> Result<Targets> {
        if rampart_core::metadata::TOP_LEVEL_ROLES.contains(&name) {
            return Err(Error::BadRequest(format!(
                "{name:?} is a top-level role name"
            )));
        }
        if keys.is_empty() || threshold == 0 || threshold as usize > keys.len() {
            return Err(Error::BadRequest(format!(
                "threshold {threshold} with {} key(s) can never be met",
                keys.len()
            )));
        }
        let current = state
            .roles
            .get(parent)
            .ok_or_else(|| Error::NotFound(format!("parent role {parent:?} does not exist")))?;
        let mut next = current.clone();
        let delegations = next.delegations.get_or_insert_with(|| Delegations {
            keys: BTreeMap::new(),
            roles: Some(Vec::new()),
            succinct_roles: None,
            unrecognized: BTreeMap::new(),
        });
        let mut keyids = Vec::new();
        for k in keys {
            let id = k.key_id()?;
            k.parse(&id)?;
            delegations.keys.insert(id.clone(), k.clone());
            keyids.push(id);
        }
        let mut unrecognized = BTreeMap::new();
        if !hardware_ids.is_empty() {
            unrecognized.insert(
                HARDWARE_IDS_FIELD.to_owned(),
                serde_json::json!(hardware_ids),
            );
        }
        let role = DelegatedRole {
            name: name.to_owned(),
            keyids,
            threshold,
            terminating,
            paths: Some(paths.to_vec()),
            path_hash_prefixes: None,
            unrecognized,
        };
        let list = delegations.roles.get_or_insert_with(Vec::new);
        list.retain(|r| r.name != name);
        list.push(role);
        next.version = current.version + 1;
        next.expires = Expiry::new(now + self.lifetimes.targets);
        Ok(next)
    }

    /// Commits a new delegation: the parent (signed) and the delegated role's first, empty
    /// version (signed by the delegate's keys), then one snapshot and timestamp.
    pub fn commit_delegation(
        &self,
        parent: &str,
        parent_signed: &[u8],
        name: &str,
        delegate_signers: &[&dyn Signer],
        online: &OnlineKeys,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let _lock = self.lock()?;
        self.commit_role_locked(parent, parent_signed, online, now)?;
        let state = self.state()?;
        if state.roles.contains_key(name) {
            return Ok(());
        }
        let mut first = empty_targets(now, self.lifetimes.targets);
        first.version = 1;
        let bytes = sign_role(&first, delegate_signers)?;
        // A new role enters at version 1: commit_role expects current + 1 = 1.
        self.commit_role_locked(name, &bytes, online, now)
            .map(|_| ())
    }

    /// Every targets role's current version and bytes, as `state` names them.
    fn current_roles(&self, state: &RepoState) -> Result<BTreeMap<String, (u64, Vec<u8>)>> {
        let mut roles = BTreeMap::new();
        for (name, t) in &state.roles {
            let file = format!("{}.{}", t.version, metadata_file_name(name));
            roles.insert(name.clone(), (t.version, self.read_metadata(&file)?.bytes));
        }
        Ok(roles)
    }

    /// Signs a new snapshot and timestamp now (after an online key rotation).
    pub fn resign_online(&self, online: &OnlineKeys, now: DateTime<Utc>) -> Result<()> {
        let _lock = self.lock()?;
        self.resign_online_locked(online, now)
    }

    fn resign_online_locked(&self, online: &OnlineKeys, now: DateTime<Utc>) -> Result<()> {
        let state = self.state()?;
        let roles = self.current_roles(&state)?;
        self.write_snapshot_and_timestamp(Some(&state), &roles, online, now)
    }

    /// Re-signs timestamp (and snapshot) if they expire within half their lifetime. Returns
    /// what was re-signed.
    pub fn refresh_online(
        &self,
        online: &OnlineKeys,
        now: DateTime<Utc>,
    ) -> Result<Vec<&'static str>> {
        // Nothing due (the common case): no lock taken — on a bucket the lease costs two
        // writes, and every instance checks every minute.
        let due = |state: &RepoState| {
            state.snapshot.expires.at() - now < self.lifetimes.snapshot / 2
                || state.timestamp.expires.at() - now < self.lifetimes.timestamp / 2
        };
        if !due(&self.state()?) {
            return Ok(Vec::new());
        }
        let _lock = self.lock()?;
        let state = self.state()?;
        let mut done = Vec::new();
        if state.snapshot.expires.at() - now < self.lifetimes.snapshot / 2 {
            self.resign_online_locked(online, now)?;
            done.extend(["snapshot", "timestamp"]);
        } else if state.timestamp.expires.at() - now < self.lifetimes.timestamp / 2 {
            let snapshot_bytes = self
                .read_metadata(&format!("{}.snapshot.json", state.snapshot.version))?
                .bytes;
            self.write_timestamp(
                Some(&state),
                state.snapshot.version,
                &snapshot_bytes,
                online,
                now,
            )?;
            done.push("timestamp");
        }
        Ok(done)
    }
}

/// Target names become file names and URL paths: no empty, `.` or `..` segment, no
/// backslash or NUL, no leading `/`.
pub fn check_target_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name.contains('\\')
        || name.contains('\0')
        || name
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
    if bad {
        return Err(Error::Verification(rampart_core::Error::UnsafeName {
            name: name.to_owned(),
            reason: "target names are relative paths without empty, '.' or '..' segments".into(),
        }));
    }
    Ok(())
}

/// Copies `from` to `to` while hashing, in constant memory.
fn copy_hashing(from: &Path, to: &Path) -> Result<(u64, Hashes)> {
    let mut out = fs::File::create(to).map_err(|e| Error::io(to, e))?;
    let read = read_hashing(from, |chunk| {
        out.write_all(chunk).map_err(|e| Error::io(to, e))
    })?;
    out.sync_all().map_err(|e| Error::io(to, e))?;
    Ok(read)
}

/// Reads `from` in chunks, in constant memory, handing each to `each`; returns its length
/// and SHA-256 and SHA-512 hashes.
pub(crate) fn read_hashing(
    from: &Path,
    mut each: impl FnMut(&[u8]) -> Result<()>,
) -> Result<(u64, Hashes)> {
    use aws_lc_rs::digest::{Context, SHA256, SHA512};
    let mut input = fs::File::open(from).map_err(|e| Error::io(from, e))?;
    let (mut h256, mut h512) = (Context::new(&SHA256), Context::new(&SHA512));
    let mut buf = vec![0u8; 256 * 1024];
    let mut length = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(|e| Error::io(from, e))?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        h256.update(chunk);
        h512.update(chunk);
        each(chunk)?;
        length += n as u64;
    }
    let mut hashes = Hashes::new();
    hashes.insert("sha256".into(), hex::encode(h256.finish()));
    hashes.insert("sha512".into(), hex::encode(h512.finish()));
    Ok((length, hashes))
}

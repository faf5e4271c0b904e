//! The release engineer's and security officer's operations on a data directory: publish an
//! image, sign offline, import, delegate to a supplier, rotate a key. The CLI is a thin layer
//! over these.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rampart_core::encryption::ContentKey;
use rampart_core::key::KeyScheme;
use rampart_core::metadata::{add_signatures, sign_role, Expiry, Root};
use rampart_core::signer::{InMemorySigner, Signer};
use rampart_core::uptane::ImageCustom;

use crate::config::Config;
use crate::db::{Db, ImageKey};
use crate::error::{Error, Result};
use crate::keys::kek::{reseal_content_keys, ContentKek};
use crate::keys::{generate_key_file, load_key_file, read_public_key, KeySource};
use crate::layout::Layout;
use crate::repo::{sign_root, RepoState, Repository};

/// The image repository of a data directory, where its configuration keeps it.
pub fn image_repo(layout: &Layout) -> Result<Repository> {
    image_repo_with(layout, &Config::load(layout)?)
}

/// The image repository of a data directory whose configuration is `config`: its folder
/// `public/image/`, or the bucket of `[image_store]`.
pub fn image_repo_with(layout: &Layout, config: &Config) -> Result<Repository> {
    Ok(Repository::on(crate::store::open(
        &config.image_store,
        &layout.image_metadata(),
        &layout.image_targets(),
    )?))
}

/// The offline targets key where the key ceremony left it — or, once it was moved to an
/// offline machine as it should be, an error saying how to sign instead: the key given with
/// `flag`, or the unsigned document exported, signed offline and imported.
fn offline_targets_key(config: &Config, layout: &Layout, flag: &str) -> Result<PathBuf> {
    let path = config.offline_keys_dir(layout).join("image-targets.pem");
    if path.exists() {
        return Ok(path);
    }
    Err(Error::Config(format!(
        "the offline targets key is not at {} (moved to an offline machine?): give it with \
         {flag} PATH/image-targets.pem, or sign offline: --export-unsigned FILE here, \
         `rampart sign FILE --key image-targets.pem` on the offline machine, then \
         `rampart import FILE --data-dir …` here",
        path.display()
    )))
}

fn load_signers(paths: &[PathBuf]) -> Result<Vec<Box<dyn Signer>>> {
    paths
        .iter()
        .map(|p| Ok(Box::new(load_key_file(p)?) as Box<dyn Signer>))
        .collect()
}

/// A request to publish an image.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// The image file.
    pub file: PathBuf,
    /// Target path (default: the file name).
    pub name: Option<String>,
    /// Hardware the image is for.
    pub hardware_id: String,
    /// Human-readable version.
    pub version: Option<String>,
    /// Release counter (default: one above the highest for this hardware ID).
    pub release_counter: Option<u64>,
    /// Signing role (`targets` or a supplier's delegated role).
    pub role: String,
    /// Keys of that role (default for `targets`: the offline targets key).
    pub keys: Vec<PathBuf>,
    /// Publish only the ciphertext (per-ECU encryption).
    pub encrypt: bool,
    /// Do not sign: write the unsigned role here for offline signing.
    pub export_unsigned: Option<PathBuf>,
    /// What the update is for (told to the owner).
    pub purpose: Option<String>,
    /// How long installing it takes, in seconds (told to the owner).
    pub install_seconds: Option<u64>,
    /// Publish over an image of the same name with other bytes (refused otherwise).
    pub replace: bool,
    /// Published images (same hardware ID) to make a delta from, each signed with the image.
    pub delta_from: Vec<String>,
    /// The hash algorithms listed for the image (`sha256`, `sha512`); empty: both. One hash
    /// halves what a vehicle computes per byte; both guard against a break of either.
    pub hash_algorithms: Vec<String>,
}

impl PublishRequest {
    /// Publishing `file` for `hardware_id` with every default: named after the file, the next
    /// release counter, signed by the top-level targets role with its offline key, in clear.
    pub fn new(file: impl Into<PathBuf>, hardware_id: impl Into<String>) -> Self {
        PublishRequest {
            file: file.into(),
            name: None,
            hardware_id: hardware_id.into(),
            version: None,
            release_counter: None,
            role: "targets".into(),
            keys: Vec::new(),
            encrypt: false,
            export_unsigned: None,
            purpose: None,
            install_seconds: None,
            replace: false,
            delta_from: Vec::new(),
            hash_algorithms: Vec::new(),
        }
    }
}

/// What was published.
#[derive(Debug, Clone)]
pub struct PublishOutcome {
    /// Target path.
    pub name: String,
    /// Role.
    pub role: String,
    /// Length.
    pub length: u64,
    /// sha256.
    pub sha256: String,
    /// Release counter.
    pub release_counter: u64,
    /// New role version (committed or exported).
    pub role_version: u64,
    /// Whether it was committed (false: exported for offline signing).
    pub committed: bool,
    /// The deltas signed with it: target path and length.
    pub deltas: Vec<(String, u64)>,
}

fn next_release_counter(state: &RepoState, hardware_id: &str) -> u64 {
    state
        .roles
        .values()
        .flat_map(|t| t.targets.values())
        .filter_map(|f| rampart_core::uptane::image_custom("", f).ok())
        .filter(|c| c.hardware_id == hardware_id)
        .map(|c| c.release_counter)
        .max()
        .map_or(1, |m| m + 1)
}

/// The hashes to list for an image: those of `algorithms` (`sha256`, `sha512`; empty: all
/// that were computed).
fn listed_hashes(
    mut computed: rampart_core::hash::Hashes,
    algorithms: &[String],
) -> Result<rampart_core::hash::Hashes> {
    if algorithms.is_empty() {
        return Ok(computed);
    }
    let mut out = rampart_core::hash::Hashes::new();
    for alg in algorithms {
        let digest = computed.remove(alg.as_str()).ok_or_else(|| {
            Error::BadRequest(format!(
                "--hash {alg}: not a hash algorithm Rampart lists (sha256, sha512)"
            ))
        })?;
        out.insert(alg.clone(), digest);
    }
    Ok(out)
}

/// Stores `file` as the target `name` in the public folder — only its ciphertext when
/// `encrypt` (with `db`), under a fresh content key sealed into the database for the
/// director — and returns the plaintext's length and hashes (what the repository signs).
pub(crate) async fn store(
    layout: &Layout,
    config: &Config,
    repo: &Repository,
    file: &Path,
    name: &str,
    encrypt: Option<&Db>,
) -> Result<(u64, rampart_core::hash::Hashes)> {
    let Some(db) = encrypt else {
        return repo.store_image(file, name);
    };
    let kek = config.content_kek(layout)?;
    let key = ContentKey::generate()?;
    let copy = repo.store_encrypted(file, name, &key)?;
    db.store_image_key(&ImageKey {
        target: name.to_owned(),
        content_key: kek.seal(name, key.as_bytes())?,
        ciphertext_path: copy.ciphertext_path.clone(),
        ciphertext_length: copy.ciphertext_length,
        ciphertext_hashes: serde_json::to_string(&copy.ciphertext_hashes).unwrap_or_default(),
    })
    .await?;
    Ok((copy.length, copy.hashes))
}

/// How many times a publish stages and commits when other publishes keep committing first.
const PUBLISH_ATTEMPTS: u32 = 8;

/// Publishes an image: stores it (or only its ciphertext), stages the role, signs it with
/// the role's keys (or exports it unsigned), and commits it with a new snapshot and
/// timestamp.
pub async fn publish(
    layout: &Layout,
    req: &PublishRequest,
    now: DateTime<Utc>,
) -> Result<PublishOutcome> {
    let config = Config::load(layout)?;
    let repo = image_repo_with(layout, &config)?;
    let state = repo.state()?;
    let name = match &req.name {
        Some(n) => n.clone(),
        None => req
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| Error::BadRequest(format!("{} has no file name", req.file.display())))?,
    };
    crate::repo::check_target_name(&name)?;
    let release_counter = req
        .release_counter
        .unwrap_or_else(|| next_release_counter(&state, &req.hardware_id));
    // A name stands for one image: other bytes under a published name are refused unless
    // said on purpose, since vehicles and assignments refer to the name.
    if let Some(published) = state.roles.values().find_map(|t| t.targets.get(&name)) {
        let (_, hashes) = crate::repo::read_hashing(&req.file, |_| Ok(()))?;
        let same = hashes
            .get("sha256")
            .is_some_and(|h| published.hashes.get("sha256") == Some(h));
        if !same && !req.replace {
            return Err(Error::Conflict(format!(
                "{name} is already published with other bytes (sha256 {}…): publish under a new \
                 name, or give --replace to replace it",
                published
                    .hashes
                    .get("sha256")
                    .and_then(|h| h.get(..12))
                    .unwrap_or("?")
            )));
        }
    }
    let custom = ImageCustom {
        hardware_id: req.hardware_id.clone(),
        release_counter,
        version: req.version.clone(),
        purpose: req.purpose.clone(),
        install_seconds: req.install_seconds,
        delta: None,
    };
    // One connection for everything the database keeps of this publish (content keys, deltas).
    let db = if req.encrypt || !req.delta_from.is_empty() {
        Some(Db::connect(&config.database_url(layout)).await?)
    } else {
        None
    };
    let sealed = db.as_ref().filter(|_| req.encrypt);
    let (length, hashes) = store(layout, &config, &repo, &req.file, &name, sealed).await?;
    // The SHA-256 shown to the publisher, whatever the image lists.
    let sha256 = hashes.get("sha256").cloned().unwrap_or_default();
    let hashes = listed_hashes(hashes, &req.hash_algorithms)?;
    let mut deltas = Vec::new();
    for from in &req.delta_from {
        let made = crate::delta::make(
            &crate::delta::DeltaRequest {
                layout,
                config: &config,
                repo: &repo,
                state: &state,
                new_name: &name,
                new_file: &req.file,
                new_length: length,
                new_hashes: &hashes,
                custom: &custom,
                db: db.as_ref(),
                encrypt: req.encrypt,
            },
            from,
        )
        .await?;
        deltas.push(made);
    }
    // The role as it will be signed: this image and its deltas added to the current version.
    let stage = |state: &RepoState| -> Result<crate::repo::StagedTarget> {
        let mut staged = repo.stage_target(
            state,
            &req.role,
            &name,
            length,
            hashes.clone(),
            &custom,
            now,
        )?;
        for d in &deltas {
            if let Some(delegation) = state.delegation(&req.role) {
                if !delegation.is_delegated_path(&d.name) {
                    return Err(Error::BadRequest(format!(
                        "role {} may not sign for {} (paths {:?})",
                        req.role, d.name, delegation.paths
                    )));
                }
            }
            staged.role.targets.insert(d.name.clone(), d.file.clone());
        }
        Ok(staged)
    };
    let mut staged = stage(&state)?;
    let delta_sizes: Vec<(String, u64)> = deltas
        .iter()
        .map(|d| (d.name.clone(), d.file.length))
        .collect();
    if let Some(out) = &req.export_unsigned {
        let doc = Repository::unsigned_document(&staged.role)?;
        std::fs::write(out, doc).map_err(|e| Error::io(out, e))?;
        return Ok(PublishOutcome {
            name,
            role: req.role.clone(),
            length,
            sha256,
            release_counter,
            role_version: staged.role.version,
            committed: false,
            deltas: delta_sizes,
        });
    }
    let keys = if req.keys.is_empty() && req.role == "targets" {
        vec![offline_targets_key(&config, layout, "--key")?]
    } else {
        req.keys.clone()
    };
    if keys.is_empty() {
        return Err(Error::BadRequest(format!("role {} needs --key", req.role)));
    }
    let signers = load_signers(&keys)?;
    let online = config.image_online_keys(layout)?;
    // Another publish may commit between our read and our commit (the repository takes one
    // writer at a time, and refuses a version that is not current + 1): stage again on
    // what it committed.
    let mut attempts = 1;
    while let Err(e) = repo.sign_and_commit(&req.role, &staged.role, &signers, &online, now) {
        let raced = matches!(
            &e,
            Error::Verification(rampart_core::Error::VersionMismatch { .. })
                | Error::WriterRaced(_)
        );
        if !raced || attempts == PUBLISH_ATTEMPTS {
            return Err(e);
        }
        attempts += 1;
        tracing::info!(role = %req.role, "another publish committed first; staging again");
        staged = stage(&repo.state()?)?;
    }
    let version = staged.role.version;
    if let (false, Some(db)) = (deltas.is_empty(), &db) {
        crate::delta::record(db, &staged.role).await?;
    }
    Ok(PublishOutcome {
        name,
        role: req.role.clone(),
        length,
        sha256,
        release_counter,
        role_version: version,
        committed: true,
        deltas: delta_sizes,
    })
}

/// Adds signatures with `keys` to a metadata document (offline signing, on any machine).
pub fn sign_file(document: &Path, keys: &[PathBuf], out: &Path) -> Result<()> {
    let bytes = std::fs::read(document).map_err(|e| Error::io(document, e))?;
    let signers = load_signers(keys)?;
    let refs: Vec<&dyn Signer> = signers.iter().map(|s| s.as_ref()).collect();
    let signed = add_signatures(&bytes, &refs)?;
    std::fs::write(out, signed).map_err(|e| Error::io(out, e))
}

/// Imports a role signed elsewhere: checked against its delegator, then committed; the deltas
/// it signs are recorded for the director.
pub async fn import(
    layout: &Layout,
    role: &str,
    document: &Path,
    now: DateTime<Utc>,
) -> Result<u64> {
    let config = Config::load(layout)?;
    let bytes = std::fs::read(document).map_err(|e| Error::io(document, e))?;
    let online = config.image_online_keys(layout)?;
    let version = image_repo_with(layout, &config)?.commit_role(role, &bytes, &online, now)?;
    let signed: rampart_core::metadata::Targets =
        rampart_core::metadata::Envelope::parse(&bytes, role)?.typed(role)?;
    let has_deltas = signed
        .targets
        .iter()
        .any(|(n, f)| rampart_core::uptane::image_custom(n, f).is_ok_and(|c| c.delta.is_some()));
    if has_deltas {
        let db = Db::connect(&config.database_url(layout)).await?;
        crate::delta::record(&db, &signed).await?;
    }
    Ok(version)
}

/// A request to delegate to a supplier.
#[derive(Debug, Clone)]
pub struct DelegateRequest {
    /// New role name.
    pub name: String,
    /// Delegating role.
    pub parent: String,
    /// Keys of the supplier: public keys, or private key files (then the first empty version
    /// of the role is signed right away).
    pub keys: Vec<PathBuf>,
    /// Signatures the supplier's role needs.
    pub threshold: u32,
    /// Path patterns it may sign for.
    pub paths: Vec<String>,
    /// Hardware IDs it may sign for (empty: any).
    pub hardware_ids: Vec<String>,
    /// Stop the search after this role.
    pub terminating: bool,
    /// Keys of the parent (default for `targets`: the offline targets key).
    pub parent_keys: Vec<PathBuf>,
}

/// Delegates part of the image repository to a supplier.
pub fn delegate(layout: &Layout, req: &DelegateRequest, now: DateTime<Utc>) -> Result<u64> {
    let config = Config::load(layout)?;
    let repo = image_repo_with(layout, &config)?;
    let state = repo.state()?;
    let keys = req
        .keys
        .iter()
        .map(|p| read_public_key(p))
        .collect::<Result<Vec<_>>>()?;
    let private: Vec<InMemorySigner> = req
        .keys
        .iter()
        .filter_map(|p| load_key_file(p).ok())
        .collect();
    let next = repo.stage_delegation(
        &state,
        &req.parent,
        &req.name,
        &keys,
        req.threshold,
        &req.paths,
        &req.hardware_ids,
        req.terminating,
        now,
    )?;
    let parent_keys = if req.parent_keys.is_empty() && req.parent == "targets" {
        vec![offline_targets_key(&config, layout, "--parent-key")?]
    } else {
        req.parent_keys.clone()
    };
    let parent_signers = load_signers(&parent_keys)?;
    let refs: Vec<&dyn Signer> = parent_signers.iter().map(|s| s.as_ref()).collect();
    let parent_bytes = sign_role(&next, &refs)?;
    let online = config.image_online_keys(layout)?;
    if private.len() as u32 >= req.threshold {
        let delegate_refs: Vec<&dyn Signer> = private.iter().map(|s| s as &dyn Signer).collect();
        repo.commit_delegation(
            &req.parent,
            &parent_bytes,
            &req.name,
            &delegate_refs,
            &online,
            now,
        )?;
    } else {
        repo.commit_role(&req.parent, &parent_bytes, &online, now)?;
        tracing::warn!(role = %req.name, "no private keys given: the supplier publishes the role's first version");
    }
    Ok(next.version)
}

/// Which repository a rotation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The image repository.
    Image,
    /// The director.
    Director,
}

/// What a rotation did.
#[derive(Debug, Clone)]
pub struct RotateOutcome {
    /// New root version.
    pub root_version: u64,
    /// New key files.
    pub new_key_files: Vec<PathBuf>,
}

fn retire(path: &Path, now: DateTime<Utc>) -> Result<()> {
    if path.exists() {
        // Never overwrite an earlier retired key (two rotations within a second).
        let stamp = now.format("%Y%m%dT%H%M%S");
        let mut retired = PathBuf::from(format!("{}.retired-{stamp}", path.display()));
        let mut n = 1;
        while retired.exists() {
            n += 1;
            retired = PathBuf::from(format!("{}.retired-{stamp}-{n}", path.display()));
        }
        std::fs::rename(path, &retired).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// Rotates the keys of `role` in `which` repository: new key(s), a new root version signed
/// by the old root threshold (and the new one, for root), and the affected metadata re-signed
/// so clients move to the new keys on their next refresh. For the director, every vehicle's
/// metadata is re-signed on its next request. A running server must be restarted to pick up
/// new online keys.
pub async fn rotate(
    layout: &Layout,
    which: Which,
    role: &str,
    now: DateTime<Utc>,
) -> Result<RotateOutcome> {
    rotate_with(layout, which, role, None, now).await
}

/// Like [`rotate`], with the new key of an online role created where `source` says: a
/// `pkcs11:…` key source (the key is generated on the token, never leaves it, and the
/// configuration is switched to it) or a file path.
pub async fn rotate_into(
    layout: &Layout,
    which: Which,
    role: &str,
    source: &str,
    now: DateTime<Utc>,
) -> Result<RotateOutcome> {
    rotate_with(layout, which, role, Some(source), now).await
}

async fn rotate_with(
    layout: &Layout,
    which: Which,
    role: &str,
    into: Option<&str>,
    now: DateTime<Utc>,
) -> Result<RotateOutcome> {
    let mut config = Config::load(layout)?;
    let offline = config.offline_keys_dir(layout);
    let online_dir = layout.online_keys();
    let prefix = match which {
        Which::Image => "image",
        Which::Director => "director",
    };
    let repo = match which {
        Which::Image => image_repo_with(layout, &config)?,
        Which::Director => Repository::new(layout.director_public(), layout.director_public()),
    };
    let old_version = repo.latest_root_version()?;
    let old_root: Root =
        rampart_core::metadata::Envelope::parse(&repo.root_bytes(old_version)?, "root")?
            .typed("root")?;
    let old_root_files: Vec<PathBuf> = (1..=16)
        .map(|i| offline.join(format!("{prefix}-root-{i}.pem")))
        .filter(|p| p.exists())
        .collect();
    let old_root_signers = load_signers(&old_root_files)?;
    let scheme = KeyScheme::Ed25519;
    let mut new_root = old_root.clone();
    let mut new_files = Vec::new();
    let mut new_root_signers: Vec<Box<dyn Signer>> = Vec::new();
    let role_keys = old_root.role(role)?.clone();
    for id in &role_keys.keyids {
        new_root.keys.remove(id);
    }
    let mut ids = Vec::new();
    if role == "root" {
        for (i, path) in old_root_files.iter().enumerate() {
            retire(path, now)?;
            let fresh = offline.join(format!("{prefix}-root-{}.pem", i + 1));
            let s = generate_key_file(&fresh, scheme)?;
            ids.push(s.key_id());
            new_root.keys.insert(s.key_id(), s.public_key().clone());
            new_files.push(fresh);
            new_root_signers.push(Box::new(s));
        }
    } else {
        let dir = if role == "targets" && which == Which::Image {
            &offline
        } else {
            &online_dir
        };
        let online = !(role == "targets" && which == Which::Image);
        match into {
            Some(spec) if spec.starts_with("pkcs11:") => {
                if !online {
                    return Err(Error::BadRequest(format!(
                        "the {prefix} {role} key is offline; only online keys move to an HSM here"
                    )));
                }
                let hsm = crate::keys::pkcs11::Pkcs11Config::parse(spec)
                    .map_err(|e| Error::Config(format!("key source {spec:?}: {e}")))?;
                let s = crate::keys::pkcs11::Pkcs11Signer::generate(&hsm, scheme)
                    .map_err(|e| Error::Config(e.to_string()))?;
                ids.push(s.key_id());
                new_root.keys.insert(s.key_id(), s.public_key().clone());
                config.online_keys.set(prefix, role, spec)?;
                new_files.push(PathBuf::from(spec));
            }
            _ => {
                let path = match into {
                    Some(p) => PathBuf::from(p),
                    None => dir.join(format!("{prefix}-{role}.pem")),
                };
                retire(&path, now)?;
                let s = generate_key_file(&path, scheme)?;
                ids.push(s.key_id());
                new_root.keys.insert(s.key_id(), s.public_key().clone());
                if online {
                    // Stored relative to the data directory, as the ceremony writes it.
                    let rel = path.strip_prefix(layout.root()).unwrap_or(&path);
                    config
                        .online_keys
                        .set(prefix, role, &rel.display().to_string())?;
                }
                new_files.push(path);
            }
        }
    }
    new_root.roles.insert(
        role.to_owned(),
        rampart_core::metadata::RoleKeys::new(
            ids,
            role_keys.threshold.min(new_files.len() as u32).max(1),
        ),
    );
    new_root.version = old_version + 1;
    new_root.expires = Expiry::new(now + repo.lifetimes.root);
    let mut signers: Vec<&dyn Signer> = old_root_signers.iter().map(|s| s.as_ref()).collect();
    signers.extend(new_root_signers.iter().map(|s| s.as_ref()));
    repo.write_root(&new_root, &sign_root(&new_root, &signers)?)?;
    config.save(layout)?;

    match which {
        Which::Image => {
            let online = config.image_online_keys(layout)?;
            if role == "targets" {
                let state = repo.state()?;
                let mut next = state
                    .roles
                    .get("targets")
                    .cloned()
                    .ok_or_else(|| Error::NotFound("targets role".into()))?;
                next.version += 1;
                next.expires = Expiry::new(now + repo.lifetimes.targets);
                let signers = load_signers(&new_files)?;
                repo.sign_and_commit("targets", &next, &signers, &online, now)?;
            } else {
                repo.resign_online(&online, now)?;
            }
        }
        Which::Director => {
            // Every vehicle's director metadata is re-signed (version + 1) on its next request.
            let db = Db::connect(&config.database_url(layout)).await?;
            db.expire_director_roles().await?;
        }
    }
    Ok(RotateOutcome {
        root_version: new_root.version,
        new_key_files: new_files,
    })
}

/// Moves the content KEK to `to` — a new key file (created 0600; must not exist) or a key
/// generated on a PKCS#11 token (`pkcs11:…`; the label must be free) — re-sealing every
/// stored content key under it, then points `[online_keys] content_kek` at it. Returns how
/// many content keys moved. A running server keeps the old KEK until it is restarted.
pub async fn rotate_content_kek(layout: &Layout, to: &str) -> Result<u64> {
    let mut config = Config::load(layout)?;
    let old = config.content_kek(layout)?;
    let new = match KeySource::parse(to, layout.root()) {
        KeySource::Pkcs11(spec) => ContentKek::generate_pkcs11(&spec)?,
        KeySource::File(path) => ContentKek::create(&path)?,
    };
    let db = Db::connect(&config.database_url(layout)).await?;
    let moved = reseal_content_keys(&db, &old, &new).await?;
    config.online_keys.content_kek = to.to_owned();
    config.save(layout).map_err(|e| {
        Error::Config(format!(
            "content keys are sealed under {to} but rampart.toml could not be updated ({e}); \
             set [online_keys] content_kek = {to:?} by hand"
        ))
    })?;
    Ok(moved)
}

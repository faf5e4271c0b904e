//! Measure 1: a full-verification refresh (Uptane 5.4.4.2) of an image repository with many
//! targets and a director naming five ECUs, through `rampart-core`'s state machine reading
//! the files from disk; and its floor: the same signature checks and hashes done directly
//! with aws-lc-rs, nothing else.
//!
//! The repository is written once by [`generate`] (signed with `rampart-core`, the shape
//! `rampart serve` publishes: consistent snapshots, snapshot and timestamp pinning length,
//! sha256 and sha512 of what they list). python-tuf's `ngclient` reads the same files
//! (`bench/refresh_ngclient.py`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use aws_lc_rs::digest;
use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
use chrono::{DateTime, Duration, Utc};
use rampart_core::client::{Action, Client, Config, Fetched};
use rampart_core::hash::compute_hashes;
use rampart_core::key::{Key, KeyScheme};
use rampart_core::metadata::{
    sign_role, Envelope, Expiry, MetaFile, RoleKeys, Root, Snapshot, TargetFile, Targets,
    Timestamp, SPEC_VERSION,
};
use rampart_core::signer::{InMemorySigner, Signer};
use rampart_core::uptane::{
    DirectorCustom, DirectorVehicle, EcuAssignment, FullVerifier, ImageCustom, Repo, Scope,
    UptaneAction, DIRECTOR_VEHICLE_FIELD,
};
use serde_json::{json, Value};

use crate::{median, Args};

const VIN: &str = "WRAMPARTBENCH0001";

/// What the generator wrote, for both clients (`DIR/vehicle.json`).
#[derive(serde::Serialize, serde::Deserialize)]
struct VehicleFile {
    vin: String,
    /// ECU ID → hardware ID.
    ecus: BTreeMap<String, String>,
    /// ECU ID → target path it is told to install.
    assigned: BTreeMap<String, String>,
    targets: usize,
}

struct RepoKeys {
    root: InMemorySigner,
    timestamp: InMemorySigner,
    snapshot: InMemorySigner,
    targets: InMemorySigner,
}

impl RepoKeys {
    fn generate() -> anyhow::Result<Self> {
        let g = || InMemorySigner::generate(KeyScheme::Ed25519);
        Ok(RepoKeys {
            root: g()?,
            timestamp: g()?,
            snapshot: g()?,
            targets: g()?,
        })
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(dir.join(name), bytes).with_context(|| format!("writing {name}"))
}

/// Signs and writes one repository: `1.root.json`, `root.json`, `1.targets.json`,
/// `1.snapshot.json`, `timestamp.json` (consistent snapshots, like `rampart serve`).
fn write_repo(
    dir: &Path,
    keys: &RepoKeys,
    targets: Targets,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let year = Expiry::new(now + Duration::days(365));
    let mut key_map = BTreeMap::new();
    let mut roles = BTreeMap::new();
    for (role, s) in [
        ("root", &keys.root),
        ("timestamp", &keys.timestamp),
        ("snapshot", &keys.snapshot),
        ("targets", &keys.targets),
    ] {
        key_map.insert(s.key_id(), s.public_key().clone());
        roles.insert(role.to_owned(), RoleKeys::new(vec![s.key_id()], 1));
    }
    let root = Root {
        type_: "root".into(),
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: Some(true),
        version: 1,
        expires: year.clone(),
        keys: key_map,
        roles,
        unrecognized: BTreeMap::new(),
    };
    let root_bytes = sign_role(&root, &[&keys.root])?;
    write(dir, "1.root.json", &root_bytes)?;
    write(dir, "root.json", &root_bytes)?;
    let targets_bytes = sign_role(&targets, &[&keys.targets])?;
    write(dir, "1.targets.json", &targets_bytes)?;
    let snapshot = Snapshot {
        type_: "snapshot".into(),
        spec_version: SPEC_VERSION.into(),
        version: 1,
        expires: year.clone(),
        meta: BTreeMap::from([(
            "targets.json".to_owned(),
            MetaFile::pinning(1, &targets_bytes),
        )]),
        unrecognized: BTreeMap::new(),
    };
    let snapshot_bytes = sign_role(&snapshot, &[&keys.snapshot])?;
    write(dir, "1.snapshot.json", &snapshot_bytes)?;
    let timestamp = Timestamp {
        type_: "timestamp".into(),
        spec_version: SPEC_VERSION.into(),
        version: 1,
        expires: year,
        meta: BTreeMap::from([(
            "snapshot.json".to_owned(),
            MetaFile::pinning(1, &snapshot_bytes),
        )]),
        unrecognized: BTreeMap::new(),
    };
    write(
        dir,
        "timestamp.json",
        &sign_role(&timestamp, &[&keys.timestamp])?,
    )?;
    Ok(())
}

fn empty_targets(now: DateTime<Utc>) -> Targets {
    Targets {
        type_: "targets".into(),
        spec_version: SPEC_VERSION.into(),
        version: 1,
        expires: Expiry::new(now + Duration::days(365)),
        targets: Default::default(),
        delegations: None,
        unrecognized: BTreeMap::new(),
    }
}

/// `refresh-gen DIR [--targets N] [--ecus M]`: writes `DIR/image/metadata`,
/// `DIR/director/metadata` and `DIR/vehicle.json`.
pub(crate) fn generate(args: &Args) -> anyhow::Result<Value> {
    let dir = PathBuf::from(args.word(1, "output directory")?);
    let n: usize = args.num("targets", 10_000)?;
    let ecus: usize = args.num("ecus", 5)?;
    if ecus == 0 || ecus > n {
        bail!("--ecus must be between 1 and --targets");
    }
    let now = Utc::now();
    let mut image = empty_targets(now);
    for i in 0..n {
        let name = format!("fleet/hw-{:03}/firmware-{i:05}.bin", i % 100);
        // Hashes of a stand-in content: the refresh never downloads images.
        let length = 1_048_576 + i as u64;
        let custom = ImageCustom {
            hardware_id: format!("hw-{:03}", i % 100),
            release_counter: 1 + (i as u64 % 7),
            version: Some(format!("1.{}.{}", i % 13, i)),
            purpose: None,
            install_seconds: None,
            delta: None,
        };
        image.targets.insert(
            name.clone(),
            TargetFile {
                length,
                hashes: compute_hashes(name.as_bytes()),
                custom: Some(custom.to_value()),
                unrecognized: BTreeMap::new(),
            },
        );
    }
    let mut director = empty_targets(now);
    director.unrecognized.insert(
        DIRECTOR_VEHICLE_FIELD.to_owned(),
        serde_json::to_value(DirectorVehicle { vin: VIN.into() })?,
    );
    let mut vehicle = VehicleFile {
        vin: VIN.into(),
        ecus: BTreeMap::new(),
        assigned: BTreeMap::new(),
        targets: n,
    };
    // Spread the ECUs' images over the whole repository.
    let step = n / ecus;
    for (k, (name, file)) in image
        .targets
        .iter()
        .step_by(step.max(1))
        .take(ecus)
        .enumerate()
    {
        let ecu_id = format!("ECU-{k}");
        let custom: ImageCustom = serde_json::from_value(file.custom.clone().unwrap_or_default())?;
        let dc = DirectorCustom {
            release_counter: custom.release_counter,
            maintenance_window: None,
            ecus: BTreeMap::from([(
                ecu_id.clone(),
                EcuAssignment {
                    hardware_id: custom.hardware_id.clone(),
                    encryption: None,
                    delta: None,
                },
            )]),
        };
        director.targets.insert(
            name.to_owned(),
            TargetFile {
                length: file.length,
                hashes: file.hashes.clone(),
                custom: Some(dc.to_value()),
                unrecognized: BTreeMap::new(),
            },
        );
        vehicle.ecus.insert(ecu_id.clone(), custom.hardware_id);
        vehicle.assigned.insert(ecu_id, name.to_owned());
    }
    write_repo(
        &dir.join("image/metadata"),
        &RepoKeys::generate()?,
        image,
        now,
    )?;
    write_repo(
        &dir.join("director/metadata"),
        &RepoKeys::generate()?,
        director,
        now,
    )?;
    std::fs::write(
        dir.join("vehicle.json"),
        serde_json::to_vec_pretty(&vehicle)?,
    )?;
    let size = std::fs::metadata(dir.join("image/metadata/1.targets.json"))?.len();
    Ok(json!({"dir": dir, "targets": n, "ecus": ecus, "image_targets_bytes": size}))
}

fn read_vehicle(dir: &Path) -> anyhow::Result<VehicleFile> {
    let bytes =
        std::fs::read(dir.join("vehicle.json")).context("vehicle.json (run refresh-gen)")?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn repo_dir(dir: &Path, repo: Repo) -> PathBuf {
    dir.join(repo.name()).join("metadata")
}

/// Writes like python-tuf's `_persist_file`: temporary file, then rename (no fsync, on
/// either side).
fn persist(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

/// One refresh from the provisioned roots with empty local storage: both clients built,
/// director refreshed and checked, image repository refreshed, each ECU's target looked up.
fn one_refresh(
    dir: &Path,
    local: &Path,
    vehicle: &VehicleFile,
    now: DateTime<Utc>,
) -> anyhow::Result<usize> {
    let mut locals = BTreeMap::new();
    for repo in [Repo::Director, Repo::Image] {
        let l = local.join(repo.name());
        std::fs::create_dir_all(&l)?;
        locals.insert(repo, l);
    }
    let root = |repo: Repo| std::fs::read(repo_dir(dir, repo).join("1.root.json"));
    let director = Client::new("director", &root(Repo::Director)?, now, Config::default())?;
    let image = Client::new("image", &root(Repo::Image)?, now, Config::default())?;
    let mut v = FullVerifier::new(
        director,
        image,
        &vehicle.vin,
        Scope::Primary {
            ecus: vehicle.ecus.clone(),
        },
        BTreeMap::new(),
    );
    v.start();
    loop {
        let (repo, action) = match v.next_action()? {
            UptaneAction::Done => break,
            UptaneAction::Repo { repo, action } => (repo, action),
        };
        let local = locals.get(&repo).context("local dir")?;
        match action {
            Action::ReadLocal { name } => {
                let bytes = std::fs::read(local.join(&name)).ok();
                v.provide_local(repo, bytes)?;
            }
            Action::Fetch { path, max_length } => {
                let fetched = match std::fs::read(repo_dir(dir, repo).join(&path)) {
                    Ok(bytes) if bytes.len() as u64 > max_length => {
                        bail!("{path} is longer than {max_length}")
                    }
                    Ok(bytes) => Fetched::Bytes(bytes),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Fetched::NotFound,
                    Err(e) => return Err(e.into()),
                };
                v.provide_fetched(repo, &path, fetched)?;
            }
            Action::Persist { name, bytes } => persist(local, &name, &bytes)?,
            Action::Remove { name } => {
                let _ = std::fs::remove_file(local.join(name));
            }
            Action::Done => bail!("Done inside a repository action"),
        }
    }
    let verdict = v.verdict().context("no verdict")?;
    Ok(verdict.updates.len())
}

/// A signature and what it covers, ready for aws-lc-rs.
struct SigCheck {
    public: Vec<u8>,
    message: Vec<u8>,
    signature: Vec<u8>,
}

fn ed25519_public(key: &Key) -> anyhow::Result<Vec<u8>> {
    if key.scheme != "ed25519" {
        bail!("the floor is written for ed25519 keys");
    }
    Ok(hex::decode(&key.keyval.public)?)
}

/// The signature checks and hashes a refresh of `repo` performs, read from the files:
/// root (its own key, at client construction), timestamp, snapshot, targets (each by the
/// root's key for that role); snapshot and targets are hashed with every listed algorithm.
fn floor_work(dir: &Path, repo: Repo) -> anyhow::Result<(Vec<SigCheck>, Vec<Vec<u8>>)> {
    let d = repo_dir(dir, repo);
    let root_bytes = std::fs::read(d.join("1.root.json"))?;
    let root: Root = Envelope::parse(&root_bytes, "root")?.typed("root")?;
    let mut sigs = Vec::new();
    let mut hashed = Vec::new();
    for (role, file) in [
        ("root", "1.root.json"),
        ("timestamp", "timestamp.json"),
        ("snapshot", "1.snapshot.json"),
        ("targets", "1.targets.json"),
    ] {
        let bytes = std::fs::read(d.join(file))?;
        let env = Envelope::parse(&bytes, role)?;
        let keyids = &root.role(role)?.keyids;
        for sig in &env.signatures {
            if !keyids.contains(&sig.keyid) {
                continue;
            }
            let key = root.keys.get(&sig.keyid).context("key")?;
            sigs.push(SigCheck {
                public: ed25519_public(key)?,
                message: env.canonical_signed.clone(),
                signature: sig.bytes().context("signature hex")?,
            });
        }
        if role == "snapshot" || role == "targets" {
            hashed.push(bytes);
        }
    }
    Ok((sigs, hashed))
}

fn floor_once(sigs: &[SigCheck], hashed: &[Vec<u8>]) -> anyhow::Result<()> {
    for s in sigs {
        UnparsedPublicKey::new(&ED25519, &s.public)
            .verify(&s.message, &s.signature)
            .map_err(|_| anyhow::anyhow!("floor: a signature did not verify"))?;
    }
    for bytes in hashed {
        // Every listed algorithm: Rampart's repositories list sha256 and sha512.
        std::hint::black_box(digest::digest(&digest::SHA256, bytes));
        std::hint::black_box(digest::digest(&digest::SHA512, bytes));
    }
    Ok(())
}

/// `refresh DIR [--iterations N] [--floor-iterations N] [--work DIR]`: median time of [`one_refresh`] and of the
/// floor.
pub(crate) fn measure(args: &Args) -> anyhow::Result<Value> {
    let dir = PathBuf::from(args.word(1, "repository directory")?);
    let iterations: usize = args.num("iterations", 30)?;
    let work = PathBuf::from(
        args.get("work")
            .map(str::to_owned)
            .unwrap_or_else(|| dir.join("work-rampart").display().to_string()),
    );
    let vehicle = read_vehicle(&dir)?;
    let now = Utc::now();
    let mut times = Vec::new();
    // One warm-up run (page cache, allocator), not counted.
    for i in 0..=iterations {
        let local = work.join(format!("run-{i}"));
        let _ = std::fs::remove_dir_all(&local);
        let t = Instant::now();
        let updates = one_refresh(&dir, &local, &vehicle, now)?;
        let elapsed = t.elapsed().as_secs_f64();
        if updates != vehicle.ecus.len() {
            bail!(
                "refresh verified {updates} updates, expected {}",
                vehicle.ecus.len()
            );
        }
        if i > 0 {
            times.push(elapsed);
        }
        let _ = std::fs::remove_dir_all(&local);
    }
    let mut sigs = Vec::new();
    let mut hashed = Vec::new();
    for repo in [Repo::Director, Repo::Image] {
        let (s, h) = floor_work(&dir, repo)?;
        sigs.extend(s);
        hashed.extend(h);
    }
    let floor_iterations: usize = args.num("floor-iterations", iterations.max(10) * 3)?;
    let mut floor = Vec::new();
    for i in 0..=floor_iterations {
        let t = Instant::now();
        floor_once(&sigs, &hashed)?;
        if i > 0 {
            floor.push(t.elapsed().as_secs_f64());
        }
    }
    let hashed_bytes: usize = hashed.iter().map(Vec::len).sum();
    let signed_bytes: usize = sigs.iter().map(|s| s.message.len()).sum();
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(json!({
        "iterations": iterations,
        "times_s": times.clone(),
        "floor_times_s": floor.clone(),
        "refresh_median_s": median(&mut times),
        "refresh_min_s": min,
        "floor_median_s": median(&mut floor),
        "signatures": sigs.len(),
        "signed_bytes": signed_bytes,
        "hashed_bytes": hashed_bytes,
        "targets": vehicle.targets,
        "ecus": vehicle.ecus.len(),
    }))
}

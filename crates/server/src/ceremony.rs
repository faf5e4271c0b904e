//! The key ceremony (`rampart repo init`): every key of both repositories, their first
//! metadata, the fleet PKI and the configuration, in one go.
//!
//! Root and targets keys of the image repository and the director's root keys are *offline*:
//! they go to a separate folder (0700, files 0600) that should leave the machine after the
//! ceremony; the running server never needs them. Snapshot and timestamp keys (and the
//! director's targets key, which signs per-vehicle instructions on demand) are online.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rampart_core::key::KeyScheme;
use rampart_core::signer::{InMemorySigner, Signer};

use crate::config::{Config, EventsConfig, LimitsConfig, OnlineKeyConfig, PkiConfig, ServerConfig};
use crate::error::{Error, Result};
use crate::keys::{create_private_dir, generate_key_file};
use crate::layout::Layout;
use crate::repo::{new_root, sign_root, OnlineKeys, Repository};

/// Choices of the ceremony.
#[derive(Debug, Clone)]
pub struct CeremonyOptions {
    /// Number of root keys (each repository).
    pub root_keys: u32,
    /// Root threshold.
    pub root_threshold: u32,
    /// Key scheme for every generated key.
    pub scheme: KeyScheme,
    /// Offline keys folder (default `D/offline-keys`).
    pub offline_dir: Option<PathBuf>,
    /// Listen address written to the configuration.
    pub listen: String,
    /// Names of the server in its TLS certificate.
    pub server_names: Vec<String>,
    /// Database URL (default SQLite in the data dir).
    pub database: Option<String>,
    /// Serve HTTPS.
    pub tls: bool,
}

impl Default for CeremonyOptions {
    fn default() -> Self {
        CeremonyOptions {
            root_keys: 3,
            root_threshold: 2,
            scheme: KeyScheme::Ed25519,
            offline_dir: None,
            listen: "127.0.0.1:8443".into(),
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            database: None,
            tls: true,
        }
    }
}

/// What the ceremony produced.
#[derive(Debug, Clone)]
pub struct CeremonyReport {
    /// Offline keys folder.
    pub offline_dir: PathBuf,
    /// Key IDs by role (`image root`, `director targets`, …).
    pub key_ids: BTreeMap<String, Vec<String>>,
}

fn gen(
    dir: &Path,
    name: &str,
    scheme: KeyScheme,
    ids: &mut BTreeMap<String, Vec<String>>,
    label: &str,
) -> Result<InMemorySigner> {
    let s = generate_key_file(&dir.join(name), scheme)?;
    ids.entry(label.to_owned()).or_default().push(s.key_id().0);
    Ok(s)
}

/// Runs the ceremony in data directory `layout` (which must not hold a configuration yet).
pub fn init(layout: &Layout, opts: &CeremonyOptions, now: DateTime<Utc>) -> Result<CeremonyReport> {
    if layout.config_file().exists() {
        return Err(Error::Conflict(format!(
            "{} exists: this data directory is already initialised",
            layout.config_file().display()
        )));
    }
    if opts.root_threshold == 0 || opts.root_threshold > opts.root_keys {
        return Err(Error::BadRequest(format!(
            "root threshold {} of {} keys can never be met",
            opts.root_threshold, opts.root_keys
        )));
    }
    // The data directory holds keys, the database and the configuration: private (0700).
    create_private_dir(layout.root())?;
    let offline = opts
        .offline_dir
        .clone()
        .unwrap_or_else(|| layout.offline_keys());
    create_private_dir(&offline)?;
    create_private_dir(&layout.online_keys())?;
    let online_dir = layout.online_keys();
    let mut ids = BTreeMap::new();
    let scheme = opts.scheme;

    // Image repository.
    let image_roots = (1..=opts.root_keys)
        .map(|i| {
            gen(
                &offline,
                &format!("image-root-{i}.pem"),
                scheme,
                &mut ids,
                "image root",
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let image_targets = gen(
        &offline,
        "image-targets.pem",
        scheme,
        &mut ids,
        "image targets",
    )?;
    let image_snapshot = gen(
        &online_dir,
        "image-snapshot.pem",
        scheme,
        &mut ids,
        "image snapshot",
    )?;
    let image_timestamp = gen(
        &online_dir,
        "image-timestamp.pem",
        scheme,
        &mut ids,
        "image timestamp",
    )?;
    let repo = Repository::new(layout.image_metadata(), layout.image_targets());
    let mut roles = BTreeMap::new();
    roles.insert(
        "root".to_owned(),
        (
            image_roots.iter().map(|s| s.public_key().clone()).collect(),
            opts.root_threshold,
        ),
    );
    roles.insert(
        "targets".to_owned(),
        (vec![image_targets.public_key().clone()], 1),
    );
    roles.insert(
        "snapshot".to_owned(),
        (vec![image_snapshot.public_key().clone()], 1),
    );
    roles.insert(
        "timestamp".to_owned(),
        (vec![image_timestamp.public_key().clone()], 1),
    );
    let root = new_root(&roles, 1, now + repo.lifetimes.root)?;
    let root_signers: Vec<&dyn Signer> = image_roots.iter().map(|s| s as &dyn Signer).collect();
    let online = OnlineKeys {
        snapshot: Box::new(image_snapshot),
        timestamp: Box::new(image_timestamp),
    };
    repo.create(&root, &root_signers, &[&image_targets], &online, now)?;

    // Director: offline root, online targets/snapshot/timestamp.
    let director_roots = (1..=opts.root_keys)
        .map(|i| {
            gen(
                &offline,
                &format!("director-root-{i}.pem"),
                scheme,
                &mut ids,
                "director root",
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let director_targets = gen(
        &online_dir,
        "director-targets.pem",
        scheme,
        &mut ids,
        "director targets",
    )?;
    let director_snapshot = gen(
        &online_dir,
        "director-snapshot.pem",
        scheme,
        &mut ids,
        "director snapshot",
    )?;
    let director_timestamp = gen(
        &online_dir,
        "director-timestamp.pem",
        scheme,
        &mut ids,
        "director timestamp",
    )?;
    let mut droles = BTreeMap::new();
    droles.insert(
        "root".to_owned(),
        (
            director_roots
                .iter()
                .map(|s| s.public_key().clone())
                .collect(),
            opts.root_threshold,
        ),
    );
    droles.insert(
        "targets".to_owned(),
        (vec![director_targets.public_key().clone()], 1),
    );
    droles.insert(
        "snapshot".to_owned(),
        (vec![director_snapshot.public_key().clone()], 1),
    );
    droles.insert(
        "timestamp".to_owned(),
        (vec![director_timestamp.public_key().clone()], 1),
    );
    let droot = new_root(&droles, 1, now + repo.lifetimes.root)?;
    let dsigners: Vec<&dyn Signer> = director_roots.iter().map(|s| s as &dyn Signer).collect();
    let director_repo = Repository::new(layout.director_public(), layout.director_public());
    std::fs::create_dir_all(layout.director_public())
        .map_err(|e| Error::io(layout.director_public(), e))?;
    director_repo.write_root(&droot, &sign_root(&droot, &dsigners)?)?;

    // The key-encryption key of the content keys of encrypted images.
    crate::keys::kek::ContentKek::create(&online_dir.join(crate::keys::kek::DEFAULT_FILE_NAME))?;

    // PKI and configuration.
    // The PKI also holds the admin token, so it is made even for a plain-HTTP lab server.
    crate::pki::init(&layout.pki(), &opts.server_names, 825)
        .map_err(|e| Error::Config(format!("PKI: {e}")))?;
    let rel = |p: &Path| {
        p.strip_prefix(layout.root())
            .map(|r| r.display().to_string())
            .unwrap_or_else(|_| p.display().to_string())
    };
    let config = Config {
        listen: opts.listen.clone(),
        tls: opts.tls,
        database: opts.database.clone(),
        offline_keys: rel(&offline),
        online_keys: OnlineKeyConfig {
            image_snapshot: rel(&online_dir.join("image-snapshot.pem")),
            image_timestamp: rel(&online_dir.join("image-timestamp.pem")),
            director_targets: rel(&online_dir.join("director-targets.pem")),
            director_snapshot: rel(&online_dir.join("director-snapshot.pem")),
            director_timestamp: rel(&online_dir.join("director-timestamp.pem")),
            content_kek: rel(&online_dir.join(crate::keys::kek::DEFAULT_FILE_NAME)),
        },
        limits: LimitsConfig::default(),
        server: ServerConfig::default(),
        events: EventsConfig::default(),
        pki: PkiConfig::default(),
    };
    config.save(layout)?;
    Ok(CeremonyReport {
        offline_dir: offline,
        key_ids: ids,
    })
}

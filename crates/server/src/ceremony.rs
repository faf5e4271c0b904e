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
use rampart_core::key::Key;
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
    /// Where the image repository's public files go (default: the data directory).
    pub image_store: crate::store::ImageStoreConfig,
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
            image_store: Default::default(),
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

/// One repository's keys, as the ceremony makes them.
struct RepositoryKeys {
    root: Vec<InMemorySigner>,
    targets: InMemorySigner,
    snapshot: InMemorySigner,
    timestamp: InMemorySigner,
}

impl RepositoryKeys {
    /// Generates `repo`'s keys (`image` or `director`): root keys always offline, the targets
    /// key offline for the image repository and online for the director, snapshot and
    /// timestamp online. Key files are named `REPO-ROLE[-N].pem`; their IDs go to `ids`.
    fn generate(
        repo: &str,
        offline: &Path,
        online: &Path,
        opts: &CeremonyOptions,
        ids: &mut BTreeMap<String, Vec<String>>,
    ) -> Result<Self> {
        let scheme = opts.scheme;
        let root = (1..=opts.root_keys)
            .map(|i| {
                gen(
                    offline,
                    &format!("{repo}-root-{i}.pem"),
                    scheme,
                    ids,
                    &format!("{repo} root"),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let targets_dir = if repo == "director" { online } else { offline };
        let mut one = |dir: &Path, role: &str| {
            gen(
                dir,
                &format!("{repo}-{role}.pem"),
                scheme,
                ids,
                &format!("{repo} {role}"),
            )
        };
        Ok(RepositoryKeys {
            root,
            targets: one(targets_dir, "targets")?,
            snapshot: one(online, "snapshot")?,
            timestamp: one(online, "timestamp")?,
        })
    }

    /// The role table of the first root: `threshold` of the root keys, one key per other role.
    fn roles(&self, threshold: u32) -> BTreeMap<String, (Vec<Key>, u32)> {
        BTreeMap::from([
            (
                "root".to_owned(),
                (
                    self.root.iter().map(|s| s.public_key().clone()).collect(),
                    threshold,
                ),
            ),
            (
                "targets".to_owned(),
                (vec![self.targets.public_key().clone()], 1),
            ),
            (
                "snapshot".to_owned(),
                (vec![self.snapshot.public_key().clone()], 1),
            ),
            (
                "timestamp".to_owned(),
                (vec![self.timestamp.public_key().clone()], 1),
            ),
        ])
    }

    fn root_signers(&self) -> Vec<&dyn Signer> {
        self.root.iter().map(|s| s as &dyn Signer).collect()
    }
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
    let online_dir = layout.online_keys();
    create_private_dir(&online_dir)?;
    let mut ids = BTreeMap::new();

    // Image repository: offline root and targets, online snapshot and timestamp.
    let image = RepositoryKeys::generate("image", &offline, &online_dir, opts, &mut ids)?;
    let repo = Repository::on(crate::store::open(
        &opts.image_store,
        &layout.image_metadata(),
        &layout.image_targets(),
    )?);
    let root = new_root(
        &image.roles(opts.root_threshold),
        1,
        now + repo.lifetimes.root,
    )?;
    let RepositoryKeys {
        root: image_root,
        targets: image_targets,
        snapshot,
        timestamp,
    } = image;
    let root_signers: Vec<&dyn Signer> = image_root.iter().map(|s| s as &dyn Signer).collect();
    let online = OnlineKeys {
        snapshot: Box::new(snapshot),
        timestamp: Box::new(timestamp),
    };
    repo.create(&root, &root_signers, &[&image_targets], &online, now)?;

    // Director: offline root, online targets, snapshot and timestamp.
    let director = RepositoryKeys::generate("director", &offline, &online_dir, opts, &mut ids)?;
    let droot = new_root(
        &director.roles(opts.root_threshold),
        1,
        now + repo.lifetimes.root,
    )?;
    let director_repo = Repository::new(layout.director_public(), layout.director_public());
    std::fs::create_dir_all(layout.director_public())
        .map_err(|e| Error::io(layout.director_public(), e))?;
    director_repo.write_root(&droot, &sign_root(&droot, &director.root_signers())?)?;

    // The key-encryption key of the content keys of encrypted images.
    crate::keys::kek::ContentKek::create(&online_dir.join(crate::keys::kek::DEFAULT_FILE_NAME))?;

    // PKI (it also holds the admin token, so it is made even for a plain-HTTP lab server)
    // and the configuration.
    crate::pki::init(&layout.pki(), &opts.server_names, 825)
        .map_err(|e| Error::Config(format!("PKI: {e}")))?;
    write_config(layout, opts, &offline, &online_dir)?;
    Ok(CeremonyReport {
        offline_dir: offline,
        key_ids: ids,
    })
}

/// `rampart.toml` of a fresh data directory: paths relative to it where they are inside.
fn write_config(
    layout: &Layout,
    opts: &CeremonyOptions,
    offline: &Path,
    online_dir: &Path,
) -> Result<()> {
    let rel = |p: &Path| {
        p.strip_prefix(layout.root())
            .map(|r| r.display().to_string())
            .unwrap_or_else(|_| p.display().to_string())
    };
    let config = Config {
        listen: opts.listen.clone(),
        tls: opts.tls,
        database: opts.database.clone(),
        offline_keys: rel(offline),
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
        manifests: Default::default(),
        pki: PkiConfig::default(),
        campaigns: Default::default(),
        mqtt: Default::default(),
        vsoc: Default::default(),
        console: Default::default(),
        image_store: opts.image_store.clone(),
    };
    config.save(layout)
}

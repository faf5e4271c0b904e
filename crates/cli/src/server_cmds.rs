//! Cloud-side commands: the key ceremony, publishing, offline signing, delegation, key
//! rotation, the fleet PKI, `serve`, and the admin API client.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rampart_core::key::KeyScheme;
use rampart_server::ceremony::{self, CeremonyOptions};
use rampart_server::layout::Layout;
use rampart_server::ops;

/// `--data-dir`, shared by the cloud commands.
#[derive(Debug, Clone, Args)]
pub(crate) struct DataDir {
    /// Data directory of the server (configuration, keys, public folder, database).
    #[arg(
        long,
        env = "RAMPART_DATA_DIR",
        default_value = "rampart-data",
        global = true
    )]
    pub data_dir: PathBuf,
}

impl DataDir {
    pub(crate) fn layout(&self) -> Layout {
        Layout::new(&self.data_dir)
    }
}

/// `rampart repo …`
#[derive(Debug, Subcommand)]
pub(crate) enum RepoCommand {
    /// Key ceremony: keys, first metadata of both repositories, fleet PKI, configuration.
    Init {
        #[command(flatten)]
        data: DataDir,
        /// Number of root keys per repository.
        #[arg(long, default_value_t = 3)]
        root_keys: u32,
        /// Root signature threshold.
        #[arg(long, default_value_t = 2)]
        root_threshold: u32,
        /// Key type of generated keys: ed25519, ecdsa or rsa.
        #[arg(long, default_value = "ed25519")]
        scheme: String,
        /// Where to write the offline keys (default DATA_DIR/offline-keys).
        #[arg(long)]
        offline_keys: Option<PathBuf>,
        /// Address the server will listen on.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: String,
        /// Server names for the TLS certificate (repeatable).
        #[arg(long = "server-name", default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
        server_names: Vec<String>,
        /// Database URL (default: SQLite in the data directory).
        #[arg(long)]
        database: Option<String>,
        #[command(flatten)]
        image_store: Box<ImageStoreArgs>,
        /// Serve plain HTTP (labs only; vehicles are then identified by signatures alone).
        #[arg(long)]
        danger_plain_http: bool,
    },
    /// Show the image repository's targets.
    List {
        #[command(flatten)]
        data: DataDir,
    },
}

/// `rampart publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    #[command(flatten)]
    data: DataDir,
    /// The image file.
    file: PathBuf,
    /// Hardware the image is built for.
    #[arg(long)]
    hardware_id: String,
    /// The version people know it by ("2.0"), shown to the owner; decisions use the
    /// release counter.
    #[arg(long)]
    version: Option<String>,
    /// What the update is for, shown to the owner before it installs (UNECE R156 §7.2).
    #[arg(long)]
    purpose: Option<String>,
    /// How long installing it takes, in seconds, shown to the owner (default: estimated from
    /// the size).
    #[arg(long)]
    install_seconds: Option<u64>,
    /// Replace an image published under the same name with other bytes.
    #[arg(long)]
    replace: bool,
    /// Anti-rollback counter (default: one above the highest for this hardware ID).
    #[arg(long)]
    release_counter: Option<u64>,
    /// Target path (default: the file name).
    #[arg(long)]
    name: Option<String>,
    /// Signing role (a supplier's delegated role, or `targets`).
    #[arg(long, default_value = "targets")]
    role: String,
    /// Key file(s) of the role (default for `targets`: the offline targets key).
    #[arg(long = "key")]
    keys: Vec<PathBuf>,
    /// Publish only the ciphertext; the director wraps the key for each ECU.
    #[arg(long)]
    encrypt: bool,
    /// Do not sign: write the unsigned role here, to sign offline with `rampart sign`.
    #[arg(long)]
    export_unsigned: Option<PathBuf>,
    /// Also make and sign a delta from this published image (same hardware ID; repeatable):
    /// ECUs that run it download the delta instead of the whole image.
    #[arg(long = "delta-from", value_name = "TARGET")]
    delta_from: Vec<String>,
    /// A hash algorithm to list for the image (repeatable; default both sha256 and sha512).
    /// `--hash sha256` alone halves the hashing a vehicle does per byte.
    #[arg(long = "hash", value_name = "ALG", value_parser = ["sha256", "sha512"])]
    hashes: Vec<String>,
}

/// `rampart offline-bundle …`
#[derive(Debug, Subcommand)]
pub(crate) enum OfflineBundleCommand {
    /// Write the bundle of the vehicles' pending updates: their director metadata (signed for
    /// each; usable until its timestamp expires, within a day), the image repository's
    /// metadata and the images (encrypted per ECU where they are).
    Create {
        #[command(flatten)]
        data: DataDir,
        /// A vehicle (repeatable).
        #[arg(long = "vin", required = true)]
        vins: Vec<String>,
        /// The bundle file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `rampart offline-bundle`.
pub(crate) fn offline_bundle(cmd: OfflineBundleCommand) -> anyhow::Result<()> {
    match cmd {
        OfflineBundleCommand::Create { data, vins, out } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let made = rt.block_on(rampart_server::offline::create(
                &data.layout(),
                &vins,
                &out,
                chrono::Utc::now(),
            ))?;
            let d = &made.description;
            rampart_cli::say!(
                "wrote {} ({} bytes): {} vehicle(s), {} image file(s) ({} bytes); usable until {}",
                made.path.display(),
                made.bytes,
                d.vins.len(),
                d.images,
                d.image_bytes,
                d.expires
            );
            Ok(())
        }
    }
}

/// `rampart delegate`.
#[derive(Debug, Args)]
pub(crate) struct DelegateArgs {
    #[command(flatten)]
    data: DataDir,
    /// Name of the supplier's role.
    #[arg(long)]
    name: String,
    /// Path patterns it may sign for (repeatable, e.g. 'acme/*').
    #[arg(long = "path", required = true)]
    paths: Vec<String>,
    /// Hardware IDs it may sign for (repeatable; none: any).
    #[arg(long = "hardware-id")]
    hardware_ids: Vec<String>,
    /// The supplier's key files: public keys, or private keys (then its first version is signed now).
    #[arg(long = "key", required_unless_present = "generate_key")]
    keys: Vec<PathBuf>,
    /// Signatures the supplier's role needs.
    #[arg(long, default_value_t = 1)]
    threshold: u32,
    /// Stop searching other roles for paths this one matches.
    #[arg(long)]
    terminating: bool,
    /// Delegating role.
    #[arg(long, default_value = "targets")]
    parent: String,
    /// Key file(s) of the delegating role (default for `targets`: the offline targets key).
    #[arg(long = "parent-key")]
    parent_keys: Vec<PathBuf>,
    /// Generate a new ed25519 key for the supplier at this path first (and use it).
    #[arg(long)]
    generate_key: Option<PathBuf>,
}

/// `rampart pki …`
#[derive(Debug, Subcommand)]
pub(crate) enum PkiCommand {
    /// Create the fleet CA, the server certificate and the admin token (done by `repo init`).
    Init {
        #[command(flatten)]
        data: DataDir,
        /// Server names for the TLS certificate.
        #[arg(long = "server-name", default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
        server_names: Vec<String>,
    },
    /// Issue a vehicle client certificate whose identity is the VIN.
    Issue {
        #[command(flatten)]
        data: DataDir,
        /// The vehicle's VIN.
        #[arg(long)]
        vin: String,
        /// Output folder (writes VIN.pem with certificate and key, 0600).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Revoke every certificate of a vehicle (--vin) or one certificate (--serial). Written
    /// to the database: running servers refuse the vehicle within `[pki] revocation_refresh_ms`.
    Revoke {
        #[command(flatten)]
        data: DataDir,
        /// The vehicle whose certificates are revoked.
        #[arg(long, required_unless_present = "serial")]
        vin: Option<String>,
        /// The serial (hex, as `pki issue` prints it) of one certificate to revoke.
        #[arg(long)]
        serial: Option<String>,
        /// Why (recorded, and shown in the security event of each refusal).
        #[arg(long, default_value = "revoked by the operator")]
        reason: String,
        /// Database URL (default: from the data directory's configuration).
        #[arg(long)]
        database: Option<String>,
    },
    /// List revoked certificates.
    Revoked {
        #[command(flatten)]
        data: DataDir,
        /// Database URL (default: from the data directory's configuration).
        #[arg(long)]
        database: Option<String>,
    },
    /// Lift the revocation of a vehicle's certificates (--vin).
    Unrevoke {
        #[command(flatten)]
        data: DataDir,
        /// The vehicle.
        #[arg(long)]
        vin: String,
        /// Database URL (default: from the data directory's configuration).
        #[arg(long)]
        database: Option<String>,
    },
}

/// `rampart serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    data: DataDir,
    /// Listen address (overrides the configuration).
    #[arg(long)]
    listen: Option<String>,
    /// Database URL (overrides the configuration), e.g. postgres://user@host/db.
    #[arg(long)]
    database: Option<String>,
    /// Serve plain HTTP (labs only).
    #[arg(long)]
    danger_plain_http: bool,
}

/// `rampart rotate`.
#[derive(Debug, Args)]
pub(crate) struct RotateArgs {
    #[command(flatten)]
    data: DataDir,
    /// Role whose keys to replace: root, targets, snapshot or timestamp; or content-kek (the
    /// key sealing content keys of encrypted images; needs --to).
    #[arg(long)]
    role: String,
    /// Repository: image or director.
    #[arg(long, default_value = "image")]
    repository: String,
    /// Create the new key here instead of a key file next to the old one: a file path or a
    /// PKCS#11 key source (RFC 7512 URI `pkcs11:token=…;object=…?module-path=…&pin-source=env:…`; online keys only).
    #[arg(long)]
    to: Option<String>,
}

/// Where `rampart repo init` puts the image repository's public files.
#[derive(clap::Args, Debug)]
pub(crate) struct ImageStoreArgs {
    /// Keep the image repository's public files on S3-compatible object storage,
    /// `s3://BUCKET/PREFIX` (default: the data directory's public/image/). Credentials from
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; written to `[image_store]`.
    #[arg(long, value_name = "URL")]
    image_store: Option<String>,
    /// The S3-compatible server of --image-store (default: AWS).
    #[arg(long, value_name = "URL", requires = "image_store")]
    image_store_endpoint: Option<String>,
    /// The bucket's region (default: AWS_REGION, or us-east-1).
    #[arg(long, requires = "image_store")]
    image_store_region: Option<String>,
}

fn scheme(name: &str) -> anyhow::Result<KeyScheme> {
    KeyScheme::from_name(name)
        .with_context(|| format!("unknown key scheme {name:?} (ed25519, ecdsa, rsa)"))
}

/// `rampart repo …`
pub(crate) fn repo(cmd: RepoCommand) -> anyhow::Result<()> {
    match cmd {
        RepoCommand::Init {
            data,
            root_keys,
            root_threshold,
            scheme: s,
            offline_keys,
            listen,
            server_names,
            database,
            image_store,
            danger_plain_http,
        } => {
            let layout = data.layout();
            let image_store = rampart_server::store::ImageStoreConfig {
                url: image_store.image_store.unwrap_or_default(),
                endpoint: image_store.image_store_endpoint,
                region: image_store.image_store_region,
                lease_secs: None,
            };
            let opts = CeremonyOptions {
                root_keys,
                root_threshold,
                scheme: scheme(&s)?,
                offline_dir: offline_keys,
                listen,
                server_names,
                database,
                tls: !danger_plain_http,
                image_store,
            };
            let report = ceremony::init(&layout, &opts, chrono::Utc::now())?;
            rampart_cli::say!("Key ceremony complete in {}", layout.root().display());
            for (role, ids) in &report.key_ids {
                for id in ids {
                    rampart_cli::say!("  {role:<20} {}", &id[..16.min(id.len())]);
                }
            }
            rampart_cli::say!(
                "Offline keys (root, targets, director root) are in {}.\nMove that folder to offline storage: `rampart serve` never needs it.",
                report.offline_dir.display()
            );
            Ok(())
        }
        RepoCommand::List { data } => {
            let state = ops::image_repo(&data.layout())?.state()?;
            for (role, t) in &state.roles {
                rampart_cli::say!("{role} (version {})", t.version);
                for (name, f) in &t.targets {
                    rampart_cli::say!(
                        "  {name:<40} {:>10} bytes  {}",
                        f.length,
                        f.custom.clone().unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
    }
}

/// `rampart publish`.
pub(crate) fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let req = ops::PublishRequest {
        file: args.file,
        name: args.name,
        hardware_id: args.hardware_id,
        version: args.version,
        release_counter: args.release_counter,
        role: args.role,
        keys: args.keys,
        encrypt: args.encrypt,
        export_unsigned: args.export_unsigned.clone(),
        purpose: args.purpose,
        install_seconds: args.install_seconds,
        replace: args.replace,
        delta_from: args.delta_from,
        hash_algorithms: args.hashes,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(ops::publish(&args.data.layout(), &req, chrono::Utc::now()))?;
    if out.committed {
        rampart_cli::say!(
            "published {}{} (release counter {}{}): {} bytes, sha256 {}…; signed into {} metadata v{}",
            out.name,
            req.version
                .as_deref()
                .map(|v| format!(", version {v}"))
                .unwrap_or_default(),
            out.release_counter,
            if req.encrypt { ", encrypted per ECU" } else { "" },
            out.length,
            &out.sha256[..12.min(out.sha256.len())],
            out.role,
            out.role_version,
        );
        for (delta, length) in &out.deltas {
            rampart_cli::say!(
                "  with the delta {delta}: {length} bytes ({:.1} % of the image)",
                *length as f64 * 100.0 / out.length.max(1) as f64
            );
        }
    } else if let Some(path) = args.export_unsigned {
        rampart_cli::say!(
            "staged {} in {} metadata v{}: sign {} offline (`rampart sign`), then `rampart import`",
            out.name,
            out.role,
            out.role_version,
            path.display()
        );
    }
    Ok(())
}

/// `rampart sign DOCUMENT --key K… [--out F]`.
pub(crate) fn sign(
    document: PathBuf,
    keys: Vec<PathBuf>,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    if keys.is_empty() {
        bail!("give at least one --key");
    }
    let out = out.unwrap_or_else(|| document.clone());
    ops::sign_file(&document, &keys, &out)?;
    rampart_cli::say!("signed {} with {} key(s)", out.display(), keys.len());
    Ok(())
}

/// `rampart import DOCUMENT --role R`.
pub(crate) fn import(data: DataDir, role: String, document: PathBuf) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let v = rt.block_on(ops::import(
        &data.layout(),
        &role,
        &document,
        chrono::Utc::now(),
    ))?;
    rampart_cli::say!("imported {role} version {v}; snapshot and timestamp re-signed");
    Ok(())
}

/// `rampart delegate`.
pub(crate) fn delegate(mut args: DelegateArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.generate_key {
        rampart_server::keys::generate_key_file(path, KeyScheme::Ed25519)?;
        rampart_cli::say!("generated the supplier key {}", path.display());
        args.keys.push(path.clone());
    }
    let req = ops::DelegateRequest {
        name: args.name.clone(),
        parent: args.parent,
        keys: args.keys,
        threshold: args.threshold,
        paths: args.paths,
        hardware_ids: args.hardware_ids,
        terminating: args.terminating,
        parent_keys: args.parent_keys,
    };
    let v = ops::delegate(&args.data.layout(), &req, chrono::Utc::now())?;
    rampart_cli::say!(
        "delegated {:?} to role {} (parent version {v})",
        req.paths,
        args.name
    );
    Ok(())
}

/// `rampart pki …`
pub(crate) fn pki(cmd: PkiCommand) -> anyhow::Result<()> {
    match cmd {
        PkiCommand::Init { data, server_names } => {
            let files = rampart_server::pki::init(&data.layout().pki(), &server_names, 825)?;
            rampart_cli::say!(
                "fleet CA {}; server certificate {}",
                files.ca_cert.display(),
                files.server_cert.display()
            );
            Ok(())
        }
        PkiCommand::Issue {
            data,
            vin,
            out,
            days,
        } => {
            rampart_server::pki::validate_iso_vin(&vin)?;
            let cert = rampart_server::pki::issue_vehicle_cert(&data.layout().pki(), &vin, days)?;
            std::fs::create_dir_all(&out)?;
            let path = out.join(format!("{vin}.pem"));
            write_private(
                &path,
                format!("{}{}", cert.cert_pem, cert.key_pem).as_bytes(),
            )?;
            rampart_cli::say!("vehicle certificate and key for {vin}: {}", path.display());
            let serial = rampart_server::pki::certificate_serial(&cert.cert_pem)?;
            rampart_cli::say!(
                "serial {serial} (`rampart pki revoke --serial {serial}` revokes it)"
            );
            Ok(())
        }
        PkiCommand::Revoke {
            data,
            vin,
            serial,
            reason,
            database,
        } => {
            if let Some(vin) = &vin {
                rampart_server::pki::validate_vin(vin)?;
            }
            let id = with_db(&data, database, |db| async move {
                db.revoke(vin.as_deref(), serial.as_deref(), &reason).await
            })?;
            rampart_cli::say!("revocation {id} recorded; running servers refuse it within [pki] revocation_refresh_ms (1 s by default)");
            Ok(())
        }
        PkiCommand::Revoked { data, database } => {
            let list = with_db(&data, database, |db| async move { db.revocations().await })?;
            if list.is_empty() {
                rampart_cli::say!("no revoked certificates");
            }
            for r in list {
                let what = match (&r.vin, &r.serial) {
                    (Some(vin), _) => format!("vin {vin}"),
                    (None, Some(serial)) => format!("serial {serial}"),
                    (None, None) => "?".to_owned(),
                };
                rampart_cli::say!("{:>4}  {}  {what}  {}", r.id, r.revoked_at, r.reason);
            }
            Ok(())
        }
        PkiCommand::Unrevoke {
            data,
            vin,
            database,
        } => {
            let lifted = with_db(
                &data,
                database,
                |db| async move { db.unrevoke_vin(&vin).await },
            )?;
            rampart_cli::say!("lifted {lifted} revocation(s)");
            Ok(())
        }
    }
}

/// Runs `f` on the server's database (the configured one unless `database` is given).
fn with_db<T, F, Fut>(data: &DataDir, database: Option<String>, f: F) -> anyhow::Result<T>
where
    F: FnOnce(rampart_server::db::Db) -> Fut,
    Fut: std::future::Future<Output = rampart_server::Result<T>>,
{
    let layout = data.layout();
    let url = match database {
        Some(url) => url,
        None => rampart_server::config::Config::load(&layout)?.database_url(&layout),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let db = rampart_server::db::Db::connect(&url).await?;
        Ok(f(db).await?)
    })
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    Ok(())
}

/// `rampart serve`.
pub(crate) fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut opts = rampart_server::serve::ServeOptions::new(args.data.layout());
        opts.listen = args.listen;
        opts.database = args.database;
        opts.danger_plain_http = args.danger_plain_http;
        let running = rampart_server::serve::start(opts).await?;
        rampart_cli::say!("rampart serving on {}", running.url());
        tokio::select! {
            r = running.wait() => r?,
            _ = tokio::signal::ctrl_c() => rampart_cli::say!("shutting down"),
        }
        Ok(())
    })
}

/// `rampart rotate`.
pub(crate) fn rotate(args: RotateArgs) -> anyhow::Result<()> {
    if args.role == "content-kek" {
        let Some(to) = &args.to else {
            bail!("--role content-kek needs --to (a new key file, or pkcs11:…)");
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let moved = rt.block_on(ops::rotate_content_kek(&args.data.layout(), to))?;
        rampart_cli::say!("content KEK is now {to}; {moved} content key(s) re-sealed");
        rampart_cli::say!("restart `rampart serve` to open them with the new KEK");
        return Ok(());
    }
    let which = match args.repository.as_str() {
        "image" => ops::Which::Image,
        "director" => ops::Which::Director,
        other => bail!("unknown repository {other:?} (image or director)"),
    };
    if !matches!(
        args.role.as_str(),
        "root" | "targets" | "snapshot" | "timestamp"
    ) {
        bail!(
            "unknown role {:?} (root, targets, snapshot, timestamp)",
            args.role
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = match &args.to {
        Some(to) => rt.block_on(ops::rotate_into(
            &args.data.layout(),
            which,
            &args.role,
            to,
            chrono::Utc::now(),
        ))?,
        None => rt.block_on(ops::rotate(
            &args.data.layout(),
            which,
            &args.role,
            chrono::Utc::now(),
        ))?,
    };
    rampart_cli::say!(
        "rotated {} {} key(s); root is now version {}",
        args.repository,
        args.role,
        out.root_version
    );
    for f in out.new_key_files {
        rampart_cli::say!("  new key {}", f.display());
    }
    if args.role != "root" && args.role != "targets" {
        rampart_cli::say!("restart `rampart serve` to sign with the new online key");
    }
    Ok(())
}

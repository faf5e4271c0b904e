//! # rampart-lab
//!
//! A whole fleet on loopback, built from the real parts: a server (in this process, on an
//! ephemeral port, SQLite in a temporary data directory) after a real key ceremony; images
//! published through the real repository code; vehicles whose ECUs (`rampart ecu`) and
//! primaries (`rampart vehicle`) run as real processes of the `rampart` binary.
//!
//! The demo, the end-to-end tests and the attack lab all stand on it, so what they show is
//! what a deployment does. Errors here are for people running a lab (`anyhow` with context).

pub mod s3;
pub mod sim;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use rampart_core::key::KeyScheme;
use rampart_core::signer::Signer;
use rampart_server::ceremony::{self, CeremonyOptions};
use rampart_server::layout::Layout;
use rampart_server::ops::{self, PublishOutcome, PublishRequest};
use rampart_server::serve::{self, Running, ServeOptions};
use rampart_vehicle::primary::{EcuRef, NudgeConfig, PrimaryConfig};
use rampart_vehicle::secondary::{EcuConfig, Verification};
use rampart_vehicle::uds::gateway::UdsLink;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

/// One ECU of a lab vehicle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcuSpec {
    /// ECU ID (unique per vehicle).
    pub ecu_id: String,
    /// Hardware ID.
    pub hardware_id: String,
    /// Full or partial verification.
    pub verification: Verification,
    /// Takes encrypted images (gets an X25519 key).
    pub encryption: bool,
    /// What it does, for the owner.
    pub description: String,
    /// What is unavailable while it updates.
    pub unavailable: String,
    /// Health check run at boot (`RAMPART_SLOT` is the slot path).
    pub health_check: Option<String>,
    /// A legacy ECU: a UDS bootloader on DoIP (`uds-ecu`), flashed by the primary as its
    /// gateway, registered with the primary's key (its reports are the gateway's).
    pub legacy: bool,
}

/// The three ECUs of a lab vehicle: the T-BOX (the primary's own firmware), an IVI that takes
/// encrypted images, and a small body controller doing partial verification.
pub fn default_ecus() -> Vec<EcuSpec> {
    vec![
        EcuSpec {
            ecu_id: "TBOX".into(),
            hardware_id: "tbox-a".into(),
            verification: Verification::Full,
            encryption: false,
            description: "telematics box (T-BOX)".into(),
            unavailable: "remote services and eCall (falls back to the previous slot)".into(),
            health_check: None,
            legacy: false,
        },
        EcuSpec {
            ecu_id: "IVI".into(),
            hardware_id: "ivi-x".into(),
            verification: Verification::Full,
            encryption: true,
            description: "infotainment (IVI)".into(),
            unavailable: "navigation and media".into(),
            health_check: None,
            legacy: false,
        },
        EcuSpec {
            ecu_id: "BCM".into(),
            hardware_id: "bcm-1".into(),
            verification: Verification::Partial,
            encryption: false,
            description: "body controller (doors, lights)".into(),
            unavailable: "central locking (the car must be parked)".into(),
            health_check: Some("! grep -q BROKEN \"$RAMPART_SLOT\"".into()),
            legacy: false,
        },
    ]
}

/// A legacy ECU for a lab vehicle: a seat controller whose bootloader speaks UDS on DoIP,
/// flashed by the primary as the vehicle's gateway.
pub fn legacy_ecu() -> EcuSpec {
    EcuSpec {
        ecu_id: "SEAT".into(),
        hardware_id: "seat-uds".into(),
        verification: Verification::Partial,
        encryption: false,
        description: "seat controller (legacy bootloader, flashed over UDS/DoIP)".into(),
        unavailable: "seat adjustment".into(),
        health_check: None,
        legacy: true,
    }
}

/// The DoIP logical address of a vehicle's `n`-th ECU (legacy ECUs answer on it).
fn logical_address(n: usize) -> u16 {
    rampart_vehicle::uds::logical_address_of(n).unwrap_or(0x0010)
}

/// An ECU of a running lab.
#[derive(Debug)]
pub struct EcuHandle {
    /// Its spec.
    pub spec: EcuSpec,
    /// Full ECU ID (`VINSUFFIX-TBOX`).
    pub ecu_id: String,
    /// Its folder.
    pub dir: PathBuf,
    /// Its `ecu.toml`.
    pub config: PathBuf,
    /// Its process.
    pub child: Option<Child>,
    /// Where it listens, once started.
    pub address: Option<String>,
}

impl EcuHandle {
    /// Starts the ECU's process (`bin ecu`), its log appended to `ecu.log`.
    pub fn start(&mut self, bin: &Path) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(self.dir.join("state/listen-address"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("ecu.log"))?;
        let command = if self.spec.legacy { "uds-ecu" } else { "ecu" };
        let child = Command::new(bin)
            .args(["-v", command, "--config"])
            .arg(&self.config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits (up to 10 s) until the started process listens; returns its address.
    pub async fn listening(&mut self) -> anyhow::Result<String> {
        let path = self.dir.join("state/listen-address");
        for _ in 0..200 {
            if let Ok(a) = std::fs::read_to_string(&path) {
                self.address = Some(a.clone());
                return Ok(a);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!(
            "ECU {} did not start (see {})",
            self.ecu_id,
            self.dir.join("ecu.log").display()
        )
    }

    /// Stops its process, if it runs.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }
}

/// The JSON body of an admin API answer, or an error naming the request and its status.
async fn answer(method: &str, path: &str, r: reqwest::Response) -> anyhow::Result<Value> {
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{method} {path}: {status} {v}");
    }
    Ok(v)
}

/// A vehicle of a running lab.
#[derive(Debug)]
pub struct VehicleHandle {
    /// VIN.
    pub vin: String,
    /// Its folder.
    pub dir: PathBuf,
    /// Its ECUs (the first is the primary's own).
    pub ecus: Vec<EcuHandle>,
    /// `vehicle.toml` (written once the ECUs listen).
    pub primary_config: PathBuf,
}

impl VehicleHandle {
    /// The arguments of `rampart` for one cycle of this vehicle that ends with a JSON report
    /// (`-v`: the lab reads the rule names of the log).
    pub fn once_args(&self, consent: &str) -> Vec<std::ffi::OsString> {
        [
            "-v",
            "vehicle",
            "--once",
            "--json",
            "--consent",
            consent,
            "--config",
        ]
        .into_iter()
        .map(Into::into)
        .chain([self.primary_config.clone().into_os_string()])
        .collect()
    }
}

/// Options of a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Folder for everything (server data dir, vehicles).
    pub root: PathBuf,
    /// The `rampart` binary to run ECUs and primaries with.
    pub bin: PathBuf,
    /// Number of vehicles.
    pub vehicles: usize,
    /// ECUs of each vehicle.
    pub ecus: Vec<EcuSpec>,
    /// Serve plain HTTP (the attack lab's men in the middle need it; TLS is defence in depth).
    pub plain_http: bool,
    /// An MQTT broker (`mqtt://127.0.0.1:1883`): the server nudges, the primaries listen, on
    /// topics of this lab's own (a broker is shared by every lab on the machine).
    pub mqtt: Option<String>,
    /// Keep the image repository on this object storage (default: the data directory).
    pub image_store: Option<rampart_server::store::ImageStoreConfig>,
}

impl LabOptions {
    /// A fleet of `vehicles` with the default ECUs, over HTTPS.
    pub fn new(root: impl Into<PathBuf>, bin: impl Into<PathBuf>, vehicles: usize) -> Self {
        LabOptions {
            root: root.into(),
            bin: bin.into(),
            vehicles,
            ecus: default_ecus(),
            plain_http: false,
            mqtt: None,
            image_store: None,
        }
    }
}

/// The output of one primary run.
#[derive(Debug, Clone)]
pub struct VehicleRun {
    /// Whether it exited 0.
    pub success: bool,
    /// Its exit code (`None`: ended by a signal).
    pub code: Option<i32>,
    /// What it printed (consent text, results).
    pub stdout: String,
    /// Its log.
    pub stderr: String,
    /// The cycle report (`--json`), if it got that far.
    pub report: Option<Value>,
}

/// A running fleet.
pub struct Lab {
    /// Options it was made with.
    pub options: LabOptions,
    /// Server data directory layout.
    pub layout: Layout,
    server: Option<Running>,
    /// Server base URL.
    pub url: String,
    http: reqwest::Client,
    token: String,
    /// The vehicles.
    pub vehicles: Vec<VehicleHandle>,
    /// With [`LabOptions::mqtt`]: the topic prefix of this lab's nudges.
    pub nudge_prefix: Option<String>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("url", &self.url)
            .field("vehicles", &self.vehicles.len())
            .finish_non_exhaustive()
    }
}

/// A VIN for lab vehicle `i` (17 characters, like a real one).
pub fn vin(i: usize) -> String {
    format!("WRAMPART{:09}", i + 1)
}

pub use rampart_vehicle::testing::image_bytes;

/// A counter of a server's `/metrics` (`base`: the server's URL, with or without its
/// trailing slash).
pub async fn read_metric(http: &reqwest::Client, base: &str, name: &str) -> anyhow::Result<u64> {
    let url = format!("{}/metrics", base.trim_end_matches('/'));
    let text = http
        .get(&url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("{url} has no counter {name}"))
}

fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

impl Lab {
    /// Key ceremony, server, vehicles (keys, configurations, certificates, registration).
    /// ECUs are not started yet: see [`Lab::start_ecus`].
    pub async fn create(options: LabOptions) -> anyhow::Result<Lab> {
        let layout = Layout::new(options.root.join("server"));
        let ceremony_opts = CeremonyOptions {
            listen: "127.0.0.1:0".into(),
            tls: !options.plain_http,
            image_store: options.image_store.clone().unwrap_or_default(),
            ..CeremonyOptions::default()
        };
        ceremony::init(&layout, &ceremony_opts, chrono::Utc::now()).context("key ceremony")?;
        if options.plain_http {
            // Without client certificates every lab client (vehicles, proxies) is the one
            // address 127.0.0.1, i.e. one rate-limit bucket: give it a fleet's worth.
            let mut config = rampart_server::config::Config::load(&layout)?;
            config.limits.requests_per_second = 2_000.0;
            config.limits.burst = 10_000.0;
            config.save(&layout)?;
        }
        let nudge_prefix = options.mqtt.as_ref().map(|_| {
            format!(
                "rampart-lab/{}-{}",
                std::process::id(),
                chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
            )
        });
        if let (Some(url), Some(prefix)) = (&options.mqtt, &nudge_prefix) {
            let mut config = rampart_server::config::Config::load(&layout)?;
            config.mqtt.url = url.clone();
            config.mqtt.topic_prefix = Some(prefix.clone());
            config.save(&layout)?;
        }
        let mut serve_opts = ServeOptions::new(layout.clone());
        serve_opts.refresh_every = Duration::from_secs(30);
        let server = serve::start(serve_opts)
            .await
            .context("starting the server")?;
        let url = server.url();
        let mut builder = reqwest::Client::builder();
        if !options.plain_http {
            let ca = std::fs::read(layout.pki().join("ca.pem"))?;
            builder = builder.tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca)?);
        }
        let token = rampart_server::pki::load_admin_token(&layout.pki())?;
        let mut lab = Lab {
            layout,
            server: Some(server),
            url,
            http: builder.build()?,
            token,
            vehicles: Vec::new(),
            options,
            nudge_prefix,
        };
        for i in 0..lab.options.vehicles {
            let v = lab
                .make_vehicle(&vin(i))
                .await
                .with_context(|| format!("vehicle {}", vin(i)))?;
            lab.vehicles.push(v);
        }
        Ok(lab)
    }

    async fn make_vehicle(&self, vin: &str) -> anyhow::Result<VehicleHandle> {
        let dir = self.options.root.join("vehicles").join(vin);
        std::fs::create_dir_all(&dir)?;
        let director_root = dir.join("director-root.json");
        let image_root = dir.join("image-root.json");
        std::fs::copy(
            self.layout.director_public().join("1.root.json"),
            &director_root,
        )?;
        // From wherever the image repository is kept (its bucket included).
        let image_repo = ops::image_repo(&self.layout)?;
        std::fs::write(&image_root, image_repo.root_bytes(1)?)?;
        if !self.options.plain_http {
            let cert = rampart_server::pki::issue_vehicle_cert(&self.layout.pki(), vin, 30)?;
            write_secret(
                &dir.join("vehicle-cert.pem"),
                format!("{}{}", cert.cert_pem, cert.key_pem).as_bytes(),
            )?;
            std::fs::copy(self.layout.pki().join("ca.pem"), dir.join("ca.pem"))?;
        }
        let suffix = vin.get(vin.len().saturating_sub(3)..).unwrap_or(vin);
        let primary_key_path = dir.join("primary-key.pem");
        let primary_key =
            rampart_server::keys::generate_key_file(&primary_key_path, KeyScheme::Ed25519)?;
        let mut ecus = Vec::new();
        let mut registered = Vec::new();
        for (n, spec) in self.options.ecus.iter().enumerate() {
            let ecu_id = format!("{}-{suffix}", spec.ecu_id);
            let edir = dir.join(&spec.ecu_id);
            std::fs::create_dir_all(&edir)?;
            let (config_path, public, encryption_public) = if spec.legacy {
                // No key of its own: the primary signs its reports, as its gateway.
                let path = self.make_legacy_ecu(&dir, &edir, &ecu_id, spec, vin, n)?;
                (path, primary_key.public_key().clone(), None)
            } else {
                // The first ECU is the primary's own firmware: same device, same key.
                let key_path = edir.join("key.pem");
                let public = if n == 0 {
                    std::fs::copy(&primary_key_path, &key_path)?;
                    primary_key.public_key().clone()
                } else {
                    rampart_server::keys::generate_key_file(&key_path, KeyScheme::Ed25519)?
                        .public_key()
                        .clone()
                };
                let mut encryption_key = None;
                let mut encryption_public = None;
                if spec.encryption {
                    let pair = rampart_core::encryption::EcuKeyPair::generate()?;
                    let p = edir.join("x25519.hex");
                    write_secret(&p, hex::encode(pair.private_bytes()).as_bytes())?;
                    encryption_key = Some(p);
                    encryption_public = Some(hex::encode(pair.public_key()));
                }
                std::fs::write(
                    edir.join("slot-a"),
                    format!("factory firmware of {ecu_id}\n"),
                )?;
                let mut config =
                    EcuConfig::in_folder(&edir, &ecu_id, &spec.hardware_id, vin, spec.verification);
                config.encryption_key = encryption_key;
                // The vehicle's copies of the roots, shared by its ECUs.
                config.director_root = director_root.clone();
                config.image_root = config.image_root.map(|_| image_root.clone());
                config.slots.health_check = spec.health_check.clone();
                config.factory_image = format!("factory-{}", spec.hardware_id);
                let config_path = edir.join("ecu.toml");
                std::fs::write(&config_path, toml::to_string_pretty(&config)?)?;
                (config_path, public, encryption_public)
            };
            registered.push(json!({
                "ecu_id": ecu_id,
                "hardware_id": spec.hardware_id,
                "public_key": public,
                "encryption_key": encryption_public,
                "verification": match spec.verification { Verification::Full => "full", Verification::Partial => "partial" },
            }));
            ecus.push(EcuHandle {
                spec: spec.clone(),
                ecu_id,
                dir: edir,
                config: config_path,
                child: None,
                address: None,
            });
        }
        let primary_ecu = ecus.first().map(|e| e.ecu_id.clone()).unwrap_or_default();
        self.admin_post(
            "vehicles",
            // What a type-approved car carries from the factory: its model, market and the
            // RXSWIN it was approved with (UNECE R156), which campaigns then change.
            &json!({
                "vin": vin,
                "primary_ecu": primary_ecu,
                "ecus": registered,
                "attributes": {
                    "model": "rampart-lab",
                    "region": "eu",
                    "rxswin": "R156-RAMPART-DEMO.1",
                },
            }),
        )
        .await
        .context("registering")?;
        Ok(VehicleHandle {
            vin: vin.to_owned(),
            primary_config: dir.join("vehicle.toml"),
            dir,
            ecus,
        })
    }

    /// A legacy ECU's files: `uds-ecu.toml`, bank A with its factory image, the director
    /// root, and its security-access secret — one copy for the ECU, one for the gateway.
    fn make_legacy_ecu(
        &self,
        vehicle_dir: &Path,
        edir: &Path,
        ecu_id: &str,
        spec: &EcuSpec,
        vin: &str,
        n: usize,
    ) -> anyhow::Result<PathBuf> {
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| anyhow::anyhow!("no random bytes"))?;
        let secret = hex::encode(secret);
        let mut config =
            rampart_vehicle::uds::UdsEcuConfig::in_folder(edir, ecu_id, &spec.hardware_id, vin);
        write_secret(&config.security_secret, secret.as_bytes())?;
        write_secret(
            &vehicle_dir.join(format!("gateway-{}.hex", spec.ecu_id)),
            secret.as_bytes(),
        )?;
        config.logical_address = logical_address(n);
        config.director_root = vehicle_dir.join("director-root.json");
        config.factory_image = format!("factory-{}", spec.hardware_id);
        std::fs::write(
            &config.banks.slot_a,
            format!("factory firmware of {ecu_id}\n"),
        )?;
        let path = edir.join("uds-ecu.toml");
        std::fs::write(&path, toml::to_string_pretty(&config)?)?;
        Ok(path)
    }

    /// Starts every ECU process and writes each `vehicle.toml` with their addresses.
    pub async fn start_ecus(&mut self) -> anyhow::Result<()> {
        let bin = self.options.bin.clone();
        for v in &mut self.vehicles {
            for e in &mut v.ecus {
                e.start(&bin)?;
            }
        }
        for i in 0..self.vehicles.len() {
            if let Some(v) = self.vehicles.get_mut(i) {
                for e in &mut v.ecus {
                    e.listening().await?;
                }
            }
            self.write_primary_config(i, None)?;
        }
        Ok(())
    }

    /// Writes vehicle `i`'s `vehicle.toml`, optionally pointing it at another server URL or
    /// image mirror (a man in the middle, a CDN).
    pub fn write_primary_config(
        &self,
        i: usize,
        redirect: Option<(&str, Option<&str>)>,
    ) -> anyhow::Result<()> {
        let v = self.vehicles.get(i).context("no such vehicle")?;
        let (server, image_base) = match redirect {
            Some((s, img)) => (s.to_owned(), img.map(str::to_owned)),
            None => (self.url.clone(), None),
        };
        let tls = server.starts_with("https");
        let config = PrimaryConfig {
            vin: v.vin.clone(),
            ecu_id: v.ecus.first().map(|e| e.ecu_id.clone()).unwrap_or_default(),
            server,
            image_base,
            ca: tls.then(|| v.dir.join("ca.pem")),
            client_cert: tls.then(|| v.dir.join("vehicle-cert.pem")),
            key: v.dir.join("primary-key.pem"),
            director_root: v.dir.join("director-root.json"),
            image_root: v.dir.join("image-root.json"),
            state_dir: v.dir.join("primary-state"),
            poll_seconds: 60,
            precondition: None,
            min_bytes_per_second: 4096,
            stall_seconds: 5,
            nudges: self.options.mqtt.as_ref().map(|url| NudgeConfig {
                url: url.clone(),
                topic_prefix: self.nudge_prefix.clone().unwrap_or_default(),
                min_interval_seconds: 2,
                username: None,
            }),
            ecus: v
                .ecus
                .iter()
                .enumerate()
                .map(|(n, e)| EcuRef {
                    ecu_id: e.ecu_id.clone(),
                    hardware_id: e.spec.hardware_id.clone(),
                    address: e.address.clone().unwrap_or_default(),
                    verification: e.spec.verification,
                    description: e.spec.description.clone(),
                    unavailable: e.spec.unavailable.clone(),
                    uds: e.spec.legacy.then(|| UdsLink {
                        logical_address: logical_address(n),
                        tester_address: 0x0E80,
                        security_secret: v.dir.join(format!("gateway-{}.hex", e.spec.ecu_id)),
                    }),
                })
                .collect(),
        };
        std::fs::write(&v.primary_config, toml::to_string_pretty(&config)?)?;
        Ok(())
    }

    /// Publishes an image (in process, with the ceremony's keys).
    pub async fn publish(&self, req: &PublishRequest) -> anyhow::Result<PublishOutcome> {
        Ok(ops::publish(&self.layout, req, chrono::Utc::now()).await?)
    }

    /// Publishes `bytes` as `name` and assigns it to every vehicle of the lab: a release.
    pub async fn release(
        &self,
        name: &str,
        hardware_id: &str,
        version: &str,
        bytes: &[u8],
        encrypt: bool,
    ) -> anyhow::Result<PublishOutcome> {
        let published = self
            .publish_bytes(name, hardware_id, version, bytes, encrypt)
            .await?;
        self.assign_all(name, hardware_id, encrypt).await?;
        Ok(published)
    }

    /// Writes `bytes` to a file under the lab and publishes it.
    pub async fn publish_bytes(
        &self,
        name: &str,
        hardware_id: &str,
        version: &str,
        bytes: &[u8],
        encrypt: bool,
    ) -> anyhow::Result<PublishOutcome> {
        let request = self.image_request(name, hardware_id, bytes)?;
        self.publish(&PublishRequest {
            version: Some(version.to_owned()),
            encrypt,
            ..request
        })
        .await
    }

    /// Writes `bytes` to a file under the lab; the request that publishes it as `name` (the
    /// rest of it at its defaults, to change before publishing).
    pub fn image_request(
        &self,
        name: &str,
        hardware_id: &str,
        bytes: &[u8],
    ) -> anyhow::Result<PublishRequest> {
        let dir = self.options.root.join("release");
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(rampart_core::client::safe_file_name(name));
        std::fs::write(&file, bytes)?;
        Ok(PublishRequest {
            name: Some(name.to_owned()),
            ..PublishRequest::new(file, hardware_id)
        })
    }

    /// POSTs to the admin API.
    pub async fn admin_post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .post(format!("{}api/v1/{path}", self.url))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        answer("POST", path, r).await
    }

    /// GETs from the admin API.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(format!("{}api/v1/{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await?;
        answer("GET", path, r).await
    }

    /// What an insider with access to the director's database can do that the admin API
    /// refuses: assign `bytes`, published as `target` with `release_counter`, to `ecu` of
    /// `vin`, written straight into the database (no check: an older release included).
    pub async fn insider_assign(
        &self,
        vin: &str,
        ecu: &str,
        target: &str,
        bytes: &[u8],
        release_counter: u64,
    ) -> anyhow::Result<()> {
        let url = rampart_server::config::Config::load(&self.layout)?.database_url(&self.layout);
        rampart_server::db::Db::connect(&url)
            .await?
            .create_assignment(&rampart_server::db::Assignment {
                id: 0,
                vin: vin.to_owned(),
                ecu_id: ecu.to_owned(),
                target: target.to_owned(),
                length: bytes.len() as u64,
                hashes: serde_json::to_value(rampart_core::hash::compute_hashes(bytes))?,
                release_counter,
                encrypt: false,
                status: "pending".into(),
                created_at: String::new(),
                completed_at: None,
                last_error: None,
                maintenance_window: None,
            })
            .await?;
        Ok(())
    }

    /// Assigns `target` to every ECU of `hardware_id` in all lab vehicles.
    pub async fn assign_all(
        &self,
        target: &str,
        hardware_id: &str,
        encrypt: bool,
    ) -> anyhow::Result<Vec<i64>> {
        let vins: Vec<String> = self.vehicles.iter().map(|v| v.vin.clone()).collect();
        let v = self
            .admin_post("assignments", &json!({"target": target, "vins": vins, "hardware_id": hardware_id, "encrypt": encrypt}))
            .await?;
        Ok(serde_json::from_value(v)?)
    }

    /// Runs vehicle `i`'s primary for one cycle (`--once --json`).
    pub async fn run_vehicle(&self, i: usize, consent: &str) -> anyhow::Result<VehicleRun> {
        self.run_vehicle_under(i, consent, None).await
    }

    /// [`Lab::run_vehicle`], started through `wrapper` (a program and its arguments, e.g.
    /// `faketime -f +30d`) when given.
    pub async fn run_vehicle_under(
        &self,
        i: usize,
        consent: &str,
        wrapper: Option<(&Path, &[&str])>,
    ) -> anyhow::Result<VehicleRun> {
        let v = self.vehicles.get(i).context("no such vehicle")?;
        self.run_primary(wrapper, v.once_args(consent)).await
    }

    /// Runs vehicle `i`'s primary from an offline bundle (`--from-bundle BUNDLE --reports
    /// REPORTS`), started through `wrapper` when given; with a JSON report.
    pub async fn run_vehicle_from_bundle(
        &self,
        i: usize,
        bundle: &Path,
        reports: &Path,
        wrapper: Option<(&Path, &[&str])>,
    ) -> anyhow::Result<VehicleRun> {
        let v = self.vehicles.get(i).context("no such vehicle")?;
        let mut args = v.once_args("auto");
        args.extend([
            "--from-bundle".into(),
            bundle.as_os_str().to_owned(),
            "--reports".into(),
            reports.as_os_str().to_owned(),
        ]);
        self.run_primary(wrapper, args).await
    }

    /// Runs the lab's binary with `args` (through `wrapper` when given) and reads its JSON
    /// report: one vehicle's primary.
    async fn run_primary(
        &self,
        wrapper: Option<(&Path, &[&str])>,
        args: Vec<std::ffi::OsString>,
    ) -> anyhow::Result<VehicleRun> {
        let mut command = match wrapper {
            Some((program, extra)) => {
                let mut c = Command::new(program);
                c.args(extra).arg(&self.options.bin);
                c
            }
            None => Command::new(&self.options.bin),
        };
        let out = command.args(args).stdin(Stdio::null()).output().await?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let report = stdout.lines().rev().find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(Value::is_object)
        });
        Ok(VehicleRun {
            success: out.status.success(),
            code: out.status.code(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            report,
        })
    }

    /// Writes the offline bundle of `vins` to `out` (in process, as `rampart offline-bundle
    /// create` does).
    pub async fn offline_bundle(
        &self,
        vins: &[String],
        out: &Path,
    ) -> anyhow::Result<rampart_server::offline::BundleSummary> {
        Ok(rampart_server::offline::create(&self.layout, vins, out, chrono::Utc::now()).await?)
    }

    /// Uploads a vehicle's report file through the admin API (as `rampart admin
    /// import-reports` does): one answer (or refusal) per line.
    pub async fn import_reports(
        &self,
        reports: &Path,
    ) -> anyhow::Result<Vec<anyhow::Result<Value>>> {
        let text = std::fs::read_to_string(reports)
            .with_context(|| format!("reading {}", reports.display()))?;
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let body: Value = serde_json::from_str(line)?;
            out.push(self.admin_post("offline-reports", &body).await);
        }
        Ok(out)
    }

    /// Starts vehicle `i`'s primary for one cycle (`--once`) and returns at once, for tests
    /// that kill it mid-cycle (power cuts). Its output is appended to `primary.log` in the
    /// vehicle's folder.
    pub fn spawn_vehicle(&self, i: usize, consent: &str) -> anyhow::Result<Child> {
        let v = self.vehicles.get(i).context("no such vehicle")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(v.dir.join("primary.log"))?;
        let child = Command::new(&self.options.bin)
            .args(["-v", "vehicle", "--once", "--consent", consent, "--config"])
            .arg(&v.primary_config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.options.bin.display()))?;
        Ok(child)
    }

    /// What the director knows of vehicle `vin`: ECU ID → installed target.
    pub async fn installed(&self, vin: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let v = self.admin_get(&format!("vehicles/{vin}")).await?;
        let mut out = BTreeMap::new();
        for e in v
            .get("ecus")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let id = e
                .get("ecu_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let target = e
                .pointer("/installed/target")
                .and_then(Value::as_str)
                .unwrap_or("(nothing reported)")
                .to_owned();
            out.insert(id, target);
        }
        Ok(out)
    }

    /// Security events (newest first), optionally of one vehicle.
    pub async fn events(&self, vin: Option<&str>) -> anyhow::Result<Vec<Value>> {
        let path = match vin {
            Some(v) => format!("events?vin={v}&limit=1000"),
            None => "events?limit=1000".into(),
        };
        Ok(serde_json::from_value(self.admin_get(&path).await?)?)
    }

    /// A counter of the lab server's `/metrics`.
    pub async fn metric(&self, name: &str) -> anyhow::Result<u64> {
        read_metric(&self.http, &self.url, name).await
    }

    /// Stops the server (the fleet stays): what a vehicle sees when its server is down.
    pub async fn stop_server(&mut self) -> anyhow::Result<()> {
        if let Some(s) = self.server.take() {
            s.stop().await?;
        }
        Ok(())
    }

    /// Restarts the server on the same address (it loads its online keys at start, so this
    /// is how a rotation of online keys takes effect).
    pub async fn restart_server(&mut self) -> anyhow::Result<()> {
        let addr = self
            .server
            .as_ref()
            .map(|s| s.addr.to_string())
            .context("server not running")?;
        if let Some(s) = self.server.take() {
            s.stop().await?;
        }
        let mut opts = ServeOptions::new(self.layout.clone());
        opts.listen = Some(addr);
        opts.refresh_every = Duration::from_secs(30);
        let mut last = None;
        for _ in 0..50 {
            match serve::start(opts.clone()).await {
                Ok(s) => {
                    self.server = Some(s);
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(anyhow::anyhow!("restarting the server: {last:?}"))
    }

    /// Stops every process and the server.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for v in &mut self.vehicles {
            for e in &mut v.ecus {
                if let Some(mut c) = e.child.take() {
                    let _ = c.kill().await;
                }
            }
        }
        if let Some(s) = self.server.take() {
            s.stop().await?;
        }
        Ok(())
    }
}

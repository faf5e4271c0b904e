//! The primary (`rampart vehicle`), the T-BOX's update agent. Each cycle, in Uptane's order:
//!
//! 1. ask every ECU for a signed version report (fresh nonce each);
//! 2. sign the vehicle version manifest and send it to the director;
//! 3. Uptane full verification of the director and the image repository (both sets of
//!    trusted metadata on disk, every root version archived for the ECUs);
//! 4. for each verified update: owner consent, preconditions, a bounded, resumable download
//!    checked against every signed hash (ciphertext hashes for encrypted images);
//! 5. hand each ECU its image and the metadata to verify it itself, through the gateway;
//! 6. collect the ECUs' new reports and send them (the director then sees what installed).
//!
//! What goes wrong is recorded (rule: message) and sent as the manifest's attack indicator.

use rampart_core::rule::Rule;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use rampart_client::fetch::{encode_target_path, join_url};
use rampart_client::{download_target, FetchConfig, HttpFetcher, MetadataStore, TlsConfig};
use rampart_core::client::{
    metadata_file_name, target_url_path, Action, Client, Config as ClientConfig, Fetched,
    TargetInfo,
};
use rampart_core::signer::{InMemorySigner, Signer};
use rampart_core::trusted::TrustedSet;
use rampart_core::uptane::manifest::{
    sign_vehicle_manifest, VehicleManifest, VEHICLE_MANIFEST_TYPE,
};
use rampart_core::uptane::{
    FullVerifier, InstalledImage, Repo, Scope, UptaneAction, VerifiedUpdate,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::consent::{self, ConsentMode, Decision, UpdateNotice};
use crate::error::{Error, Result};
use crate::protocol::{self, InstallBegin, InstallResult, Kind, MetadataBundle, ReportRequest};
use crate::secondary::Verification;

/// One ECU as the primary knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EcuRef {
    /// ECU identifier.
    pub ecu_id: String,
    /// Hardware identifier.
    pub hardware_id: String,
    /// Where the gateway reaches it (host:port).
    pub address: String,
    /// Full or partial verification.
    pub verification: Verification,
    /// What it does, for the owner ("infotainment (IVI)").
    #[serde(default)]
    pub description: String,
    /// What is unavailable while it updates.
    #[serde(default)]
    pub unavailable: String,
}

/// `vehicle.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrimaryConfig {
    /// Vehicle identification number.
    pub vin: String,
    /// ECU ID of the primary (its key signs the manifest).
    pub ecu_id: String,
    /// Server base URL (`https://host:port/`).
    pub server: String,
    /// Image repository base URL (default `SERVER/image/`); a CDN or static mirror works.
    #[serde(default)]
    pub image_base: Option<String>,
    /// CA certificate(s) to trust for HTTPS (the fleet CA).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) identifying the vehicle.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The primary's signing key (PKCS#8 PEM).
    pub key: PathBuf,
    /// Director root provisioned at the factory.
    pub director_root: PathBuf,
    /// Image repository root provisioned at the factory.
    pub image_root: PathBuf,
    /// Trusted state.
    pub state_dir: PathBuf,
    /// Seconds between cycles.
    #[serde(default = "default_poll")]
    pub poll_seconds: u64,
    /// Shell command checked before installing (battery, parked…); non-zero exit refuses.
    #[serde(default)]
    pub precondition: Option<String>,
    /// Minimum download speed (bytes/s) before a download counts as slow retrieval.
    #[serde(default = "default_min_speed")]
    pub min_bytes_per_second: u64,
    /// Longest pause in a download (seconds).
    #[serde(default = "default_stall")]
    pub stall_seconds: u64,
    /// The vehicle's ECUs (the primary's own firmware ECU included).
    pub ecus: Vec<EcuRef>,
}

fn default_poll() -> u64 {
    300
}
fn default_min_speed() -> u64 {
    1024
}
fn default_stall() -> u64 {
    20
}

/// Loads `vehicle.toml`, making relative paths relative to its folder.
pub fn load_config(path: &Path) -> Result<PrimaryConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut c: PrimaryConfig =
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    for p in [
        &mut c.key,
        &mut c.director_root,
        &mut c.image_root,
        &mut c.state_dir,
    ] {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    for p in [c.ca.as_mut(), c.client_cert.as_mut()]
        .into_iter()
        .flatten()
    {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    Ok(c)
}

/// What happened to one update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum UpdateStatus {
    /// Installed and booted.
    Installed,
    /// The owner (or policy) said no.
    Declined(String),
    /// A precondition was not met.
    PreconditionFailed(String),
    /// Failed (rule, message).
    Failed(String, String),
}

/// One update of a cycle.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateOutcome {
    /// ECU.
    pub ecu_id: String,
    /// Image.
    pub target: String,
    /// Bytes sent over the air (ciphertext if encrypted).
    pub bytes: u64,
    /// Whether it travelled encrypted.
    pub encrypted: bool,
    /// Result.
    pub status: UpdateStatus,
}

/// What a cycle did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CycleReport {
    /// Director targets version verified.
    pub director_targets_version: u64,
    /// ECUs that answered with a report.
    pub ecus_reporting: Vec<String>,
    /// Updates handled.
    pub updates: Vec<UpdateOutcome>,
    /// ECUs already up to date.
    pub up_to_date: Vec<String>,
    /// Problems noticed (rule: message).
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PrimaryState {
    manifest_counter: u64,
    #[serde(default)]
    attacks: Vec<String>,
}

/// The primary.
pub struct Primary {
    config: PrimaryConfig,
    signer: InMemorySigner,
    fetcher: HttpFetcher,
    state: PrimaryState,
    /// Show progress bars (a terminal) or log lines.
    pub interactive: bool,
}

impl std::fmt::Debug for Primary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Primary")
            .field("vin", &self.config.vin)
            .finish_non_exhaustive()
    }
}

/// A fresh nonce of `n` random bytes, hex-encoded. A nonce is what makes a report or a
/// manifest fresh: if the system's random source fails, that is an error, never a nonce of
/// zeros.
fn random_hex(n: usize) -> Result<String> {
    random_hex_from(n, aws_lc_rs::rand::fill)
}

fn random_hex_from(
    n: usize,
    fill: impl FnOnce(&mut [u8]) -> std::result::Result<(), aws_lc_rs::error::Unspecified>,
) -> Result<String> {
    let mut b = vec![0u8; n];
    fill(&mut b).map_err(|_| {
        rampart_core::Error::Crypto("the system's random source failed to make a nonce".into())
    })?;
    Ok(hex::encode(b))
}

fn with_slash(s: &str) -> String {
    if s.ends_with('/') {
        s.to_owned()
    } else {
        format!("{s}/")
    }
}

impl Primary {
    /// Opens the primary: key, TLS identity, state, and the archive of trusted roots.
    pub fn open(config: PrimaryConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.state_dir).map_err(|e| Error::io(&config.state_dir, e))?;
        // The same rule as the server's and the ECUs': the primary key and the client
        // certificate's private key must be the owner's alone.
        for secret in std::iter::once(&config.key).chain(config.client_cert.as_ref()) {
            rampart_client::store::check_secret_permissions(secret)?;
        }
        let pem = std::fs::read_to_string(&config.key).map_err(|e| Error::io(&config.key, e))?;
        let signer = InMemorySigner::from_pkcs8_pem_any(&pem)?;
        let read = |p: &Option<PathBuf>| -> Result<Option<Vec<u8>>> {
            p.as_ref()
                .map(|p| std::fs::read(p).map_err(|e| Error::io(p, e)))
                .transpose()
        };
        let tls = TlsConfig {
            ca_pem: read(&config.ca)?,
            identity_pem: read(&config.client_cert)?,
        };
        let fetch = FetchConfig {
            min_bytes_per_second: config.min_bytes_per_second,
            stall_timeout: Duration::from_secs(config.stall_seconds),
            ..FetchConfig::default()
        };
        let fetcher = HttpFetcher::new(fetch, &tls)?;
        let state = match std::fs::read(config.state_dir.join("primary-state.json")) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Config(format!("primary state: {e}")))?,
            Err(_) => PrimaryState::default(),
        };
        let primary = Primary {
            config,
            signer,
            fetcher,
            state,
            interactive: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        };
        for (repo, root) in [
            ("director", &primary.config.director_root),
            ("image", &primary.config.image_root),
        ] {
            let bytes = std::fs::read(root).map_err(|e| Error::io(root, e))?;
            primary.archive_root(repo, &bytes)?;
        }
        Ok(primary)
    }

    /// The configuration.
    pub fn config(&self) -> &PrimaryConfig {
        &self.config
    }

    fn save(&self) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(&self.state).map_err(|e| Error::Config(e.to_string()))?;
        rampart_client::store::write_atomic(
            &self.config.state_dir.join("primary-state.json"),
            &bytes,
        )?;
        Ok(())
    }

    fn note(&mut self, report: &mut CycleReport, rule: Rule, message: &str) {
        tracing::warn!(%rule, %message, "primary noticed a problem");
        let line = format!("{rule}: {message}");
        report.problems.push(line.clone());
        self.state.attacks.push(line);
        if self.state.attacks.len() > 16 {
            self.state.attacks.remove(0);
        }
        let _ = self.save();
    }

    fn archive_root(&self, repo: &str, bytes: &[u8]) -> Result<()> {
        let dir = self.config.state_dir.join("root-archive").join(repo);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let root: rampart_core::metadata::Root =
            rampart_core::metadata::Envelope::parse(bytes, "root")?.typed("root")?;
        let path = dir.join(format!("{}.root.json", root.version));
        if !path.exists() {
            rampart_client::store::write_atomic(&path, bytes)?;
        }
        Ok(())
    }

    fn director_url(&self) -> String {
        format!(
            "{}director/{}/metadata/",
            with_slash(&self.config.server),
            self.config.vin
        )
    }

    fn image_base(&self) -> String {
        with_slash(
            self.config
                .image_base
                .as_deref()
                .unwrap_or(&format!("{}image/", with_slash(&self.config.server))),
        )
    }

    /// Asks each ECU for a signed report (fresh nonce). Unreachable ECUs are noted.
    pub async fn collect_reports(
        &mut self,
        report: &mut CycleReport,
    ) -> (BTreeMap<String, Value>, BTreeMap<String, InstalledImage>) {
        let mut docs = BTreeMap::new();
        let mut installed = BTreeMap::new();
        for ecu in self.config.ecus.clone() {
            let nonce = match random_hex(16) {
                Ok(n) => n,
                Err(e) => {
                    self.note(report, e.rule(), &e.to_string());
                    continue;
                }
            };
            match request_report(&ecu.address, &nonce).await {
                Ok(doc) => {
                    // The primary reads, but does not trust, the report: the director verifies it.
                    let nonce_ok = doc.pointer("/signed/nonce").and_then(Value::as_str)
                        == Some(nonce.as_str());
                    if !nonce_ok {
                        // A report recorded earlier (or for someone else) is not this
                        // cycle's: drop it rather than let a stale state reach the director.
                        self.note(
                            report,
                            Rule::StaleReport,
                            &format!(
                                "ECU {} answered with another nonce; report dropped",
                                ecu.ecu_id
                            ),
                        );
                        continue;
                    }
                    if let Ok(img) = serde_json::from_value::<InstalledImage>(
                        doc.pointer("/signed/installed_image")
                            .cloned()
                            .unwrap_or_default(),
                    ) {
                        installed.insert(ecu.ecu_id.clone(), img);
                    }
                    report.ecus_reporting.push(ecu.ecu_id.clone());
                    docs.insert(ecu.ecu_id.clone(), doc);
                }
                Err(e) => self.note(
                    report,
                    Rule::EcuUnreachable,
                    &format!("ECU {} at {}: {e}", ecu.ecu_id, ecu.address),
                ),
            }
        }
        (docs, installed)
    }

    /// Signs and sends the vehicle manifest.
    pub async fn send_manifest(&mut self, reports: BTreeMap<String, Value>) -> Result<Value> {
        // The counter is persisted before the manifest leaves; the attack indicators are only
        // forgotten once the director has them (an attacker who drops the manifest that
        // reports it must not make the report disappear).
        self.state.manifest_counter += 1;
        self.save()?;
        let attacks = self.state.attacks.join("\n");
        let manifest = VehicleManifest {
            type_: VEHICLE_MANIFEST_TYPE.into(),
            vin: self.config.vin.clone(),
            primary_ecu_id: self.config.ecu_id.clone(),
            manifest_counter: self.state.manifest_counter,
            nonce: random_hex(16)?,
            ecu_version_reports: reports,
            attacks_detected: attacks,
            unrecognized: BTreeMap::new(),
        };
        let body = sign_vehicle_manifest(&manifest, &self.signer)?;
        let url = format!(
            "{}director/{}/manifest",
            with_slash(&self.config.server),
            self.config.vin
        );
        let (status, answer) = self.fetcher.post_json(&url, body, 1024 * 1024).await?;
        let value: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return Err(Error::Director {
                status,
                message: value
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                rule: value
                    .get("rule")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
                    .to_owned(),
            });
        }
        self.state.attacks.clear();
        self.save()?;
        self.forward_receipt(&value).await;
        Ok(value)
    }

    /// Hands the director's signed receipt to every ECU whose report it acknowledges, so each
    /// can forget the indicators the director now has. Only the director's signature counts
    /// to the ECU; an ECU that cannot be reached keeps its indicators for the next receipt.
    async fn forward_receipt(&self, answer: &Value) {
        let Some(receipt) = answer.get("receipt").filter(|r| !r.is_null()) else {
            return;
        };
        let acknowledged = receipt
            .pointer("/signed/ecu_reports")
            .and_then(Value::as_object);
        let Ok(bytes) = serde_json::to_vec(receipt) else {
            return;
        };
        for ecu in &self.config.ecus {
            if !acknowledged.is_some_and(|a| a.contains_key(&ecu.ecu_id)) {
                continue;
            }
            if let Err(e) = send_receipt(&ecu.address, &bytes).await {
                tracing::warn!(ecu = %ecu.ecu_id, error = %e, "receipt not delivered; the ECU keeps its indicators");
            }
        }
    }

    fn trusted_root(&self, repo: &str, provisioned: &Path) -> Result<Vec<u8>> {
        let store = MetadataStore::open(self.config.state_dir.join(repo))?;
        match store.read("root.json")? {
            Some(b) => Ok(b),
            None => std::fs::read(provisioned).map_err(|e| Error::io(provisioned, e)),
        }
    }

    /// Uptane full verification of both repositories over the network.
    pub async fn verify(
        &mut self,
        installed: BTreeMap<String, InstalledImage>,
    ) -> Result<FullVerifier> {
        let now = Utc::now();
        let director = Client::new(
            "director",
            &self.trusted_root("director", &self.config.director_root.clone())?,
            now,
            ClientConfig::default(),
        )?;
        let image = Client::new(
            "image",
            &self.trusted_root("image", &self.config.image_root.clone())?,
            now,
            ClientConfig::default(),
        )?;
        let ecus = self
            .config
            .ecus
            .iter()
            .map(|e| (e.ecu_id.clone(), e.hardware_id.clone()))
            .collect();
        let mut v = FullVerifier::new(
            director,
            image,
            &self.config.vin,
            Scope::Primary { ecus },
            installed,
        );
        v.start();
        let stores = (
            MetadataStore::open(self.config.state_dir.join("director"))?,
            MetadataStore::open(self.config.state_dir.join("image"))?,
        );
        let urls = (
            self.director_url(),
            format!("{}metadata/", self.image_base()),
        );
        loop {
            let (repo, action) = match v.next_action()? {
                UptaneAction::Done => break,
                UptaneAction::Repo { repo, action } => (repo, action),
            };
            let (store, base) = match repo {
                Repo::Director => (&stores.0, &urls.0),
                Repo::Image => (&stores.1, &urls.1),
            };
            match action {
                Action::ReadLocal { name } => v.provide_local(repo, store.read(&name)?)?,
                Action::Fetch { path, max_length } => {
                    let url = join_url(base, &path)?;
                    let fetched = match self.fetcher.fetch_bytes(&url, max_length).await? {
                        Some(b) => Fetched::Bytes(b),
                        None => Fetched::NotFound,
                    };
                    v.provide_fetched(repo, &path, fetched)?;
                }
                Action::Persist { name, bytes } => {
                    if name == "root.json" {
                        self.archive_root(repo.name(), &bytes)?;
                    }
                    store.write(&name, &bytes)?;
                }
                Action::Remove { name } => store.remove(&name)?,
                Action::Done => {}
            }
        }
        Ok(v)
    }

    fn bundle_side(
        &self,
        repo: &str,
        trusted: &TrustedSet,
        out: &mut BTreeMap<String, String>,
    ) -> Result<()> {
        let dir = self.config.state_dir.join("root-archive").join(repo);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".root.json") {
                    let text = std::fs::read_to_string(e.path())
                        .map_err(|err| Error::io(e.path(), err))?;
                    out.insert(name, text);
                }
            }
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if let Some(ts) = trusted.timestamp() {
            out.insert("timestamp.json".into(), text(&ts.bytes));
        }
        if let Some(s) = trusted.snapshot() {
            out.insert(
                format!("{}.snapshot.json", s.signed.version),
                text(&s.bytes),
            );
            out.insert("snapshot.json".into(), text(&s.bytes));
        }
        for (role, t) in trusted.target_roles() {
            let name = metadata_file_name(role);
            out.insert(format!("{}.{name}", t.signed.version), text(&t.bytes));
            out.insert(name, text(&t.bytes));
        }
        Ok(())
    }

    /// The metadata an ECU needs to verify its update itself.
    pub fn bundle_for(
        &self,
        v: &FullVerifier,
        verification: Verification,
    ) -> Result<MetadataBundle> {
        let mut bundle = MetadataBundle::default();
        self.bundle_side("director", v.director().trusted(), &mut bundle.director)?;
        if verification == Verification::Full {
            self.bundle_side("image", v.image().trusted(), &mut bundle.image)?;
        }
        Ok(bundle)
    }

    /// Runs one whole cycle.
    pub async fn cycle(&mut self, consent_mode: &ConsentMode) -> Result<CycleReport> {
        let mut report = CycleReport::default();
        let (docs, installed) = self.collect_reports(&mut report).await;
        let answer = match self.send_manifest(docs).await {
            Ok(a) => a,
            Err(e) => {
                self.note(
                    &mut report,
                    e.rule(),
                    &format!("manifest not accepted: {e}"),
                );
                return Err(e);
            }
        };
        tracing::info!(director_targets_version = %answer.get("director_targets_version").cloned().unwrap_or_default(), "manifest accepted");
        let v = match self.verify(installed).await {
            Ok(v) => v,
            Err(e) => {
                let rule = e.rule();
                self.note(&mut report, rule, &e.to_string());
                // Tell the director right away: the indicator is the point.
                let (docs, _) = self.collect_reports(&mut CycleReport::default()).await;
                let _ = self.send_manifest(docs).await;
                return Err(e);
            }
        };
        let verdict = v.verdict().cloned().unwrap_or_default();
        report.director_targets_version = verdict.director_targets_version;
        report.up_to_date = verdict.up_to_date.clone();
        self.prune_downloads(&v, &verdict.updates);
        if verdict.updates.is_empty() {
            return Ok(report);
        }
        // Owner consent for the whole set (a partial set could be a mix the OEM never tested).
        let notices: Vec<UpdateNotice> =
            verdict.updates.iter().map(|u| self.notice(&v, u)).collect();
        match consent::ask(consent_mode, &notices).await? {
            Decision::Approved => {}
            Decision::Declined(why) => {
                for u in &verdict.updates {
                    report
                        .updates
                        .push(self.outcome(u, UpdateStatus::Declined(why.clone())));
                }
                println!("Update declined: {why}. Nothing was installed.");
                return Ok(report);
            }
        }
        if let Some(cmd) = &self.config.precondition {
            if let Err(why) = run_precondition(cmd).await {
                for u in &verdict.updates {
                    report
                        .updates
                        .push(self.outcome(u, UpdateStatus::PreconditionFailed(why.clone())));
                }
                println!("Update postponed: precondition not met ({why}).");
                return Ok(report);
            }
        }
        // Download and verify every image first: if one cannot be had, none is installed, so
        // an attacker who blocks part of a bundle cannot leave the vehicle with a mixed set.
        let mut downloaded = Vec::new();
        let mut blocked = None;
        for u in &verdict.updates {
            match self.download(&v, u).await {
                Ok(path) => downloaded.push(path),
                Err(e) => {
                    let rule = e.rule();
                    self.note(
                        &mut report,
                        rule,
                        &format!("{} for {}: {e}", u.instruction.target, u.instruction.ecu_id),
                    );
                    blocked = Some((u.instruction.target.clone(), rule, e.to_string()));
                    break;
                }
            }
        }
        if let Some((target, rule, message)) = blocked {
            for u in &verdict.updates {
                let status = if u.instruction.target == target {
                    UpdateStatus::Failed(rule.to_string(), message.clone())
                } else {
                    UpdateStatus::Failed(
                        "partial-bundle".into(),
                        format!(
                            "not installed: {target} of the same bundle could not be downloaded"
                        ),
                    )
                };
                report.updates.push(self.outcome(u, status));
            }
        } else {
            for (u, path) in verdict.updates.iter().zip(&downloaded) {
                let status = match self.install(&v, u, path).await {
                    Ok(()) => UpdateStatus::Installed,
                    Err(e) => {
                        let rule = e.rule();
                        self.note(
                            &mut report,
                            rule,
                            &format!("{} on {}: {e}", u.instruction.target, u.instruction.ecu_id),
                        );
                        UpdateStatus::Failed(rule.to_string(), e.to_string())
                    }
                };
                report.updates.push(self.outcome(u, status));
            }
        }
        for path in &downloaded {
            let _ = std::fs::remove_file(path);
        }
        // Report the new state right away so the director sees what installed, and believe
        // an ECU's "installed" only if its fresh signed report says so.
        let (docs, running) = self.collect_reports(&mut CycleReport::default()).await;
        let mut unconfirmed = Vec::new();
        for (i, o) in report.updates.iter().enumerate() {
            if o.status == UpdateStatus::Installed
                && running.get(&o.ecu_id).map(|img| img.filename.as_str())
                    != Some(o.target.as_str())
            {
                let seen = running
                    .get(&o.ecu_id)
                    .map_or("no report".to_owned(), |img| img.filename.clone());
                unconfirmed.push((
                    i,
                    format!(
                        "ECU {} said installed, but its signed report shows {seen}",
                        o.ecu_id
                    ),
                ));
            }
        }
        for (i, why) in unconfirmed {
            self.note(&mut report, Rule::UnconfirmedInstall, &why);
            if let Some(o) = report.updates.get_mut(i) {
                o.status = UpdateStatus::Failed(Rule::UnconfirmedInstall.to_string(), why);
            }
        }
        if let Err(e) = self.send_manifest(docs).await {
            self.note(&mut report, e.rule(), &format!("final manifest: {e}"));
        }
        for o in &report.updates {
            let line = match &o.status {
                UpdateStatus::Installed => format!("✔ {} installed on {}", o.target, o.ecu_id),
                UpdateStatus::Failed(rule, msg) => {
                    format!("✘ {} on {} failed [{rule}]: {msg}", o.target, o.ecu_id)
                }
                UpdateStatus::Declined(w) | UpdateStatus::PreconditionFailed(w) => {
                    format!("– {} on {}: {w}", o.target, o.ecu_id)
                }
            };
            println!("Update result: {line}");
        }
        Ok(report)
    }

    fn ecu(&self, id: &str) -> Option<&EcuRef> {
        self.config.ecus.iter().find(|e| e.ecu_id == id)
    }

    fn outcome(&self, u: &VerifiedUpdate, status: UpdateStatus) -> UpdateOutcome {
        let enc = u.instruction.encryption.as_ref();
        UpdateOutcome {
            ecu_id: u.instruction.ecu_id.clone(),
            target: u.instruction.target.clone(),
            bytes: enc.map_or(u.instruction.file.length, |e| e.ciphertext.length),
            encrypted: enc.is_some(),
            status,
        }
    }

    fn notice(&self, v: &FullVerifier, u: &VerifiedUpdate) -> UpdateNotice {
        let ecu = self.ecu(&u.instruction.ecu_id);
        let custom = rampart_core::uptane::image_custom(
            &u.instruction.target,
            &self.image_file(v, u).unwrap_or(u.instruction.file.clone()),
        )
        .ok();
        let size = u
            .instruction
            .encryption
            .as_ref()
            .map_or(u.instruction.file.length, |e| e.ciphertext.length);
        UpdateNotice {
            ecu_id: u.instruction.ecu_id.clone(),
            ecu_description: ecu
                .map(|e| e.description.clone())
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| u.instruction.hardware_id.clone()),
            target: u.instruction.target.clone(),
            version: custom.and_then(|c| c.version),
            purpose: format!(
                "signed by the {} role of the image repository",
                u.image_role
            ),
            size_bytes: size,
            estimated_seconds: 5 + size / (8 * 1024 * 1024),
            unavailable: ecu
                .map(|e| e.unavailable.clone())
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "the functions of this ECU".into()),
        }
    }

    fn image_file(
        &self,
        v: &FullVerifier,
        u: &VerifiedUpdate,
    ) -> Option<rampart_core::metadata::TargetFile> {
        v.image()
            .trusted()
            .targets(&u.image_role)?
            .signed
            .targets
            .get(&u.instruction.target)
            .cloned()
    }

    /// What to download for one update: path under the targets URL, length and hashes
    /// (of the ciphertext for an encrypted image).
    fn download_source(
        &self,
        v: &FullVerifier,
        u: &VerifiedUpdate,
    ) -> (String, u64, rampart_core::hash::Hashes) {
        match &u.instruction.encryption {
            Some(enc) => (
                enc.ciphertext.path.clone(),
                enc.ciphertext.length,
                enc.ciphertext.hashes.clone(),
            ),
            None => {
                let consistent = v.image().trusted().root().signed.consistent_snapshot();
                let info = TargetInfo {
                    path: u.instruction.target.clone(),
                    file: u.instruction.file.clone(),
                    role: u.image_role.clone(),
                };
                (
                    target_url_path(&info, consistent),
                    u.instruction.file.length,
                    u.instruction.file.hashes.clone(),
                )
            }
        }
    }

    fn downloads_dir(&self) -> PathBuf {
        self.config.state_dir.join("downloads")
    }

    /// Removes from the download folder whatever no update of this cycle needs: what a
    /// power cut or a failed cycle left of a release the director has since replaced
    /// (whole images, `#partial` ones) would otherwise stay on the T-BOX's disk for good.
    /// Downloads of this cycle's updates stay, to be resumed or reused.
    fn prune_downloads(&self, v: &FullVerifier, updates: &[VerifiedUpdate]) {
        let dir = self.downloads_dir();
        let mut keep = std::collections::BTreeSet::new();
        for u in updates {
            let (path, _, _) = self.download_source(v, u);
            let dest = dir.join(rampart_core::client::safe_file_name(&path));
            keep.insert(rampart_client::runner::partial_path(&dest));
            keep.insert(dest);
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if keep.contains(&path) {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "removed a download no update needs")
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove a stale download")
                }
            }
        }
    }

    /// Downloads one verified update (bounded, resumable, every hash checked).
    async fn download(&mut self, v: &FullVerifier, u: &VerifiedUpdate) -> Result<PathBuf> {
        let targets = format!("{}targets/", self.image_base());
        let (path, length, hashes) = self.download_source(v, u);
        let url = format!("{targets}{}", encode_target_path(&path));
        let dest = self
            .downloads_dir()
            .join(rampart_core::client::safe_file_name(&path));
        let bar = self.bar(length, &format!("download {}", u.instruction.target));
        let started = Instant::now();
        let mut last_logged = 0u64;
        let interactive = self.interactive;
        let target_name = u.instruction.target.clone();
        let outcome = download_target(
            &self.fetcher,
            &url,
            &dest,
            length,
            &hashes,
            &mut |done, total| {
                bar.set_position(done);
                if !interactive && total > 0 && done * 4 / total > last_logged {
                    last_logged = done * 4 / total;
                    tracing::info!(target = %target_name, done, total, "downloading");
                }
            },
        )
        .await;
        bar.finish_and_clear();
        let outcome = outcome?;
        tracing::info!(target = %u.instruction.target, ?outcome, seconds = started.elapsed().as_secs_f64(), "downloaded and verified");
        Ok(dest)
    }

    /// Hands a downloaded image and the metadata to verify it to its ECU.
    async fn install(&mut self, v: &FullVerifier, u: &VerifiedUpdate, path: &Path) -> Result<()> {
        let ecu = self.ecu(&u.instruction.ecu_id).cloned().ok_or_else(|| {
            Error::Config(format!("ECU {} is not configured", u.instruction.ecu_id))
        })?;
        let length = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        let bundle = self.bundle_for(v, ecu.verification)?;
        let result = self
            .send_to_ecu(&ecu, &u.instruction.target, bundle, path, length)
            .await?;
        if result.ok {
            Ok(())
        } else {
            Err(Error::Protocol(format!(
                "ECU {} refused: [{}] {}",
                ecu.ecu_id,
                result.rule.unwrap_or_default(),
                result.message
            )))
        }
    }

    fn bar(&self, len: u64, label: &str) -> ProgressBar {
        if !self.interactive {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:32} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_owned());
        bar
    }

    /// Streams an image and its metadata to an ECU and waits for the result.
    pub async fn send_to_ecu(
        &self,
        ecu: &EcuRef,
        target: &str,
        bundle: MetadataBundle,
        file: &Path,
        length: u64,
    ) -> Result<InstallResult> {
        let mut stream = connect(&ecu.address).await?;
        let begin = InstallBegin {
            target: target.to_owned(),
            bundle,
            length,
        };
        protocol::write_json(&mut stream, Kind::InstallBegin, &begin).await?;
        let mut f = tokio::fs::File::open(file)
            .await
            .map_err(|e| Error::io(file, e))?;
        let mut buf = vec![0u8; protocol::CHUNK];
        let bar = self.bar(length, &format!("install {target} → {}", ecu.ecu_id));
        let mut sent = 0u64;
        loop {
            let n = f.read(&mut buf).await.map_err(|e| Error::io(file, e))?;
            if n == 0 {
                break;
            }
            protocol::write_frame(
                &mut stream,
                Kind::ImageChunk,
                buf.get(..n).unwrap_or_default(),
            )
            .await?;
            sent += n as u64;
            bar.set_position(sent);
        }
        protocol::write_frame(&mut stream, Kind::ImageEnd, &[]).await?;
        let frame =
            tokio::time::timeout(Duration::from_secs(300), protocol::read_frame(&mut stream))
                .await
                .map_err(|_| Error::Protocol(format!("ECU {} did not answer", ecu.ecu_id)))??;
        bar.finish_and_clear();
        match frame.kind {
            Kind::InstallResult => Ok(protocol::parse_json(&frame)?),
            Kind::Error => {
                let e: protocol::ErrorPayload = protocol::parse_json(&frame)?;
                Ok(InstallResult {
                    ok: false,
                    rule: Some(e.rule),
                    message: e.message,
                })
            }
            other => Err(Error::Frame(protocol::FrameError::Unexpected(other))),
        }
    }
}

async fn connect(address: &str) -> Result<TcpStream> {
    tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(address))
        .await
        .map_err(|_| Error::Protocol(format!("ECU at {address} did not accept a connection")))?
        .map_err(|e| Error::Protocol(format!("ECU at {address}: {e}")))
}

/// Asks the ECU at `address` for a signed report.
pub async fn request_report(address: &str, nonce: &str) -> Result<Value> {
    let mut stream = connect(address).await?;
    protocol::write_json(
        &mut stream,
        Kind::ReportRequest,
        &ReportRequest {
            nonce: nonce.to_owned(),
        },
    )
    .await?;
    let frame = tokio::time::timeout(Duration::from_secs(10), protocol::read_frame(&mut stream))
        .await
        .map_err(|_| Error::Protocol(format!("ECU at {address} did not answer")))??;
    if frame.kind != Kind::Report {
        return Err(Error::Frame(protocol::FrameError::Unexpected(frame.kind)));
    }
    serde_json::from_slice(&frame.payload)
        .map_err(|e| Error::Protocol(format!("report is not JSON: {e}")))
}

/// Gives the ECU at `address` the director's receipt for a manifest carrying its report.
pub async fn send_receipt(address: &str, receipt: &[u8]) -> Result<InstallResult> {
    let mut stream = connect(address).await?;
    protocol::write_frame(&mut stream, Kind::Ack, receipt).await?;
    let frame = tokio::time::timeout(Duration::from_secs(10), protocol::read_frame(&mut stream))
        .await
        .map_err(|_| Error::Protocol(format!("ECU at {address} did not answer")))??;
    match frame.kind {
        Kind::InstallResult => Ok(protocol::parse_json(&frame)?),
        Kind::Error => {
            let e: protocol::ErrorPayload = protocol::parse_json(&frame)?;
            Err(Error::Protocol(format!(
                "ECU at {address} refused the receipt ({}): {}",
                e.rule, e.message
            )))
        }
        other => Err(Error::Frame(protocol::FrameError::Unexpected(other))),
    }
}

async fn run_precondition(cmd: &str) -> std::result::Result<(), String> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .await
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} exited with {status}"))
    }
}

/// The primary's public key (for registration).
pub fn public_key(p: &Primary) -> rampart_core::key::Key {
    p.signer.public_key().clone()
}

/// Runs cycles until interrupted (or once).
pub async fn run(config: PrimaryConfig, consent: ConsentMode, once: bool) -> Result<CycleReport> {
    let poll = Duration::from_secs(config.poll_seconds.max(1));
    let mut primary = Primary::open(config)?;
    loop {
        let result = primary.cycle(&consent).await;
        match (&result, once) {
            (_, true) => return result,
            (Ok(r), false) => tracing::info!(updates = r.updates.len(), "cycle complete"),
            (Err(e), false) => tracing::error!(rule = %e.rule(), error = %e, "cycle failed"),
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_random_source_is_an_error_not_a_zero_nonce() {
        let err = random_hex_from(16, |_| Err(aws_lc_rs::error::Unspecified)).unwrap_err();
        assert_eq!(err.rule(), "crypto");
        let a = random_hex(16).unwrap();
        let b = random_hex(16).unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert_ne!(a, "0".repeat(32));
    }
}

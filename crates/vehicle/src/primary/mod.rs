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

mod config;
mod cycle;
mod download;
mod ecu_link;
mod legacy;
mod nudge;
pub mod offline;

pub use config::{load_config, EcuRef, NudgeConfig, PrimaryConfig};
pub use ecu_link::{request_report, send_receipt};
use std::sync::Arc;

use crate::report::{LogReporter, Reporter};
use rampart_core::rule::Rule;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use rampart_client::fetch::{encode_target_path, join_url};
use rampart_client::{download_target, FetchConfig, HttpFetcher, MetadataStore, TlsConfig};
use rampart_core::client::{
    metadata_file_name, target_url_path, Action, Client, Config as ClientConfig, Fetched,
    TargetInfo,
};
use rampart_core::signer::{InMemorySigner, Signer};
use rampart_core::trusted::TrustedSet;
use rampart_core::uptane::manifest::{
    sign_vehicle_manifest, UpdateFailure, UpdateProgress, UpdateStage, VehicleManifest,
    VEHICLE_MANIFEST_TYPE,
};
use rampart_core::uptane::{FullVerifier, InstalledImage, Repo, Scope, UptaneAction};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::consent::{self, ConsentMode, Decision, UpdateNotice};
use crate::error::{Error, Result};
use crate::protocol::{self, InstallBegin, InstallResult, Kind, MetadataBundle, ReportRequest};
use crate::secondary::Verification;

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
    /// Bytes sent over the air (ciphertext if encrypted; the delta's, if a delta was used).
    pub bytes: u64,
    /// Bytes a delta saved against downloading the whole image (0: the whole image went).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub saved_bytes: u64,
    /// Whether it travelled encrypted.
    pub encrypted: bool,
    /// How it reached its ECU when not over the in-vehicle protocol (`uds-doip`: flashed by
    /// the gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Result.
    pub status: UpdateStatus,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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

/// What a cycle achieved, as a one-shot run (`--once`) exits with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CycleOutcome {
    /// Every update due installed (or none was due), and every ECU answered.
    Complete,
    /// Nothing failed, but an update waits: the owner declined it or a precondition held it.
    Postponed(String),
    /// An update failed, or an ECU did not answer (what went wrong, rule first).
    Failed(String),
}

impl CycleReport {
    /// What the cycle achieved (see [`CycleOutcome`]).
    pub fn outcome(&self) -> CycleOutcome {
        let failed: Vec<String> = self
            .updates
            .iter()
            .filter_map(|u| match &u.status {
                UpdateStatus::Failed(rule, msg) => {
                    Some(format!("{rule}: {} on {}: {msg}", u.target, u.ecu_id))
                }
                _ => None,
            })
            .collect();
        if !failed.is_empty() {
            return CycleOutcome::Failed(format!(
                "{} of {} update(s) failed: {}",
                failed.len(),
                self.updates.len(),
                failed.join("; ")
            ));
        }
        if !self.problems.is_empty() {
            return CycleOutcome::Failed(self.problems.join("; "));
        }
        let waiting: Vec<String> = self
            .updates
            .iter()
            .filter_map(|u| match &u.status {
                UpdateStatus::Declined(w) | UpdateStatus::PreconditionFailed(w) => {
                    Some(format!("{} on {}: {w}", u.target, u.ecu_id))
                }
                _ => None,
            })
            .collect();
        if waiting.is_empty() {
            CycleOutcome::Complete
        } else {
            CycleOutcome::Postponed(waiting.join("; "))
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PrimaryState {
    manifest_counter: u64,
    #[serde(default)]
    attacks: Vec<String>,
    /// Instructed updates that failed, kept (as the indicators) until a manifest carrying
    /// them is accepted.
    #[serde(default)]
    failures: Vec<UpdateFailure>,
    /// Report counters of the legacy ECUs whose reports the primary makes.
    #[serde(default)]
    legacy_counters: BTreeMap<String, u64>,
}

/// The primary.
pub struct Primary {
    config: PrimaryConfig,
    signer: InMemorySigner,
    fetcher: HttpFetcher,
    state: PrimaryState,
    /// Where messages, progress and the owner's question go (logs, unless told otherwise).
    reporter: Arc<dyn Reporter>,
    /// Legacy ECUs' security-log reads in the reports of this cycle: ECU → (report counter,
    /// read number), cleared on the ECU once the director's receipt acknowledges the report.
    legacy_logs: BTreeMap<String, (u64, u64)>,
    /// Working from an offline bundle: where the signed manifests go instead of the director.
    offline_reports: Option<PathBuf>,
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
            reporter: Arc::new(LogReporter),
            legacy_logs: BTreeMap::new(),
            offline_reports: None,
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

    /// Records that the instructed update of `target` (on `ecu`, when known) failed by `rule`:
    /// the next manifest tells the director, which records it on the assignment.
    fn failed(&mut self, target: &str, ecu: Option<&str>, rule: Rule, message: &str) {
        self.state.failures.push(UpdateFailure {
            target: target.to_owned(),
            ecu_id: ecu.map(str::to_owned),
            rule: rule.to_string(),
            message: message.to_owned(),
        });
        if self.state.failures.len() > 32 {
            self.state.failures.remove(0);
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
            let answer = match &ecu.uds {
                Some(link) => self.legacy_report(&ecu, link, &nonce).await,
                None => request_report(&ecu.address, &nonce).await,
            };
            match answer {
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
        self.send_manifest_with(reports, Vec::new()).await
    }

    /// Tells the director that `updates` reached `stage`: a signed manifest of its own
    /// (counter, nonce) without ECU reports, sent during the cycle. A failure is noted, never
    /// fatal: progress is for the operator, the cycle's last manifest is what counts.
    pub(super) async fn send_progress(
        &mut self,
        report: &mut CycleReport,
        updates: &[rampart_core::uptane::VerifiedUpdate],
        stage: UpdateStage,
    ) {
        let progress = updates
            .iter()
            .map(|u| UpdateProgress {
                target: u.instruction.target.clone(),
                ecu_id: u.instruction.ecu_id.clone(),
                stage,
            })
            .collect();
        if let Err(e) = self.send_manifest_with(BTreeMap::new(), progress).await {
            self.note(
                report,
                e.rule(),
                &format!("progress ({}) not sent: {e}", stage.as_str()),
            );
        }
    }

    /// [`Primary::send_manifest`] with updates under way.
    async fn send_manifest_with(
        &mut self,
        reports: BTreeMap<String, Value>,
        progress: Vec<UpdateProgress>,
    ) -> Result<Value> {
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
            update_failures: self.state.failures.clone(),
            progress,
            unrecognized: BTreeMap::new(),
        };
        let body = sign_vehicle_manifest(&manifest, &self.signer)?;
        if let Some(reports) = self.offline_reports.clone() {
            // Offline: the manifest goes into the report file for the director; attack
            // indicators and failures stay until a director has them (an online check-in).
            offline::append_report(&reports, &self.config.vin, &body)?;
            return Ok(Value::Null);
        }
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
        self.state.failures.clear();
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
            if let Some(link) = &ecu.uds {
                let counter = acknowledged
                    .and_then(|a| a.get(&ecu.ecu_id))
                    .and_then(Value::as_u64);
                self.clear_legacy_log(ecu, link, counter).await;
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
    ///
    /// `current_timestamp`: the entity tag of the director timestamp that the director's
    /// answer to this cycle's manifest named as current (`director_timestamp_tag`). When it
    /// is the copy held, that copy is verified again without asking for it — the request
    /// would have been answered 304. Whoever could forge the tag could forge the 304: either
    /// way the held copy's signatures and expiry are checked as if it had been fetched.
    pub async fn verify(
        &mut self,
        installed: BTreeMap<String, InstalledImage>,
        current_timestamp: Option<&str>,
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
                    let held = rampart_client::runner::held_copy(store, &path)?;
                    let named_current = |held: &[u8]| {
                        repo == Repo::Director
                            && path == "timestamp.json"
                            && current_timestamp
                                .is_some_and(|tag| tag == rampart_core::hash::entity_tag(held))
                    };
                    let fetched = match held {
                        Some(held) if named_current(&held) => Fetched::Bytes(held),
                        held => match self
                            .fetcher
                            .fetch_bytes_unless(&url, max_length, held.as_deref())
                            .await?
                        {
                            Some(b) => Fetched::Bytes(b),
                            None => Fetched::NotFound,
                        },
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

    /// Sends messages, progress and the owner's question to `reporter` from now on.
    pub fn set_reporter(&mut self, reporter: Arc<dyn Reporter>) {
        self.reporter = reporter;
    }
}

/// The primary's public key (for registration).
pub fn public_key(p: &Primary) -> rampart_core::key::Key {
    p.signer.public_key().clone()
}

/// Runs cycles until interrupted (or once).
pub async fn run(config: PrimaryConfig, consent: ConsentMode, once: bool) -> Result<CycleReport> {
    run_with(config, consent, once, Arc::new(LogReporter)).await
}

/// [`run`], telling people through `reporter` (a terminal, a head unit).
pub async fn run_with(
    config: PrimaryConfig,
    consent: ConsentMode,
    once: bool,
    reporter: Arc<dyn Reporter>,
) -> Result<CycleReport> {
    let poll = Duration::from_secs(config.poll_seconds.max(1));
    let nudges = if once { None } else { nudge::listen(&config)? };
    let mut primary = Primary::open(config)?;
    primary.set_reporter(reporter);
    let mut last_early: Option<tokio::time::Instant> = None;
    loop {
        let result = primary.cycle(&consent).await;
        match (&result, once) {
            (_, true) => return result,
            (Ok(r), false) => tracing::info!(updates = r.updates.len(), "cycle complete"),
            (Err(e), false) => tracing::error!(rule = %e.rule(), error = %e, "cycle failed"),
        }
        wait_for_next_cycle(poll, nudges.as_ref(), &mut last_early).await;
    }
}

/// Waits for the poll interval, or for a nudge: the first nudge after
/// `min_interval` starts the cycle at once; nudges sooner than that (a flood, forged or not)
/// bring the next cycle forward to when the interval has passed, never closer.
async fn wait_for_next_cycle(
    poll: Duration,
    nudges: Option<&nudge::Nudges>,
    last_early: &mut Option<tokio::time::Instant>,
) {
    let Some(n) = nudges else {
        tokio::time::sleep(poll).await;
        return;
    };
    let polled = tokio::time::Instant::now() + poll;
    let mut deadline = polled;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                if deadline < polled {
                    // A nudge's check-in, brought forward: it counts as early.
                    *last_early = Some(deadline);
                }
                return;
            }
            () = n.notify.notified() => {
                let now = tokio::time::Instant::now();
                match *last_early {
                    Some(t) if now < t + n.min_interval => {
                        deadline = deadline.min(t + n.min_interval);
                        tracing::debug!("nudge within the minimum interval: the check-in waits for it");
                    }
                    _ => {
                        *last_early = Some(now);
                        tracing::info!("nudged: checking in now");
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! A secondary ECU (`rampart ecu`): verifies what the primary sends (full or partial
//! verification, with its own trusted state), decrypts images meant for it in constant
//! memory, writes the inactive A/B slot, switches atomically, counts boots, and signs a
//! version report with a fresh nonce every cycle.
//!
//! The ECU trusts nothing it receives over the in-vehicle link: the metadata bundle is run
//! through the same verification core as the primary's, from the ECU's *own* trusted roots
//! and versions; image bytes are checked against the signed ciphertext and plaintext
//! hashes while they stream into the slot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rampart_client::MetadataStore;
use rampart_core::client::{Action, Client, Config as ClientConfig, Fetched};
use rampart_core::encryption::{unwrap_key, Decryptor, EcuKeyPair};
use rampart_core::hash::StreamVerifier;
use rampart_core::metadata::Expiry;
use rampart_core::signer::{InMemorySigner, Signer};
use rampart_core::uptane::manifest::{sign_ecu_report, EcuVersionReport, ECU_REPORT_TYPE};
use rampart_core::uptane::{
    DirectorInstruction, FullVerifier, InstalledImage, PartialVerifier, Repo, Scope, UptaneAction,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::error::{Error, Result};
use crate::protocol::{
    self, ErrorPayload, FrameError, InstallBegin, InstallResult, Kind, MetadataBundle,
    ReportRequest,
};
use crate::slots::{BootOutcome, SlotConfig, Slots};

/// Full or partial verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verification {
    /// Both repositories, all roles (Uptane 5.4.4.2).
    Full,
    /// The director's targets only (Uptane 5.4.4.1).
    Partial,
}

/// `ecu.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EcuConfig {
    /// ECU identifier (serial).
    pub ecu_id: String,
    /// Hardware identifier.
    pub hardware_id: String,
    /// The vehicle this ECU is built into.
    pub vin: String,
    /// Address to listen on for the primary (loopback in the lab).
    pub listen: String,
    /// Signing key (PKCS#8 PEM) for version reports.
    pub key: PathBuf,
    /// X25519 private key (hex file) for encrypted images, if the ECU takes them.
    #[serde(default)]
    pub encryption_key: Option<PathBuf>,
    /// Full or partial verification.
    pub verification: Verification,
    /// Director root the ECU was provisioned with.
    pub director_root: PathBuf,
    /// Image repository root (full verification only).
    #[serde(default)]
    pub image_root: Option<PathBuf>,
    /// Trusted state (metadata, counters).
    pub state_dir: PathBuf,
    /// A/B slots.
    pub slots: SlotConfig,
    /// Name of the image in slot A at first start.
    #[serde(default = "factory_name")]
    pub factory_image: String,
}

fn factory_name() -> String {
    "factory".into()
}

/// Persistent counters and indicators of an ECU.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct EcuState {
    report_counter: u64,
    #[serde(default)]
    latest_verified: Option<String>,
    #[serde(default)]
    attacks: Vec<String>,
    #[serde(default)]
    rejected_frames: u64,
    #[serde(default)]
    partial_targets_version: Option<u64>,
}

/// A secondary ECU.
pub struct Secondary {
    config: EcuConfig,
    signer: InMemorySigner,
    decryption: Option<EcuKeyPair>,
    slots: Slots,
    state: EcuState,
}

impl std::fmt::Debug for Secondary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secondary")
            .field("ecu_id", &self.config.ecu_id)
            .finish_non_exhaustive()
    }
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("ecu-state.json")
}

/// Reads a hex-encoded X25519 private key file.
pub fn load_encryption_key(path: &Path) -> Result<EcuKeyPair> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bytes = hex::decode(text.trim())
        .map_err(|e| Error::Config(format!("{}: not hex: {e}", path.display())))?;
    Ok(EcuKeyPair::from_private_bytes(&bytes)?)
}

impl Secondary {
    /// Opens the ECU: keys, slots (creating the boot-control file on first start, with slot A
    /// as the factory image), state; then runs boot counting (this is a boot).
    pub fn open(config: EcuConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.state_dir).map_err(|e| Error::io(&config.state_dir, e))?;
        let pem = std::fs::read_to_string(&config.key).map_err(|e| Error::io(&config.key, e))?;
        let signer = InMemorySigner::from_pkcs8_pem_any(&pem)?;
        let decryption = config
            .encryption_key
            .as_deref()
            .map(load_encryption_key)
            .transpose()?;
        let factory_bytes = std::fs::read(&config.slots.slot_a).unwrap_or_default();
        let factory = InstalledImage {
            filename: config.factory_image.clone(),
            length: factory_bytes.len() as u64,
            hashes: rampart_core::hash::compute_hashes(&factory_bytes),
            release_counter: 0,
        };
        let slots = Slots::open(config.slots.clone(), factory)?;
        let state = match std::fs::read(state_path(&config.state_dir)) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| Error::Config(format!("ECU state: {e}")))?
            }
            Err(_) => EcuState::default(),
        };
        let mut ecu = Secondary {
            config,
            signer,
            decryption,
            slots,
            state,
        };
        ecu.boot()?;
        Ok(ecu)
    }

    /// The configuration.
    pub fn config(&self) -> &EcuConfig {
        &self.config
    }

    /// The image running now.
    pub fn running(&self) -> InstalledImage {
        self.slots.running().cloned().unwrap_or(InstalledImage {
            filename: self.config.factory_image.clone(),
            length: 0,
            hashes: BTreeMap::new(),
            release_counter: 0,
        })
    }

    fn save(&self) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(&self.state).map_err(|e| Error::Config(e.to_string()))?;
        rampart_client::store::write_atomic(&state_path(&self.config.state_dir), &bytes)?;
        Ok(())
    }

    /// Records something that went wrong, for the next version report.
    pub fn record_attack(&mut self, rule: &str, message: &str) {
        tracing::warn!(ecu = %self.config.ecu_id, %rule, %message, "attack indicator");
        self.state.attacks.push(format!("{rule}: {message}"));
        // Bounded: a flood of garbage must not grow the report without limit.
        if self.state.attacks.len() > 16 {
            self.state.attacks.remove(0);
        }
        let _ = self.save();
    }

    /// Counts a rejected in-vehicle frame.
    pub fn record_rejected_frame(&mut self, err: &FrameError) {
        self.state.rejected_frames += 1;
        let n = self.state.rejected_frames;
        self.record_attack(
            err.rule(),
            &format!("{err} ({n} rejected in-vehicle frame(s) so far)"),
        );
    }

    /// Boot counting; reports a rollback as an attack indicator (a failed update).
    pub fn boot(&mut self) -> Result<BootOutcome> {
        let outcome = self.slots.boot()?;
        match &outcome {
            BootOutcome::RolledBack { .. } => {
                if let Some(f) = self.slots.take_failure()? {
                    self.record_attack("boot-failed", f.trim_start_matches("boot-failed: "));
                }
            }
            BootOutcome::Committed(slot) => {
                tracing::info!(ecu = %self.config.ecu_id, ?slot, "new image booted and committed")
            }
            _ => {}
        }
        Ok(outcome)
    }

    /// Signs a version report with the primary's nonce; attack indicators are included once.
    pub fn report(&mut self, nonce: &str, now: DateTime<Utc>) -> Result<Vec<u8>> {
        self.state.report_counter += 1;
        let attacks = std::mem::take(&mut self.state.attacks).join("\n");
        // Persist the counter before the report leaves: a crash must never reuse it.
        self.save()?;
        let latest = self
            .state
            .latest_verified
            .as_deref()
            .and_then(|t| {
                serde_json::from_value::<Expiry>(serde_json::Value::String(t.to_owned())).ok()
            })
            .unwrap_or_else(|| Expiry::new(now));
        let report = EcuVersionReport {
            type_: ECU_REPORT_TYPE.into(),
            ecu_id: self.config.ecu_id.clone(),
            installed_image: self.running(),
            attacks_detected: attacks,
            latest_verified_time: latest,
            report_counter: self.state.report_counter,
            nonce: nonce.to_owned(),
            unrecognized: BTreeMap::new(),
        };
        Ok(sign_ecu_report(&report, &self.signer)?)
    }

    /// Verifies the bundle for `target` with this ECU's own trusted state; returns the
    /// director's instruction for this ECU.
    pub fn verify(
        &mut self,
        target: &str,
        bundle: &MetadataBundle,
        now: DateTime<Utc>,
    ) -> Result<DirectorInstruction> {
        let installed = self.running();
        let instruction = match self.config.verification {
            Verification::Full => self.verify_full(bundle, &installed, now)?,
            Verification::Partial => self.verify_partial(bundle, &installed, now)?,
        };
        let instruction = instruction.ok_or_else(|| rampart_core::Error::NoTargetForEcu {
            ecu: self.config.ecu_id.clone(),
        })?;
        if instruction.target != target {
            return Err(Error::Protocol(format!(
                "primary sent {target}, but the director assigned {} to this ECU",
                instruction.target
            )));
        }
        self.state.latest_verified = Some(Expiry::new(now).to_string());
        self.save()?;
        Ok(instruction)
    }

    fn verify_full(
        &mut self,
        bundle: &MetadataBundle,
        installed: &InstalledImage,
        now: DateTime<Utc>,
    ) -> Result<Option<DirectorInstruction>> {
        let dir_store = MetadataStore::open(self.config.state_dir.join("director"))?;
        let img_store = MetadataStore::open(self.config.state_dir.join("image"))?;
        let image_root_path = self
            .config
            .image_root
            .clone()
            .ok_or_else(|| Error::Config("full verification needs image_root".into()))?;
        let dir_root = trusted_root(&dir_store, &self.config.director_root)?;
        let img_root = trusted_root(&img_store, &image_root_path)?;
        let director = Client::new("director", &dir_root, now, ClientConfig::default())?;
        let image = Client::new("image", &img_root, now, ClientConfig::default())?;
        let scope = Scope::Secondary {
            ecu_id: self.config.ecu_id.clone(),
            hardware_id: self.config.hardware_id.clone(),
        };
        let installed_map = BTreeMap::from([(self.config.ecu_id.clone(), installed.clone())]);
        let mut v = FullVerifier::new(director, image, &self.config.vin, scope, installed_map);
        v.start();
        loop {
            match v.next_action()? {
                UptaneAction::Done => break,
                UptaneAction::Repo { repo, action } => {
                    let (store, files) = match repo {
                        Repo::Director => (&dir_store, &bundle.director),
                        Repo::Image => (&img_store, &bundle.image),
                    };
                    match action {
                        Action::ReadLocal { name } => v.provide_local(repo, store.read(&name)?)?,
                        Action::Fetch { path, .. } => {
                            let fetched = files.get(&path).map_or(Fetched::NotFound, |s| {
                                Fetched::Bytes(s.clone().into_bytes())
                            });
                            v.provide_fetched(repo, &path, fetched)?;
                        }
                        Action::Persist { name, bytes } => store.write(&name, &bytes)?,
                        Action::Remove { name } => store.remove(&name)?,
                        Action::Done => {}
                    }
                }
            }
        }
        let verdict = v.verdict().cloned().unwrap_or_default();
        Ok(verdict
            .updates
            .into_iter()
            .map(|u| u.instruction)
            .find(|i| i.ecu_id == self.config.ecu_id))
    }

    fn verify_partial(
        &mut self,
        bundle: &MetadataBundle,
        installed: &InstalledImage,
        now: DateTime<Utc>,
    ) -> Result<Option<DirectorInstruction>> {
        let store = MetadataStore::open(self.config.state_dir.join("director"))?;
        let root = trusted_root(&store, &self.config.director_root)?;
        let mut p = PartialVerifier::new(&root, self.state.partial_targets_version, now)?;
        // Follow the director's root chain as far as the bundle goes.
        let mut version = rampart_core::metadata::Envelope::parse(&root, "root")?
            .typed::<rampart_core::metadata::Root>("root")?
            .version;
        while let Some(next) = bundle.director.get(&format!("{}.root.json", version + 1)) {
            p.update_root(next.as_bytes())?;
            version += 1;
        }
        let targets = bundle
            .director
            .iter()
            .filter_map(|(k, v)| {
                k.strip_suffix(".targets.json")
                    .and_then(|n| n.parse::<u64>().ok())
                    .map(|n| (n, v))
            })
            .max_by_key(|(n, _)| *n)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| Error::Protocol("bundle has no director targets".into()))?;
        let outcome = p.verify(
            targets.as_bytes(),
            &self.config.vin,
            &self.config.ecu_id,
            &self.config.hardware_id,
            Some(installed),
        )?;
        store.write("root.json", p.root_bytes())?;
        self.state.partial_targets_version = Some(outcome.targets_version);
        self.save()?;
        Ok(outcome.instruction)
    }
}

fn trusted_root(store: &MetadataStore, provisioned: &Path) -> Result<Vec<u8>> {
    match store.read("root.json")? {
        Some(b) => Ok(b),
        None => std::fs::read(provisioned).map_err(|e| Error::io(provisioned, e)),
    }
}

/// Receives an image that was verified by [`Secondary::verify`]: ciphertext checked against
/// the signed ciphertext hashes, decrypted in constant memory, plaintext checked against the
/// signed length and hashes while it goes into the inactive slot.
struct Receiver {
    expected: u64,
    received: u64,
    ciphertext: Option<StreamVerifier>,
    decryptor: Option<Decryptor>,
    plaintext: StreamVerifier,
    writer: crate::slots::SlotWriter,
    buf: Vec<u8>,
}

impl Receiver {
    fn chunk(&mut self, data: &[u8]) -> Result<()> {
        self.received += data.len() as u64;
        if self.received > self.expected {
            return Err(rampart_core::Error::LengthExceeded {
                what: "image on the in-vehicle link".into(),
                max: self.expected,
            }
            .into());
        }
        match (&mut self.ciphertext, &mut self.decryptor) {
            (Some(cv), Some(dec)) => {
                cv.update(data)?;
                self.buf.clear();
                dec.update(data, &mut self.buf)?;
                self.plaintext.update(&self.buf)?;
                self.writer.write(&self.buf)?;
            }
            _ => {
                self.plaintext.update(data)?;
                self.writer.write(data)?;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<crate::slots::SlotWriter> {
        if let (Some(cv), Some(dec)) = (self.ciphertext.take(), self.decryptor.take()) {
            cv.finish()?;
            self.buf.clear();
            dec.finish(&mut self.buf)?;
            self.plaintext.update(&self.buf)?;
            self.writer.write(&self.buf)?;
        }
        self.plaintext.finish()?;
        Ok(self.writer)
    }
}

/// Serves the primary on `listener` until the task is dropped.
pub async fn serve(ecu: Arc<Mutex<Secondary>>, listener: TcpListener) -> Result<()> {
    loop {
        let (stream, peer) = listener
            .accept()
            .await
            .map_err(|e| Error::Protocol(format!("accept: {e}")))?;
        let ecu = ecu.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(ecu, stream).await {
                tracing::debug!(%peer, error = %e, "in-vehicle connection ended");
            }
        });
    }
}

const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

async fn read_frame_timed(
    stream: &mut TcpStream,
) -> std::result::Result<protocol::Frame, FrameError> {
    tokio::time::timeout(FRAME_TIMEOUT, protocol::read_frame(stream))
        .await
        .map_err(|_| FrameError::Truncated)?
}

async fn refuse(ecu: &Arc<Mutex<Secondary>>, stream: &mut TcpStream, err: &FrameError) {
    ecu.lock().await.record_rejected_frame(err);
    let _ = protocol::write_json(
        stream,
        Kind::Error,
        &ErrorPayload {
            rule: err.rule().into(),
            message: err.to_string(),
        },
    )
    .await;
    let _ = stream.shutdown().await;
}

/// One connection from the primary: one request, one answer.
async fn handle(ecu: Arc<Mutex<Secondary>>, mut stream: TcpStream) -> Result<()> {
    let frame = match read_frame_timed(&mut stream).await {
        Ok(f) => f,
        Err(FrameError::Closed) => return Ok(()),
        Err(e) => {
            refuse(&ecu, &mut stream, &e).await;
            return Ok(());
        }
    };
    match frame.kind {
        Kind::ReportRequest => {
            let req: ReportRequest = match protocol::parse_json(&frame) {
                Ok(r) => r,
                Err(e) => {
                    refuse(&ecu, &mut stream, &e).await;
                    return Ok(());
                }
            };
            let report = ecu.lock().await.report(&req.nonce, Utc::now())?;
            protocol::write_frame(&mut stream, Kind::Report, &report).await?;
        }
        Kind::InstallBegin => {
            let begin: InstallBegin = match protocol::parse_json(&frame) {
                Ok(b) => b,
                Err(e) => {
                    refuse(&ecu, &mut stream, &e).await;
                    return Ok(());
                }
            };
            let result = install(&ecu, &mut stream, begin).await;
            protocol::write_json(&mut stream, Kind::InstallResult, &result).await?;
        }
        Kind::Boot => {
            let outcome = ecu.lock().await.boot()?;
            let result = InstallResult {
                ok: !matches!(outcome, BootOutcome::RolledBack { .. }),
                rule: None,
                message: format!("{outcome:?}"),
            };
            protocol::write_json(&mut stream, Kind::InstallResult, &result).await?;
        }
        other => refuse(&ecu, &mut stream, &FrameError::Unexpected(other)).await,
    }
    Ok(())
}

async fn install(
    ecu: &Arc<Mutex<Secondary>>,
    stream: &mut TcpStream,
    begin: InstallBegin,
) -> InstallResult {
    // One installation at a time: the ECU is locked for its duration.
    let mut guard = ecu.lock().await;
    match install_locked(&mut guard, stream, &begin).await {
        Ok(message) => InstallResult {
            ok: true,
            rule: None,
            message,
        },
        Err(e) => {
            let rule = e.rule();
            guard.record_attack(&rule, &e.to_string());
            InstallResult {
                ok: false,
                rule: Some(rule),
                message: e.to_string(),
            }
        }
    }
}

async fn install_locked(
    ecu: &mut Secondary,
    stream: &mut TcpStream,
    begin: &InstallBegin,
) -> Result<String> {
    let now = Utc::now();
    let instruction = ecu.verify(&begin.target, &begin.bundle, now)?;
    let (ciphertext, decryptor, expected) = match &instruction.encryption {
        Some(enc) => {
            let key_pair = ecu.decryption.as_ref().ok_or_else(|| {
                Error::Config("image is encrypted but this ECU has no decryption key".into())
            })?;
            let content_key = unwrap_key(key_pair, &enc.key)?;
            let cv = StreamVerifier::new(
                "ciphertext",
                Some(enc.ciphertext.length),
                enc.ciphertext.length,
                Some(&enc.ciphertext.hashes),
            )?;
            (
                Some(cv),
                Some(Decryptor::new(&content_key)),
                enc.ciphertext.length,
            )
        }
        None => (None, None, instruction.file.length),
    };
    if begin.length != expected {
        return Err(rampart_core::Error::LengthMismatch {
            what: format!("{} announced by the primary", begin.target),
            expected,
            actual: begin.length,
        }
        .into());
    }
    let plaintext = StreamVerifier::new(
        &instruction.target,
        Some(instruction.file.length),
        instruction.file.length,
        Some(&instruction.file.hashes),
    )?;
    let mut rx = Receiver {
        expected,
        received: 0,
        ciphertext,
        decryptor,
        plaintext,
        writer: ecu.slots.begin_write()?,
        buf: Vec::with_capacity(protocol::CHUNK + 64),
    };
    loop {
        let frame = read_frame_timed(stream).await.map_err(|e| {
            ecu.state.rejected_frames += 1;
            Error::Frame(e)
        })?;
        match frame.kind {
            Kind::ImageChunk => rx.chunk(&frame.payload)?,
            Kind::ImageEnd => break,
            other => return Err(Error::Frame(FrameError::Unexpected(other))),
        }
    }
    let writer = rx.finish()?;
    let image = InstalledImage {
        filename: instruction.target.clone(),
        length: instruction.file.length,
        hashes: instruction.file.hashes.clone(),
        release_counter: instruction.release_counter,
    };
    let slot = ecu.slots.commit_write(writer, image)?;
    tracing::info!(ecu = %ecu.config.ecu_id, target = %instruction.target, ?slot, "image written and verified; boot slot switched");
    // Reboot into the new slot (simulated): boot counting until committed or rolled back.
    loop {
        match ecu.boot()? {
            BootOutcome::Committed(s) => {
                return Ok(format!("installed {} in slot {s:?}", instruction.target))
            }
            BootOutcome::RolledBack { failed, to } => {
                return Err(Error::BootFailed(format!(
                    "{} failed its health check in slot {failed:?}; rolled back to slot {to:?}",
                    instruction.target
                )))
            }
            BootOutcome::Retrying { .. } | BootOutcome::Normal => continue,
        }
    }
}

/// Runs an ECU: opens it and serves the primary until interrupted.
pub async fn run(config: EcuConfig) -> Result<()> {
    let listen = config.listen.clone();
    let ecu = Secondary::open(config)?;
    let running = ecu.running();
    tracing::info!(ecu = %ecu.config().ecu_id, image = %running.filename, "ECU up");
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {listen}: {e}")))?;
    // With port 0 the address is only known now: publish it for whoever starts us.
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Config(e.to_string()))?;
    rampart_client::store::write_atomic(
        &ecu.config().state_dir.join("listen-address"),
        addr.to_string().as_bytes(),
    )?;
    tracing::info!(%addr, "listening for the primary");
    serve(Arc::new(Mutex::new(ecu)), listener).await
}

/// Loads `ecu.toml`.
pub fn load_config(path: &Path) -> Result<EcuConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut c: EcuConfig =
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let abs = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    abs(&mut c.key);
    abs(&mut c.director_root);
    abs(&mut c.state_dir);
    abs(&mut c.slots.slot_a);
    abs(&mut c.slots.slot_b);
    abs(&mut c.slots.boot_control);
    if let Some(p) = c.encryption_key.as_mut() {
        abs(p);
    }
    if let Some(p) = c.image_root.as_mut() {
        abs(p);
    }
    Ok(c)
}

/// The signer's public key (for registering the ECU with the director).
pub fn public_key(ecu: &Secondary) -> rampart_core::key::Key {
    ecu.signer.public_key().clone()
}

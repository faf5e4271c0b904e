//! A secondary ECU (`rampart ecu`): verifies what the primary sends (full or partial
//! verification, with its own trusted state), decrypts images meant for it in constant
//! memory, writes the inactive A/B slot, switches atomically, counts boots, and signs a
//! version report with a fresh nonce every cycle.
//!
//! The ECU trusts nothing it receives over the in-vehicle link: the metadata bundle is run
//! through the same verification core as the primary's, from the ECU's *own* trusted roots
//! and versions; image bytes are checked against the signed ciphertext and plaintext
//! hashes while they stream into the slot.

mod delta;
mod link;

use rampart_core::rule::Rule;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rampart_client::store::check_secret_permissions;
use rampart_client::MetadataStore;
use rampart_core::client::{Action, Client, Config as ClientConfig, Fetched};
use rampart_core::encryption::EcuKeyPair;
use rampart_core::metadata::{Envelope, Expiry, Root};
use rampart_core::signer::{InMemorySigner, Signer};
use rampart_core::uptane::manifest::{sign_ecu_report, EcuVersionReport, ECU_REPORT_TYPE};
use rampart_core::uptane::{
    DirectorInstruction, FullVerifier, InstalledImage, PartialVerifier, Repo, Scope, UptaneAction,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

pub use self::link::{serve, LinkLimits};
use crate::error::{Error, Result};
use crate::indicators::Indicators;
use crate::protocol::{FrameError, MetadataBundle};
use crate::report::{LogReporter, Reporter};
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
    /// Limits of the in-vehicle link (connections, timeouts, buffered bytes).
    #[serde(default)]
    pub limits: LinkLimits,
}

fn factory_name() -> String {
    "factory".into()
}

impl EcuConfig {
    /// An ECU whose files all live in `dir`, under their usual names: `key.pem` (signing
    /// key), `director-root.json` (and `image-root.json` for full verification), `slot-a`,
    /// `slot-b`, `boot-control.json`, `state/`. It listens on a port the system picks
    /// (`127.0.0.1:0`), takes no encrypted images and has the default link limits; change
    /// what differs.
    pub fn in_folder(
        dir: &Path,
        ecu_id: &str,
        hardware_id: &str,
        vin: &str,
        verification: Verification,
    ) -> EcuConfig {
        EcuConfig {
            ecu_id: ecu_id.to_owned(),
            hardware_id: hardware_id.to_owned(),
            vin: vin.to_owned(),
            listen: "127.0.0.1:0".into(),
            key: dir.join("key.pem"),
            encryption_key: None,
            verification,
            director_root: dir.join("director-root.json"),
            image_root: (verification == Verification::Full).then(|| dir.join("image-root.json")),
            state_dir: dir.join("state"),
            slots: SlotConfig {
                slot_a: dir.join("slot-a"),
                slot_b: dir.join("slot-b"),
                boot_control: dir.join("boot-control.json"),
                max_boot_attempts: 2,
                health_check: None,
            },
            factory_image: factory_name(),
            limits: LinkLimits::default(),
        }
    }
}

/// Persistent counters and indicators of an ECU.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct EcuState {
    report_counter: u64,
    #[serde(default)]
    latest_verified: Option<String>,
    /// What went wrong, kept until the director acknowledged a report carrying it.
    #[serde(default)]
    indicators: Indicators,
    /// Indicators as state files before the director's receipts kept them (read once).
    #[serde(default, skip_serializing)]
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
    /// When indicators were last written to disk (a flood must not turn into a write per
    /// frame; reports and receipts always write).
    last_indicator_save: Option<Instant>,
    /// Indicators recorded but not yet written.
    unsaved: bool,
    /// Where the ECU's lines for people go (logs, unless told otherwise).
    reporter: Arc<dyn Reporter>,
}

/// Indicators recorded within this time of the last save are written with the next one.
const INDICATOR_SAVE_INTERVAL: Duration = Duration::from_secs(1);

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
        Self::open_with(config, Arc::new(LogReporter))
    }

    /// [`Secondary::open`], its lines for people (start, installs, refusals, rollbacks) going
    /// to `reporter`.
    pub fn open_with(config: EcuConfig, reporter: Arc<dyn Reporter>) -> Result<Self> {
        std::fs::create_dir_all(&config.state_dir).map_err(|e| Error::io(&config.state_dir, e))?;
        // The same rule as the server's: a secret others can read is refused, not used.
        for secret in std::iter::once(&config.key).chain(config.encryption_key.as_ref()) {
            check_secret_permissions(secret)?;
        }
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
        let mut state: EcuState = match std::fs::read(state_path(&config.state_dir)) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| Error::Config(format!("ECU state: {e}")))?
            }
            Err(_) => EcuState::default(),
        };
        for line in std::mem::take(&mut state.attacks) {
            let (rule, message) = line
                .split_once(": ")
                .unwrap_or((Rule::VehicleReport.as_str(), &line));
            state.indicators.record(rule, message);
        }
        let mut ecu = Secondary {
            config,
            signer,
            decryption,
            slots,
            state,
            last_indicator_save: None,
            unsaved: false,
            reporter,
        };
        ecu.boot()?;
        Ok(ecu)
    }

    /// A line for the people around (`rampart ecu` prints it; logged otherwise).
    pub(crate) fn tell(&self, line: &str) {
        self.reporter
            .say(&format!("{}: {line}", self.config.ecu_id));
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

    /// Records something that went wrong; it goes into every version report until the
    /// director acknowledges one that carried it (see [`crate::indicators`]).
    pub fn record_attack(&mut self, rule: Rule, message: &str) {
        tracing::warn!(ecu = %self.config.ecu_id, %rule, %message, "attack indicator");
        self.tell(&format!("refused [{rule}]: {message}"));
        self.state.indicators.record(rule.as_str(), message);
        self.save_indicators();
    }

    /// As [`Secondary::record_attack`], for what a bus peer can repeat at will (garbage
    /// frames, refused connections): written at most once per second, so a flood does not
    /// become a disk write per frame. Returns `true` if the write was put off; the caller
    /// must then [`Secondary::flush`] within about a second.
    pub fn record_repeatable(&mut self, rule: Rule, message: &str) -> bool {
        tracing::debug!(ecu = %self.config.ecu_id, %rule, %message, "attack indicator");
        self.state.indicators.record(rule.as_str(), message);
        let due = self
            .last_indicator_save
            .is_none_or(|at| at.elapsed() >= INDICATOR_SAVE_INTERVAL);
        if due {
            self.save_indicators();
        } else {
            self.unsaved = true;
        }
        !due
    }

    /// Writes indicators put off by [`Secondary::record_repeatable`].
    pub fn flush(&mut self) {
        if self.unsaved {
            self.save_indicators();
        }
    }

    fn save_indicators(&mut self) {
        self.last_indicator_save = Some(Instant::now());
        self.unsaved = false;
        if let Err(e) = self.save() {
            tracing::error!(ecu = %self.config.ecu_id, error = %e, "cannot save indicators");
        }
    }

    /// The indicators not yet acknowledged by the director.
    pub fn indicators(&self) -> &Indicators {
        &self.state.indicators
    }

    /// Takes the director's signed receipt for a manifest: if it verifies against this ECU's
    /// trusted director root and names this vehicle and ECU, the indicators carried by the
    /// reports it acknowledges are forgotten. Returns how many.
    pub fn acknowledge(&mut self, receipt: &[u8]) -> Result<usize> {
        let store = MetadataStore::open(self.config.state_dir.join("director"))?;
        let root_bytes = trusted_root(&store, &self.config.director_root)?;
        let root: Root = Envelope::parse(&root_bytes, "root")?.typed("root")?;
        let counter = rampart_core::uptane::receipt::verify_receipt(
            receipt,
            &root,
            &self.config.vin,
            &self.config.ecu_id,
        )?;
        let forgotten = self.state.indicators.acknowledge(counter);
        self.save()?;
        Ok(forgotten)
    }

    /// Counts a rejected in-vehicle frame (see [`Secondary::record_repeatable`]).
    pub fn record_rejected_frame(&mut self, err: &FrameError) -> bool {
        self.state.rejected_frames += 1;
        let n = self.state.rejected_frames;
        self.record_repeatable(
            err.rule(),
            &format!("{err} ({n} rejected in-vehicle frame(s) so far)"),
        )
    }

    /// Boot counting; reports a rollback as an attack indicator (a failed update).
    pub fn boot(&mut self) -> Result<BootOutcome> {
        let outcome = self.slots.boot()?;
        if let BootOutcome::Committed(slot) = &outcome {
            let image = self.running().filename;
            self.tell(&format!("{image} booted from slot {slot:?} and committed"));
        }
        // The rollback note moves from the boot-control file into the indicators: saved in
        // the ECU state first, then cleared from the boot-control file, so a power cut in
        // between repeats it rather than loses it. Checked at every boot, not only after a
        // rollback, to pick up a note such a cut left behind.
        if let Some(failure) = self.slots.state().last_failure.clone() {
            let message = failure
                .strip_prefix("boot-failed: ")
                .unwrap_or(&failure)
                .to_owned();
            tracing::warn!(ecu = %self.config.ecu_id, rule = "boot-failed", %message, "attack indicator");
            self.tell(&format!("rolled back [boot-failed]: {message}"));
            self.state.indicators.record("boot-failed", &message);
            match self.save() {
                Ok(()) => {
                    self.slots.take_failure()?;
                }
                Err(e) => {
                    tracing::error!(ecu = %self.config.ecu_id, error = %e, "cannot save indicators; the rollback note stays in the boot-control file")
                }
            }
        }
        Ok(outcome)
    }

    /// Signs a version report with the primary's nonce; attack indicators are included once.
    pub fn report(&mut self, nonce: &str, now: DateTime<Utc>) -> Result<Vec<u8>> {
        self.state.report_counter += 1;
        let attacks = self.state.indicators.report(self.state.report_counter);
        // Persist the counter (and which report first carried each indicator) before the
        // report leaves: a crash must never reuse it.
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

/// Runs an ECU: opens it and serves the primary until interrupted.
pub async fn run(config: EcuConfig) -> Result<()> {
    run_with(config, Arc::new(LogReporter)).await
}

/// [`run`], the ECU's lines for people going to `reporter` (`rampart ecu` prints them).
pub async fn run_with(config: EcuConfig, reporter: Arc<dyn Reporter>) -> Result<()> {
    let listen = config.listen.clone();
    let ecu = Secondary::open_with(config, reporter)?;
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
    ecu.tell(&format!(
        "up, running {}; listening for the primary on {addr}",
        ecu.running().filename
    ));
    let limits = ecu.config().limits.clone();
    serve(Arc::new(Mutex::new(ecu)), listener, limits).await;
    Ok(())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use rampart_core::hash::compute_hashes;
    use rampart_core::key::KeyScheme;
    use rampart_core::metadata::TargetFile;
    use rampart_core::testing::TestRepo;
    use rampart_core::uptane::{DirectorCustom, EcuAssignment, DIRECTOR_VEHICLE_FIELD};

    use crate::testing::{ECU, VIN};

    /// A partial-verification ECU in `dir` trusting `director_root`.
    fn ecu(dir: &Path, director_root: &[u8]) -> EcuConfig {
        crate::testing::ecu_config(dir, director_root, LinkLimits::default())
    }

    /// The director assigns `target` (release counter `counter`) to `ecu` and publishes
    /// a new targets version; returns the bundle holding it.
    fn assign(repo: &mut TestRepo, target: &str, ecu: &str, counter: u64) -> MetadataBundle {
        let file = TargetFile {
            length: 5,
            hashes: compute_hashes(b"image"),
            custom: Some(
                DirectorCustom {
                    release_counter: counter,
                    maintenance_window: None,
                    ecus: BTreeMap::from([(
                        ecu.to_owned(),
                        EcuAssignment {
                            hardware_id: "ivi-x".into(),
                            encryption: None,
                            delta: None,
                        },
                    )]),
                }
                .to_value(),
            ),
            unrecognized: BTreeMap::new(),
        };
        let targets = repo.targets.get_mut("targets").unwrap();
        targets.targets = BTreeMap::from([(target.to_owned(), file)]).into();
        targets.unrecognized.insert(
            DIRECTOR_VEHICLE_FIELD.into(),
            serde_json::json!({ "vin": VIN }),
        );
        repo.bump("targets");
        repo.publish();
        let name = format!("{}.targets.json", repo.targets["targets"].version);
        let text = String::from_utf8(repo.metadata[&name].clone()).unwrap();
        MetadataBundle {
            director: BTreeMap::from([(name, text)]),
            image: BTreeMap::new(),
        }
    }

    #[test]
    fn report_counters_grow_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let repo = TestRepo::new(Utc::now());
        let config = ecu(dir.path(), &repo.initial_root());
        let counter = |doc: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(doc).unwrap()["signed"]["report_counter"]
                .as_u64()
                .unwrap()
        };
        let mut e = Secondary::open(config.clone()).unwrap();
        let first = counter(&e.report("n1", Utc::now()).unwrap());
        let second = counter(&e.report("n2", Utc::now()).unwrap());
        assert_eq!(second, first + 1);
        drop(e);
        // A power cut after the report left: the counter was persisted before, never reused.
        let mut e = Secondary::open(config).unwrap();
        assert_eq!(counter(&e.report("n3", Utc::now()).unwrap()), second + 1);
    }

    #[test]
    fn partial_verification_takes_only_this_ecus_fresh_signed_instruction() {
        let dir = tempfile::tempdir().unwrap();
        let mut repo = TestRepo::new(Utc::now());
        let mut e = Secondary::open(ecu(dir.path(), &repo.initial_root())).unwrap();
        // Its own instruction verifies.
        let bundle = assign(&mut repo, "ivi/app-2.bin", ECU, 2);
        let i = e.verify("ivi/app-2.bin", &bundle, Utc::now()).unwrap();
        assert_eq!((i.target.as_str(), i.release_counter), ("ivi/app-2.bin", 2));
        // The primary naming another target than the director's is refused.
        let err = e.verify("ivi/other.bin", &bundle, Utc::now()).unwrap_err();
        assert_eq!(err.rule(), "protocol");
        // An instruction for another ECU is not one for this ECU.
        let other = assign(&mut repo, "ivi/app-3.bin", "IVI-2", 3);
        let err = e.verify("ivi/app-3.bin", &other, Utc::now()).unwrap_err();
        assert_eq!(err.rule(), "no-target-for-ecu");
        // Targets signed by someone else's key are refused.
        let newer = assign(&mut repo, "ivi/app-4.bin", ECU, 4);
        let intruder = InMemorySigner::generate(KeyScheme::Ed25519).unwrap();
        repo.signers.insert("targets".into(), vec![intruder]);
        let forged = assign(&mut repo, "ivi/evil.bin", ECU, 9);
        let err = e.verify("ivi/evil.bin", &forged, Utc::now()).unwrap_err();
        assert_eq!(err.rule(), "threshold");
        // Once a newer version is trusted, the older one is a rollback.
        e.verify("ivi/app-4.bin", &newer, Utc::now()).unwrap();
        let err = e.verify("ivi/app-2.bin", &bundle, Utc::now()).unwrap_err();
        assert_eq!(err.rule(), "rollback");
    }
}

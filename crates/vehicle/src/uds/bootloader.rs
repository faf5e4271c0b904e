//! The UDS server of a legacy ECU's bootloader: sessions, security access, the download
//! sequence into the inactive flash bank, the verify routine that alone may switch banks,
//! and reset.
//!
//! It takes one UDS request at a time with the time it arrived and gives the response; the
//! transport (DoIP, [`super::entity`]) moves the bytes. Flash banks are the A/B slots of
//! [`crate::slots`]: the active bank is never written, the erase routine opens the other one
//! (the boot-control file stops describing it before its first byte changes), and the bank
//! only becomes the one the next reset boots after `checkProgrammingDependencies` verified
//! the director's signed targets metadata for this ECU (Uptane partial verification, from
//! the ECU's own director root and the last targets version it accepted) and read the bank
//! back against the signed length and hashes. A failed or interrupted flash leaves the
//! running bank as it was.
//!
//! What it refuses is counted as an attack indicator (by rule) in its state file, which the
//! gateway reads back (DID 0xF1A2) for the director.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use rampart_core::rule::Rule;
use rampart_core::uptane::{InstalledImage, PartialVerifier};
use serde::{Deserialize, Serialize};

use super::service::{did, negative, routine, sid, Nrc, Session, SECURITY_LEVEL, SEED_LEN};
use crate::error::{Error, Result};
use crate::indicators::Indicators;
use crate::slots::{SlotConfig, SlotWriter, Slots};

/// What the bootloader is, apart from its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootloaderConfig {
    /// The Uptane ECU identifier, also its serial number (DID 0xF18C).
    pub ecu_id: String,
    /// Hardware identifier the director's instruction must name.
    pub hardware_id: String,
    /// The vehicle (DID 0xF190; the director's targets must name it).
    pub vin: String,
    /// Boot software identification (DID 0xF180).
    pub boot_software_id: String,
    /// Director root the ECU was provisioned with (its verify routine's trust anchor).
    pub director_root: PathBuf,
    /// Where its state (targets version, failed security attempts, indicators) lives.
    pub state_dir: PathBuf,
    /// The two flash banks and their boot-control file.
    pub banks: SlotConfig,
    /// Name of the image in bank A at first start.
    pub factory_image: String,
    /// Largest image a download may announce.
    pub bank_size: u64,
    /// maxNumberOfBlockLength: the longest TransferData request, SID and counter included.
    pub max_block_length: u16,
    /// S3: a non-default session without requests for this long falls back to default.
    pub s3: Duration,
    /// Wrong keys allowed before the delay.
    pub max_attempts: u8,
    /// The delay after the attempts are spent (also at power-up while they are).
    pub security_delay: Duration,
    /// P2 server (ms), announced in the session response.
    pub p2_ms: u16,
    /// P2* server (ms), announced in the session response.
    pub p2_star_ms: u32,
}

/// What survives a reset or a power cut.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State {
    /// The last director targets version the verify routine accepted.
    #[serde(default)]
    targets_version: Option<u64>,
    /// Consecutive wrong keys: kept, so that a reset does not buy an attacker new attempts.
    #[serde(default)]
    failed_attempts: u8,
    #[serde(default)]
    indicators: Indicators,
    /// Counter of the last read of the security log (DID 0xF1A2).
    #[serde(default)]
    log_reads: u64,
}

/// An answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The response (`None`: a positive response the tester asked to suppress).
    pub response: Option<Vec<u8>>,
    /// After sending it, the ECU resets (ECUReset).
    pub reset: bool,
}

impl Answer {
    fn send(bytes: Vec<u8>) -> Answer {
        Answer {
            response: Some(bytes),
            reset: false,
        }
    }
}

struct Download {
    size: u64,
    received: u64,
    /// The counter the next block must carry.
    next: u8,
    /// The counter of the last block written (a repeat of it is acknowledged again).
    last: Option<u8>,
}

/// Where the download sequence stands.
enum Flash {
    Idle,
    /// The inactive bank is erased and open.
    Erased(SlotWriter),
    /// RequestDownload accepted.
    Downloading(SlotWriter, Download),
    /// RequestTransferExit accepted: the whole image is in the bank.
    Complete(SlotWriter, u64),
}

/// A refusal: the negative response and, when it is one, the attack indicator it records.
struct Refusal {
    nrc: Nrc,
    indicator: Option<(Rule, String)>,
}

impl From<Nrc> for Refusal {
    fn from(nrc: Nrc) -> Refusal {
        Refusal {
            nrc,
            indicator: None,
        }
    }
}

fn refuse(nrc: Nrc, rule: Rule, message: impl Into<String>) -> Refusal {
    Refusal {
        nrc,
        indicator: Some((rule, message.into())),
    }
}

type Handled = std::result::Result<Answer, Refusal>;

/// The bootloader.
pub struct Bootloader {
    config: BootloaderConfig,
    secret: Vec<u8>,
    director_root: Vec<u8>,
    banks: Slots,
    /// The image booted at the last start or reset (a bank the verify routine switched to
    /// runs only from the next reset).
    booted: InstalledImage,
    state: State,
    session: Session,
    last_request: Option<Instant>,
    unlocked: bool,
    seed: Option<[u8; SEED_LEN]>,
    delay_until: Option<Instant>,
    flash: Flash,
    /// Results of the last run of each routine (requestRoutineResults).
    erase_result: Option<Vec<u8>>,
    verify_result: Option<Vec<u8>>,
    /// When the state was last written, and whether indicators wait to be (a flood of bad
    /// messages must not become a write per message).
    last_save: Option<Instant>,
    dirty: bool,
}

/// Indicators recorded within this time of the last save wait for the next request.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Bootloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootloader")
            .field("ecu_id", &self.config.ecu_id)
            .field("session", &self.session)
            .field("unlocked", &self.unlocked)
            .finish_non_exhaustive()
    }
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("uds-state.json")
}

impl Bootloader {
    /// Opens the banks (bank A holds the factory image at first start) and the state, and
    /// boots: a bank switched by the last verify routine becomes the running one. While the
    /// wrong-key attempts are spent, the security delay starts now, as after a power-up.
    pub fn open(config: BootloaderConfig, secret: Vec<u8>, now: Instant) -> Result<Bootloader> {
        std::fs::create_dir_all(&config.state_dir).map_err(|e| Error::io(&config.state_dir, e))?;
        let director_root = std::fs::read(&config.director_root)
            .map_err(|e| Error::io(&config.director_root, e))?;
        // The root must parse now, not at the first flash.
        PartialVerifier::new(&director_root, None, Utc::now())?;
        let factory_bytes = std::fs::read(&config.banks.slot_a).unwrap_or_default();
        let factory = InstalledImage {
            filename: config.factory_image.clone(),
            length: factory_bytes.len() as u64,
            hashes: rampart_core::hash::compute_hashes(&factory_bytes),
            release_counter: 0,
        };
        let mut banks = Slots::open(config.banks.clone(), factory.clone())?;
        banks.boot()?;
        let booted = banks.running().cloned().unwrap_or(factory);
        let state = match std::fs::read(state_path(&config.state_dir)) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Config(format!("UDS ECU state: {e}")))?,
            Err(_) => State::default(),
        };
        let delay_until =
            (state.failed_attempts >= config.max_attempts).then(|| now + config.security_delay);
        Ok(Bootloader {
            config,
            secret,
            director_root,
            banks,
            booted,
            state,
            session: Session::Default,
            last_request: None,
            unlocked: false,
            seed: None,
            delay_until,
            flash: Flash::Idle,
            erase_result: None,
            verify_result: None,
            last_save: None,
            dirty: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BootloaderConfig {
        &self.config
    }

    /// The image running: booted at the last start or reset.
    pub fn running(&self) -> InstalledImage {
        self.booted.clone()
    }

    /// The active session.
    pub fn session(&self) -> Session {
        self.session
    }

    /// The indicators counted so far.
    pub fn indicators(&self) -> &Indicators {
        &self.state.indicators
    }

    /// Records an attack indicator seen by the transport (a bad DoIP message, an unknown
    /// tester) and saves it.
    pub fn record(&mut self, rule: Rule, message: &str) {
        tracing::warn!(ecu = %self.config.ecu_id, %rule, "{message}");
        self.state.indicators.record(rule.as_str(), message);
        let now = Instant::now();
        if self
            .last_save
            .is_some_and(|t| now.saturating_duration_since(t) < SAVE_INTERVAL)
        {
            self.dirty = true;
        } else {
            self.last_save = Some(now);
            self.save_quietly();
        }
    }

    /// Whether `request` starts a long operation (erase, verify): the transport then answers
    /// "response pending" (NRC 0x78) first, as a real bootloader does within P2.
    pub fn is_slow(request: &[u8]) -> bool {
        matches!(request, [sid::ROUTINE_CONTROL, 0x01, 0xFF, 0x00 | 0x01, ..])
    }

    /// The tester went away (its DoIP socket closed): back to the default session, locked.
    pub fn tester_left(&mut self) {
        self.back_to_default();
    }

    fn back_to_default(&mut self) {
        self.session = Session::Default;
        self.unlocked = false;
        self.seed = None;
        // An open bank is abandoned: the boot-control file has described it as empty since
        // its erase, so nothing boots it.
        self.flash = Flash::Idle;
    }

    /// Handles one request that arrived at `now`.
    pub fn handle(&mut self, request: &[u8], now: Instant) -> Answer {
        if self.session != Session::Default
            && self
                .last_request
                .is_some_and(|t| now.saturating_duration_since(t) > self.config.s3)
        {
            tracing::info!(ecu = %self.config.ecu_id, "S3 timeout: back to the default session");
            self.back_to_default();
        }
        self.last_request = Some(now);
        if std::mem::take(&mut self.dirty) {
            self.save_quietly();
        }
        let Some(&service) = request.first() else {
            return Answer {
                response: None,
                reset: false,
            };
        };
        let result = match service {
            sid::SESSION_CONTROL => self.session_control(request),
            sid::TESTER_PRESENT => tester_present(request),
            sid::READ_DATA => self.read_data(request),
            sid::SECURITY_ACCESS => self.security_access(request, now),
            sid::ROUTINE_CONTROL => self.routine_control(request),
            sid::REQUEST_DOWNLOAD => self.request_download(request),
            sid::TRANSFER_DATA => self.transfer_data(request),
            sid::TRANSFER_EXIT => self.transfer_exit(request),
            sid::ECU_RESET => ecu_reset(request),
            _ => Err(Nrc::ServiceNotSupported.into()),
        };
        match result {
            Ok(answer) => {
                if answer.reset {
                    self.reset();
                }
                answer
            }
            Err(refusal) => {
                if let Some((rule, message)) = refusal.indicator {
                    self.record(
                        rule,
                        &format!(
                            "{message} (service 0x{service:02X}, NRC 0x{:02X} {})",
                            refusal.nrc as u8,
                            refusal.nrc.name()
                        ),
                    );
                }
                Answer::send(negative(service, refusal.nrc))
            }
        }
    }

    /// ECUReset: the bootloader starts again — default session, locked, boot counting (a
    /// bank the verify routine switched to becomes the running one).
    fn reset(&mut self) {
        self.back_to_default();
        self.last_request = None;
        let booted = self.banks.boot();
        if let Some(image) = self.banks.running() {
            self.booted = image.clone();
        }
        match booted {
            Ok(outcome) => {
                tracing::info!(ecu = %self.config.ecu_id, ?outcome, running = %self.running().filename, "reset")
            }
            Err(e) => tracing::error!(ecu = %self.config.ecu_id, "boot after reset: {e}"),
        }
    }

    fn need_programming(&self, service: u8) -> std::result::Result<(), Refusal> {
        if self.session != Session::Programming {
            return Err(Nrc::ServiceNotSupportedInActiveSession.into());
        }
        if !self.unlocked {
            return Err(refuse(
                Nrc::SecurityAccessDenied,
                Rule::SecurityAccessDenied,
                format!("service 0x{service:02X} without security access"),
            ));
        }
        Ok(())
    }

    fn session_control(&mut self, req: &[u8]) -> Handled {
        let [_, sub] = *req else {
            return Err(Nrc::IncorrectMessageLength.into());
        };
        let session = match sub & 0x7F {
            0x01 => Session::Default,
            0x02 => Session::Programming,
            0x03 => Session::Extended,
            _ => return Err(Nrc::SubFunctionNotSupported.into()),
        };
        // Every session change locks security again and abandons a download.
        self.back_to_default();
        self.session = session;
        let [p2a, p2b] = self.config.p2_ms.to_be_bytes();
        let p2_star = u16::try_from(self.config.p2_star_ms / 10).unwrap_or(u16::MAX);
        let [sa, sb] = p2_star.to_be_bytes();
        Ok(Answer {
            response: (sub & 0x80 == 0).then(|| vec![0x50, sub & 0x7F, p2a, p2b, sa, sb]),
            reset: false,
        })
    }

    fn read_data(&mut self, req: &[u8]) -> Handled {
        let ids = req.get(1..).unwrap_or_default();
        if ids.is_empty() || ids.len() % 2 != 0 {
            return Err(Nrc::IncorrectMessageLength.into());
        }
        let mut out = vec![0x62];
        for pair in ids.chunks_exact(2) {
            let &[hi, lo] = pair else { continue };
            let id = u16::from_be_bytes([hi, lo]);
            let value = self.data(id).ok_or(Nrc::RequestOutOfRange)?;
            out.extend_from_slice(pair);
            out.extend_from_slice(&value);
        }
        Ok(Answer::send(out))
    }

    fn data(&mut self, id: u16) -> Option<Vec<u8>> {
        Some(match id {
            did::ACTIVE_SESSION => vec![self.session as u8],
            did::BOOT_SOFTWARE_ID => self.config.boot_software_id.as_bytes().to_vec(),
            did::APPLICATION_SOFTWARE => self.running().filename.into_bytes(),
            did::ECU_SERIAL => self.config.ecu_id.as_bytes().to_vec(),
            did::VIN => self.config.vin.as_bytes().to_vec(),
            did::HARDWARE_ID => self.config.hardware_id.as_bytes().to_vec(),
            did::RUNNING_IMAGE => super::service::encode_running_image(&self.running()),
            did::SECURITY_LOG => {
                // Each read is numbered; what it returned is forgotten only when the gateway
                // acknowledges that number (routine 0xFF02), after the director has it.
                self.state.log_reads += 1;
                let number = self.state.log_reads;
                let text = self.state.indicators.report(number);
                self.save_quietly();
                super::service::encode_security_log(number, &text)
            }
            _ => return None,
        })
    }

    fn security_access(&mut self, req: &[u8], now: Instant) -> Handled {
        if self.session == Session::Default {
            return Err(Nrc::ServiceNotSupportedInActiveSession.into());
        }
        let sub = *req.get(1).ok_or(Nrc::IncorrectMessageLength)?;
        match sub & 0x7F {
            s if s == SECURITY_LEVEL => {
                if req.len() != 2 {
                    return Err(Nrc::IncorrectMessageLength.into());
                }
                if let Some(until) = self.delay_until {
                    if now < until {
                        return Err(refuse(
                            Nrc::RequiredTimeDelayNotExpired,
                            Rule::SecurityDelay,
                            "seed requested during the delay after wrong keys",
                        ));
                    }
                    self.delay_until = None;
                }
                if self.unlocked {
                    // Already unlocked: a zero seed says so (ISO 14229-1).
                    let mut out = vec![0x67, SECURITY_LEVEL];
                    out.extend_from_slice(&[0; SEED_LEN]);
                    return Ok(Answer::send(out));
                }
                let mut seed = [0u8; SEED_LEN];
                aws_lc_rs::rand::fill(&mut seed)
                    .map_err(|_| Refusal::from(Nrc::ConditionsNotCorrect))?;
                self.seed = Some(seed);
                let mut out = vec![0x67, SECURITY_LEVEL];
                out.extend_from_slice(&seed);
                Ok(Answer::send(out))
            }
            s if s == SECURITY_LEVEL + 1 => {
                // A key is only ever checked against the seed just sent, once.
                let Some(seed) = self.seed.take() else {
                    return Err(refuse(
                        Nrc::RequestSequenceError,
                        Rule::DiagnosticRequest,
                        "key sent without a seed",
                    ));
                };
                let key = req.get(2..).unwrap_or_default();
                if key.len() != SEED_LEN {
                    return Err(Nrc::IncorrectMessageLength.into());
                }
                let expected = super::service::security_key(&self.secret, SECURITY_LEVEL, &seed);
                if aws_lc_rs::constant_time::verify_slices_are_equal(key, &expected).is_ok() {
                    self.unlocked = true;
                    if self.state.failed_attempts != 0 {
                        self.state.failed_attempts = 0;
                        self.save_quietly();
                    }
                    return Ok(Answer::send(vec![0x67, SECURITY_LEVEL + 1]));
                }
                self.state.failed_attempts = self.state.failed_attempts.saturating_add(1);
                self.save_quietly();
                if self.state.failed_attempts >= self.config.max_attempts {
                    self.delay_until = Some(now + self.config.security_delay);
                    Err(refuse(
                        Nrc::ExceededNumberOfAttempts,
                        Rule::InvalidSecurityKey,
                        format!(
                            "wrong security-access key, attempt {}: locked for {} s",
                            self.state.failed_attempts,
                            self.config.security_delay.as_secs()
                        ),
                    ))
                } else {
                    Err(refuse(
                        Nrc::InvalidKey,
                        Rule::InvalidSecurityKey,
                        format!(
                            "wrong security-access key, attempt {}",
                            self.state.failed_attempts
                        ),
                    ))
                }
            }
            _ => Err(Nrc::SubFunctionNotSupported.into()),
        }
    }

    fn routine_control(&mut self, req: &[u8]) -> Handled {
        let (sub, id, option) = match req {
            [_, sub, a, b, option @ ..] => (*sub & 0x7F, u16::from_be_bytes([*a, *b]), option),
            _ => return Err(Nrc::IncorrectMessageLength.into()),
        };
        if id == routine::CLEAR_SECURITY_LOG {
            return self.clear_log(sub, option);
        }
        if id != routine::ERASE_MEMORY && id != routine::CHECK_DEPENDENCIES {
            return Err(Nrc::RequestOutOfRange.into());
        }
        self.need_programming(sid::ROUTINE_CONTROL)?;
        let [a, b] = id.to_be_bytes();
        match sub {
            0x01 => {}
            0x03 => {
                let last = if id == routine::ERASE_MEMORY {
                    &self.erase_result
                } else {
                    &self.verify_result
                };
                let Some(status) = last else {
                    return Err(Nrc::RequestSequenceError.into());
                };
                let mut out = vec![0x71, 0x03, a, b];
                out.extend_from_slice(status);
                return Ok(Answer::send(out));
            }
            _ => return Err(Nrc::SubFunctionNotSupported.into()),
        }
        let status = if id == routine::ERASE_MEMORY {
            self.erase()?
        } else {
            self.verify(option)?
        };
        let mut out = vec![0x71, 0x01, a, b];
        out.extend_from_slice(&status);
        if id == routine::ERASE_MEMORY {
            self.erase_result = Some(status);
        } else {
            self.verify_result = Some(status);
        }
        Ok(Answer::send(out))
    }

    /// clearSecurityLog: forgets what the security-log read numbered in the option record
    /// returned. Needs security access (extended or programming session): only the gateway,
    /// which reports the log to the director, may make the ECU forget it.
    fn clear_log(&mut self, sub: u8, option: &[u8]) -> Handled {
        if self.session == Session::Default {
            return Err(Nrc::ServiceNotSupportedInActiveSession.into());
        }
        if !self.unlocked {
            return Err(refuse(
                Nrc::SecurityAccessDenied,
                Rule::SecurityAccessDenied,
                "clearing the security log without security access",
            ));
        }
        if sub != 0x01 {
            return Err(Nrc::SubFunctionNotSupported.into());
        }
        let number: [u8; 8] = option
            .try_into()
            .map_err(|_| Refusal::from(Nrc::IncorrectMessageLength))?;
        let number = u64::from_be_bytes(number);
        if number > self.state.log_reads {
            return Err(Nrc::RequestOutOfRange.into());
        }
        let forgotten = self.state.indicators.acknowledge(number);
        self.save_quietly();
        let [a, b] = routine::CLEAR_SECURITY_LOG.to_be_bytes();
        Ok(Answer::send(vec![
            0x71,
            0x01,
            a,
            b,
            routine::STATUS_OK,
            u8::try_from(forgotten).unwrap_or(u8::MAX),
        ]))
    }

    fn erase(&mut self) -> std::result::Result<Vec<u8>, Refusal> {
        self.flash = Flash::Idle;
        match self.banks.begin_write() {
            Ok(writer) => {
                self.flash = Flash::Erased(writer);
                Ok(vec![routine::STATUS_OK])
            }
            Err(e) => {
                // A bank still on trial (reset first) or a storage failure.
                tracing::warn!(ecu = %self.config.ecu_id, "erase refused: {e}");
                Err(Nrc::ConditionsNotCorrect.into())
            }
        }
    }

    /// checkProgrammingDependencies: the director's targets for this ECU, then the bank.
    fn verify(&mut self, metadata: &[u8]) -> std::result::Result<Vec<u8>, Refusal> {
        if metadata.is_empty() {
            return Err(Nrc::IncorrectMessageLength.into());
        }
        let Flash::Complete(writer, written) = std::mem::replace(&mut self.flash, Flash::Idle)
        else {
            return Err(refuse(
                Nrc::RequestSequenceError,
                Rule::DiagnosticRequest,
                "verify routine before a complete download",
            ));
        };
        match self.check_and_switch(metadata, writer, written) {
            Ok(image) => {
                tracing::info!(ecu = %self.config.ecu_id, image = %image.filename, "verified; the next reset boots it");
                Ok(vec![routine::STATUS_OK])
            }
            Err(e) => {
                let rule = e.rule();
                let message = format!("verify routine refused the downloaded image: {e}");
                self.record(rule, &message);
                let mut status = vec![routine::STATUS_FAILED];
                status.extend_from_slice(rule.as_str().as_bytes());
                Ok(status)
            }
        }
    }

    fn check_and_switch(
        &mut self,
        metadata: &[u8],
        writer: SlotWriter,
        written: u64,
    ) -> Result<InstalledImage> {
        let mut verifier =
            PartialVerifier::new(&self.director_root, self.state.targets_version, Utc::now())?;
        let running = self.running();
        let outcome = verifier.verify(
            metadata,
            &self.config.vin,
            &self.config.ecu_id,
            &self.config.hardware_id,
            Some(&running),
        )?;
        let Some(instruction) = outcome.instruction else {
            return Err(Error::Verification(rampart_core::Error::TargetNotFound {
                target: format!("a new image for ECU {}", self.config.ecu_id),
                repository: format!("director (targets version {})", outcome.targets_version),
            }));
        };
        if instruction.file.length != written {
            return Err(Error::Verification(rampart_core::Error::LengthMismatch {
                what: instruction.target.clone(),
                expected: instruction.file.length,
                actual: written,
            }));
        }
        let image = InstalledImage {
            filename: instruction.target.clone(),
            length: instruction.file.length,
            hashes: instruction.file.hashes.clone(),
            release_counter: instruction.release_counter,
        };
        self.banks.commit_write(writer, image.clone())?;
        self.state.targets_version = Some(outcome.targets_version);
        self.save()?;
        Ok(image)
    }

    fn request_download(&mut self, req: &[u8]) -> Handled {
        self.need_programming(sid::REQUEST_DOWNLOAD)?;
        let (format, alfid, rest) = match req {
            [_, format, alfid, rest @ ..] => (*format, *alfid, rest),
            _ => return Err(Nrc::IncorrectMessageLength.into()),
        };
        let (size_len, addr_len) = (usize::from(alfid >> 4), usize::from(alfid & 0x0F));
        if !(1..=8).contains(&size_len) || !(1..=8).contains(&addr_len) {
            return Err(Nrc::RequestOutOfRange.into());
        }
        if rest.len() != size_len + addr_len {
            return Err(Nrc::IncorrectMessageLength.into());
        }
        let number = |bytes: &[u8]| bytes.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
        let (address, size) = rest.split_at(addr_len);
        let (address, size) = (number(address), number(size));
        if format != 0x00 {
            // No compression or encryption method is served.
            return Err(Nrc::RequestOutOfRange.into());
        }
        if address != 0 || size == 0 || size > self.config.bank_size {
            return Err(refuse(
                Nrc::RequestOutOfRange,
                Rule::DiagnosticRequest,
                format!(
                    "download of {size} bytes at 0x{address:X} (the bank takes up to {} at 0x0)",
                    self.config.bank_size
                ),
            ));
        }
        let writer = match std::mem::replace(&mut self.flash, Flash::Idle) {
            Flash::Erased(w) => w,
            other => {
                let downloading = matches!(other, Flash::Downloading(..));
                self.flash = other;
                return Err(if downloading {
                    Nrc::ConditionsNotCorrect.into()
                } else {
                    refuse(
                        Nrc::UploadDownloadNotAccepted,
                        Rule::DiagnosticRequest,
                        "download requested before the bank was erased",
                    )
                });
            }
        };
        self.flash = Flash::Downloading(
            writer,
            Download {
                size,
                received: 0,
                next: 1,
                last: None,
            },
        );
        let [a, b] = self.config.max_block_length.to_be_bytes();
        Ok(Answer::send(vec![0x74, 0x20, a, b]))
    }

    fn transfer_data(&mut self, req: &[u8]) -> Handled {
        let Flash::Downloading(writer, download) = &mut self.flash else {
            return Err(refuse(
                Nrc::RequestSequenceError,
                Rule::DiagnosticRequest,
                "TransferData without an accepted RequestDownload",
            ));
        };
        let (counter, data) = match req {
            [_, counter, data @ ..] => (*counter, data),
            _ => return Err(Nrc::IncorrectMessageLength.into()),
        };
        if req.len() > usize::from(self.config.max_block_length) {
            return Err(refuse(
                Nrc::IncorrectMessageLength,
                Rule::DiagnosticRequest,
                format!(
                    "block of {} bytes (maxNumberOfBlockLength {})",
                    req.len(),
                    self.config.max_block_length
                ),
            ));
        }
        if download.last == Some(counter) && counter != download.next {
            // A repeat of the last block (its response was lost): acknowledged, not written.
            return Ok(Answer::send(vec![0x76, counter]));
        }
        if counter != download.next {
            return Err(refuse(
                Nrc::WrongBlockSequenceCounter,
                Rule::BlockSequence,
                format!("block {counter} where {} was due", download.next),
            ));
        }
        let len = data.len() as u64;
        if download.received + len > download.size {
            return Err(refuse(
                Nrc::TransferDataSuspended,
                Rule::DiagnosticRequest,
                format!(
                    "{} bytes past the {} announced",
                    download.received + len - download.size,
                    download.size
                ),
            ));
        }
        if let Err(e) = writer.write(data) {
            tracing::error!(ecu = %self.config.ecu_id, "writing the bank: {e}");
            return Err(Nrc::GeneralProgrammingFailure.into());
        }
        download.received += len;
        download.last = Some(counter);
        download.next = counter.wrapping_add(1);
        Ok(Answer::send(vec![0x76, counter]))
    }

    fn transfer_exit(&mut self, req: &[u8]) -> Handled {
        if req.len() != 1 {
            return Err(Nrc::IncorrectMessageLength.into());
        }
        match std::mem::replace(&mut self.flash, Flash::Idle) {
            Flash::Downloading(writer, d) if d.received == d.size => {
                self.flash = Flash::Complete(writer, d.size);
                Ok(Answer::send(vec![0x77]))
            }
            other => {
                let message = match &other {
                    Flash::Downloading(_, d) => {
                        format!("transfer exit after {} of {} bytes", d.received, d.size)
                    }
                    _ => "transfer exit without a download".to_owned(),
                };
                self.flash = other;
                Err(refuse(
                    Nrc::RequestSequenceError,
                    Rule::DiagnosticRequest,
                    message,
                ))
            }
        }
    }

    fn save(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.state)
            .map_err(|e| Error::Config(format!("UDS ECU state: {e}")))?;
        rampart_client::store::write_atomic(&state_path(&self.config.state_dir), &bytes)?;
        Ok(())
    }

    fn save_quietly(&self) {
        if let Err(e) = self.save() {
            tracing::error!(ecu = %self.config.ecu_id, "saving the UDS state: {e}");
        }
    }
}

fn tester_present(req: &[u8]) -> Handled {
    match *req {
        [_, 0x00] => Ok(Answer::send(vec![0x7E, 0x00])),
        [_, 0x80] => Ok(Answer {
            response: None,
            reset: false,
        }),
        [_, _] => Err(Nrc::SubFunctionNotSupported.into()),
        _ => Err(Nrc::IncorrectMessageLength.into()),
    }
}

fn ecu_reset(req: &[u8]) -> Handled {
    let [_, sub] = *req else {
        return Err(Nrc::IncorrectMessageLength.into());
    };
    if !matches!(sub & 0x7F, 0x01..=0x03) {
        return Err(Nrc::SubFunctionNotSupported.into());
    }
    Ok(Answer {
        response: (sub & 0x80 == 0).then(|| vec![0x51, sub & 0x7F]),
        reset: true,
    })
}

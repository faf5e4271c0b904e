//! A/B slots and boot counting: an ECU always has a bootable image.
//!
//! Two slots (files by default; a block device path works the same) and a boot-control file
//! (`boot-control.json`, replaced atomically: temp file, fsync, rename, fsync directory).
//!
//! 1. Before the first byte of a new image goes into the *inactive* slot, the boot-control
//!    file stops describing that slot (whatever it held is about to be overwritten); the
//!    active one is never touched.
//! 2. The image is streamed into the inactive slot; what was written is read back and its
//!    length and every hash checked.
//! 3. Only then does the boot-control file describe the slot again and switch to it:
//!    `active` = the new slot, `pending` with 0 boot attempts, `last_good` still the old slot.
//! 4. At each boot, a pending slot's attempt count goes up (persisted first) and the health
//!    check runs; success makes it `last_good`; `max_boot_attempts` failures roll `active`
//!    back to `last_good` and record the failure for the next version report. A boot that
//!    never finishes (the image crashes or hangs the ECU in its health check, the power goes)
//!    counts as a failure too: once the attempts are used up, the next boot rolls back
//!    without trying the slot again.
//!
//! So the boot-control file never describes a partly written slot as an image: a power cut
//! at any point leaves the old file (old slot, untouched), the old file without the slot
//! being written, or the new one (new slot, fully verified, with the old one as fallback).
//! `tests/power_cut.rs` kills an ECU process at random points of installs to hold this.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use rampart_core::hash::{Hashes, StreamVerifier};
use rampart_core::uptane::InstalledImage;
use serde::{Deserialize, Serialize};

/// A or B.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// A slot being tried after an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The new slot.
    pub slot: Slot,
    /// Boots attempted so far.
    pub attempts: u32,
}

/// The boot-control file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootControl {
    /// Slot the bootloader starts.
    pub active: Slot,
    /// Slot known to boot.
    pub last_good: Slot,
    /// A new slot on trial, if any.
    #[serde(default)]
    pub pending: Option<Pending>,
    /// What slot A holds.
    #[serde(default)]
    pub a: Option<InstalledImage>,
    /// What slot B holds.
    #[serde(default)]
    pub b: Option<InstalledImage>,
    /// The last rollback, for the next version report (cleared when reported).
    #[serde(default)]
    pub last_failure: Option<String>,
}

impl BootControl {
    /// The image in `slot`.
    pub fn image(&self, slot: Slot) -> Option<&InstalledImage> {
        match slot {
            Slot::A => self.a.as_ref(),
            Slot::B => self.b.as_ref(),
        }
    }

    fn set_image(&mut self, slot: Slot, image: Option<InstalledImage>) {
        match slot {
            Slot::A => self.a = image,
            Slot::B => self.b = image,
        }
    }
}

/// Slot configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotConfig {
    /// Slot A path (file or block device).
    pub slot_a: PathBuf,
    /// Slot B path.
    pub slot_b: PathBuf,
    /// Boot-control file.
    pub boot_control: PathBuf,
    /// Failed boots of a new slot before rolling back.
    #[serde(default = "default_attempts")]
    pub max_boot_attempts: u32,
    /// Shell command run at boot to check health; `RAMPART_SLOT` holds the slot path and
    /// `RAMPART_TARGET` the image name. Absent: always healthy.
    #[serde(default)]
    pub health_check: Option<String>,
}

fn default_attempts() -> u32 {
    3
}

/// Slot errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlotError {
    /// File-system failure.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// What was written does not read back as the verified image.
    #[error(transparent)]
    Verify(#[from] rampart_core::Error),
    /// The boot-control file is corrupted.
    #[error("boot control {0}: {1}")]
    BootControl(String, String),
}

fn io(path: &Path, source: std::io::Error) -> SlotError {
    SlotError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What a boot did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootOutcome {
    /// Nothing on trial; booted the last good slot.
    Normal,
    /// The new slot passed its health check and is now the good one.
    Committed(Slot),
    /// The new slot failed; it will be tried again.
    Retrying {
        /// The slot.
        slot: Slot,
        /// Attempts so far.
        attempts: u32,
    },
    /// The new slot failed too often; rolled back to the last good slot.
    RolledBack {
        /// The slot that failed.
        failed: Slot,
        /// The slot now active.
        to: Slot,
    },
}

/// An ECU's A/B slots.
#[derive(Debug)]
pub struct Slots {
    config: SlotConfig,
    state: BootControl,
}

/// Writes an image into the inactive slot.
pub struct SlotWriter {
    slot: Slot,
    path: PathBuf,
    /// Written with direct I/O (past the page cache, so the read-back before the slot switch
    /// reads the medium, and a large image never fills RAM with dirty pages), or with
    /// write-behind where the file system refuses it.
    file: rampart_client::SlotFile,
    written: u64,
}

impl SlotWriter {
    /// Appends bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<(), SlotError> {
        self.file.write_all(data).map_err(|e| io(&self.path, e))?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Bytes written.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The slot being written.
    pub fn slot(&self) -> Slot {
        self.slot
    }
}

impl Slots {
    /// Opens the slots; creates the boot-control file on first use with slot A holding
    /// `factory` (the image the ECU left the factory with).
    pub fn open(config: SlotConfig, factory: InstalledImage) -> Result<Self, SlotError> {
        let state = match fs::read(&config.boot_control) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                SlotError::BootControl(config.boot_control.display().to_string(), e.to_string())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let state = BootControl {
                    active: Slot::A,
                    last_good: Slot::A,
                    pending: None,
                    a: Some(factory),
                    b: None,
                    last_failure: None,
                };
                save(&config.boot_control, &state)?;
                state
            }
            Err(e) => return Err(io(&config.boot_control, e)),
        };
        Ok(Slots { config, state })
    }

    /// The boot-control state.
    pub fn state(&self) -> &BootControl {
        &self.state
    }

    /// The image the ECU runs now (the active slot's).
    pub fn running(&self) -> Option<&InstalledImage> {
        self.state.image(self.state.active)
    }

    /// Reads the running slot back against `length` and `hashes` (what a delta must start
    /// from), as a written slot is read back before it may boot.
    pub fn check_running(&self, length: u64, hashes: &Hashes) -> Result<(), SlotError> {
        verify_slot(self.running_path(), length, hashes)
    }

    /// The file (or device) of the slot the ECU runs from: what a delta is applied to.
    pub fn running_path(&self) -> &Path {
        self.path(self.state.active)
    }

    fn path(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.config.slot_a,
            Slot::B => &self.config.slot_b,
        }
    }

    /// Opens the slot that is neither active nor last good for writing. Refuses while a
    /// new slot is still on trial (the fallback must stay intact). Before the slot is
    /// opened, the boot-control file is rewritten without it: from the first byte written
    /// until [`Slots::commit_write`] verified the new image, it describes no image.
    pub fn begin_write(&mut self) -> Result<SlotWriter, SlotError> {
        if self.state.pending.is_some() {
            return Err(SlotError::BootControl(
                self.config.boot_control.display().to_string(),
                "a new slot is still on trial; reboot (boot counting) before the next update"
                    .into(),
            ));
        }
        let slot = self.state.last_good.other();
        if slot == self.state.active {
            return Err(SlotError::BootControl(
                self.config.boot_control.display().to_string(),
                format!("slot {slot:?} is active but neither last good nor on trial"),
            ));
        }
        if self.state.image(slot).is_some() {
            let mut next = self.state.clone();
            next.set_image(slot, None);
            save(&self.config.boot_control, &next)?;
            self.state = next;
        }
        let path = self.path(slot).to_path_buf();
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        let is_block = fs::metadata(&path)
            .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
            .unwrap_or(false);
        let file = rampart_client::SlotFile::create(&path, is_block).map_err(|e| io(&path, e))?;
        Ok(SlotWriter {
            slot,
            path,
            file,
            written: 0,
        })
    }

    /// Flushes the written slot, reads it back against `image`'s length and hashes, and only
    /// then switches the boot slot to it (pending, with the old slot as fallback).
    pub fn commit_write(
        &mut self,
        writer: SlotWriter,
        image: InstalledImage,
    ) -> Result<Slot, SlotError> {
        let SlotWriter {
            slot,
            path,
            file,
            written,
        } = writer;
        drop(file.sync_all().map_err(|e| io(&path, e))?);
        // A slot file created by begin_write must still exist after a power cut once the
        // boot-control file names it: make its directory entry durable too.
        if let Some(dir) = path.parent() {
            rampart_client::store::sync_dir(dir)
                .map_err(|e| SlotError::BootControl(dir.display().to_string(), e.to_string()))?;
        }
        if written != image.length {
            return Err(SlotError::Verify(rampart_core::Error::LengthMismatch {
                what: format!("slot {slot:?}"),
                expected: image.length,
                actual: written,
            }));
        }
        verify_slot(&path, image.length, &image.hashes)?;
        let mut next = self.state.clone();
        next.set_image(slot, Some(image));
        next.active = slot;
        next.pending = Some(Pending { slot, attempts: 0 });
        save(&self.config.boot_control, &next)?;
        self.state = next;
        Ok(slot)
    }

    /// Boot counting (run at every start of the ECU, or on a simulated reboot).
    pub fn boot(&mut self) -> Result<BootOutcome, SlotError> {
        let Some(pending) = self.state.pending.clone() else {
            return Ok(BootOutcome::Normal);
        };
        let mut next = self.state.clone();
        let max = self.config.max_boot_attempts.max(1);
        if pending.attempts >= max {
            // Every allowed boot of the new slot ended before its health check answered (a
            // crash, a hang the watchdog ended, a power cut): a further try could loop forever.
            let outcome = roll_back(
                &mut next,
                pending.slot,
                &format!("did not finish booting in {} attempt(s)", pending.attempts),
            );
            save(&self.config.boot_control, &next)?;
            self.state = next;
            return Ok(outcome);
        }
        let attempts = pending.attempts + 1;
        next.pending = Some(Pending {
            slot: pending.slot,
            attempts,
        });
        // Persist the attempt before trying, so a crash during the check still counts.
        save(&self.config.boot_control, &next)?;
        self.state = next.clone();
        let healthy = self.health_check(pending.slot);
        let outcome = if healthy {
            next.last_good = pending.slot;
            next.pending = None;
            BootOutcome::Committed(pending.slot)
        } else if attempts >= max {
            roll_back(
                &mut next,
                pending.slot,
                &format!("failed its health check {attempts} time(s)"),
            )
        } else {
            BootOutcome::Retrying {
                slot: pending.slot,
                attempts,
            }
        };
        save(&self.config.boot_control, &next)?;
        self.state = next;
        Ok(outcome)
    }

    /// Takes the last rollback message (for the next report).
    pub fn take_failure(&mut self) -> Result<Option<String>, SlotError> {
        let Some(f) = self.state.last_failure.clone() else {
            return Ok(None);
        };
        let mut next = self.state.clone();
        next.last_failure = None;
        save(&self.config.boot_control, &next)?;
        self.state = next;
        Ok(Some(f))
    }

    fn health_check(&self, slot: Slot) -> bool {
        let Some(cmd) = &self.config.health_check else {
            return true;
        };
        let target = self
            .state
            .image(slot)
            .map(|i| i.filename.clone())
            .unwrap_or_default();
        std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("RAMPART_SLOT", self.path(slot))
            .env("RAMPART_TARGET", target)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

/// Makes the last good slot active again after `failed` did not boot; notes why for the
/// next version report.
fn roll_back(next: &mut BootControl, failed: Slot, why: &str) -> BootOutcome {
    let failed_image = next
        .image(failed)
        .map(|i| i.filename.clone())
        .unwrap_or_default();
    next.active = next.last_good;
    next.pending = None;
    next.last_failure = Some(format!(
        "boot-failed: {failed_image} {why}; rolled back to slot {:?}",
        next.last_good
    ));
    BootOutcome::RolledBack {
        failed,
        to: next.last_good,
    }
}

fn verify_slot(path: &Path, length: u64, hashes: &Hashes) -> Result<(), SlotError> {
    let file = fs::File::open(path).map_err(|e| io(path, e))?;
    let mut reader = file.take(length);
    let mut v = StreamVerifier::new(
        &format!("slot {}", path.display()),
        Some(length),
        length,
        Some(hashes),
    )?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).map_err(|e| io(path, e))?;
        if n == 0 {
            break;
        }
        v.update(buf.get(..n).unwrap_or_default())?;
    }
    v.finish()?;
    Ok(())
}

fn save(path: &Path, state: &BootControl) -> Result<(), SlotError> {
    let bytes = serde_json::to_vec_pretty(state)
        .map_err(|e| SlotError::BootControl(path.display().to_string(), e.to_string()))?;
    rampart_client::store::write_atomic(path, &bytes)
        .map_err(|e| SlotError::BootControl(path.display().to_string(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_core::hash::compute_hashes;

    fn image(name: &str, data: &[u8], counter: u64) -> InstalledImage {
        InstalledImage {
            filename: name.into(),
            length: data.len() as u64,
            hashes: compute_hashes(data),
            release_counter: counter,
        }
    }

    fn config(dir: &Path, health: Option<&str>) -> SlotConfig {
        SlotConfig {
            slot_a: dir.join("slot-a"),
            slot_b: dir.join("slot-b"),
            boot_control: dir.join("boot-control.json"),
            max_boot_attempts: 2,
            health_check: health.map(str::to_owned),
        }
    }

    fn slots(dir: &Path, health: Option<&str>) -> Slots {
        let cfg = config(dir, health);
        fs::write(&cfg.slot_a, b"factory").unwrap();
        Slots::open(cfg, image("factory.bin", b"factory", 0)).unwrap()
    }

    fn on_disk(dir: &Path) -> BootControl {
        serde_json::from_slice(&fs::read(dir.join("boot-control.json")).unwrap()).unwrap()
    }

    fn install(s: &mut Slots, name: &str, data: &[u8]) -> Result<Slot, SlotError> {
        let mut w = s.begin_write()?;
        w.write(data)?;
        s.commit_write(w, image(name, data, 1))
    }

    #[test]
    fn update_goes_to_the_inactive_slot_and_commits_after_a_healthy_boot() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = slots(dir.path(), None);
        assert_eq!(install(&mut s, "v2.bin", b"version two").unwrap(), Slot::B);
        assert_eq!(
            fs::read(dir.path().join("slot-a")).unwrap(),
            b"factory",
            "active slot untouched"
        );
        assert_eq!(s.state().active, Slot::B);
        assert_eq!(s.state().last_good, Slot::A);
        assert_eq!(s.boot().unwrap(), BootOutcome::Committed(Slot::B));
        assert_eq!(s.state().last_good, Slot::B);
        assert_eq!(s.running().unwrap().filename, "v2.bin");
    }

    #[test]
    fn failed_health_checks_roll_back_after_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = slots(dir.path(), Some("! grep -q BROKEN \"$RAMPART_SLOT\""));
        install(&mut s, "bad.bin", b"BROKEN image").unwrap();
        assert_eq!(
            s.boot().unwrap(),
            BootOutcome::Retrying {
                slot: Slot::B,
                attempts: 1
            }
        );
        assert_eq!(
            s.boot().unwrap(),
            BootOutcome::RolledBack {
                failed: Slot::B,
                to: Slot::A
            }
        );
        assert_eq!(s.state().active, Slot::A);
        assert_eq!(s.running().unwrap().filename, "factory.bin");
        let failure = s.take_failure().unwrap().unwrap();
        assert!(failure.starts_with("boot-failed: bad.bin"), "{failure}");
        assert!(s.take_failure().unwrap().is_none());
    }

    #[test]
    fn an_image_that_does_not_read_back_is_not_switched_to() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = slots(dir.path(), None);
        let mut w = s.begin_write().unwrap();
        w.write(b"half").unwrap();
        let err = s
            .commit_write(w, image("v2.bin", b"version two", 1))
            .unwrap_err();
        assert!(matches!(err, SlotError::Verify(_)));
        assert_eq!(s.state().active, Slot::A);
        let mut w = s.begin_write().unwrap();
        w.write(b"version twX").unwrap();
        assert!(s
            .commit_write(w, image("v2.bin", b"version two", 1))
            .is_err());
        assert_eq!(s.state().active, Slot::A, "hash mismatch: no switch");
    }

    #[test]
    fn state_survives_a_restart_mid_trial() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = slots(dir.path(), Some("false"));
        install(&mut s, "v2.bin", b"two").unwrap();
        assert_eq!(
            s.boot().unwrap(),
            BootOutcome::Retrying {
                slot: Slot::B,
                attempts: 1
            }
        );
        drop(s);
        let mut s =
            Slots::open(config(dir.path(), Some("false")), image("ignored", b"", 0)).unwrap();
        assert_eq!(
            s.state().pending,
            Some(Pending {
                slot: Slot::B,
                attempts: 1
            })
        );
        assert!(matches!(s.boot().unwrap(), BootOutcome::RolledBack { .. }));
    }

    /// A power cut while an image streams into a slot must not leave the boot-control file
    /// describing that slot as the image it held before (a rollback would boot garbage).
    #[test]
    fn a_slot_being_written_is_not_described_until_it_verified() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = slots(dir.path(), None);
        install(&mut s, "v2.bin", b"version two").unwrap();
        assert_eq!(s.boot().unwrap(), BootOutcome::Committed(Slot::B));
        assert_eq!(on_disk(dir.path()).a.unwrap().filename, "factory.bin");

        let mut w = s.begin_write().unwrap();
        assert_eq!(w.slot(), Slot::A);
        assert_eq!(on_disk(dir.path()).a, None, "slot A is being overwritten");
        w.write(b"thr").unwrap();
        // The power goes here: the file describes only slot B, which holds what it says.
        drop(w);
        drop(s);
        let mut s = Slots::open(config(dir.path(), None), image("x", b"", 0)).unwrap();
        assert_eq!(s.state().a, None);
        assert_eq!((s.state().active, s.state().last_good), (Slot::B, Slot::B));
        assert_eq!(s.running().unwrap().filename, "v2.bin");
        // The retry describes the slot again once it verified.
        assert_eq!(install(&mut s, "v3.bin", b"three").unwrap(), Slot::A);
        assert_eq!(on_disk(dir.path()).a.unwrap().filename, "v3.bin");
    }

    /// A new image that crashes the ECU during its health check never returns a failure,
    /// only an attempt count persisted before each try: once `max_boot_attempts` were used,
    /// the next boot rolls back without trying it again (else the ECU boot-loops forever).
    #[test]
    fn a_slot_that_used_up_its_boot_attempts_is_rolled_back_without_another_try() {
        let dir = tempfile::tempdir().unwrap();
        let ran = dir.path().join("health-check-ran");
        let check = format!("touch {}", ran.display());
        let mut s = slots(dir.path(), Some(&check));
        install(&mut s, "crashes.bin", b"crashes at boot").unwrap();
        // Two boots that died in the health check left this behind.
        let mut crashed = on_disk(dir.path());
        crashed.pending = Some(Pending {
            slot: Slot::B,
            attempts: 2,
        });
        fs::write(
            dir.path().join("boot-control.json"),
            serde_json::to_vec(&crashed).unwrap(),
        )
        .unwrap();
        let mut s = Slots::open(config(dir.path(), Some(&check)), image("x", b"", 0)).unwrap();
        assert_eq!(
            s.boot().unwrap(),
            BootOutcome::RolledBack {
                failed: Slot::B,
                to: Slot::A
            }
        );
        assert!(!ran.exists(), "a third try of an image that crashed twice");
        assert_eq!(s.running().unwrap().filename, "factory.bin");
        assert_eq!(on_disk(dir.path()).active, Slot::A);
        let failure = s.take_failure().unwrap().unwrap();
        assert!(failure.contains("crashes.bin"), "{failure}");
    }

    /// A boot-control file whose active slot is neither the last good one nor on trial
    /// (written by hand, or by another tool) must not make the active slot the one written.
    #[test]
    fn the_active_slot_is_never_opened_for_writing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = slots(dir.path(), None);
        install(&mut s, "v2.bin", b"version two").unwrap();
        s.boot().unwrap();
        let mut odd = on_disk(dir.path());
        odd.last_good = Slot::A;
        fs::write(
            dir.path().join("boot-control.json"),
            serde_json::to_vec(&odd).unwrap(),
        )
        .unwrap();
        let mut s = Slots::open(config(dir.path(), None), image("x", b"", 0)).unwrap();
        assert!(s.begin_write().is_err());
        assert_eq!(fs::read(dir.path().join("slot-b")).unwrap(), b"version two");
    }

    #[test]
    fn no_second_update_while_a_slot_is_on_trial() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = slots(dir.path(), None);
        install(&mut s, "v2.bin", b"two").unwrap();
        assert!(s.begin_write().is_err());
        s.boot().unwrap();
        assert_eq!(install(&mut s, "v3.bin", b"three").unwrap(), Slot::A);
    }
}

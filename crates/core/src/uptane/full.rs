//! Uptane full verification (Uptane 5.4.4.2) as a sans-IO state machine over two TUF clients.
//!
//! Order, as the standard asks: the director first (root chain, timestamp, snapshot,
//! targets), its targets checked (no delegations, this vehicle, no ECU twice, ECUs and
//! hardware IDs of this vehicle); if nothing new is asked of any ECU, stop there; otherwise the
//! image repository (root chain … targets), then every director target looked up in the image
//! repository through its delegations (with the ECU's hardware ID) and compared — and a
//! delta the director offers in place of the full image looked up and compared as well.

use std::collections::BTreeMap;

use super::director::{
    check_against_image, check_delta_against_image, verify_director_targets, DirectorInstruction,
};
use super::{check_release_counter, InstalledImage};
use crate::client::{Action, Client, Fetched};
use crate::error::{Error, Result};

/// Which repository an action is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Repo {
    /// The director (per-vehicle instructions, online keys).
    Director,
    /// The image repository (the OEM's and suppliers' signed images, offline keys).
    Image,
}

impl Repo {
    /// Lowercase name (`director`, `image`).
    pub fn name(self) -> &'static str {
        match self {
            Repo::Director => "director",
            Repo::Image => "image",
        }
    }
}

/// What the caller must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UptaneAction {
    /// Perform `action` against `repo`'s local store or server.
    Repo {
        /// Repository.
        repo: Repo,
        /// What to do (never [`Action::Done`]).
        action: Action,
    },
    /// Verification finished; see [`FullVerifier::verdict`].
    Done,
}

/// Whose view the verification takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The primary: every ECU the director names must be one of these (ECU ID → hardware ID).
    Primary {
        /// The vehicle's ECUs.
        ecus: BTreeMap<String, String>,
    },
    /// A full-verification secondary: only its own instruction matters.
    Secondary {
        /// This ECU's ID.
        ecu_id: String,
        /// This ECU's hardware ID.
        hardware_id: String,
    },
}

/// An image that passed full verification for one ECU.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedUpdate {
    /// The director's instruction (plaintext length/hashes, encryption parameters).
    pub instruction: DirectorInstruction,
    /// The image repository role that signed the image.
    pub image_role: String,
}

/// The result of a full verification.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Verdict {
    /// Version of the director targets metadata that was verified.
    pub director_targets_version: u64,
    /// Images to install, each verified against both repositories.
    pub updates: Vec<VerifiedUpdate>,
    /// ECUs the director addressed that already run the instructed image.
    pub up_to_date: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    Director,
    Image,
    Lookup(usize),
    /// The delta offered with the instruction at this index (whose image, signed by this
    /// role, already checked out).
    DeltaLookup(usize, String),
    Finished,
}

/// Full verification of one update cycle.
#[derive(Debug)]
pub struct FullVerifier {
    director: Client,
    image: Client,
    vin: String,
    scope: Scope,
    installed: BTreeMap<String, InstalledImage>,
    phase: Phase,
    pending: Vec<DirectorInstruction>,
    verdict: Verdict,
}

impl FullVerifier {
    /// A verifier over the two repositories' clients (each built from its trusted root).
    /// `installed` is what each ECU currently runs (for "nothing new" and release counters).
    pub fn new(
        director: Client,
        image: Client,
        vin: &str,
        scope: Scope,
        installed: BTreeMap<String, InstalledImage>,
    ) -> Self {
        FullVerifier {
            director,
            image,
            vin: vin.to_owned(),
            scope,
            installed,
            phase: Phase::Idle,
            pending: Vec::new(),
            verdict: Verdict::default(),
        }
    }

    /// Starts the cycle with the director's refresh.
    pub fn start(&mut self) {
        self.director.start_refresh();
        self.phase = Phase::Director;
    }

    /// The director client (for its trusted metadata).
    pub fn director(&self) -> &Client {
        &self.director
    }

    /// The image repository client.
    pub fn image(&self) -> &Client {
        &self.image
    }

    /// What each ECU runs, as the verification was given it.
    pub fn installed(&self) -> &BTreeMap<String, InstalledImage> {
        &self.installed
    }

    /// The verdict, once [`UptaneAction::Done`] was returned.
    pub fn verdict(&self) -> Option<&Verdict> {
        (self.phase == Phase::Finished).then_some(&self.verdict)
    }

    /// The next thing to do.
    pub fn next_action(&mut self) -> Result<UptaneAction> {
        loop {
            match self.phase {
                Phase::Idle => return Err(Error::Workflow("call start() first".into())),
                Phase::Finished => return Ok(UptaneAction::Done),
                Phase::Director => match self.director.next_action()? {
                    Action::Done => self.after_director()?,
                    action => {
                        return Ok(UptaneAction::Repo {
                            repo: Repo::Director,
                            action,
                        })
                    }
                },
                Phase::Image => match self.image.next_action()? {
                    Action::Done => self.begin_lookup(0)?,
                    action => {
                        return Ok(UptaneAction::Repo {
                            repo: Repo::Image,
                            action,
                        })
                    }
                },
                Phase::Lookup(index) => match self.image.next_action()? {
                    Action::Done => {
                        let instruction =
                            self.pending.get(index).cloned().ok_or_else(|| {
                                Error::Workflow("lookup index out of range".into())
                            })?;
                        let found = self.image.found_target().cloned().ok_or_else(|| {
                            Error::TargetNotFound {
                                target: instruction.target.clone(),
                                repository: "image".into(),
                            }
                        })?;
                        check_against_image(&instruction, &found)?;
                        match &instruction.delta {
                            Some(offer) => {
                                self.image
                                    .start_lookup(&offer.path, Some(&instruction.hardware_id))?;
                                self.phase = Phase::DeltaLookup(index, found.role);
                            }
                            None => {
                                self.verdict.updates.push(VerifiedUpdate {
                                    instruction,
                                    image_role: found.role,
                                });
                                self.begin_lookup(index + 1)?;
                            }
                        }
                    }
                    action => {
                        return Ok(UptaneAction::Repo {
                            repo: Repo::Image,
                            action,
                        })
                    }
                },
                Phase::DeltaLookup(index, ref role) => match self.image.next_action()? {
                    Action::Done => {
                        let image_role = role.clone();
                        let instruction =
                            self.pending.get(index).cloned().ok_or_else(|| {
                                Error::Workflow("lookup index out of range".into())
                            })?;
                        let offer = instruction
                            .delta
                            .as_ref()
                            .ok_or_else(|| Error::Workflow("no delta to look up".into()))?;
                        let found = self.image.found_target().cloned().ok_or_else(|| {
                            Error::TargetNotFound {
                                target: offer.path.clone(),
                                repository: "image".into(),
                            }
                        })?;
                        check_delta_against_image(&instruction, offer, &found)?;
                        self.verdict.updates.push(VerifiedUpdate {
                            instruction,
                            image_role,
                        });
                        self.begin_lookup(index + 1)?;
                    }
                    action => {
                        return Ok(UptaneAction::Repo {
                            repo: Repo::Image,
                            action,
                        })
                    }
                },
            }
        }
    }

    /// Hands over a local read for `repo`.
    pub fn provide_local(&mut self, repo: Repo, bytes: Option<Vec<u8>>) -> Result<()> {
        self.client_mut(repo).provide_local(bytes)
    }

    /// Hands over a fetch result for `repo`.
    pub fn provide_fetched(&mut self, repo: Repo, path: &str, fetched: Fetched) -> Result<()> {
        self.client_mut(repo).provide_fetched(path, fetched)
    }

    fn client_mut(&mut self, repo: Repo) -> &mut Client {
        match repo {
            Repo::Director => &mut self.director,
            Repo::Image => &mut self.image,
        }
    }

    fn after_director(&mut self) -> Result<()> {
        let targets = self
            .director
            .trusted()
            .targets("targets")
            .ok_or_else(|| Error::Workflow("director targets not loaded".into()))?;
        self.verdict.director_targets_version = targets.signed.version;
        let vehicle_ecus = match &self.scope {
            Scope::Primary { ecus } => Some(ecus),
            Scope::Secondary { .. } => None,
        };
        let mut instructions = verify_director_targets(&targets.signed, &self.vin, vehicle_ecus)?;
        if let Scope::Secondary {
            ecu_id,
            hardware_id,
        } = &self.scope
        {
            instructions.retain(|i| &i.ecu_id == ecu_id);
            if let Some(i) = instructions.first() {
                if &i.hardware_id != hardware_id {
                    return Err(Error::HardwareIdMismatch {
                        target: i.target.clone(),
                        expected: hardware_id.clone(),
                        found: i.hardware_id.clone(),
                    });
                }
            }
        }
        for instruction in instructions {
            let installed = self.installed.get(&instruction.ecu_id);
            check_release_counter(
                &instruction.target,
                installed.map(|i| i.release_counter),
                instruction.release_counter,
            )?;
            let same = installed.is_some_and(|i| {
                i.filename == instruction.target
                    && i.length == instruction.file.length
                    && i.hashes == instruction.file.hashes
            });
            if same {
                self.verdict.up_to_date.push(instruction.ecu_id);
            } else {
                self.pending.push(instruction);
            }
        }
        if self.pending.is_empty() {
            // Uptane 5.4.4.2 step 9: nothing new, no need to touch the image repository.
            self.phase = Phase::Finished;
        } else {
            self.image.start_refresh();
            self.phase = Phase::Image;
        }
        Ok(())
    }

    fn begin_lookup(&mut self, index: usize) -> Result<()> {
        match self.pending.get(index) {
            None => self.phase = Phase::Finished,
            Some(instruction) => {
                let (target, hw) = (instruction.target.clone(), instruction.hardware_id.clone());
                self.image.start_lookup(&target, Some(&hw))?;
                self.phase = Phase::Lookup(index);
            }
        }
        Ok(())
    }
}

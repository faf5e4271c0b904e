//! Campaigns: a release rolled out to a fleet in waves, halting by itself when the cars
//! report failures.
//!
//! A campaign only decides *which vehicles the director signs instructions for, and when*:
//! starting a wave makes an assignment per ECU of its vehicles (the same assignments `rampart
//! admin assign` makes), a halt or a cancel takes back those not yet being installed, and the
//! director re-signs each vehicle's targets accordingly. Nothing of Uptane changes: the
//! vehicle verifies what it is told exactly as before.
//!
//! Progress comes from what the vehicles sign: an assignment completes when an ECU's signed
//! report shows the image, and fails with the rule the primary reports in its signed
//! manifest (`update_failures`; `boot-failed` is a rollback). After every check-in that
//! changed one of its assignments, the campaign is judged ([`plan::judge`]): past its wave's
//! failure threshold it halts there and then (so within one check-in of the breach); at its
//! success threshold, after the soak time, the next wave starts. The soak time also passes
//! with no check-in, so `rampart serve` judges running campaigns periodically as well
//! ([`tick`]).
//!
//! Modules: [`plan`] decides (waves, progress, verdicts; no I/O), `store` reads and writes
//! the campaign tables.

mod gate;
pub mod plan;
mod store;

pub(crate) use gate::Gate;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use rampart_core::rule::Rule;
use serde::{Deserialize, Serialize};

use crate::db::{Assignment, Db};
use crate::director::Director;
use crate::error::{Error, Result};
use rampart_core::uptane::window::MaintenanceWindow;

pub use plan::{Criteria, Progress, WaveCounts};
pub use store::LogEntry;
use store::{FleetVehicle, MemberRow, NewMember};

/// Which vehicles a campaign is for: the VINs listed, or every vehicle whose attributes,
/// tags and ECUs match (all of the given conditions). Only vehicles with an ECU of a
/// hardware ID the release has an image for are in; removed vehicles never are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TargetSet {
    /// These vehicles, in this order (the first are the canaries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vins: Vec<String>,
    /// Vehicles with these attribute values (`model` = `id4`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// Vehicles with all these tags.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub tags: BTreeSet<String>,
    /// Vehicles with an ECU of one of these hardware IDs.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub hardware_ids: BTreeSet<String>,
}

impl TargetSet {
    fn matches(&self, v: &FleetVehicle) -> bool {
        (self.vins.is_empty() || self.vins.contains(&v.vin))
            && self
                .attributes
                .iter()
                .all(|(k, want)| v.attributes.get(k) == Some(want))
            && self.tags.iter().all(|t| v.tags.contains(t))
            && (self.hardware_ids.is_empty()
                || v.ecus
                    .iter()
                    .any(|e| self.hardware_ids.contains(&e.hardware_id)))
    }
}

/// A campaign as an operator asks for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CampaignSpec {
    /// Unique name (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// The release: target paths of the image repository, at most one per hardware ID.
    pub images: Vec<String>,
    /// Which vehicles.
    #[serde(default)]
    pub target: TargetSet,
    /// Cumulative wave sizes, canary first: `1%,10%,50%,100%` or `5,50,all`.
    #[serde(default = "default_waves")]
    pub waves: String,
    /// When a wave is done, and when the campaign halts.
    #[serde(default)]
    pub criteria: Criteria,
    /// A critical security fix (may override maintenance windows).
    #[serde(default)]
    pub critical: bool,
    /// The RXSWIN the vehicles have once it is installed (UNECE R156), if it changes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rxswin: Option<String>,
    /// The maintenance window of vehicles that have none of their own (their
    /// `maintenance_window` attribute): `Mon-Fri 01:00-05:00 Europe/Berlin`. A vehicle is
    /// instructed only inside its window, and the window is signed into the instruction so
    /// the primary refuses to install outside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Ignore maintenance windows (only for a `critical` security fix).
    #[serde(default)]
    pub override_windows: bool,
    /// No new instruction after this time (RFC 3339); the campaign then completes, and
    /// instructions not yet being installed are taken back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// Start it at once (else it stays a draft until `start`).
    #[serde(default)]
    pub start: bool,
}

fn default_waves() -> String {
    "1%,10%,50%,100%".into()
}

/// One image of a campaign's release, as the image repository signed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReleaseImage {
    /// Target path.
    pub target: String,
    /// Hardware ID it is for.
    pub hardware_id: String,
    /// Signed length.
    pub length: u64,
    /// Signed hashes.
    #[schema(value_type = Object)]
    pub hashes: serde_json::Value,
    /// Release counter.
    pub release_counter: u64,
    /// Published encrypted: sent encrypted to each ECU (its content key wrapped for the ECU).
    #[serde(default)]
    pub encrypted: bool,
}

/// A campaign's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Created, not started: no instruction yet.
    Draft,
    /// Instructing its waves.
    Running,
    /// Stopped by an operator: no new instruction, those given stand.
    Paused,
    /// Stopped by itself on a failure threshold: instructions not being installed taken back.
    Halted,
    /// Every wave done (or its deadline passed).
    Completed,
    /// Stopped for good by an operator; instructions not being installed taken back.
    Cancelled,
}

impl State {
    /// The name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Draft => "draft",
            State::Running => "running",
            State::Paused => "paused",
            State::Halted => "halted",
            State::Completed => "completed",
            State::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for State {
    type Err = Error;
    fn from_str(s: &str) -> Result<State> {
        [
            State::Draft,
            State::Running,
            State::Paused,
            State::Halted,
            State::Completed,
            State::Cancelled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| Error::Database(format!("stored campaign state {s:?} is not one")))
    }
}

/// A campaign as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Campaign {
    /// ID.
    pub id: i64,
    /// Name.
    pub name: String,
    /// State.
    pub state: State,
    /// Index of the latest started wave (from 0; -1: none yet).
    pub wave: i64,
    /// Vehicles per wave.
    pub wave_sizes: Vec<u64>,
    /// What was asked.
    pub spec: CampaignSpec,
    /// The release, as signed in the image repository.
    pub images: Vec<ReleaseImage>,
    /// When the latest wave started.
    pub wave_started_at: Option<String>,
    /// When the latest wave met its success criterion.
    pub wave_met_at: Option<String>,
    /// Why it is halted, paused, cancelled or completed.
    pub reason: Option<String>,
    /// Created.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
}

/// One ECU of a campaign and how far it got.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EcuProgress {
    /// ECU.
    pub ecu_id: String,
    /// Image.
    pub target: String,
    /// Progress.
    pub progress: Progress,
    /// The failure the vehicle reported (`rule: message`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One vehicle of a campaign.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VehicleProgress {
    /// VIN.
    pub vin: String,
    /// Its wave (from 1).
    pub wave: usize,
    /// The vehicle's progress (see [`plan::vehicle_progress`]).
    pub progress: Progress,
    /// Its ECUs'.
    pub ecus: Vec<EcuProgress>,
}

/// One wave's progress.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WaveStatus {
    /// From 1.
    pub wave: usize,
    /// Started.
    pub started: bool,
    /// Vehicles by progress.
    pub counts: WaveCounts,
}

/// A campaign with its waves, vehicles and log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CampaignStatus {
    /// The campaign.
    pub campaign: Campaign,
    /// Its waves.
    pub waves: Vec<WaveStatus>,
    /// Its vehicles.
    pub vehicles: Vec<VehicleProgress>,
    /// What happened, oldest first.
    pub log: Vec<LogEntry>,
}

/// Who acts on a campaign, for its log.
const OPERATOR: &str = "operator";
const DIRECTOR: &str = "director";

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(Error::BadRequest(format!(
            "campaign name {name:?}: give 1 to 64 letters, digits, '.', '_' or '-'"
        )));
    }
    Ok(())
}

fn parse_deadline(deadline: Option<&str>) -> Result<Option<DateTime<Utc>>> {
    deadline
        .map(|d| {
            DateTime::parse_from_rfc3339(d)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    Error::BadRequest(format!(
                        "deadline {d:?} is not an RFC 3339 time (2027-01-31T00:00:00Z): {e}"
                    ))
                })
        })
        .transpose()
}

fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Vehicles read per query when a campaign reads the fleet (a page of `FleetVehicle`s is
/// small: no keys). Before PostgreSQL has statistics of a freshly registered fleet, each page
/// of vehicles may be planned as a scan and sort of the table, so pages are large: 100 pages
/// of 1,000 took 1.3 s at 100,000 vehicles.
const FLEET_PAGE: u32 = 5000;

/// Refuses ECUs already in another running, paused or halted campaign.
async fn check_conflicts(db: &Db, id: i64, members: &[(String, String)]) -> Result<()> {
    let active = db.active_members(id).await?;
    if active.is_empty() {
        return Ok(());
    }
    let mine: HashSet<(&str, &str)> = members
        .iter()
        .map(|(v, e)| (v.as_str(), e.as_str()))
        .collect();
    let clashes: Vec<String> = active
        .iter()
        .filter(|(v, e, _)| mine.contains(&(v.as_str(), e.as_str())))
        .map(|(v, e, name)| format!("ECU {e} of {v} is in campaign {name}"))
        .collect();
    if let Some(first) = clashes.first() {
        return Err(Error::Conflict(format!(
            "{first}{}: an ECU is in one running campaign at a time (finish, cancel or wait \
             for that one)",
            if clashes.len() > 1 {
                format!(" (and {} more ECUs)", clashes.len() - 1)
            } else {
                String::new()
            }
        )));
    }
    Ok(())
}

/// Creates a campaign (a draft, or running with `spec.start`): resolves its target set
/// against the fleet, splits it into waves and refuses what cannot work — an empty target
/// set, an image for a hardware ID twice, ECUs already in another active campaign, an
/// encrypted image for ECUs without an encryption key, thresholds or waves out of range.
pub async fn create(
    director: &Director,
    spec: CampaignSpec,
    images: Vec<ReleaseImage>,
    now: DateTime<Utc>,
) -> Result<Campaign> {
    validate_name(&spec.name)?;
    spec.criteria.validate()?;
    if let Some(w) = &spec.window {
        w.parse::<MaintenanceWindow>()
            .map_err(|e| Error::BadRequest(format!("window: {e}")))?;
    }
    if let Some(r) = &spec.rxswin {
        if r.trim().is_empty() || r.chars().count() > 64 || r.chars().any(char::is_control) {
            return Err(Error::BadRequest(format!(
                "rxswin {r:?}: give 1 to 64 printable characters"
            )));
        }
    }
    if spec.override_windows && !spec.critical {
        return Err(Error::BadRequest(
            "only a critical security fix may override maintenance windows (give critical too)"
                .into(),
        ));
    }
    if let Some(deadline) = parse_deadline(spec.deadline.as_deref())? {
        if deadline <= now {
            return Err(Error::BadRequest(format!(
                "deadline {} has passed",
                spec.deadline.as_deref().unwrap_or_default()
            )));
        }
    }
    if images.is_empty() {
        return Err(Error::BadRequest(
            "a campaign needs at least one image".into(),
        ));
    }
    let mut by_hardware: BTreeMap<&str, &ReleaseImage> = BTreeMap::new();
    for image in &images {
        if let Some(other) = by_hardware.insert(&image.hardware_id, image) {
            return Err(Error::BadRequest(format!(
                "{} and {} are both for hardware ID {}: a release has one image per hardware ID",
                other.target, image.target, image.hardware_id
            )));
        }
    }
    let db = director.db();
    if db.campaign(&spec.name).await?.is_some() {
        return Err(Error::Conflict(format!(
            "a campaign named {} exists already",
            spec.name
        )));
    }
    // The fleet is read a page at a time and only what the campaign needs is kept (VINs and
    // the ECUs to update): a whole fleet of vehicles with their keys and attributes would be
    // hundreds of MiB at 100,000 vehicles.
    let named: HashSet<&str> = spec.target.vins.iter().map(String::as_str).collect();
    let mut known: HashSet<String> = HashSet::new();
    let (mut registered, mut matched, mut up_to_date) = (0usize, 0usize, 0usize);
    let mut per_vehicle: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut no_key: Option<Error> = None;
    let mut after = String::new();
    loop {
        let page = db.fleet_page(&after, FLEET_PAGE).await?;
        let done = page.len() < FLEET_PAGE as usize;
        registered += page.len();
        if let Some(last) = page.last() {
            after.clone_from(&last.vin);
        }
        for v in page {
            if named.contains(v.vin.as_str()) {
                known.insert(v.vin.clone());
            }
            if !spec.target.matches(&v) {
                continue;
            }
            // Members: every ECU of a matching vehicle that the release has an image for and
            // that does not run it (or something newer) already.
            let mut ecus = Vec::new();
            for ecu in &v.ecus {
                let Some(image) = by_hardware.get(ecu.hardware_id.as_str()) else {
                    continue;
                };
                matched += 1;
                if let Some((target, release_counter)) = &ecu.installed {
                    if *target == image.target || *release_counter > image.release_counter {
                        up_to_date += 1;
                        continue;
                    }
                }
                if image.encrypted && !ecu.has_encryption_key {
                    // Said after an unknown VIN, as before the fleet was read in pages.
                    no_key.get_or_insert_with(|| {
                        Error::BadRequest(format!(
                            "ECU {} of {} has no encryption key registered ({} is published encrypted)",
                            ecu.ecu_id, v.vin, image.target
                        ))
                    });
                    continue;
                }
                ecus.push((ecu.ecu_id.clone(), image.target.clone()));
            }
            if !ecus.is_empty() {
                per_vehicle.push((v.vin, ecus));
            }
        }
        if done {
            break;
        }
    }
    if let Some(unknown) = spec
        .target
        .vins
        .iter()
        .find(|v| !known.contains(v.as_str()))
    {
        return Err(Error::NotFound(format!(
            "vehicle {unknown} is not registered (or was removed)"
        )));
    }
    if let Some(refused) = no_key {
        return Err(refused);
    }
    if per_vehicle.is_empty() {
        return Err(Error::BadRequest(format!(
            "the target set is empty: {} vehicles registered, {matched} ECUs of the release's \
             hardware IDs ({}) among those matching, {up_to_date} of them already up to date",
            registered,
            by_hardware.keys().copied().collect::<Vec<_>>().join(", ")
        )));
    }
    if spec.target.vins.is_empty() {
        let mut vins: Vec<String> = per_vehicle.iter().map(|(v, _)| v.clone()).collect();
        plan::rollout_order(&spec.name, &mut vins);
        let rank: HashMap<&str, usize> = vins
            .iter()
            .enumerate()
            .map(|(i, v)| (v.as_str(), i))
            .collect();
        per_vehicle.sort_by_key(|(v, _)| rank.get(v.as_str()).copied().unwrap_or(usize::MAX));
    } else {
        let rank: HashMap<&str, usize> = spec
            .target
            .vins
            .iter()
            .enumerate()
            .map(|(i, v)| (v.as_str(), i))
            .collect();
        per_vehicle.sort_by_key(|(v, _)| rank.get(v.as_str()).copied().unwrap_or(usize::MAX));
    }
    let sizes = plan::wave_sizes(&spec.waves, per_vehicle.len() as u64)?;
    let mut members = Vec::new();
    let mut vehicles = per_vehicle.iter();
    for (wave, size) in sizes.iter().enumerate() {
        for (vin, ecus) in vehicles.by_ref().take(*size as usize) {
            for (ecu_id, target) in ecus {
                members.push(NewMember {
                    vin: vin.clone(),
                    ecu_id: ecu_id.clone(),
                    wave,
                    target: target.clone(),
                });
            }
        }
    }
    let pairs: Vec<(String, String)> = members
        .iter()
        .map(|m| (m.vin.clone(), m.ecu_id.clone()))
        .collect();
    check_conflicts(db, 0, &pairs).await?;
    let mut tx = store::begin(db).await?;
    let id = store::insert_campaign(&mut tx, &spec, &images, &sizes, &members).await?;
    store::log(
        &mut tx,
        id,
        OPERATOR,
        "created",
        &format!(
            "{} vehicles ({} ECUs) in {} waves of {}; {up_to_date} ECUs already up to date",
            per_vehicle.len(),
            members.len(),
            sizes.len(),
            sizes
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .await?;
    store::commit(tx).await?;
    tracing::info!(campaign = %spec.name, vehicles = per_vehicle.len(), waves = sizes.len(), "campaign created");
    if spec.start {
        return start(director, &spec.name, now).await;
    }
    campaign(db, &spec.name).await
}

async fn campaign(db: &Db, name: &str) -> Result<Campaign> {
    db.campaign(name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no campaign named {name}")))
}

/// Refuses an action the campaign's state does not allow.
fn refuse(c: &Campaign, action: &str) -> Error {
    Error::Conflict(format!(
        "campaign {} is {}: it cannot be {action}{}",
        c.name,
        c.state.as_str(),
        c.reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    ))
}

/// Starts a draft, or resumes a paused or halted campaign: its current wave's vehicles are
/// instructed (again, for those whose instruction a halt took back). Conflicts with other
/// active campaigns are checked again.
pub async fn start(director: &Director, name: &str, now: DateTime<Utc>) -> Result<Campaign> {
    start_by(director, name, OPERATOR, now).await
}

/// [`start`], by `actor` (a console user's name) in the campaign's log.
pub async fn start_by(
    director: &Director,
    name: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Campaign> {
    let db = director.db();
    let c = campaign(db, name).await?;
    let (from, action) = match c.state {
        State::Draft => (vec![State::Draft], "started"),
        State::Paused | State::Halted => (vec![State::Paused, State::Halted], "resumed"),
        _ => return Err(refuse(&c, "started or resumed")),
    };
    if let Some(deadline) = parse_deadline(c.spec.deadline.as_deref())? {
        if deadline <= now {
            return Err(Error::Conflict(format!(
                "campaign {name}'s deadline ({}) has passed",
                c.spec.deadline.as_deref().unwrap_or_default()
            )));
        }
    }
    let members = db.campaign_members(c.id).await?;
    let pairs: Vec<(String, String)> = members
        .iter()
        .map(|m| (m.vin.clone(), m.ecu_id.clone()))
        .collect();
    check_conflicts(db, c.id, &pairs).await?;
    let mut tx = store::begin(db).await?;
    if !store::set_state(&mut tx, c.id, &from, State::Running, None).await? {
        return Err(Error::Conflict(format!(
            "campaign {name} changed state meanwhile; look again"
        )));
    }
    let wave = c.wave.max(0);
    if c.wave < 0 && !store::start_wave(&mut tx, c.id, -1, 0).await? {
        return Err(Error::Conflict(format!(
            "campaign {name} changed meanwhile"
        )));
    }
    let made = instruct_due(&mut tx, &c, wave, &members, now).await?;
    store::log(
        &mut tx,
        c.id,
        actor,
        action,
        &format!(
            "wave {} of {}: {} ECUs instructed",
            wave + 1,
            c.wave_sizes.len(),
            made.ecus
        ),
    )
    .await?;
    store::commit(tx).await?;
    director.nudge(made.vins());
    tracing::info!(campaign = %name, wave = wave + 1, instructed = made.ecus, "campaign {action}");
    // Judged at once: a wave that met its criterion while the campaign was paused moves on
    // now, not at the next check-in or periodic judgement.
    if let Err(e) = evaluate(director, c.id, now).await {
        tracing::error!(campaign = %name, error = %e, "could not judge campaign");
    }
    campaign(db, name).await
}

/// Pauses a running campaign: no new instruction (no next wave); given ones stand.
pub async fn pause(director: &Director, name: &str, reason: &str) -> Result<Campaign> {
    pause_by(director, name, OPERATOR, reason).await
}

/// [`pause`], by `actor` in the campaign's log.
pub async fn pause_by(
    director: &Director,
    name: &str,
    actor: &str,
    reason: &str,
) -> Result<Campaign> {
    let db = director.db();
    let c = campaign(db, name).await?;
    if c.state != State::Running {
        return Err(refuse(&c, "paused"));
    }
    let mut tx = store::begin(db).await?;
    if !store::set_state(
        &mut tx,
        c.id,
        &[State::Running],
        State::Paused,
        Some(reason),
    )
    .await?
    {
        return Err(Error::Conflict(format!(
            "campaign {name} changed state meanwhile"
        )));
    }
    store::log(&mut tx, c.id, actor, "paused", reason).await?;
    store::commit(tx).await?;
    tracing::info!(campaign = %name, %reason, "campaign paused");
    campaign(db, name).await
}

/// Cancels a campaign for good: instructions not yet being installed are taken back.
pub async fn cancel(director: &Director, name: &str, reason: &str) -> Result<Campaign> {
    cancel_by(director, name, OPERATOR, reason).await
}

/// [`cancel`], by `actor` in the campaign's log.
pub async fn cancel_by(
    director: &Director,
    name: &str,
    actor: &str,
    reason: &str,
) -> Result<Campaign> {
    let db = director.db();
    let c = campaign(db, name).await?;
    let from = [State::Draft, State::Running, State::Paused, State::Halted];
    if !from.contains(&c.state) {
        return Err(refuse(&c, "cancelled"));
    }
    let members = db.campaign_members(c.id).await?;
    let mut tx = store::begin(db).await?;
    if !store::set_state(&mut tx, c.id, &from, State::Cancelled, Some(reason)).await? {
        return Err(Error::Conflict(format!(
            "campaign {name} changed state meanwhile"
        )));
    }
    let taken = withdraw_outstanding(&mut tx, &members).await?;
    store::log(
        &mut tx,
        c.id,
        actor,
        "cancelled",
        &format!("{reason}; {} instructions withdrawn", taken.ecus),
    )
    .await?;
    store::commit(tx).await?;
    director.nudge(taken.vins());
    tracing::info!(campaign = %name, %reason, withdrawn = taken.ecus, "campaign cancelled");
    campaign(db, name).await
}

/// Halts a running or paused campaign from outside its own judgement (the V-SOC, on an
/// incident about an image it ships): no further wave, instructions not yet being installed
/// taken back, `actor` and `reason` in its log. `Ok(false)`: it was in neither state.
pub async fn halt_by(director: &Director, name: &str, actor: &str, reason: &str) -> Result<bool> {
    let db = director.db();
    let c = campaign(db, name).await?;
    let from = [State::Running, State::Paused];
    if !from.contains(&c.state) {
        return Ok(false);
    }
    let members = db.campaign_members(c.id).await?;
    let mut tx = store::begin(db).await?;
    if !store::set_state(&mut tx, c.id, &from, State::Halted, Some(reason)).await? {
        return Ok(false);
    }
    let taken = withdraw_outstanding(&mut tx, &members).await?;
    store::log(
        &mut tx,
        c.id,
        actor,
        "halted",
        &format!("{reason}; {} instructions withdrawn", taken.ecus),
    )
    .await?;
    store::commit(tx).await?;
    director.nudge(taken.vins());
    tracing::warn!(campaign = %name, %actor, %reason, withdrawn = taken.ecus, "campaign halted");
    Ok(true)
}

/// What an instruction or withdrawal step changed: how many ECUs, and which vehicles (to
/// nudge once the transaction is committed).
#[derive(Debug, Default)]
struct Instructed {
    ecus: usize,
    vins: BTreeSet<String>,
}

impl Instructed {
    fn vins(&self) -> impl Iterator<Item = &str> {
        self.vins.iter().map(String::as_str)
    }
}

/// The maintenance window that applies to a member (its vehicle's, else the campaign's),
/// unless a critical fix overrides windows.
fn window_of(c: &Campaign, m: &MemberRow) -> Option<String> {
    if c.spec.override_windows {
        return None;
    }
    m.window.clone().or_else(|| c.spec.window.clone())
}

/// Whether a member may be instructed at `now`: inside its window (a stored window that no
/// longer parses keeps it waiting, and says so in the log of the server).
fn window_open(c: &Campaign, m: &MemberRow, now: DateTime<Utc>) -> bool {
    match window_of(c, m).map(|w| w.parse::<MaintenanceWindow>()) {
        None => true,
        Some(Ok(w)) => w.contains(now),
        Some(Err(e)) => {
            tracing::warn!(campaign = %c.name, vin = %m.vin, error = %e, "vehicle not instructed");
            false
        }
    }
}

/// Members of waves up to `wave` without an instruction (none yet, or one a halt took back).
fn due(members: &[MemberRow], wave: i64) -> impl Iterator<Item = &MemberRow> {
    members
        .iter()
        .filter(move |m| (m.wave as i64) <= wave && m.awaits_instruction())
}

/// Makes the assignments of due members (see [`due`]) whose maintenance window is open at
/// `now`; the others wait for theirs. Returns how many were made.
async fn instruct_due(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    c: &Campaign,
    wave: i64,
    members: &[MemberRow],
    now: DateTime<Utc>,
) -> Result<Instructed> {
    let mut due_now = Vec::new();
    for m in due(members, wave).filter(|m| window_open(c, m, now)) {
        let image = c
            .images
            .iter()
            .find(|i| i.target == m.target)
            .ok_or_else(|| {
                Error::Database(format!(
                    "campaign {} has a member for {}, which is not in its release",
                    c.name, m.target
                ))
            })?;
        let a = Assignment {
            id: 0,
            vin: m.vin.clone(),
            ecu_id: m.ecu_id.clone(),
            target: image.target.clone(),
            length: image.length,
            hashes: image.hashes.clone(),
            release_counter: image.release_counter,
            encrypt: image.encrypted,
            status: "pending".into(),
            created_at: String::new(),
            completed_at: None,
            last_error: None,
            maintenance_window: window_of(c, m),
        };
        due_now.push((m, a));
    }
    let claimed = store::instruct(tx, c.id, &due_now).await?;
    Ok(Instructed {
        ecus: claimed.len(),
        vins: claimed.into_iter().map(|(vin, _)| vin).collect(),
    })
}

/// Takes back every instruction of `members` not yet being installed. Returns how many.
async fn withdraw_outstanding(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    members: &[MemberRow],
) -> Result<Instructed> {
    let mut taken = Instructed::default();
    for m in members {
        let Some(assignment) = m.assignment_id else {
            continue;
        };
        if progress(m).withdrawable() && store::withdraw(tx, assignment, &m.vin).await? {
            taken.ecus += 1;
            taken.vins.insert(m.vin.clone());
        }
    }
    Ok(taken)
}

fn progress(m: &MemberRow) -> Progress {
    Progress::of(
        m.status.as_deref(),
        m.last_error.as_deref(),
        m.stage.as_deref(),
    )
}

/// Each vehicle's progress, by wave and in member order.
fn vehicles(members: &[MemberRow]) -> Vec<VehicleProgress> {
    let mut out: Vec<VehicleProgress> = Vec::new();
    for m in members {
        if out.last().is_none_or(|v| v.vin != m.vin) {
            out.push(VehicleProgress {
                vin: m.vin.clone(),
                wave: m.wave + 1,
                progress: Progress::Pending,
                ecus: Vec::new(),
            });
        }
        if let Some(v) = out.last_mut() {
            v.ecus.push(EcuProgress {
                ecu_id: m.ecu_id.clone(),
                target: m.target.clone(),
                progress: progress(m),
                error: m.last_error.clone(),
            });
        }
    }
    for v in &mut out {
        let ecus: Vec<Progress> = v.ecus.iter().map(|e| e.progress).collect();
        v.progress = plan::vehicle_progress(&ecus);
    }
    out
}

fn wave_counts(vehicles: &[VehicleProgress], wave: usize) -> WaveCounts {
    WaveCounts::of(
        vehicles
            .iter()
            .filter(|v| v.wave == wave + 1)
            .map(|v| v.progress),
    )
}

/// A campaign with its waves, vehicles and log.
pub async fn status(db: &Db, name: &str) -> Result<CampaignStatus> {
    let c = campaign(db, name).await?;
    let members = db.campaign_members(c.id).await?;
    let vehicles = vehicles(&members);
    let waves = (0..c.wave_sizes.len())
        .map(|w| WaveStatus {
            wave: w + 1,
            started: (w as i64) <= c.wave,
            counts: wave_counts(&vehicles, w),
        })
        .collect();
    let log = db.campaign_log(c.id).await?;
    Ok(CampaignStatus {
        campaign: c,
        waves,
        vehicles,
        log,
    })
}

/// After a check-in of `vin`: judges the running campaigns it is in, if the check-in changed
/// one of its assignments (`changed`). Errors are logged: a campaign's bookkeeping must never
/// refuse a vehicle's manifest.
pub async fn after_checkin(director: &Director, vin: &str, change: Change, now: DateTime<Utc>) {
    if change == Change::None {
        return;
    }
    if let Err(e) = confirm_rxswin(director.db(), vin).await {
        tracing::error!(%vin, error = %e, "could not record the vehicle's RXSWIN");
    }
    let ids = match director.db().running_campaigns_of(vin).await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::error!(%vin, error = %e, "could not look up the vehicle's campaigns");
            return;
        }
    };
    for id in ids {
        // One judgement per campaign at a time (crate::campaign::gate); confirmed installs
        // leave a campaign being judged to that judgement or the next.
        let _turn = match change {
            Change::Failed => director.judging().turn(id).await,
            _ => match director.judging().try_turn(id) {
                Some(turn) => turn,
                None => continue,
            },
        };
        if let Err(e) = evaluate(director, id, now).await {
            tracing::error!(campaign = id, error = %e, "could not judge campaign");
        }
    }
}

/// What a check-in changed for the campaigns it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing (no install confirmed, no failure).
    None,
    /// Installs confirmed.
    Installed,
    /// An update failed (a campaign may have to halt).
    Failed,
}

/// Records `vin`'s new RXSWIN for each campaign that changes it and whose every ECU on this
/// vehicle now reports the image (UNECE R156: the RXSWIN follows confirmed installs only).
async fn confirm_rxswin(db: &Db, vin: &str) -> Result<()> {
    for (id, name, rxswin) in db.rxswin_campaigns_of(vin).await? {
        let statuses = db.vehicle_statuses(id, vin).await?;
        let confirmed =
            !statuses.is_empty() && statuses.iter().all(|s| s.as_deref() == Some("installed"));
        if confirmed && db.set_rxswin(vin, &rxswin, &name).await? {
            tracing::info!(%vin, %rxswin, campaign = %name, "RXSWIN recorded");
        }
    }
    Ok(())
}

/// Judges every running campaign (the soak time and deadlines pass without check-ins).
pub async fn tick(director: &Director, now: DateTime<Utc>) {
    let ids = match director.db().running_campaigns().await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::error!(error = %e, "could not list running campaigns");
            return;
        }
    };
    for id in ids {
        if let Err(e) = evaluate(director, id, now).await {
            tracing::error!(campaign = id, error = %e, "could not judge campaign");
        }
    }
}

/// Judges one running campaign now: halts it on a breach, notes when its wave met its
/// criterion, starts the next wave after the soak time, completes it after the last one or
/// at its deadline.
pub async fn evaluate(director: &Director, id: i64, now: DateTime<Utc>) -> Result<()> {
    let db = director.db();
    let Some(c) = db.campaign_by_id(id).await? else {
        return Ok(());
    };
    if c.state != State::Running || c.wave < 0 {
        return Ok(());
    }
    let members = db.campaign_members_upto(id, c.wave + 1).await?;
    let vehicles = vehicles(&members);
    if parse_deadline(c.spec.deadline.as_deref())?.is_some_and(|d| d <= now) {
        // Members of waves after the next were not read: none of them was instructed.
        let unread: u64 = c.wave_sizes.iter().skip(c.wave as usize + 2).sum();
        let outstanding = vehicles
            .iter()
            .filter(|v| v.progress != Progress::Installed)
            .count() as u64
            + unread;
        let why = format!(
            "deadline {} passed; {outstanding} vehicles had not installed",
            c.spec.deadline.as_deref().unwrap_or_default()
        );
        return finish(director, &c, &members, State::Completed, &why, true).await;
    }
    // A breach in any started wave halts (a late failure in an earlier wave counts too).
    for w in 0..=c.wave as usize {
        if let plan::Verdict::Breached(why) =
            plan::judge(w, &wave_counts(&vehicles, w), &c.spec.criteria)
        {
            return halt(director, &c, &members, &vehicles, &why).await;
        }
    }
    // Vehicles of started waves whose maintenance window opened since.
    if due(&members, c.wave).any(|m| window_open(&c, m, now)) {
        let mut tx = store::begin(db).await?;
        let mut made = Instructed::default();
        if store::lock_running(&mut tx, c.id).await? {
            made = instruct_due(&mut tx, &c, c.wave, &members, now).await?;
            tracing::info!(campaign = %c.name, instructed = made.ecus, "vehicles instructed in their maintenance window");
        }
        store::commit(tx).await?;
        director.nudge(made.vins());
    }
    let current = c.wave as usize;
    if plan::judge(current, &wave_counts(&vehicles, current), &c.spec.criteria)
        != plan::Verdict::Met
    {
        return Ok(());
    }
    let Some(met) = parse_time(c.wave_met_at.as_deref()) else {
        store::wave_met(db, id, c.wave, &crate::db::now_text()).await?;
        if c.spec.criteria.soak_seconds > 0 {
            return Ok(());
        }
        return advance(director, &c, &members, now).await;
    };
    if now - met < chrono::Duration::seconds(c.spec.criteria.soak_seconds as i64) {
        return Ok(());
    }
    advance(director, &c, &members, now).await
}

/// The current wave met its criterion and soaked: the next wave starts, or after the last
/// the campaign completes.
async fn advance(
    director: &Director,
    c: &Campaign,
    members: &[MemberRow],
    now: DateTime<Utc>,
) -> Result<()> {
    let db = director.db();
    let next = c.wave + 1;
    if next as usize >= c.wave_sizes.len() {
        return finish(
            director,
            c,
            members,
            State::Completed,
            "every wave met its success criterion",
            false,
        )
        .await;
    }
    let mut tx = store::begin(db).await?;
    if !store::start_wave(&mut tx, c.id, c.wave, next).await? {
        return Ok(());
    }
    let made = instruct_due(&mut tx, c, next, members, now).await?;
    store::log(
        &mut tx,
        c.id,
        DIRECTOR,
        "wave",
        &format!(
            "wave {} of {} started: {} ECUs instructed",
            next + 1,
            c.wave_sizes.len(),
            made.ecus
        ),
    )
    .await?;
    store::commit(tx).await?;
    director.nudge(made.vins());
    tracing::info!(campaign = %c.name, wave = next + 1, instructed = made.ecus, "campaign wave started");
    Ok(())
}

async fn finish(
    director: &Director,
    c: &Campaign,
    members: &[MemberRow],
    to: State,
    why: &str,
    withdraw: bool,
) -> Result<()> {
    let mut tx = store::begin(director.db()).await?;
    if !store::set_state(&mut tx, c.id, &[State::Running], to, Some(why)).await? {
        return Ok(());
    }
    let taken = if withdraw {
        withdraw_outstanding(&mut tx, members).await?
    } else {
        Instructed::default()
    };
    let detail = if withdraw {
        format!("{why}; {} instructions withdrawn", taken.ecus)
    } else {
        why.to_owned()
    };
    store::log(&mut tx, c.id, DIRECTOR, to.as_str(), &detail).await?;
    store::commit(tx).await?;
    director.nudge(taken.vins());
    tracing::info!(campaign = %c.name, state = to.as_str(), %detail, "campaign ended");
    Ok(())
}

/// Halts a campaign by itself: no further wave; instructions not yet being installed are
/// taken back; the operations log says why, and if the failures name attack rules (not
/// just a car that could not boot the image) a security event says so too.
async fn halt(
    director: &Director,
    c: &Campaign,
    members: &[MemberRow],
    vehicles: &[VehicleProgress],
    why: &str,
) -> Result<()> {
    let db = director.db();
    let mut rules: BTreeMap<String, usize> = BTreeMap::new();
    for e in vehicles.iter().flat_map(|v| &v.ecus) {
        if e.progress.is_failure() {
            let rule = e
                .error
                .as_deref()
                .map(plan::error_rule)
                .unwrap_or("unknown");
            *rules.entry(rule.to_owned()).or_default() += 1;
        }
    }
    let listed = rules
        .iter()
        .map(|(r, n)| format!("{r} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut tx = store::begin(db).await?;
    let reason = format!("{why} [{listed}]");
    if !store::set_state(
        &mut tx,
        c.id,
        &[State::Running],
        State::Halted,
        Some(&reason),
    )
    .await?
    {
        return Ok(());
    }
    let taken = withdraw_outstanding(&mut tx, members).await?;
    store::log(
        &mut tx,
        c.id,
        DIRECTOR,
        "halted",
        &format!("{reason}; {} instructions withdrawn", taken.ecus),
    )
    .await?;
    store::commit(tx).await?;
    director.nudge(taken.vins());
    tracing::warn!(campaign = %c.name, %reason, withdrawn = taken.ecus, "campaign halted");
    let attacks: Vec<&str> = rules
        .keys()
        .map(String::as_str)
        .filter(|r| !plan::OPERATIONAL_RULES.iter().any(|o| o.as_str() == *r))
        .collect();
    if !attacks.is_empty() {
        director
            .event(
                "server",
                Rule::CampaignHalted.as_str(),
                None,
                None,
                None,
                &format!(
                    "campaign {} halted on failures naming attack rules ({}): {why}",
                    c.name,
                    attacks.join(", ")
                ),
            )
            .await;
    }
    Ok(())
}

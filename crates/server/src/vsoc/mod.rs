//! The V-SOC engine: fleet-wide detection and response, in the server.
//!
//! Every `[vsoc] check_every_secs` (and on demand) the engine reads the security events of
//! its window and the campaign members it is waiting for, lets the pure correlation rules
//! ([`rules::correlate`]) say which incidents the fleet shows, and records them
//! ([`store::record`]): one open incident per kind and subject, its evidence (the events, as
//! they were) and the vehicles it affects. Reading the window each time instead of keeping a
//! cursor makes it stateless: any number of servers may run it on one database (a unique
//! index keeps one open incident per kind and subject), and a restart loses nothing.
//!
//! Response, when an incident opens:
//! - about an image (a fleet attack whose vehicles were instructed the same image): every
//!   running or paused campaign shipping it is halted and pending assignments of it outside
//!   campaigns are withdrawn (`[vsoc] halt_campaigns`, on by default);
//! - about a vehicle rejecting metadata: quarantined at once with
//!   `[vsoc] quarantine_automatically` (off by default), else by an analyst from the console.
//!
//! Every response is written to the audit log by [`audit::VSOC`], every incident to the
//! export outbox ([`export`]).

pub mod export;
pub mod rules;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use rules::{Finding, Kind, Severity, Thresholds, Waiting};
pub use store::{Incident, Recorded};

use crate::audit;
use crate::db::{db_err, get_opt_str, get_str, Db, SecurityEvent};
use crate::director::Director;
use crate::error::{Error, Result};

/// `[vsoc]` in `rampart.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VsocConfig {
    /// Seconds between two rounds of the engine.
    pub check_every_secs: u64,
    /// Halt campaigns shipping an image an incident is about.
    pub halt_campaigns: bool,
    /// Quarantine a vehicle as soon as a vehicle incident opens (else an analyst decides).
    pub quarantine_automatically: bool,
    /// The correlation rules' thresholds.
    #[serde(flatten)]
    pub thresholds: Thresholds,
    /// Where incidents and events go for a SIEM.
    pub export: export::ExportConfig,
}

impl Default for VsocConfig {
    fn default() -> Self {
        VsocConfig {
            check_every_secs: 10,
            halt_campaigns: true,
            quarantine_automatically: false,
            thresholds: Thresholds::default(),
            export: export::ExportConfig::default(),
        }
    }
}

impl VsocConfig {
    /// The interval between rounds (at least 1 s).
    pub fn check_every(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.check_every_secs.max(1))
    }
}

/// Most events one round reads (the newest): a flood is counted on few rows anyway.
const MAX_EVENTS: u32 = 10_000;

/// One round of the engine at `now`: what it opened or updated.
pub async fn evaluate(
    director: &Director,
    config: &VsocConfig,
    now: DateTime<Utc>,
) -> Result<Vec<(Recorded, Finding)>> {
    let db = director.db();
    let t = &config.thresholds;
    let since = now - chrono::Duration::seconds(i64::try_from(t.window_secs).unwrap_or(i64::MAX));
    let events = db.events_since(&text(since), MAX_EVENTS).await?;
    let waiting = waiting(db).await?;
    let findings = rules::correlate(&events, &waiting, t, now);
    let by_id: BTreeMap<i64, &SecurityEvent> = events.iter().map(|e| (e.id, e)).collect();
    let mut out = Vec::new();
    for f in findings {
        let image = match f.kind {
            Kind::FleetAttack => image_of(db, &f, &by_id).await?,
            _ => None,
        };
        let recorded = store::record(db, &f, image.as_deref(), &by_id, now).await?;
        if let Recorded::Opened(id) = recorded {
            tracing::warn!(incident = id, kind = f.kind.as_str(), subject = %f.subject, severity = f.severity.as_str(), title = %f.title, "incident opened");
            respond(director, config, id, &f, image.as_deref()).await;
            if let Ok(i) = store::incident(db, id).await {
                if let Err(e) = export::enqueue_incident(db, &i).await {
                    tracing::error!(error = %e, "could not queue the incident for export");
                }
            }
        }
        out.push((recorded, f));
    }
    Ok(out)
}

fn text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Campaign members instructed and not done: whom the director is waiting for.
async fn waiting(db: &Db) -> Result<Vec<Waiting>> {
    let rows = sqlx::query(
        "SELECT m.vin AS vin, c.name AS campaign, m.instructed_at AS instructed_at, v.last_seen AS last_seen \
         FROM campaign_members m JOIN campaigns c ON c.id = m.campaign_id \
         JOIN vehicles v ON v.vin = m.vin JOIN assignments a ON a.id = m.assignment_id \
         WHERE c.state = 'running' AND m.instructed_at IS NOT NULL AND a.status = 'pending' \
         AND v.removed_at IS NULL",
    )
    .fetch_all(db.pool())
    .await
    .map_err(db_err("campaign members waited for"))?;
    let parse = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    let mut out = Vec::new();
    for r in &rows {
        let Some(instructed_at) = parse(&get_str(r, "instructed_at")?) else {
            continue;
        };
        out.push(Waiting {
            vin: get_str(r, "vin")?,
            campaign: get_str(r, "campaign")?,
            instructed_at,
            last_seen: get_opt_str(r, "last_seen")?.as_deref().and_then(parse),
        });
    }
    Ok(out)
}

/// The image a fleet incident is about: the one named in most of its events' details, else
/// — when the vehicles reported the events themselves (a failed install, a refused image) —
/// the one most of its vehicles are instructed to install and have not (pending, or failed),
/// if that is at least half of them. What the server refused on its own (a replayed
/// manifest, a bad manifest signature) is about the vehicles or the network, not an image:
/// it halts nothing unless an event names the image.
async fn image_of(
    db: &Db,
    f: &Finding,
    events: &BTreeMap<i64, &SecurityEvent>,
) -> Result<Option<String>> {
    let reported_by_vehicles = f
        .events
        .iter()
        .filter_map(|id| events.get(id))
        .any(|e| e.source == "vehicle");
    let mut instructed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for vin in &f.vins {
        for a in db.assignments(Some(vin), None).await? {
            if a.status == "pending" || a.status == "failed" {
                instructed
                    .entry(a.target.clone())
                    .or_default()
                    .insert(vin.clone());
            }
        }
    }
    let named = |target: &str| {
        f.events
            .iter()
            .filter_map(|id| events.get(id))
            .filter(|e| e.detail.contains(target))
            .count()
    };
    let best = instructed
        .iter()
        .map(|(target, vins)| (named(target), vins.len(), target))
        .max();
    Ok(best
        .filter(|(named, vins, _)| *named > 0 || (reported_by_vehicles && vins * 2 >= f.vins.len()))
        .map(|(_, _, target)| target.clone()))
}

/// The automatic response to a newly opened incident. Failures are logged: detection stands
/// even when a response could not be carried out.
async fn respond(
    director: &Director,
    config: &VsocConfig,
    id: i64,
    f: &Finding,
    image: Option<&str>,
) {
    let why = format!("incident #{id}: {}", f.title);
    if let (Some(image), true) = (image, config.halt_campaigns) {
        if let Err(e) = halt_image(director, image, audit::VSOC, &why).await {
            tracing::error!(incident = id, error = %e, "could not halt the campaigns of {image}");
        }
    }
    if f.kind == Kind::VehicleRejecting && config.quarantine_automatically {
        if let Err(e) = quarantine(director, &f.subject, audit::VSOC, &why).await {
            tracing::error!(incident = id, error = %e, "could not quarantine {}", f.subject);
        }
    }
}

/// Halts every running or paused campaign shipping `image` and withdraws its pending
/// assignments outside campaigns. Returns the campaigns halted.
pub async fn halt_image(
    director: &Director,
    image: &str,
    actor: &str,
    why: &str,
) -> Result<Vec<String>> {
    let db = director.db();
    let mut halted = Vec::new();
    for c in db.campaigns().await? {
        if c.spec.images.iter().any(|i| i == image)
            && crate::campaign::halt_by(director, &c.name, actor, why).await?
        {
            audit::record(db, actor, "campaign.halt", &c.name, why).await?;
            halted.push(c.name);
        }
    }
    let vins = db.withdraw_pending_target(image).await?;
    if !vins.is_empty() {
        audit::record(
            db,
            actor,
            "assignments.withdraw",
            image,
            &format!("{why}; {} pending assignments withdrawn", vins.len()),
        )
        .await?;
        director.nudge(vins.iter().map(String::as_str));
    }
    Ok(halted)
}

/// Quarantines a vehicle: no instructions until it is released.
pub async fn quarantine(director: &Director, vin: &str, actor: &str, reason: &str) -> Result<()> {
    if reason.trim().is_empty() {
        return Err(Error::BadRequest("give a reason for the quarantine".into()));
    }
    if !director.db().set_quarantine(vin, Some(reason)).await? {
        return Err(Error::Conflict(format!(
            "vehicle {vin} is already quarantined"
        )));
    }
    audit::record(director.db(), actor, "vehicle.quarantine", vin, reason).await?;
    director.nudge([vin]);
    Ok(())
}

/// Releases a quarantined vehicle: its pending instructions are signed again.
pub async fn release(director: &Director, vin: &str, actor: &str, reason: &str) -> Result<()> {
    if !director.db().set_quarantine(vin, None).await? {
        return Err(Error::Conflict(format!("vehicle {vin} is not quarantined")));
    }
    audit::record(director.db(), actor, "vehicle.release", vin, reason).await?;
    director.nudge([vin]);
    Ok(())
}

/// Acknowledges (`acknowledged`) or resolves (`resolved`) an incident, by `actor`.
pub async fn set_incident_state(db: &Db, id: i64, to: &str, actor: &str) -> Result<Incident> {
    let i = store::set_state(db, id, to, actor).await?;
    let action = if to == "resolved" {
        "incident.resolve"
    } else {
        "incident.acknowledge"
    };
    audit::record(db, actor, action, &format!("#{id}"), &i.title).await?;
    Ok(i)
}

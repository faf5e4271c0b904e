//! Incidents in the database: opened (or added to) from a [`Finding`], listed, read whole,
//! moved through open → acknowledged → resolved.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::rules::Finding;
use crate::db::{db_err, get_i64, get_opt_str, get_str, now_text, to_u64, Db, SecurityEvent};
use crate::error::{Error, Result};

/// An incident as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Incident {
    /// Number.
    pub id: i64,
    /// `fleet-attack`, `vehicle-rejecting`, `address-abuse`, `key-compromise`, `silent-vehicle`.
    pub kind: String,
    /// The rule, VIN, address or repository it is about.
    pub subject: String,
    /// `low`, `medium`, `high`, `critical`.
    pub severity: String,
    /// `open`, `acknowledged`, `resolved`.
    pub state: String,
    /// One line.
    pub title: String,
    /// What the rule saw.
    pub detail: String,
    /// What to do, when there is a runbook.
    pub runbook: Option<String>,
    /// The image it is about, when it is about one (campaigns shipping it were halted).
    pub image: Option<String>,
    /// Opened (RFC 3339).
    pub opened_at: String,
    /// Last changed.
    pub updated_at: String,
    /// Newest evidence.
    pub last_event_at: String,
    /// Who acknowledged or resolved it.
    pub state_by: Option<String>,
    /// When.
    pub state_at: Option<String>,
    /// Vehicles affected.
    pub vehicles: Vec<String>,
    /// The events behind it (only in [`incident`]'s answer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<SecurityEvent>,
}

/// The states.
pub const STATES: [&str; 3] = ["open", "acknowledged", "resolved"];

fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What [`record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A new incident.
    Opened(i64),
    /// Evidence added to an open one.
    Updated(i64),
    /// Nothing: the same evidence was resolved already.
    Skipped,
}

/// Opens an incident for `f`, or adds its evidence to the open one of the same kind and
/// subject. An incident resolved after `f`'s newest evidence is not opened again for it.
/// `events`: the window's events, by ID, for the evidence snapshot.
pub async fn record(
    db: &Db,
    f: &Finding,
    image: Option<&str>,
    events: &BTreeMap<i64, &SecurityEvent>,
    now: DateTime<Utc>,
) -> Result<Recorded> {
    let pool = db.pool();
    let latest = sqlx::query(
        "SELECT id, state, state_at FROM incidents WHERE kind = $1 AND subject = $2 ORDER BY id DESC LIMIT 1",
    )
    .bind(f.kind.as_str())
    .bind(&f.subject)
    .fetch_optional(pool)
    .await
    .map_err(db_err("incident lookup"))?;
    let mut tx = pool.begin().await.map_err(db_err("begin"))?;
    let (id, outcome) = match latest {
        Some(r) if get_str(&r, "state")? != "resolved" => {
            let id = get_i64(&r, "id")?;
            sqlx::query(
                "UPDATE incidents SET updated_at = $1, title = $2, detail = $3, \
                 last_event_at = CASE WHEN last_event_at < $4 THEN $4 ELSE last_event_at END \
                 WHERE id = $5",
            )
            .bind(time_text(now))
            .bind(&f.title)
            .bind(&f.detail)
            .bind(time_text(f.newest))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err("incident update"))?;
            (id, Recorded::Updated(id))
        }
        Some(r)
            if get_opt_str(&r, "state_at")?
                .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
                .is_some_and(|resolved| resolved >= f.newest) =>
        {
            return Ok(Recorded::Skipped);
        }
        _ => {
            let row = sqlx::query(
                "INSERT INTO incidents (kind, subject, severity, state, title, detail, runbook, image, \
                 opened_at, updated_at, last_event_at) \
                 VALUES ($1, $2, $3, 'open', $4, $5, $6, $7, $8, $8, $9) RETURNING id",
            )
            .bind(f.kind.as_str())
            .bind(&f.subject)
            .bind(f.severity.as_str())
            .bind(&f.title)
            .bind(&f.detail)
            .bind(f.runbook.as_deref())
            .bind(image)
            .bind(time_text(now))
            .bind(time_text(f.newest))
            .fetch_one(&mut *tx)
            .await;
            match row {
                Ok(row) => {
                    let id = get_i64(&row, "id")?;
                    (id, Recorded::Opened(id))
                }
                // Another server opened it at the same moment (one open incident per kind and
                // subject): its evidence is added on the next round.
                Err(e) if is_unique_violation(&e) => return Ok(Recorded::Skipped),
                Err(e) => return Err(db_err("incident insert")(e)),
            }
        }
    };
    for event_id in &f.events {
        let Some(e) = events.get(event_id) else {
            continue;
        };
        sqlx::query(
            "INSERT INTO incident_events (incident_id, event_id, at, rule, vin, ecu_id, remote, detail, count) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (incident_id, event_id) DO UPDATE SET count = excluded.count, at = excluded.at",
        )
        .bind(id)
        .bind(e.id)
        .bind(if e.last_at.is_empty() { &e.at } else { &e.last_at })
        .bind(&e.rule)
        .bind(e.vin.as_deref())
        .bind(e.ecu_id.as_deref())
        .bind(e.remote.as_deref())
        .bind(&e.detail)
        .bind(i64::try_from(e.count).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(db_err("incident evidence"))?;
    }
    for vin in &f.vins {
        sqlx::query(
            "INSERT INTO incident_vehicles (incident_id, vin) VALUES ($1, $2) \
             ON CONFLICT (incident_id, vin) DO NOTHING",
        )
        .bind(id)
        .bind(vin)
        .execute(&mut *tx)
        .await
        .map_err(db_err("incident vehicles"))?;
    }
    tx.commit().await.map_err(db_err("commit"))?;
    Ok(outcome)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

const COLUMNS: &str = "id, kind, subject, severity, state, title, detail, runbook, image, \
     opened_at, updated_at, last_event_at, state_by, state_at";

fn from_row(r: &sqlx::any::AnyRow) -> Result<Incident> {
    Ok(Incident {
        id: get_i64(r, "id")?,
        kind: get_str(r, "kind")?,
        subject: get_str(r, "subject")?,
        severity: get_str(r, "severity")?,
        state: get_str(r, "state")?,
        title: get_str(r, "title")?,
        detail: get_str(r, "detail")?,
        runbook: get_opt_str(r, "runbook")?,
        image: get_opt_str(r, "image")?,
        opened_at: get_str(r, "opened_at")?,
        updated_at: get_str(r, "updated_at")?,
        last_event_at: get_str(r, "last_event_at")?,
        state_by: get_opt_str(r, "state_by")?,
        state_at: get_opt_str(r, "state_at")?,
        vehicles: Vec::new(),
        events: Vec::new(),
    })
}

/// Incidents, newest first: in one state (or all), about one vehicle (or all).
pub async fn incidents(
    db: &Db,
    state: Option<&str>,
    vin: Option<&str>,
    limit: u32,
) -> Result<Vec<Incident>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM incidents i WHERE ($1 = '' OR state = $1) \
         AND ($2 = '' OR EXISTS (SELECT 1 FROM incident_vehicles v WHERE v.incident_id = i.id AND v.vin = $2)) \
         ORDER BY id DESC LIMIT $3"
    ))
    .bind(state.unwrap_or(""))
    .bind(vin.unwrap_or(""))
    .bind(i64::from(limit.clamp(1, 10_000)))
    .fetch_all(db.pool())
    .await
    .map_err(db_err("incidents"))?;
    let mut out: Vec<Incident> = rows.iter().map(from_row).collect::<Result<_>>()?;
    for i in &mut out {
        i.vehicles = vehicles(db, i.id).await?;
    }
    Ok(out)
}

async fn vehicles(db: &Db, id: i64) -> Result<Vec<String>> {
    let rows = sqlx::query("SELECT vin FROM incident_vehicles WHERE incident_id = $1 ORDER BY vin")
        .bind(id)
        .fetch_all(db.pool())
        .await
        .map_err(db_err("incident vehicles"))?;
    rows.iter().map(|r| get_str(r, "vin")).collect()
}

/// One incident with its vehicles and events.
pub async fn incident(db: &Db, id: i64) -> Result<Incident> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM incidents WHERE id = $1"))
        .bind(id)
        .fetch_optional(db.pool())
        .await
        .map_err(db_err("incident"))?
        .ok_or_else(|| Error::NotFound(format!("no incident {id}")))?;
    let mut i = from_row(&row)?;
    i.vehicles = vehicles(db, id).await?;
    let rows = sqlx::query(
        "SELECT event_id, at, rule, vin, ecu_id, remote, detail, count FROM incident_events \
         WHERE incident_id = $1 ORDER BY at DESC, event_id DESC LIMIT 1000",
    )
    .bind(id)
    .fetch_all(db.pool())
    .await
    .map_err(db_err("incident evidence"))?;
    for r in &rows {
        let at = get_str(r, "at")?;
        i.events.push(SecurityEvent {
            id: get_i64(r, "event_id")?,
            at: at.clone(),
            source: String::new(),
            rule: get_str(r, "rule")?,
            vin: get_opt_str(r, "vin")?,
            ecu_id: get_opt_str(r, "ecu_id")?,
            remote: get_opt_str(r, "remote")?,
            detail: get_str(r, "detail")?,
            count: to_u64(get_i64(r, "count")?)?,
            last_at: at,
        });
    }
    Ok(i)
}

/// Moves an incident to `to` (acknowledged or resolved) by `by`. Refused when it is already
/// there or resolved.
pub async fn set_state(db: &Db, id: i64, to: &str, by: &str) -> Result<Incident> {
    let from: (&str, &str) = match to {
        "acknowledged" => ("open", "open"),
        "resolved" => ("open", "acknowledged"),
        other => {
            return Err(Error::BadRequest(format!(
                "an incident can be acknowledged or resolved, not {other:?}"
            )))
        }
    };
    let done = sqlx::query(
        "UPDATE incidents SET state = $1, state_by = $2, state_at = $3, updated_at = $3 \
         WHERE id = $4 AND (state = $5 OR state = $6)",
    )
    .bind(to)
    .bind(by)
    .bind(now_text())
    .bind(id)
    .bind(from.0)
    .bind(from.1)
    .execute(db.pool())
    .await
    .map_err(db_err("incident state"))?;
    if done.rows_affected() == 0 {
        let i = incident(db, id).await?;
        return Err(Error::Conflict(format!(
            "incident {id} is {}: it cannot be {to}",
            i.state
        )));
    }
    incident(db, id).await
}

/// Incidents by state and severity (for `/metrics`).
pub async fn counts(db: &Db) -> Result<Vec<(String, String, u64)>> {
    let rows = sqlx::query(
        "SELECT state, severity, COUNT(*) AS n FROM incidents GROUP BY state, severity ORDER BY state, severity",
    )
    .fetch_all(db.pool())
    .await
    .map_err(db_err("incident counts"))?;
    rows.iter()
        .map(|r| {
            Ok((
                get_str(r, "state")?,
                get_str(r, "severity")?,
                to_u64(get_i64(r, "n")?)?,
            ))
        })
        .collect()
}

/// Open or acknowledged incidents per vehicle (for the fleet page).
pub async fn open_by_vehicle(db: &Db) -> Result<BTreeMap<String, u64>> {
    let rows = sqlx::query(
        "SELECT v.vin AS vin, COUNT(*) AS n FROM incident_vehicles v JOIN incidents i ON i.id = v.incident_id \
         WHERE i.state <> 'resolved' GROUP BY v.vin",
    )
    .fetch_all(db.pool())
    .await
    .map_err(db_err("incidents per vehicle"))?;
    rows.iter()
        .map(|r| Ok((get_str(r, "vin")?, to_u64(get_i64(r, "n")?)?)))
        .collect()
}

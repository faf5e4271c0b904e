//! The campaign tables (`campaigns`, `campaign_members`, `campaign_log`; migration 0007):
//! reads, and the writes that must be atomic with the assignments they make or take back.
//!
//! Every state change is a conditional update on the state (or wave) that was read, inside
//! the transaction that makes its consequences: two instances evaluating the same campaign at
//! once cannot both start a wave, nor both halt it.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::any::AnyRow;

use super::{Campaign, CampaignSpec, ReleaseImage, State};
use crate::db::{
    bind_instruction, db_err, get_i64, get_opt_i64, get_opt_str, get_str, json_as, now_text,
    to_i64, to_u64, Assignment, Db,
};
use crate::error::{Error, Result};

type Tx<'c> = sqlx::Transaction<'c, sqlx::Any>;

/// One ECU of a campaign with its assignment's state.
#[derive(Debug, Clone)]
pub(super) struct MemberRow {
    pub vin: String,
    pub ecu_id: String,
    pub wave: usize,
    pub target: String,
    pub assignment_id: Option<i64>,
    pub status: Option<String>,
    pub last_error: Option<String>,
    /// `downloading` or `installing`, as the vehicle reported.
    pub stage: Option<String>,
    /// The vehicle's own maintenance window (its attribute), if it has one; read only for
    /// a member awaiting an instruction.
    pub window: Option<String>,
}

impl MemberRow {
    /// Without an instruction: none yet, or one a halt took back.
    pub(super) fn awaits_instruction(&self) -> bool {
        self.assignment_id.is_none() || self.status.as_deref() == Some("withdrawn")
    }
}

/// A new member (before insertion).
#[derive(Debug, Clone)]
pub(super) struct NewMember {
    pub vin: String,
    pub ecu_id: String,
    pub wave: usize,
    pub target: String,
}

/// A vehicle as targeting a campaign reads it: what the target set matches on and what
/// choosing its members needs — no keys, no hashes, nothing parsed that is not used.
#[derive(Debug, Clone)]
pub(super) struct FleetVehicle {
    pub vin: String,
    pub attributes: std::collections::BTreeMap<String, String>,
    pub tags: BTreeSet<String>,
    pub ecus: Vec<FleetEcu>,
}

/// One ECU of a [`FleetVehicle`].
#[derive(Debug, Clone)]
pub(super) struct FleetEcu {
    pub ecu_id: String,
    pub hardware_id: String,
    /// The image it reported running and its release counter.
    pub installed: Option<(String, u64)>,
    pub has_encryption_key: bool,
}

/// An entry of a campaign's operations log.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct LogEntry {
    /// When (RFC 3339).
    pub at: String,
    /// `operator` or `director`.
    pub actor: String,
    /// `created`, `started`, `wave`, `paused`, `halted`, `resumed`, `cancelled`, `completed`.
    pub action: String,
    /// What and why.
    pub detail: String,
}

const CAMPAIGN_COLUMNS: &str = "id, name, spec, images, wave_sizes, state, wave, \
     wave_started_at, wave_met_at, reason, created_at, updated_at";

fn campaign_from(r: &AnyRow) -> Result<Campaign> {
    let state: String = get_str(r, "state")?;
    Ok(Campaign {
        id: get_i64(r, "id")?,
        name: get_str(r, "name")?,
        state: state.parse()?,
        wave: get_i64(r, "wave")?,
        wave_sizes: json_as(&get_str(r, "wave_sizes")?, "wave sizes")?,
        spec: json_as(&get_str(r, "spec")?, "campaign")?,
        images: json_as(&get_str(r, "images")?, "campaign images")?,
        wave_started_at: get_opt_str(r, "wave_started_at")?,
        wave_met_at: get_opt_str(r, "wave_met_at")?,
        reason: get_opt_str(r, "reason")?,
        created_at: get_str(r, "created_at")?,
        updated_at: get_str(r, "updated_at")?,
    })
}

fn wave_index(v: i64) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::Database(format!("stored wave {v} is negative")))
}

/// Reads.
impl Db {
    /// Every campaign, newest first.
    pub async fn campaigns(&self) -> Result<Vec<Campaign>> {
        let rows = sqlx::query(&format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns ORDER BY id DESC"
        ))
        .fetch_all(self.pool())
        .await
        .map_err(db_err("campaigns"))?;
        rows.iter().map(campaign_from).collect()
    }

    /// One campaign by name.
    pub async fn campaign(&self, name: &str) -> Result<Option<Campaign>> {
        let row = sqlx::query(&format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(self.pool())
        .await
        .map_err(db_err("campaign"))?;
        row.as_ref().map(campaign_from).transpose()
    }

    /// One campaign by ID.
    pub(super) async fn campaign_by_id(&self, id: i64) -> Result<Option<Campaign>> {
        let row = sqlx::query(&format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .map_err(db_err("campaign"))?;
        row.as_ref().map(campaign_from).transpose()
    }

    /// The IDs of running campaigns that update `vin`.
    pub(super) async fn running_campaigns_of(&self, vin: &str) -> Result<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT DISTINCT c.id AS id FROM campaign_members m JOIN campaigns c ON c.id = m.campaign_id \
             WHERE m.vin = $1 AND c.state = 'running'",
        )
        .bind(vin)
        .fetch_all(self.pool())
        .await
        .map_err(db_err("campaigns of a vehicle"))?;
        rows.iter().map(|r| get_i64(r, "id")).collect()
    }

    /// The IDs of running campaigns.
    pub(super) async fn running_campaigns(&self) -> Result<Vec<i64>> {
        let rows = sqlx::query("SELECT id FROM campaigns WHERE state = 'running' ORDER BY id")
            .fetch_all(self.pool())
            .await
            .map_err(db_err("running campaigns"))?;
        rows.iter().map(|r| get_i64(r, "id")).collect()
    }

    /// A page of the fleet for targeting a campaign (removed vehicles left out), in VIN order,
    /// at most `limit` vehicles after `after`. Campaign creation reads the whole fleet this
    /// way; the general vehicle read (`Db::vehicles`) also parses every ECU's public key and
    /// hashes, which targeting never looks at.
    pub(super) async fn fleet_page(&self, after: &str, limit: u32) -> Result<Vec<FleetVehicle>> {
        // Two range reads by primary key, the page and then its ECUs, rather than a join:
        // right after a bulk registration (before PostgreSQL's statistics catch up) the
        // join was planned as a scan of every ECU, 68 ms a page of 1,000 at 100,000 vehicles.
        let rows = sqlx::query(
            "SELECT vin, attributes, tags FROM vehicles \
             WHERE removed_at IS NULL AND vin > $1 ORDER BY vin LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
        .map_err(db_err("fleet page"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(FleetVehicle {
                vin: get_str(r, "vin")?,
                attributes: json_as(
                    get_opt_str(r, "attributes")?.as_deref().unwrap_or("{}"),
                    "attributes",
                )?,
                tags: json_as(get_opt_str(r, "tags")?.as_deref().unwrap_or("[]"), "tags")?,
                ecus: Vec::new(),
            });
        }
        let Some(last) = out.last().map(|v| v.vin.clone()) else {
            return Ok(out);
        };
        let index: std::collections::HashMap<String, usize> = out
            .iter()
            .enumerate()
            .map(|(i, v)| (v.vin.clone(), i))
            .collect();
        let rows = sqlx::query(
            "SELECT vin, ecu_id, hardware_id, encryption_key, installed_target, \
             installed_release_counter FROM ecus WHERE vin > $1 AND vin <= $2 \
             ORDER BY vin, ecu_id",
        )
        .bind(after)
        .bind(&last)
        .fetch_all(self.pool())
        .await
        .map_err(db_err("fleet page's ECUs"))?;
        for r in &rows {
            // ECUs of removed vehicles in the range have no vehicle in the page.
            let Some(v) = index.get(&get_str(r, "vin")?).and_then(|&i| out.get_mut(i)) else {
                continue;
            };
            let installed = match get_opt_str(r, "installed_target")? {
                Some(target) => Some((
                    target,
                    to_u64(get_opt_i64(r, "installed_release_counter")?.unwrap_or(0))?,
                )),
                None => None,
            };
            v.ecus.push(FleetEcu {
                ecu_id: get_str(r, "ecu_id")?,
                hardware_id: get_str(r, "hardware_id")?,
                installed,
                has_encryption_key: get_opt_str(r, "encryption_key")?.is_some(),
            });
        }
        Ok(out)
    }

    /// A campaign's members with their assignments' state, by wave and VIN.
    pub(super) async fn campaign_members(&self, id: i64) -> Result<Vec<MemberRow>> {
        self.campaign_members_upto(id, i64::MAX).await
    }

    /// The members of waves up to `max_wave` (what judging a campaign needs: its started
    /// waves and the next one — not the whole target set while the canaries report).
    ///
    /// A member's maintenance window (its vehicle's attribute) is read only for members
    /// awaiting an instruction, the only ones it is used for, in a second query that finds
    /// none once a wave is instructed: joining every member to its vehicle was two thirds of
    /// the members' query at 100,000 vehicles (PostgreSQL, 10,000 members: 24.5 → 8.4 ms).
    pub(super) async fn campaign_members_upto(
        &self,
        id: i64,
        max_wave: i64,
    ) -> Result<Vec<MemberRow>> {
        let rows = sqlx::query(
            "SELECT m.vin AS vin, m.ecu_id AS ecu_id, m.wave AS wave, m.target AS target, \
             m.assignment_id AS assignment_id, a.status AS status, a.last_error AS last_error, \
             a.stage AS stage \
             FROM campaign_members m LEFT JOIN assignments a ON a.id = m.assignment_id \
             WHERE m.campaign_id = $1 AND m.wave <= $2 ORDER BY m.wave, m.vin, m.ecu_id",
        )
        .bind(id)
        .bind(max_wave)
        .fetch_all(self.pool())
        .await
        .map_err(db_err("campaign members"))?;
        let mut members = rows
            .iter()
            .map(|r| {
                Ok(MemberRow {
                    vin: get_str(r, "vin")?,
                    ecu_id: get_str(r, "ecu_id")?,
                    wave: wave_index(get_i64(r, "wave")?)?,
                    target: get_str(r, "target")?,
                    assignment_id: get_opt_i64(r, "assignment_id")?,
                    status: get_opt_str(r, "status")?,
                    last_error: get_opt_str(r, "last_error")?,
                    stage: get_opt_str(r, "stage")?,
                    window: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if !members.iter().any(MemberRow::awaits_instruction) {
            return Ok(members);
        }
        let rows = sqlx::query(
            "SELECT DISTINCT v.vin AS vin, v.attributes AS attributes \
             FROM campaign_members m LEFT JOIN assignments a ON a.id = m.assignment_id \
             JOIN vehicles v ON v.vin = m.vin \
             WHERE m.campaign_id = $1 AND m.wave <= $2 \
             AND (m.assignment_id IS NULL OR a.status = 'withdrawn')",
        )
        .bind(id)
        .bind(max_wave)
        .fetch_all(self.pool())
        .await
        .map_err(db_err("campaign members' windows"))?;
        let mut windows = std::collections::HashMap::new();
        for r in &rows {
            let window = get_opt_str(r, "attributes")?
                .and_then(|a| {
                    serde_json::from_str::<std::collections::BTreeMap<String, String>>(&a).ok()
                })
                .and_then(|mut a| a.remove(crate::db::WINDOW_ATTRIBUTE));
            if let Some(window) = window {
                windows.insert(get_str(r, "vin")?, window);
            }
        }
        for m in members.iter_mut().filter(|m| m.awaits_instruction()) {
            m.window = windows.get(&m.vin).cloned();
        }
        Ok(members)
    }

    /// `(vin, ecu, campaign name)` of every ECU in a campaign that is running, paused or
    /// halted, other than `except`.
    pub(super) async fn active_members(
        &self,
        except: i64,
    ) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query(
            "SELECT m.vin AS vin, m.ecu_id AS ecu_id, c.name AS name FROM campaign_members m \
             JOIN campaigns c ON c.id = m.campaign_id \
             WHERE c.state IN ('running', 'paused', 'halted') AND c.id <> $1",
        )
        .bind(except)
        .fetch_all(self.pool())
        .await
        .map_err(db_err("active campaign members"))?;
        rows.iter()
            .map(|r| {
                Ok((
                    get_str(r, "vin")?,
                    get_str(r, "ecu_id")?,
                    get_str(r, "name")?,
                ))
            })
            .collect()
    }

    /// `(name, RXSWIN)` of the started campaigns that update `vin` and change its RXSWIN.
    pub(super) async fn rxswin_campaigns_of(
        &self,
        vin: &str,
    ) -> Result<Vec<(i64, String, String)>> {
        let rows = sqlx::query(
            "SELECT DISTINCT c.id AS id, c.name AS name, c.rxswin AS rxswin FROM campaign_members m \
             JOIN campaigns c ON c.id = m.campaign_id \
             WHERE m.vin = $1 AND c.rxswin IS NOT NULL AND c.state <> 'draft'",
        )
        .bind(vin)
        .fetch_all(self.pool())
        .await
        .map_err(db_err("campaigns changing an RXSWIN"))?;
        rows.iter()
            .map(|r| {
                Ok((
                    get_i64(r, "id")?,
                    get_str(r, "name")?,
                    get_str(r, "rxswin")?,
                ))
            })
            .collect()
    }

    /// The status of the assignment of each of `vin`'s ECUs in campaign `id` (`None`: not
    /// instructed yet).
    pub(super) async fn vehicle_statuses(&self, id: i64, vin: &str) -> Result<Vec<Option<String>>> {
        let rows = sqlx::query(
            "SELECT a.status AS status FROM campaign_members m \
             LEFT JOIN assignments a ON a.id = m.assignment_id \
             WHERE m.campaign_id = $1 AND m.vin = $2",
        )
        .bind(id)
        .bind(vin)
        .fetch_all(self.pool())
        .await
        .map_err(db_err("a vehicle's campaign progress"))?;
        rows.iter().map(|r| get_opt_str(r, "status")).collect()
    }

    /// A campaign's operations log, oldest first.
    pub async fn campaign_log(&self, id: i64) -> Result<Vec<LogEntry>> {
        let rows = sqlx::query(
            "SELECT at, actor, action, detail FROM campaign_log WHERE campaign_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await
        .map_err(db_err("campaign log"))?;
        rows.iter()
            .map(|r| {
                Ok(LogEntry {
                    at: get_str(r, "at")?,
                    actor: get_str(r, "actor")?,
                    action: get_str(r, "action")?,
                    detail: get_str(r, "detail")?,
                })
            })
            .collect()
    }
}

/// Writes (each in the caller's transaction).
pub(super) async fn begin(db: &Db) -> Result<Tx<'static>> {
    db.pool().begin().await.map_err(db_err("begin"))
}

pub(super) async fn commit(tx: Tx<'_>) -> Result<()> {
    tx.commit().await.map_err(db_err("commit"))
}

/// Inserts a draft campaign and its members. A name taken is a conflict.
pub(super) async fn insert_campaign(
    tx: &mut Tx<'_>,
    spec: &CampaignSpec,
    images: &[ReleaseImage],
    wave_sizes: &[u64],
    members: &[NewMember],
) -> Result<i64> {
    let now = now_text();
    let taken = sqlx::query("SELECT id FROM campaigns WHERE name = $1")
        .bind(&spec.name)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_err("campaign lookup"))?;
    if taken.is_some() {
        return Err(Error::Conflict(format!(
            "a campaign named {} exists already",
            spec.name
        )));
    }
    let row = sqlx::query(
        "INSERT INTO campaigns (name, spec, images, wave_sizes, state, wave, created_at, updated_at, rxswin) \
         VALUES ($1, $2, $3, $4, 'draft', -1, $5, $5, $6) RETURNING id",
    )
    .bind(&spec.name)
    .bind(to_json(spec))
    .bind(to_json(images))
    .bind(to_json(wave_sizes))
    .bind(&now)
    .bind(spec.rxswin.clone())
    .fetch_one(&mut **tx)
    .await
    .map_err(db_err("insert campaign"))?;
    let id = get_i64(&row, "id")?;
    // Many rows per statement: a campaign over 100,000 vehicles is 100,000 rows or more.
    for chunk in members.chunks(MEMBERS_PER_INSERT) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                let b = i * 4 + 2;
                format!("($1, ${b}, ${}, ${}, ${})", b + 1, b + 2, b + 3)
            })
            .collect();
        let sql = format!(
            "INSERT INTO campaign_members (campaign_id, vin, ecu_id, wave, target) VALUES {}",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(id);
        for m in chunk {
            q = q
                .bind(&m.vin)
                .bind(&m.ecu_id)
                .bind(to_i64(m.wave as u64)?)
                .bind(&m.target);
        }
        q.execute(&mut **tx)
            .await
            .map_err(db_err("insert campaign members"))?;
    }
    Ok(id)
}

/// Members inserted by one statement (4 values each and one more, 16,001, under every
/// backend's limit of bound parameters: SQLite 32,766): a statement per 500 made 200 round
/// trips of a 100,000-vehicle campaign.
const MEMBERS_PER_INSERT: usize = 4_000;

/// What the campaign tables keep as JSON text.
fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Appends to a campaign's operations log.
pub(super) async fn log(
    tx: &mut Tx<'_>,
    id: i64,
    actor: &str,
    action: &str,
    detail: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO campaign_log (campaign_id, at, actor, action, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(now_text())
    .bind(actor)
    .bind(action)
    .bind(detail)
    .execute(&mut **tx)
    .await
    .map_err(db_err("campaign log"))?;
    Ok(())
}

/// Moves a campaign from one of `from` to `to` (with a reason), if it is still in one of them.
/// `false`: another writer moved it first.
pub(super) async fn set_state(
    tx: &mut Tx<'_>,
    id: i64,
    from: &[State],
    to: State,
    reason: Option<&str>,
) -> Result<bool> {
    let from: Vec<String> = from.iter().map(|s| format!("'{}'", s.as_str())).collect();
    let done = sqlx::query(&format!(
        "UPDATE campaigns SET state = $1, reason = $2, updated_at = $3 WHERE id = $4 AND state IN ({})",
        from.join(", ")
    ))
    .bind(to.as_str())
    .bind(reason.map(str::to_owned))
    .bind(now_text())
    .bind(id)
    .execute(&mut **tx)
    .await
    .map_err(db_err("campaign state"))?;
    Ok(done.rows_affected() == 1)
}

/// Locks a campaign's row for the caller's transaction if it is still running (`false`:
/// another writer paused, halted or ended it meanwhile). Changes nothing else.
pub(super) async fn lock_running(tx: &mut Tx<'_>, id: i64) -> Result<bool> {
    let done =
        sqlx::query("UPDATE campaigns SET updated_at = $1 WHERE id = $2 AND state = 'running'")
            .bind(now_text())
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(db_err("lock campaign"))?;
    Ok(done.rows_affected() == 1)
}

/// Starts wave `to` of a running campaign whose latest started wave is still `from`.
pub(super) async fn start_wave(tx: &mut Tx<'_>, id: i64, from: i64, to: i64) -> Result<bool> {
    let now = now_text();
    let done = sqlx::query(
        "UPDATE campaigns SET wave = $1, wave_started_at = $2, wave_met_at = NULL, updated_at = $2 \
         WHERE id = $3 AND wave = $4 AND state = 'running'",
    )
    .bind(to)
    .bind(&now)
    .bind(id)
    .bind(from)
    .execute(&mut **tx)
    .await
    .map_err(db_err("start wave"))?;
    Ok(done.rows_affected() == 1)
}

/// Notes when the current wave met its success criterion (once).
pub(super) async fn wave_met(db: &Db, id: i64, wave: i64, at: &str) -> Result<()> {
    sqlx::query(
        "UPDATE campaigns SET wave_met_at = $1 WHERE id = $2 AND wave = $3 AND wave_met_at IS NULL",
    )
    .bind(at)
    .bind(id)
    .bind(wave)
    .execute(db.pool())
    .await
    .map_err(db_err("wave met"))?;
    Ok(())
}

/// How many members [`instruct`] makes assignments for in one round of statements. Large,
/// because PostgreSQL matches a batch against the whole table (a hash join over every
/// member or assignment), so the number of batches is what costs: 500 a batch made a
/// 100,000-vehicle wave 200 scans of each table. Bounded by the largest statement, the
/// insert: 9 parameters a row and one more, 31,501 here, under SQLite's limit of 32,766
/// (PostgreSQL's is 65,535).
const INSTRUCT_CHUNK: usize = 3_500;

/// Makes the assignments of members (their instructions), each only if the member still has
/// the instruction it was read with (none, or one a halt took back): of two evaluations
/// racing, the second finds the members claimed and makes nothing for them. Returns the
/// members instructed, by (VIN, ECU).
///
/// Four statements for up to [`INSTRUCT_CHUNK`] members (claim and link, supersede, insert,
/// mark the vehicles' instructions changed) instead of five per member: a wave over a whole
/// fleet is 100,000 members, and its time was the statements' round trips, then the two
/// updates of every member row (claimed, then linked to the assignment made), now one.
pub(super) async fn instruct(
    tx: &mut Tx<'_>,
    id: i64,
    members: &[(&MemberRow, Assignment)],
) -> Result<BTreeSet<(String, String)>> {
    let mut made = BTreeSet::new();
    for chunk in members.chunks(INSTRUCT_CHUNK) {
        made.extend(instruct_chunk(tx, id, chunk).await?);
    }
    Ok(made)
}

/// `VALUES` placeholders: `rows` tuples of `width` parameters from `$first` on, each ending
/// with `tail` (values every row shares, such as `, 'pending', $1`).
fn values(rows: usize, width: usize, first: usize, tail: &str) -> String {
    (0..rows)
        .map(|r| {
            let row: Vec<String> = (0..width)
                .map(|c| format!("${}", first + r * width + c))
                .collect();
            format!("({}{tail})", row.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn instruct_chunk(
    tx: &mut Tx<'_>,
    id: i64,
    members: &[(&MemberRow, Assignment)],
) -> Result<BTreeSet<(String, String)>> {
    if members.is_empty() {
        return Ok(BTreeSet::new());
    }
    let now = now_text();
    // Claim: the member as read (no assignment, or the withdrawn one; ids are positive), and
    // its new assignment's ID, given here so that each member row is updated once. PostgreSQL
    // draws IDs from the table's sequence (shared with every other writer of assignments);
    // SQLite, which holds its one writer's lock for the statement, numbers on from the
    // highest ID it ever gave (AUTOINCREMENT's counter, or the highest row).
    let new_id = if crate::db::Backend::of(tx) == crate::db::Backend::Postgres {
        "nextval(pg_get_serial_sequence('assignments', 'id'))"
    } else {
        "(SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'assignments'), 0), \
          COALESCE((SELECT MAX(id) FROM assignments), 0))) + v.column4"
    };
    let sql = format!(
        "UPDATE campaign_members SET instructed_at = $1, assignment_id = {new_id} \
         FROM (VALUES {}) AS v \
         WHERE campaign_members.campaign_id = $2 AND campaign_members.vin = v.column1 \
         AND campaign_members.ecu_id = v.column2 \
         AND COALESCE(campaign_members.assignment_id, -1) = v.column3 \
         RETURNING campaign_members.vin AS vin, campaign_members.ecu_id AS ecu_id, \
         campaign_members.assignment_id AS assignment_id",
        values(members.len(), 4, 3, "")
    );
    let mut q = sqlx::query(&sql).bind(&now).bind(id);
    for (k, (m, _)) in (1_i64..).zip(members) {
        q = q
            .bind(&m.vin)
            .bind(&m.ecu_id)
            .bind(m.assignment_id.unwrap_or(-1))
            .bind(k);
    }
    let claimed: BTreeMap<(String, String), i64> = q
        .fetch_all(&mut **tx)
        .await
        .map_err(db_err("claim campaign members"))?
        .iter()
        .map(|r| {
            Ok((
                (get_str(r, "vin")?, get_str(r, "ecu_id")?),
                get_i64(r, "assignment_id")?,
            ))
        })
        .collect::<Result<_>>()?;
    let mine: Vec<(i64, &Assignment)> = members
        .iter()
        .filter_map(|(m, a)| {
            claimed
                .get(&(m.vin.clone(), m.ecu_id.clone()))
                .map(|assignment_id| (*assignment_id, a))
        })
        .collect();
    if mine.is_empty() {
        return Ok(claimed.into_keys().collect());
    }
    // Supersede what else is pending for these ECUs (see `Db::insert_assignment`).
    let sql = format!(
        "UPDATE assignments SET status = 'superseded' \
         WHERE status = 'pending' AND (vin, ecu_id) IN (VALUES {})",
        values(mine.len(), 2, 1, "")
    );
    let mut q = sqlx::query(&sql);
    for (_, a) in &mine {
        q = q.bind(&a.vin).bind(&a.ecu_id);
    }
    q.execute(&mut **tx).await.map_err(db_err("supersede"))?;
    let sql = format!(
        "INSERT INTO assignments (id, vin, ecu_id, target, length, hashes, release_counter, \
         encrypt, maintenance_window, status, created_at) VALUES {}",
        values(mine.len(), 9, 2, ", 'pending', $1")
    );
    let mut q = sqlx::query(&sql).bind(&now);
    for (assignment_id, a) in &mine {
        q = bind_instruction(q.bind(*assignment_id), a)?.bind(a.maintenance_window.clone());
    }
    q.execute(&mut **tx)
        .await
        .map_err(db_err("insert assignments"))?;
    let vins: BTreeSet<&str> = mine.iter().map(|(_, a)| a.vin.as_str()).collect();
    Db::mark_many_instructions_changed(tx, vins).await?;
    Ok(claimed.into_keys().collect())
}

/// Takes a pending instruction back; the director re-signs the vehicle's targets without it.
/// `false`: it was no longer pending, or its ECU started installing it meanwhile.
pub(super) async fn withdraw(tx: &mut Tx<'_>, assignment: i64, vin: &str) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE assignments SET status = 'withdrawn', completed_at = $1 WHERE id = $2 AND status = 'pending' \
         AND (stage IS NULL OR stage <> 'installing' OR last_error IS NOT NULL)",
    )
    .bind(now_text())
    .bind(assignment)
    .execute(&mut **tx)
    .await
    .map_err(db_err("withdraw assignment"))?;
    if done.rows_affected() == 1 {
        Db::mark_instructions_changed(tx, vin).await?;
        return Ok(true);
    }
    Ok(false)
}

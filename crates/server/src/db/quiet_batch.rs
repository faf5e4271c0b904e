//! The common check-in on PostgreSQL — no report that could complete a pending assignment,
//! no event and no progress in the manifest — in one statement, and the ones that arrive
//! together in one statement a batch: the manifest counter moves, the ECU reports are stored
//! and the manifest is kept, or nothing happens at all.
//!
//! Why: a check-in's cost on PostgreSQL is mostly per statement (each a wake-up of the
//! backend and a hand-off through sqlx), not per row (`db::batch`), and the general path
//! ([`super::Db::record_checkin`]) needs five for this case (begin, counter, reports,
//! manifest, commit). Data-modifying `WITH` clauses make it one statement, which is its own
//! transaction; the check-ins that arrive while the previous batch is being written go in the
//! next one. SQLite has no data-modifying `WITH`, and its statements cost no network round
//! trip; it keeps the general path (in shared transactions, `db::group_commit`).
//!
//! The guarantees are the general path's, for each vehicle of a batch: the counter moves only
//! above the stored one and only for a vehicle in service, under the row's lock (a concurrent
//! copy re-checks the moved row and finds it moved), reports only above their own counters
//! and only if the counter moved, the manifest is kept with them, and the statement is durable
//! before any check-in of it is answered. A batch holds one check-in per vehicle: a second
//! copy of a vehicle's manifest arriving with it (a replay racing its original) is stored
//! alone after the batch, so it meets the moved counter. A check-in stored alone is the same
//! statement with one row: the rules are written once.
//!
//! Anything else — a replay, a removed vehicle, a report naming a pending assignment's ECU and
//! target (it may complete it), an event to record — finds no row to move, gets `None`, and
//! its caller takes the general path, which decides and names the rule. If a batch statement
//! fails (a deadlock with another instance's batch, a lost connection), nothing of it was
//! stored, and each check-in is stored alone.
//!
//! The statement also returns each vehicle's stored director documents, as they were when it
//! ran: a quiet check-in changes no instruction, so they are what the director answers with
//! (or re-signs) next, and reading them costs no further round trip.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;
use sqlx::{Any, AnyPool};

use super::batch::{Batches, OwnedCheckin};
use super::byte_runs::{self, ByteRuns};
use super::held::Held;
use super::{db_err, get_str, json_text, now_text, stored_role, to_i64, Checkin, DirectorRoles};
use crate::error::{Error, Result};

/// At most this many check-ins in one statement: a batch is whatever arrived while the
/// previous one was being written, so this only bounds a burst.
const MAX_BATCH: usize = 64;

/// What a quiet check-in did: `None` if nothing (take the general path), else the ECUs whose
/// reports were stored and the vehicle's director documents.
pub(super) type Quiet = Option<(BTreeSet<String>, DirectorRoles)>;

/// The writer the database's users share (`db::batch`).
///
/// One writer, one batch at a time: with two, batches held 2.8 check-ins on average instead
/// of 6 and a check-in cost more CPU (1.07 against 0.97 ms, the check-in measure).
#[derive(Debug, Clone)]
pub(super) struct QuietBatches {
    held: Held,
    batches: Batches<OwnedCheckin, Result<Quiet>>,
}

impl QuietBatches {
    /// Starts the writer on the current Tokio runtime.
    pub(super) fn start(pool: AnyPool) -> Self {
        let held = Held::new(pool);
        let writer = held.clone();
        let batches = Batches::start(MAX_BATCH, move |jobs| write(writer.clone(), jobs));
        QuietBatches { held, batches }
    }

    /// Stores `checkin` if it is quiet, in the next batch: `None` if it moved nothing, for
    /// the caller to take the general path. A check-in that JSON cannot carry to PostgreSQL
    /// (see [`batchable`]) goes the general path at once; one whose writer is gone (its
    /// runtime ended) is stored alone.
    pub(super) async fn record(&self, checkin: &Checkin<'_>) -> Result<Quiet> {
        if !batchable(checkin) {
            return Ok(None);
        }
        match self.batches.run(OwnedCheckin::from(checkin)).await {
            Some(answer) => answer,
            None => alone(self.held.pool(), &OwnedCheckin::from(checkin)).await,
        }
    }
}

/// Stores a batch: the first check-in of each vehicle together (on the writer's held
/// connection, `db::held`), then each further copy alone, so that it meets the counter the
/// first one moved. Answers in the batch's order.
async fn write(held: Held, batch: Vec<OwnedCheckin>) -> Vec<Result<Quiet>> {
    let pool = held.pool();
    let mut vins = HashSet::new();
    let first: Vec<bool> = batch.iter().map(|job| vins.insert(&job.vin)).collect();
    let together: Vec<&OwnedCheckin> = batch
        .iter()
        .zip(&first)
        .filter_map(|(job, &first)| first.then_some(job))
        .collect();
    tracing::trace!(
        check_ins = together.len(),
        alone = batch.len().saturating_sub(together.len()),
        "batch of quiet check-ins"
    );
    let mut stored = store(&held, &together).await.into_iter();
    let mut answers = Vec::with_capacity(batch.len());
    for (job, first) in batch.iter().zip(first) {
        answers.push(if first {
            stored
                .next()
                .unwrap_or_else(|| Err(Error::Database("check-in left unanswered".into())))
        } else {
            alone(pool, job).await
        });
    }
    answers
}

/// One check-in stored by itself: the batch statement with one row.
async fn alone(pool: &AnyPool, job: &OwnedCheckin) -> Result<Quiet> {
    let mut answers = together(pool, &[job]).await?.into_iter();
    Ok(answers.next().flatten())
}

/// A row of the check-ins of a batch, as the statement reads them; its manifest is in the
/// batch's [`ByteRuns`] at `start`, `length` bytes.
#[derive(Serialize)]
struct CheckinRow<'a> {
    vin: &'a str,
    counter: i64,
    nonce: &'a str,
    start: i64,
    length: i64,
}

/// A row of the ECU reports of a batch; its image's name and hashes (the longest text of a
/// report, the hashes a JSON object) are in the batch's [`ByteRuns`].
#[derive(Serialize)]
struct ReportRow<'a> {
    vin: &'a str,
    ecu_id: &'a str,
    target_start: i64,
    target_length: i64,
    length: i64,
    hashes_start: i64,
    hashes_length: i64,
    release_counter: i64,
    report_counter: i64,
}

/// The batch statement: the check-ins and their reports come as two JSON arrays and their
/// long text (manifests, image names and hashes) as bytes (`db::byte_runs`), so that its
/// text is the same for every batch (prepared once per connection).
const STATEMENT: &str = concat!(
    "\
WITH input AS (SELECT * FROM json_to_recordset($1::json) \
    AS t(vin TEXT, counter BIGINT, nonce TEXT, start BIGINT, length BIGINT)), \
  rin AS (SELECT r.vin, r.ecu_id, ",
    byte_runs::sql!("$4", "r.target_start", "r.target_length"),
    " AS target, r.length, ",
    byte_runs::sql!("$4", "r.hashes_start", "r.hashes_length"),
    " AS hashes, r.release_counter, r.report_counter \
    FROM json_to_recordset($2::json) \
    AS r(vin TEXT, ecu_id TEXT, target_start BIGINT, target_length BIGINT, length BIGINT, \
         hashes_start BIGINT, hashes_length BIGINT, release_counter BIGINT, \
         report_counter BIGINT)), \
  moved AS (UPDATE vehicles v SET last_manifest_counter = i.counter, last_seen = $3 \
    FROM input i \
    WHERE v.vin = ANY (ARRAY(SELECT vin FROM input)) AND v.vin = i.vin AND v.removed_at IS NULL \
    AND (v.last_manifest_counter IS NULL OR v.last_manifest_counter < i.counter) \
    AND NOT EXISTS (SELECT 1 FROM assignments a JOIN rin r \
      ON r.vin = a.vin AND r.ecu_id = a.ecu_id AND r.target = a.target \
      WHERE a.vin = i.vin AND a.status = 'pending') \
    RETURNING v.vin), \
  reports AS (UPDATE ecus e SET installed_target = r.target, installed_length = r.length, \
      installed_hashes = r.hashes, installed_release_counter = r.release_counter, \
      last_report_counter = r.report_counter \
    FROM rin r \
    WHERE e.vin = ANY (ARRAY(SELECT vin FROM moved)) AND e.vin = r.vin AND e.ecu_id = r.ecu_id \
    AND (e.last_report_counter IS NULL OR e.last_report_counter < r.report_counter) \
    RETURNING e.vin, e.ecu_id), \
  kept AS (INSERT INTO manifests (vin, counter, nonce, received_at, document, quiet) \
    SELECT i.vin, i.counter, i.nonce, $3, ",
    byte_runs::sql!("$4", "i.start", "i.length"),
    ", \
      TRUE FROM input i \
    WHERE i.vin IN (SELECT vin FROM moved) RETURNING vin) \
SELECT 'moved' AS kind, vin, NULL AS name, NULL AS role, NULL::BIGINT AS version, \
  NULL AS expires_at, NULL AS content_digest, NULL AS document FROM kept \
UNION ALL SELECT 'report', vin, ecu_id, NULL, NULL, NULL, NULL, NULL FROM reports \
UNION ALL SELECT 'role', d.vin, d.role, d.role, d.version, d.expires_at, d.content_digest, \
  d.document FROM director_roles d WHERE d.vin = ANY (ARRAY(SELECT vin FROM kept))"
);

/// Stores a batch (one check-in per vehicle) in one statement; one answer per check-in, in
/// order. If the statement fails, nothing of it was stored, and each is stored alone.
async fn store(held: &Held, batch: &[&OwnedCheckin]) -> Vec<Result<Quiet>> {
    let mut lease = held.lease().await;
    let stored = match lease.conn().await {
        Ok(conn) => together(conn, batch).await,
        Err(e) => Err(db_err("batch of quiet check-ins")(e)),
    };
    match stored {
        Ok(answers) => answers.into_iter().map(Ok).collect(),
        Err(e) => {
            lease.failed().await;
            drop(lease);
            let pool = held.pool();
            tracing::debug!(error = %e, check_ins = batch.len(), "batch of quiet check-ins failed; storing each alone");
            let mut answers = Vec::with_capacity(batch.len());
            for job in batch {
                answers.push(alone(pool, job).await);
            }
            answers
        }
    }
}

async fn together<'e, E>(db: E, batch: &[&OwnedCheckin]) -> Result<Vec<Quiet>>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let mut checkins = Vec::with_capacity(batch.len());
    let mut reports = Vec::new();
    let mut texts = ByteRuns::with_capacity(batch.iter().map(|job| job.document.len()).sum());
    for job in batch {
        let document = texts.push(&job.document)?;
        checkins.push(CheckinRow {
            vin: &job.vin,
            counter: to_i64(job.counter)?,
            nonce: &job.nonce,
            start: document.start,
            length: document.length,
        });
        for r in &job.reports {
            let target = texts.push(&r.installed.target)?;
            let hashes = texts.push_json(&r.installed.hashes)?;
            reports.push(ReportRow {
                vin: &job.vin,
                ecu_id: &r.ecu_id,
                target_start: target.start,
                target_length: target.length,
                length: to_i64(r.installed.length)?,
                hashes_start: hashes.start,
                hashes_length: hashes.length,
                release_counter: to_i64(r.installed.release_counter)?,
                report_counter: to_i64(r.report_counter)?,
            });
        }
    }
    let rows = sqlx::query(STATEMENT)
        .bind(json_text(&checkins, "batch of quiet check-ins")?)
        .bind(json_text(&reports, "batch of quiet check-ins")?)
        .bind(now_text())
        .bind(texts.into_bytes())
        .fetch_all(db)
        .await
        .map_err(db_err("batch of quiet check-ins"))?;
    let mut moved = HashSet::new();
    let mut stored: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut roles: BTreeMap<String, DirectorRoles> = BTreeMap::new();
    for row in &rows {
        let vin = get_str(row, "vin")?;
        match get_str(row, "kind")?.as_str() {
            "moved" => {
                moved.insert(vin);
            }
            "role" => roles.entry(vin).or_default().put(stored_role(row)?),
            _ => {
                stored.entry(vin).or_default().insert(get_str(row, "name")?);
            }
        }
    }
    Ok(batch
        .iter()
        .map(|job| {
            moved.contains(&job.vin).then(|| {
                (
                    stored.remove(&job.vin).unwrap_or_default(),
                    roles.remove(&job.vin).unwrap_or_default(),
                )
            })
        })
        .collect())
}

/// Whether a check-in can go in the statement: PostgreSQL's JSON cannot carry a NUL
/// character, so a check-in with one in a field the statement reads takes the general path
/// (where PostgreSQL refuses it as before), instead of failing the batch of every vehicle it
/// arrived with. The director never sends one (manifest verification refuses a NUL in
/// anything a vehicle signs, with an event); this keeps the database layer safe by itself.
fn batchable(checkin: &Checkin<'_>) -> bool {
    let clean = |s: &str| !s.contains('\0');
    clean(checkin.vin)
        && clean(checkin.nonce)
        && clean(checkin.document)
        && checkin
            .reports
            .iter()
            .all(|r| clean(&r.ecu_id) && clean(&r.installed.target))
}

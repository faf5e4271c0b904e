//! The common check-in on PostgreSQL in one statement: no report that could complete a
//! pending assignment, no event and no progress in the manifest — the manifest counter
//! moves, the ECU reports are stored and the manifest is kept, or nothing happens at all.
//!
//! Why: a check-in's cost on PostgreSQL is mostly round trips (each a wake-up of the backend
//! and a hand-off through sqlx), and the general path ([`super::Db::record_checkin`]) needs
//! five for this case (begin, counter, reports, manifest, commit). Data-modifying `WITH`
//! clauses make it one statement, which is its own transaction, so the guarantees are the
//! general path's: the counter is compared and moved under the row's lock (a concurrent copy
//! of the manifest re-checks it and finds it moved), the reports are stored only if the
//! counter moved, and the commit is durable before the answer. SQLite has no data-modifying
//! `WITH`, and its statements cost no network round trip; it keeps the general path.
//!
//! Anything else — a replay, a removed vehicle, a report naming a pending assignment's ECU
//! and target (it may complete it), an event to record — finds no row to move and goes the
//! general way, which decides and names the rule.
//!
//! The same statement returns the vehicle's stored director documents, as they were when it
//! ran: a quiet check-in changes no instruction, so they are what the director answers with
//! (or re-signs) next, and reading them costs no further round trip.

use std::collections::BTreeSet;

use sqlx::AnyPool;

use super::{
    bind_reports, db_err, get_str, reports_update, stored_role, to_i64, Checkin, DirectorRoles,
};
use crate::error::Result;

/// What a quiet check-in did: `None` if it did nothing (take the general path), else the ECUs
/// whose reports were stored and the vehicle's director documents.
pub(super) async fn record(
    pool: &AnyPool,
    checkin: &Checkin<'_>,
    now: &str,
) -> Result<Option<(BTreeSet<String>, DirectorRoles)>> {
    // $1 counter, $2 now, $3 VIN, $4 nonce, $5 document; the reports from $6 on.
    let reports = if checkin.reports.is_empty() {
        String::new()
    } else {
        format!(
            ", reports AS ({} AND EXISTS (SELECT 1 FROM moved) RETURNING ecu_id)",
            reports_update(checkin.reports.len(), 6, 3)
        )
    };
    let returned = if checkin.reports.is_empty() {
        ""
    } else {
        " UNION ALL SELECT 'report', ecu_id, NULL, NULL, NULL, NULL, NULL FROM reports"
    };
    // A pending assignment that a report names (ECU and target) may be completed by it: the
    // general path decides. Pending assignments the reports do not name stay as they are — a
    // vehicle waiting for its owner's consent or its maintenance window checks in quietly.
    let completes = if checkin.reports.is_empty() {
        String::new()
    } else {
        let named: Vec<String> = (0..checkin.reports.len())
            .map(|k| format!("(${}, ${})", 6 + 6 * k, 7 + 6 * k))
            .collect();
        format!(
            "AND NOT EXISTS (SELECT 1 FROM assignments WHERE vin = $3 AND status = 'pending' \
             AND (ecu_id, target) IN (VALUES {})) ",
            named.join(", ")
        )
    };
    let sql = format!(
        "WITH moved AS (\
           UPDATE vehicles SET last_manifest_counter = $1, last_seen = $2 \
           WHERE vin = $3 AND removed_at IS NULL \
           AND (last_manifest_counter IS NULL OR last_manifest_counter < $1) \
           {completes}RETURNING vin)\
         {reports}, \
         kept AS (INSERT INTO manifests (vin, counter, nonce, received_at, document) \
           SELECT vin, $1, $4, $2, $5 FROM moved RETURNING vin) \
         SELECT 'moved' AS kind, vin AS name, NULL AS role, NULL::BIGINT AS version,            NULL AS expires_at, NULL AS content_digest, NULL AS document FROM kept{returned}          UNION ALL SELECT 'role', role, role, version, expires_at, content_digest, document            FROM director_roles WHERE vin = $3 AND EXISTS (SELECT 1 FROM kept)"
    );
    let q = sqlx::query(&sql)
        .bind(to_i64(checkin.counter)?)
        .bind(now)
        .bind(checkin.vin)
        .bind(checkin.nonce)
        .bind(checkin.document);
    let rows = bind_reports(q, &checkin.reports)?
        .fetch_all(pool)
        .await
        .map_err(db_err("quiet check-in"))?;
    let mut moved = false;
    let mut stored = BTreeSet::new();
    let mut roles = DirectorRoles::default();
    for row in &rows {
        match get_str(row, "kind")?.as_str() {
            "moved" => moved = true,
            "role" => roles.put(stored_role(row)?),
            _ => {
                stored.insert(get_str(row, "name")?);
            }
        }
    }
    Ok(moved.then_some((stored, roles)))
}

//! A vehicle's re-signed director documents stored on PostgreSQL in one statement.
//!
//! Why: a vehicle's first contact after new instructions (every vehicle of a wave, the storm
//! after an outage) stores its re-signed targets, snapshot and timestamp. As a transaction
//! that was five statements (begin, one write per role, commit), each a round trip and a
//! wake-up of the backend, in a check-in of nine; data-modifying `WITH` clauses make it one.
//! SQLite keeps the transaction (its statements cost no round trip, and it has no
//! data-modifying `WITH`).
//!
//! The rules are the transaction's, all or nothing: a role with a previous version is
//! replaced only if that version is still stored (and, for the targets when a digest is
//! given, only if the stored instructions are still the ones read); a role without one is
//! inserted only if absent. The statement counts what it wrote and, if that is not every
//! role, fails with a division by zero — PostgreSQL then undoes all of it, as the
//! transaction's rollback did — which is answered as "lost the race" (`false`), the same
//! answer as before. PostgreSQL's log shows such a race as `ERROR: division by zero` on this
//! statement: two instances signing one vehicle at once, not a fault (docs/deployment.md).

use serde::Serialize;
use sqlx::AnyPool;

use super::byte_runs::{self, ByteRuns};
use super::{db_err, json_text, to_i64, StoredRole};
use crate::error::Result;

/// The statement: `$1` the roles (JSON), `$2` the VIN, `$3` the targets' digest that must
/// still be stored ('' for none), `$4` how many roles must be written, `$5` their documents
/// (`db::byte_runs`).
const STATEMENT: &str = concat!("\
WITH input AS (SELECT t.role, t.previous, t.version, t.expires_at, t.content_digest, ",
    byte_runs::sql!("$5", "t.start", "t.length"), " AS document \
    FROM json_to_recordset($1::json) AS t(role TEXT, previous BIGINT, \
    version BIGINT, expires_at TEXT, content_digest TEXT, start BIGINT, length BIGINT)), \
  updated AS (UPDATE director_roles d SET version = i.version, expires_at = i.expires_at, \
    content_digest = i.content_digest, document = i.document FROM input i \
    WHERE d.vin = $2 AND d.role = i.role AND i.previous IS NOT NULL AND d.version = i.previous \
    AND (i.role <> 'targets' OR $3 = '' OR d.content_digest = $3) RETURNING d.role), \
  inserted AS (INSERT INTO director_roles (vin, role, version, expires_at, content_digest, document) \
    SELECT $2, i.role, i.version, i.expires_at, i.content_digest, i.document FROM input i \
    WHERE i.previous IS NULL ON CONFLICT (vin, role) DO NOTHING RETURNING role) \
SELECT 1 / (CASE WHEN (SELECT count(*) FROM updated) + (SELECT count(*) FROM inserted) = $4 \
  THEN 1 ELSE 0 END) AS written");

/// PostgreSQL's `division_by_zero`: the statement's "not every role was written".
const NOT_ALL_WRITTEN: &str = "22012";

/// One role as the statement reads it.
#[derive(Serialize)]
struct Row<'a> {
    role: &'a str,
    previous: Option<i64>,
    version: i64,
    expires_at: &'a str,
    content_digest: &'a str,
    start: i64,
    length: i64,
}

/// Stores `roles` of `vin` (each with the version it replaces, or `None` to insert), all or
/// nothing; `false` if another writer got there first (see the module documentation).
pub(super) async fn replace(
    pool: &AnyPool,
    vin: &str,
    targets_digest: Option<&str>,
    roles: &[(Option<u64>, StoredRole)],
) -> Result<bool> {
    let mut documents = ByteRuns::with_capacity(roles.iter().map(|(_, r)| r.document.len()).sum());
    let rows = roles
        .iter()
        .map(|(previous, r)| {
            let document = documents.push(&r.document)?;
            Ok(Row {
                role: &r.role,
                previous: previous.map(to_i64).transpose()?,
                version: to_i64(r.version)?,
                expires_at: &r.expires_at,
                content_digest: &r.content_digest,
                start: document.start,
                length: document.length,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let json = json_text(&rows, "director roles")?;
    let written = sqlx::query(STATEMENT)
        .bind(json)
        .bind(vin)
        .bind(targets_digest.unwrap_or(""))
        .bind(to_i64(roles.len() as u64)?)
        .bind(documents.into_bytes())
        .execute(pool)
        .await;
    match written {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(NOT_ALL_WRITTEN) => Ok(false),
        Err(e) => Err(db_err("write director roles")(e)),
    }
}

//! PostgreSQL reads the director documents of the vehicles whose requests arrive together in
//! one statement (`db::batch`): every check-in's `GET …/timestamp.json` reads them, so this
//! is half of a quiet check-in's statements. A batch's read is as fresh as one of its own:
//! it runs after every request of it arrived.

use std::collections::BTreeMap;

use sqlx::{Any, AnyPool};

use super::batch::{same, Batches};
use super::held::Held;
use super::{db_err, get_str, json_text, stored_role, DirectorRoles};
use crate::error::Result;

/// At most this many vehicles in one read.
const MAX_BATCH: usize = 64;

/// The reader the database's users share.
#[derive(Debug, Clone)]
pub(super) struct RoleReads {
    batches: Batches<String, Result<DirectorRoles>>,
}

impl RoleReads {
    /// Starts the reader on the current Tokio runtime.
    pub(super) fn start(pool: AnyPool) -> Self {
        let held = Held::new(pool);
        let batches = Batches::start(MAX_BATCH, move |vins| read(held.clone(), vins));
        RoleReads { batches }
    }

    /// The director documents of `vin`; `None` if the reader is gone (its runtime ended) or
    /// the VIN cannot travel in JSON to PostgreSQL (a NUL), for the caller to read them alone.
    pub(super) async fn of(&self, vin: &str) -> Option<Result<DirectorRoles>> {
        if vin.contains('\0') {
            return None;
        }
        self.batches.run(vin.to_owned()).await
    }
}

/// Reads a batch on the reader's held connection (`db::held`).
async fn read(held: Held, vins: Vec<String>) -> Vec<Result<DirectorRoles>> {
    let mut lease = held.lease().await;
    let read = match lease.conn().await {
        Ok(conn) => together(conn, &vins).await,
        Err(e) => Err(db_err("director roles")(e)),
    };
    if read.is_err() {
        lease.failed().await;
    }
    match read {
        Ok(mut roles) => vins
            .iter()
            .map(|vin| Ok(roles.get_mut(vin).map(std::mem::take).unwrap_or_default()))
            .collect(),
        Err(e) => vins.iter().map(|_| Err(same(&e))).collect(),
    }
}

async fn together<'e, E>(db: E, vins: &[String]) -> Result<BTreeMap<String, DirectorRoles>>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let list = json_text(vins, "director roles")?;
    // `= ANY (ARRAY(…))`, not `IN (SELECT …)`: over a set-returning function the planner
    // guessed a hash join and scanned the whole table for every batch (check-ins fell from
    // about 1,700 to 1,300/s); an array is looked up in the primary key's index.
    let rows = sqlx::query(
        "SELECT vin, role, version, expires_at, content_digest, document FROM director_roles \
         WHERE vin = ANY (ARRAY(SELECT json_array_elements_text($1::json)))",
    )
    .bind(list)
    .fetch_all(db)
    .await
    .map_err(db_err("director roles"))?;
    let mut out: BTreeMap<String, DirectorRoles> = BTreeMap::new();
    for r in &rows {
        out.entry(get_str(r, "vin")?)
            .or_default()
            .put(stored_role(r)?);
    }
    Ok(out)
}

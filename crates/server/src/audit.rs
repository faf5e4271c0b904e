//! The audit log: every state change made by a person (from the console or the admin API's
//! user commands) or by the V-SOC's own responses — who, what, on what, when. Shown in the
//! console; never edited, only appended.

use serde::{Deserialize, Serialize};

use crate::db::{db_err, get_i64, get_str, now_text, Db};
use crate::error::Result;

/// One entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Entry {
    /// ID (increasing).
    pub id: i64,
    /// When (RFC 3339).
    pub at: String,
    /// Who: a console user's name, `admin-token` for the admin API, `v-soc` for the engine.
    pub actor: String,
    /// What (`campaign.pause`, `incident.acknowledge`, `vehicle.quarantine`, `user.add`, …).
    pub action: String,
    /// On what (a campaign, an incident number, a VIN, a user).
    pub subject: String,
    /// Why, or what came of it.
    pub detail: String,
}

/// The actor name of the V-SOC engine's own responses.
pub const VSOC: &str = "v-soc";

/// Appends an entry.
pub async fn record(db: &Db, actor: &str, action: &str, subject: &str, detail: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(now_text())
    .bind(actor)
    .bind(action)
    .bind(subject)
    .bind(detail)
    .execute(db.pool())
    .await
    .map_err(db_err("audit log"))?;
    tracing::info!(%actor, %action, %subject, %detail, "audit");
    Ok(())
}

/// The newest `limit` entries, newest first (optionally of one actor).
pub async fn entries(db: &Db, actor: Option<&str>, limit: u32) -> Result<Vec<Entry>> {
    let rows = sqlx::query(
        "SELECT id, at, actor, action, subject, detail FROM audit_log \
         WHERE ($1 = '' OR actor = $1) ORDER BY id DESC LIMIT $2",
    )
    .bind(actor.unwrap_or(""))
    .bind(i64::from(limit.clamp(1, 10_000)))
    .fetch_all(db.pool())
    .await
    .map_err(db_err("audit log"))?;
    rows.iter()
        .map(|r| {
            Ok(Entry {
                id: get_i64(r, "id")?,
                at: get_str(r, "at")?,
                actor: get_str(r, "actor")?,
                action: get_str(r, "action")?,
                subject: get_str(r, "subject")?,
                detail: get_str(r, "detail")?,
            })
        })
        .collect()
}

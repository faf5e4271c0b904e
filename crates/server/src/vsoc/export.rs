//! Incidents and security events out to a SIEM.
//!
//! - Pull: `GET /api/v1/export` (and `rampart admin export`) answers JSON lines — one
//!   incident or event per line, `{"type": "incident"|"event", …}` — from an event ID on.
//! - Push: with `[vsoc.export] webhook_url`, every incident opened and every batch of new
//!   security events is queued in the database (`webhook_outbox`, so nothing is lost across
//!   restarts or while the SIEM is down) and POSTed as JSON, retried with exponential backoff
//!   (2 s, 4 s, … at most an hour apart) until the SIEM answers 2xx or `max_attempts` ran
//!   out. Each POST carries `X-Rampart-Timestamp` (Unix seconds), `X-Rampart-Delivery` (the
//!   row's ID, stable across retries, for de-duplication) and `X-Rampart-Signature:
//!   sha256=HEX`, the HMAC-SHA256 under the shared secret of `TIMESTAMP.BODY`: the SIEM
//!   checks it and refuses old timestamps, so a captured delivery cannot be replayed.
//!   Deliveries done with are pruned with the events (`[events] max_age_days`, [`prune`]).

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::store::Incident;
use crate::db::{db_err, get_i64, get_str, now_text, Db, SecurityEvent};
use crate::error::{Error, Result};

/// `[vsoc.export]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ExportConfig {
    /// Where incidents and events are POSTed (`https://…`; empty: no webhook).
    pub webhook_url: String,
    /// File holding the shared HMAC secret (0600); required with a webhook.
    pub webhook_secret_file: Option<PathBuf>,
    /// Deliveries given up after this many failed attempts (default 20).
    pub max_attempts: Option<u32>,
    /// Security events per delivery (default 500).
    pub batch: Option<u32>,
}

impl ExportConfig {
    /// Whether a webhook is configured.
    pub fn webhook(&self) -> bool {
        !self.webhook_url.is_empty()
    }

    fn max_attempts(&self) -> i64 {
        i64::from(self.max_attempts.unwrap_or(20).max(1))
    }

    fn batch(&self) -> u32 {
        self.batch.unwrap_or(500).clamp(1, 10_000)
    }

    /// Reads the shared secret.
    pub fn secret(&self) -> Result<Vec<u8>> {
        let path = self.webhook_secret_file.as_ref().ok_or_else(|| {
            Error::BadRequest("[vsoc.export] webhook_url needs webhook_secret_file".into())
        })?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::BadRequest(format!("webhook secret {}: {e}", path.display())))?;
        let secret = text.trim().as_bytes().to_vec();
        if secret.len() < 16 {
            return Err(Error::BadRequest(format!(
                "webhook secret {} is shorter than 16 bytes",
                path.display()
            )));
        }
        Ok(secret)
    }
}

/// One line of the JSON-lines export, and the body of an incident delivery.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Record<'a> {
    /// An incident.
    Incident(&'a Incident),
    /// A security event.
    Event(&'a SecurityEvent),
}

/// Queues an incident for the webhook (when one is configured, see [`deliver`]).
pub async fn enqueue_incident(db: &Db, incident: &Incident) -> Result<()> {
    let body = serde_json::to_string(&Record::Incident(incident))
        .map_err(|e| Error::Database(e.to_string()))?;
    enqueue(db, "incident", 0, &body).await
}

async fn enqueue(db: &Db, kind: &str, cursor: i64, body: &str) -> Result<()> {
    let now = now_text();
    sqlx::query(
        "INSERT INTO webhook_outbox (kind, cursor, body, created_at, next_at) VALUES ($1, $2, $3, $4, $4)",
    )
    .bind(kind)
    .bind(cursor)
    .bind(body)
    .bind(now)
    .execute(db.pool())
    .await
    .map_err(db_err("webhook outbox"))?;
    Ok(())
}

/// Queues the security events newer than the last batch queued (one batch per call).
pub async fn enqueue_events(db: &Db, config: &ExportConfig) -> Result<usize> {
    let cursor = sqlx::query(
        "SELECT COALESCE(MAX(cursor), 0) AS c FROM webhook_outbox WHERE kind = 'events'",
    )
    .fetch_one(db.pool())
    .await
    .map_err(db_err("webhook cursor"))?;
    let cursor = get_i64(&cursor, "c")?;
    let events = db.events_after(cursor, config.batch()).await?;
    let Some(last) = events.iter().map(|e| e.id).max() else {
        return Ok(0);
    };
    let lines: Vec<Record> = events.iter().map(Record::Event).collect();
    let body = serde_json::to_string(&serde_json::json!({"type": "events", "events": lines}))
        .map_err(|e| Error::Database(e.to_string()))?;
    enqueue(db, "events", last, &body).await?;
    Ok(events.len())
}

/// The signature header's value for `body` sent at `timestamp`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex::encode(ctx.sign().as_ref()))
}

/// Delivers what is due in the outbox (oldest first); returns how many were delivered.
pub async fn deliver(
    db: &Db,
    config: &ExportConfig,
    client: &reqwest::Client,
    secret: &[u8],
    now: DateTime<Utc>,
) -> Result<usize> {
    let rows = sqlx::query(
        "SELECT id, body, attempts FROM webhook_outbox WHERE delivered_at IS NULL AND next_at <= $1 \
         AND attempts < $2 ORDER BY id LIMIT 50",
    )
    .bind(now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    .bind(config.max_attempts())
    .fetch_all(db.pool())
    .await
    .map_err(db_err("webhook outbox"))?;
    let mut delivered = 0;
    for r in &rows {
        let id = get_i64(r, "id")?;
        let body = get_str(r, "body")?;
        let attempts = get_i64(r, "attempts")? + 1;
        let timestamp = now.timestamp();
        let result = client
            .post(&config.webhook_url)
            .header("content-type", "application/json")
            .header("x-rampart-timestamp", timestamp.to_string())
            .header("x-rampart-delivery", id.to_string())
            .header(
                "x-rampart-signature",
                signature(secret, timestamp, body.as_bytes()),
            )
            .body(body)
            .send()
            .await;
        let failure = match result {
            Ok(answer) if answer.status().is_success() => None,
            Ok(answer) => Some(format!("HTTP {}", answer.status())),
            Err(e) => Some(format!("{e}")),
        };
        match failure {
            None => {
                sqlx::query(
                    "UPDATE webhook_outbox SET delivered_at = $1, attempts = $2 WHERE id = $3",
                )
                .bind(now_text())
                .bind(attempts)
                .bind(id)
                .execute(db.pool())
                .await
                .map_err(db_err("webhook outbox"))?;
                delivered += 1;
            }
            Some(why) => {
                let backoff = 2_i64
                    .saturating_pow(u32::try_from(attempts).unwrap_or(31).min(31))
                    .min(3600);
                let next = now + chrono::Duration::seconds(backoff);
                tracing::warn!(delivery = id, attempts, error = %why, retry_in_secs = backoff, "webhook delivery failed");
                sqlx::query(
                    "UPDATE webhook_outbox SET attempts = $1, last_error = $2, next_at = $3 WHERE id = $4",
                )
                .bind(attempts)
                .bind(&why)
                .bind(next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .bind(id)
                .execute(db.pool())
                .await
                .map_err(db_err("webhook outbox"))?;
                // The SIEM is down: the rest waits for the next round, in order.
                break;
            }
        }
    }
    Ok(delivered)
}

/// Deletes the deliveries queued before `now - max_age` that are done with — delivered, or
/// given up after `max_attempts` — except the newest batch of security events, whose cursor
/// says where the next batch starts (without it every event would be queued again). Returns
/// how many went. A delivery still being retried stays, however old.
///
/// Each row carries a copy of what it delivered, so without pruning the outbox grows with
/// every incident and every batch of events, after the events themselves are pruned
/// (`[events] max_age_days`, the age the server passes here).
pub async fn prune(
    db: &Db,
    config: &ExportConfig,
    now: DateTime<Utc>,
    max_age: Duration,
) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM webhook_outbox WHERE created_at < $1 \
         AND (delivered_at IS NOT NULL OR attempts >= $2) \
         AND id <> COALESCE((SELECT id FROM webhook_outbox WHERE kind = 'events' \
           ORDER BY cursor DESC, id DESC LIMIT 1), 0)",
    )
    .bind(crate::db::cutoff(now, max_age))
    .bind(config.max_attempts())
    .execute(db.pool())
    .await
    .map_err(db_err("prune webhook outbox"))?;
    Ok(done.rows_affected())
}

/// Runs the webhook: queues new events and delivers every `every`.
pub async fn run(db: Db, config: ExportConfig, every: Duration) {
    let secret = match config.secret() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "webhook off");
            return;
        }
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook off: no HTTP client");
            return;
        }
    };
    loop {
        if let Err(e) = enqueue_events(&db, &config).await {
            tracing::error!(error = %e, "could not queue events for the webhook");
        }
        if let Err(e) = deliver(&db, &config, &client, &secret, Utc::now()).await {
            tracing::error!(error = %e, "webhook delivery round failed");
        }
        tokio::time::sleep(every).await;
    }
}

/// The JSON-lines export: the newest `limit` incidents (oldest first), then security events
/// with an ID above `after_event`, at most `limit`.
pub async fn json_lines(db: &Db, after_event: i64, limit: u32) -> Result<String> {
    let mut out = String::new();
    for i in super::store::incidents(db, None, None, limit)
        .await?
        .iter()
        .rev()
    {
        push_line(&mut out, &Record::Incident(i))?;
    }
    for e in db.events_after(after_event, limit).await? {
        push_line(&mut out, &Record::Event(&e))?;
    }
    Ok(out)
}

fn push_line(out: &mut String, r: &Record) -> Result<()> {
    out.push_str(&serde_json::to_string(r).map_err(|e| Error::Database(e.to_string()))?);
    out.push('\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_timestamp_and_body() {
        let s = signature(b"0123456789abcdef", 1700000000, b"{}");
        assert!(s.starts_with("sha256=") && s.len() == 7 + 64);
        assert_ne!(s, signature(b"0123456789abcdef", 1700000001, b"{}"));
        assert_ne!(s, signature(b"0123456789abcdef", 1700000000, b"{ }"));
        assert_ne!(s, signature(b"0123456789abcdeF", 1700000000, b"{}"));
        // What Python's hmac module computes for the same secret and message
        // (`hmac.new(secret, b"1700000000.{}", hashlib.sha256)`): a SIEM checks it this way.
        assert_eq!(
            s,
            "sha256=e4f8e2ecae2295b2ddb2f0b5584c8275e226c0ebe9b3b819e70156bb67122e3e"
        );
    }
}

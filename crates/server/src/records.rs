//! UNECE R156 software update records: every update an ECU confirmed or failed (vehicle,
//! ECU, from → to, RXSWIN, campaign, time, result), and each vehicle's RXSWIN over time.
//!
//! Update records are written in the transaction of the check-in that reports the result
//! (so once, and only if that check-in is accepted); a vehicle's RXSWIN changes only when the
//! signed reports of every ECU a campaign updates on it show the new image. Both tables are
//! append-only: an auditor reads what happened, not what is.

use sqlx::any::AnyRow;

use crate::db::{db_err, get_i64, get_opt_str, get_str, now_text, Db};
use crate::error::Result;

type Tx<'c> = sqlx::Transaction<'c, sqlx::Any>;

/// One update record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct UpdateRecord {
    /// ID (increasing).
    pub id: i64,
    /// Vehicle.
    pub vin: String,
    /// ECU.
    pub ecu_id: String,
    /// What it ran before.
    pub from_target: Option<String>,
    /// What it was told to install.
    pub to_target: String,
    /// The RXSWIN its campaign gives the vehicle, if it changes one.
    pub rxswin: Option<String>,
    /// The campaign, if the update was one's.
    pub campaign: Option<String>,
    /// `installed`, `failed` or `rolled-back`.
    pub result: String,
    /// Why it failed (`rule: message`).
    pub detail: Option<String>,
    /// When the director learned it (RFC 3339).
    pub at: String,
}

/// A change of a vehicle's RXSWIN.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RxswinChange {
    /// The RXSWIN from then on.
    pub rxswin: String,
    /// The one before (`None`: the vehicle's first recorded).
    pub previous: Option<String>,
    /// The campaign whose confirmed install changed it.
    pub campaign: Option<String>,
    /// When (RFC 3339).
    pub at: String,
}

/// One update's result, to record.
pub(crate) struct Outcome<'a> {
    /// The assignment it was (its campaign, if any, names the campaign and RXSWIN).
    pub assignment: i64,
    pub vin: &'a str,
    pub ecu_id: &'a str,
    pub from: Option<&'a str>,
    pub to: &'a str,
    /// `installed`, `failed` or `rolled-back`.
    pub result: &'a str,
    pub detail: Option<&'a str>,
}

/// Records one update's result, in the caller's transaction.
pub(crate) async fn record(tx: &mut Tx<'_>, o: &Outcome<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO update_records (vin, ecu_id, from_target, to_target, rxswin, campaign, result, detail, at) \
         VALUES ($1, $2, $3, $4, \
           (SELECT c.rxswin FROM campaign_members m JOIN campaigns c ON c.id = m.campaign_id WHERE m.assignment_id = $5), \
           (SELECT c.name FROM campaign_members m JOIN campaigns c ON c.id = m.campaign_id WHERE m.assignment_id = $5), \
           $6, $7, $8)",
    )
    .bind(o.vin)
    .bind(o.ecu_id)
    .bind(o.from.map(str::to_owned))
    .bind(o.to)
    .bind(o.assignment)
    .bind(o.result)
    .bind(o.detail.map(str::to_owned))
    .bind(now_text())
    .execute(&mut **tx)
    .await
    .map_err(db_err("update record"))?;
    Ok(())
}

/// What ECU `ecu_id` of `vin` runs, as last stored (read before a report replaces it).
pub(crate) async fn installed_target(
    tx: &mut Tx<'_>,
    vin: &str,
    ecu_id: &str,
) -> Result<Option<String>> {
    let row = sqlx::query("SELECT installed_target FROM ecus WHERE vin = $1 AND ecu_id = $2")
        .bind(vin)
        .bind(ecu_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_err("installed target"))?;
    Ok(match row {
        Some(r) => get_opt_str(&r, "installed_target")?,
        None => None,
    })
}

fn record_from(r: &AnyRow) -> Result<UpdateRecord> {
    Ok(UpdateRecord {
        id: get_i64(r, "id")?,
        vin: get_str(r, "vin")?,
        ecu_id: get_str(r, "ecu_id")?,
        from_target: get_opt_str(r, "from_target")?,
        to_target: get_str(r, "to_target")?,
        rxswin: get_opt_str(r, "rxswin")?,
        campaign: get_opt_str(r, "campaign")?,
        result: get_str(r, "result")?,
        detail: get_opt_str(r, "detail")?,
        at: get_str(r, "at")?,
    })
}

impl Db {
    /// Update records, oldest first, optionally of one vehicle and/or campaign, at most
    /// `limit` after ID `after` (a page).
    pub async fn update_records(
        &self,
        vin: Option<&str>,
        campaign: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<UpdateRecord>> {
        let rows = sqlx::query(
            "SELECT id, vin, ecu_id, from_target, to_target, rxswin, campaign, result, detail, at \
             FROM update_records WHERE ($1 = '' OR vin = $1) AND ($2 = '' OR campaign = $2) AND id > $3 \
             ORDER BY id LIMIT $4",
        )
        .bind(vin.unwrap_or(""))
        .bind(campaign.unwrap_or(""))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
        .map_err(db_err("update records"))?;
        rows.iter().map(record_from).collect()
    }

    /// A vehicle's RXSWIN changes, oldest first.
    pub async fn rxswin_history(&self, vin: &str) -> Result<Vec<RxswinChange>> {
        let rows = sqlx::query(
            "SELECT rxswin, previous, campaign, at FROM rxswin_history WHERE vin = $1 ORDER BY id",
        )
        .bind(vin)
        .fetch_all(self.pool())
        .await
        .map_err(db_err("RXSWIN history"))?;
        rows.iter()
            .map(|r| {
                Ok(RxswinChange {
                    rxswin: get_str(r, "rxswin")?,
                    previous: get_opt_str(r, "previous")?,
                    campaign: get_opt_str(r, "campaign")?,
                    at: get_str(r, "at")?,
                })
            })
            .collect()
    }

    /// A vehicle's RXSWIN: the latest recorded change, else its `rxswin` attribute (what it
    /// left the factory with).
    pub async fn rxswin(&self, vin: &str) -> Result<Option<String>> {
        if let Some(last) = self.rxswin_history(vin).await?.pop() {
            return Ok(Some(last.rxswin));
        }
        Ok(self
            .vehicle(vin)
            .await?
            .and_then(|v| v.attributes.get(RXSWIN_ATTRIBUTE).cloned()))
    }

    /// Records that `vin` now has `rxswin` (after `campaign`'s confirmed install), unless it
    /// has it already. `true` if it changed.
    pub async fn set_rxswin(&self, vin: &str, rxswin: &str, campaign: &str) -> Result<bool> {
        let previous = self.rxswin(vin).await?;
        if previous.as_deref() == Some(rxswin) {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO rxswin_history (vin, rxswin, previous, campaign, at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(vin)
        .bind(rxswin)
        .bind(previous)
        .bind(campaign)
        .bind(now_text())
        .execute(self.pool())
        .await
        .map_err(db_err("record RXSWIN"))?;
        Ok(true)
    }
}

/// The vehicle attribute holding the RXSWIN it was type-approved with, before any campaign
/// changed it.
pub const RXSWIN_ATTRIBUTE: &str = "rxswin";

/// Update records as CSV (RFC 4180: fields with a comma, quote or line break are quoted).
pub fn to_csv(records: &[UpdateRecord]) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    }
    let mut out =
        String::from("id,vin,ecu_id,from_target,to_target,rxswin,campaign,result,detail,at\r\n");
    for r in records {
        let row = [
            r.id.to_string(),
            r.vin.clone(),
            r.ecu_id.clone(),
            r.from_target.clone().unwrap_or_default(),
            r.to_target.clone(),
            r.rxswin.clone().unwrap_or_default(),
            r.campaign.clone().unwrap_or_default(),
            r.result.clone(),
            r.detail.clone().unwrap_or_default(),
            r.at.clone(),
        ];
        out.push_str(&row.iter().map(|f| field(f)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let r = UpdateRecord {
            id: 7,
            vin: "V".into(),
            ecu_id: "BCM".into(),
            from_target: None,
            to_target: "bcm/fw-2.bin".into(),
            rxswin: Some("R156-X".into()),
            campaign: Some("c1".into()),
            result: "failed".into(),
            detail: Some("boot-failed: slot B, then \"A\"".into()),
            at: "2026-12-02T00:00:00Z".into(),
        };
        let csv = to_csv(&[r]);
        let line = csv.lines().nth(1).unwrap();
        assert_eq!(
            line,
            "7,V,BCM,,bcm/fw-2.bin,R156-X,c1,failed,\"boot-failed: slot B, then \"\"A\"\"\",2026-12-02T00:00:00Z"
        );
    }
}

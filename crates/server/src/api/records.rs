//! R156 record routes of the admin API: a vehicle's RXSWIN and its history, and the update
//! records as JSON or CSV (for auditors).

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::records::{to_csv, RxswinChange};

use super::*;

/// A vehicle's RXSWIN now and how it came to be.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct Rxswin {
    /// Vehicle.
    vin: String,
    /// Its RXSWIN now (`None`: none recorded, and no `rxswin` attribute).
    rxswin: Option<String>,
    /// Changes, oldest first.
    history: Vec<RxswinChange>,
}

/// A vehicle's RXSWIN and its changes.
#[utoipa::path(get, path = "/api/v1/vehicles/{vin}/rxswin", params(("vin" = String, Path)), responses((status = 200, body = Rxswin), (status = 404)), security(("admin" = [])))]
pub(super) async fn rxswin(
    State(state): State<AppState>,
    Path(vin): Path<String>,
) -> Result<Json<Rxswin>> {
    let db = state.director().db();
    if db.vehicle(&vin).await?.is_none() {
        return Err(Error::NotFound(format!("vehicle {vin} is not registered")));
    }
    Ok(Json(Rxswin {
        rxswin: db.rxswin(&vin).await?,
        history: db.rxswin_history(&vin).await?,
        vin,
    }))
}

/// Which records.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(super) struct RecordQuery {
    /// Only this vehicle.
    vin: Option<String>,
    /// Only this campaign.
    campaign: Option<String>,
    /// The page after this record ID.
    #[serde(default)]
    after: i64,
    /// At most this many (default 1000, at most 100000).
    limit: Option<u32>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// Update records (vehicle, ECU, from → to, RXSWIN, campaign, time, result), oldest first.
#[utoipa::path(get, path = "/api/v1/update-records", params(RecordQuery), responses((status = 200, body = Vec<crate::records::UpdateRecord>, description = "JSON, or text/csv with format=csv")), security(("admin" = [])))]
pub(super) async fn update_records(
    State(state): State<AppState>,
    Query(q): Query<RecordQuery>,
) -> Result<Response> {
    let records = state
        .director()
        .db()
        .update_records(
            q.vin.as_deref(),
            q.campaign.as_deref(),
            q.after,
            q.limit.unwrap_or(1000).clamp(1, 100_000),
        )
        .await?;
    Ok(match q.format.as_deref() {
        None | Some("json") => Json(records).into_response(),
        Some("csv") => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            to_csv(&records),
        )
            .into_response(),
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "format {other:?}: give json or csv"
            )))
        }
    })
}

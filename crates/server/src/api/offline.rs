//! Offline updates (issue 18): the signed manifests a vehicle wrote while it updated from an
//! offline bundle, uploaded by the workshop (`rampart admin import-reports FILE`). Each is
//! checked exactly as a check-in — the primary's signature, the manifest counter (a report
//! imported twice, or after the vehicle checked in online with a later one, is a replay), every
//! ECU report's signature and counter — so the director learns what was installed, and no
//! more than the vehicle signed.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;

use super::extract::ApiJson;
use super::AppState;
use crate::director::CheckinResponse;
use crate::error::{Error, Result};

/// One line of a vehicle's report file.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct OfflineReport {
    /// The vehicle.
    vin: String,
    /// Its signed vehicle manifest, as written.
    #[schema(value_type = Object)]
    manifest: serde_json::Value,
}

/// Imports one signed vehicle manifest written during an offline update.
#[utoipa::path(post, path = "/api/v1/offline-reports", request_body = OfflineReport, responses((status = 200, body = CheckinResponse), (status = 409, description = "replayed manifest")), security(("admin" = [])))]
pub(super) async fn import(
    State(state): State<AppState>,
    ApiJson(report): ApiJson<OfflineReport>,
) -> Result<Json<CheckinResponse>> {
    crate::pki::validate_vin(&report.vin).map_err(|e| Error::BadRequest(e.to_string()))?;
    let bytes = serde_json::to_vec(&report.manifest)
        .map_err(|e| Error::BadRequest(format!("manifest: {e}")))?;
    let answer = state
        .inner
        .director
        .check_in(&report.vin, &bytes, None, chrono::Utc::now())
        .await?;
    tracing::info!(vin = %report.vin, "offline report imported");
    Ok(Json(answer))
}

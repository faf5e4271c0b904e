//! Campaign routes of the admin API (`/api/v1/campaigns`): create, list, status, and the
//! operator's actions (start, pause, resume, cancel). The decisions are
//! [`crate::campaign`]'s; this resolves the release against the image repository.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use crate::campaign::{self, Campaign, CampaignSpec, CampaignStatus, ReleaseImage};
use crate::error::{Error, Result};

use super::*;

/// The images a campaign names, as the image repository signed them (with their hardware
/// ID and release counter from the signed custom fields; encrypted if published so).
async fn resolve(state: &AppState, names: &[String]) -> Result<Vec<ReleaseImage>> {
    let entries = admin::image_entries(&state.inner.image)?;
    let mut out = Vec::new();
    for name in names {
        let entry = entries.iter().find(|e| &e.name == name).ok_or_else(|| {
            Error::NotFound(format!("image {name} is not in the image repository"))
        })?;
        let hardware_id = entry
            .custom
            .get("hardware_id")
            .and_then(|h| h.as_str())
            .ok_or_else(|| {
                Error::BadRequest(format!(
                    "image {name} has no signed hardware ID: it cannot be matched to ECUs"
                ))
            })?;
        out.push(ReleaseImage {
            target: name.clone(),
            hardware_id: hardware_id.to_owned(),
            length: entry.length,
            hashes: entry.hashes.clone(),
            release_counter: entry
                .custom
                .get("release_counter")
                .and_then(|r| r.as_u64())
                .unwrap_or(0),
            encrypted: state.director().db().image_key(name).await?.is_some(),
        });
    }
    Ok(out)
}

/// Creates a campaign (a draft, or started with `start: true`).
#[utoipa::path(post, path = "/api/v1/campaigns", request_body = CampaignSpec, responses((status = 201, body = Campaign), (status = 400, description = "bad waves, thresholds, name, deadline or an empty target set"), (status = 404, description = "unknown image or vehicle"), (status = 409, description = "name taken, or ECUs already in an active campaign")), security(("admin" = [])))]
pub(super) async fn create(
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<CampaignSpec>,
) -> Result<(StatusCode, Json<Campaign>)> {
    let images = resolve(&state, &spec.images).await?;
    let c = campaign::create(state.director(), spec, images, chrono::Utc::now()).await?;
    Ok((StatusCode::CREATED, Json(c)))
}

/// Every campaign, newest first.
#[utoipa::path(get, path = "/api/v1/campaigns", responses((status = 200, body = Vec<Campaign>)), security(("admin" = [])))]
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Vec<Campaign>>> {
    Ok(Json(state.director().db().campaigns().await?))
}

/// A campaign's waves, vehicles (with each ECU's progress) and operations log.
#[utoipa::path(get, path = "/api/v1/campaigns/{name}", params(("name" = String, Path)), responses((status = 200, body = CampaignStatus), (status = 404)), security(("admin" = [])))]
pub(super) async fn status(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<CampaignStatus>> {
    Ok(Json(campaign::status(state.director().db(), &name).await?))
}

/// Why an operator acts.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub(super) struct ActionBody {
    /// Recorded in the campaign's log.
    #[serde(default)]
    reason: Option<String>,
}

/// `start` (a draft), `resume` (paused or halted), `pause` or `cancel` a campaign.
#[utoipa::path(post, path = "/api/v1/campaigns/{name}/{action}", params(("name" = String, Path), ("action" = String, Path, description = "start, resume, pause or cancel")), request_body(content = ActionBody, description = "optional reason"), responses((status = 200, body = Campaign), (status = 404), (status = 409, description = "not allowed in the campaign's state, or a conflict with another campaign")), security(("admin" = [])))]
pub(super) async fn act(
    State(state): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Campaign>> {
    let body: ActionBody = if body.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::BadRequest(format!("request body: {e}")))?
    };
    let reason = body
        .reason
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| format!("{action} by an operator"));
    let director = state.director();
    let now = chrono::Utc::now();
    let c = match action.as_str() {
        "start" | "resume" => campaign::start(director, &name, now).await?,
        "pause" => campaign::pause(director, &name, &reason).await?,
        "cancel" => campaign::cancel(director, &name, &reason).await?,
        other => {
            return Err(Error::NotFound(format!(
                "no campaign action {other:?}: start, resume, pause or cancel"
            )))
        }
    };
    Ok(Json(c))
}

//! The vehicle routes of the director: per-vehicle metadata and manifest check-ins.

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use crate::director::CheckinResponse;
use crate::error::{Error, Result};
use crate::tls::ClientIdentity;

use super::extract::authorize_vehicle;
use super::*;

/// A director metadata file of one vehicle (`N.root.json`, `timestamp.json`, `N.snapshot.json`, `N.targets.json`).
#[utoipa::path(get, path = "/director/{vin}/metadata/{file}", params(("vin" = String, Path), ("file" = String, Path)),
    responses((status = 200, description = "signed metadata"), (status = 404, description = "no such file")))]
pub(super) async fn director_metadata(
    State(state): State<AppState>,
    identity: Option<Extension<ClientIdentity>>,
    Path((vin, file)): Path<(String, String)>,
) -> Result<Response> {
    let identity = identity.map(|Extension(i)| i);
    authorize_vehicle(&state, &vin, identity.as_ref()).await?;
    let not_found = || Error::NotFound(format!("{file} not found"));
    let director = &state.inner.director;
    let body = if let Some(v) = file.strip_suffix(".root.json") {
        let version: u64 = v.parse().map_err(|_| not_found())?;
        let path = director.public_dir().join(format!("{version}.root.json"));
        tokio::fs::read(&path).await.map_err(|_| not_found())?
    } else {
        let docs = director.documents(&vin, chrono::Utc::now()).await?;
        let (role, version) = if file == "timestamp.json" {
            ("timestamp", None)
        } else if let Some(v) = file.strip_suffix(".snapshot.json") {
            ("snapshot", Some(v.parse::<u64>().map_err(|_| not_found())?))
        } else if let Some(v) = file.strip_suffix(".targets.json") {
            ("targets", Some(v.parse::<u64>().map_err(|_| not_found())?))
        } else {
            return Err(not_found());
        };
        let doc = match role {
            "timestamp" => docs.timestamp,
            "snapshot" => docs.snapshot,
            _ => docs.targets,
        };
        if version.is_some_and(|v| v != doc.version) {
            return Err(not_found());
        }
        doc.document.into_bytes()
    };
    state
        .inner
        .metrics
        .metadata_served
        .fetch_add(1, Ordering::Relaxed);
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// A signed vehicle version manifest.
#[utoipa::path(post, path = "/director/{vin}/manifest", params(("vin" = String, Path)), request_body(content = String, description = "signed vehicle manifest (JSON)"),
    responses((status = 200, body = CheckinResponse), (status = 400, description = "rejected: the body names the rule"), (status = 409, description = "replayed manifest"), (status = 413, description = "body too large")))]
pub(super) async fn post_manifest(
    State(state): State<AppState>,
    identity: Option<Extension<ClientIdentity>>,
    Path(vin): Path<String>,
    body: Body,
) -> Result<Json<CheckinResponse>> {
    let identity = identity.map(|Extension(i)| i);
    let remote = authorize_vehicle(&state, &vin, identity.as_ref()).await?;
    let limit = state.inner.limits.max_body_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            state
                .inner
                .metrics
                .manifests_rejected
                .fetch_add(1, Ordering::Relaxed);
            let refused = Error::TooLarge(format!("manifest body over {limit} bytes"));
            return Err(state
                .inner
                .director
                .reject(refused, Some(&vin), None, remote.as_deref())
                .await);
        }
    };
    match state
        .inner
        .director
        .check_in(&vin, &bytes, remote.as_deref(), chrono::Utc::now())
        .await
    {
        Ok(r) => {
            state
                .inner
                .metrics
                .manifests_accepted
                .fetch_add(1, Ordering::Relaxed);
            Ok(Json(r))
        }
        Err(e) => {
            state
                .inner
                .metrics
                .manifests_rejected
                .fetch_add(1, Ordering::Relaxed);
            Err(e)
        }
    }
}

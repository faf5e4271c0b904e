//! The vehicle routes of the director: per-vehicle metadata and manifest check-ins.

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use crate::director::CheckinResponse;
use crate::error::{Error, Result};
use crate::tls::ClientIdentity;

use super::extract::authorize_vehicle;
use super::*;

/// A director metadata file of one vehicle (`N.root.json`, `timestamp.json`, `N.snapshot.json`, `N.targets.json`).
///
/// Answered with an `ETag` (the document's SHA-256, `rampart_core::hash::entity_tag`);
/// a request whose `If-None-Match` names it gets 304 without the body — what a primary that
/// holds the current timestamp gets on almost every check-in.
#[utoipa::path(get, path = "/director/{vin}/metadata/{file}", params(("vin" = String, Path), ("file" = String, Path)),
    responses((status = 200, description = "signed metadata"), (status = 304, description = "the copy named in If-None-Match is current"), (status = 404, description = "no such file")))]
pub(super) async fn director_metadata(
    State(state): State<AppState>,
    identity: Option<Extension<ClientIdentity>>,
    Path((vin, file)): Path<(String, String)>,
    headers: HeaderMap,
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
    let tag = rampart_core::hash::entity_tag(&body);
    if headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .any(|v| names_tag(v.as_bytes(), &tag))
    {
        state
            .inner
            .metrics
            .metadata_not_modified
            .fetch_add(1, Ordering::Relaxed);
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response());
    }
    state
        .inner
        .metrics
        .metadata_served
        .fetch_add(1, Ordering::Relaxed);
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::ETAG, tag),
        ],
        body,
    )
        .into_response())
}

/// Whether an `If-None-Match` value names `tag` (a list; weak tags compare by their opaque
/// part, RFC 9110 13.1.2; `*` matches any current document).
fn names_tag(value: &[u8], tag: &str) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    value.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == tag
    })
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

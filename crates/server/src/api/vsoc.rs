//! V-SOC routes of the admin API: incidents (list, read, acknowledge, resolve, run the
//! engine now), quarantine, the JSON-lines export and the audit log. Actions by the admin
//! token are audited as `admin-token`.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::audit;
use crate::error::{Error, Result};
use crate::vsoc::{self, store, Incident};

use super::*;

/// Who acts through the admin API, for the audit log.
pub(super) const ADMIN: &str = "admin-token";

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(super) struct IncidentQuery {
    /// `open`, `acknowledged` or `resolved` (default: all).
    state: Option<String>,
    /// Only incidents affecting this vehicle.
    vin: Option<String>,
    /// At most this many (default 100).
    limit: Option<u32>,
}

/// Incidents, newest first.
#[utoipa::path(get, path = "/api/v1/incidents", params(IncidentQuery), responses((status = 200, body = Vec<Incident>)), security(("admin" = [])))]
pub(super) async fn list(
    State(state): State<AppState>,
    Query(q): Query<IncidentQuery>,
) -> Result<Json<Vec<Incident>>> {
    Ok(Json(
        store::incidents(
            state.director().db(),
            q.state.as_deref(),
            q.vin.as_deref(),
            q.limit.unwrap_or(100),
        )
        .await?,
    ))
}

/// One incident with its evidence.
#[utoipa::path(get, path = "/api/v1/incidents/{id}", params(("id" = i64, Path)), responses((status = 200, body = Incident), (status = 404)), security(("admin" = [])))]
pub(super) async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Incident>> {
    Ok(Json(store::incident(state.director().db(), id).await?))
}

/// `acknowledge` or `resolve` an incident.
#[utoipa::path(post, path = "/api/v1/incidents/{id}/{action}", params(("id" = i64, Path), ("action" = String, Path, description = "acknowledge or resolve")), responses((status = 200, body = Incident), (status = 404), (status = 409)), security(("admin" = [])))]
pub(super) async fn act(
    State(state): State<AppState>,
    Path((id, action)): Path<(i64, String)>,
) -> Result<Json<Incident>> {
    let to = match action.as_str() {
        "acknowledge" => "acknowledged",
        "resolve" => "resolved",
        other => {
            return Err(Error::NotFound(format!(
                "no incident action {other:?}: acknowledge or resolve"
            )))
        }
    };
    Ok(Json(
        vsoc::set_incident_state(state.director().db(), id, to, ADMIN).await?,
    ))
}

/// Runs the V-SOC engine now (it also runs every `[vsoc] check_every_secs`); answers the
/// incidents it opened.
#[utoipa::path(post, path = "/api/v1/vsoc/evaluate", responses((status = 200, body = Vec<Incident>)), security(("admin" = [])))]
pub(super) async fn evaluate(State(state): State<AppState>) -> Result<Json<Vec<Incident>>> {
    let done = vsoc::evaluate(state.director(), state.vsoc(), chrono::Utc::now()).await?;
    let mut opened = Vec::new();
    for (r, _) in done {
        if let vsoc::Recorded::Opened(id) = r {
            opened.push(store::incident(state.director().db(), id).await?);
        }
    }
    Ok(Json(opened))
}

/// Why a vehicle is quarantined or released.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct ReasonBody {
    /// Recorded in the audit log.
    reason: String,
}

/// `quarantine` a vehicle (no instructions until released) or `release` it.
#[utoipa::path(post, path = "/api/v1/vehicles/{vin}/{action}", params(("vin" = String, Path), ("action" = String, Path, description = "quarantine or release")), request_body = ReasonBody, responses((status = 200), (status = 404), (status = 409)), security(("admin" = [])))]
pub(super) async fn quarantine(
    State(state): State<AppState>,
    Path((vin, action)): Path<(String, String)>,
    ApiJson(body): ApiJson<ReasonBody>,
) -> Result<Json<serde_json::Value>> {
    let director = state.director();
    match action.as_str() {
        "quarantine" => vsoc::quarantine(director, &vin, ADMIN, &body.reason).await?,
        "release" => vsoc::release(director, &vin, ADMIN, &body.reason).await?,
        other => {
            return Err(Error::NotFound(format!(
                "no vehicle action {other:?}: quarantine or release"
            )))
        }
    }
    Ok(Json(serde_json::json!({"vin": vin, "action": action})))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(super) struct ExportQuery {
    /// Events with an ID above this (default 0: all kept).
    after_event: Option<i64>,
    /// At most this many incidents and this many events (default 10000).
    limit: Option<u32>,
}

/// Incidents and security events as JSON lines (`application/x-ndjson`), one
/// `{"type": "incident"|"event", …}` per line, for a SIEM.
#[utoipa::path(get, path = "/api/v1/export", params(ExportQuery), responses((status = 200, content_type = "application/x-ndjson", description = "one JSON object per line")), security(("admin" = [])))]
pub(super) async fn export(
    State(state): State<AppState>,
    Query(q): Query<ExportQuery>,
) -> Result<Response> {
    let body = vsoc::export::json_lines(
        state.director().db(),
        q.after_event.unwrap_or(0),
        q.limit.unwrap_or(10_000),
    )
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(super) struct AuditQuery {
    /// Only this actor's entries.
    actor: Option<String>,
    /// At most this many (default 100).
    limit: Option<u32>,
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/api/v1/audit", params(AuditQuery), responses((status = 200, body = Vec<audit::Entry>)), security(("admin" = [])))]
pub(super) async fn audit_log(
    State(state): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<audit::Entry>>> {
    Ok(Json(
        audit::entries(
            state.director().db(),
            q.actor.as_deref(),
            q.limit.unwrap_or(100),
        )
        .await?,
    ))
}

/// A console account to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct NewUser {
    /// Login name.
    name: String,
    /// `viewer`, `operator` or `security`.
    role: String,
    /// At least 12 characters; stored only as an argon2id hash.
    password: String,
}

/// Creates a console account.
#[utoipa::path(post, path = "/api/v1/users", request_body = NewUser, responses((status = 201, body = crate::console::User), (status = 400), (status = 409)), security(("admin" = [])))]
pub(super) async fn add_user(
    State(state): State<AppState>,
    ApiJson(u): ApiJson<NewUser>,
) -> Result<(axum::http::StatusCode, Json<crate::console::User>)> {
    let role = crate::console::Role::parse(&u.role)?;
    let db = state.director().db();
    let user = crate::console::auth::add_user(db, &u.name, role, &u.password).await?;
    audit::record(db, ADMIN, "user.add", &u.name, role.as_str()).await?;
    Ok((axum::http::StatusCode::CREATED, Json(user)))
}

/// Console accounts.
#[utoipa::path(get, path = "/api/v1/users", responses((status = 200, body = Vec<crate::console::User>)), security(("admin" = [])))]
pub(super) async fn users(
    State(state): State<AppState>,
) -> Result<Json<Vec<crate::console::User>>> {
    Ok(Json(
        crate::console::auth::users(state.director().db()).await?,
    ))
}

/// Disables a console account and ends its sessions.
#[utoipa::path(delete, path = "/api/v1/users/{name}", params(("name" = String, Path)), responses((status = 200), (status = 404)), security(("admin" = [])))]
pub(super) async fn disable_user(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>> {
    let db = state.director().db();
    crate::console::auth::disable_user(db, &name).await?;
    audit::record(db, ADMIN, "user.disable", &name, "").await?;
    Ok(Json(serde_json::json!({"name": name, "disabled": true})))
}

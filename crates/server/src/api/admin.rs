//! The admin API (`/api/v1`, bearer token): inventory, assignments, security events, images.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use crate::db::{Assignment, NewVehicle, SecurityEvent, Vehicle};
use crate::error::{Error, Result};
use crate::repo::Repository;

use super::*;

fn validate_vehicle(v: &NewVehicle) -> Result<()> {
    crate::pki::validate_iso_vin(&v.vin).map_err(|e| Error::BadRequest(e.to_string()))?;
    crate::db::validate_labels(&v.attributes, &v.tags)?;
    if !v.ecus.iter().any(|e| e.ecu_id == v.primary_ecu) {
        return Err(Error::BadRequest(format!(
            "primary ECU {} is not among the ECUs",
            v.primary_ecu
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for e in &v.ecus {
        if e.ecu_id.is_empty() || e.ecu_id.len() > 64 || !seen.insert(&e.ecu_id) {
            return Err(Error::BadRequest(format!(
                "ECU ID {:?} is empty, too long or listed twice",
                e.ecu_id
            )));
        }
        // Names that go to logs, UDS and the database (whose text cannot hold a NUL).
        if e.ecu_id.chars().any(char::is_control) {
            return Err(Error::BadRequest(format!(
                "ECU ID {:?} holds a control character",
                e.ecu_id
            )));
        }
        if e.hardware_id.is_empty() {
            return Err(Error::BadRequest(format!(
                "ECU {} has no hardware ID",
                e.ecu_id
            )));
        }
        if e.hardware_id.chars().any(char::is_control) {
            return Err(Error::BadRequest(format!(
                "ECU {}: hardware ID {:?} holds a control character",
                e.ecu_id, e.hardware_id
            )));
        }
        let key: rampart_core::key::Key = serde_json::from_value(e.public_key.clone())
            .map_err(|err| Error::BadRequest(format!("ECU {} public key: {err}", e.ecu_id)))?;
        key.parse(&key.key_id()?)?;
        if !matches!(e.verification.as_str(), "full" | "partial") {
            return Err(Error::BadRequest(format!(
                "ECU {}: verification must be full or partial",
                e.ecu_id
            )));
        }
        if let Some(k) = &e.encryption_key {
            if hex::decode(k).map(|b| b.len()) != Ok(32) {
                return Err(Error::BadRequest(format!(
                    "ECU {}: encryption_key must be 32 bytes of hex (X25519)",
                    e.ecu_id
                )));
            }
        }
    }
    Ok(())
}

/// Registers a vehicle and its ECUs.
#[utoipa::path(post, path = "/api/v1/vehicles", request_body = NewVehicle, responses((status = 201, description = "registered"), (status = 409, description = "already registered")), security(("admin" = [])))]
pub(super) async fn register_vehicle(
    State(state): State<AppState>,
    ApiJson(v): ApiJson<NewVehicle>,
) -> Result<(StatusCode, Json<serde_json::Value>)> {
    validate_vehicle(&v)?;
    state.inner.director.db().register_vehicle(&v).await?;
    tracing::info!(vin = %v.vin, ecus = v.ecus.len(), "vehicle registered");
    Ok((StatusCode::CREATED, Json(serde_json::json!({"vin": v.vin}))))
}

/// A vehicle's attributes and tags, replaced as a whole.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct Labels {
    /// What the vehicle is (`model`, `region`, …).
    #[serde(default)]
    pub(super) attributes: std::collections::BTreeMap<String, String>,
    /// Its labels.
    #[serde(default)]
    pub(super) tags: std::collections::BTreeSet<String>,
}

/// Replaces a vehicle's attributes and tags (what campaigns choose vehicles by).
#[utoipa::path(put, path = "/api/v1/vehicles/{vin}/labels", params(("vin" = String, Path)), request_body = Labels, responses((status = 200, body = Vehicle), (status = 400), (status = 404)), security(("admin" = [])))]
pub(super) async fn set_labels(
    State(state): State<AppState>,
    Path(vin): Path<String>,
    ApiJson(labels): ApiJson<Labels>,
) -> Result<Json<Vehicle>> {
    crate::db::validate_labels(&labels.attributes, &labels.tags)?;
    let db = state.inner.director.db();
    db.set_labels(&vin, &labels.attributes, &labels.tags)
        .await?;
    db.vehicle(&vin)
        .await?
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("vehicle {vin} is not registered")))
}

/// Why a vehicle is taken out of the fleet.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(super) struct Removal {
    /// The reason, recorded with it ("scrapped", "stolen", …).
    reason: String,
}

/// Takes a vehicle out of the fleet: kept for audit (ECUs, assignments, events), its pending
/// assignments cancelled, refused by the director from then on.
#[utoipa::path(delete, path = "/api/v1/vehicles/{vin}", params(("vin" = String, Path), Removal), responses((status = 200, description = "removed"), (status = 404), (status = 409, description = "already removed")), security(("admin" = [])))]
pub(super) async fn remove_vehicle(
    State(state): State<AppState>,
    Path(vin): Path<String>,
    Query(removal): Query<Removal>,
) -> Result<Json<serde_json::Value>> {
    if removal.reason.trim().is_empty() {
        return Err(Error::BadRequest("give a reason for the removal".into()));
    }
    let at = state
        .inner
        .director
        .db()
        .remove_vehicle(&vin, removal.reason.trim())
        .await?;
    tracing::info!(%vin, reason = %removal.reason, "vehicle removed from the fleet");
    Ok(Json(serde_json::json!({"vin": vin, "removed_at": at})))
}

/// How much of the fleet to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(super) struct VehicleQuery {
    /// Whole vehicles (ECUs, what they run, last seen) instead of VINs, a page at a time.
    #[serde(default)]
    detail: bool,
    /// With `detail`: the page after this VIN.
    #[serde(default)]
    after: String,
    /// With `detail`: at most this many vehicles (default 100, at most 1000).
    limit: Option<u32>,
}

/// Lists the fleet's VINs (removed vehicles left out), or with `detail=true` a page of whole
/// vehicles.
#[utoipa::path(get, path = "/api/v1/vehicles", params(VehicleQuery), responses((status = 200, description = "VINs, or with detail=true vehicles (see Vehicle)", body = Vec<String>)), security(("admin" = [])))]
pub(super) async fn list_vehicles(
    State(state): State<AppState>,
    Query(q): Query<VehicleQuery>,
) -> Result<Json<serde_json::Value>> {
    let db = state.inner.director.db();
    let value = if q.detail {
        let limit = q.limit.unwrap_or(100).clamp(1, 1000);
        serde_json::to_value(db.vehicles(&q.after, limit).await?)
    } else {
        serde_json::to_value(db.list_vins().await?)
    };
    Ok(Json(value.map_err(|e| Error::Database(e.to_string()))?))
}

/// One vehicle with its ECUs and what they run.
#[utoipa::path(get, path = "/api/v1/vehicles/{vin}", params(("vin" = String, Path)), responses((status = 200, body = Vehicle), (status = 404)), security(("admin" = [])))]
pub(super) async fn get_vehicle(
    State(state): State<AppState>,
    Path(vin): Path<String>,
) -> Result<Json<Vehicle>> {
    state
        .inner
        .director
        .db()
        .vehicle(&vin)
        .await?
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("vehicle {vin} is not registered")))
}

/// An assignment request: a target for one ECU of one vehicle, or for every ECU of a
/// hardware ID in a list of vehicles.
#[derive(Debug, Clone, Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct AssignRequest {
    /// Target path in the image repository.
    pub target: String,
    /// Vehicles.
    pub vins: Vec<String>,
    /// One ECU (with a single VIN)…
    #[serde(default)]
    pub ecu_id: Option<String>,
    /// …or every ECU of this hardware ID.
    #[serde(default)]
    pub hardware_id: Option<String>,
    /// Send the image encrypted for each ECU.
    #[serde(default)]
    pub encrypt: bool,
}

/// A target of the image repository.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ImageEntry {
    /// Target path.
    pub name: String,
    /// Signing role.
    pub role: String,
    /// Length.
    pub length: u64,
    /// Hashes.
    #[schema(value_type = Object)]
    pub hashes: serde_json::Value,
    /// Uptane custom fields.
    #[schema(value_type = Object)]
    pub custom: serde_json::Value,
}

pub(super) fn image_entries(repo: &Repository) -> Result<Vec<ImageEntry>> {
    let state = repo.state()?;
    let mut out = Vec::new();
    for (role, t) in &state.roles {
        for (name, f) in &t.targets {
            out.push(ImageEntry {
                name: name.to_owned(),
                role: role.clone(),
                length: f.length,
                hashes: serde_json::to_value(&f.hashes).unwrap_or_default(),
                custom: f.custom.clone().unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

/// Creates assignments.
#[utoipa::path(post, path = "/api/v1/assignments", request_body = AssignRequest, responses((status = 201, body = Vec<i64>), (status = 400)), security(("admin" = [])))]
pub(super) async fn create_assignments(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<AssignRequest>,
) -> Result<(StatusCode, Json<Vec<i64>>)> {
    let images = image_entries(&state.inner.image)?;
    let candidates: Vec<&ImageEntry> = images.iter().filter(|i| i.name == req.target).collect();
    if candidates.is_empty() {
        return Err(Error::NotFound(format!(
            "target {} is not in the image repository",
            req.target
        )));
    }
    if req.vins.is_empty()
        || (req.ecu_id.is_some() == req.hardware_id.is_some())
        || (req.ecu_id.is_some() && req.vins.len() != 1)
    {
        return Err(Error::BadRequest(
            "give either ecu_id with one VIN, or hardware_id with one or more VINs".into(),
        ));
    }
    let db = state.inner.director.db();
    // Every assignment is checked before any is made: a refusal leaves nothing half-done.
    let mut planned = Vec::new();
    for vin in &req.vins {
        let vehicle = db
            .vehicle(vin)
            .await?
            .ok_or_else(|| Error::NotFound(format!("vehicle {vin} is not registered")))?;
        if let Some(at) = &vehicle.removed_at {
            return Err(Error::Conflict(format!(
                "vehicle {vin} was removed from the fleet at {at}"
            )));
        }
        let ecus: Vec<_> = vehicle
            .ecus
            .iter()
            .filter(|e| {
                req.ecu_id.as_ref().is_none_or(|id| &e.ecu_id == id)
                    && req
                        .hardware_id
                        .as_ref()
                        .is_none_or(|hw| &e.hardware_id == hw)
            })
            .collect();
        if ecus.is_empty() {
            return Err(Error::BadRequest(format!(
                "vehicle {vin} has no matching ECU"
            )));
        }
        for ecu in ecus {
            let image = candidates
                .iter()
                .find(|i| {
                    i.custom.get("hardware_id").and_then(|h| h.as_str())
                        == Some(ecu.hardware_id.as_str())
                })
                .ok_or_else(|| {
                    Error::Verification(rampart_core::Error::HardwareIdMismatch {
                        target: req.target.clone(),
                        expected: ecu.hardware_id.clone(),
                        found: candidates
                            .first()
                            .and_then(|i| i.custom.get("hardware_id"))
                            .and_then(|h| h.as_str())
                            .unwrap_or("?")
                            .to_owned(),
                    })
                })?;
            if req.encrypt && ecu.encryption_key.is_none() {
                return Err(Error::BadRequest(format!(
                    "ECU {} of {vin} has no encryption key registered",
                    ecu.ecu_id
                )));
            }
            let a = Assignment {
                id: 0,
                vin: vin.clone(),
                ecu_id: ecu.ecu_id.clone(),
                target: image.name.clone(),
                length: image.length,
                hashes: image.hashes.clone(),
                release_counter: image
                    .custom
                    .get("release_counter")
                    .and_then(|r| r.as_u64())
                    .unwrap_or(0),
                encrypt: req.encrypt,
                status: "pending".into(),
                created_at: String::new(),
                completed_at: None,
                last_error: None,
                maintenance_window: None,
            };
            if req.encrypt && db.image_key(&a.target).await?.is_none() {
                return Err(Error::BadRequest(format!(
                    "{} was not published encrypted",
                    a.target
                )));
            }
            // An ECU refuses a release older than the one it runs (Uptane's rollback rule),
            // on every cycle: such an assignment could never complete. An operator's slip or
            // an insider's attempt, it is refused here and recorded.
            if let Some(running) = ecu.installed.as_ref() {
                if a.release_counter < running.release_counter {
                    let refusal = Error::Rejected {
                        status: StatusCode::CONFLICT,
                        rule: rampart_core::rule::Rule::ReleaseCounterDecreased,
                        message: format!(
                            "{} has release counter {}, below the {} that {} of {vin} runs ({}): \
                             an ECU never installs an older release",
                            a.target,
                            a.release_counter,
                            running.release_counter,
                            ecu.ecu_id,
                            running.target
                        ),
                    };
                    return Err(state
                        .inner
                        .director
                        .reject(refusal, Some(vin), Some(&ecu.ecu_id), None)
                        .await);
                }
            }
            planned.push(a);
        }
    }
    let mut ids = Vec::new();
    for a in &planned {
        ids.push(db.create_assignment(a).await?);
    }
    state
        .inner
        .director
        .nudge(planned.iter().map(|a| a.vin.as_str()));
    tracing::info!(target = %req.target, count = ids.len(), "assignments created");
    Ok((StatusCode::CREATED, Json(ids)))
}

#[derive(Debug, Deserialize)]
pub(super) struct AssignmentQuery {
    vin: Option<String>,
    status: Option<String>,
}

/// Lists assignments.
#[utoipa::path(get, path = "/api/v1/assignments", params(("vin" = Option<String>, Query), ("status" = Option<String>, Query)), responses((status = 200, body = Vec<Assignment>)), security(("admin" = [])))]
pub(super) async fn list_assignments(
    State(state): State<AppState>,
    Query(q): Query<AssignmentQuery>,
) -> Result<Json<Vec<Assignment>>> {
    Ok(Json(
        state
            .inner
            .director
            .db()
            .assignments(q.vin.as_deref(), q.status.as_deref())
            .await?,
    ))
}

#[derive(Debug, Deserialize)]
pub(super) struct EventQuery {
    vin: Option<String>,
    rule: Option<String>,
    limit: Option<u32>,
}

/// Security events, newest first.
#[utoipa::path(get, path = "/api/v1/events", params(("vin" = Option<String>, Query), ("rule" = Option<String>, Query), ("limit" = Option<u32>, Query)), responses((status = 200, body = Vec<SecurityEvent>)), security(("admin" = [])))]
pub(super) async fn list_events(
    State(state): State<AppState>,
    Query(q): Query<EventQuery>,
) -> Result<Json<Vec<SecurityEvent>>> {
    Ok(Json(
        state
            .inner
            .director
            .db()
            .events(q.vin.as_deref(), q.rule.as_deref(), q.limit.unwrap_or(100))
            .await?,
    ))
}

/// Targets of the image repository.
#[utoipa::path(get, path = "/api/v1/images", responses((status = 200, body = Vec<ImageEntry>)), security(("admin" = [])))]
pub(super) async fn list_images(State(state): State<AppState>) -> Result<Json<Vec<ImageEntry>>> {
    Ok(Json(image_entries(&state.inner.image)?))
}

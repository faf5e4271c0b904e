//! The HTTP API (axum): public image repository files, the director's vehicle routes, the
//! admin API, `/health`, `/metrics` and the OpenAPI document.
//!
//! | route | who | what |
//! |---|---|---|
//! | `GET /image/{metadata,targets}/…` | anyone | the image repository folder, as a CDN would serve it (Range supported) |
//! | `GET /director/{vin}/metadata/{file}` | the vehicle (client certificate for `vin`) | its director metadata; `N.root.json` is the shared director root chain |
//! | `POST /director/{vin}/manifest` | the vehicle | its signed vehicle version manifest |
//! | `/api/v1/…` | admin (`Authorization: Bearer TOKEN`) | inventory, assignments, security events, images |
//!
//! Every rejection answers JSON `{"error": …, "rule": …}` with a 4xx status, and every
//! rejection of vehicle input is recorded as a security event. Request bodies are bounded;
//! each client (VIN, else IP address) has a token bucket and gets 429 past it.

use rampart_core::rule::Rule;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use tower_http::services::ServeDir;
use utoipa::OpenApi;

use crate::conn::ConnectionStats;
use crate::db::{Assignment, NewVehicle, SecurityEvent, Vehicle};
use crate::director::{CheckinResponse, Director};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::repo::Repository;
use crate::revocation::Revocations;
use crate::tls::ClientIdentity;

/// Limits of the API.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body accepted (bytes).
    pub max_body_bytes: usize,
    /// Sustained requests per second per client.
    pub requests_per_second: f64,
    /// Burst size per client.
    pub burst: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1024 * 1024,
            requests_per_second: 20.0,
            burst: 60.0,
        }
    }
}

/// Process-wide counters for `/metrics` (per-process, not per-vehicle).
#[derive(Debug, Default)]
pub struct Metrics {
    requests: AtomicU64,
    rate_limited: AtomicU64,
    manifests_accepted: AtomicU64,
    manifests_rejected: AtomicU64,
    metadata_served: AtomicU64,
    client_errors: AtomicU64,
}

struct Bucket {
    tokens: f64,
    last: Instant,
    /// When this client's flooding was last recorded (one event per minute per client).
    reported: Option<Instant>,
}

/// A keyed token-bucket rate limiter. Its memory is bounded: idle buckets are dropped when
/// the table grows. (Rate limiting is per instance; it is protection, not vehicle state.)
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    /// `rate` tokens per second, at most `burst` saved.
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimiter {
            rate: rate.max(0.001),
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`: `Ok(())`, or `Err((retry_after, report))` where `report` is
    /// true at most once a minute per client (a flood is one event, not thousands).
    pub fn check(&self, key: &str) -> std::result::Result<(), (Duration, bool)> {
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= MAX_BUCKETS {
            let horizon = Duration::from_secs_f64(self.burst / self.rate);
            buckets.retain(|_, b| now.duration_since(b.last) < horizon);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
            reported: None,
        });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let first = bucket
                .reported
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60));
            if first {
                bucket.reported = Some(now);
            }
            Err((
                Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate),
                first,
            ))
        }
    }
}

struct Inner {
    director: Director,
    image: Repository,
    admin_token: String,
    limits: Limits,
    limiter: RateLimiter,
    metrics: Metrics,
    connections: Arc<ConnectionStats>,
    revocations: Revocations,
    require_client_certificate: bool,
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl AppState {
    /// Builds the state. With `require_client_certificate` (TLS mode), vehicle routes need a
    /// client certificate whose VIN is the one in the path; without it (plain HTTP, for the
    /// attack lab and tests), the manifest signature alone authenticates the vehicle.
    pub fn new(
        director: Director,
        layout: &Layout,
        admin_token: String,
        limits: Limits,
        require_client_certificate: bool,
    ) -> Self {
        Self::with_revocation_refresh(
            director,
            layout,
            admin_token,
            limits,
            require_client_certificate,
            crate::revocation::DEFAULT_REFRESH,
        )
    }

    /// [`AppState::new`], re-reading revoked certificates at most every `revocation_refresh`
    /// (zero: on every vehicle request).
    pub fn with_revocation_refresh(
        director: Director,
        layout: &Layout,
        admin_token: String,
        limits: Limits,
        require_client_certificate: bool,
        revocation_refresh: Duration,
    ) -> Self {
        AppState {
            inner: Arc::new(Inner {
                revocations: Revocations::new(director.db().clone(), revocation_refresh),
                director,
                image: Repository::new(layout.image_metadata(), layout.image_targets()),
                admin_token,
                limits,
                limiter: RateLimiter::new(limits.requests_per_second, limits.burst),
                metrics: Metrics::default(),
                connections: Arc::new(ConnectionStats::default()),
                require_client_certificate,
            }),
        }
    }

    /// The director.
    pub fn director(&self) -> &Director {
        &self.inner.director
    }

    /// The counters of the connection layer serving this API (shown by `/metrics`).
    pub fn connection_stats(&self) -> Arc<ConnectionStats> {
        self.inner.connections.clone()
    }
}

/// `Json` whose rejections (bad JSON, wrong types, wrong content type, too large) answer
/// like every other error: `{"error", "rule"}` with a 4xx.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(Error::TooLarge(rejection.body_text()))
            }
            Err(rejection) => Err(Error::BadRequest(format!(
                "request body: {}",
                rejection.body_text()
            ))),
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Rampart API",
        description = "Director, inventory and security events of a Rampart OTA server"
    ),
    paths(
        health,
        director_metadata,
        post_manifest,
        register_vehicle,
        list_vehicles,
        get_vehicle,
        create_assignments,
        list_assignments,
        list_events,
        list_images
    ),
    components(schemas(
        NewVehicle,
        crate::db::NewEcu,
        Vehicle,
        crate::db::Ecu,
        crate::db::Installed,
        Assignment,
        SecurityEvent,
        CheckinResponse,
        crate::director::RejectedReport,
        AssignRequest,
        ImageEntry
    ))
)]
struct ApiDoc;

/// The OpenAPI document of the API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The router. `public_image_dir` is `D/public/image`.
pub fn router(state: AppState, public_image_dir: &std::path::Path) -> Router {
    let admin = Router::new()
        .route("/vehicles", post(register_vehicle).get(list_vehicles))
        .route("/vehicles/{vin}", get(get_vehicle))
        .route(
            "/assignments",
            post(create_assignments).get(list_assignments),
        )
        .route("/events", get(list_events))
        .route("/images", get(list_images))
        .layer(DefaultBodyLimit::max(state.inner.limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .route("/director/{vin}/metadata/{file}", get(director_metadata))
        .route("/director/{vin}/manifest", post(post_manifest))
        .nest("/api/v1", admin)
        .nest_service("/image", ServeDir::new(public_image_dir))
        .layer(middleware::from_fn_with_state(state.clone(), rate_limit))
        .with_state(state)
}

fn client_key(identity: Option<&ClientIdentity>) -> (String, Option<String>) {
    match identity {
        Some(ClientIdentity {
            vin: Some(vin),
            peer,
            ..
        }) => (format!("vin:{vin}"), Some(format!("{vin}@{peer}"))),
        Some(ClientIdentity {
            vin: None, peer, ..
        }) => (format!("ip:{}", peer.ip()), Some(peer.to_string())),
        None => ("unknown".into(), None),
    }
}

/// The bearer token of a request, if any.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

async fn rate_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let m = &state.inner.metrics;
    m.requests.fetch_add(1, Ordering::Relaxed);
    let identity = request.extensions().get::<ClientIdentity>().cloned();
    let (mut key, remote) = client_key(identity.as_ref());
    // Operators with valid admin credentials get their own bucket: a flood from the same
    // address (or NAT) must not lock the fleet's operators out of the server they defend.
    if presented_token(request.headers())
        .is_some_and(|t| crate::pki::check_admin_token(&state.inner.admin_token, t))
    {
        key = "admin".into();
    }
    if let Err((retry, first)) = state.inner.limiter.check(&key) {
        m.rate_limited.fetch_add(1, Ordering::Relaxed);
        if first {
            let vin = identity.as_ref().and_then(|i| i.vin.clone());
            state
                .inner
                .director
                .event(
                    "server",
                    Rule::RateLimited.as_str(),
                    vin.as_deref(),
                    None,
                    remote.as_deref(),
                    &format!("{key} exceeded its request rate"),
                )
                .await;
        }
        let secs = (retry.as_secs() + u64::from(retry.subsec_nanos() > 0))
            .max(1)
            .to_string();
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(serde_json::json!({"error": "too many requests", "rule": Rule::RateLimited})),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&secs) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    let response = next.run(request).await;
    if response.status().is_client_error() {
        m.client_errors.fetch_add(1, Ordering::Relaxed);
    }
    response
}

async fn require_admin(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let presented = presented_token(&headers).unwrap_or("");
    if presented.is_empty() || !crate::pki::check_admin_token(&state.inner.admin_token, presented) {
        let remote = request
            .extensions()
            .get::<ClientIdentity>()
            .map(|i| i.peer.to_string());
        let refused =
            Error::Unauthorized("admin credentials required (Authorization: Bearer TOKEN)".into());
        return state
            .inner
            .director
            .reject(refused, None, None, remote.as_deref())
            .await
            .into_response();
    }
    next.run(request).await
}

/// Liveness and database reachability.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "healthy"), (status = 503, description = "database unreachable")))]
async fn health(State(state): State<AppState>) -> Response {
    match state.inner.director.db().ping().await {
        Ok(()) => Json(serde_json::json!({"status": "ok", "database": "ok"})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "degraded", "database": e.to_string()})),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.inner.metrics;
    let c = &state.inner.connections;
    let events = state
        .inner
        .director
        .db()
        .count("security_events")
        .await
        .unwrap_or(0);
    let vehicles = state
        .inner
        .director
        .db()
        .count("vehicles")
        .await
        .unwrap_or(0);
    let body = format!(
        "# TYPE rampart_requests_total counter\nrampart_requests_total {}\n\
         # TYPE rampart_rate_limited_total counter\nrampart_rate_limited_total {}\n\
         # TYPE rampart_client_errors_total counter\nrampart_client_errors_total {}\n\
         # TYPE rampart_manifests_accepted_total counter\nrampart_manifests_accepted_total {}\n\
         # TYPE rampart_manifests_rejected_total counter\nrampart_manifests_rejected_total {}\n\
         # TYPE rampart_director_metadata_served_total counter\nrampart_director_metadata_served_total {}\n\
         # TYPE rampart_security_events gauge\nrampart_security_events {events}\n\
         # TYPE rampart_vehicles gauge\nrampart_vehicles {vehicles}\n\
         # TYPE rampart_connections_open gauge\nrampart_connections_open {}\n\
         # TYPE rampart_connections_accepted_total counter\nrampart_connections_accepted_total {}\n\
         # TYPE rampart_connections_refused_total counter\nrampart_connections_refused_total {}\n\
         # TYPE rampart_connections_idle_closed_total counter\nrampart_connections_idle_closed_total {}\n\
         # TYPE rampart_accept_errors_total counter\nrampart_accept_errors_total {}\n\
         # TYPE rampart_connections_stalled_total counter\nrampart_connections_stalled_total {}\n",
        m.requests.load(Ordering::Relaxed),
        m.rate_limited.load(Ordering::Relaxed),
        m.client_errors.load(Ordering::Relaxed),
        m.manifests_accepted.load(Ordering::Relaxed),
        m.manifests_rejected.load(Ordering::Relaxed),
        m.metadata_served.load(Ordering::Relaxed),
        c.open.load(Ordering::Relaxed),
        c.accepted.load(Ordering::Relaxed),
        c.refused.load(Ordering::Relaxed),
        c.idle_closed.load(Ordering::Relaxed),
        c.accept_errors.load(Ordering::Relaxed),
        c.stalled.load(Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Checks that the caller may act for `vin`; records a security event if not.
async fn authorize_vehicle(
    state: &AppState,
    vin: &str,
    identity: Option<&ClientIdentity>,
) -> Result<Option<String>> {
    let remote = identity.map(|i| i.peer.to_string());
    let director = &state.inner.director;
    if crate::pki::validate_vin(vin).is_err() {
        let refused = Error::Rejected {
            status: StatusCode::BAD_REQUEST,
            rule: Rule::Malformed,
            message: "malformed VIN in the request path".into(),
        };
        return Err(director
            .reject(refused, None, None, remote.as_deref())
            .await);
    }
    if state.inner.require_client_certificate {
        let refused = match identity.and_then(|i| i.vin.as_deref()) {
            None => Some(Error::Rejected {
                status: StatusCode::UNAUTHORIZED,
                rule: Rule::ClientCertificateRequired,
                message: "a vehicle route needs a vehicle client certificate".into(),
            }),
            Some(cert_vin) if cert_vin != vin => Some(Error::Rejected {
                status: StatusCode::FORBIDDEN,
                rule: Rule::VinMismatch,
                message: format!("certificate is for {cert_vin}, not {vin}"),
            }),
            Some(_) => None,
        };
        if let Some(refused) = refused {
            return Err(director
                .reject(refused, Some(vin), None, remote.as_deref())
                .await);
        }
    }
    // Revoked: every certificate of the VIN, or this certificate by serial (an in-memory
    // lookup; `rampart pki revoke` takes effect within the refresh interval, see
    // `crate::revocation`). Also without TLS, where the VIN alone identifies the vehicle.
    let serial = identity.and_then(|i| i.serial.as_deref());
    if let Some(revoked) = state.inner.revocations.of(vin, serial).await? {
        let what = match (&revoked.vin, &revoked.serial) {
            (Some(_), _) => format!("every certificate of {vin}"),
            (None, Some(s)) => format!("certificate {s}"),
            (None, None) => "certificate".to_owned(),
        };
        let refused = Error::Rejected {
            status: StatusCode::FORBIDDEN,
            rule: Rule::CertificateRevoked,
            message: format!(
                "{what} revoked at {}: {}",
                revoked.revoked_at, revoked.reason
            ),
        };
        return Err(director
            .reject(refused, Some(vin), None, remote.as_deref())
            .await);
    }
    Ok(remote)
}

/// A director metadata file of one vehicle (`N.root.json`, `timestamp.json`, `N.snapshot.json`, `N.targets.json`).
#[utoipa::path(get, path = "/director/{vin}/metadata/{file}", params(("vin" = String, Path), ("file" = String, Path)),
    responses((status = 200, description = "signed metadata"), (status = 404, description = "no such file")))]
async fn director_metadata(
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
async fn post_manifest(
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

fn validate_vehicle(v: &NewVehicle) -> Result<()> {
    crate::pki::validate_vin(&v.vin).map_err(|e| Error::BadRequest(e.to_string()))?;
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
        if e.hardware_id.is_empty() {
            return Err(Error::BadRequest(format!(
                "ECU {} has no hardware ID",
                e.ecu_id
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
async fn register_vehicle(
    State(state): State<AppState>,
    ApiJson(v): ApiJson<NewVehicle>,
) -> Result<(StatusCode, Json<serde_json::Value>)> {
    validate_vehicle(&v)?;
    state.inner.director.db().register_vehicle(&v).await?;
    tracing::info!(vin = %v.vin, ecus = v.ecus.len(), "vehicle registered");
    Ok((StatusCode::CREATED, Json(serde_json::json!({"vin": v.vin}))))
}

/// Lists registered VINs.
#[utoipa::path(get, path = "/api/v1/vehicles", responses((status = 200, body = Vec<String>)), security(("admin" = [])))]
async fn list_vehicles(State(state): State<AppState>) -> Result<Json<Vec<String>>> {
    Ok(Json(state.inner.director.db().list_vins().await?))
}

/// One vehicle with its ECUs and what they run.
#[utoipa::path(get, path = "/api/v1/vehicles/{vin}", params(("vin" = String, Path)), responses((status = 200, body = Vehicle), (status = 404)), security(("admin" = [])))]
async fn get_vehicle(
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

fn image_entries(repo: &Repository) -> Result<Vec<ImageEntry>> {
    let state = repo.state()?;
    let mut out = Vec::new();
    for (role, t) in &state.roles {
        for (name, f) in &t.targets {
            out.push(ImageEntry {
                name: name.clone(),
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
async fn create_assignments(
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
    let mut ids = Vec::new();
    for vin in &req.vins {
        let vehicle = db
            .vehicle(vin)
            .await?
            .ok_or_else(|| Error::NotFound(format!("vehicle {vin} is not registered")))?;
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
            };
            if req.encrypt && db.image_key(&a.target).await?.is_none() {
                return Err(Error::BadRequest(format!(
                    "{} was not published encrypted",
                    a.target
                )));
            }
            ids.push(db.create_assignment(&a).await?);
        }
    }
    tracing::info!(target = %req.target, count = ids.len(), "assignments created");
    Ok((StatusCode::CREATED, Json(ids)))
}

#[derive(Debug, Deserialize)]
struct AssignmentQuery {
    vin: Option<String>,
    status: Option<String>,
}

/// Lists assignments.
#[utoipa::path(get, path = "/api/v1/assignments", params(("vin" = Option<String>, Query), ("status" = Option<String>, Query)), responses((status = 200, body = Vec<Assignment>)), security(("admin" = [])))]
async fn list_assignments(
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
struct EventQuery {
    vin: Option<String>,
    rule: Option<String>,
    limit: Option<u32>,
}

/// Security events, newest first.
#[utoipa::path(get, path = "/api/v1/events", params(("vin" = Option<String>, Query), ("rule" = Option<String>, Query), ("limit" = Option<u32>, Query)), responses((status = 200, body = Vec<SecurityEvent>)), security(("admin" = [])))]
async fn list_events(
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
async fn list_images(State(state): State<AppState>) -> Result<Json<Vec<ImageEntry>>> {
    Ok(Json(image_entries(&state.inner.image)?))
}

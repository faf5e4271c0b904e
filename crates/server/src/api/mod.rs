//! The HTTP API (axum): public image repository files, the director's vehicle routes, the
//! admin API, `/health`, `/metrics` and the OpenAPI document.
//!
//! | route | who | what |
//! |---|---|---|
//! | `GET /image/{metadata,targets}/…` | anyone | the image repository folder, as a CDN would serve it (Range supported) |
//! | `GET /director/{vin}/metadata/{file}` | the vehicle (client certificate for `vin`) | its director metadata; `N.root.json` is the shared director root chain |
//! | `POST /director/{vin}/manifest` | the vehicle | its signed vehicle version manifest |
//! | `/api/v1/…` | admin (`Authorization: Bearer TOKEN`) | inventory, assignments, campaigns, security events, images |
//!
//! Every rejection answers JSON `{"error": …, "rule": …}` with a 4xx status, and every
//! rejection of vehicle input is recorded as a security event. Request bodies are bounded;
//! each client (VIN, else IP address) has a token bucket and gets 429 past it.
//!
//! Modules: `rate_limit` (token buckets per client), `extract` (JSON bodies, admin and
//! vehicle authorisation), `vehicle` (director routes), `admin` (inventory, assignments,
//! events, images), `campaigns` (staged rollouts), `records` (RXSWIN, update records), `vsoc`
//! (incidents, quarantine, export, audit log, console accounts). The console (`/ui/`) is
//! [`crate::console`].

mod admin;
mod campaigns;
mod extract;
mod image;
mod offline;
mod rate_limit;
mod records;
mod vehicle;
mod vsoc;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::middleware::{self};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use tower_http::services::ServeDir;
use utoipa::OpenApi;

use crate::conn::ConnectionStats;
use crate::db::{Assignment, NewVehicle, SecurityEvent, Vehicle};
use crate::director::{CheckinResponse, Director};
use crate::layout::Layout;
use crate::repo::Repository;
use crate::revocation::Revocations;

pub use admin::{AssignRequest, ImageEntry};
pub use extract::ApiJson;
pub use rate_limit::RateLimiter;

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
    /// Director documents answered 304 (the vehicle's copy named in If-None-Match).
    metadata_not_modified: AtomicU64,
    client_errors: AtomicU64,
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
    console: crate::console::ConsoleConfig,
    vsoc: crate::vsoc::VsocConfig,
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
                console: crate::console::ConsoleConfig::default(),
                vsoc: crate::vsoc::VsocConfig::default(),
            }),
        }
    }

    /// The director.
    pub fn director(&self) -> &Director {
        &self.inner.director
    }

    /// The targets of the image repository, with their signing role.
    pub fn images(&self) -> crate::error::Result<Vec<ImageEntry>> {
        admin::image_entries(&self.inner.image)
    }

    /// The console's settings.
    pub fn console(&self) -> &crate::console::ConsoleConfig {
        &self.inner.console
    }

    /// Sets the console's settings (before the state is shared).
    pub fn with_console(mut self, console: crate::console::ConsoleConfig) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.console = console;
        }
        self
    }

    /// Sets where the image repository is (before the state is shared; default: the data
    /// directory's folder).
    pub fn with_image_repository(mut self, image: Repository) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.image = image;
        }
        self
    }

    /// The image repository.
    pub fn image_repository(&self) -> &Repository {
        &self.inner.image
    }

    /// The V-SOC engine's settings (for runs on demand).
    pub fn vsoc(&self) -> &crate::vsoc::VsocConfig {
        &self.inner.vsoc
    }

    /// Sets the V-SOC engine's settings (before the state is shared).
    pub fn with_vsoc(mut self, vsoc: crate::vsoc::VsocConfig) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.vsoc = vsoc;
        }
        self
    }

    /// The counters of the connection layer serving this API (shown by `/metrics`).
    pub fn connection_stats(&self) -> Arc<ConnectionStats> {
        self.inner.connections.clone()
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
        vehicle::director_metadata,
        vehicle::post_manifest,
        admin::register_vehicle,
        admin::list_vehicles,
        admin::get_vehicle,
        admin::remove_vehicle,
        admin::set_labels,
        admin::create_assignments,
        admin::list_assignments,
        admin::list_events,
        admin::list_images,
        offline::import,
        campaigns::create,
        campaigns::list,
        campaigns::status,
        campaigns::act,
        records::rxswin,
        records::update_records,
        vsoc::list,
        vsoc::get_one,
        vsoc::act,
        vsoc::evaluate,
        vsoc::quarantine,
        vsoc::export,
        vsoc::audit_log,
        vsoc::add_user,
        vsoc::users,
        vsoc::disable_user
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
        offline::OfflineReport,
        crate::director::RejectedReport,
        AssignRequest,
        ImageEntry,
        admin::Labels,
        crate::campaign::CampaignSpec,
        crate::campaign::TargetSet,
        crate::campaign::Criteria,
        crate::campaign::Campaign,
        crate::campaign::ReleaseImage,
        crate::campaign::State,
        crate::campaign::CampaignStatus,
        crate::campaign::WaveStatus,
        crate::campaign::WaveCounts,
        crate::campaign::VehicleProgress,
        crate::campaign::EcuProgress,
        crate::campaign::Progress,
        crate::campaign::LogEntry,
        campaigns::ActionBody,
        records::Rxswin,
        crate::records::UpdateRecord,
        crate::records::RxswinChange,
        crate::vsoc::Incident,
        crate::audit::Entry,
        crate::console::User,
        crate::console::Role,
        vsoc::ReasonBody,
        vsoc::NewUser
    ))
)]
struct ApiDoc;

/// The OpenAPI document of the API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The router. `public_image_dir` is `D/public/image`, served at `/image` unless the image
/// repository is kept on object storage (then its files are read from the bucket).
pub fn router(state: AppState, public_image_dir: &std::path::Path) -> Router {
    let images = match state.inner.image.store().objects() {
        Some(bucket) => image::router(bucket.clone()),
        // Files are read 256 KiB at a time (tower-http's default is 64 KiB, and every read is
        // a trip to tokio's blocking pool): a 1 GiB image left in 1.04–1.18 s instead of
        // 1.38–1.41 s, 1 MiB reads were no faster (BENCHMARKS.md). The cost is 256 KiB a
        // download in flight; a fleet's downloads come from a CDN in production.
        None => Router::new()
            .fallback_service(ServeDir::new(public_image_dir).with_buf_chunk_size(256 * 1024)),
    };
    let admin = Router::new()
        .route(
            "/vehicles",
            post(admin::register_vehicle).get(admin::list_vehicles),
        )
        .route(
            "/vehicles/{vin}",
            get(admin::get_vehicle).delete(admin::remove_vehicle),
        )
        .route("/vehicles/{vin}/labels", put(admin::set_labels))
        .route("/vehicles/{vin}/rxswin", get(records::rxswin))
        .route("/update-records", get(records::update_records))
        .route(
            "/assignments",
            post(admin::create_assignments).get(admin::list_assignments),
        )
        .route("/campaigns", post(campaigns::create).get(campaigns::list))
        .route("/campaigns/{name}", get(campaigns::status))
        .route("/campaigns/{name}/{action}", post(campaigns::act))
        .route("/vehicles/{vin}/{action}", post(vsoc::quarantine))
        .route("/incidents", get(vsoc::list))
        .route("/incidents/{id}", get(vsoc::get_one))
        .route("/incidents/{id}/{action}", post(vsoc::act))
        .route("/vsoc/evaluate", post(vsoc::evaluate))
        .route("/export", get(vsoc::export))
        .route("/audit", get(vsoc::audit_log))
        .route("/users", post(vsoc::add_user).get(vsoc::users))
        .route("/users/{name}", axum::routing::delete(vsoc::disable_user))
        .route("/offline-reports", post(offline::import))
        .route("/events", get(admin::list_events))
        .route("/images", get(admin::list_images))
        .layer(DefaultBodyLimit::max(state.inner.limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            extract::require_admin,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .route(
            "/director/{vin}/metadata/{file}",
            get(vehicle::director_metadata),
        )
        .route("/director/{vin}/manifest", post(vehicle::post_manifest))
        .nest("/api/v1", admin)
        .nest("/ui", crate::console::router())
        // `/ui/` itself is not the nested router's `/`: sent to the fleet page like `/ui`.
        .route(
            "/ui/",
            get(|| async { axum::response::Redirect::to("/ui/fleet") }),
        )
        .nest_service("/image", images)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            rate_limit::rate_limit,
        ))
        .with_state(state)
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
    let mut incidents = String::from(
        "# HELP rampart_incidents V-SOC incidents by state and severity\n# TYPE rampart_incidents gauge\n",
    );
    let mut opened_total = 0;
    for (st, severity, n) in crate::vsoc::store::counts(state.inner.director.db())
        .await
        .unwrap_or_default()
    {
        opened_total += n;
        incidents.push_str(&format!(
            "rampart_incidents{{state=\"{st}\",severity=\"{severity}\"}} {n}\n"
        ));
    }
    incidents.push_str(&format!(
        "# HELP rampart_incidents_opened_total V-SOC incidents ever opened\n# TYPE rampart_incidents_opened_total counter\nrampart_incidents_opened_total {opened_total}\n"
    ));
    let body = format!(
        "# TYPE rampart_requests_total counter\nrampart_requests_total {}\n\
         # TYPE rampart_rate_limited_total counter\nrampart_rate_limited_total {}\n\
         # TYPE rampart_client_errors_total counter\nrampart_client_errors_total {}\n\
         # TYPE rampart_manifests_accepted_total counter\nrampart_manifests_accepted_total {}\n\
         # TYPE rampart_manifests_rejected_total counter\nrampart_manifests_rejected_total {}\n\
         # TYPE rampart_director_metadata_served_total counter\nrampart_director_metadata_served_total {}\n\
         # TYPE rampart_director_metadata_not_modified_total counter\nrampart_director_metadata_not_modified_total {}\n\
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
        m.metadata_not_modified.load(Ordering::Relaxed),
        c.open.load(Ordering::Relaxed),
        c.accepted.load(Ordering::Relaxed),
        c.refused.load(Ordering::Relaxed),
        c.idle_closed.load(Ordering::Relaxed),
        c.accept_errors.load(Ordering::Relaxed),
        c.stalled.load(Ordering::Relaxed),
    ) + &incidents;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

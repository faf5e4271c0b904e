//! Storage: the director's inventory, assignments, per-vehicle director metadata, manifests
//! and security events, in SQLite (the embedded default) or PostgreSQL (for fleets that
//! outgrow one machine), through one code path (`sqlx::Any`, `$N` placeholders both accept).
//!
//! Nothing here is cached in memory: every request reads what it needs, so any number of
//! `rampart serve` instances can share one PostgreSQL database. Concurrent writers are made
//! safe by conditional updates (a manifest counter only moves forward if it is above the
//! stored one; a director role version only moves from the version that was read).
//!
//! Every write that changes what the director must tell a vehicle (a new assignment, an
//! assignment completed by a check-in) also marks the vehicle's stored director targets as
//! out of date, in the same transaction ([`INSTRUCTIONS_CHANGED`]). That lets the director
//! answer the common request — nothing changed, nothing near expiry — from one read of the
//! stored documents instead of re-deriving the instructions from the inventory every time,
//! and a writer that derived instructions before such a change cannot store them after it
//! (the conditional write also compares the targets' `content_digest`).

use rampart_core::rule::Rule;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};

mod batch;
mod byte_runs;
mod group_commit;
mod held;
mod quiet_batch;
mod role_reads;
mod role_write;

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The backend a connection of the `Any` driver talks to (inside a transaction, where
    /// only the connection is at hand). A driver other than the two is taken for SQLite:
    /// `Db::connect` refuses any other URL.
    pub fn of(conn: &sqlx::AnyConnection) -> Backend {
        if conn.backend_name() == "PostgreSQL" {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
}

/// The database.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// Identical events within this window are counted on one row.
    event_window: chrono::Duration,
    /// SQLite: the writer that stores check-ins in shared transactions (see `group_commit`).
    group_commit: Option<group_commit::GroupCommit>,
    /// PostgreSQL: quiet check-ins stored in batches (`db::quiet_batch`).
    quiet_batches: Option<quiet_batch::QuietBatches>,
    /// PostgreSQL: director documents read in batches (`db::role_reads`).
    role_reads: Option<role_reads::RoleReads>,
}

/// Default of [`Db::with_event_window`].
pub const DEFAULT_EVENT_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// A vehicle to register with its ECUs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NewVehicle {
    /// Vehicle identification number.
    pub vin: String,
    /// ECU ID of the primary (T-BOX).
    pub primary_ecu: String,
    /// Every ECU, the primary included.
    pub ecus: Vec<NewEcu>,
    /// What the vehicle is (`model`, `region`, …), for choosing vehicles by it.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Free labels (`fleet-a`, `test-bench`), likewise.
    #[serde(default)]
    pub tags: BTreeSet<String>,
}

/// Longest attribute or tag name, and value.
pub const MAX_LABEL: usize = 64;
/// Most attributes and tags one vehicle has.
pub const MAX_LABELS: usize = 32;

/// Checks a vehicle's attributes and tags: at most [`MAX_LABELS`] of each; names of
/// `a-z`, `0-9`, `-`, `_`, `.` (1 to [`MAX_LABEL`] characters); values up to [`MAX_LABEL`]
/// characters without control characters. They end up in filters and tables.
pub fn validate_labels(
    attributes: &BTreeMap<String, String>,
    tags: &BTreeSet<String>,
) -> Result<()> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= MAX_LABEL
            && n.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            })
    };
    if attributes.len() > MAX_LABELS || tags.len() > MAX_LABELS {
        return Err(Error::BadRequest(format!(
            "at most {MAX_LABELS} attributes and {MAX_LABELS} tags per vehicle"
        )));
    }
    for (k, v) in attributes {
        if !name_ok(k) || v.chars().count() > MAX_LABEL || v.chars().any(char::is_control) {
            return Err(Error::BadRequest(format!(
                "attribute {k:?}={v:?}: names are 1 to {MAX_LABEL} characters of a-z, 0-9, -, _ \
                 and .; values at most {MAX_LABEL} characters"
            )));
        }
    }
    if let Some(t) = tags.iter().find(|t| !name_ok(t)) {
        return Err(Error::BadRequest(format!(
            "tag {t:?}: 1 to {MAX_LABEL} characters of a-z, 0-9, -, _ and ."
        )));
    }
    if let Some(w) = attributes.get(WINDOW_ATTRIBUTE) {
        w.parse::<rampart_core::uptane::window::MaintenanceWindow>()
            .map_err(|e| Error::BadRequest(format!("attribute {WINDOW_ATTRIBUTE}: {e}")))?;
    }
    Ok(())
}

/// The vehicle attribute that holds its maintenance window (`Mon-Fri 01:00-05:00
/// Europe/Berlin`): campaigns instruct the vehicle only inside it, and sign it into the
/// instruction for the primary to enforce. Set it on a group of vehicles with `rampart admin
/// label`.
pub const WINDOW_ATTRIBUTE: &str = "maintenance_window";

/// An ECU to register.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NewEcu {
    /// ECU identifier (serial).
    pub ecu_id: String,
    /// Hardware identifier.
    pub hardware_id: String,
    /// TUF public key object (JSON) of the ECU's signing key.
    #[schema(value_type = Object)]
    pub public_key: serde_json::Value,
    /// X25519 public key (hex) for encrypted images, if the ECU takes them.
    #[serde(default)]
    pub encryption_key: Option<String>,
    /// `full` or `partial` verification.
    pub verification: String,
}

/// What an ECU last reported as installed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Installed {
    /// Target path.
    pub target: String,
    /// Length.
    pub length: u64,
    /// Hashes (JSON object).
    #[schema(value_type = Object)]
    pub hashes: serde_json::Value,
    /// Release counter.
    pub release_counter: u64,
}

/// A registered ECU.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Ecu {
    /// ECU identifier.
    pub ecu_id: String,
    /// Hardware identifier.
    pub hardware_id: String,
    /// TUF public key object.
    #[schema(value_type = Object)]
    pub public_key: serde_json::Value,
    /// X25519 public key (hex).
    pub encryption_key: Option<String>,
    /// `full` or `partial`.
    pub verification: String,
    /// Last reported installed image.
    pub installed: Option<Installed>,
    /// Last accepted report counter.
    pub last_report_counter: Option<u64>,
    /// Who signs its version reports: `ecu` (its own key), or `gateway` — a legacy ECU
    /// flashed over UDS, registered with the primary's key, whose reports the primary makes
    /// from what the ECU answers (`vouched_by`; the core refuses a report that hides or fakes
    /// it).
    #[serde(default = "reports_by_ecu")]
    pub reports: String,
}

fn reports_by_ecu() -> String {
    "ecu".into()
}

/// A registered vehicle.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Vehicle {
    /// VIN.
    pub vin: String,
    /// Primary ECU ID.
    pub primary_ecu: String,
    /// When it was registered.
    pub created_at: String,
    /// Last accepted manifest counter.
    pub last_manifest_counter: Option<u64>,
    /// Last accepted check-in.
    pub last_seen: Option<String>,
    /// When it was taken out of the fleet (`None`: in service). Its records stay, for audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<String>,
    /// Why it was taken out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_reason: Option<String>,
    /// When it was quarantined (`None`: not): the director gives it no instructions until a
    /// security analyst releases it (see [`crate::vsoc`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined_at: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_reason: Option<String>,
    /// What the vehicle is (`model`, `region`, …).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Its labels.
    #[serde(default)]
    pub tags: BTreeSet<String>,
    /// Its ECUs.
    pub ecus: Vec<Ecu>,
}

/// An instruction to install a target on one ECU.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Assignment {
    /// ID.
    pub id: i64,
    /// Vehicle.
    pub vin: String,
    /// ECU.
    pub ecu_id: String,
    /// Target path in the image repository.
    pub target: String,
    /// Signed length.
    pub length: u64,
    /// Signed hashes.
    #[schema(value_type = Object)]
    pub hashes: serde_json::Value,
    /// Release counter.
    pub release_counter: u64,
    /// Send encrypted to the ECU.
    pub encrypt: bool,
    /// `pending`, `installed` or `superseded`.
    pub status: String,
    /// Created.
    pub created_at: String,
    /// Completed (installed) at.
    pub completed_at: Option<String>,
    /// The last failure the vehicle reported for it (`rule: message`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the vehicle may install it (signed into the instruction), if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<String>,
}

/// A director metadata document of one vehicle.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRole {
    /// `targets`, `snapshot` or `timestamp`.
    pub role: String,
    /// Version.
    pub version: u64,
    /// Expiry (RFC 3339).
    pub expires_at: String,
    /// Digest of the content that decided this version (targets: the instructions).
    pub content_digest: String,
    /// Signed document.
    pub document: String,
}

/// A security event.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SecurityEvent {
    /// ID (increasing).
    pub id: i64,
    /// When (RFC 3339).
    pub at: String,
    /// `server` (the server rejected something) or `vehicle` (an ECU reported an attack).
    pub source: String,
    /// The rule that failed (`bad-signature`, `replay`, `rollback`, …).
    pub rule: String,
    /// Vehicle, if known.
    pub vin: Option<String>,
    /// ECU, if known.
    pub ecu_id: Option<String>,
    /// Remote address or client identity.
    pub remote: Option<String>,
    /// Human-readable detail.
    pub detail: String,
    /// How many times it happened (repeats are counted, not stored again; see
    /// [`Db::record_event`]).
    pub count: u64,
    /// When it last happened (RFC 3339; `at` is the first time).
    pub last_at: String,
}

/// The columns [`event_from_row`] reads.
const EVENT_COLUMNS: &str = "id, at, source, rule, vin, ecu_id, remote, detail, count, last_at";

fn event_from_row(r: &AnyRow) -> Result<SecurityEvent> {
    Ok(SecurityEvent {
        id: get_i64(r, "id")?,
        at: get_str(r, "at")?,
        source: get_str(r, "source")?,
        rule: get_str(r, "rule")?,
        vin: get_opt_str(r, "vin")?,
        ecu_id: get_opt_str(r, "ecu_id")?,
        remote: get_opt_str(r, "remote")?,
        detail: get_str(r, "detail")?,
        count: to_u64(get_i64(r, "count")?)?,
        last_at: get_opt_str(r, "last_at")?.unwrap_or_default(),
    })
}

/// Where an encrypted image's ciphertext is and its content key.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageKey {
    /// Target path.
    pub target: String,
    /// Content key, sealed under the content KEK (`kek1:…`, see [`crate::keys::kek`]); plain
    /// hex only in rows written before keys were sealed (sealed at the next start).
    pub content_key: String,
    /// Ciphertext path under the targets base URL.
    pub ciphertext_path: String,
    /// Ciphertext length.
    pub ciphertext_length: u64,
    /// Ciphertext hashes (JSON).
    pub ciphertext_hashes: String,
}

/// The file of a `sqlite:` URL (`None` for in-memory databases).
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or("");
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| std::path::PathBuf::from(path))
}

/// Makes the SQLite database and its `-wal`/`-shm` files private (0600) before SQLite opens
/// them: a new database is created empty with mode 0600 (SQLite gives its WAL and index the
/// database file's mode), an existing one with a wider mode is narrowed, with a warning. The
/// database holds the fleet's inventory, manifests and sealed content keys.
fn make_sqlite_files_private(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(path, e)),
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(file = %file.display(), mode = format!("{mode:o}"), "database file was accessible to others; now 0600");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io(&file, e))?;
        }
    }
    Ok(())
}

pub(crate) fn db_err(what: &'static str) -> impl Fn(sqlx::Error) -> Error {
    move |source| Error::Sql { what, source }
}

/// A counter, length or version as the database's signed 64-bit integer. One that does not
/// fit is refused: clamping it would silently change a replay counter.
pub(crate) fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Rejected {
        status: axum::http::StatusCode::BAD_REQUEST,
        rule: Rule::CounterOutOfRange,
        message: format!(
            "{v} does not fit the database's 64-bit signed integer (at most {})",
            i64::MAX
        ),
    })
}

/// A stored counter, length or version back as unsigned. A negative one was not written by
/// us: an error, never 0.
pub(crate) fn to_u64(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::Database(format!("stored value {v} is negative")))
}

pub(crate) fn get_str(row: &AnyRow, col: &'static str) -> Result<String> {
    row.try_get::<String, _>(col).map_err(db_err(col))
}

pub(crate) fn get_opt_str(row: &AnyRow, col: &'static str) -> Result<Option<String>> {
    row.try_get::<Option<String>, _>(col).map_err(db_err(col))
}

pub(crate) fn get_i64(row: &AnyRow, col: &'static str) -> Result<i64> {
    row.try_get::<i64, _>(col).map_err(db_err(col))
}

pub(crate) fn get_opt_i64(row: &AnyRow, col: &'static str) -> Result<Option<i64>> {
    row.try_get::<Option<i64>, _>(col).map_err(db_err(col))
}

pub(crate) fn json_as<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| Error::Database(format!("stored {what} is not what it should be: {e}")))
}

pub(crate) fn json(text: &str, what: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text)
        .map_err(|e| Error::Database(format!("stored {what} is not JSON: {e}")))
}

/// Every table of the schema (what [`Db::count`] accepts).
pub const TABLES: [&str; 21] = [
    "vehicles",
    "ecus",
    "assignments",
    "director_roles",
    "manifests",
    "security_events",
    "image_keys",
    "deltas",
    "revocations",
    "campaigns",
    "campaign_members",
    "campaign_log",
    "update_records",
    "rxswin_history",
    "users",
    "sessions",
    "audit_log",
    "incidents",
    "incident_events",
    "incident_vehicles",
    "webhook_outbox",
];

/// A revoked vehicle certificate: every certificate of a VIN, or one by serial.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Revocation {
    /// ID (increasing).
    pub id: i64,
    /// Every certificate of this VIN is revoked…
    pub vin: Option<String>,
    /// …or the certificate with this serial (lower-case hex).
    pub serial: Option<String>,
    /// Why.
    pub reason: String,
    /// When (RFC 3339).
    pub revoked_at: String,
}

/// Prefix of the `content_digest` a change of instructions leaves on a vehicle's stored
/// director targets (followed by a unique suffix, so that two changes never look alike).
pub const INSTRUCTIONS_CHANGED: &str = "instructions-changed ";

/// A marker no other writer produces: time, process and a process-wide counter.
pub(crate) fn changed_marker() -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{INSTRUCTIONS_CHANGED}{} {} {}",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// The three director documents of a vehicle, as stored (each may be missing).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DirectorRoles {
    /// Director targets.
    pub targets: Option<StoredRole>,
    /// Director snapshot.
    pub snapshot: Option<StoredRole>,
    /// Director timestamp.
    pub timestamp: Option<StoredRole>,
}

impl DirectorRoles {
    /// Keeps `role` in its place (a role of another name is ignored).
    pub(crate) fn put(&mut self, role: StoredRole) {
        match role.role.as_str() {
            "targets" => self.targets = Some(role),
            "snapshot" => self.snapshot = Some(role),
            "timestamp" => self.timestamp = Some(role),
            _ => {}
        }
    }
}

/// A director document from a row of `director_roles` (columns `role`, `version`,
/// `expires_at`, `content_digest`, `document`).
pub(crate) fn stored_role(r: &AnyRow) -> Result<StoredRole> {
    Ok(StoredRole {
        role: get_str(r, "role")?,
        version: to_u64(get_i64(r, "version")?)?,
        expires_at: get_str(r, "expires_at")?,
        content_digest: get_str(r, "content_digest")?,
        document: get_str(r, "document")?,
    })
}

/// The refusal of a request about a vehicle taken out of the fleet at `at`: it gets no
/// metadata and no manifest of it is taken (its records stay, for audit).
pub(crate) fn removal_refusal(vin: &str, at: &str, reason: Option<&str>) -> Error {
    Error::Rejected {
        status: axum::http::StatusCode::FORBIDDEN,
        rule: Rule::VehicleRemoved,
        message: format!(
            "vehicle {vin} was removed from the fleet at {at} ({})",
            reason.unwrap_or("no reason given")
        ),
    }
}

/// Current time as stored (RFC 3339, seconds).
pub fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `now - age` as stored times are written (RFC 3339, seconds): what retention compares
/// them with. An age beyond the calendar reaches back to its start.
pub(crate) fn cutoff(now: chrono::DateTime<chrono::Utc>, age: std::time::Duration) -> String {
    let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
    now.checked_sub_signed(age)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Rows as the JSON text a batch statement reads (`json_to_recordset`), `what` naming them
/// in the error.
pub(crate) fn json_text<T: serde::Serialize + ?Sized>(rows: &T, what: &str) -> Result<String> {
    serde_json::to_string(rows).map_err(|e| Error::Database(format!("{what}: {e}")))
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The query behind [`Db::vehicle`] and [`Db::vehicles`]: a vehicle's row with each of its
/// ECUs (a vehicle without ECUs: one row of NULLs for them), from `$vehicles` (the vehicles
/// table, or a page of it).
macro_rules! vehicle_rows {
    ($vehicles:literal) => {
        concat!(
            "SELECT v.vin AS vin, v.primary_ecu AS primary_ecu, v.created_at AS created_at, \
     v.last_manifest_counter AS last_manifest_counter, v.last_seen AS last_seen, \
     v.removed_at AS removed_at, v.removed_reason AS removed_reason, \
     v.quarantined_at AS quarantined_at, v.quarantine_reason AS quarantine_reason, \
     v.attributes AS attributes, v.tags AS tags, \
     e.ecu_id AS ecu_id, e.hardware_id AS hardware_id, e.public_key AS public_key, \
     e.encryption_key AS encryption_key, e.verification AS verification, \
     e.installed_target AS installed_target, e.installed_length AS installed_length, \
     e.installed_hashes AS installed_hashes, \
     e.installed_release_counter AS installed_release_counter, \
     e.last_report_counter AS last_report_counter \
     FROM ",
            $vehicles,
            " v LEFT JOIN ecus e ON e.vin = v.vin"
        )
    };
}

/// Vehicles from `vehicle_rows!` rows ordered by VIN: consecutive rows of one VIN make one
/// vehicle.
fn vehicles_from_rows(rows: &[AnyRow]) -> Result<Vec<Vehicle>> {
    let mut out: Vec<Vehicle> = Vec::new();
    for r in rows {
        let vin = get_str(r, "vin")?;
        if out.last().is_none_or(|v| v.vin != vin) {
            out.push(Vehicle {
                vin,
                primary_ecu: get_str(r, "primary_ecu")?,
                created_at: get_str(r, "created_at")?,
                last_manifest_counter: get_opt_i64(r, "last_manifest_counter")?
                    .map(to_u64)
                    .transpose()?,
                last_seen: get_opt_str(r, "last_seen")?,
                removed_at: get_opt_str(r, "removed_at")?,
                removed_reason: get_opt_str(r, "removed_reason")?,
                quarantined_at: get_opt_str(r, "quarantined_at")?,
                quarantine_reason: get_opt_str(r, "quarantine_reason")?,
                attributes: json_as(
                    &get_opt_str(r, "attributes")?.unwrap_or_else(|| "{}".into()),
                    "attributes",
                )?,
                tags: json_as(
                    &get_opt_str(r, "tags")?.unwrap_or_else(|| "[]".into()),
                    "tags",
                )?,
                ecus: Vec::new(),
            });
        }
        // No ECU row: the LEFT JOIN's NULLs.
        let Some(ecu_id) = get_opt_str(r, "ecu_id")? else {
            continue;
        };
        let installed = match get_opt_str(r, "installed_target")? {
            Some(target) => Some(Installed {
                target,
                length: to_u64(get_opt_i64(r, "installed_length")?.unwrap_or(0))?,
                hashes: json(
                    &get_opt_str(r, "installed_hashes")?.unwrap_or_else(|| "{}".into()),
                    "hashes",
                )?,
                release_counter: to_u64(get_opt_i64(r, "installed_release_counter")?.unwrap_or(0))?,
            }),
            None => None,
        };
        let ecu = Ecu {
            ecu_id,
            hardware_id: get_str(r, "hardware_id")?,
            public_key: json(&get_str(r, "public_key")?, "public key")?,
            encryption_key: get_opt_str(r, "encryption_key")?,
            verification: get_str(r, "verification")?,
            installed,
            last_report_counter: get_opt_i64(r, "last_report_counter")?
                .map(to_u64)
                .transpose()?,
            reports: reports_by_ecu(),
        };
        if let Some(v) = out.last_mut() {
            v.ecus.push(ecu);
        }
    }
    for v in &mut out {
        mark_gateway_reports(v);
    }
    Ok(out)
}

/// An ECU other than the primary registered with the primary's key is a legacy ECU whose
/// reports the gateway makes.
fn mark_gateway_reports(v: &mut Vehicle) {
    let Some(primary_key) = v
        .ecus
        .iter()
        .find(|e| e.ecu_id == v.primary_ecu)
        .map(|e| e.public_key.clone())
    else {
        return;
    };
    for e in &mut v.ecus {
        if e.ecu_id != v.primary_ecu && e.public_key == primary_key {
            e.reports = "gateway".into();
        }
    }
}

/// A pooled connection idle this long is pinged before it is used (see [`Db::connect`]).
const PING_WHEN_IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

impl Db {
    /// Connects (`sqlite://PATH` — created if missing — or `postgres://…`) and runs the
    /// migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(Error::Config(format!(
                "unsupported database URL {url:?} (sqlite://… or postgres://…)"
            )));
        };
        if backend == Backend::Sqlite {
            if let Some(path) = sqlite_path(url) {
                make_sqlite_files_private(&path)?;
            }
        }
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let max = match backend {
            Backend::Sqlite => 4,
            Backend::Postgres => 16,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            // sqlx pings a pooled connection before every acquire by default: one more round
            // trip for every statement or transaction (a third of PostgreSQL's wake-ups in a
            // check-in; sqlx also pings on release, off the request's path). Only a connection
            // that sat idle long enough to have died unnoticed (a restarted or failed-over
            // database, a dropped idle TCP connection) is tested; a busy one is not.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_WHEN_IDLE_FOR {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        sqlx::query("PRAGMA journal_mode=WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA foreign_keys=ON")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout=10000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(db_err("connecting"))?;
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&pool)
            .await
            .map_err(|e| Error::Database(format!("migrations: {e}")))?;
        let mut db = Db {
            pool,
            backend,
            event_window: chrono::Duration::from_std(DEFAULT_EVENT_WINDOW)
                .unwrap_or(chrono::Duration::zero()),
            group_commit: None,
            quiet_batches: None,
            role_reads: None,
        };
        match backend {
            Backend::Sqlite => {
                db.group_commit = Some(group_commit::GroupCommit::start(db.clone()));
            }
            Backend::Postgres => {
                db.quiet_batches = Some(quiet_batch::QuietBatches::start(db.pool.clone()));
                db.role_reads = Some(role_reads::RoleReads::start(db.pool.clone()));
            }
        }
        Ok(db)
    }

    /// The same database, counting identical security events within `window` on one row.
    pub fn with_event_window(mut self, window: std::time::Duration) -> Self {
        self.event_window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::zero());
        if self.group_commit.is_some() {
            // The writer stores events of check-ins too: it gets the same window.
            let writer = Db {
                group_commit: None,
                ..self.clone()
            };
            self.group_commit = Some(group_commit::GroupCommit::start(writer));
        }
        self
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks the connection (for `/health`).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_err("ping"))?;
        Ok(())
    }

    /// Registers a vehicle and its ECUs (all or nothing).
    pub async fn register_vehicle(&self, v: &NewVehicle) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_err("begin"))?;
        let exists = sqlx::query("SELECT removed_at FROM vehicles WHERE vin = $1")
            .bind(&v.vin)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err("vehicle lookup"))?;
        if let Some(row) = exists {
            return Err(Error::Conflict(match get_opt_str(&row, "removed_at")? {
                Some(at) => format!(
                    "vehicle {} was removed at {at}; its records are kept for audit and its VIN \
                     is not registered again",
                    v.vin
                ),
                None => format!("vehicle {} is already registered", v.vin),
            }));
        }
        sqlx::query(
            "INSERT INTO vehicles (vin, primary_ecu, created_at, attributes, tags) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&v.vin)
        .bind(&v.primary_ecu)
        .bind(now_text())
        .bind(serde_json::to_string(&v.attributes).unwrap_or_else(|_| "{}".into()))
        .bind(serde_json::to_string(&v.tags).unwrap_or_else(|_| "[]".into()))
        .execute(&mut *tx)
        .await
        .map_err(db_err("insert vehicle"))?;
        for ecu in &v.ecus {
            sqlx::query(
                "INSERT INTO ecus (vin, ecu_id, hardware_id, public_key, encryption_key, verification) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&v.vin)
            .bind(&ecu.ecu_id)
            .bind(&ecu.hardware_id)
            .bind(ecu.public_key.to_string())
            .bind(ecu.encryption_key.clone())
            .bind(&ecu.verification)
            .execute(&mut *tx)
            .await
            .map_err(db_err("insert ECU"))?;
        }
        tx.commit().await.map_err(db_err("commit"))?;
        Ok(())
    }

    /// A vehicle with its ECUs (one query: every check-in and director request reads it).
    pub async fn vehicle(&self, vin: &str) -> Result<Option<Vehicle>> {
        let rows = sqlx::query(concat!(
            vehicle_rows!("vehicles"),
            " WHERE v.vin = $1 ORDER BY e.ecu_id"
        ))
        .bind(vin)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("vehicle"))?;
        Ok(vehicles_from_rows(&rows)?.into_iter().next())
    }

    /// The vehicles of the fleet (removed ones left out) with their ECUs, in VIN order, at
    /// most `limit` of them after `after` (a page; one query).
    pub async fn vehicles(&self, after: &str, limit: u32) -> Result<Vec<Vehicle>> {
        // The page first, then its ECUs: PostgreSQL planned `v.vin IN (page)` as a scan of
        // every vehicle (16–22 ms a page of 1,000 at 100,000 vehicles; 3.9 ms this way, by
        // the primary key).
        let rows = sqlx::query(concat!(
            vehicle_rows!(
                "(SELECT * FROM vehicles WHERE removed_at IS NULL AND vin > $1 ORDER BY vin LIMIT $2)"
            ),
            " ORDER BY v.vin, e.ecu_id"
        ))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("vehicles"))?;
        vehicles_from_rows(&rows)
    }

    /// Replaces a vehicle's attributes and tags.
    pub async fn set_labels(
        &self,
        vin: &str,
        attributes: &BTreeMap<String, String>,
        tags: &BTreeSet<String>,
    ) -> Result<()> {
        let done = sqlx::query("UPDATE vehicles SET attributes = $1, tags = $2 WHERE vin = $3")
            .bind(serde_json::to_string(attributes).unwrap_or_else(|_| "{}".into()))
            .bind(serde_json::to_string(tags).unwrap_or_else(|_| "[]".into()))
            .bind(vin)
            .execute(&self.pool)
            .await
            .map_err(db_err("set labels"))?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(format!("vehicle {vin} is not registered")));
        }
        Ok(())
    }

    /// Takes a vehicle out of the fleet: it is marked removed (its ECUs, assignments and
    /// events stay, for audit), its pending assignments are cancelled, and the director
    /// refuses it from then on. Returns when it was removed.
    pub async fn remove_vehicle(&self, vin: &str, reason: &str) -> Result<String> {
        let mut tx = self.pool.begin().await.map_err(db_err("begin"))?;
        let at = now_text();
        let done = sqlx::query(
            "UPDATE vehicles SET removed_at = $1, removed_reason = $2 \
             WHERE vin = $3 AND removed_at IS NULL",
        )
        .bind(&at)
        .bind(reason)
        .bind(vin)
        .execute(&mut *tx)
        .await
        .map_err(db_err("remove vehicle"))?;
        if done.rows_affected() == 0 {
            let row = sqlx::query("SELECT removed_at FROM vehicles WHERE vin = $1")
                .bind(vin)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err("vehicle lookup"))?;
            return Err(match row {
                None => Error::NotFound(format!("vehicle {vin} is not registered")),
                Some(r) => Error::Conflict(format!(
                    "vehicle {vin} was already removed at {}",
                    get_opt_str(&r, "removed_at")?.unwrap_or_default()
                )),
            });
        }
        sqlx::query(
            "UPDATE assignments SET status = 'cancelled' WHERE vin = $1 AND status = 'pending'",
        )
        .bind(vin)
        .execute(&mut *tx)
        .await
        .map_err(db_err("cancel assignments"))?;
        // The stored director documents no longer stand: the director's next request for
        // them reads the vehicle, and refuses it.
        Self::mark_instructions_changed(&mut tx, vin).await?;
        tx.commit().await.map_err(db_err("commit"))?;
        Ok(at)
    }

    /// Quarantines a vehicle (`reason: Some`) or releases it (`None`): while quarantined the
    /// director signs it no instructions. Its stored director documents are marked out of
    /// date in the same transaction, so the change takes effect at its next request.
    /// Returns whether anything changed (quarantining a quarantined vehicle does not).
    pub async fn set_quarantine(&self, vin: &str, reason: Option<&str>) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(db_err("begin"))?;
        let done = match reason {
            Some(reason) => sqlx::query(
                "UPDATE vehicles SET quarantined_at = $1, quarantine_reason = $2 \
                 WHERE vin = $3 AND quarantined_at IS NULL",
            )
            .bind(now_text())
            .bind(reason)
            .bind(vin),
            None => sqlx::query(
                "UPDATE vehicles SET quarantined_at = NULL, quarantine_reason = NULL \
                 WHERE vin = $1 AND quarantined_at IS NOT NULL",
            )
            .bind(vin),
        }
        .execute(&mut *tx)
        .await
        .map_err(db_err("quarantine"))?;
        if done.rows_affected() == 0 {
            let known = sqlx::query("SELECT vin FROM vehicles WHERE vin = $1")
                .bind(vin)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err("vehicle lookup"))?;
            if known.is_none() {
                return Err(Error::NotFound(format!("vehicle {vin} is not registered")));
            }
            return Ok(false);
        }
        Self::mark_instructions_changed(&mut tx, vin).await?;
        tx.commit().await.map_err(db_err("commit"))?;
        Ok(true)
    }

    /// The VINs of the fleet (removed vehicles left out), in order.
    pub async fn list_vins(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT vin FROM vehicles WHERE removed_at IS NULL ORDER BY vin")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("vehicles"))?;
        rows.iter().map(|r| get_str(r, "vin")).collect()
    }

    /// Creates an assignment; any pending one for the same ECU is superseded.
    pub async fn create_assignment(&self, a: &Assignment) -> Result<i64> {
        let mut tx = self.pool.begin().await.map_err(db_err("begin"))?;
        let id = Self::insert_assignment(&mut tx, a).await?;
        tx.commit().await.map_err(db_err("commit"))?;
        Ok(id)
    }

    /// The pool, for the modules that keep their own tables ([`crate::campaign`]).
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// [`Db::create_assignment`] inside the caller's transaction: supersedes the ECU's pending
    /// assignment, inserts this one and marks the vehicle's instructions changed.
    pub(crate) async fn insert_assignment(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        a: &Assignment,
    ) -> Result<i64> {
        sqlx::query("UPDATE assignments SET status = 'superseded' WHERE vin = $1 AND ecu_id = $2 AND status = 'pending'")
            .bind(&a.vin)
            .bind(&a.ecu_id)
            .execute(&mut **tx)
            .await
            .map_err(db_err("supersede"))?;
        let insert = sqlx::query(
            "INSERT INTO assignments (vin, ecu_id, target, length, hashes, release_counter, encrypt, status, created_at, maintenance_window) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9) RETURNING id",
        );
        let row = bind_instruction(insert, a)?
            .bind(now_text())
            .bind(a.maintenance_window.clone())
            .fetch_one(&mut **tx)
            .await
            .map_err(db_err("insert assignment"))?;
        let id = get_i64(&row, "id")?;
        Self::mark_instructions_changed(tx, &a.vin).await?;
        Ok(id)
    }

    pub(crate) fn assignment_from(r: &AnyRow) -> Result<Assignment> {
        Ok(Assignment {
            id: get_i64(r, "id")?,
            vin: get_str(r, "vin")?,
            ecu_id: get_str(r, "ecu_id")?,
            target: get_str(r, "target")?,
            length: to_u64(get_i64(r, "length")?)?,
            hashes: json(&get_str(r, "hashes")?, "hashes")?,
            release_counter: to_u64(get_i64(r, "release_counter")?)?,
            encrypt: get_str(r, "encrypt")? == "yes",
            status: get_str(r, "status")?,
            created_at: get_str(r, "created_at")?,
            completed_at: get_opt_str(r, "completed_at")?,
            last_error: get_opt_str(r, "last_error")?,
            maintenance_window: get_opt_str(r, "maintenance_window")?,
        })
    }

    /// Records the update failures a vehicle reported on its pending assignments of the same
    /// target (and ECU, when named). A failure the vehicle will meet on every cycle (`final`)
    /// ends the assignment as `failed`, and the director's instructions change; any other
    /// stays pending with its error shown. Returns how many assignments failed.
    pub async fn record_update_failures(
        &self,
        vin: &str,
        failures: &[(String, Option<String>, String, bool)],
    ) -> Result<u64> {
        let mut tx = self.pool.begin().await.map_err(db_err("begin"))?;
        let mut ended = 0;
        for (target, ecu, error, is_final) in failures {
            // The records first: which pending assignments the failure is about, and what
            // their ECUs run (still the old image).
            let about = sqlx::query(
                "SELECT id, ecu_id FROM assignments \
                 WHERE vin = $1 AND target = $2 AND ($3 = '' OR ecu_id = $3) AND status = 'pending'",
            )
            .bind(vin)
            .bind(target)
            .bind(ecu.clone().unwrap_or_default())
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err("failed assignments"))?;
            let result = if crate::campaign::plan::error_rule(error) == Rule::BootFailed.as_str() {
                "rolled-back"
            } else {
                "failed"
            };
            for row in &about {
                let (id, ecu_id) = (get_i64(row, "id")?, get_str(row, "ecu_id")?);
                let before = crate::records::installed_target(&mut tx, vin, &ecu_id).await?;
                let outcome = crate::records::Outcome {
                    assignment: id,
                    vin,
                    ecu_id: &ecu_id,
                    from: before.as_deref(),
                    to: target,
                    result,
                    detail: Some(error),
                };
                crate::records::record(&mut tx, &outcome).await?;
            }
            let status_if_final = if *is_final { "failed" } else { "pending" };
            let done = sqlx::query(
                "UPDATE assignments SET last_error = $1, status = $2 \
                 WHERE vin = $3 AND target = $4 AND ($5 = '' OR ecu_id = $5) AND status = 'pending'",
            )
            .bind(error)
            .bind(status_if_final)
            .bind(vin)
            .bind(target)
            .bind(ecu.clone().unwrap_or_default())
            .execute(&mut *tx)
            .await
            .map_err(db_err("record update failure"))?;
            if *is_final {
                ended += done.rows_affected();
            }
        }
        if ended > 0 {
            Self::mark_instructions_changed(&mut tx, vin).await?;
        }
        tx.commit().await.map_err(db_err("commit"))?;
        Ok(ended)
    }

    /// Assignments, optionally of one vehicle and/or one status, newest first.
    pub async fn assignments(
        &self,
        vin: Option<&str>,
        status: Option<&str>,
    ) -> Result<Vec<Assignment>> {
        let rows = sqlx::query(
            "SELECT id, vin, ecu_id, target, length, hashes, release_counter, encrypt, status, created_at, completed_at, last_error, maintenance_window \
             FROM assignments WHERE ($1 = '' OR vin = $1) AND ($2 = '' OR status = $2) ORDER BY id DESC LIMIT 10000",
        )
        .bind(vin.unwrap_or(""))
        .bind(status.unwrap_or(""))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("assignments"))?;
        rows.iter().map(Self::assignment_from).collect()
    }

    /// Accepts a check-in atomically: the manifest counter must be above the stored one
    /// (else [`Error::Replay`], and nothing is written); ECU reports update what is installed;
    /// assignments whose image is now installed complete; the check-in's security events are
    /// recorded. Returns the IDs of completed assignments.
    pub async fn record_checkin(&self, checkin: &Checkin<'_>) -> Result<Vec<i64>> {
        Ok(self.record_checkin_reading_roles(checkin).await?.0)
    }

    /// [`Db::record_checkin`], also returning the vehicle's director documents when the
    /// check-in read them on the way (PostgreSQL's one-statement check-in, which completes
    /// nothing; see `db::quiet_batch`): they are current unless something else changed since.
    pub async fn record_checkin_reading_roles(
        &self,
        checkin: &Checkin<'_>,
    ) -> Result<(Vec<i64>, Option<DirectorRoles>)> {
        let quiet_batches = self.quiet_batches.as_ref().filter(|_| {
            checkin.events.is_empty() && checkin.progress.is_empty() && !checkin.update_failures
        });
        if let Some(batches) = quiet_batches {
            if let Some((stored, roles)) = batches.record(checkin).await? {
                let dropped: Vec<&ReportUpdate> = checkin
                    .reports
                    .iter()
                    .filter(|r| !stored.contains(&r.ecu_id))
                    .collect();
                if !dropped.is_empty() {
                    // Accepted already: this copy of the manifest is the one that counts, so
                    // its dropped reports are recorded once.
                    let mut tx = self.pool.begin().await.map_err(db_err("begin"))?;
                    for report in dropped {
                        self.report_dropped(&mut tx, checkin, report).await?;
                    }
                    // Stored as quiet, but it carried a refused report: retention keeps it.
                    sqlx::query(
                        "UPDATE manifests SET quiet = FALSE WHERE vin = $1 AND counter = $2",
                    )
                    .bind(checkin.vin)
                    .bind(to_i64(checkin.counter)?)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err("keep manifest"))?;
                    tx.commit().await.map_err(db_err("commit"))?;
                }
                return Ok((Vec::new(), Some(roles)));
            }
        }
        if let Some(writer) = &self.group_commit {
            if let Some(answer) = writer.record(checkin).await {
                return Ok((answer?, None));
            }
        }
        let mut tx = self.pool.begin().await.map_err(db_err("begin"))?;
        let completed = self
            .record_checkin_in(&mut tx, checkin, &now_text())
            .await?;
        tx.commit().await.map_err(db_err("commit"))?;
        Ok((completed, None))
    }

    /// [`Db::record_checkin`]'s general path inside the caller's transaction (its own, or a
    /// savepoint of a group commit): on an error the caller rolls back.
    async fn record_checkin_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        checkin: &Checkin<'_>,
        now: &str,
    ) -> Result<Vec<i64>> {
        // The counter moves, and says whether anything is pending for the vehicle: the
        // common check-in (nothing pending) reads no assignments.
        let moved = sqlx::query(
            "UPDATE vehicles SET last_manifest_counter = $1, last_seen = $2 \
             WHERE vin = $3 AND removed_at IS NULL \
             AND (last_manifest_counter IS NULL OR last_manifest_counter < $1) \
             RETURNING (SELECT count(*) FROM assignments WHERE vin = $3 AND status = 'pending') AS pending",
        )
        .bind(to_i64(checkin.counter)?)
        .bind(now)
        .bind(checkin.vin)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_err("manifest counter"))?;
        let Some(moved) = moved else {
            return Err(Self::not_moved(tx, checkin).await);
        };
        let any_pending = get_i64(&moved, "pending")? > 0;
        // The vehicle's pending assignments, read once for all its reports.
        let pending = if checkin.reports.is_empty() || !any_pending {
            Vec::new()
        } else {
            sqlx::query(
                "SELECT id, vin, ecu_id, target, length, hashes, release_counter, encrypt, status, created_at, completed_at, last_error, maintenance_window \
                 FROM assignments WHERE vin = $1 AND status = 'pending' ORDER BY id",
            )
            .bind(checkin.vin)
            .fetch_all(&mut **tx)
            .await
            .map_err(db_err("pending assignments"))?
            .iter()
            .map(Self::assignment_from)
            .collect::<Result<Vec<_>>>()?
        };
        // What each ECU that completes an assignment ran before this report, for its update
        // record (read only then: completions are rare, reports are not).
        let mut before = BTreeMap::new();
        for report in &checkin.reports {
            if pending
                .iter()
                .any(|a| a.ecu_id == report.ecu_id && a.target == report.installed.target)
            {
                let ran = crate::records::installed_target(tx, checkin.vin, &report.ecu_id).await?;
                before.insert(report.ecu_id.as_str(), ran);
            }
        }
        let stored = Self::store_reports(tx, checkin.vin, &checkin.reports).await?;
        let mut completed = Vec::new();
        let mut dropped = false;
        for report in &checkin.reports {
            if !stored.contains(&report.ecu_id) {
                self.report_dropped(tx, checkin, report).await?;
                dropped = true;
                continue;
            }
            let before = before.get(report.ecu_id.as_str()).cloned().flatten();
            for a in pending.iter().filter(|a| a.ecu_id == report.ecu_id) {
                if completed.contains(&a.id) {
                    continue;
                }
                if a.target == report.installed.target
                    && a.length == report.installed.length
                    && a.hashes == report.installed.hashes
                {
                    sqlx::query("UPDATE assignments SET status = 'installed', completed_at = $1 WHERE id = $2")
                        .bind(now)
                        .bind(a.id)
                        .execute(&mut **tx)
                        .await
                        .map_err(db_err("complete assignment"))?;
                    let outcome = crate::records::Outcome {
                        assignment: a.id,
                        vin: checkin.vin,
                        ecu_id: &a.ecu_id,
                        from: before.as_deref(),
                        to: &a.target,
                        result: "installed",
                        detail: None,
                    };
                    crate::records::record(tx, &outcome).await?;
                    completed.push(a.id);
                }
            }
        }
        for (target, ecu, stage) in &checkin.progress {
            sqlx::query(
                "UPDATE assignments SET stage = $1 WHERE vin = $2 AND ecu_id = $3 AND target = $4 \
                 AND status = 'pending'",
            )
            .bind(*stage)
            .bind(checkin.vin)
            .bind(ecu)
            .bind(target)
            .execute(&mut **tx)
            .await
            .map_err(db_err("update progress"))?;
        }
        // Quiet: the check-in changed nothing an audit looks for (retention prunes it by age).
        let quiet = completed.is_empty()
            && !dropped
            && checkin.events.is_empty()
            && checkin.progress.is_empty()
            && !checkin.update_failures;
        sqlx::query("INSERT INTO manifests (vin, counter, nonce, received_at, document, quiet) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(checkin.vin)
            .bind(to_i64(checkin.counter)?)
            .bind(checkin.nonce)
            .bind(now)
            .bind(checkin.document)
            .bind(quiet)
            .execute(&mut **tx)
            .await
            .map_err(db_err("store manifest"))?;
        if !completed.is_empty() {
            Self::mark_instructions_changed(tx, checkin.vin).await?;
        }
        for event in &checkin.events {
            self.insert_event(tx, event).await?;
        }
        Ok(completed)
    }

    /// Why a check-in's manifest counter did not move: its vehicle was removed (the caller
    /// may have verified it against keys it kept, `director::known`), or the counter is not
    /// above the stored one.
    async fn not_moved(tx: &mut sqlx::Transaction<'_, sqlx::Any>, checkin: &Checkin<'_>) -> Error {
        let row =
            match sqlx::query("SELECT removed_at, removed_reason FROM vehicles WHERE vin = $1")
                .bind(checkin.vin)
                .fetch_optional(&mut **tx)
                .await
            {
                Ok(row) => row,
                Err(e) => return db_err("removed vehicle")(e),
            };
        let field = |name| {
            row.as_ref()
                .and_then(|r| get_opt_str(r, name).ok().flatten())
        };
        match field("removed_at") {
            Some(at) => removal_refusal(checkin.vin, &at, field("removed_reason").as_deref()),
            None => Error::Replay(format!(
                "manifest counter {} of {} is not above the last accepted one",
                checkin.counter, checkin.vin
            )),
        }
    }

    /// The security event of an ECU report a check-in could not store: its counter was
    /// moved past it since the director read it (a replayed report raced a newer one).
    async fn report_dropped(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        checkin: &Checkin<'_>,
        report: &ReportUpdate,
    ) -> Result<()> {
        let detail = format!(
            "ECU report counter {} of {} is not above the last accepted one",
            report.report_counter, report.ecu_id
        );
        tracing::warn!(vin = checkin.vin, ecu = %report.ecu_id, %detail, "security event");
        let event = NewEvent {
            source: "server",
            rule: Rule::Replay.as_str(),
            vin: Some(checkin.vin),
            ecu_id: Some(&report.ecu_id),
            remote: checkin.remote,
            detail: &detail,
        };
        self.insert_event(tx, &event).await
    }

    /// Stores every accepted ECU report of a check-in in one statement, each only if its
    /// counter is above the ECU's last accepted one (another check-in may have moved it
    /// since the caller read it). Returns the ECUs whose report was stored. One statement
    /// instead of one per ECU: a check-in's cost is mostly its round trips to the database.
    async fn store_reports(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        vin: &str,
        reports: &[ReportUpdate],
    ) -> Result<BTreeSet<String>> {
        if reports.is_empty() {
            return Ok(BTreeSet::new());
        }
        let sql = format!(
            "{} RETURNING ecu_id",
            reports_update(reports.len(), 1, 6 * reports.len() + 1)
        );
        let rows = bind_reports(sqlx::query(&sql), reports)?
            .bind(vin)
            .fetch_all(&mut **tx)
            .await
            .map_err(db_err("ECU reports"))?;
        rows.iter().map(|r| get_str(r, "ecu_id")).collect()
    }

    /// Marks `vin`'s stored director targets as no longer matching its instructions (see the
    /// module documentation), inside the caller's transaction.
    ///
    /// A vehicle never signed for gets a placeholder targets row (version 0, no document)
    /// carrying the marker: a first signer that read nothing cannot insert over it, so
    /// instructions derived before the change are not stored after it.
    pub(crate) async fn mark_instructions_changed(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        vin: &str,
    ) -> Result<()> {
        Self::mark_many_instructions_changed(tx, [vin]).await
    }

    /// [`Db::mark_instructions_changed`] for several vehicles in one statement (each VIN
    /// once: an upsert may not touch a row twice), each with a marker of its own.
    pub(crate) async fn mark_many_instructions_changed<'v>(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        vins: impl IntoIterator<Item = &'v str>,
    ) -> Result<()> {
        let vins: BTreeSet<&str> = vins.into_iter().collect();
        if vins.is_empty() {
            return Ok(());
        }
        let rows: Vec<String> = (0..vins.len())
            .map(|k| {
                format!(
                    "(${}, 'targets', 0, '1970-01-01T00:00:00Z', ${}, '')",
                    2 * k + 1,
                    2 * k + 2
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO director_roles (vin, role, version, expires_at, content_digest, document) \
             VALUES {} ON CONFLICT (vin, role) DO UPDATE SET content_digest = excluded.content_digest",
            rows.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for vin in vins {
            q = q.bind(vin).bind(changed_marker());
        }
        q.execute(&mut **tx)
            .await
            .map_err(db_err("mark instructions changed"))?;
        Ok(())
    }

    /// The three director documents of `vin`, in one read (on PostgreSQL, one read with the
    /// other vehicles' that arrive together: `db::role_reads`).
    pub async fn director_roles(&self, vin: &str) -> Result<DirectorRoles> {
        if let Some(reads) = &self.role_reads {
            if let Some(roles) = reads.of(vin).await {
                return roles;
            }
        }
        let rows = sqlx::query(
            "SELECT role, version, expires_at, content_digest, document FROM director_roles WHERE vin = $1",
        )
        .bind(vin)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("director roles"))?;
        let mut out = DirectorRoles::default();
        for r in &rows {
            out.put(stored_role(r)?);
        }
        Ok(out)
    }

    /// The current director document of `role` for `vin`.
    pub async fn director_role(&self, vin: &str, role: &str) -> Result<Option<StoredRole>> {
        let row = sqlx::query(
            "SELECT role, version, expires_at, content_digest, document FROM director_roles WHERE vin = $1 AND role = $2",
        )
        .bind(vin)
        .bind(role)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("director role"))?;
        row.map(|r| stored_role(&r)).transpose()
    }

    /// Replaces director documents of `vin`, each only if its stored version is still
    /// `previous` (none stored for `None`). Returns false if another writer got there first.
    pub async fn replace_director_roles(
        &self,
        vin: &str,
        roles: &[(Option<u64>, StoredRole)],
    ) -> Result<bool> {
        self.replace_director_roles_from(vin, None, roles).await
    }

    /// [`Db::replace_director_roles`], and if `targets_digest` is given, only if the stored
    /// targets' `content_digest` is still that one: instructions derived before a change of
    /// assignments are not stored after it.
    pub async fn replace_director_roles_from(
        &self,
        vin: &str,
        targets_digest: Option<&str>,
        roles: &[(Option<u64>, StoredRole)],
    ) -> Result<bool> {
        if self.backend == Backend::Postgres {
            return role_write::replace(&self.pool, vin, targets_digest, roles).await;
        }
        let mut tx = self.pool.begin().await.map_err(db_err("begin"))?;
        for (previous, r) in roles {
            let digest = targets_digest.filter(|_| r.role == "targets");
            let done = match previous {
                Some(prev) => sqlx::query(
                    "UPDATE director_roles SET version = $1, expires_at = $2, content_digest = $3, document = $4 \
                     WHERE vin = $5 AND role = $6 AND version = $7 AND ($8 = '' OR content_digest = $8)",
                )
                .bind(to_i64(r.version)?)
                .bind(&r.expires_at)
                .bind(&r.content_digest)
                .bind(&r.document)
                .bind(vin)
                .bind(&r.role)
                .bind(to_i64(*prev)?)
                .bind(digest.unwrap_or(""))
                .execute(&mut *tx)
                .await
                .map_err(db_err("update director role"))?
                .rows_affected(),
                None => sqlx::query(
                    "INSERT INTO director_roles (vin, role, version, expires_at, content_digest, document) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (vin, role) DO NOTHING",
                )
                .bind(vin)
                .bind(&r.role)
                .bind(to_i64(r.version)?)
                .bind(&r.expires_at)
                .bind(&r.content_digest)
                .bind(&r.document)
                .execute(&mut *tx)
                .await
                .map_err(db_err("insert director role"))?
                .rows_affected(),
            };
            if done != 1 {
                tx.rollback().await.map_err(db_err("rollback"))?;
                return Ok(false);
            }
        }
        tx.commit().await.map_err(db_err("commit"))?;
        Ok(true)
    }

    /// Marks every vehicle's director metadata as expired, so each is re-signed (version + 1)
    /// on its next request: after a director key rotation.
    pub async fn expire_director_roles(&self) -> Result<u64> {
        let done = sqlx::query("UPDATE director_roles SET expires_at = '1970-01-01T00:00:00Z'")
            .execute(&self.pool)
            .await
            .map_err(db_err("expire director roles"))?;
        Ok(done.rows_affected())
    }

    /// Records a security event. A repeat — same source, rule, vehicle, ECU, detail and
    /// client address as an event last seen within the event window — is counted on that
    /// event instead of stored again (see [`Aggregate::Identical`]).
    pub async fn record_event(&self, e: &NewEvent<'_>) -> Result<()> {
        self.record_event_at(e, chrono::Utc::now(), Aggregate::Identical)
            .await
    }

    /// [`Db::record_event`] at time `at`, aggregated as `how`.
    pub async fn record_event_at(
        &self,
        e: &NewEvent<'_>,
        at: chrono::DateTime<chrono::Utc>,
        how: Aggregate,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_err("begin"))?;
        self.store_event(&mut tx, e, at, how).await?;
        tx.commit().await.map_err(db_err("commit"))
    }

    /// Inserts a security event inside the caller's transaction (identical repeats counted).
    async fn insert_event(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        e: &NewEvent<'_>,
    ) -> Result<()> {
        self.store_event(tx, e, chrono::Utc::now(), Aggregate::Identical)
            .await
    }

    /// Stores `e` at `at`: counted on the latest matching event within the window (which is
    /// moved to a new, highest ID — so "events newer than ID N" also finds repeats), or
    /// inserted.
    async fn store_event(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        e: &NewEvent<'_>,
        at: chrono::DateTime<chrono::Utc>,
        how: Aggregate,
    ) -> Result<()> {
        let now = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let since = (at - self.event_window).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let ip = e.remote.and_then(remote_ip).map(|ip| ip.to_string());
        let identical = matches!(how, Aggregate::Identical);
        // One statement takes the latest matching event out (a write first: SQLite then takes
        // its write lock before it reads, so concurrent writers queue instead of failing), and
        // it comes back with one more occurrence. A concurrent writer that finds it gone
        // inserts its own occurrence below: no occurrence is lost.
        let latest = sqlx::query(
            "DELETE FROM security_events WHERE id = (SELECT id FROM security_events \
             WHERE source = $1 AND rule = $2 AND COALESCE(source_ip, '') = $3 AND COALESCE(last_at, at) >= $4 \
             AND ($5 = 0 OR (COALESCE(vin, '') = $6 AND COALESCE(ecu_id, '') = $7 AND detail = $8)) \
             ORDER BY id DESC LIMIT 1) \
             RETURNING at, source, rule, vin, ecu_id, remote, detail, count",
        )
        .bind(e.source)
        .bind(e.rule)
        .bind(ip.clone().unwrap_or_default())
        .bind(&since)
        .bind(i64::from(identical))
        .bind(e.vin.unwrap_or(""))
        .bind(e.ecu_id.unwrap_or(""))
        .bind(e.detail)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_err("security event"))?;
        if let Some(row) = latest {
            sqlx::query(
                "INSERT INTO security_events (at, source, rule, vin, ecu_id, remote, detail, count, last_at, source_ip) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(get_str(&row, "at")?)
            .bind(get_str(&row, "source")?)
            .bind(get_str(&row, "rule")?)
            .bind(get_opt_str(&row, "vin")?)
            .bind(get_opt_str(&row, "ecu_id")?)
            .bind(get_opt_str(&row, "remote")?)
            .bind(get_str(&row, "detail")?)
            .bind(get_i64(&row, "count")?.saturating_add(1))
            .bind(&now)
            .bind(ip)
            .execute(&mut **tx)
            .await
            .map_err(db_err("security event"))?;
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO security_events (at, source, rule, vin, ecu_id, remote, detail, count, last_at, source_ip) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $1, $8)",
        )
        .bind(&now)
        .bind(e.source)
        .bind(e.rule)
        .bind(e.vin.map(str::to_owned))
        .bind(e.ecu_id.map(str::to_owned))
        .bind(e.remote.map(str::to_owned))
        .bind(e.detail)
        .bind(ip)
        .execute(&mut **tx)
        .await
        .map_err(db_err("security event"))?;
        Ok(())
    }

    /// Deletes security events last seen before `now - max_age`, then all but the newest
    /// `max_rows` (either bound optional). Returns how many rows went.
    pub async fn prune_events(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        max_age: Option<std::time::Duration>,
        max_rows: Option<u64>,
    ) -> Result<u64> {
        let mut deleted = 0;
        if let Some(age) = max_age {
            deleted += sqlx::query("DELETE FROM security_events WHERE COALESCE(last_at, at) < $1")
                .bind(cutoff(now, age))
                .execute(&self.pool)
                .await
                .map_err(db_err("prune security events"))?
                .rows_affected();
        }
        if let Some(rows) = max_rows {
            deleted += sqlx::query(
                "DELETE FROM security_events WHERE id <= \
                 (SELECT id FROM security_events ORDER BY id DESC LIMIT 1 OFFSET $1)",
            )
            .bind(to_i64(rows)?)
            .execute(&self.pool)
            .await
            .map_err(db_err("prune security events"))?
            .rows_affected();
        }
        Ok(deleted)
    }

    /// Deletes stored manifests received before `now - quiet_max_age` whose check-in changed
    /// nothing (`quiet`), and any received before `now - max_age` (either bound optional),
    /// except each vehicle's newest manifest, which is always kept. Returns how many went.
    ///
    /// Manifests are the bulk of the database (one per vehicle per cycle); quiet ones say
    /// only "nothing changed", which the vehicle's newest manifest still says. Deleted a
    /// batch at a time, oldest first, each batch its own statement: no long transaction
    /// holds check-ins back, and an interrupted run leaves only fewer rows to the next.
    pub async fn prune_manifests(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        quiet_max_age: Option<std::time::Duration>,
        max_age: Option<std::time::Duration>,
    ) -> Result<u64> {
        /// Rows a statement deletes at most.
        const BATCH: u64 = 10_000;
        // Each kind of row has its partial index by age (migration 0012), hence two
        // statements rather than one with an OR. PostgreSQL is given the IDs as an array:
        // with `id IN (subquery)` its generic plan hash-joins the batch against a scan of
        // the whole table.
        let (open, close) = match self.backend {
            Backend::Postgres => ("= ANY (ARRAY(", "))"),
            Backend::Sqlite => ("IN (", ")"),
        };
        let passes = [("m.quiet", quiet_max_age), ("NOT m.quiet", max_age)];
        let mut deleted = 0;
        for (kind, age) in passes {
            let Some(age) = age else { continue };
            let sql = format!(
                "DELETE FROM manifests WHERE id {open}SELECT m.id FROM manifests m \
                 WHERE {kind} AND m.received_at < $1 \
                 AND EXISTS (SELECT 1 FROM manifests n WHERE n.vin = m.vin AND n.id > m.id) \
                 ORDER BY m.received_at LIMIT $2{close}"
            );
            let before = cutoff(now, age);
            loop {
                let n = sqlx::query(&sql)
                    .bind(&before)
                    .bind(to_i64(BATCH)?)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err("prune manifests"))?
                    .rows_affected();
                deleted += n;
                if n < BATCH {
                    break;
                }
            }
        }
        Ok(deleted)
    }

    /// Security events last seen at or after `since` (RFC 3339), newest first, at most
    /// `limit` (what the V-SOC engine's window reads).
    pub async fn events_since(&self, since: &str, limit: u32) -> Result<Vec<SecurityEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM security_events WHERE COALESCE(last_at, at) >= $1 \
             ORDER BY id DESC LIMIT $2"
        ))
        .bind(since)
        .bind(i64::from(limit.clamp(1, 100_000)))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("security events"))?;
        rows.iter().map(event_from_row).collect()
    }

    /// Security events with an ID above `after`, oldest first, at most `limit` (an event
    /// counted again moves to a new ID, so a reader keeping the last ID it saw sees repeats).
    pub async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<SecurityEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM security_events WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after)
        .bind(i64::from(limit.clamp(1, 100_000)))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("security events"))?;
        rows.iter().map(event_from_row).collect()
    }

    /// Security events in a time range (RFC 3339 bounds, empty: open), filtered by vehicle
    /// and rule, newest first.
    pub async fn events_between(
        &self,
        vin: Option<&str>,
        rule: Option<&str>,
        from: &str,
        to: &str,
        limit: u32,
    ) -> Result<Vec<SecurityEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM security_events \
             WHERE ($1 = '' OR vin = $1) AND ($2 = '' OR rule = $2) \
             AND ($3 = '' OR COALESCE(last_at, at) >= $3) AND ($4 = '' OR at <= $4) \
             ORDER BY id DESC LIMIT $5"
        ))
        .bind(vin.unwrap_or(""))
        .bind(rule.unwrap_or(""))
        .bind(from)
        .bind(to)
        .bind(i64::from(limit.clamp(1, 100_000)))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("security events"))?;
        rows.iter().map(event_from_row).collect()
    }

    /// Withdraws the pending assignments of `target` not being installed (a V-SOC response
    /// to an incident about the image); returns the vehicles concerned.
    pub async fn withdraw_pending_target(&self, target: &str) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await.map_err(db_err("begin"))?;
        let rows = sqlx::query(
            "UPDATE assignments SET status = 'withdrawn', completed_at = $1 \
             WHERE target = $2 AND status = 'pending' \
             AND (stage IS NULL OR stage <> 'installing' OR last_error IS NOT NULL) RETURNING vin",
        )
        .bind(now_text())
        .bind(target)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err("withdraw assignments"))?;
        let vins: BTreeSet<String> = rows
            .iter()
            .map(|r| get_str(r, "vin"))
            .collect::<Result<_>>()?;
        for vin in &vins {
            Self::mark_instructions_changed(&mut tx, vin).await?;
        }
        tx.commit().await.map_err(db_err("commit"))?;
        Ok(vins.into_iter().collect())
    }

    /// Security events, newest first, filtered by vehicle and/or rule.
    pub async fn events(
        &self,
        vin: Option<&str>,
        rule: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SecurityEvent>> {
        let rows = sqlx::query(
            "SELECT id, at, source, rule, vin, ecu_id, remote, detail, count, last_at FROM security_events \
             WHERE ($1 = '' OR vin = $1) AND ($2 = '' OR rule = $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(vin.unwrap_or(""))
        .bind(rule.unwrap_or(""))
        .bind(i64::from(limit.clamp(1, 10_000)))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("security events"))?;
        rows.iter().map(event_from_row).collect()
    }

    /// Stores (or replaces) the content key of an encrypted image.
    pub async fn store_image_key(&self, k: &ImageKey) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_err("begin"))?;
        sqlx::query("DELETE FROM image_keys WHERE target = $1")
            .bind(&k.target)
            .execute(&mut *tx)
            .await
            .map_err(db_err("image key"))?;
        sqlx::query(
            "INSERT INTO image_keys (target, content_key, ciphertext_path, ciphertext_length, ciphertext_hashes) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&k.target)
        .bind(&k.content_key)
        .bind(&k.ciphertext_path)
        .bind(to_i64(k.ciphertext_length)?)
        .bind(&k.ciphertext_hashes)
        .execute(&mut *tx)
        .await
        .map_err(db_err("image key"))?;
        tx.commit().await.map_err(db_err("commit"))?;
        Ok(())
    }

    /// Every encrypted image's key row (for sealing legacy plain-text keys).
    pub async fn image_keys(&self) -> Result<Vec<ImageKey>> {
        let rows = sqlx::query(
            "SELECT target, content_key, ciphertext_path, ciphertext_length, ciphertext_hashes FROM image_keys ORDER BY target",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("image keys"))?;
        rows.iter()
            .map(|r| {
                Ok(ImageKey {
                    target: get_str(r, "target")?,
                    content_key: get_str(r, "content_key")?,
                    ciphertext_path: get_str(r, "ciphertext_path")?,
                    ciphertext_length: to_u64(get_i64(r, "ciphertext_length")?)?,
                    ciphertext_hashes: get_str(r, "ciphertext_hashes")?,
                })
            })
            .collect()
    }

    /// Replaces the stored content key of `target` by `new`, only if it is still `old`.
    pub async fn replace_content_key(&self, target: &str, old: &str, new: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE image_keys SET content_key = $1 WHERE target = $2 AND content_key = $3",
        )
        .bind(new)
        .bind(target)
        .bind(old)
        .execute(&self.pool)
        .await
        .map_err(db_err("image key"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a delta target of the image repository (replacing a row for the same path).
    pub async fn store_delta(
        &self,
        offer: &rampart_core::uptane::DeltaOffer,
        target: &str,
    ) -> Result<()> {
        let source_sha256 = offer
            .source
            .hashes
            .get("sha256")
            .cloned()
            .unwrap_or_default();
        let json = serde_json::to_string(offer)
            .map_err(|e| Error::Database(format!("delta offer: {e}")))?;
        let mut tx = self.pool.begin().await.map_err(db_err("begin"))?;
        sqlx::query("DELETE FROM deltas WHERE path = $1")
            .bind(&offer.path)
            .execute(&mut *tx)
            .await
            .map_err(db_err("delta"))?;
        sqlx::query(
            "INSERT INTO deltas (path, target, source_sha256, offer) VALUES ($1, $2, $3, $4)",
        )
        .bind(&offer.path)
        .bind(target)
        .bind(&source_sha256)
        .bind(&json)
        .execute(&mut *tx)
        .await
        .map_err(db_err("delta"))?;
        tx.commit().await.map_err(db_err("commit"))?;
        Ok(())
    }

    /// The delta to `target` from the image whose SHA-256 is `source_sha256`, if one is
    /// published (the most recently recorded, if several).
    pub async fn delta_to(
        &self,
        target: &str,
        source_sha256: &str,
    ) -> Result<Option<rampart_core::uptane::DeltaOffer>> {
        let row = sqlx::query(
            "SELECT offer FROM deltas WHERE target = $1 AND source_sha256 = $2 ORDER BY path LIMIT 1",
        )
        .bind(target)
        .bind(source_sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("delta"))?;
        row.map(|r| {
            let text = get_str(&r, "offer")?;
            serde_json::from_str(&text)
                .map_err(|e| Error::Database(format!("stored delta offer: {e}")))
        })
        .transpose()
    }

    /// The content key of an encrypted image.
    pub async fn image_key(&self, target: &str) -> Result<Option<ImageKey>> {
        let row = sqlx::query(
            "SELECT target, content_key, ciphertext_path, ciphertext_length, ciphertext_hashes FROM image_keys WHERE target = $1",
        )
        .bind(target)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("image key"))?;
        row.map(|r| {
            Ok(ImageKey {
                target: get_str(&r, "target")?,
                content_key: get_str(&r, "content_key")?,
                ciphertext_path: get_str(&r, "ciphertext_path")?,
                ciphertext_length: to_u64(get_i64(&r, "ciphertext_length")?)?,
                ciphertext_hashes: get_str(&r, "ciphertext_hashes")?,
            })
        })
        .transpose()
    }

    /// Revokes every certificate of `vin` and/or the certificate with `serial` (hex, any
    /// case; stored lower-case). Returns the revocation's ID.
    pub async fn revoke(
        &self,
        vin: Option<&str>,
        serial: Option<&str>,
        reason: &str,
    ) -> Result<i64> {
        if vin.is_none() && serial.is_none() {
            return Err(Error::BadRequest(
                "revoke what: give a VIN or a certificate serial".into(),
            ));
        }
        let serial = serial.map(normalize_serial).transpose()?;
        let row = sqlx::query(
            "INSERT INTO revocations (vin, serial, reason, revoked_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(vin.map(str::to_owned))
        .bind(serial)
        .bind(reason)
        .bind(now_text())
        .fetch_one(&self.pool)
        .await
        .map_err(db_err("revoke"))?;
        get_i64(&row, "id")
    }

    /// Lifts the revocations of `vin` (its certificates are accepted again). Returns how many
    /// were lifted.
    pub async fn unrevoke_vin(&self, vin: &str) -> Result<u64> {
        let done = sqlx::query("DELETE FROM revocations WHERE vin = $1")
            .bind(vin)
            .execute(&self.pool)
            .await
            .map_err(db_err("unrevoke"))?;
        Ok(done.rows_affected())
    }

    /// Every revocation, oldest first.
    pub async fn revocations(&self) -> Result<Vec<Revocation>> {
        let rows =
            sqlx::query("SELECT id, vin, serial, reason, revoked_at FROM revocations ORDER BY id")
                .fetch_all(&self.pool)
                .await
                .map_err(db_err("revocations"))?;
        rows.iter()
            .map(|r| {
                Ok(Revocation {
                    id: get_i64(r, "id")?,
                    vin: get_opt_str(r, "vin")?,
                    serial: get_opt_str(r, "serial")?,
                    reason: get_str(r, "reason")?,
                    revoked_at: get_str(r, "revoked_at")?,
                })
            })
            .collect()
    }

    /// Row count and highest ID of the revocations: any revoke or unrevoke changes them (what
    /// [`crate::revocation::Revocations`] polls).
    pub async fn revocations_version(&self) -> Result<(u64, i64)> {
        let row = sqlx::query("SELECT COUNT(*) AS n, COALESCE(MAX(id), 0) AS top FROM revocations")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err("revocations"))?;
        Ok((to_u64(get_i64(&row, "n")?)?, get_i64(&row, "top")?))
    }

    /// The revocation that applies to a certificate for `vin` with `serial` (hex, lower-case)
    /// if any: one indexed lookup, on the path of every vehicle request.
    pub async fn revocation_of(
        &self,
        vin: &str,
        serial: Option<&str>,
    ) -> Result<Option<Revocation>> {
        let row = sqlx::query(
            "SELECT id, vin, serial, reason, revoked_at FROM revocations \
             WHERE vin = $1 OR serial = $2 ORDER BY id LIMIT 1",
        )
        .bind(vin)
        .bind(serial.unwrap_or(""))
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("revocation"))?;
        row.map(|r| {
            Ok(Revocation {
                id: get_i64(&r, "id")?,
                vin: get_opt_str(&r, "vin")?,
                serial: get_opt_str(&r, "serial")?,
                reason: get_str(&r, "reason")?,
                revoked_at: get_str(&r, "revoked_at")?,
            })
        })
        .transpose()
    }

    /// Counts rows of a table (for tests and `/metrics`). `table` must be one of [`TABLES`].
    pub async fn count(&self, table: &str) -> Result<u64> {
        if !TABLES.contains(&table) {
            return Err(Error::Config(format!("unknown table {table}")));
        }
        let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .map_err(db_err("count"))?;
        to_u64(get_i64(&row, "n")?)
    }
}

/// One accepted ECU report, as stored.
#[derive(Debug, Clone)]
pub struct ReportUpdate {
    /// ECU.
    pub ecu_id: String,
    /// What it runs.
    pub installed: Installed,
    /// Its report counter.
    pub report_counter: u64,
}

/// The `UPDATE ecus` that stores `n` ECU reports of one vehicle, each only if its counter
/// is above the ECU's last accepted one: report k's values (ECU, target, length, hashes,
/// release counter, report counter) are `$first+6k …`, the VIN is `$vin`. One statement for
/// every report of a check-in (see [`Db::record_checkin`]); ends with its `WHERE`, so a caller
/// may add conditions.
fn reports_update(n: usize, first: usize, vin: usize) -> String {
    let param = |k: usize, field: usize| format!("${}", first + 6 * k + field);
    let case = |field: usize| {
        let arms: String = (0..n)
            .map(|k| format!(" WHEN {} THEN {}", param(k, 0), param(k, field)))
            .collect();
        format!("CASE ecu_id{arms} END")
    };
    let ids: Vec<String> = (0..n).map(|k| param(k, 0)).collect();
    format!(
        "UPDATE ecus SET installed_target = {}, installed_length = {}, installed_hashes = {}, \
         installed_release_counter = {}, last_report_counter = {} \
         WHERE vin = ${vin} AND ecu_id IN ({}) \
         AND (last_report_counter IS NULL OR last_report_counter < {})",
        case(1),
        case(2),
        case(3),
        case(4),
        case(5),
        ids.join(", "),
        case(5),
    )
}

/// A query of the `Any` driver, as `sqlx::query` makes it.
pub(crate) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds what [`reports_update`] expects of each report, in its order.
fn bind_reports<'q>(mut q: AnyQuery<'q>, reports: &'q [ReportUpdate]) -> Result<AnyQuery<'q>> {
    for r in reports {
        q = q
            .bind(&r.ecu_id)
            .bind(&r.installed.target)
            .bind(to_i64(r.installed.length)?)
            .bind(r.installed.hashes.to_string())
            .bind(to_i64(r.installed.release_counter)?)
            .bind(to_i64(r.report_counter)?);
    }
    Ok(q)
}

/// Binds an assignment's instruction, in the order of the `assignments` columns `vin,
/// ecu_id, target, length, hashes, release_counter, encrypt` (its state is the caller's).
pub(crate) fn bind_instruction<'q>(q: AnyQuery<'q>, a: &'q Assignment) -> Result<AnyQuery<'q>> {
    Ok(q.bind(&a.vin)
        .bind(&a.ecu_id)
        .bind(&a.target)
        .bind(to_i64(a.length)?)
        .bind(a.hashes.to_string())
        .bind(to_i64(a.release_counter)?)
        .bind(if a.encrypt { "yes" } else { "no" }))
}

/// A verified check-in to store.
#[derive(Debug, Clone)]
pub struct Checkin<'a> {
    /// Vehicle.
    pub vin: &'a str,
    /// Manifest counter.
    pub counter: u64,
    /// Manifest nonce.
    pub nonce: &'a str,
    /// The manifest as received.
    pub document: &'a str,
    /// Verified ECU reports.
    pub reports: Vec<ReportUpdate>,
    /// Where it came from (for security events).
    pub remote: Option<&'a str>,
    /// Security events the manifest carries (attack indicators, dropped ECU reports): stored
    /// in the transaction that accepts it, so only if it is accepted, and once.
    pub events: Vec<NewEvent<'a>>,
    /// Updates under way the manifest reports: `(target, ECU, stage)`, recorded on the
    /// vehicle's pending assignments.
    pub progress: Vec<(String, String, &'static str)>,
    /// The manifest reports update failures (recorded after it is accepted): retention keeps
    /// it like one that changed something (see [`Db::prune_manifests`]).
    pub update_failures: bool,
}

/// A certificate serial as stored: lower-case hex without separators (`:` and spaces are
/// accepted on input, as tools print them).
pub fn normalize_serial(serial: &str) -> Result<String> {
    let hex: String = serial
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.is_empty() || hex.len() > 40 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::BadRequest(format!(
            "certificate serial {serial:?} is not hex (at most 20 bytes)"
        )));
    }
    Ok(hex)
}

/// How a security event is aggregated with the ones before it (within the event window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// Counted on the latest event with the same source, rule, vehicle, ECU, detail and
    /// client address, if there is one.
    Identical,
    /// Counted on the latest event with the same source, rule and client address, whatever
    /// its vehicle or detail: for events over their rate (see the director), so that one
    /// address cannot write rows about any number of VINs.
    SameAddressAndRule,
}

/// The client address of a recorded `remote` (`IP:port`, `IP`, or `VIN@IP:port`), as
/// connections are counted (an IPv6 address by its /64).
pub fn remote_ip(remote: &str) -> Option<std::net::IpAddr> {
    let addr = remote.rsplit_once('@').map_or(remote, |(_, a)| a);
    let ip = addr
        .parse::<std::net::SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| addr.parse::<std::net::IpAddr>())
        .ok()?;
    Some(crate::conn::address_key(ip))
}

/// A security event to record.
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    /// `server` or `vehicle`.
    pub source: &'a str,
    /// Rule name.
    pub rule: &'a str,
    /// Vehicle.
    pub vin: Option<&'a str>,
    /// ECU.
    pub ecu_id: Option<&'a str>,
    /// Remote address or identity.
    pub remote: Option<&'a str>,
    /// Detail.
    pub detail: &'a str,
}

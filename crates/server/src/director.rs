//! The director: per-vehicle instructions, signed online, from the inventory and the
//! assignments in the database.
//!
//! Every vehicle has its own director targets, snapshot and timestamp (stored in the
//! database, never in memory); the root is the same for all (`D/public/director/N.root.json`).
//! A vehicle's director targets list, for each pending assignment, the image (same path,
//! length and hashes as the image repository), the release counter, and for each ECU its
//! hardware ID and, for encrypted images, the content key wrapped for that ECU's X25519 key.
//! They also name the vehicle, so an answer for one car cannot be replayed to another.
//!
//! A new version is signed only when the instructions change or the old one nears expiry;
//! the decision is made on a digest of the *inputs* (key wrapping is randomised).

use rampart_core::rule::Rule;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use rampart_core::canonical::to_canonical_from;
use rampart_core::encryption::{wrap_key, ContentKey};
use rampart_core::hash::{sha256, Hashes};
use rampart_core::metadata::{
    sign_role, Expiry, MetaFile, Snapshot, TargetFile, Targets, Timestamp, SPEC_VERSION,
};
use rampart_core::signer::Signer;
use rampart_core::uptane::manifest::{verify_vehicle_manifest, VerifiedManifest};
use rampart_core::uptane::receipt::{sign_receipt, ManifestReceipt};
use rampart_core::uptane::{
    CiphertextFile, DeltaOffer, DirectorCustom, DirectorVehicle, EcuAssignment, EncryptedImage,
    DIRECTOR_VEHICLE_FIELD,
};
use serde::Serialize;

use crate::db::{
    Aggregate, Assignment, Checkin, Db, DirectorRoles, Installed, NewEvent, ReportUpdate,
    StoredRole, Vehicle, INSTRUCTIONS_CHANGED,
};
use crate::error::{Error, Result};
use crate::keys::kek::ContentKek;

mod known;

pub use known::DEFAULT_CAPACITY as DEFAULT_KNOWN_VEHICLES;
use known::{Known, KnownVehicles};

/// The director's online keys.
pub struct DirectorKeys {
    /// Signs per-vehicle targets.
    pub targets: Box<dyn Signer>,
    /// Signs per-vehicle snapshots.
    pub snapshot: Box<dyn Signer>,
    /// Signs per-vehicle timestamps.
    pub timestamp: Box<dyn Signer>,
}

/// Lifetimes of director metadata.
#[derive(Debug, Clone, Copy)]
pub struct DirectorLifetimes {
    /// Targets (and snapshot).
    pub targets: Duration,
    /// Timestamp.
    pub timestamp: Duration,
}

impl Default for DirectorLifetimes {
    fn default() -> Self {
        DirectorLifetimes {
            targets: Duration::days(7),
            timestamp: Duration::days(1),
        }
    }
}

/// How security events are recorded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventPolicy {
    /// New rows a minute per (client address, rule) — anyone can make the server refuse
    /// something, naming any VIN; past this, events are counted on the latest row of that
    /// address and rule instead (see [`crate::db::Aggregate`]).
    pub max_new_per_minute: u32,
}

impl Default for EventPolicy {
    fn default() -> Self {
        EventPolicy {
            max_new_per_minute: 30,
        }
    }
}

/// Token buckets per (client address, rule) for new event rows. Per instance, bounded in
/// memory: protection, not vehicle state.
struct EventLimiter {
    per_minute: f64,
    buckets: std::sync::Mutex<
        std::collections::HashMap<(std::net::IpAddr, String), (f64, std::time::Instant)>,
    >,
}

/// Buckets kept before idle ones are dropped.
const MAX_EVENT_BUCKETS: usize = 100_000;

impl EventLimiter {
    fn new(policy: EventPolicy) -> Self {
        EventLimiter {
            per_minute: f64::from(policy.max_new_per_minute),
            buckets: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Whether `ip` may add a new row for `rule` now (and takes the token).
    fn allow(&self, ip: std::net::IpAddr, rule: &str) -> bool {
        let now = std::time::Instant::now();
        let burst = self.per_minute.max(1.0);
        let rate = self.per_minute / 60.0;
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_EVENT_BUCKETS {
            buckets.retain(|_, (_, last)| now.duration_since(*last).as_secs() < 120);
        }
        let (tokens, last) = buckets.entry((ip, rule.to_owned())).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How many times [`Director::documents`] signs and tries to store before it gives up (a
/// 500 the vehicle retries on its next cycle). Each loss means another signer stored or the
/// instructions changed (an operator assigning ECU after ECU, a campaign's batch): the next
/// attempt reads again. Three were too few when instructions changed twice during a
/// request answered by three instances at once.
const SIGNING_ATTEMPTS: u32 = 16;

/// The pause before attempt `attempt` of signing: jittered and doubling (up to 64 ms), so
/// that signers who lost together do not collide again and a stream of changes leaves a gap
/// (sixteen attempts wait at most about 0.7 s in all).
fn signing_backoff(attempt: u32) -> std::time::Duration {
    let ceiling_us = 1_000u64 << attempt.min(6);
    std::time::Duration::from_micros(ceiling_us / 2 + crate::random::u64() % (ceiling_us / 2 + 1))
}

/// The director service.
pub struct Director {
    db: Db,
    keys: DirectorKeys,
    public_dir: PathBuf,
    /// Lifetimes.
    pub lifetimes: DirectorLifetimes,
    events: EventLimiter,
    /// Opens the sealed content keys of encrypted images.
    kek: Option<std::sync::Arc<ContentKek>>,
    /// Tells vehicles to check in when their instructions change (MQTT), if configured.
    nudger: Option<crate::nudge::Nudger>,
    /// One judgement of a campaign at a time.
    judging: crate::campaign::Gate,
    /// The registered keys of vehicles that checked in lately (see `director::known`).
    known: KnownVehicles,
}

/// The current director documents of one vehicle.
#[derive(Debug, Clone)]
pub struct DirectorDocs {
    /// Targets.
    pub targets: StoredRole,
    /// Snapshot.
    pub snapshot: StoredRole,
    /// Timestamp.
    pub timestamp: StoredRole,
}

/// The answer to a check-in.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CheckinResponse {
    /// Director targets version the vehicle should now fetch.
    pub director_targets_version: u64,
    /// The entity tag of the vehicle's director timestamp as of this answer: what
    /// `GET /director/{vin}/metadata/timestamp.json` answers as `ETag`. A primary that holds
    /// that copy skips the request, which would have been answered 304 — one round trip of
    /// a cycle in which nothing changed instead of two. The copy is verified again like any
    /// other (its signatures and expiry), exactly as after a 304.
    pub director_timestamp_tag: String,
    /// Assignments completed by this check-in.
    pub completed_assignments: Vec<i64>,
    /// ECU reports that were rejected (ECU ID and rule).
    pub rejected_reports: Vec<RejectedReport>,
    /// The director's signed receipt (`manifest_receipt`, signed with the director targets
    /// key): the accepted manifest counter and report counter per ECU. The primary passes it
    /// to each ECU, which forgets its attack indicators only on this proof that the director
    /// has them.
    ///
    /// Its signed bytes as they are (canonical JSON, pretty-printed by `sign_role`), not
    /// parsed into a tree to be written out again.
    #[schema(value_type = Object)]
    pub receipt: Box<serde_json::value::RawValue>,
}

/// An ECU report the director refused.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RejectedReport {
    /// ECU.
    pub ecu_id: String,
    /// Rule that failed.
    pub rule: String,
}

/// One assignment as it enters the instruction digest.
#[derive(Serialize)]
struct DigestEntry<'a> {
    ecu: &'a str,
    target: &'a str,
    length: u64,
    hashes: &'a serde_json::Value,
    release_counter: u64,
    encrypt: bool,
    encryption_key: Option<&'a str>,
    maintenance_window: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<&'a str>,
}

#[derive(Serialize)]
struct InstructionDigest<'a> {
    vin: &'a str,
    assignments: Vec<DigestEntry<'a>>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

impl Director {
    /// The turns of campaign judgements.
    pub(crate) fn judging(&self) -> &crate::campaign::Gate {
        &self.judging
    }

    /// A director over `db`, signing with `keys`, serving its root chain from `public_dir`.
    pub fn new(db: Db, keys: DirectorKeys, public_dir: impl Into<PathBuf>) -> Self {
        Director {
            db,
            keys,
            public_dir: public_dir.into(),
            lifetimes: DirectorLifetimes::default(),
            events: EventLimiter::new(EventPolicy::default()),
            kek: None,
            nudger: None,
            judging: Default::default(),
            known: KnownVehicles::new(DEFAULT_KNOWN_VEHICLES),
        }
    }

    /// Keeps the registered keys of up to `vehicles` vehicles between their check-ins (0:
    /// none, every check-in reads its vehicle; default [`DEFAULT_KNOWN_VEHICLES`]).
    pub fn with_known_vehicles(mut self, vehicles: usize) -> Self {
        self.known = KnownVehicles::new(vehicles);
        self
    }

    /// Nudges vehicles over MQTT when their instructions change.
    pub fn with_nudger(mut self, nudger: crate::nudge::Nudger) -> Self {
        self.nudger = Some(nudger);
        self
    }

    /// Tells `vins` to check in now (if nudges are configured; never waits).
    pub fn nudge<'a>(&self, vins: impl IntoIterator<Item = &'a str>) {
        if let Some(n) = &self.nudger {
            for vin in vins {
                n.nudge(vin);
            }
        }
    }

    /// Opens the sealed content keys of encrypted images with `kek`.
    pub fn with_content_kek(mut self, kek: std::sync::Arc<ContentKek>) -> Self {
        self.kek = Some(kek);
        self
    }

    /// Records security events by `policy` from now on.
    pub fn set_event_policy(&mut self, policy: EventPolicy) {
        self.events = EventLimiter::new(policy);
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The folder of `N.root.json` files.
    pub fn public_dir(&self) -> &Path {
        &self.public_dir
    }

    /// The director documents of `vin`, re-signed first if the instructions changed or they
    /// near expiry.
    ///
    /// The common case — nothing assigned or completed since they were signed (no change
    /// marker, see [`crate::db`]), nothing near expiry — is one read of the stored documents.
    /// Otherwise the instructions are derived from the inventory and compared by digest.
    pub async fn documents(&self, vin: &str, now: DateTime<Utc>) -> Result<DirectorDocs> {
        let stored = self.db.director_roles(vin).await?;
        self.documents_from(vin, stored, now).await
    }

    /// [`Director::documents`] from the documents as the caller read them (a check-in that
    /// read them in its own statement). Re-signing writes only over the versions read, so a
    /// copy that went stale meanwhile costs a lost write and a fresh read, never a rollback.
    async fn documents_from(
        &self,
        vin: &str,
        stored: DirectorRoles,
        now: DateTime<Utc>,
    ) -> Result<DirectorDocs> {
        if let (Some(t), Some(s), Some(ts)) = (&stored.targets, &stored.snapshot, &stored.timestamp)
        {
            if !t.content_digest.starts_with(INSTRUCTIONS_CHANGED)
                && self.targets_fresh(t, now)
                && self.timestamp_fresh(ts, now)
            {
                return Ok(DirectorDocs {
                    targets: t.clone(),
                    snapshot: s.clone(),
                    timestamp: ts.clone(),
                });
            }
        }
        let vehicle = self
            .db
            .vehicle(vin)
            .await?
            .ok_or_else(|| Error::NotFound(format!("vehicle {vin} is not registered")))?;
        if let Some(refusal) = removed(&vehicle) {
            return Err(self.reject(refusal, Some(vin), None, None).await);
        }
        let mut current = stored;
        for attempt in 0..SIGNING_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(signing_backoff(attempt)).await;
                current = self.db.director_roles(vin).await?;
            }
            // A quarantined vehicle is signed no instructions (see crate::vsoc): what it was
            // told is taken back until an analyst releases it.
            let pending = if vehicle.quarantined_at.is_some() {
                Vec::new()
            } else {
                self.db.assignments(Some(vin), Some("pending")).await?
            };
            let deltas = self.delta_offers(&vehicle, &pending).await?;
            let digest = self.instruction_digest(&vehicle, &pending, &deltas)?;
            // The targets' digest as read: a change of instructions after this read makes the
            // write below lose, and the next attempt sees the change.
            let read_digest = current.targets.as_ref().map(|t| t.content_digest.clone());
            if let (Some(t), Some(s), Some(ts)) =
                (&current.targets, &current.snapshot, &current.timestamp)
            {
                let targets_fresh = t.content_digest == digest && self.targets_fresh(t, now);
                if targets_fresh && self.timestamp_fresh(ts, now) {
                    return Ok(DirectorDocs {
                        targets: t.clone(),
                        snapshot: s.clone(),
                        timestamp: ts.clone(),
                    });
                }
                if targets_fresh {
                    let new_ts = self.sign_timestamp(ts.version + 1, s, now)?;
                    if self
                        .db
                        .replace_director_roles(vin, &[(Some(ts.version), new_ts.clone())])
                        .await?
                    {
                        return Ok(DirectorDocs {
                            targets: t.clone(),
                            snapshot: s.clone(),
                            timestamp: new_ts,
                        });
                    }
                    continue;
                }
            }
            let versions = (
                current.targets.as_ref().map(|r| r.version),
                current.snapshot.as_ref().map(|r| r.version),
                current.timestamp.as_ref().map(|r| r.version),
            );
            let targets = self
                .sign_targets(
                    &vehicle,
                    &pending,
                    &deltas,
                    versions.0.unwrap_or(0) + 1,
                    &digest,
                    now,
                )
                .await?;
            let snapshot = self.sign_snapshot(versions.1.unwrap_or(0) + 1, &targets, now)?;
            let timestamp = self.sign_timestamp(versions.2.unwrap_or(0) + 1, &snapshot, now)?;
            let stored = self
                .db
                .replace_director_roles_from(
                    vin,
                    read_digest.as_deref(),
                    &[
                        (versions.0, targets.clone()),
                        (versions.1, snapshot.clone()),
                        (versions.2, timestamp.clone()),
                    ],
                )
                .await?;
            if stored {
                tracing::info!(%vin, targets_version = targets.version, "signed new director metadata");
                return Ok(DirectorDocs {
                    targets,
                    snapshot,
                    timestamp,
                });
            }
            // Another instance signed, or the instructions changed, concurrently: read again.
        }
        Err(Error::Database(format!(
            "director metadata of {vin} kept changing under us"
        )))
    }

    /// Director targets are re-signed when half their lifetime is gone.
    fn targets_fresh(&self, t: &StoredRole, now: DateTime<Utc>) -> bool {
        parse_time(&t.expires_at) - now > self.lifetimes.targets / 2
    }

    /// The director timestamp is re-signed when half its lifetime is gone.
    fn timestamp_fresh(&self, ts: &StoredRole, now: DateTime<Utc>) -> bool {
        parse_time(&ts.expires_at) - now > self.lifetimes.timestamp / 2
    }

    /// For each pending assignment, the delta to its image from the image its ECU last
    /// reported, if one is published (none for a legacy ECU: its gateway flashes whole
    /// images). Without encryption: that is wrapped per ECU when signing.
    async fn delta_offers(
        &self,
        vehicle: &Vehicle,
        pending: &[Assignment],
    ) -> Result<Vec<Option<DeltaOffer>>> {
        let mut out = Vec::with_capacity(pending.len());
        for a in pending {
            let installed = vehicle
                .ecus
                .iter()
                .find(|e| e.ecu_id == a.ecu_id && e.reports != "gateway")
                .and_then(|e| e.installed.as_ref())
                .filter(|i| i.target != a.target);
            let mut offer = None;
            if let Some(inst) = installed {
                let hashes: Option<Hashes> = serde_json::from_value(inst.hashes.clone()).ok();
                if let Some(sha) = hashes.as_ref().and_then(|h| h.get("sha256")) {
                    offer = self.db.delta_to(&a.target, sha).await?.filter(|o| {
                        o.source.length == inst.length && Some(&o.source.hashes) == hashes.as_ref()
                    });
                }
            }
            out.push(offer);
        }
        Ok(out)
    }

    fn instruction_digest(
        &self,
        vehicle: &Vehicle,
        pending: &[Assignment],
        deltas: &[Option<DeltaOffer>],
    ) -> Result<String> {
        let mut assignments = Vec::new();
        for (i, a) in pending.iter().enumerate() {
            let enc_key = vehicle
                .ecus
                .iter()
                .find(|e| e.ecu_id == a.ecu_id)
                .and_then(|e| e.encryption_key.as_deref());
            assignments.push(DigestEntry {
                ecu: &a.ecu_id,
                target: &a.target,
                length: a.length,
                hashes: &a.hashes,
                release_counter: a.release_counter,
                encrypt: a.encrypt,
                encryption_key: enc_key,
                maintenance_window: a.maintenance_window.as_deref(),
                delta: deltas
                    .get(i)
                    .and_then(|d| d.as_ref())
                    .map(|d| d.path.as_str()),
            });
        }
        let canon = to_canonical_from(&InstructionDigest {
            vin: &vehicle.vin,
            assignments,
        })?;
        Ok(hex::encode(sha256(&canon)))
    }

    async fn sign_targets(
        &self,
        vehicle: &Vehicle,
        pending: &[Assignment],
        deltas: &[Option<DeltaOffer>],
        version: u64,
        digest: &str,
        now: DateTime<Utc>,
    ) -> Result<StoredRole> {
        let mut targets: BTreeMap<String, TargetFile> = BTreeMap::new();
        let mut customs: BTreeMap<String, DirectorCustom> = BTreeMap::new();
        for (i, a) in pending.iter().enumerate() {
            let ecu = vehicle
                .ecus
                .iter()
                .find(|e| e.ecu_id == a.ecu_id)
                .ok_or_else(|| {
                    Error::BadRequest(format!(
                        "assignment {} names unknown ECU {}",
                        a.id, a.ecu_id
                    ))
                })?;
            let encryption = if a.encrypt {
                Some(
                    self.encryption_for(&a.target, ecu.encryption_key.as_deref(), &a.ecu_id)
                        .await?,
                )
            } else {
                None
            };
            // The delta travels encrypted for this ECU when the image does.
            let delta = match deltas.get(i).cloned().flatten() {
                Some(mut offer) if a.encrypt => {
                    offer.encryption = Some(
                        self.encryption_for(&offer.path, ecu.encryption_key.as_deref(), &a.ecu_id)
                            .await?,
                    );
                    Some(offer)
                }
                other => other,
            };
            let hashes: Hashes = serde_json::from_value(a.hashes.clone())
                .map_err(|e| Error::Database(format!("assignment hashes: {e}")))?;
            targets
                .entry(a.target.clone())
                .or_insert_with(|| TargetFile {
                    length: a.length,
                    hashes,
                    custom: None,
                    unrecognized: BTreeMap::new(),
                });
            let custom = customs
                .entry(a.target.clone())
                .or_insert_with(|| DirectorCustom {
                    release_counter: a.release_counter,
                    ecus: BTreeMap::new(),
                    maintenance_window: a.maintenance_window.clone(),
                });
            custom.ecus.insert(
                a.ecu_id.clone(),
                EcuAssignment {
                    hardware_id: ecu.hardware_id.clone(),
                    encryption,
                    delta,
                },
            );
        }
        for (name, custom) in customs {
            if let Some(t) = targets.get_mut(&name) {
                t.custom = Some(custom.to_value());
            }
        }
        let expires = now + self.lifetimes.targets;
        let mut unrecognized = BTreeMap::new();
        unrecognized.insert(
            DIRECTOR_VEHICLE_FIELD.to_owned(),
            serde_json::to_value(DirectorVehicle {
                vin: vehicle.vin.clone(),
            })
            .map_err(|e| Error::BadRequest(e.to_string()))?,
        );
        let doc = Targets {
            type_: "targets".into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires: Expiry::new(expires),
            targets: targets.into(),
            delegations: None,
            unrecognized,
        };
        let bytes = sign_role(&doc, &[self.keys.targets.as_ref()])?;
        Ok(StoredRole {
            role: "targets".into(),
            version,
            expires_at: rfc3339(expires),
            content_digest: digest.to_owned(),
            document: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    async fn encryption_for(
        &self,
        target: &str,
        ecu_key_hex: Option<&str>,
        ecu_id: &str,
    ) -> Result<EncryptedImage> {
        let key = self.db.image_key(target).await?.ok_or_else(|| {
            Error::BadRequest(format!(
                "{target} was not published encrypted (publish with --encrypt)"
            ))
        })?;
        let ecu_key = ecu_key_hex
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(|| {
                Error::BadRequest(format!(
                    "ECU {ecu_id} has no X25519 encryption key registered"
                ))
            })?;
        let raw = match &self.kek {
            Some(kek) => kek.content_key(&key)?,
            None => {
                return Err(Error::Config(format!(
                    "the content key of {target} is sealed and no content KEK is loaded"
                )))
            }
        };
        let content = ContentKey::from_bytes(&raw)?;
        let wrapped = wrap_key(&ecu_key, &content)?;
        let hashes: Hashes = serde_json::from_str(&key.ciphertext_hashes)
            .map_err(|e| Error::Database(format!("ciphertext hashes: {e}")))?;
        Ok(EncryptedImage {
            key: wrapped,
            ciphertext: CiphertextFile {
                path: key.ciphertext_path,
                length: key.ciphertext_length,
                hashes,
            },
        })
    }

    fn sign_snapshot(
        &self,
        version: u64,
        targets: &StoredRole,
        now: DateTime<Utc>,
    ) -> Result<StoredRole> {
        let meta = MetaFile::pinning(targets.version, targets.document.as_bytes());
        let expires = now + self.lifetimes.targets;
        let doc = Snapshot {
            type_: "snapshot".into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires: Expiry::new(expires),
            meta: BTreeMap::from([("targets.json".to_owned(), meta)]),
            unrecognized: BTreeMap::new(),
        };
        let bytes = sign_role(&doc, &[self.keys.snapshot.as_ref()])?;
        Ok(StoredRole {
            role: "snapshot".into(),
            version,
            expires_at: rfc3339(expires),
            content_digest: targets.content_digest.clone(),
            document: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    fn sign_timestamp(
        &self,
        version: u64,
        snapshot: &StoredRole,
        now: DateTime<Utc>,
    ) -> Result<StoredRole> {
        let meta = MetaFile::pinning(snapshot.version, snapshot.document.as_bytes());
        let expires = now + self.lifetimes.timestamp;
        let doc = Timestamp {
            type_: "timestamp".into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires: Expiry::new(expires),
            meta: BTreeMap::from([("snapshot.json".to_owned(), meta)]),
            unrecognized: BTreeMap::new(),
        };
        let bytes = sign_role(&doc, &[self.keys.timestamp.as_ref()])?;
        Ok(StoredRole {
            role: "timestamp".into(),
            version,
            expires_at: rfc3339(expires),
            content_digest: snapshot.content_digest.clone(),
            document: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    /// Records a security event (failures to record are logged, never hide the original).
    /// Past [`EventPolicy::max_new_per_minute`] for its client address and rule, it is
    /// counted on the latest row of that address and rule instead of stored as a new one.
    /// Refuses a request: records one security event (source `server`) and returns the
    /// error to answer with, both naming the error's rule. Every refusal of client input goes
    /// through here, so "a 4xx and an event with the same rule" cannot drift apart.
    pub async fn reject(
        &self,
        error: impl Into<Error>,
        vin: Option<&str>,
        ecu_id: Option<&str>,
        remote: Option<&str>,
    ) -> Error {
        let error = error.into();
        debug_assert!(
            error.status().is_client_error(),
            "a refusal is a 4xx: {error}"
        );
        self.event(
            "server",
            error.rule().as_str(),
            vin,
            ecu_id,
            remote,
            &error.chain(),
        )
        .await;
        error
    }

    /// Records a security event (rate-limited per address and rule; repeats counted).
    pub async fn event(
        &self,
        source: &str,
        rule: &str,
        vin: Option<&str>,
        ecu_id: Option<&str>,
        remote: Option<&str>,
        detail: &str,
    ) {
        let over_rate = remote
            .and_then(crate::db::remote_ip)
            .is_some_and(|ip| !self.events.allow(ip, rule));
        let how = if over_rate {
            // Counted, not logged line by line: a flood must not flood the log either.
            tracing::debug!(%source, %rule, vin = vin.unwrap_or("-"), remote = remote.unwrap_or("-"), "security event over its rate: counted");
            Aggregate::SameAddressAndRule
        } else {
            tracing::warn!(%source, %rule, vin = vin.unwrap_or("-"), ecu = ecu_id.unwrap_or("-"), %detail, "security event");
            Aggregate::Identical
        };
        let e = NewEvent {
            source,
            rule,
            vin,
            ecu_id,
            remote,
            detail,
        };
        if let Err(err) = self.db.record_event_at(&e, Utc::now(), how).await {
            tracing::error!(error = %err, "could not record security event");
        }
    }

    /// Each line of an `attacks_detected` field (the primary's or an ECU's) as a `vehicle`
    /// security event named by its rule, to be recorded with the check-in.
    fn attack_indicators(events: &mut Vec<CheckinEvent>, ecu: &str, text: &str) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            events.push(CheckinEvent {
                source: "vehicle",
                rule: attack_rule(line),
                ecu_id: ecu.to_owned(),
                detail: line.to_owned(),
            });
        }
    }

    /// Accepts a vehicle version manifest: signatures (primary and each ECU), VIN, freshness;
    /// stores what each ECU runs, completes assignments, records attack indicators and
    /// rejections as security events, and re-signs the vehicle's director metadata.
    ///
    /// A refused manifest is one security event. The events an accepted manifest carries
    /// (attack indicators, dropped ECU reports) are stored in the transaction that accepts it,
    /// so concurrent copies of one manifest record them exactly once.
    pub async fn check_in(
        &self,
        vin: &str,
        body: &[u8],
        remote: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<CheckinResponse> {
        let Accepted {
            verified,
            sorted,
            completed,
            roles,
        } = self.accept(vin, body, remote).await?;
        for e in &sorted.events {
            tracing::warn!(source = e.source, rule = %e.rule, %vin, ecu = %e.ecu_id, detail = %e.detail, "security event");
        }
        let failures = update_failures(&verified.manifest);
        if !failures.is_empty() {
            let ended = self.db.record_update_failures(vin, &failures).await?;
            tracing::info!(%vin, reported = failures.len(), ended, "update failures recorded");
        }
        // A campaign this check-in moved is judged before the answer is signed: a halt it
        // causes withdraws instructions from the documents signed below.
        let change = if !failures.is_empty() {
            crate::campaign::Change::Failed
        } else if !completed.is_empty() {
            crate::campaign::Change::Installed
        } else {
            crate::campaign::Change::None
        };
        crate::campaign::after_checkin(self, vin, change, now).await;
        // The documents the check-in read are current if it changed nothing they depend on.
        let docs = match roles {
            Some(roles) if change == crate::campaign::Change::None => {
                self.documents_from(vin, roles, now).await?
            }
            _ => self.documents(vin, now).await?,
        };
        Ok(CheckinResponse {
            director_targets_version: docs.targets.version,
            director_timestamp_tag: rampart_core::hash::entity_tag(
                docs.timestamp.document.as_bytes(),
            ),
            completed_assignments: completed,
            rejected_reports: sorted.rejected,
            receipt: self.receipt(vin, verified.manifest.manifest_counter, &sorted.accepted)?,
        })
    }

    /// Verifies and stores a manifest: against the vehicle as this server knows it, if it
    /// does (no read of the vehicle), else against a fresh read. A refusal on the first way is
    /// decided again the second way, which names its rule and records it once: the copy
    /// cannot tell a removed vehicle from a replay (see `director::known`).
    async fn accept(&self, vin: &str, body: &[u8], remote: Option<&str>) -> Result<Accepted> {
        if let Some(known) = self.known.get(vin) {
            match self.store(vin, &known, body, remote).await {
                Ok(accepted) => return Ok(accepted),
                Err(e) if e.status().is_client_error() => self.known.forget(vin),
                Err(e) => return Err(e),
            }
        }
        let known = self.registered(vin, remote).await?;
        match self.store(vin, &known, body, remote).await {
            Ok(accepted) => Ok(accepted),
            // Refused vehicle input (a bad signature, a replay, a counter the database cannot
            // hold): the 4xx and the event name the same rule.
            Err(e) if e.status().is_client_error() => {
                Err(self.reject(e, Some(vin), None, remote).await)
            }
            Err(e) => Err(e),
        }
    }

    /// The registered vehicle `vin`, read from the database; an unknown or removed one is
    /// refused through [`Director::reject`].
    async fn registered(&self, vin: &str, remote: Option<&str>) -> Result<Known> {
        let Some(vehicle) = self.db.vehicle(vin).await? else {
            let unknown = Error::Rejected {
                status: axum::http::StatusCode::NOT_FOUND,
                rule: Rule::UnknownVehicle,
                message: format!("manifest for an unregistered VIN ({vin})"),
            };
            return Err(self.reject(unknown, Some(vin), None, remote).await);
        };
        if let Some(refusal) = removed(&vehicle) {
            return Err(self.reject(refusal, Some(vin), None, remote).await);
        }
        Known::of(&vehicle)
    }

    /// Verifies a manifest against `known` (signatures of the primary and each ECU, VIN, a
    /// counter above the last accepted one) and stores it, with its reports and events. A
    /// refusal is returned as it is, not recorded: [`Director::accept`] decides.
    async fn store(
        &self,
        vin: &str,
        known: &Known,
        body: &[u8],
        remote: Option<&str>,
    ) -> Result<Accepted> {
        let verified = verify_vehicle_manifest(body, &known.keys(vin))?;
        // A replayed manifest is refused before anything in it is looked at.
        rampart_core::uptane::manifest::check_counter(
            &format!("manifest of {vin}"),
            known.manifest_counter(),
            verified.manifest.manifest_counter,
        )?;
        let sorted = sort_reports(known, &verified);
        let document = String::from_utf8_lossy(body);
        let checkin = Checkin {
            vin,
            counter: verified.manifest.manifest_counter,
            nonce: &verified.manifest.nonce,
            document: &document,
            reports: sorted.accepted.clone(),
            remote,
            events: sorted
                .events
                .iter()
                .map(|e| NewEvent {
                    source: e.source,
                    rule: &e.rule,
                    vin: Some(vin),
                    ecu_id: Some(&e.ecu_id),
                    remote,
                    detail: &e.detail,
                })
                .collect(),
            // Vehicle input: bounded like its failures.
            progress: verified
                .manifest
                .progress
                .iter()
                .take(64)
                .map(|p| (p.target.clone(), p.ecu_id.clone(), p.stage.as_str()))
                .collect(),
            update_failures: !verified.manifest.update_failures.is_empty(),
        };
        let (completed, roles) = self.db.record_checkin_reading_roles(&checkin).await?;
        self.known
            .put(vin, known.after(&verified, &sorted.accepted));
        Ok(Accepted {
            verified,
            sorted,
            completed,
            roles,
        })
    }

    /// The signed receipt of an accepted manifest: its counter and each accepted report's.
    fn receipt(
        &self,
        vin: &str,
        manifest_counter: u64,
        accepted: &[ReportUpdate],
    ) -> Result<Box<serde_json::value::RawValue>> {
        let acknowledged: BTreeMap<String, u64> = accepted
            .iter()
            .map(|r| (r.ecu_id.clone(), r.report_counter))
            .collect();
        let receipt = ManifestReceipt::new(vin, manifest_counter, acknowledged);
        let receipt = sign_receipt(&receipt, &[self.keys.targets.as_ref()])?;
        let receipt = String::from_utf8(receipt)
            .map_err(|e| rampart_core::Error::malformed("manifest receipt", e))?;
        Ok(serde_json::value::RawValue::from_string(receipt)
            .map_err(|e| rampart_core::Error::malformed("manifest receipt", e))?)
    }
}

/// What a verified manifest amounts to: the ECU reports to store, those refused (and why),
/// and the security events it carries — recorded in the check-in's own transaction, so once,
/// and only if this copy of the manifest is the one accepted.
#[derive(Debug, Default)]
struct SortedReports {
    accepted: Vec<ReportUpdate>,
    rejected: Vec<RejectedReport>,
    events: Vec<CheckinEvent>,
}

/// A manifest verified and stored (see [`Director::accept`]).
struct Accepted {
    verified: VerifiedManifest,
    sorted: SortedReports,
    /// Assignments it completed.
    completed: Vec<i64>,
    /// The vehicle's director documents, if the check-in read them on the way.
    roles: Option<DirectorRoles>,
}

/// Sorts a verified manifest's reports: the primary's and each accepted ECU's attack
/// indicators become events; a report whose signature failed, or whose counter is not above
/// the ECU's last accepted one, is refused (an event, and listed in the answer).
fn sort_reports(known: &Known, verified: &VerifiedManifest) -> SortedReports {
    let mut out = SortedReports::default();
    Director::attack_indicators(
        &mut out.events,
        known.primary_ecu(),
        &verified.manifest.attacks_detected,
    );
    let refuse = |out: &mut SortedReports, ecu_id: &str, rule: Rule, detail: String| {
        out.events.push(CheckinEvent {
            source: "server",
            rule: rule.to_string(),
            ecu_id: ecu_id.to_owned(),
            detail,
        });
        out.rejected.push(RejectedReport {
            ecu_id: ecu_id.to_owned(),
            rule: rule.to_string(),
        });
    };
    for (ecu_id, err) in &verified.rejected_reports {
        refuse(
            &mut out,
            ecu_id,
            err.rule(),
            format!("ECU version report rejected: {err}"),
        );
    }
    for (ecu_id, report) in &verified.reports {
        let last = known.report_counter(ecu_id);
        if let Err(e) = rampart_core::uptane::manifest::check_counter(
            &format!("ECU report of {ecu_id}"),
            last,
            report.report_counter,
        ) {
            refuse(&mut out, ecu_id, e.rule(), e.to_string());
            continue;
        }
        Director::attack_indicators(&mut out.events, ecu_id, &report.attacks_detected);
        let img = &report.installed_image;
        out.accepted.push(ReportUpdate {
            ecu_id: ecu_id.clone(),
            installed: Installed {
                target: img.filename.clone(),
                length: img.length,
                hashes: serde_json::to_value(&img.hashes).unwrap_or_default(),
                release_counter: img.release_counter,
            },
            report_counter: report.report_counter,
        });
    }
    out
}

/// A security event found in a manifest, recorded with its check-in (see
/// [`Director::check_in`]).
#[derive(Debug)]
struct CheckinEvent {
    /// `vehicle` (an indicator the vehicle reported) or `server` (a report the server dropped).
    source: &'static str,
    rule: String,
    ecu_id: String,
    detail: String,
}

/// The rule named at the start of an attack indicator (`rule: message`), or `vehicle-report`.
fn attack_rule(indicator: &str) -> String {
    indicator
        .split_once(':')
        .map(|(rule, _)| rule.trim())
        .filter(|r| {
            !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        })
        .unwrap_or(Rule::VehicleReport.as_str())
        .to_owned()
}

/// Rules an ECU meets again on every cycle for the same instruction: an assignment that
/// failed by one of them can never complete, and ends as `failed`.
const FINAL_RULES: [Rule; 2] = [Rule::ReleaseCounterDecreased, Rule::HardwareIdMismatch];

/// The update failures a manifest reports, bounded (vehicle input: at most 64, each message
/// at most 300 characters), as `(target, ECU, "rule: message", final)`.
fn update_failures(
    manifest: &rampart_core::uptane::manifest::VehicleManifest,
) -> Vec<(String, Option<String>, String, bool)> {
    manifest
        .update_failures
        .iter()
        .take(64)
        .map(|f| {
            let message: String = f.message.chars().take(300).collect();
            let is_final = FINAL_RULES.iter().any(|r| r.as_str() == f.rule);
            (
                f.target.clone(),
                f.ecu_id.clone(),
                format!("{}: {message}", f.rule),
                is_final,
            )
        })
        .collect()
}

/// The refusal of a vehicle taken out of the fleet, if `vehicle` is one: it gets no
/// metadata and no manifest of it is taken (its records stay, for audit).
fn removed(vehicle: &Vehicle) -> Option<Error> {
    let at = vehicle.removed_at.as_ref()?;
    Some(crate::db::removal_refusal(
        &vehicle.vin,
        at,
        vehicle.removed_reason.as_deref(),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use rampart_core::metadata::Expiry;
    use rampart_core::uptane::manifest::{EcuVersionReport, VehicleManifest, ECU_REPORT_TYPE};
    use rampart_core::uptane::InstalledImage;

    fn ecu(id: &str, last: Option<u64>) -> crate::db::Ecu {
        crate::db::Ecu {
            ecu_id: id.into(),
            hardware_id: "hw".into(),
            public_key: serde_json::to_value(rampart_core::key::Key::new(
                rampart_core::key::KeyScheme::Ed25519,
                "00".repeat(32),
            ))
            .unwrap(),
            encryption_key: None,
            verification: "full".into(),
            installed: None,
            last_report_counter: last,
            reports: "ecu".into(),
        }
    }

    fn report(id: &str, counter: u64, attacks: &str) -> EcuVersionReport {
        EcuVersionReport {
            type_: ECU_REPORT_TYPE.into(),
            ecu_id: id.into(),
            installed_image: InstalledImage {
                filename: format!("{id}/fw.bin"),
                length: 3,
                hashes: BTreeMap::new(),
                release_counter: 1,
            },
            attacks_detected: attacks.into(),
            latest_verified_time: Expiry::new(Utc::now()),
            report_counter: counter,
            nonce: "00".into(),
            unrecognized: BTreeMap::new(),
        }
    }

    /// The pure part of a check-in: indicators become events, a report signed by the wrong
    /// key or with a stale counter is refused (event + answer), the rest is stored.
    #[test]
    fn a_manifests_reports_are_sorted_into_accepted_refused_and_events() {
        let vehicle = Vehicle {
            vin: "VIN1".into(),
            primary_ecu: "TBOX".into(),
            created_at: String::new(),
            last_manifest_counter: Some(1),
            last_seen: None,
            removed_at: None,
            removed_reason: None,
            quarantined_at: None,
            quarantine_reason: None,
            attributes: Default::default(),
            tags: Default::default(),
            ecus: vec![ecu("TBOX", Some(3)), ecu("IVI", Some(5)), ecu("BCM", None)],
        };
        let verified = VerifiedManifest {
            manifest: VehicleManifest {
                type_: "vehicle_manifest".into(),
                vin: "VIN1".into(),
                primary_ecu_id: "TBOX".into(),
                manifest_counter: 2,
                nonce: "00".into(),
                ecu_version_reports: BTreeMap::new(),
                attacks_detected: "freeze: timestamp expired\n".into(),
                update_failures: Vec::new(),
                progress: Vec::new(),
                unrecognized: BTreeMap::new(),
            },
            reports: BTreeMap::from([
                (
                    "TBOX".to_owned(),
                    report("TBOX", 4, "hash-mismatch: tampered"),
                ),
                ("IVI".to_owned(), report("IVI", 5, "")),
            ]),
            rejected_reports: vec![(
                "BCM".to_owned(),
                rampart_core::Error::BadSignature {
                    what: "report of BCM".into(),
                    keyid: "k".into(),
                },
            )],
        };
        let sorted = sort_reports(&Known::of(&vehicle).unwrap(), &verified);
        let accepted: Vec<_> = sorted.accepted.iter().map(|r| r.ecu_id.as_str()).collect();
        assert_eq!(accepted, ["TBOX"]);
        let rejected: Vec<_> = sorted
            .rejected
            .iter()
            .map(|r| (r.ecu_id.as_str(), r.rule.as_str()))
            .collect();
        assert_eq!(rejected, [("BCM", "bad-signature"), ("IVI", "replay")]);
        let events: Vec<_> = sorted
            .events
            .iter()
            .map(|e| (e.source, e.rule.as_str(), e.ecu_id.as_str()))
            .collect();
        assert_eq!(
            events,
            [
                ("vehicle", "freeze", "TBOX"),
                ("server", "bad-signature", "BCM"),
                ("server", "replay", "IVI"),
                ("vehicle", "hash-mismatch", "TBOX"),
            ]
        );
    }
}

//! Deliberately naive components: negative controls for the lab itself.
//!
//! A lab that reports `defeated` must be able to report `succeeded`: if every check held
//! against a vehicle that checks nothing, the checks would prove nothing. Each component here
//! stands in for a real one at one attacker position and skips exactly the verification that
//! position relies on; running a scenario against it must end in `succeeded`
//! ([`crate::controls`]). They live only in the attack crate — no product crate can reach
//! them — and they use the product only for mechanics (slots, the wire protocol, signing
//! with the ECU's own key), never for a decision.
//!
//! * [`NaiveEcu`]: installs whatever it is handed; no metadata, hash or decryption check.
//! * [`naive_cycle`]: a primary that reads the director's targets without checking any
//!   signature, never asks the image repository, downloads by path without a length bound or
//!   hash check, and hands the bytes on.
//! * [`NaiveDirector`]: a front for the server that records whatever a manifest claims,
//!   without checking signatures, ECU keys or counters.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::Utc;
use rampart_core::hash::compute_hashes;
use rampart_core::metadata::Expiry;
use rampart_core::signer::InMemorySigner;
use rampart_core::uptane::manifest::{sign_ecu_report, EcuVersionReport, ECU_REPORT_TYPE};
use rampart_core::uptane::InstalledImage;
use rampart_lab::VehicleRun;
use rampart_vehicle::protocol::{
    self, InstallBegin, InstallResult, Kind, MetadataBundle, ReportRequest,
};
use rampart_vehicle::secondary::EcuConfig;
use rampart_vehicle::slots::{BootOutcome, Slots};
use serde_json::{json, Value};
use sqlx::any::AnyPoolOptions;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// An ECU that installs whatever it is handed (the in-vehicle link's negative control).
pub struct NaiveEcu {
    /// Where it listens.
    pub address: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NaiveEcu {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct NaiveState {
    ecu_id: String,
    signer: InMemorySigner,
    slots: Slots,
    counter: u64,
}

impl NaiveEcu {
    /// Takes over the ECU described by `config` (its key, slots and boot-control file; the
    /// real ECU process must be stopped first) and listens on a new loopback port.
    pub async fn start(config: &EcuConfig) -> anyhow::Result<NaiveEcu> {
        let pem = std::fs::read_to_string(&config.key)?;
        let signer = InMemorySigner::from_pkcs8_pem_any(&pem)?;
        let factory = InstalledImage {
            filename: config.factory_image.clone(),
            length: 0,
            hashes: BTreeMap::new(),
            release_counter: 0,
        };
        let slots = Slots::open(config.slots.clone(), factory)?;
        // Go on from the real ECU's report counter, so the director takes the reports.
        let counter = std::fs::read(config.state_dir.join("ecu-state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v.get("report_counter").and_then(Value::as_u64))
            .unwrap_or(0);
        let state = Arc::new(Mutex::new(NaiveState {
            ecu_id: config.ecu_id.clone(),
            signer,
            slots,
            counter,
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_naively(&state, stream).await {
                        tracing::debug!(error = %e, "naive ECU connection ended");
                    }
                });
            }
        });
        Ok(NaiveEcu { address, task })
    }
}

async fn serve_naively(state: &Mutex<NaiveState>, mut stream: TcpStream) -> anyhow::Result<()> {
    let frame = protocol::read_frame(&mut stream).await?;
    match frame.kind {
        Kind::ReportRequest => {
            let req: ReportRequest = protocol::parse_json(&frame)?;
            let mut s = state.lock().await;
            s.counter += 1;
            let report = EcuVersionReport {
                type_: ECU_REPORT_TYPE.into(),
                ecu_id: s.ecu_id.clone(),
                installed_image: s.slots.running().cloned().unwrap_or(InstalledImage {
                    filename: String::new(),
                    length: 0,
                    hashes: BTreeMap::new(),
                    release_counter: 0,
                }),
                attacks_detected: String::new(),
                latest_verified_time: Expiry::new(Utc::now()),
                report_counter: s.counter,
                nonce: req.nonce,
                unrecognized: BTreeMap::new(),
            };
            let bytes = sign_ecu_report(&report, &s.signer)?;
            protocol::write_frame(&mut stream, Kind::Report, &bytes).await?;
        }
        Kind::InstallBegin => {
            let begin: InstallBegin = protocol::parse_json(&frame)?;
            let mut image = Vec::new();
            loop {
                let f = protocol::read_frame(&mut stream).await?;
                match f.kind {
                    Kind::ImageChunk => image.extend_from_slice(&f.payload),
                    _ => break,
                }
            }
            let mut s = state.lock().await;
            // No verification at all: whatever arrived is the new image.
            let mut writer = s.slots.begin_write()?;
            writer.write(&image)?;
            let installed = InstalledImage {
                filename: begin.target.clone(),
                length: image.len() as u64,
                hashes: compute_hashes(&image),
                release_counter: claimed_release_counter(&begin.bundle, &begin.target),
            };
            s.slots.commit_write(writer, installed)?;
            while let BootOutcome::Retrying { .. } | BootOutcome::Normal = s.slots.boot()? {}
            let result = InstallResult {
                ok: true,
                rule: None,
                message: format!("installed {} without checking it", begin.target),
            };
            protocol::write_json(&mut stream, Kind::InstallResult, &result).await?;
        }
        _ => {
            let result = InstallResult {
                ok: true,
                rule: None,
                message: "fine".into(),
            };
            protocol::write_json(&mut stream, Kind::InstallResult, &result).await?;
        }
    }
    let _ = stream.shutdown().await;
    Ok(())
}

/// The release counter the newest director targets in `bundle` claim for `target`, read
/// without checking anything (0 if none).
fn claimed_release_counter(bundle: &MetadataBundle, target: &str) -> u64 {
    bundle
        .director
        .iter()
        .filter(|(name, _)| name.ends_with("targets.json"))
        .filter_map(|(_, text)| serde_json::from_str::<Value>(text).ok())
        .filter_map(|v| {
            v.pointer("/signed/targets")
                .and_then(|t| t.get(target))
                .and_then(|t| t.pointer("/custom/release_counter"))
                .and_then(Value::as_u64)
        })
        .max()
        .unwrap_or(0)
}

/// One update cycle of a primary that trusts whatever the director URL answers: no
/// signature, no image repository, no length bound, no hash. Configured from the lab's
/// `vehicle.toml` at `config` (server, mirror, ECU addresses).
pub async fn naive_cycle(config: &Path) -> anyhow::Result<VehicleRun> {
    let config = rampart_vehicle::primary::load_config(config)?;
    // Like a real primary, a failed cycle is an outcome to judge, not an error of the lab.
    Ok(naive_cycle_with(&config)
        .await
        .unwrap_or_else(|e| VehicleRun {
            success: false,
            code: Some(1),
            stdout: String::new(),
            stderr: format!("error: naive primary: {e:#}\n"),
            report: None,
        }))
}

async fn naive_cycle_with(
    config: &rampart_vehicle::primary::PrimaryConfig,
) -> anyhow::Result<VehicleRun> {
    let server = with_slash(&config.server);
    let director = format!("{server}director/{}/metadata/", config.vin);
    let image_base = with_slash(
        config
            .image_base
            .as_deref()
            .unwrap_or(&format!("{server}image/")),
    );
    let client = reqwest::Client::new();
    let get = |url: String| {
        let client = client.clone();
        async move {
            let r = client.get(&url).send().await?.error_for_status()?;
            anyhow::Ok(r.bytes().await?.to_vec())
        }
    };
    let mut log = String::new();
    let json = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap_or(Value::Null);
    // It fetches the image repository's metadata like any primary, and ignores it.
    if let Ok(ts) = get(format!("{image_base}metadata/timestamp.json")).await {
        if let Some(v) = json(&ts)
            .pointer("/signed/meta/snapshot.json/version")
            .and_then(Value::as_u64)
        {
            let _ = get(format!("{image_base}metadata/{v}.snapshot.json")).await;
        }
    }
    let ts = json(&get(format!("{director}timestamp.json")).await?);
    let snapshot_version = ts
        .pointer("/signed/meta/snapshot.json/version")
        .and_then(Value::as_u64)
        .context("director timestamp names no snapshot")?;
    let snapshot = json(&get(format!("{director}{snapshot_version}.snapshot.json")).await?);
    let targets_version = snapshot
        .pointer("/signed/meta/targets.json/version")
        .and_then(Value::as_u64)
        .context("director snapshot names no targets")?;
    let targets_text = get(format!("{director}{targets_version}.targets.json")).await?;
    let targets = json(&targets_text);
    let mut updates = Vec::new();
    let mut success = true;
    let entries = targets
        .pointer("/signed/targets")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (name, file) in entries {
        let Some(ecus) = file.pointer("/custom/ecus").and_then(Value::as_object) else {
            continue;
        };
        for (ecu_id, spec) in ecus {
            let Some(ecu) = config.ecus.iter().find(|e| &e.ecu_id == ecu_id) else {
                continue;
            };
            let path = match spec
                .pointer("/encryption/ciphertext/path")
                .and_then(Value::as_str)
            {
                Some(p) => p.to_owned(),
                None => {
                    let sha = file
                        .pointer("/hashes/sha256")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    match name.rsplit_once('/') {
                        Some((dir, base)) => format!("{dir}/{sha}.{base}"),
                        None => format!("{sha}.{name}"),
                    }
                }
            };
            let outcome = async {
                let image = get(format!("{image_base}targets/{path}")).await?;
                let bundle = MetadataBundle {
                    director: BTreeMap::from([(
                        format!("{targets_version}.targets.json"),
                        String::from_utf8_lossy(&targets_text).into_owned(),
                    )]),
                    image: BTreeMap::new(),
                };
                hand_over(&ecu.address, &name, bundle, &image).await
            }
            .await;
            let status = match outcome {
                Ok(r) if r.ok => "Installed".to_owned(),
                Ok(r) => format!("Failed: {}", r.message),
                Err(e) => format!("Failed: {e:#}"),
            };
            success &= status == "Installed";
            log.push_str(&format!("naive primary: {name} → {ecu_id}: {status}\n"));
            updates.push(json!({"target": name, "ecu_id": ecu_id, "status": status}));
        }
    }
    let report = json!({ "updates": updates });
    Ok(VehicleRun {
        success,
        code: Some(if success { 0 } else { 1 }),
        stdout: format!("{log}{report}\n"),
        stderr: String::new(),
        report: Some(report),
    })
}

async fn hand_over(
    address: &str,
    target: &str,
    bundle: MetadataBundle,
    image: &[u8],
) -> anyhow::Result<InstallResult> {
    let mut stream = TcpStream::connect(address).await?;
    let begin = InstallBegin {
        target: target.to_owned(),
        bundle,
        length: image.len() as u64,
        delta: false,
    };
    protocol::write_json(&mut stream, Kind::InstallBegin, &begin).await?;
    for chunk in image.chunks(protocol::CHUNK) {
        protocol::write_frame(&mut stream, Kind::ImageChunk, chunk).await?;
    }
    protocol::write_frame(&mut stream, Kind::ImageEnd, &[]).await?;
    let answer = protocol::read_frame(&mut stream).await?;
    match answer.kind {
        Kind::InstallResult => Ok(protocol::parse_json(&answer)?),
        other => Ok(InstallResult {
            ok: false,
            rule: None,
            message: format!(
                "ECU answered {other:?}: {}",
                String::from_utf8_lossy(&answer.payload)
            ),
        }),
    }
}

fn with_slash(s: &str) -> String {
    if s.ends_with('/') {
        s.to_owned()
    } else {
        format!("{s}/")
    }
}

/// A front for the server that records whatever a vehicle manifest claims — no signature,
/// no ECU key, no counter — straight into the server's database, and passes every other
/// request through (the server side's negative control: replays and forged ECU reports).
pub struct NaiveDirector {
    /// Its URL (ends with `/`).
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NaiveDirector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Front {
    upstream: String,
    client: reqwest::Client,
    db: sqlx::AnyPool,
}

impl NaiveDirector {
    /// Starts a front for the server at `upstream` whose database is `database_url`.
    pub async fn start(upstream: &str, database_url: &str) -> anyhow::Result<NaiveDirector> {
        sqlx::any::install_default_drivers();
        let db = AnyPoolOptions::new()
            .max_connections(2)
            .connect(database_url)
            .await
            .with_context(|| format!("naive director: opening {database_url}"))?;
        let front = Front {
            upstream: with_slash(upstream),
            client: reqwest::Client::new(),
            db,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/", listener.local_addr()?);
        let app = Router::new().fallback(handle).with_state(front);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(NaiveDirector { url, task })
    }
}

async fn handle(State(front): State<Front>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().trim_start_matches('/').to_owned();
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let headers = request.headers().clone();
    let Ok(body) = axum::body::to_bytes(request.into_body(), 16 * 1024 * 1024).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if method == Method::POST && path.starts_with("director/") && path.ends_with("/manifest") {
        return match record_claims(&front.db, &body).await {
            Ok(()) => axum::Json(json!({
                "director_targets_version": 0,
                "completed_assignments": [],
                "rejected_reports": [],
                "receipt": null,
            }))
            .into_response(),
            Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        };
    }
    let mut upstream = front
        .client
        .request(method, format!("{}{path}{query}", front.upstream))
        .body(body.to_vec());
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            upstream = upstream.header(name, value);
        }
    }
    match upstream.send().await {
        Ok(r) => {
            let status = r.status();
            let bytes = r.bytes().await.unwrap_or_default();
            (status, Body::from(bytes)).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// Writes what a manifest claims, as if it were true.
async fn record_claims(db: &sqlx::AnyPool, body: &[u8]) -> anyhow::Result<()> {
    let manifest: Value = serde_json::from_slice(body)?;
    let signed = manifest.get("signed").context("no signed part")?;
    let vin = signed
        .get("vin")
        .and_then(Value::as_str)
        .context("no VIN")?;
    let counter = signed
        .get("manifest_counter")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    sqlx::query("UPDATE vehicles SET last_manifest_counter = $1, last_seen = $2 WHERE vin = $3")
        .bind(counter)
        .bind(Utc::now().to_rfc3339())
        .bind(vin)
        .execute(db)
        .await?;
    let reports = signed
        .get("ecu_version_reports")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (listed_as, report) in reports {
        let r = report.get("signed").cloned().unwrap_or(Value::Null);
        // Believes the report about whichever ECU it says it is.
        let ecu = r
            .get("ecu_id")
            .and_then(Value::as_str)
            .unwrap_or(&listed_as)
            .to_owned();
        let img = r.get("installed_image").cloned().unwrap_or(Value::Null);
        sqlx::query(
            "UPDATE ecus SET installed_target = $1, installed_length = $2, installed_hashes = $3, \
             installed_release_counter = $4, last_report_counter = $5 WHERE vin = $6 AND ecu_id = $7",
        )
        .bind(img.get("filename").and_then(Value::as_str).unwrap_or("").to_owned())
        .bind(img.get("length").and_then(Value::as_i64).unwrap_or(0))
        .bind(img.get("hashes").cloned().unwrap_or(Value::Null).to_string())
        .bind(img.get("release_counter").and_then(Value::as_i64).unwrap_or(0))
        .bind(r.get("report_counter").and_then(Value::as_i64).unwrap_or(0))
        .bind(vin)
        .bind(ecu)
        .execute(db)
        .await?;
    }
    Ok(())
}

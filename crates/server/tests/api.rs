//! Integration tests of `rampart serve` against live servers on ephemeral ports: the key
//! ceremony into a temporary data directory, the server over HTTPS with the fleet PKI, an
//! admin client (bearer token) and simulated vehicles (client certificates, ECU keys, the
//! core's full verification over the client crate's fetcher and store).
//!
//! The flow test walks init → publish (plain, encrypted, through a supplier's delegated role)
//! → register → assign → the vehicle verifies, downloads, decrypts, installs and reports →
//! key rotation on both repositories → the vehicle follows. The bad-input tests each check
//! the status, the rule in the JSON body, the security event, and that stored state did not
//! change.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use chrono::Utc;
use rampart_client::fetch::encode_target_path;
use rampart_client::{download_target, FetchConfig, HttpFetcher, MetadataStore, TlsConfig};
use rampart_core::client::{Action, Client, Config as ClientConfig, Fetched};
use rampart_core::encryption::{decrypt_all, unwrap_key, EcuKeyPair};
use rampart_core::hash::{compute_hashes, Hashes};
use rampart_core::key::KeyScheme;
use rampart_core::metadata::Expiry;
use rampart_core::signer::{InMemorySigner, Signer};
use rampart_core::uptane::manifest::{
    sign_ecu_report, sign_vehicle_manifest, EcuVersionReport, VehicleManifest, ECU_REPORT_TYPE,
    VEHICLE_MANIFEST_TYPE,
};
use rampart_core::uptane::{FullVerifier, InstalledImage, Repo, Scope, UptaneAction, Verdict};
use rampart_server::ceremony::{self, CeremonyOptions};
use rampart_server::config::{Config, LimitsConfig};
use rampart_server::db::{Aggregate, Assignment, Db, NewEvent, SecurityEvent, Vehicle};
use rampart_server::layout::Layout;
use rampart_server::ops::{self, DelegateRequest, PublishRequest, Which};
use rampart_server::pki::{self, PkiFiles};
use rampart_server::serve::{self, Running, ServeOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

const VIN_A: &str = "WVWZZZ1JZXW000001";
const VIN_B: &str = "WVWZZZ1JZXW000002";
const VIN_UNKNOWN: &str = "WVWZZZ1JZXW999999";
/// Body limit of every test server (the flood test lowers the rate limits too).
const MAX_BODY: usize = 64 * 1024;

fn generous_limits() -> LimitsConfig {
    LimitsConfig {
        max_body_bytes: MAX_BODY,
        requests_per_second: 1000.0,
        burst: 10_000.0,
    }
}

// ---------------------------------------------------------------------------------------
// The server side

/// A data directory after the key ceremony, and the server running on it.
struct Fleet {
    _dir: tempfile::TempDir,
    layout: Layout,
    server: Option<Running>,
    /// Admin client: trusts the fleet CA, sends the bearer token.
    admin: reqwest::Client,
    /// Trusts the fleet CA, nothing else: no token, no client certificate.
    anonymous: reqwest::Client,
    token: String,
    ca_pem: Vec<u8>,
    /// The server's database, to check stored state directly.
    db: Db,
}

/// An HTTP/1.1 client (the vehicles' transport) that trusts the fleet CA.
fn https_client(ca_pem: &[u8], identity_pem: Option<&[u8]>) -> reqwest::Client {
    client_builder(ca_pem, identity_pem)
        .http1_only()
        .build()
        .unwrap()
}

/// Like [`https_client`], but HTTP/2 only (ALPN `h2`).
fn h2_client(ca_pem: &[u8], identity_pem: Option<&[u8]>) -> reqwest::Client {
    client_builder(ca_pem, identity_pem)
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

fn client_builder(ca_pem: &[u8], identity_pem: Option<&[u8]>) -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem).unwrap()])
        .timeout(Duration::from_secs(20));
    if let Some(pem) = identity_pem {
        builder = builder.identity(reqwest::Identity::from_pem(pem).unwrap());
    }
    builder
}

async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

impl Fleet {
    /// Ceremony (SQLite in the data directory unless `database` is given), `limits` written
    /// to rampart.toml, server started on 127.0.0.1:0.
    async fn start(limits: LimitsConfig, database: Option<String>) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("data"));
        let opts = CeremonyOptions {
            database,
            ..CeremonyOptions::default()
        };
        ceremony::init(&layout, &opts, Utc::now()).unwrap();
        let mut config = Config::load(&layout).unwrap();
        config.limits = limits;
        config.save(&layout).unwrap();
        let token = pki::load_admin_token(&layout.pki()).unwrap();
        let ca_pem = std::fs::read(PkiFiles::in_dir(&layout.pki()).ca_cert).unwrap();
        let db = Db::connect(&config.database_url(&layout)).await.unwrap();
        let mut fleet = Fleet {
            admin: https_client(&ca_pem, None),
            anonymous: https_client(&ca_pem, None),
            _dir: dir,
            layout,
            server: None,
            token,
            ca_pem,
            db,
        };
        fleet.start_server().await;
        fleet
    }

    async fn start_server(&mut self) {
        assert!(self.server.is_none());
        let mut opts = ServeOptions::new(self.layout.clone());
        opts.listen = Some("127.0.0.1:0".into());
        let running = serve::start(opts).await.unwrap();
        assert!(running.tls, "the ceremony's default is HTTPS");
        self.server = Some(running);
    }

    async fn stop_server(&mut self) {
        let running = self.server.take().expect("server running");
        tokio::time::timeout(Duration::from_secs(20), running.stop())
            .await
            .expect("server stops")
            .unwrap();
    }

    /// `https://127.0.0.1:PORT/` + `path`.
    fn url(&self, path: &str) -> String {
        let base = self.server.as_ref().expect("server running").url();
        format!("{base}{}", path.trim_start_matches('/'))
    }

    async fn admin_get(&self, path: &str) -> (StatusCode, Value) {
        json_of(
            self.admin
                .get(self.url(path))
                .bearer_auth(&self.token)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn admin_post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        json_of(
            self.admin
                .post(self.url(path))
                .bearer_auth(&self.token)
                .json(body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Assigns `target` to `ecu` of the first car through the admin API.
    async fn assign_to_ecu(&self, target: &str, ecu: &str) -> (StatusCode, Value) {
        let body = json!({"target": target, "vins": [VIN_A], "ecu_id": ecu});
        self.admin_post("api/v1/assignments", &body).await
    }

    /// Security events (newest first) through the admin API.
    async fn events(&self, query: &str) -> Vec<SecurityEvent> {
        let (status, body) = self.admin_get(&format!("api/v1/events?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_value(body).unwrap()
    }

    async fn vehicle(&self, vin: &str) -> Vehicle {
        let (status, body) = self.admin_get(&format!("api/v1/vehicles/{vin}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_value(body).unwrap()
    }

    async fn assignments(&self, vin: &str) -> Vec<Assignment> {
        let (status, body) = self
            .admin_get(&format!("api/v1/assignments?vin={vin}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_value(body).unwrap()
    }

    /// Everything a rejected request must leave alone, read from the database directly.
    async fn stored_state(&self, vin: &str) -> StoredState {
        StoredState {
            vehicle: self.db.vehicle(vin).await.unwrap(),
            vins: self.db.list_vins().await.unwrap(),
            assignments: self.db.assignments(None, None).await.unwrap(),
            manifests: self.db.count("manifests").await.unwrap(),
            director_roles: self.db.count("director_roles").await.unwrap(),
        }
    }

    fn publish(&self, file: &[u8], name: &str, hardware_id: &str, release: u64) -> PublishRequest {
        let path = self.layout.root().join("..").join(name.replace('/', "_"));
        std::fs::write(&path, file).unwrap();
        PublishRequest {
            name: Some(name.to_owned()),
            version: Some(format!("{release}.0")),
            release_counter: Some(release),
            ..PublishRequest::new(path, hardware_id.to_owned())
        }
    }
}

#[derive(Debug, PartialEq)]
struct StoredState {
    vehicle: Option<Vehicle>,
    vins: Vec<String>,
    assignments: Vec<Assignment>,
    manifests: u64,
    director_roles: u64,
}

// ---------------------------------------------------------------------------------------
// The vehicle side

struct SimEcu {
    id: String,
    hardware_id: String,
    signer: InMemorySigner,
    encryption: Option<EcuKeyPair>,
    installed: InstalledImage,
    report_counter: u64,
}

/// A simulated vehicle: a primary (T-BOX, signs the manifest) and an IVI that takes
/// encrypted images; a client certificate; trusted metadata of both repositories on disk.
struct Car {
    vin: String,
    ecus: Vec<SimEcu>,
    manifest_counter: u64,
    /// HTTPS client with the vehicle's certificate.
    http: reqwest::Client,
    /// The certificate and key (PEM), for other clients of this vehicle.
    identity: Vec<u8>,
    fetcher: HttpFetcher,
    home: tempfile::TempDir,
}

/// Result of one update cycle.
struct Cycle {
    verdict: Verdict,
    director_root: u64,
    image_root: u64,
}

fn factory_image(ecu: &str) -> InstalledImage {
    let bytes = format!("factory image of {ecu}");
    InstalledImage {
        filename: format!("factory/{}.bin", ecu.to_lowercase()),
        length: bytes.len() as u64,
        hashes: compute_hashes(bytes.as_bytes()),
        release_counter: 0,
    }
}

fn nonce() -> String {
    hex::encode(
        rampart_core::encryption::ContentKey::generate()
            .unwrap()
            .as_bytes(),
    )
}

fn new_signer() -> InMemorySigner {
    InMemorySigner::generate(KeyScheme::Ed25519).unwrap()
}

/// A signed ECU version report (as a JSON value, the way a manifest carries it).
fn signed_report(
    ecu_id: &str,
    installed: &InstalledImage,
    counter: u64,
    signer: &dyn Signer,
) -> Value {
    signed_report_with_attacks(ecu_id, installed, counter, signer, "")
}

/// Like [`signed_report`], stating what the ECU noticed (`rule: message` lines).
fn signed_report_with_attacks(
    ecu_id: &str,
    installed: &InstalledImage,
    counter: u64,
    signer: &dyn Signer,
    attacks: &str,
) -> Value {
    let report = EcuVersionReport {
        type_: ECU_REPORT_TYPE.into(),
        ecu_id: ecu_id.to_owned(),
        installed_image: installed.clone(),
        attacks_detected: attacks.to_owned(),
        latest_verified_time: Expiry::new(Utc::now()),
        report_counter: counter,
        nonce: nonce(),
        unrecognized: BTreeMap::new(),
    };
    serde_json::from_slice(&sign_ecu_report(&report, signer).unwrap()).unwrap()
}

fn assert_hashes(data: &[u8], expected: &Hashes) {
    let actual = compute_hashes(data);
    assert!(!expected.is_empty());
    for (alg, digest) in expected {
        assert_eq!(actual.get(alg), Some(digest), "{alg} hash");
    }
}

impl Car {
    /// A provisioned vehicle: keys, a certificate from the fleet CA, and the first root of
    /// each repository in its trusted store.
    fn new(fleet: &Fleet, vin: &str) -> Car {
        let ecus = vec![
            SimEcu {
                id: "TBOX-1".into(),
                hardware_id: "tbox-hw".into(),
                signer: new_signer(),
                encryption: None,
                installed: factory_image("TBOX-1"),
                report_counter: 0,
            },
            SimEcu {
                id: "IVI-1".into(),
                hardware_id: "ivi-hw".into(),
                signer: new_signer(),
                encryption: Some(EcuKeyPair::generate().unwrap()),
                installed: factory_image("IVI-1"),
                report_counter: 0,
            },
        ];
        let cert = pki::issue_vehicle_cert(&fleet.layout.pki(), vin, 30).unwrap();
        let identity = format!("{}{}", cert.cert_pem, cert.key_pem).into_bytes();
        let cert_identity = identity.clone();
        let http = https_client(&fleet.ca_pem, Some(&identity));
        let fetcher = HttpFetcher::new(
            FetchConfig::default(),
            &TlsConfig {
                ca_pem: Some(fleet.ca_pem.clone()),
                identity_pem: Some(identity),
            },
        )
        .unwrap();
        let home = tempfile::tempdir().unwrap();
        let roots = [
            (
                "director",
                fleet.layout.director_public().join("1.root.json"),
            ),
            ("image", fleet.layout.image_metadata().join("1.root.json")),
        ];
        for (repo, root) in roots {
            MetadataStore::open(home.path().join(repo))
                .unwrap()
                .write("root.json", &std::fs::read(root).unwrap())
                .unwrap();
        }
        Car {
            vin: vin.to_owned(),
            ecus,
            manifest_counter: 0,
            http,
            identity: cert_identity,
            fetcher,
            home,
        }
    }

    fn ecu(&self, id: &str) -> &SimEcu {
        self.ecus.iter().find(|e| e.id == id).unwrap()
    }

    fn registration(&self) -> Value {
        let ecus: Vec<Value> = self
            .ecus
            .iter()
            .map(|e| {
                json!({
                    "ecu_id": e.id,
                    "hardware_id": e.hardware_id,
                    "public_key": e.signer.public_key(),
                    "encryption_key": e.encryption.as_ref().map(|k| hex::encode(k.public_key())),
                    "verification": if e.encryption.is_some() { "partial" } else { "full" },
                })
            })
            .collect();
        json!({ "vin": self.vin, "primary_ecu": self.ecus[0].id, "ecus": ecus })
    }

    async fn register(&self, fleet: &Fleet) {
        let (status, body) = fleet
            .admin_post("api/v1/vehicles", &self.registration())
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["vin"], self.vin.as_str());
    }

    /// A vehicle manifest with this counter and these reports, signed by `signer`.
    fn manifest_with(
        &self,
        counter: u64,
        reports: BTreeMap<String, Value>,
        signer: &dyn Signer,
    ) -> Vec<u8> {
        sign_vehicle_manifest(&self.unsigned_manifest(counter, reports), signer).unwrap()
    }

    /// The manifest [`Car::manifest_with`] signs, for a test to change first.
    fn unsigned_manifest(&self, counter: u64, reports: BTreeMap<String, Value>) -> VehicleManifest {
        VehicleManifest {
            type_: VEHICLE_MANIFEST_TYPE.into(),
            vin: self.vin.clone(),
            primary_ecu_id: self.ecus[0].id.clone(),
            manifest_counter: counter,
            nonce: nonce(),
            ecu_version_reports: reports,
            attacks_detected: String::new(),
            update_failures: Vec::new(),
            progress: Vec::new(),
            unrecognized: BTreeMap::new(),
        }
    }

    /// The next honest manifest: every ECU reports what it runs, all counters move on.
    fn honest_manifest(&mut self) -> Vec<u8> {
        let mut reports = BTreeMap::new();
        for ecu in &mut self.ecus {
            ecu.report_counter += 1;
            reports.insert(
                ecu.id.clone(),
                signed_report(&ecu.id, &ecu.installed, ecu.report_counter, &ecu.signer),
            );
        }
        self.manifest_counter += 1;
        self.manifest_with(self.manifest_counter, reports, &self.ecus[0].signer)
    }

    /// POSTs `body` as the manifest of `vin` (normally its own) with its certificate.
    async fn post_manifest(&self, fleet: &Fleet, vin: &str, body: Vec<u8>) -> (StatusCode, Value) {
        json_of(
            self.http
                .post(fleet.url(&format!("director/{vin}/manifest")))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn get(&self, fleet: &Fleet, path: &str) -> reqwest::Response {
        self.http.get(fleet.url(path)).send().await.unwrap()
    }

    /// One full-verification cycle (Uptane 5.4.4.2) over HTTPS, trusted metadata persisted.
    async fn cycle(&self, fleet: &Fleet) -> Cycle {
        let now = Utc::now();
        let director_store = MetadataStore::open(self.home.path().join("director")).unwrap();
        let image_store = MetadataStore::open(self.home.path().join("image")).unwrap();
        let client = |name: &str, store: &MetadataStore| {
            let root = store.read("root.json").unwrap().expect("trusted root");
            Client::new(name, &root, now, ClientConfig::default()).unwrap()
        };
        let scope = Scope::Primary {
            ecus: self
                .ecus
                .iter()
                .map(|e| (e.id.clone(), e.hardware_id.clone()))
                .collect(),
        };
        let installed = self
            .ecus
            .iter()
            .map(|e| (e.id.clone(), e.installed.clone()))
            .collect();
        let mut verifier = FullVerifier::new(
            client("director", &director_store),
            client("image", &image_store),
            &self.vin,
            scope,
            installed,
        );
        let director_base = fleet.url(&format!("director/{}/metadata/", self.vin));
        let image_base = fleet.url("image/metadata/");
        verifier.start();
        loop {
            let step = verifier
                .next_action()
                .unwrap_or_else(|e| panic!("verification failed ({}): {e}", e.rule()));
            let (repo, action) = match step {
                UptaneAction::Done => break,
                UptaneAction::Repo { repo, action } => (repo, action),
            };
            let (store, base) = match repo {
                Repo::Director => (&director_store, &director_base),
                Repo::Image => (&image_store, &image_base),
            };
            let done = match action {
                Action::ReadLocal { name } => {
                    verifier.provide_local(repo, store.read(&name).unwrap())
                }
                Action::Fetch { path, max_length } => {
                    let fetched = match self
                        .fetcher
                        .fetch_bytes(&format!("{base}{path}"), max_length)
                        .await
                        .unwrap()
                    {
                        Some(bytes) => Fetched::Bytes(bytes),
                        None => Fetched::NotFound,
                    };
                    verifier.provide_fetched(repo, &path, fetched)
                }
                Action::Persist { name, bytes } => {
                    store.write(&name, &bytes).unwrap();
                    Ok(())
                }
                Action::Remove { name } => {
                    store.remove(&name).unwrap();
                    Ok(())
                }
                Action::Done => unreachable!("the verifier reports Done itself"),
            };
            done.unwrap_or_else(|e| {
                panic!("{} verification failed ({}): {e}", repo.name(), e.rule())
            });
        }
        Cycle {
            verdict: verifier.verdict().cloned().expect("verdict"),
            director_root: verifier.director().trusted().root().signed.version,
            image_root: verifier.image().trusted().root().signed.version,
        }
    }

    /// Downloads every verified update (plaintext: streamed with hashes checked; encrypted:
    /// ciphertext checked, key unwrapped with the ECU's X25519 key, decrypted, plaintext
    /// checked against the signed hashes) and installs it. Returns target → plaintext.
    async fn install(&mut self, fleet: &Fleet, verdict: &Verdict) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for update in &verdict.updates {
            let i = &update.instruction;
            let plain = match &i.encryption {
                Some(enc) => {
                    let url = fleet.url(&format!(
                        "image/targets/{}",
                        encode_target_path(&enc.ciphertext.path)
                    ));
                    let ciphertext = self
                        .fetcher
                        .fetch_bytes(&url, enc.ciphertext.length)
                        .await
                        .unwrap()
                        .expect("ciphertext is served");
                    assert_eq!(ciphertext.len() as u64, enc.ciphertext.length);
                    assert_hashes(&ciphertext, &enc.ciphertext.hashes);
                    let pair = self.ecu(&i.ecu_id).encryption.as_ref().expect("X25519 key");
                    let key = unwrap_key(pair, &enc.key).unwrap();
                    decrypt_all(&key, &ciphertext).unwrap()
                }
                None => {
                    let sha256 = &i.file.hashes["sha256"];
                    let path = match i.target.rsplit_once('/') {
                        Some((dir, base)) => format!("{dir}/{sha256}.{base}"),
                        None => format!("{sha256}.{}", i.target),
                    };
                    let url = fleet.url(&format!("image/targets/{}", encode_target_path(&path)));
                    let dest = self.home.path().join("downloads").join(&i.ecu_id);
                    download_target(
                        &self.fetcher,
                        &url,
                        &dest,
                        i.file.length,
                        &i.file.hashes,
                        &mut |_, _| {},
                    )
                    .await
                    .unwrap();
                    std::fs::read(&dest).unwrap()
                }
            };
            assert_eq!(plain.len() as u64, i.file.length);
            assert_hashes(&plain, &i.file.hashes);
            let ecu = self.ecus.iter_mut().find(|e| e.id == i.ecu_id).unwrap();
            ecu.installed = InstalledImage {
                filename: i.target.clone(),
                length: i.file.length,
                hashes: i.file.hashes.clone(),
                release_counter: i.release_counter,
            };
            out.insert(i.target.clone(), plain);
        }
        out
    }
}

/// Deterministic test content of `len` bytes.
fn content(tag: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut block = compute_hashes(tag.as_bytes())["sha512"]
        .clone()
        .into_bytes();
    while out.len() < len {
        out.extend_from_slice(&block);
        block = compute_hashes(&block)["sha512"].clone().into_bytes();
    }
    out.truncate(len);
    out
}

/// A fleet with vehicle A registered and checked in once (factory images, counter 1).
async fn fleet_with_car(limits: LimitsConfig) -> (Fleet, Car) {
    fleet_with_car_on(limits, None).await
}

/// Like [`fleet_with_car`], on `database` (SQLite in the data directory when `None`).
async fn fleet_with_car_on(limits: LimitsConfig, database: Option<String>) -> (Fleet, Car) {
    let fleet = Fleet::start(limits, database).await;
    let mut car = Car::new(&fleet, VIN_A);
    car.register(&fleet).await;
    let manifest = car.honest_manifest();
    let (status, body) = car.post_manifest(&fleet, VIN_A, manifest).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stored = fleet.vehicle(VIN_A).await;
    assert_eq!(stored.last_manifest_counter, Some(1));
    for ecu in &stored.ecus {
        assert_eq!(
            ecu.installed.as_ref().map(|i| i.target.clone()),
            Some(car.ecu(&ecu.ecu_id).installed.filename.clone())
        );
    }
    (fleet, car)
}

/// How many occurrences `events` stand for (each row counts its repeats).
fn occurrences(events: &[SecurityEvent]) -> u64 {
    events.iter().map(|e| e.count).sum()
}

/// Sends a bad request and checks: `status`, `{"rule": rule}` with an error message, exactly
/// one new security event `event_rule` (for `event_vin`), and no change to stored state.
async fn assert_refused<F>(
    fleet: &Fleet,
    state_vin: &str,
    request: F,
    status: StatusCode,
    rule: &str,
    event_rule: &str,
    event_vin: Option<&str>,
) -> SecurityEvent
where
    F: std::future::Future<Output = (StatusCode, Value)>,
{
    let query = format!("rule={event_rule}&limit=1000");
    let events_before = occurrences(&fleet.events(&query).await);
    let before = fleet.stored_state(state_vin).await;
    let (got, body) = request.await;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["rule"], rule, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    // One more occurrence: a new row, or a repeat counted on the newest one.
    let events = fleet.events(&query).await;
    assert_eq!(
        occurrences(&events),
        events_before + 1,
        "one new {event_rule} event: {events:?}"
    );
    let event = events[0].clone();
    assert_eq!(event.rule, event_rule);
    assert_eq!(event.source, "server");
    assert_eq!(event.vin.as_deref(), event_vin);
    assert!(event.remote.is_some(), "{event:?}");
    assert_eq!(
        fleet.stored_state(state_vin).await,
        before,
        "stored state changed"
    );
    event
}

// ---------------------------------------------------------------------------------------
// The whole flow

async fn flow(database: Option<String>) {
    let mut fleet = Fleet::start(generous_limits(), database).await;
    let staging = fleet.layout.root().join("..");

    // Publish: a plain image and an encrypted one with the OEM's targets key...
    let tbox_fw3 = content("tbox firmware 3", 40_000);
    let ivi_app1 = content("ivi application 1", 200_000);
    let tbox_fw2 = content("acme tbox firmware 2", 30_000);
    let plain = ops::publish(
        &fleet.layout,
        &fleet.publish(&tbox_fw3, "tbox/fw-3.bin", "tbox-hw", 3),
        Utc::now(),
    )
    .await
    .unwrap();
    assert!(plain.committed);
    assert_eq!(plain.sha256, compute_hashes(&tbox_fw3)["sha256"]);
    let mut request = fleet.publish(&ivi_app1, "ivi/app-1.bin", "ivi-hw", 1);
    request.encrypt = true;
    let encrypted = ops::publish(&fleet.layout, &request, Utc::now())
        .await
        .unwrap();
    assert_eq!(encrypted.length, ivi_app1.len() as u64);

    // ...then a delegation to a supplier, who publishes through its own role.
    let supplier_key = staging.join("acme-tbox.pem");
    rampart_server::keys::generate_key_file(&supplier_key, KeyScheme::Ed25519).unwrap();
    ops::delegate(
        &fleet.layout,
        &DelegateRequest {
            name: "acme-tbox".into(),
            parent: "targets".into(),
            keys: vec![supplier_key.clone()],
            threshold: 1,
            paths: vec!["tbox/acme-*".into()],
            hardware_ids: vec!["tbox-hw".into()],
            terminating: true,
            parent_keys: Vec::new(),
        },
        Utc::now(),
    )
    .unwrap();
    let mut request = fleet.publish(&tbox_fw2, "tbox/acme-fw-2.bin", "tbox-hw", 2);
    request.role = "acme-tbox".into();
    request.keys = vec![supplier_key.clone()];
    let supplied = ops::publish(&fleet.layout, &request, Utc::now())
        .await
        .unwrap();
    assert_eq!(supplied.role, "acme-tbox");

    let (status, images) = fleet.admin_get("api/v1/images").await;
    assert_eq!(status, StatusCode::OK, "{images}");
    let listed: BTreeSet<(String, String)> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_owned(),
                i["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("tbox/fw-3.bin", "targets"),
        ("ivi/app-1.bin", "targets"),
        ("tbox/acme-fw-2.bin", "acme-tbox"),
    ]
    .iter()
    .map(|(n, r)| ((*n).to_owned(), (*r).to_owned()))
    .collect();
    assert_eq!(listed, expected);

    // Register the vehicle; a second registration is a conflict.
    let mut car = Car::new(&fleet, VIN_A);
    car.register(&fleet).await;
    let (status, body) = fleet
        .admin_post("api/v1/vehicles", &car.registration())
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["rule"], "conflict");
    let (status, vins) = fleet.admin_get("api/v1/vehicles").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(vins, json!([VIN_A]));

    // Assign: the supplier's firmware to the T-BOX, the encrypted app to every IVI.
    let (status, body) = fleet.assign_to_ecu("tbox/acme-fw-2.bin", "TBOX-1").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let tbox_assignment = body[0].as_i64().unwrap();
    let (status, body) = fleet
        .admin_post(
            "api/v1/assignments",
            &json!({"target": "ivi/app-1.bin", "vins": [VIN_A], "hardware_id": "ivi-hw", "encrypt": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let ivi_assignment = body[0].as_i64().unwrap();
    // An image for other hardware is refused.
    let (status, body) = fleet
        .admin_post(
            "api/v1/assignments",
            &json!({"target": "ivi/app-1.bin", "vins": [VIN_A], "ecu_id": "TBOX-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["rule"], "hardware-id-mismatch");

    // The vehicle verifies both updates against both repositories.
    let cycle = car.cycle(&fleet).await;
    assert_eq!((cycle.director_root, cycle.image_root), (1, 1));
    let mut updates: Vec<(String, String, String, bool)> = cycle
        .verdict
        .updates
        .iter()
        .map(|u| {
            (
                u.instruction.ecu_id.clone(),
                u.instruction.target.clone(),
                u.image_role.clone(),
                u.instruction.encryption.is_some(),
            )
        })
        .collect();
    updates.sort();
    assert_eq!(
        updates,
        [
            (
                "IVI-1".into(),
                "ivi/app-1.bin".into(),
                "targets".into(),
                true
            ),
            (
                "TBOX-1".into(),
                "tbox/acme-fw-2.bin".into(),
                "acme-tbox".into(),
                false
            ),
        ]
    );
    let ivi_update = cycle
        .verdict
        .updates
        .iter()
        .find(|u| u.instruction.ecu_id == "IVI-1")
        .unwrap();
    // Only the ciphertext is public: the plaintext's content address is not served.
    let sha = &ivi_update.instruction.file.hashes["sha256"];
    let response = car
        .get(&fleet, &format!("image/targets/ivi/{sha}.app-1.bin"))
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let installed = car.install(&fleet, &cycle.verdict).await;
    assert_eq!(installed["ivi/app-1.bin"], ivi_app1, "decrypted image");
    assert_eq!(installed["tbox/acme-fw-2.bin"], tbox_fw2);

    // Report the new images.
    let manifest = car.honest_manifest();
    let (status, body) = car.post_manifest(&fleet, VIN_A, manifest).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut completed: Vec<i64> =
        serde_json::from_value(body["completed_assignments"].clone()).unwrap();
    completed.sort_unstable();
    assert_eq!(completed, [tbox_assignment, ivi_assignment]);
    assert_eq!(body["rejected_reports"], json!([]));
    assert!(body["director_targets_version"].as_u64().unwrap() >= 2);

    // The T-BOX now runs release counter 2: an older release (counter 1) is refused when it
    // is assigned — the vehicle would refuse it on every cycle and the assignment would stay
    // pending for ever — and nothing is assigned.
    let old = content("tbox firmware 1", 20_000);
    let old_release = fleet.publish(&old, "tbox/fw-1.bin", "tbox-hw", 1);
    ops::publish(&fleet.layout, &old_release, Utc::now())
        .await
        .unwrap();
    let assigned_before = fleet.assignments(VIN_A).await.len();
    let (status, body) = fleet.assign_to_ecu("tbox/fw-1.bin", "TBOX-1").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["rule"], "release-counter-decreased", "{body}");
    assert_eq!(fleet.assignments(VIN_A).await.len(), assigned_before);

    let assignments = fleet.assignments(VIN_A).await;
    assert_eq!(assignments.len(), 2);
    for a in &assignments {
        assert_eq!(a.status, "installed", "{a:?}");
        assert!(a.completed_at.is_some());
    }
    let vehicle = fleet.vehicle(VIN_A).await;
    assert_eq!(vehicle.last_manifest_counter, Some(1));
    let running: BTreeMap<String, (String, u64)> = vehicle
        .ecus
        .iter()
        .map(|e| {
            let i = e.installed.clone().expect("installed image");
            (e.ecu_id.clone(), (i.target, i.release_counter))
        })
        .collect();
    assert_eq!(
        running,
        BTreeMap::from([
            ("IVI-1".to_owned(), ("ivi/app-1.bin".to_owned(), 1)),
            ("TBOX-1".to_owned(), ("tbox/acme-fw-2.bin".to_owned(), 2)),
        ])
    );
    let ivi = vehicle.ecus.iter().find(|e| e.ecu_id == "IVI-1").unwrap();
    assert_eq!(
        ivi.installed.as_ref().unwrap().hashes,
        serde_json::to_value(compute_hashes(&ivi_app1)).unwrap()
    );

    // Nothing new: the next cycle stops after the director.
    let cycle = car.cycle(&fleet).await;
    assert!(cycle.verdict.updates.is_empty());

    // Rotate the director's and the image repository's timestamp keys. The server loads
    // online keys at start, so it is restarted.
    fleet.stop_server().await;
    let director = ops::rotate(&fleet.layout, Which::Director, "timestamp", Utc::now())
        .await
        .unwrap();
    let image = ops::rotate(&fleet.layout, Which::Image, "timestamp", Utc::now())
        .await
        .unwrap();
    assert_eq!((director.root_version, image.root_version), (2, 2));
    fleet.start_server().await;

    // A new update through the rotated repositories (the top-level targets role this time).
    let (status, body) = fleet
        .admin_post(
            "api/v1/assignments",
            &json!({"target": "tbox/fw-3.bin", "vins": [VIN_A], "ecu_id": "TBOX-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let third_assignment = body[0].as_i64().unwrap();

    let cycle = car.cycle(&fleet).await;
    assert_eq!(
        (cycle.director_root, cycle.image_root),
        (2, 2),
        "the vehicle followed both rotations"
    );
    assert_eq!(cycle.verdict.updates.len(), 1);
    assert_eq!(cycle.verdict.updates[0].instruction.target, "tbox/fw-3.bin");
    assert_eq!(cycle.verdict.updates[0].image_role, "targets");
    // Both timestamps are now signed by the new keys only.
    for (path, key_file) in [
        (
            format!("director/{VIN_A}/metadata/timestamp.json"),
            &director.new_key_files[0],
        ),
        (
            "image/metadata/timestamp.json".to_owned(),
            &image.new_key_files[0],
        ),
    ] {
        let response = car.get(&fleet, &path).await;
        assert_eq!(response.status(), StatusCode::OK);
        let doc: Value = response.json().await.unwrap();
        let new_id = rampart_server::keys::load_key_file(key_file)
            .unwrap()
            .key_id();
        let signers: Vec<&str> = doc["signatures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["keyid"].as_str().unwrap())
            .collect();
        assert_eq!(signers, [new_id.0.as_str()], "{path}");
    }

    let installed = car.install(&fleet, &cycle.verdict).await;
    assert_eq!(installed["tbox/fw-3.bin"], tbox_fw3);
    let manifest = car.honest_manifest();
    let (status, body) = car.post_manifest(&fleet, VIN_A, manifest).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["completed_assignments"], json!([third_assignment]));
    let vehicle = fleet.vehicle(VIN_A).await;
    let tbox = vehicle.ecus.iter().find(|e| e.ecu_id == "TBOX-1").unwrap();
    assert_eq!(tbox.installed.as_ref().unwrap().target, "tbox/fw-3.bin");
    assert_eq!(vehicle.last_manifest_counter, Some(2));

    // Honest traffic raised no security event: the one recorded is the refused older
    // assignment.
    let events = fleet.events("").await;
    let rules: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.source.as_str(), e.rule.as_str()))
        .collect();
    assert_eq!(rules, [("server", "release-counter-decreased")]);
    fleet.stop_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flow_init_publish_delegate_register_assign_check_in_rotate() {
    flow(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flow_on_postgres() {
    common::with_postgres(|url| flow(Some(url))).await;
}

// ---------------------------------------------------------------------------------------
// Bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_manifest_is_refused() {
    let (fleet, mut car) = fleet_with_car(generous_limits()).await;
    let good = car.honest_manifest();
    let truncated = good[..good.len() / 2].to_vec();
    for body in [truncated, b"not json".to_vec(), b"[]".to_vec(), Vec::new()] {
        assert_refused(
            &fleet,
            VIN_A,
            car.post_manifest(&fleet, VIN_A, body),
            StatusCode::BAD_REQUEST,
            "malformed",
            "malformed",
            Some(VIN_A),
        )
        .await;
    }
    // Well-formed, but an ECU report is not a vehicle manifest.
    let report = signed_report("TBOX-1", &car.ecus[0].installed, 99, &car.ecus[0].signer);
    assert_refused(
        &fleet,
        VIN_A,
        car.post_manifest(&fleet, VIN_A, serde_json::to_vec(&report).unwrap()),
        StatusCode::BAD_REQUEST,
        "wrong-type",
        "wrong-type",
        Some(VIN_A),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manifest_signed_by_a_wrong_key_is_refused() {
    let (fleet, mut car) = fleet_with_car(generous_limits()).await;
    // Honest reports, but the manifest is signed by a key the director does not know.
    let _ = car.honest_manifest();
    let mut reports = BTreeMap::new();
    for ecu in &car.ecus {
        reports.insert(
            ecu.id.clone(),
            signed_report(&ecu.id, &ecu.installed, ecu.report_counter, &ecu.signer),
        );
    }
    let forged = car.manifest_with(car.manifest_counter, reports.clone(), &new_signer());
    assert_refused(
        &fleet,
        VIN_A,
        car.post_manifest(&fleet, VIN_A, forged),
        StatusCode::BAD_REQUEST,
        "bad-signature",
        "bad-signature",
        Some(VIN_A),
    )
    .await;
    // Signed by another ECU of the same vehicle (not the registered primary): also refused.
    let by_ivi = car.manifest_with(car.manifest_counter, reports, &car.ecus[1].signer);
    assert_refused(
        &fleet,
        VIN_A,
        car.post_manifest(&fleet, VIN_A, by_ivi),
        StatusCode::BAD_REQUEST,
        "bad-signature",
        "bad-signature",
        Some(VIN_A),
    )
    .await;
    // A manifest that names another vehicle, signed by this primary.
    let manifest = VehicleManifest {
        type_: VEHICLE_MANIFEST_TYPE.into(),
        vin: VIN_B.into(),
        primary_ecu_id: "TBOX-1".into(),
        manifest_counter: 1000,
        nonce: nonce(),
        ecu_version_reports: BTreeMap::new(),
        attacks_detected: String::new(),
        update_failures: Vec::new(),
        progress: Vec::new(),
        unrecognized: BTreeMap::new(),
    };
    let wrong_vin = sign_vehicle_manifest(&manifest, &car.ecus[0].signer).unwrap();
    assert_refused(
        &fleet,
        VIN_A,
        car.post_manifest(&fleet, VIN_A, wrong_vin),
        StatusCode::BAD_REQUEST,
        "wrong-vehicle",
        "wrong-vehicle",
        Some(VIN_A),
    )
    .await;
    // The honest manifest still goes through afterwards.
    let manifest = car.honest_manifest();
    let (status, body) = car.post_manifest(&fleet, VIN_A, manifest).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manifest_for_an_unknown_vin_is_refused() {
    let (fleet, _car) = fleet_with_car(generous_limits()).await;
    // A genuine fleet certificate, but the vehicle was never registered.
    let mut stranger = Car::new(&fleet, VIN_UNKNOWN);
    let manifest = stranger.honest_manifest();
    let event = assert_refused(
        &fleet,
        VIN_UNKNOWN,
        stranger.post_manifest(&fleet, VIN_UNKNOWN, manifest),
        StatusCode::NOT_FOUND,
        "unknown-vehicle",
        "unknown-vehicle",
        Some(VIN_UNKNOWN),
    )
    .await;
    assert!(event.detail.contains("unregistered"), "{event:?}");
    assert_eq!(fleet.stored_state(VIN_A).await.vins, [VIN_A]);
    let response = stranger
        .get(
            &fleet,
            &format!("director/{VIN_UNKNOWN}/metadata/timestamp.json"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    // A malformed VIN never reaches the database; the answer and the event name one rule.
    assert_refused(
        &fleet,
        VIN_A,
        stranger.post_manifest(&fleet, "bad.vin", b"{}".to_vec()),
        StatusCode::BAD_REQUEST,
        "malformed",
        "malformed",
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_manifest_is_refused() {
    let (fleet, mut car) = fleet_with_car(generous_limits()).await;
    let mut huge = b"{\"signed\": \"".to_vec();
    huge.resize(MAX_BODY + 1024, b'A');
    huge.extend_from_slice(b"\", \"signatures\": []}");
    let event = assert_refused(
        &fleet,
        VIN_A,
        car.post_manifest(&fleet, VIN_A, huge),
        StatusCode::PAYLOAD_TOO_LARGE,
        "endless-data",
        "endless-data",
        Some(VIN_A),
    )
    .await;
    assert!(event.detail.contains(&MAX_BODY.to_string()), "{event:?}");
    // A real manifest padded past the limit with an unknown field: refused too.
    let manifest = car.honest_manifest();
    let mut doc: Value = serde_json::from_slice(&manifest).unwrap();
    doc["padding"] = Value::String("x".repeat(MAX_BODY));
    assert_refused(
        &fleet,
        VIN_A,
        car.post_manifest(&fleet, VIN_A, serde_json::to_vec(&doc).unwrap()),
        StatusCode::PAYLOAD_TOO_LARGE,
        "endless-data",
        "endless-data",
        Some(VIN_A),
    )
    .await;
    // Up to the limit is fine.
    let manifest = car.honest_manifest();
    assert!(manifest.len() < MAX_BODY);
    let (status, body) = car.post_manifest(&fleet, VIN_A, manifest).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Over HTTP/2 an over-limit body gets the answer HTTP/1 gets — the status, the JSON naming
/// the rule, one security event — not a reset stream. (The server used to drop the unread
/// request body before its response went out, which h2 turns into RST_STREAM(CANCEL).) The
/// bodies are far larger than a stream's flow-control window, so the client is still sending
/// when the server answers. The same holds for the other early refusals: no client
/// certificate, and the admin API's body limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_bodies_over_http2_get_the_rule_not_a_stream_error() {
    let (fleet, mut car) = fleet_with_car(generous_limits()).await;
    let h2 = h2_client(&fleet.ca_pem, Some(&car.identity));
    let post = |client: &reqwest::Client, path: &str, body: Vec<u8>| {
        let request = client
            .post(fleet.url(path))
            .header("content-type", "application/json")
            .body(body);
        async move {
            let response = request.send().await.unwrap_or_else(|e| {
                let mut chain = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    chain.push_str(&format!(" / {s}"));
                    source = s.source();
                }
                panic!("no HTTP answer over h2: {chain}")
            });
            assert_eq!(response.version(), reqwest::Version::HTTP_2);
            json_of(response).await
        }
    };
    let manifest_path = format!("director/{VIN_A}/manifest");
    let mut huge = b"{\"signed\": \"".to_vec();
    huge.resize(64 * MAX_BODY, b'A');
    huge.extend_from_slice(b"\", \"signatures\": []}");
    let event = assert_refused(
        &fleet,
        VIN_A,
        post(&h2, &manifest_path, huge.clone()),
        StatusCode::PAYLOAD_TOO_LARGE,
        "endless-data",
        "endless-data",
        Some(VIN_A),
    )
    .await;
    assert!(event.detail.contains(&MAX_BODY.to_string()), "{event:?}");
    // A real manifest padded past the limit.
    let manifest = car.honest_manifest();
    let mut doc: Value = serde_json::from_slice(&manifest).unwrap();
    doc["padding"] = Value::String("x".repeat(64 * MAX_BODY));
    assert_refused(
        &fleet,
        VIN_A,
        post(&h2, &manifest_path, serde_json::to_vec(&doc).unwrap()),
        StatusCode::PAYLOAD_TOO_LARGE,
        "endless-data",
        "endless-data",
        Some(VIN_A),
    )
    .await;
    // Refused before the body is read at all: no client certificate.
    let anonymous = h2_client(&fleet.ca_pem, None);
    assert_refused(
        &fleet,
        VIN_A,
        post(&anonymous, &manifest_path, huge.clone()),
        StatusCode::UNAUTHORIZED,
        "client-certificate-required",
        "client-certificate-required",
        Some(VIN_A),
    )
    .await;
    // The admin API's body limit.
    let request = h2
        .post(fleet.url("api/v1/vehicles"))
        .bearer_auth(&fleet.token)
        .header("content-type", "application/json")
        .body(huge);
    let (status, body) = json_of(request.send().await.unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["rule"], "endless-data", "{body}");
    // The same connection still serves the vehicle: an honest manifest over h2.
    let manifest = car.honest_manifest();
    let (status, body) = post(&h2, &manifest_path, manifest).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// An HTTP/2 connection (ALPN `h2`, raw frames through the `h2` crate) to the fleet's server,
/// with `identity_pem` as client certificate if given.
async fn h2_connect(fleet: &Fleet, identity_pem: Option<&[u8]>) -> h2::client::SendRequest<Bytes> {
    use rustls_pki_types::ServerName;
    let config = common::tls_client_config(&fleet.ca_pem, identity_pem, &[b"h2"]);
    let addr = fleet.server.as_ref().unwrap().addr;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let (send, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

/// POSTs a `total`-byte body over `send` as fast as flow control allows while waiting for the
/// answer. Returns the status, the answer's body, and how the upload ended: `Ok(bytes)` if the
/// whole body went out, or the error that stopped it (a reset stream).
async fn h2_upload(
    send: &mut h2::client::SendRequest<Bytes>,
    url: &str,
    total: usize,
) -> (StatusCode, Value, Result<usize, String>) {
    let request = axum::http::Request::post(url)
        .header("content-type", "application/json")
        .header("content-length", total.to_string())
        .body(())
        .unwrap();
    let (response, mut stream) = send
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(request, false)
        .unwrap();
    let upload = tokio::spawn(async move {
        let mut sent = 0;
        while sent < total {
            let want = (total - sent).min(16 * 1024);
            stream.reserve_capacity(want);
            let granted = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(n)) => n.min(want),
                Some(Err(e)) => return Err(format!("after {sent} bytes: {e}")),
                None => return Err(format!("stream closed after {sent} bytes")),
            };
            if granted == 0 {
                continue;
            }
            sent += granted;
            stream
                .send_data(Bytes::from(vec![b'A'; granted]), sent == total)
                .map_err(|e| format!("after {sent} bytes: {e}"))?;
        }
        Ok(sent)
    });
    let response = tokio::time::timeout(Duration::from_secs(20), response)
        .await
        .expect("an answer within 20 s")
        .unwrap_or_else(|e| panic!("no HTTP answer, the stream failed: {e}"));
    let status = response.status();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let uploaded = tokio::time::timeout(Duration::from_secs(20), upload)
        .await
        .expect("the upload ends within 20 s")
        .unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value, uploaded)
}

/// The server answers an over-limit body over HTTP/2 with 413 and then lets the client finish
/// its upload (bounded) instead of resetting the stream: clients that treat a reset during
/// the upload as a failure (curl 7.88: exit 92, "Stream error in the HTTP/2 framing layer")
/// otherwise never show the answer. The event is recorded once; the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_refusal_lets_the_upload_finish_instead_of_resetting_the_stream() {
    let (fleet, mut car) = fleet_with_car(generous_limits()).await;
    let mut h2 = h2_connect(&fleet, Some(&car.identity)).await;
    let url = fleet.url(&format!("director/{VIN_A}/manifest"));
    let total = 64 * MAX_BODY;
    let events_before = occurrences(&fleet.events("rule=endless-data").await);
    let (status, body, uploaded) = h2_upload(&mut h2, &url, total).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["rule"], "endless-data", "{body}");
    assert_eq!(
        uploaded,
        Ok(total),
        "the server reset the stream instead of reading the rest of the body"
    );
    let events = fleet.events("rule=endless-data").await;
    assert_eq!(occurrences(&events), events_before + 1, "{events:?}");
    // Refused before the body is read at all: no client certificate.
    let mut anonymous = h2_connect(&fleet, None).await;
    let (status, body, uploaded) = h2_upload(&mut anonymous, &url, total).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["rule"], "client-certificate-required", "{body}");
    assert_eq!(uploaded, Ok(total));
    // The vehicle's connection still works.
    let manifest = car.honest_manifest();
    let request = axum::http::Request::post(&url)
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let (response, mut stream) = h2
        .ready()
        .await
        .unwrap()
        .send_request(request, false)
        .unwrap();
    stream.send_data(Bytes::from(manifest), true).unwrap();
    assert_eq!(response.await.unwrap().status(), StatusCode::OK);
}

/// A manifest counter the database cannot hold exactly is refused as such (400 and an event
/// naming the same rule), not clamped to i64::MAX where the vehicle's later counters would
/// all look like replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manifest_counter_beyond_the_database_integer_is_refused() {
    let (fleet, car) = fleet_with_car(generous_limits()).await;
    let mut reports = BTreeMap::new();
    for ecu in &car.ecus {
        reports.insert(
            ecu.id.clone(),
            signed_report(&ecu.id, &ecu.installed, ecu.report_counter + 1, &ecu.signer),
        );
    }
    let body = car.manifest_with(u64::MAX, reports, &car.ecus[0].signer);
    assert_refused(
        &fleet,
        VIN_A,
        car.post_manifest(&fleet, VIN_A, body),
        StatusCode::BAD_REQUEST,
        "counter-out-of-range",
        "counter-out-of-range",
        Some(VIN_A),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replayed_manifest_is_refused() {
    let (fleet, mut car) = fleet_with_car(generous_limits()).await;
    let manifest = car.honest_manifest();
    let (status, body) = car.post_manifest(&fleet, VIN_A, manifest.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(fleet.vehicle(VIN_A).await.last_manifest_counter, Some(2));
    // The same bytes again: refused on the manifest counter before its reports are looked at,
    // so exactly one replay event.
    let events_before = fleet.events("rule=replay").await.len();
    let before = fleet.stored_state(VIN_A).await;
    let (status, body) = car.post_manifest(&fleet, VIN_A, manifest).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["rule"], "replay", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("counter 2 is not above the last accepted 2"),
        "{body}"
    );
    let events = fleet.events("rule=replay").await;
    assert_eq!(events.len(), events_before + 1, "{events:?}");
    assert_eq!(events[0].vin.as_deref(), Some(VIN_A));
    assert_eq!(events[0].ecu_id, None, "{:?}", events[0]);
    assert!(
        events[0].detail.contains("counter 2 is not above"),
        "{:?}",
        events[0]
    );
    assert_eq!(
        fleet.stored_state(VIN_A).await,
        before,
        "stored state changed"
    );
    // A freshly signed manifest with an old counter (and fresh report counters).
    let mut reports = BTreeMap::new();
    for ecu in &car.ecus {
        reports.insert(
            ecu.id.clone(),
            signed_report(
                &ecu.id,
                &ecu.installed,
                ecu.report_counter + 10,
                &ecu.signer,
            ),
        );
    }
    let old = car.manifest_with(1, reports, &car.ecus[0].signer);
    assert_refused(
        &fleet,
        VIN_A,
        car.post_manifest(&fleet, VIN_A, old),
        StatusCode::CONFLICT,
        "replay",
        "replay",
        Some(VIN_A),
    )
    .await;
    assert_eq!(fleet.vehicle(VIN_A).await.last_manifest_counter, Some(2));
}

/// N copies of one manifest posted at once — a retrying primary, or an attacker replaying a
/// captured manifest in parallel — are accepted once, and what the accepted manifest says is
/// recorded once: the primary's and the ECUs' attack indicators and the rejection of a forged
/// ECU report. Each refused copy is one `replay` event and nothing else.
async fn concurrent_copies_of_a_manifest_record_its_events_once(database: Option<String>) {
    const COPIES: usize = 8;
    let fleet = Fleet::start(generous_limits(), database).await;
    let mut car = Car::new(&fleet, VIN_A);
    car.register(&fleet).await;
    let mut reports = BTreeMap::new();
    car.ecus[0].report_counter += 1;
    let tbox = &car.ecus[0];
    reports.insert(
        tbox.id.clone(),
        signed_report_with_attacks(
            &tbox.id,
            &tbox.installed,
            tbox.report_counter,
            &tbox.signer,
            "rollback: tbox/fw-0.bin has release counter 0, below the installed 1",
        ),
    );
    // The IVI's report is signed by a key that is not the IVI's: dropped, one event.
    reports.insert(
        "IVI-1".to_owned(),
        signed_report("IVI-1", &car.ecus[1].installed, 1, &new_signer()),
    );
    let manifest = VehicleManifest {
        type_: VEHICLE_MANIFEST_TYPE.into(),
        vin: VIN_A.into(),
        primary_ecu_id: "TBOX-1".into(),
        manifest_counter: 1,
        nonce: nonce(),
        ecu_version_reports: reports,
        attacks_detected: "freeze: director timestamp older than the trusted one".into(),
        update_failures: Vec::new(),
        progress: Vec::new(),
        unrecognized: BTreeMap::new(),
    };
    let manifest = sign_vehicle_manifest(&manifest, &car.ecus[0].signer).unwrap();

    let barrier = Arc::new(tokio::sync::Barrier::new(COPIES));
    let url = fleet.url(&format!("director/{VIN_A}/manifest"));
    let mut posts = Vec::new();
    for _ in 0..COPIES {
        let (http, url, body, barrier) = (
            https_client(&fleet.ca_pem, Some(&car.identity)),
            url.clone(),
            manifest.clone(),
            barrier.clone(),
        );
        posts.push(tokio::spawn(async move {
            barrier.wait().await;
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            json_of(response).await
        }));
    }
    let mut statuses = Vec::new();
    for post in posts {
        let (status, body) = post.await.unwrap();
        if status != StatusCode::OK {
            assert_eq!(body["rule"], "replay", "{status} {body}");
        }
        statuses.push(status);
    }
    let accepted = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(accepted, 1, "{statuses:?}");
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count(),
        COPIES - 1,
        "{statuses:?}"
    );
    let count = |rule: &'static str| {
        let fleet = &fleet;
        async move { fleet.events(&format!("rule={rule}&limit=1000")).await }
    };
    let freeze = count("freeze").await;
    assert_eq!(freeze.len(), 1, "primary's indicator: {freeze:?}");
    assert_eq!(freeze[0].source, "vehicle");
    assert_eq!(freeze[0].ecu_id.as_deref(), Some("TBOX-1"));
    let rollback = count("rollback").await;
    assert_eq!(rollback.len(), 1, "ECU's indicator: {rollback:?}");
    let forged = count("bad-signature").await;
    assert_eq!(forged.len(), 1, "dropped ECU report: {forged:?}");
    assert_eq!(forged[0].ecu_id.as_deref(), Some("IVI-1"));
    let replays = count("replay").await;
    assert_eq!(occurrences(&replays), COPIES as u64 - 1, "{replays:?}");
    assert_eq!(fleet.db.count("manifests").await.unwrap(), 1);
    assert_eq!(fleet.vehicle(VIN_A).await.last_manifest_counter, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_copies_of_a_manifest_record_its_events_once_on_sqlite() {
    concurrent_copies_of_a_manifest_record_its_events_once(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_copies_of_a_manifest_record_its_events_once_on_postgres() {
    common::with_postgres(|url| concurrent_copies_of_a_manifest_record_its_events_once(Some(url)))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_ecu_report_is_dropped() {
    let (fleet, mut car) = fleet_with_car(generous_limits()).await;
    let before = fleet.vehicle(VIN_A).await;
    let ivi_before = before
        .ecus
        .iter()
        .find(|e| e.ecu_id == "IVI-1")
        .unwrap()
        .clone();

    // The T-BOX signs a valid manifest, but the IVI's report claims an image and is signed
    // by a key that is not the IVI's.
    let evil = InstalledImage {
        filename: "ivi/evil.bin".into(),
        length: 666,
        hashes: compute_hashes(b"evil"),
        release_counter: 99,
    };
    car.ecus[0].report_counter += 1;
    let tbox = &car.ecus[0];
    let reports = BTreeMap::from([
        (
            "TBOX-1".to_owned(),
            signed_report("TBOX-1", &tbox.installed, tbox.report_counter, &tbox.signer),
        ),
        (
            "IVI-1".to_owned(),
            signed_report("IVI-1", &evil, 50, &new_signer()),
        ),
    ]);
    car.manifest_counter += 1;
    let manifest = car.manifest_with(car.manifest_counter, reports, &car.ecus[0].signer);
    let events_before = fleet.events("rule=bad-signature").await.len();
    let (status, body) = car.post_manifest(&fleet, VIN_A, manifest).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["rejected_reports"],
        json!([{"ecu_id": "IVI-1", "rule": "bad-signature"}])
    );
    let events = fleet.events("rule=bad-signature").await;
    assert_eq!(events.len(), events_before + 1);
    assert_eq!(events[0].vin.as_deref(), Some(VIN_A));
    assert_eq!(events[0].ecu_id.as_deref(), Some("IVI-1"));

    let after = fleet.vehicle(VIN_A).await;
    let ivi_after = after.ecus.iter().find(|e| e.ecu_id == "IVI-1").unwrap();
    assert_eq!(*ivi_after, ivi_before, "the forged report changed nothing");
    let tbox_after = after.ecus.iter().find(|e| e.ecu_id == "TBOX-1").unwrap();
    assert_eq!(
        tbox_after.last_report_counter,
        Some(car.ecus[0].report_counter)
    );
    assert_eq!(after.last_manifest_counter, Some(car.manifest_counter));

    // A replayed ECU report (old counter) and a report for an ECU the vehicle does not have
    // are dropped the same way.
    car.ecus[0].report_counter += 1;
    let (tbox, ivi) = (&car.ecus[0], &car.ecus[1]);
    let reports = BTreeMap::from([
        (
            "TBOX-1".to_owned(),
            signed_report("TBOX-1", &tbox.installed, tbox.report_counter, &tbox.signer),
        ),
        (
            "IVI-1".to_owned(),
            signed_report("IVI-1", &evil, ivi.report_counter, &ivi.signer),
        ),
        (
            "ECU-GHOST".to_owned(),
            signed_report("ECU-GHOST", &evil, 1, &new_signer()),
        ),
    ]);
    car.manifest_counter += 1;
    let manifest = car.manifest_with(car.manifest_counter, reports, &car.ecus[0].signer);
    let (status, body) = car.post_manifest(&fleet, VIN_A, manifest).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut rejected: Vec<(String, String)> = body["rejected_reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["ecu_id"].as_str().unwrap().to_owned(),
                r["rule"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    rejected.sort();
    assert_eq!(
        rejected,
        [
            ("ECU-GHOST".to_owned(), "manifest".to_owned()),
            ("IVI-1".to_owned(), "replay".to_owned()),
        ]
    );
    let ivi_events = fleet.events(&format!("vin={VIN_A}&rule=replay")).await;
    assert_eq!(ivi_events.len(), 1);
    assert_eq!(ivi_events[0].ecu_id.as_deref(), Some("IVI-1"));
    let after = fleet.vehicle(VIN_A).await;
    let ivi_after = after.ecus.iter().find(|e| e.ecu_id == "IVI-1").unwrap();
    assert_eq!(*ivi_after, ivi_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificate_for_another_vin_is_refused() {
    let (fleet, car_a) = fleet_with_car(generous_limits()).await;
    let mut car_b = Car::new(&fleet, VIN_B);
    car_b.register(&fleet).await;
    let b_manifest = car_b.honest_manifest();

    // A's certificate on B's routes: B's own (validly signed) manifest, and B's metadata.
    assert_refused(
        &fleet,
        VIN_B,
        car_a.post_manifest(&fleet, VIN_B, b_manifest.clone()),
        StatusCode::FORBIDDEN,
        "vin-mismatch",
        "vin-mismatch",
        Some(VIN_B),
    )
    .await;
    let event = assert_refused(
        &fleet,
        VIN_B,
        async {
            json_of(
                car_a
                    .get(&fleet, &format!("director/{VIN_B}/metadata/timestamp.json"))
                    .await,
            )
            .await
        },
        StatusCode::FORBIDDEN,
        "vin-mismatch",
        "vin-mismatch",
        Some(VIN_B),
    )
    .await;
    assert!(event.detail.contains(VIN_A), "{event:?}");
    // B itself is served.
    let (status, body) = car_b.post_manifest(&fleet, VIN_B, b_manifest).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vehicle_route_without_client_certificate_is_refused() {
    let (fleet, mut car) = fleet_with_car(generous_limits()).await;
    let manifest = car.honest_manifest();
    let anonymous_post = async {
        json_of(
            fleet
                .anonymous
                .post(fleet.url(&format!("director/{VIN_A}/manifest")))
                .body(manifest.clone())
                .send()
                .await
                .unwrap(),
        )
        .await
    };
    assert_refused(
        &fleet,
        VIN_A,
        anonymous_post,
        StatusCode::UNAUTHORIZED,
        "client-certificate-required",
        "client-certificate-required",
        Some(VIN_A),
    )
    .await;
    let anonymous_get = async {
        json_of(
            fleet
                .anonymous
                .get(fleet.url(&format!("director/{VIN_A}/metadata/1.root.json")))
                .send()
                .await
                .unwrap(),
        )
        .await
    };
    assert_refused(
        &fleet,
        VIN_A,
        anonymous_get,
        StatusCode::UNAUTHORIZED,
        "client-certificate-required",
        "client-certificate-required",
        Some(VIN_A),
    )
    .await;
    // The image repository is public.
    let response = fleet
        .anonymous
        .get(fleet.url("image/metadata/timestamp.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The same manifest with the certificate is accepted.
    let (status, body) = car.post_manifest(&fleet, VIN_A, manifest).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Anyone can make the server record an event — a vehicle route without a certificate — and
/// name any VIN in it. 1,000 such requests from one address become a bounded number of
/// stored rows (new rows per address and rule are rate-limited, repeats are counted on the
/// latest row), and the counts add up to every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unauthenticated_event_flood_is_stored_as_counted_rows() {
    const REQUESTS: usize = 1000;
    const PARALLEL: usize = 16;
    let (fleet, _car) = fleet_with_car(generous_limits()).await;
    let rows_before = fleet.db.count("security_events").await.unwrap();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..PARALLEL {
        let (client, next, base) = (
            fleet.anonymous.clone(),
            next.clone(),
            fleet.url("director/"),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= REQUESTS {
                    break;
                }
                let vin = format!("WVWZZZ1JZXW{i:06}");
                let response = client
                    .get(format!("{base}{vin}/metadata/timestamp.json"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let (status, body) = fleet
        .admin_get("api/v1/events?rule=client-certificate-required&limit=10000")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let events = body.as_array().unwrap();
    let total: u64 = events
        .iter()
        .map(|e| e["count"].as_u64().unwrap_or(1))
        .sum();
    eprintln!(
        "{} rows for {REQUESTS} refusals (counts add up to {total})",
        events.len()
    );
    assert_eq!(total, REQUESTS as u64, "every refusal is counted");
    assert!(
        events.len() <= 60,
        "{} rows for {REQUESTS} refusals from one address",
        events.len()
    );
    let rows_after = fleet.db.count("security_events").await.unwrap();
    assert!(
        rows_after - rows_before <= 60,
        "{rows_before} → {rows_after}"
    );
    // The newest row says how many it stands for.
    assert!(events[0]["count"].as_u64().unwrap() > 1, "{}", events[0]);
}

/// `[events]` retention is applied when the server starts and then periodically: events last
/// seen longer ago than `max_age_days` go, newer ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_retention_runs_at_start_and_periodically() {
    let mut fleet = Fleet::start(generous_limits(), None).await;
    fleet.stop_server().await;
    let mut config = Config::load(&fleet.layout).unwrap();
    config.events.max_age_days = 30;
    config.events.prune_every_secs = 1;
    config.save(&fleet.layout).unwrap();
    let db = fleet.db.clone();
    let record = |detail: &'static str, days_ago: i64| {
        let db = db.clone();
        async move {
            let e = NewEvent {
                source: "server",
                rule: "replay",
                vin: None,
                ecu_id: None,
                remote: Some("192.0.2.1:1"),
                detail,
            };
            let at = Utc::now() - chrono::Duration::days(days_ago);
            db.record_event_at(&e, at, Aggregate::Identical)
                .await
                .unwrap();
        }
    };
    record("old before start", 40).await;
    record("recent", 2).await;
    fleet.start_server().await;
    let details = |events: Vec<SecurityEvent>| -> Vec<String> {
        events.into_iter().map(|e| e.detail).collect()
    };
    assert_eq!(details(fleet.events("rule=replay").await), ["recent"]);
    record("old while running", 31).await;
    let mut left = Vec::new();
    for _ in 0..40 {
        left = details(fleet.events("rule=replay").await);
        if left == ["recent"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, ["recent"], "the periodic task prunes too");
}

/// `[manifests]` retention is applied when the server starts (in the background: it serves
/// at once) and then periodically: quiet manifests received longer ago than
/// `quiet_max_age_days` go, except the vehicle's newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manifest_retention_runs_at_start_and_periodically() {
    let (mut fleet, mut car) = fleet_with_car_on(generous_limits(), None).await;
    for _ in 0..2 {
        let manifest = car.honest_manifest();
        let (status, body) = car.post_manifest(&fleet, VIN_A, manifest).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    fleet.stop_server().await;
    let mut config = Config::load(&fleet.layout).unwrap();
    assert_eq!(config.manifests.quiet_max_age_days, 7, "the default");
    let pool = sqlx::AnyPool::connect(&config.database_url(&fleet.layout))
        .await
        .unwrap();
    let age_all = |days: i64| {
        let pool = pool.clone();
        async move {
            let at = (Utc::now() - chrono::Duration::days(days))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            sqlx::query("UPDATE manifests SET received_at = $1")
                .bind(at)
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    let counters = || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT counter FROM manifests ORDER BY counter")
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    let pruned_to = |expected: i64| async move {
        let mut left = Vec::new();
        for _ in 0..40 {
            left = counters().await;
            if left == [expected] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        left
    };
    age_all(31).await;
    assert_eq!(counters().await, [1, 2, 3]);
    // A long prune interval: only the run at start can prune.
    config.manifests.prune_every_secs = 3600;
    config.save(&fleet.layout).unwrap();
    fleet.start_server().await;
    assert_eq!(pruned_to(3).await, [3], "pruned at start: the newest stays");
    fleet.stop_server().await;
    config.manifests.prune_every_secs = 1;
    config.save(&fleet.layout).unwrap();
    fleet.start_server().await;
    let manifest = car.honest_manifest();
    let (status, body) = car.post_manifest(&fleet, VIN_A, manifest).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    age_all(31).await;
    assert_eq!(pruned_to(4).await, [4], "the periodic task prunes too");
}

/// The serial (lower-case hex) of the certificate in `identity_pem`.
fn cert_serial(identity_pem: &[u8]) -> String {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(identity_pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    hex::encode(cert.raw_serial())
}

/// Requests `path` as `car` until the answer is 403 (at most 3 s); returns how long that took
/// and the refusal's body.
async fn until_refused(car: &Car, fleet: &Fleet, path: &str) -> (Duration, Value) {
    let started = std::time::Instant::now();
    loop {
        let response = car.get(fleet, path).await;
        if response.status() == StatusCode::FORBIDDEN {
            return (started.elapsed(), json_of(response).await.1);
        }
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "still served 3 s after the revocation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A vehicle whose certificate is revoked — by VIN with `rampart pki revoke`, written to the
/// database while the server runs — is refused within the refresh interval (`[pki]
/// revocation_refresh_ms`, 1 s) with 403 `certificate-revoked` and an event, on every vehicle
/// route; other vehicles are served. Revoking one certificate by serial leaves the vehicle's
/// other certificates working.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoked_vehicle_is_refused_while_others_are_served() {
    let (fleet, mut car_a) = fleet_with_car(generous_limits()).await;
    let mut car_b = Car::new(&fleet, VIN_B);
    car_b.register(&fleet).await;
    let timestamp = |vin: &str| format!("director/{vin}/metadata/timestamp.json");
    assert_eq!(
        car_a.get(&fleet, &timestamp(VIN_A)).await.status(),
        StatusCode::OK
    );

    // Revoked while the server runs, through the database as the CLI does.
    fleet
        .db
        .revoke(Some(VIN_A), None, "stolen vehicle")
        .await
        .unwrap();
    let (took, body) = until_refused(&car_a, &fleet, &timestamp(VIN_A)).await;
    assert_eq!(body["rule"], "certificate-revoked", "{body}");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    let event = assert_refused(
        &fleet,
        VIN_A,
        async { json_of(car_a.get(&fleet, &timestamp(VIN_A)).await).await },
        StatusCode::FORBIDDEN,
        "certificate-revoked",
        "certificate-revoked",
        Some(VIN_A),
    )
    .await;
    assert!(event.detail.contains("stolen vehicle"), "{event:?}");
    let manifest = car_a.honest_manifest();
    assert_refused(
        &fleet,
        VIN_A,
        car_a.post_manifest(&fleet, VIN_A, manifest),
        StatusCode::FORBIDDEN,
        "certificate-revoked",
        "certificate-revoked",
        Some(VIN_A),
    )
    .await;
    // B is unaffected.
    let manifest = car_b.honest_manifest();
    let (status, body) = car_b.post_manifest(&fleet, VIN_B, manifest).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        car_b.get(&fleet, &timestamp(VIN_B)).await.status(),
        StatusCode::OK
    );

    // One certificate of B by serial: that one is refused, a new one for B works.
    let serial = cert_serial(&car_b.identity);
    fleet
        .db
        .revoke(None, Some(&serial.to_uppercase()), "key leaked")
        .await
        .unwrap();
    let (_, body) = until_refused(&car_b, &fleet, &timestamp(VIN_B)).await;
    assert_eq!(body["rule"], "certificate-revoked", "{body}");
    let fresh = pki::issue_vehicle_cert(&fleet.layout.pki(), VIN_B, 30).unwrap();
    let identity = format!("{}{}", fresh.cert_pem, fresh.key_pem).into_bytes();
    let reissued = https_client(&fleet.ca_pem, Some(&identity));
    let response = reissued
        .get(fleet.url(&timestamp(VIN_B)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The list shows both.
    let listed = fleet.db.revocations().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1].serial.as_deref(), Some(serial.as_str()));
    // Lifted: A is served again within the interval.
    fleet.db.unrevoke_vin(VIN_A).await.unwrap();
    let started = std::time::Instant::now();
    while car_a.get(&fleet, &timestamp(VIN_A)).await.status() != StatusCode::OK {
        assert!(started.elapsed() < Duration::from_secs(3), "still refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With `revocation_refresh_ms = 0` every vehicle request reads the database: the very next
/// request after a revocation is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_no_refresh_interval_the_next_request_is_refused() {
    let (mut fleet, car) = fleet_with_car(generous_limits()).await;
    fleet.stop_server().await;
    let mut config = Config::load(&fleet.layout).unwrap();
    config.pki.revocation_refresh_ms = 0;
    config.save(&fleet.layout).unwrap();
    fleet.start_server().await;
    let path = format!("director/{VIN_A}/metadata/timestamp.json");
    assert_eq!(car.get(&fleet, &path).await.status(), StatusCode::OK);
    fleet.db.revoke(Some(VIN_A), None, "stolen").await.unwrap();
    let response = car.get(&fleet, &path).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(json_of(response).await.1["rule"], "certificate-revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_routes_need_the_token() {
    let (fleet, car) = fleet_with_car(generous_limits()).await;
    let newcomer = Car::new(&fleet, VIN_B);
    let registration = newcomer.registration();
    let assign = json!({"target": "x.bin", "vins": [VIN_A], "ecu_id": "TBOX-1"});
    let wrong_tokens: [Option<String>; 4] = [
        None,
        Some("Bearer ".to_owned()),
        Some(format!("Bearer {}x", fleet.token)),
        Some(format!("Basic {}", fleet.token)),
    ];
    for auth in wrong_tokens {
        let send = |request: reqwest::RequestBuilder| {
            let request = match &auth {
                Some(value) => request.header("authorization", value),
                None => request,
            };
            async move { json_of(request.send().await.unwrap()).await }
        };
        for request in [
            fleet.anonymous.get(fleet.url("api/v1/vehicles")),
            fleet
                .anonymous
                .get(fleet.url(&format!("api/v1/vehicles/{VIN_A}"))),
            fleet.anonymous.get(fleet.url("api/v1/events")),
            fleet
                .anonymous
                .post(fleet.url("api/v1/vehicles"))
                .json(&registration),
            fleet
                .anonymous
                .post(fleet.url("api/v1/assignments"))
                .json(&assign),
            // A vehicle certificate is no admin credential.
            car.http.get(fleet.url("api/v1/vehicles")),
        ] {
            assert_refused(
                &fleet,
                VIN_B,
                send(request),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unauthorized",
                None,
            )
            .await;
        }
    }
    assert_eq!(fleet.stored_state(VIN_A).await.vins, [VIN_A]);
    let (status, _) = fleet.admin_get("api/v1/vehicles").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_flood_is_rate_limited_per_client() {
    let limits = LimitsConfig {
        max_body_bytes: MAX_BODY,
        requests_per_second: 0.5,
        burst: 5.0,
    };
    let fleet = Fleet::start(limits, None).await;
    let car_a = Car::new(&fleet, VIN_A);
    let car_b = Car::new(&fleet, VIN_B);
    car_a.register(&fleet).await;
    car_b.register(&fleet).await;
    let timestamp = |vin: &str| format!("director/{vin}/metadata/timestamp.json");

    let mut statuses = Vec::new();
    let mut retry_after = None;
    let mut refusal = Value::Null;
    for _ in 0..12 {
        let response = car_a.get(&fleet, &timestamp(VIN_A)).await;
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            refusal = json_of(response).await.1;
        }
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(ok + limited, statuses.len(), "{statuses:?}");
    assert!((5..=6).contains(&ok), "burst of 5 (+ refill): {statuses:?}");
    assert_eq!(statuses[0], StatusCode::OK);
    assert_eq!(*statuses.last().unwrap(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refusal["rule"], "rate-limited", "{refusal}");
    let retry_after = retry_after.expect("Retry-After header");
    // Under one token and refilling at 0.5/s: the next token is 1–2 s away, announced in
    // whole seconds rounded up (rounding down would send the client back too early).
    assert_eq!(retry_after, 2);

    // Another vehicle, and the admin, are still served.
    let response = car_b.get(&fleet, &timestamp(VIN_B)).await;
    assert_eq!(response.status(), StatusCode::OK);
    // One event for the flood (the first refusal), not one per refused request.
    let events = fleet.events("rule=rate-limited").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].vin.as_deref(), Some(VIN_A));

    // After Retry-After, A is served again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let response = car_a.get(&fleet, &timestamp(VIN_A)).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_metrics_and_openapi() {
    let (fleet, mut car) = fleet_with_car(generous_limits()).await;
    let (status, body) = json_of(
        fleet
            .anonymous
            .get(fleet.url("health"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok", "database": "ok"}));

    let metrics = || async {
        let response = fleet
            .anonymous
            .get(fleet.url("metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let text = response.text().await.unwrap();
        let mut values = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (name, value) = line.split_once(' ').unwrap();
            values.insert(name.to_owned(), value.parse::<u64>().unwrap());
        }
        values
    };
    let before = metrics().await;
    for name in [
        "rampart_requests_total",
        "rampart_rate_limited_total",
        "rampart_client_errors_total",
        "rampart_manifests_accepted_total",
        "rampart_manifests_rejected_total",
        "rampart_director_metadata_served_total",
        "rampart_security_events",
        "rampart_vehicles",
    ] {
        assert!(before.contains_key(name), "{name} missing: {before:?}");
    }
    assert_eq!(before["rampart_vehicles"], 1);
    assert_eq!(before["rampart_manifests_accepted_total"], 1);
    assert!(before["rampart_requests_total"] >= 3);

    // One accepted, one refused manifest, one metadata file.
    let manifest = car.honest_manifest();
    let (status, _) = car.post_manifest(&fleet, VIN_A, manifest).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = car.post_manifest(&fleet, VIN_A, b"{".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let response = car
        .get(&fleet, &format!("director/{VIN_A}/metadata/timestamp.json"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let after = metrics().await;
    let delta = |name: &str| after[name] - before[name];
    assert_eq!(delta("rampart_manifests_accepted_total"), 1);
    assert_eq!(delta("rampart_manifests_rejected_total"), 1);
    assert_eq!(delta("rampart_client_errors_total"), 1);
    assert_eq!(delta("rampart_director_metadata_served_total"), 1);
    assert_eq!(delta("rampart_security_events"), 1);
    assert!(delta("rampart_requests_total") >= 4);

    let (status, doc) = json_of(
        fleet
            .anonymous
            .get(fleet.url("openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for path in [
        "/health",
        "/director/{vin}/metadata/{file}",
        "/director/{vin}/manifest",
        "/api/v1/vehicles",
        "/api/v1/vehicles/{vin}",
        "/api/v1/assignments",
        "/api/v1/events",
        "/api/v1/images",
    ] {
        assert!(paths.contains(path), "{path} not in {paths:?}");
    }
    assert!(doc["paths"]["/director/{vin}/manifest"]["post"].is_object());
    assert!(doc["components"]["schemas"]["Vehicle"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_admin_json_is_refused_without_change() {
    let (fleet, _car) = fleet_with_car(generous_limits()).await;
    let before = fleet.stored_state(VIN_B).await;
    // `ApiJson` turns every JSON rejection (syntax, types, missing fields) into a 400 whose
    // body names the rule, like every other error; and nothing is stored.
    for body in [
        "{",
        "{\"vin\": 5}",
        "[]",
        "{\"vin\": \"WVWZZZ1JZXW000002\"}",
    ] {
        for route in ["api/v1/vehicles", "api/v1/assignments"] {
            let response = fleet
                .admin
                .post(fleet.url(route))
                .bearer_auth(&fleet.token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(
                response.status().is_client_error(),
                "{route} {body}: {}",
                response.status()
            );
            let answer: serde_json::Value = response.json().await.unwrap();
            assert_eq!(answer["rule"], "bad-request", "{route} {body}: {answer}");
        }
    }
    assert_eq!(fleet.stored_state(VIN_B).await, before);
}

/// Control characters (a NUL above all, which PostgreSQL's text cannot hold) in what the admin
/// API takes to name an ECU or a vehicle are refused as a bad request, on either database:
/// never a database error, nothing stored.
async fn control_characters_in_admin_names_are_refused(database: Option<String>) {
    let (fleet, _car) = fleet_with_car_on(generous_limits(), database).await;
    let before = fleet.stored_state(VIN_B).await;
    let car = Car::new(&fleet, VIN_B);
    for (field, value) in [
        ("ecu_id", "TBOX\u{0}2"),
        ("ecu_id", "TBOX\n2"),
        ("hardware_id", "tbox-a\u{0}"),
    ] {
        let mut body = car.registration();
        body["ecus"][0][field] = json!(value);
        if field == "ecu_id" {
            body["primary_ecu"] = json!(value);
        }
        let (status, answer) = fleet.admin_post("api/v1/vehicles", &body).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{field} {value:?}: {answer}"
        );
        assert_eq!(answer["rule"], "bad-request", "{answer}");
    }
    let (status, answer) = fleet
        .admin_post(
            "api/v1/offline-reports",
            &json!({"vin": "WVWZZZ1JZXW00000\u{0}", "manifest": {"signed": {}, "signatures": []}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(fleet.stored_state(VIN_B).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_characters_in_admin_names_are_refused_on_sqlite() {
    control_characters_in_admin_names_are_refused(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_characters_in_admin_names_are_refused_on_postgres() {
    common::with_postgres(|url| control_characters_in_admin_names_are_refused(Some(url))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn image_files_cannot_escape_the_public_folder() {
    let fleet = Fleet::start(generous_limits(), None).await;
    // Secrets next to the public folder: the configuration and the online keys.
    assert!(fleet.layout.config_file().is_file());
    assert!(fleet
        .layout
        .online_keys()
        .join("image-timestamp.pem")
        .is_file());
    for path in [
        "image/..%2F..%2Frampart.toml",
        "image/metadata/..%2F..%2F..%2Fonline-keys%2Fimage-timestamp.pem",
        "image/targets/..%2F..%2F..%2Fpki%2Fadmin-token",
        "image/metadata%2F..%2F..%2F..%2Frampart.toml",
        "image/%2E%2E%2F%2E%2E%2Frampart.toml",
    ] {
        let response = fleet.anonymous.get(fleet.url(path)).send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(status.is_client_error(), "{path}: {status} {body}");
        assert!(
            !body.contains("PRIVATE KEY") && !body.contains("online_keys"),
            "{path} leaked {body}"
        );
    }
    let response = fleet
        .anonymous
        .get(fleet.url("image/metadata/1.root.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attacks_reported_by_ecus_become_security_events() {
    let (fleet, mut car) = fleet_with_car(generous_limits()).await;
    let mut reports = BTreeMap::new();
    for ecu in &mut car.ecus {
        ecu.report_counter += 1;
        let attacks = if ecu.id == "IVI-1" {
            "rollback: ivi/app-0.bin has release counter 0, below the installed 1"
        } else {
            ""
        };
        reports.insert(
            ecu.id.clone(),
            signed_report_with_attacks(
                &ecu.id,
                &ecu.installed,
                ecu.report_counter,
                &ecu.signer,
                attacks,
            ),
        );
    }
    car.manifest_counter += 1;
    let manifest = car.manifest_with(car.manifest_counter, reports, &car.ecus[0].signer);
    let (status, body) = car.post_manifest(&fleet, VIN_A, manifest).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rejected_reports"], json!([]));
    let events = fleet.events(&format!("vin={VIN_A}")).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.source, "vehicle");
    assert_eq!(event.rule, "rollback");
    assert_eq!(event.ecu_id.as_deref(), Some("IVI-1"));
    assert!(event.detail.contains("release counter 0"), "{event:?}");
    // The (honest) report itself was accepted.
    let stored = fleet.vehicle(VIN_A).await;
    let ivi = stored.ecus.iter().find(|e| e.ecu_id == "IVI-1").unwrap();
    assert_eq!(ivi.last_report_counter, Some(car.ecus[1].report_counter));
}

/// No field a vehicle signs may hold U+0000: PostgreSQL's text cannot store it and no
/// Uptane field needs it. A report holding one is refused alone (its ECU's state unchanged,
/// an event naming the rule, the rest of the manifest accepted); a manifest holding one in
/// its own fields is refused whole — on either database, never as a database error.
async fn nul_characters_in_signed_fields_are_refused(database: Option<String>) {
    let (fleet, mut car) = fleet_with_car_on(generous_limits(), database).await;
    let ivi_of = |v: Vehicle| v.ecus.into_iter().find(|e| e.ecu_id == "IVI-1").unwrap();
    let ivi_before = ivi_of(fleet.vehicle(VIN_A).await);

    let nul_image = InstalledImage {
        filename: "ivi/app\0.bin".into(),
        ..car.ecus[1].installed.clone()
    };
    let mut reports = BTreeMap::new();
    for ecu in &mut car.ecus {
        ecu.report_counter += 1;
        let installed = if ecu.id == "IVI-1" {
            &nul_image
        } else {
            &ecu.installed
        };
        reports.insert(
            ecu.id.clone(),
            signed_report(&ecu.id, installed, ecu.report_counter, &ecu.signer),
        );
    }
    car.manifest_counter += 1;
    let manifest = car.manifest_with(car.manifest_counter, reports, &car.ecus[0].signer);
    let (status, body) = car.post_manifest(&fleet, VIN_A, manifest).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["rejected_reports"],
        json!([{"ecu_id": "IVI-1", "rule": "manifest"}])
    );
    let events = fleet.events(&format!("vin={VIN_A}&rule=manifest")).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].ecu_id.as_deref(), Some("IVI-1"));
    assert!(events[0].detail.contains("U+0000"), "{events:?}");
    let after = fleet.vehicle(VIN_A).await;
    assert_eq!(after.last_manifest_counter, Some(car.manifest_counter));
    assert_eq!(
        ivi_of(after),
        ivi_before,
        "the refused report changed nothing"
    );

    // In the manifest's own fields (here its nonce), the whole manifest is refused.
    let mut reports = BTreeMap::new();
    for ecu in &mut car.ecus {
        ecu.report_counter += 1;
        reports.insert(
            ecu.id.clone(),
            signed_report(&ecu.id, &ecu.installed, ecu.report_counter, &ecu.signer),
        );
    }
    let mut manifest = car.unsigned_manifest(car.manifest_counter + 1, reports);
    manifest.nonce.push('\0');
    let body = sign_vehicle_manifest(&manifest, &car.ecus[0].signer).unwrap();
    let event = assert_refused(
        &fleet,
        VIN_A,
        car.post_manifest(&fleet, VIN_A, body),
        StatusCode::BAD_REQUEST,
        "manifest",
        "manifest",
        Some(VIN_A),
    )
    .await;
    assert!(event.detail.contains("U+0000"), "{event:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nul_characters_in_signed_fields_are_refused_on_sqlite() {
    nul_characters_in_signed_fields_are_refused(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nul_characters_in_signed_fields_are_refused_on_postgres() {
    common::with_postgres(|url| nul_characters_in_signed_fields_are_refused(Some(url))).await;
}

/// Registration takes VINs as ISO 3779 writes them (17 characters, digits and capital letters
/// but I, O and Q) and says so when one is not; nothing is registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_refuses_a_vin_that_is_not_iso_3779_and_says_the_format() {
    let (fleet, _car) = fleet_with_car(generous_limits()).await;
    for bad in [
        "bad",
        "WVWZZZ1JZXW00000",
        "WVWZZZ1JZXW0000001",
        "WVWZZZ1JZXW00000O",
        "wvwzzz1jzxw000003",
    ] {
        let mut registration = Car::new(&fleet, VIN_B).registration();
        registration["vin"] = json!(bad);
        let (status, body) = fleet.admin_post("api/v1/vehicles", &registration).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("17 characters") && error.contains("I, O and Q"),
            "{bad}: {body}"
        );
    }
    let (_, vins) = fleet.admin_get("api/v1/vehicles").await;
    assert_eq!(vins, json!([VIN_A]));
}

/// A vehicle taken out of the fleet: out of the list, kept for audit, its manifests and
/// metadata requests refused (403, `vehicle-removed`, a security event), no new assignment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_vehicle_is_refused_by_the_director_and_kept_for_audit() {
    let (fleet, mut car) = fleet_with_car(generous_limits()).await;
    let removal = fleet
        .admin
        .delete(fleet.url(&format!("api/v1/vehicles/{VIN_A}?reason=scrapped")))
        .bearer_auth(&fleet.token)
        .send()
        .await
        .unwrap();
    assert_eq!(removal.status(), StatusCode::OK);
    let (_, vins) = fleet.admin_get("api/v1/vehicles").await;
    assert_eq!(vins, json!([]));
    let kept = fleet.vehicle(VIN_A).await;
    assert!(kept.removed_at.is_some());
    assert_eq!(kept.removed_reason.as_deref(), Some("scrapped"));

    let manifest = car.honest_manifest();
    assert_refused(
        &fleet,
        VIN_A,
        car.post_manifest(&fleet, VIN_A, manifest),
        StatusCode::FORBIDDEN,
        "vehicle-removed",
        "vehicle-removed",
        Some(VIN_A),
    )
    .await;
    let metadata = car
        .get(&fleet, &format!("director/{VIN_A}/metadata/timestamp.json"))
        .await;
    assert_eq!(metadata.status(), StatusCode::FORBIDDEN);

    let (status, body) = fleet
        .admin_post(
            "api/v1/assignments",
            &json!({"target": "tbox/fw-1.bin", "vins": [VIN_A], "hardware_id": "tbox-a"}),
        )
        .await;
    assert!(
        status == StatusCode::CONFLICT || status == StatusCode::NOT_FOUND,
        "{status} {body}"
    );
}

/// Attributes and tags (what campaigns will choose vehicles by) come with the registration,
/// are replaced through `PUT …/labels`, and are checked: nothing odd reaches a filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_are_registered_replaced_and_checked() {
    let (fleet, _car) = fleet_with_car(generous_limits()).await;
    let mut registration = Car::new(&fleet, VIN_B).registration();
    registration["attributes"] = json!({"model": "id4", "region": "eu"});
    registration["tags"] = json!(["fleet-a"]);
    let (status, body) = fleet.admin_post("api/v1/vehicles", &registration).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let stored = fleet.vehicle(VIN_B).await;
    assert_eq!(stored.attributes["model"], "id4");
    assert!(stored.tags.contains("fleet-a"));

    let put = |body: Value| {
        let request = fleet
            .admin
            .put(fleet.url(&format!("api/v1/vehicles/{VIN_B}/labels")))
            .bearer_auth(&fleet.token)
            .json(&body);
        async move { json_of(request.send().await.unwrap()).await }
    };
    let (status, body) = put(json!({"attributes": {"model": "id7"}, "tags": []})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["attributes"], json!({"model": "id7"}));
    for bad in [
        json!({"attributes": {"Model": "x"}}),
        json!({"attributes": {"model": "a\nb"}}),
        json!({"tags": ["has space"]}),
    ] {
        let (status, body) = put(bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    assert_eq!(fleet.vehicle(VIN_B).await.attributes["model"], "id7");
}

/// The answer to a manifest names the vehicle's current director timestamp: the `ETag` a
/// `GET …/timestamp.json` would answer at that moment — before and after new instructions,
/// which the manifest's own answer already names (the vehicle must not skip a changed copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_to_a_manifest_names_the_current_director_timestamp() {
    let (fleet, mut car) = fleet_with_car(generous_limits()).await;
    let path = format!("director/{VIN_A}/metadata/timestamp.json");
    let http = car.http.clone();
    let current = || async {
        let r = http.get(fleet.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let tag = r.headers()["etag"].to_str().unwrap().to_owned();
        assert_eq!(
            tag,
            rampart_core::hash::entity_tag(&r.bytes().await.unwrap())
        );
        tag
    };
    let manifest = car.honest_manifest();
    let (status, body) = car.post_manifest(&fleet, VIN_A, manifest).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let named = body["director_timestamp_tag"].as_str().unwrap().to_owned();
    assert_eq!(named, current().await);

    let image = content("tbox firmware 8", 4_000);
    let release = fleet.publish(&image, "tbox/fw-8.bin", "tbox-hw", 8);
    ops::publish(&fleet.layout, &release, Utc::now())
        .await
        .unwrap();
    let (status, body) = fleet.assign_to_ecu("tbox/fw-8.bin", "TBOX-1").await;
    assert!(status.is_success(), "{body}");
    let manifest = car.honest_manifest();
    let (status, body) = car.post_manifest(&fleet, VIN_A, manifest).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let renamed = body["director_timestamp_tag"].as_str().unwrap().to_owned();
    assert_ne!(renamed, named, "new instructions, a new timestamp");
    assert_eq!(renamed, current().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn director_metadata_is_answered_304_for_the_copy_the_vehicle_holds() {
    let (fleet, car) = fleet_with_car(generous_limits()).await;
    let path = format!("director/{VIN_A}/metadata/timestamp.json");
    let r = car.get(&fleet, &path).await;
    assert_eq!(r.status(), StatusCode::OK);
    let tag = r.headers()["etag"].to_str().unwrap().to_owned();
    let held = r.bytes().await.unwrap();
    // The tag is what the vehicle can compute from its copy.
    assert_eq!(tag, rampart_core::hash::entity_tag(&held));
    let conditional = |value: String| {
        let (http, url) = (car.http.clone(), fleet.url(&path));
        async move {
            let r = http
                .get(url)
                .header("if-none-match", value)
                .send()
                .await
                .unwrap();
            let (status, etag) = (r.status(), r.headers().get("etag").cloned());
            (status, etag, r.bytes().await.unwrap())
        }
    };
    for named in [
        tag.clone(),
        format!("W/{tag}"),
        format!("\"other\", {tag}"),
        "*".into(),
    ] {
        let (status, etag, body) = conditional(named.clone()).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{named}");
        assert_eq!(etag.unwrap().to_str().unwrap(), tag);
        assert!(body.is_empty(), "a 304 has no body");
    }
    // Another copy named: the document, whole.
    let (status, _, body) = conditional("\"0000\"".into()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, held);
    // New instructions: the held copy is no longer current.
    let image = content("tbox firmware 7", 4_000);
    let release = fleet.publish(&image, "tbox/fw-7.bin", "tbox-hw", 7);
    ops::publish(&fleet.layout, &release, Utc::now())
        .await
        .unwrap();
    let (status, body) = fleet.assign_to_ecu("tbox/fw-7.bin", "TBOX-1").await;
    assert!(status.is_success(), "{body}");
    let (status, etag, body) = conditional(tag.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(body, held);
    assert_eq!(
        etag.unwrap().to_str().unwrap(),
        rampart_core::hash::entity_tag(&body)
    );
    // Counted apart on /metrics: four 304s so far.
    let text = fleet
        .anonymous
        .get(fleet.url("metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("rampart_director_metadata_not_modified_total 4\n"),
        "{text}"
    );
}

//! The production layout under a check-in storm: three `rampart serve` processes sharing one
//! PostgreSQL database behind nginx (TCP load balancing with TLS passed through, so every
//! instance authenticates vehicles by their own client certificates, as in
//! `docs/deployment.md`). Simulated vehicles with real keys check in over and over, each
//! request on a new connection (so consecutive requests of one vehicle land on different
//! instances), while updates are assigned through whichever instance nginx picks, images
//! are published beside the running servers, and one instance is killed (SIGKILL) halfway.
//!
//! What must hold, checked against what the vehicles saw and what PostgreSQL holds:
//! - no director metadata version served twice with different content, and no vehicle
//!   served an older version after a newer one;
//! - no lost report: every manifest answered 200 is stored, and the director's inventory
//!   ends with what the vehicles last reported (every assignment installed);
//! - no manifest counter accepted twice: the same manifest sent twice at once, on two
//!   connections, is accepted once and refused once as a replay; no counter is stored twice.
//!
//! Needs nginx with its stream module (`scripts/test` installs them; without them the test
//! says so and passes, unless `RAMPART_REQUIRE_NGINX=1`) and PostgreSQL
//! (`RAMPART_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/postgres`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use rampart_lab::sim::SimVehicle;
use rampart_server::layout::Layout;
use rampart_server::ops::{self, PublishRequest};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const INSTANCES: usize = 3;
const VEHICLES: usize = 24;
const CYCLES: usize = 8;
/// How many times at once each car asks for each director document.
const CONCURRENT_FETCHES: usize = 3;
/// The cycle in which each vehicle sends one manifest twice at once.
const REPLAY_CYCLE: usize = 2;
const NGINX: &str = "/usr/sbin/nginx";
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rampart"))
}

// ---------------------------------------------------------------------------------------
// PostgreSQL: a database of this test's own, dropped at the end.

struct Database {
    admin: String,
    name: String,
    url: String,
}

fn psql(url: &str, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .expect("psql (PostgreSQL's client) runs");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl Database {
    fn create() -> Database {
        let admin = std::env::var("RAMPART_TEST_POSTGRES")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("rampart_multi_{}", std::process::id());
        let (base, query) = admin.split_once('?').unwrap_or((&admin, ""));
        let (server, _) = base.rsplit_once('/').expect("a database URL");
        let url = if query.is_empty() {
            format!("{server}/{name}")
        } else {
            format!("{server}/{name}?{query}")
        };
        psql(&admin, &format!("DROP DATABASE IF EXISTS {name}"));
        psql(&admin, &format!("CREATE DATABASE {name}"));
        Database { admin, name, url }
    }

    fn query(&self, sql: &str) -> Vec<Vec<String>> {
        psql(&self.url, sql)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('|').map(str::to_owned).collect())
            .collect()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args(["-X", "-q", "-d", &self.admin, "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

// ---------------------------------------------------------------------------------------
// The servers and the load balancer.

async fn start_instance(data: &Path, database: &str) -> (Child, String) {
    let mut child = Command::new(bin())
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--database", database, "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("rampart serving on ") {
                return url.trim().trim_end_matches('/').to_owned();
            }
        }
        panic!("rampart serve exited before serving");
    })
    .await
    .expect("rampart serve starts within 60 s");
    // Keep reading its output so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

struct Nginx {
    child: std::process::Child,
    addr: String,
    conf: PathBuf,
    dir: PathBuf,
}

impl Nginx {
    fn start(dir: &Path, upstreams: &[String]) -> Nginx {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let servers: String = upstreams
            .iter()
            .map(|u| {
                format!(
                    "    server {} max_fails=1 fail_timeout=30s;\n",
                    u.trim_start_matches("https://")
                )
            })
            .collect();
        let conf = format!(
            "load_module {STREAM_MODULE};\n\
             daemon off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             stream {{\n  upstream rampart {{\n{servers}  }}\n\
               server {{\n    listen {addr};\n    proxy_pass rampart;\n    proxy_connect_timeout 2s;\n  }}\n}}\n",
            dir = dir.display()
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let mut child = std::process::Command::new(NGINX)
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx starts");
        for _ in 0..100 {
            if std::net::TcpStream::connect(&addr).is_ok() {
                return Nginx {
                    child,
                    addr,
                    conf: path,
                    dir: dir.to_owned(),
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("nginx did not listen on {addr}");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master stops its workers (a SIGKILL would leave them running).
        let _ = std::process::Command::new(NGINX)
            .arg("-c")
            .arg(&self.conf)
            .arg("-p")
            .arg(&self.dir)
            .args(["-s", "stop"])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// What the vehicles saw.

#[derive(Default)]
struct Seen {
    /// (VIN, role, version) → SHA-256 of every document served under it.
    documents: BTreeMap<(String, String, u64), BTreeSet<String>>,
    /// Manifests answered 200: (VIN, counter).
    accepted: BTreeSet<(String, u64)>,
    /// Manifests whose answer was lost with a killed instance: stored or not, never twice.
    unknown: BTreeSet<(String, u64)>,
    /// Per VIN, the statuses of the manifest sent twice at once.
    replay_race: BTreeMap<String, Vec<u16>>,
}

fn sha256(bytes: &[u8]) -> String {
    rampart_core::hash::compute_hashes(bytes)["sha256"].clone()
}

/// Notes a director document served to `vin`; returns it parsed.
fn record(seen: &Mutex<Seen>, vin: &str, role: &str, bytes: &[u8]) -> Value {
    let doc: Value = serde_json::from_slice(bytes).unwrap();
    let version = doc["signed"]["version"].as_u64().unwrap();
    seen.lock()
        .unwrap()
        .documents
        .entry((vin.to_owned(), role.to_owned(), version))
        .or_default()
        .insert(sha256(bytes));
    doc
}

struct Car {
    sim: SimVehicle,
    http: reqwest::Client,
    /// More clients of the same car (each its own connection): documents asked for several
    /// times at once, and the duplicate of the replay race.
    others: Vec<reqwest::Client>,
    /// Per role, the newest version served to this car.
    newest: BTreeMap<String, u64>,
}

fn client(ca: &[u8], identity: Option<&[u8]>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca).unwrap())
        // A new connection for every request: nginx spreads them over the instances.
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30));
    if let Some(id) = identity {
        b = b.identity(reqwest::Identity::from_pem(id).unwrap());
    }
    b.build().unwrap()
}

/// A GET through the load balancer, retried while an instance is being killed under it.
async fn get(http: &reqwest::Client, url: &str) -> (u16, Vec<u8>) {
    let mut last = None;
    for _ in 0..10 {
        match http.get(url).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                return (
                    status,
                    r.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
                );
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("GET {url}: {last:?}");
}

impl Car {
    fn saw(&mut self, seen: &Mutex<Seen>, role: &str, bytes: &[u8]) -> Value {
        let doc = record(seen, &self.sim.vin, role, bytes);
        let version = doc["signed"]["version"].as_u64().unwrap();
        let newest = self.newest.entry(role.to_owned()).or_default();
        assert!(
            version >= *newest,
            "{}: served {role} version {version} after version {newest}",
            self.sim.vin
        );
        *newest = version;
        doc
    }

    /// Fetches the director's timestamp, snapshot and targets as a primary does, and
    /// "installs" what the targets instruct. False if the documents moved in between.
    ///
    /// Every document is asked for several times at once, on several connections (a primary retrying
    /// while its first request is still in flight): each request makes its instance
    /// re-sign the vehicle's documents if the instructions changed, so two instances sign
    /// for one vehicle at the same moment.
    async fn refresh(&mut self, base: &str, seen: &Mutex<Seen>) -> bool {
        let dir = format!("{base}/director/{}/metadata", self.sim.vin);
        let Some(ts) = self
            .fetch(seen, "timestamp", &format!("{dir}/timestamp.json"))
            .await
        else {
            panic!("{}: no timestamp", self.sim.vin);
        };
        let v = ts["signed"]["meta"]["snapshot.json"]["version"]
            .as_u64()
            .unwrap();
        // A 404 below: re-signed since the timestamp; the next cycle sees it.
        let Some(snapshot) = self
            .fetch(seen, "snapshot", &format!("{dir}/{v}.snapshot.json"))
            .await
        else {
            return false;
        };
        let v = snapshot["signed"]["meta"]["targets.json"]["version"]
            .as_u64()
            .unwrap();
        let url = format!("{dir}/{v}.targets.json");
        let Some(targets) = self.fetch(seen, "targets", &url).await else {
            return false;
        };
        self.sim
            .install_instructed(targets.to_string().as_bytes())
            .unwrap();
        true
    }

    /// One director document, fetched several times at once; `None` on 404.
    async fn fetch(&mut self, seen: &Mutex<Seen>, role: &str, url: &str) -> Option<Value> {
        let mut others = tokio::task::JoinSet::new();
        for c in &self.others {
            let (c, url) = (c.clone(), url.to_owned());
            others.spawn(async move { get(&c, &url).await });
        }
        let (status, bytes) = get(&self.http, url).await;
        while let Some(other) = others.join_next().await {
            let (other_status, other_bytes) = other.unwrap();
            if other_status == 200 {
                record(seen, &self.sim.vin, role, &other_bytes);
            }
        }
        match status {
            200 => Some(self.saw(seen, role, &bytes)),
            404 => None,
            _ => panic!("{url}: {status} {}", String::from_utf8_lossy(&bytes)),
        }
    }

    /// Sends a new manifest; a send whose answer is lost with its instance is sent again
    /// (the same bytes), as a primary does.
    async fn check_in(&mut self, base: &str, seen: &Mutex<Seen>) {
        let manifest = self.sim.next_manifest().unwrap();
        let key = (self.sim.vin.clone(), self.sim.counter);
        let url = format!("{base}/director/{}/manifest", self.sim.vin);
        let mut lost = false;
        for _ in 0..10 {
            match self.http.post(&url).body(manifest.clone()).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let text = r.text().await.unwrap_or_default();
                    let mut seen = seen.lock().unwrap();
                    match status {
                        200 => {
                            seen.accepted.insert(key);
                        }
                        409 if lost => {
                            // The killed instance had stored it.
                            seen.unknown.insert(key);
                        }
                        _ => panic!("{}: manifest {}: {status} {text}", key.0, key.1),
                    }
                    return;
                }
                Err(_) => lost = true,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{}: manifest {} never answered", key.0, key.1);
    }

    /// The same manifest twice at once, on two connections.
    async fn replay_race(&mut self, base: &str, seen: &Mutex<Seen>) {
        let manifest = self.sim.next_manifest().unwrap();
        let url = format!("{base}/director/{}/manifest", self.sim.vin);
        let (a, b) = tokio::join!(
            self.http.post(&url).body(manifest.clone()).send(),
            self.others[0].post(&url).body(manifest).send()
        );
        let statuses = vec![a.unwrap().status().as_u16(), b.unwrap().status().as_u16()];
        let mut seen = seen.lock().unwrap();
        if statuses.contains(&200) {
            seen.accepted
                .insert((self.sim.vin.clone(), self.sim.counter));
        }
        seen.replay_race.insert(self.sim.vin.clone(), statuses);
    }
}

fn publish(layout: &Layout, dir: &Path, name: &str, hw: &str, counter: u64) {
    let file = dir.join(name.replace('/', "-"));
    std::fs::write(&file, format!("{name}: {}", "x".repeat(1000))).unwrap();
    let req = PublishRequest {
        name: Some(name.into()),
        release_counter: Some(counter),
        ..PublishRequest::new(file, hw)
    };
    let rt = tokio::runtime::Handle::current();
    let layout = layout.clone();
    tokio::task::block_in_place(|| rt.block_on(ops::publish(&layout, &req, Utc::now()))).unwrap();
}

async fn admin(http: &reqwest::Client, token: &str, base: &str, path: &str, body: &Value) -> Value {
    for _ in 0..10 {
        let Ok(r) = http
            .post(format!("{base}/api/v1/{path}"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "POST {path}: {status} {text}");
        return serde_json::from_str(&text).unwrap_or(Value::Null);
    }
    panic!("POST {path}: no instance answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_behind_nginx_stay_correct_under_a_checkin_storm() {
    if !Path::new(NGINX).exists() || !Path::new(STREAM_MODULE).exists() {
        assert!(
            std::env::var("RAMPART_REQUIRE_NGINX").ok().as_deref() != Some("1"),
            "nginx or its stream module is missing ({NGINX}, {STREAM_MODULE}): \
             scripts/apt-need nginx:nginx {STREAM_MODULE}:libnginx-mod-stream"
        );
        eprintln!("skipped: nginx with its stream module is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create();
    let data = dir.path().join("data");
    let status = std::process::Command::new(bin())
        .args(["repo", "init", "--data-dir"])
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let layout = Layout::new(&data);
    // Every client arrives from nginx's address.
    let mut config = rampart_server::config::Config::load(&layout).unwrap();
    config.limits.requests_per_second = 100_000.0;
    config.limits.burst = 100_000.0;
    config.save(&layout).unwrap();

    let mut instances = Vec::new();
    for _ in 0..INSTANCES {
        instances.push(start_instance(&data, &db.url).await);
    }
    let urls: Vec<String> = instances.iter().map(|(_, u)| u.clone()).collect();
    let nginx = Nginx::start(dir.path(), &urls);
    let base = format!("https://{}", nginx.addr);
    let ca = std::fs::read(layout.pki().join("ca.pem")).unwrap();
    let token = rampart_server::pki::load_admin_token(&layout.pki()).unwrap();
    let admin_http = client(&ca, None);

    // The fleet, registered through the load balancer.
    let mut cars = Vec::new();
    for i in 0..VEHICLES {
        let vin = format!("WMULTX{i:011}");
        let sim = SimVehicle::new(&vin, &[("TBOX", "tbox-hw"), ("IVI", "ivi-hw")]).unwrap();
        admin(&admin_http, &token, &base, "vehicles", &sim.registration()).await;
        let cert = rampart_server::pki::issue_vehicle_cert(&layout.pki(), &vin, 30).unwrap();
        let identity = format!("{}{}", cert.cert_pem, cert.key_pem);
        cars.push(Car {
            sim,
            http: client(&ca, Some(identity.as_bytes())),
            others: (0..CONCURRENT_FETCHES - 1)
                .map(|_| client(&ca, Some(identity.as_bytes())))
                .collect(),
            newest: BTreeMap::new(),
        });
    }
    let vins: Vec<String> = cars.iter().map(|c| c.sim.vin.clone()).collect();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    publish(&layout, &images, "tbox/fw-1.bin", "tbox-hw", 1);
    publish(&layout, &images, "ivi/app-1.bin", "ivi-hw", 1);

    // The storm: every car cycles; meanwhile updates are assigned (the first ones while the
    // cars make their first check-ins), more images are published beside the running
    // servers, and one instance is killed halfway.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for mut car in cars {
        let (seen, done, base) = (seen.clone(), done.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            for cycle in 0..CYCLES {
                car.refresh(&base, &seen).await;
                if cycle == REPLAY_CYCLE {
                    car.replay_race(&base, &seen).await;
                } else {
                    car.check_in(&base, &seen).await;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            car
        }));
    }
    for vin in &vins {
        for target in ["tbox/fw-1.bin", "ivi/app-1.bin"] {
            let hw = if target.starts_with("tbox") {
                "tbox-hw"
            } else {
                "ivi-hw"
            };
            admin(
                &admin_http,
                &token,
                &base,
                "assignments",
                &json!({"target": target, "vins": [vin], "hardware_id": hw}),
            )
            .await;
        }
    }
    publish(&layout, &images, "tbox/fw-2.bin", "tbox-hw", 2);
    publish(&layout, &images, "ivi/app-2.bin", "ivi-hw", 2);
    while done.load(Ordering::Relaxed) < VEHICLES * CYCLES / 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (target, hw) in [("tbox/fw-2.bin", "tbox-hw"), ("ivi/app-2.bin", "ivi-hw")] {
        admin(
            &admin_http,
            &token,
            &base,
            "assignments",
            &json!({"target": target, "vins": vins, "hardware_id": hw}),
        )
        .await;
    }
    while done.load(Ordering::Relaxed) < VEHICLES * CYCLES / 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut killed, killed_url) = instances.pop().unwrap();
    killed.start_kill().unwrap();
    killed.wait().await.unwrap();
    let mut cars = Vec::new();
    for t in tasks {
        cars.push(t.await.unwrap());
    }

    // Settle: a few more cycles until every car runs what it was last told.
    for car in &mut cars {
        for _ in 0..6 {
            car.refresh(&base, &seen).await;
            car.check_in(&base, &seen).await;
            let installed: BTreeSet<&str> = car
                .sim
                .ecus
                .iter()
                .map(|e| e.installed.filename.as_str())
                .collect();
            if installed == BTreeSet::from(["tbox/fw-2.bin", "ivi/app-2.bin"]) {
                break;
            }
        }
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    // 1. No version served twice with different content.
    let forked: Vec<_> = seen.documents.iter().filter(|(_, d)| d.len() > 1).collect();
    assert!(
        forked.is_empty(),
        "versions served with different content: {forked:?}"
    );
    let resigned = seen
        .documents
        .keys()
        .filter(|(_, role, v)| role == "targets" && *v > 1)
        .count();
    assert!(
        resigned >= VEHICLES,
        "the storm re-signed too little to show anything ({resigned})"
    );

    // 2. No lost report: every manifest answered 200 is stored, once; nothing else is.
    let stored: Vec<(String, u64)> = db
        .query("SELECT vin, counter FROM manifests ORDER BY vin, counter")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().unwrap()))
        .collect();
    let stored_set: BTreeSet<(String, u64)> = stored.iter().cloned().collect();
    assert_eq!(
        stored.len(),
        stored_set.len(),
        "a manifest counter was stored twice"
    );
    let missing: Vec<_> = seen.accepted.difference(&stored_set).collect();
    assert!(missing.is_empty(), "accepted but not stored: {missing:?}");
    let extra: Vec<_> = stored_set
        .difference(&seen.accepted)
        .filter(|k| !seen.unknown.contains(*k))
        .collect();
    assert!(extra.is_empty(), "stored but never accepted: {extra:?}");
    // The inventory ends with what every car last reported; nothing is left pending.
    for car in &cars {
        let rows = db.query(&format!(
            "SELECT ecu_id, installed_target FROM ecus WHERE vin = '{}' ORDER BY ecu_id",
            car.sim.vin
        ));
        let director: BTreeMap<String, String> = rows
            .into_iter()
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect();
        let reported: BTreeMap<String, String> = car
            .sim
            .ecus
            .iter()
            .map(|e| (e.id.clone(), e.installed.filename.clone()))
            .collect();
        assert_eq!(director, reported, "{}", car.sim.vin);
        let last = db.query(&format!(
            "SELECT last_manifest_counter FROM vehicles WHERE vin = '{}'",
            car.sim.vin
        ));
        assert_eq!(last[0][0], car.sim.counter.to_string(), "{}", car.sim.vin);
    }
    let pending = db.query("SELECT vin, ecu_id, target FROM assignments WHERE status = 'pending'");
    assert!(
        pending.is_empty(),
        "instructions never delivered: {pending:?}"
    );
    // The second release installed everywhere; the first installed or superseded by it.
    let outcomes = db.query(
        "SELECT target, status, count(*) FROM assignments GROUP BY target, status ORDER BY 1, 2",
    );
    for row in &outcomes {
        let ok = match row[0].as_str() {
            "tbox/fw-2.bin" | "ivi/app-2.bin" => {
                row[1] == "installed" && row[2] == VEHICLES.to_string()
            }
            _ => row[1] == "installed" || row[1] == "superseded",
        };
        assert!(ok, "assignments: {outcomes:?}");
    }

    // 3. The same manifest twice at once: accepted once, refused once as a replay.
    assert_eq!(seen.replay_race.len(), VEHICLES);
    for (vin, statuses) in &seen.replay_race {
        let mut s = statuses.clone();
        s.sort_unstable();
        assert_eq!(s, vec![200, 409], "{vin}: {statuses:?}");
    }
    let replays = db.query("SELECT count(*) FROM security_events WHERE rule = 'replay'");
    assert!(
        replays[0][0].parse::<usize>().unwrap() >= 1,
        "replays were not recorded"
    );

    // The instances still running both took part (each accepted manifests).
    let metrics_http = client(&ca, None);
    for (_, url) in &instances {
        let accepted =
            rampart_lab::read_metric(&metrics_http, url, "rampart_manifests_accepted_total")
                .await
                .unwrap();
        assert!(accepted > 0, "{url} accepted no manifest");
    }
    eprintln!(
        "{} manifests accepted ({} answers lost with {killed_url}), {} director documents served, \
         {} targets versions signed",
        seen.accepted.len(),
        seen.unknown.len(),
        seen.documents.len(),
        resigned
    );
    drop(nginx);
}

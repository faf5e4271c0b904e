//! Measure 3: director check-ins. A check-in is what a vehicle does every cycle against the
//! director: `POST /director/VIN/manifest` (a signed vehicle manifest with three signed ECU
//! reports), then `GET /director/VIN/metadata/timestamp.json` unless the answer named the
//! timestamp the vehicle holds as current (`director_timestamp_tag`), as a primary does since
//! the eleventh session; `--timestamp-get always` asks every time, as it did before. Its
//! latency is from the first byte of the POST to the last byte of the answer. The GET names
//! the timestamp the vehicle holds (`If-None-Match` with the ETag of its last answer): an
//! unchanged timestamp is answered 304 without a body.
//!
//! `checkin --mode rampart` registers `--vehicles` vehicles of three ECUs through the admin
//! API, signs every manifest the run can use beforehand (increasing counters, fresh nonces:
//! the load generator does no cryptography while it measures), checks every vehicle in once
//! (the director signs its metadata), then drives `--connections` keep-alive connections in a
//! closed loop: `--warmup` seconds unrecorded, `--duration` seconds recorded. Each vehicle
//! belongs to one connection, so its counters arrive in order.
//!
//! `--tls resume|full` (rampart mode): over mutual TLS, each vehicle with a client
//! certificate of its own issued from the server's PKI, opening a new connection for every
//! check-in (a vehicle's cycle) and closing it after; `resume` keeps each vehicle's TLS
//! session (its own cache) so that reconnections resume it, `full` makes every handshake a
//! full one (certificate chain and signatures). Plain HTTP keeps connections alive across
//! vehicles instead.
//!
//! `checkin --mode static` does the same requests, with a body of the same size, against a
//! static server (nginx) answering files of the same sizes: the ceiling of this machine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rampart_lab::sim::SimVehicle;
use serde_json::{json, Value};

use crate::http::Conn;
use crate::{quantile, Args};

const ECUS: [(&str, &str); 3] = [("TBOX", "tbox-a"), ("IVI", "ivi-x"), ("BCM", "bcm-1")];

struct Vehicle {
    vin: String,
    /// Pre-signed manifests, in counter order.
    manifests: Vec<Vec<u8>>,
}

/// How the load generator reaches the server: plain TCP, or mutual TLS with a certificate
/// per vehicle.
#[derive(Clone)]
struct Net {
    addr: String,
    tls: Option<TlsNet>,
}

#[derive(Clone)]
struct TlsNet {
    /// For the admin API: the fleet CA, no client certificate.
    admin: Arc<rustls::ClientConfig>,
    /// Each vehicle's client (its certificate and its own session cache).
    vehicles: Arc<BTreeMap<String, Arc<rustls::ClientConfig>>>,
}

impl Net {
    fn admin(&self) -> Conn {
        match &self.tls {
            None => Conn::new(&self.addr),
            Some(t) => Conn::tls(&self.addr, t.admin.clone()),
        }
    }

    /// A connection as `vin` (plain: any connection will do).
    fn vehicle(&self, vin: &str) -> anyhow::Result<Conn> {
        match &self.tls {
            None => Ok(Conn::new(&self.addr)),
            Some(t) => Ok(Conn::tls(
                &self.addr,
                t.vehicles.get(vin).context("no certificate")?.clone(),
            )),
        }
    }
}

/// The TLS clients of `vins` (certificates issued from `pki`).
fn tls_net(
    addr: &str,
    pki: &std::path::Path,
    vins: &[String],
    resume: bool,
) -> anyhow::Result<Net> {
    let ca = std::fs::read(pki.join("ca.pem"))?;
    let mut vehicles = BTreeMap::new();
    for vin in vins {
        let cert = rampart_server::pki::issue_vehicle_cert(pki, vin, 30)?;
        vehicles.insert(
            vin.clone(),
            crate::http::tls_config(&ca, Some((&cert.cert_pem, &cert.key_pem)), resume)?,
        );
    }
    Ok(Net {
        addr: addr.to_owned(),
        tls: Some(TlsNet {
            admin: crate::http::tls_config(&ca, None, true)?,
            vehicles: Arc::new(vehicles),
        }),
    })
}

struct Plan {
    vehicles: Vec<Vehicle>,
    /// Director-side manifest verification time, in microseconds (rampart mode).
    verify_us: Option<f64>,
}

/// A VIN for vehicle `i` of this run (17 characters; the process ID keeps runs against one
/// server apart).
fn vin(i: usize) -> String {
    format!("WB{:05}{i:010}", std::process::id() % 100_000)
}

/// Vehicle `i`: a T-BOX and an IVI verifying fully, a body controller partially.
fn make_vehicle(i: usize) -> anyhow::Result<SimVehicle> {
    let mut v = SimVehicle::new(&vin(i), &ECUS)?;
    if let Some(bcm) = v.ecus.get_mut(2) {
        bcm.verification = "partial";
    }
    Ok(v)
}

/// Manifests `1..=count` of one vehicle: each ECU reports its factory image.
fn sign_manifests(v: &mut SimVehicle, count: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    (0..count).map(|_| v.next_manifest()).collect()
}

/// Registers the vehicles and pre-signs their manifests (two threads).
async fn prepare_rampart(
    net: &Net,
    token: &str,
    vehicles: usize,
    per_vehicle: usize,
) -> anyhow::Result<Plan> {
    let started = Instant::now();
    let mut keys: Vec<SimVehicle> = (0..vehicles)
        .map(make_vehicle)
        .collect::<anyhow::Result<_>>()?;
    let mut conn = net.admin();
    let auth = format!("Authorization: Bearer {token}\r\n");
    for k in &keys {
        let body = serde_json::to_vec(&k.registration())?;
        let r = conn
            .request("POST", "/api/v1/vehicles", &auth, &body)
            .await?;
        if r.status != 201 {
            bail!(
                "registering {}: {} {}",
                k.vin,
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
    }
    eprintln!(
        "checkin: registered {vehicles} vehicles in {:.1}s; signing {} manifests",
        started.elapsed().as_secs_f64(),
        vehicles * per_vehicle
    );
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = vehicles.div_ceil(threads).max(1);
    let signed: Vec<anyhow::Result<Vec<Vehicle>>> = std::thread::scope(|s| {
        let handles: Vec<_> = keys
            .chunks_mut(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter_mut()
                        .map(|k| {
                            Ok(Vehicle {
                                vin: k.vin.clone(),
                                manifests: sign_manifests(k, per_vehicle)?,
                            })
                        })
                        .collect::<anyhow::Result<Vec<Vehicle>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("signing thread panicked"))?
            })
            .collect()
    });
    let mut out = Vec::new();
    for part in signed {
        out.extend(part?);
    }
    eprintln!("checkin: signed in {:.1}s", started.elapsed().as_secs_f64());
    let verify_us = match (keys.first(), out.first().and_then(|v| v.manifests.first())) {
        (Some(k), Some(m)) => Some(crate::manifest::verify_us(k, m, 2000)?),
        _ => None,
    };
    Ok(Plan {
        vehicles: out,
        verify_us,
    })
}

#[derive(Default)]
struct Stats {
    latencies: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
    /// TLS handshakes while recording, and how many resumed a session.
    handshakes: u64,
    resumed: u64,
    /// Timestamp requests made while recording (the rest were named current).
    timestamp_gets: u64,
}

/// CPU seconds (user + system, all threads) a process has used so far, from
/// `/proc/PID/stat` (clock ticks of 1/100 s, the Linux default).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// Total CPU seconds of a set of processes (those that vanished count as 0).
pub(crate) fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p)).sum()
}

/// PIDs of the PostgreSQL backends connected to database `db` (via `psql`).
pub(crate) fn postgres_backends(db: &str) -> Vec<u32> {
    let query = format!("SELECT pid FROM pg_stat_activity WHERE datname = '{db}'");
    std::process::Command::new("psql")
        .args([
            "-X",
            "-tA",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
        ])
        .arg(query)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

struct Shared {
    recording: AtomicBool,
    stop: AtomicBool,
    completed: AtomicU64,
}

/// When a check-in asks for the director's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimestampGet {
    /// Unless the manifest's answer named the copy held as current
    /// (`director_timestamp_tag`), as the primary does since the eleventh session.
    UnlessNamed,
    /// Every check-in (`If-None-Match` with the copy held), as the primary did before.
    Always,
}

impl TimestampGet {
    /// `--timestamp-get unless-named|always`.
    pub(crate) fn from_args(args: &Args) -> anyhow::Result<Self> {
        match args.get("timestamp-get").unwrap_or("unless-named") {
            "unless-named" => Ok(TimestampGet::UnlessNamed),
            "always" => Ok(TimestampGet::Always),
            other => bail!("--timestamp-get {other:?}: unless-named or always"),
        }
    }
}

/// One check-in; returns the POST body and the GET's (`None`: not asked, the answer named
/// the copy held). The GET names the timestamp the vehicle holds (`held`: the `ETag` of its
/// last answer, updated here), as a primary does: an unchanged timestamp comes back as 304
/// without a body.
pub(crate) async fn check_in(
    conn: &mut Conn,
    vin: &str,
    manifest: &[u8],
    held: &mut Option<String>,
    get: TimestampGet,
) -> anyhow::Result<(Vec<u8>, Option<Vec<u8>>)> {
    let post = conn
        .request("POST", &format!("/director/{vin}/manifest"), "", manifest)
        .await?;
    if post.status != 200 {
        bail!(
            "POST manifest of {vin}: {} {}",
            post.status,
            String::from_utf8_lossy(&post.body)
        );
    }
    if get == TimestampGet::UnlessNamed && held.is_some() {
        let answer: Value = serde_json::from_slice(&post.body)?;
        let named = answer.get("director_timestamp_tag").and_then(Value::as_str);
        if named.is_some() && named == held.as_deref() {
            return Ok((post.body, None));
        }
    }
    let condition = held
        .as_ref()
        .map(|tag| format!("If-None-Match: {tag}\r\n"))
        .unwrap_or_default();
    let get = conn
        .request(
            "GET",
            &format!("/director/{vin}/metadata/timestamp.json"),
            &condition,
            &[],
        )
        .await?;
    if get.etag.is_some() {
        held.clone_from(&get.etag);
    }
    if get.status != 200 && get.status != 304 {
        bail!(
            "GET timestamp of {vin}: {} {}",
            get.status,
            String::from_utf8_lossy(&get.body)
        );
    }
    Ok((post.body, Some(get.body)))
}

/// One connection's loop over its vehicles until stopped or out of manifests. Over TLS each
/// check-in is a new connection of its vehicle's own, closed after.
async fn worker(
    net: Net,
    mut vehicles: Vec<(String, std::vec::IntoIter<Vec<u8>>)>,
    static_body: Option<Arc<Vec<u8>>>,
    shared: Arc<Shared>,
    get: TimestampGet,
) -> Stats {
    let mut conn = net.admin();
    let mut stats = Stats::default();
    // What each vehicle holds of its timestamp (its ETag), as its primary would.
    let mut held: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut i = 0usize;
    while !shared.stop.load(Ordering::Relaxed) && !vehicles.is_empty() {
        i = (i + 1) % vehicles.len();
        let Some((vin, manifests)) = vehicles.get_mut(i) else {
            break;
        };
        let body = match &static_body {
            Some(b) => b.as_ref().clone(),
            None => match manifests.next() {
                Some(m) => m,
                None => {
                    vehicles.swap_remove(i);
                    continue;
                }
            },
        };
        if net.tls.is_some() {
            match net.vehicle(vin) {
                Ok(c) => conn = c,
                Err(e) => {
                    stats.errors += 1;
                    stats.first_error.get_or_insert_with(|| format!("{e:#}"));
                    continue;
                }
            }
        }
        let t = Instant::now();
        let r = check_in(
            &mut conn,
            vin,
            &body,
            held.entry(vin.clone()).or_default(),
            get,
        )
        .await;
        let elapsed = t.elapsed().as_secs_f64();
        let recording = shared.recording.load(Ordering::Relaxed);
        if net.tls.is_some() {
            conn.close();
            if recording {
                stats.handshakes += conn.handshakes;
                stats.resumed += conn.resumed;
            }
        }
        if recording {
            match r {
                Ok((_, got)) => {
                    stats.timestamp_gets += u64::from(got.is_some());
                    stats.latencies.push(elapsed);
                    shared.completed.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    stats.errors += 1;
                    if stats.first_error.is_none() {
                        stats.first_error = Some(format!("{e:#}"));
                    }
                }
            }
        } else if let Err(e) = r {
            stats.errors += 1;
            if stats.first_error.is_none() {
                stats.first_error = Some(format!("(warm-up) {e:#}"));
            }
        }
    }
    stats
}

/// `checkin --mode rampart|static --addr HOST:PORT …` (see the module documentation).
pub(crate) fn main(args: &Args) -> anyhow::Result<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: &Args) -> anyhow::Result<Value> {
    let mode = args.req("mode")?.to_owned();
    let addr = args.req("addr")?.to_owned();
    let vehicles: usize = args.num("vehicles", 1000)?;
    let connections: usize = args.num("connections", 32)?;
    let warmup: f64 = args.num("warmup", 3.0)?;
    let duration: f64 = args.num("duration", 10.0)?;
    // Enough manifests for this rate over the whole run; a run that uses them up ends early
    // (and says so).
    let rate_cap: f64 = args.num("rate-cap", 6000.0)?;
    // Processes whose CPU use is reported (the server, its database), comma-separated.
    let server_pids: Vec<u32> = args
        .get("server-pids")
        .unwrap_or("")
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<_, _>>()?;
    let sample_dir = args.get("sample-dir").map(PathBuf::from);
    let per_vehicle = (((warmup + duration) * rate_cap / vehicles.max(1) as f64).ceil() as usize)
        .saturating_add(1)
        .max(2);

    let tls = args.get("tls").unwrap_or("none").to_owned();
    let timestamp_get = TimestampGet::from_args(args)?;
    let mut net = Net {
        addr: addr.clone(),
        tls: None,
    };
    let (plan, static_body) = match mode.as_str() {
        "rampart" => {
            let data_dir = PathBuf::from(args.req("data-dir")?);
            let layout = rampart_server::layout::Layout::new(&data_dir);
            let token = rampart_server::pki::load_admin_token(&layout.pki())?;
            match tls.as_str() {
                "none" => {}
                "resume" | "full" => {
                    let started = Instant::now();
                    let vins: Vec<String> = (0..vehicles).map(vin).collect();
                    net = tls_net(&addr, &layout.pki(), &vins, tls == "resume")?;
                    eprintln!(
                        "checkin: issued {vehicles} vehicle certificates in {:.1}s",
                        started.elapsed().as_secs_f64()
                    );
                }
                other => bail!("--tls {other:?}: none, resume or full"),
            }
            let plan = prepare_rampart(&net, &token, vehicles, per_vehicle).await?;
            (plan, None)
        }
        "static" => {
            let body = std::fs::read(args.req("body")?)?;
            let plan = Plan {
                vehicles: (0..vehicles)
                    .map(|i| Vehicle {
                        vin: vin(i),
                        manifests: Vec::new(),
                    })
                    .collect(),
                verify_us: None,
            };
            (plan, Some(Arc::new(body)))
        }
        other => bail!("--mode {other:?}: rampart or static"),
    };

    // Check every vehicle in once (the director signs its metadata on first contact), and keep
    // one real exchange as a sample of the sizes.
    let verify_us = plan.verify_us;
    let started = Instant::now();
    let mut per_conn: Vec<Vec<(String, std::vec::IntoIter<Vec<u8>>)>> =
        (0..connections.max(1)).map(|_| Vec::new()).collect();
    let mut sample: Option<(Vec<u8>, Vec<u8>, Vec<u8>)> = None;
    {
        let mut first: Vec<(usize, String, Vec<u8>)> = Vec::new();
        for (i, v) in plan.vehicles.into_iter().enumerate() {
            let mut it = v.manifests.into_iter();
            let body = match &static_body {
                Some(b) => b.as_ref().clone(),
                None => it.next().context("no manifest")?,
            };
            first.push((i % connections.max(1), v.vin.clone(), body));
            if let Some(slot) = per_conn.get_mut(i % connections.max(1)) {
                slot.push((v.vin, it));
            }
        }
        // Warm every vehicle concurrently over the connections.
        let mut tasks = tokio::task::JoinSet::new();
        let mut by_conn: BTreeMap<usize, Vec<(String, Vec<u8>)>> = BTreeMap::new();
        for (c, vin, body) in first {
            by_conn.entry(c).or_default().push((vin, body));
        }
        for (_, list) in by_conn {
            let net = net.clone();
            tasks.spawn(async move {
                let mut conn = net.admin();
                let mut sample = None;
                for (vin, body) in list {
                    if net.tls.is_some() {
                        conn = net.vehicle(&vin)?;
                    }
                    let (post, got) =
                        check_in(&mut conn, &vin, &body, &mut None, TimestampGet::Always).await?;
                    let get = got.unwrap_or_default();
                    if net.tls.is_some() {
                        conn.close();
                    }
                    if sample.is_none() {
                        sample = Some((body, post, get));
                    }
                }
                anyhow::Ok(sample)
            });
        }
        while let Some(r) = tasks.join_next().await {
            let s = r??;
            if sample.is_none() {
                sample = s;
            }
        }
    }
    let first_contact = started.elapsed().as_secs_f64();
    let (sample_manifest, sample_post, sample_get) = sample.context("no vehicles")?;
    if let Some(dir) = &sample_dir {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("manifest.json"), &sample_manifest)?;
        std::fs::write(dir.join("checkin-response.json"), &sample_post)?;
        std::fs::write(dir.join("timestamp.json"), &sample_get)?;
    }

    let shared = Arc::new(Shared {
        recording: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        completed: AtomicU64::new(0),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for list in per_conn {
        tasks.spawn(worker(
            net.clone(),
            list,
            static_body.clone(),
            shared.clone(),
            timestamp_get,
        ));
    }
    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    shared.recording.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    // With PostgreSQL, its backends serving this database work for the server too (the pool
    // is fully open after the warm-up).
    let mut server_pids = server_pids;
    if let Some(db) = args.get("pg-db") {
        server_pids.extend(postgres_backends(db));
    }
    let server_cpu0 = cpu_of(&server_pids);
    let own_cpu0 = cpu_of(&[std::process::id()]);
    // Stop at the deadline, or earlier if every connection ran out of manifests.
    let deadline = tokio::time::sleep(Duration::from_secs_f64(duration));
    tokio::pin!(deadline);
    let mut stats = Vec::new();
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            r = tasks.join_next() => match r {
                Some(s) => stats.push(s?),
                None => break,
            },
        }
    }
    shared.recording.store(false, Ordering::Relaxed);
    let measured = t0.elapsed().as_secs_f64();
    let server_cpu = cpu_of(&server_pids) - server_cpu0;
    let own_cpu = cpu_of(&[std::process::id()]) - own_cpu0;
    shared.stop.store(true, Ordering::Relaxed);
    while let Some(s) = tasks.join_next().await {
        stats.push(s?);
    }
    let ran_out = measured + 0.05 < duration;
    let mut latencies: Vec<f64> = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    let (mut handshakes, mut resumed, mut timestamp_gets) = (0u64, 0u64, 0u64);
    for s in stats {
        latencies.extend(s.latencies);
        errors += s.errors;
        handshakes += s.handshakes;
        resumed += s.resumed;
        timestamp_gets += s.timestamp_gets;
        if first_error.is_none() {
            first_error = s.first_error;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let n = latencies.len();
    let mean = if n > 0 {
        latencies.iter().sum::<f64>() / n as f64
    } else {
        0.0
    };
    Ok(json!({
        "mode": mode,
        "tls": tls,
        "tls_handshakes": handshakes,
        "tls_resumed": resumed,
        "timestamp_get": format!("{timestamp_get:?}"),
        "timestamp_gets": timestamp_gets,
        "vehicles": vehicles,
        "connections": connections,
        "warmup_s": warmup,
        "measured_s": measured,
        "ran_out_of_manifests": ran_out,
        "first_contact_s": first_contact,
        "checkins": n,
        "errors": errors,
        "first_error": first_error,
        "checkins_per_s": n as f64 / measured.max(1e-9),
        "latency_ms": {
            "mean": mean * 1e3,
            "p50": quantile(&latencies, 0.50) * 1e3,
            "p90": quantile(&latencies, 0.90) * 1e3,
            "p99": quantile(&latencies, 0.99) * 1e3,
            "max": latencies.last().copied().unwrap_or_default() * 1e3,
        },
        "bytes": {
            "manifest": sample_manifest.len(),
            "checkin_response": sample_post.len(),
            "timestamp": sample_get.len(),
        },
        "completed_counter": shared.completed.load(Ordering::Relaxed),
        "verify_manifest_us": verify_us,
        "cpu": {
            "server_pids": server_pids,
            "server_cores": server_cpu / measured.max(1e-9),
            "server_ms_per_checkin": server_cpu * 1e3 / (n.max(1) as f64),
            "load_generator_cores": own_cpu / measured.max(1e-9),
        },
    }))
}

//! Measure 8: a fleet at scale (issue 19). Against a running `rampart serve` (PostgreSQL,
//! plain HTTP on loopback, rate limit lifted), with `--vehicles` simulated vehicles in this
//! process (`rampart_lab::sim`: three ECUs each, real ed25519 keys, signed manifests):
//!
//! 1. bulk registration through the admin API (`--connections` at once): records per second;
//! 2. an image published into the running server's data directory, and a campaign over the
//!    whole fleet in one wave (`POST /api/v1/campaigns`): seconds to create it;
//! 3. the storm: every vehicle checks in once, as fast as the server takes them (a check-in is
//!    `POST /director/VIN/manifest` + `GET …/timestamp.json`, as in `checkin`); each is the
//!    vehicle's first contact with an instruction pending, so the director signs its
//!    documents: time to drain, p50/p99, CPU of the server and its database backends;
//! 4. steady state: `--steady` seconds of check-ins that change nothing (the GET names the
//!    timestamp the vehicle holds, answered 304): rate, p99, CPU per check-in.
//!
//! Manifests are signed before the clock starts. The server's peak RSS is its `VmHWM`.
//! `--until campaign` stops after step 2 (to study registration and the wave alone).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::Utc;
use rampart_lab::sim::SimVehicle;
use serde_json::{json, Value};

use crate::checkin::{check_in, cpu_of, postgres_backends, TimestampGet};
use crate::http::Conn;
use crate::{quantile, Args};

const ECUS: [(&str, &str); 3] = [("TBOX", "tbox-a"), ("IVI", "ivi-x"), ("BCM", "bcm-1")];

/// A vehicle's check-in as its primary makes it (the timestamp asked for unless the answer
/// names the copy held, `tag`).
async fn cycle(
    conn: &mut Conn,
    vin: &str,
    manifest: &[u8],
    tag: &mut Option<String>,
) -> anyhow::Result<()> {
    check_in(conn, vin, manifest, tag, TimestampGet::UnlessNamed).await?;
    Ok(())
}

fn vin(i: usize) -> String {
    format!("WF{:05}{i:010}", std::process::id() % 100_000)
}

/// Runs `work` over `items` on one task per connection (item `i` on connection
/// `i % connections`); returns each item's latency in seconds, in no particular order.
async fn over_connections<T, F, Fut>(
    addr: &str,
    connections: usize,
    items: Vec<T>,
    work: F,
) -> anyhow::Result<Vec<f64>>
where
    T: Send + 'static,
    F: Fn(Conn, T) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Conn>> + Send,
{
    let mut per: Vec<Vec<T>> = (0..connections.max(1)).map(|_| Vec::new()).collect();
    let n = per.len();
    for (i, item) in items.into_iter().enumerate() {
        if let Some(list) = per.get_mut(i % n) {
            list.push(item);
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for list in per {
        let (addr, work) = (addr.to_owned(), work.clone());
        tasks.spawn(async move {
            let mut conn = Conn::new(&addr);
            let mut lat = Vec::with_capacity(list.len());
            for item in list {
                let t = Instant::now();
                conn = work(conn, item).await?;
                lat.push(t.elapsed().as_secs_f64());
            }
            anyhow::Ok(lat)
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.extend(r??);
    }
    Ok(out)
}

/// Count, rate and quantiles of a phase; with `cpu`, the server's CPU seconds in it and per
/// item.
fn latency_summary(mut lat: Vec<f64>, seconds: f64, cpu: Option<f64>) -> Value {
    lat.sort_by(f64::total_cmp);
    let n = lat.len();
    json!({
        "count": n,
        "seconds": seconds,
        "per_second": n as f64 / seconds.max(1e-9),
        "p50_ms": quantile(&lat, 0.50) * 1000.0,
        "p99_ms": quantile(&lat, 0.99) * 1000.0,
        "server_cpu_s": cpu,
        "server_cpu_ms_per_checkin": cpu.map(|c| c * 1000.0 / n.max(1) as f64),
    })
}

/// Peak resident set of a process (`VmHWM`), MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// `fleet --addr HOST:PORT --data-dir D --vehicles N [--connections C] [--steady S]
/// [--server-pid P] [--pg-db NAME]`.
pub(crate) fn main(args: &Args) -> anyhow::Result<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: &Args) -> anyhow::Result<Value> {
    let addr = args.req("addr")?.to_owned();
    let data_dir = PathBuf::from(args.req("data-dir")?);
    let vehicles: usize = args.num("vehicles", 5000)?;
    let connections: usize = args.num("connections", 32)?;
    let steady: f64 = args.num("steady", 10.0)?;
    let server_pid: Option<u32> = args.get("server-pid").map(str::parse).transpose()?;
    let layout = rampart_server::layout::Layout::new(&data_dir);
    let token = rampart_server::pki::load_admin_token(&layout.pki())?;
    let auth = Arc::new(format!("Authorization: Bearer {token}\r\n"));

    // Keys and manifests first: none of it is measured.
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = vehicles.div_ceil(threads).max(1);
    let indices: Vec<usize> = (0..vehicles).collect();
    type Prepared = (String, Vec<u8>, Vec<Vec<u8>>);
    let made: Vec<anyhow::Result<Vec<Prepared>>> = std::thread::scope(|s| {
        let handles: Vec<_> = indices
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|&i| {
                            let mut v = SimVehicle::new(&vin(i), &ECUS)?;
                            let registration = serde_json::to_vec(&v.registration())?;
                            // The storm's manifest, and enough for the steady state.
                            let manifests = (0..4)
                                .map(|_| v.next_manifest())
                                .collect::<anyhow::Result<Vec<_>>>()?;
                            Ok((v.vin.clone(), registration, manifests))
                        })
                        .collect::<anyhow::Result<Vec<Prepared>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("thread panicked"))?)
            .collect()
    });
    let mut fleet: Vec<Prepared> = Vec::with_capacity(vehicles);
    for part in made {
        fleet.extend(part?);
    }
    eprintln!(
        "fleet: {vehicles} vehicles' keys and {} manifests in {:.1}s",
        vehicles * 4,
        started.elapsed().as_secs_f64()
    );

    // 1. Registration.
    let registrations: Vec<(String, Vec<u8>)> = fleet
        .iter()
        .map(|(vin, r, _)| (vin.clone(), r.clone()))
        .collect();
    let t = Instant::now();
    let a = auth.clone();
    let lat = over_connections(
        &addr,
        connections,
        registrations,
        move |mut conn, (vin, body)| {
            let auth = a.clone();
            async move {
                let r = conn
                    .request("POST", "/api/v1/vehicles", &auth, &body)
                    .await?;
                if r.status != 201 {
                    bail!(
                        "registering {vin}: {} {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    );
                }
                Ok(conn)
            }
        },
    )
    .await?;
    let registration = latency_summary(lat, t.elapsed().as_secs_f64(), None);
    eprintln!("fleet: registered: {registration}");

    // 2. An image and a campaign over every vehicle, one wave.
    let image = data_dir.join("fleet-image.bin");
    std::fs::write(&image, vec![0x5a; 256 * 1024])?;
    let req = rampart_server::ops::PublishRequest {
        name: Some("tbox/fleet-2.bin".into()),
        release_counter: Some(2),
        ..rampart_server::ops::PublishRequest::new(&image, "tbox-a")
    };
    rampart_server::ops::publish(&layout, &req, Utc::now()).await?;
    let spec = json!({
        "name": format!("fleet-{}", std::process::id()),
        "images": ["tbox/fleet-2.bin"],
        "target": {"hardware_ids": ["tbox-a"]},
        "waves": "100%",
        "start": true,
    });
    let t = Instant::now();
    let mut conn = Conn::new(&addr);
    let r = conn
        .request(
            "POST",
            "/api/v1/campaigns",
            &auth,
            &serde_json::to_vec(&spec)?,
        )
        .await?;
    if r.status != 201 {
        bail!(
            "campaign: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    let campaign_s = t.elapsed().as_secs_f64();
    eprintln!("fleet: campaign over {vehicles} vehicles created in {campaign_s:.1}s");
    if args.get("until") == Some("campaign") {
        return Ok(json!({
            "vehicles": vehicles,
            "registration": registration,
            "campaign_create_s": campaign_s,
        }));
    }

    // 3. The storm: every vehicle once, its first contact.
    let mut server_pids: Vec<u32> = server_pid.into_iter().collect();
    if let Some(db) = args.get("pg-db") {
        server_pids.extend(postgres_backends(db));
    }
    let storm: Vec<(String, Vec<u8>)> = fleet
        .iter_mut()
        .map(|(vin, _, m)| (vin.clone(), m.remove(0)))
        .collect();
    let held: Arc<std::sync::Mutex<BTreeMap<String, Option<String>>>> = Arc::default();
    let cpu0 = cpu_of(&server_pids);
    let t = Instant::now();
    let h = held.clone();
    let lat = over_connections(
        &addr,
        connections,
        storm,
        move |mut conn, (vin, manifest)| {
            let held = h.clone();
            async move {
                let mut tag = None;
                cycle(&mut conn, &vin, &manifest, &mut tag).await?;
                held.lock()
                    .map_err(|_| anyhow::anyhow!("lock"))?
                    .insert(vin, tag);
                Ok(conn)
            }
        },
    )
    .await?;
    let storm_s = t.elapsed().as_secs_f64();
    let storm_cpu = cpu_of(&server_pids) - cpu0;
    let storm = latency_summary(lat, storm_s, Some(storm_cpu));
    eprintln!("fleet: storm drained: {storm}");

    // 4. Steady state: check-ins that change nothing, until the time or the manifests end.
    // PostgreSQL may have opened more backends during the storm.
    if let Some(db) = args.get("pg-db") {
        server_pids = server_pid.into_iter().collect();
        server_pids.extend(postgres_backends(db));
    }
    let mut rounds: Vec<(String, Vec<u8>, Option<String>)> = Vec::new();
    {
        let held = held.lock().map_err(|_| anyhow::anyhow!("lock"))?;
        for round in 0..3 {
            for (vin, _, manifests) in &fleet {
                if let Some(m) = manifests.get(round) {
                    rounds.push((vin.clone(), m.clone(), held.get(vin).cloned().flatten()));
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs_f64(steady);
    let cpu0 = cpu_of(&server_pids);
    let t = Instant::now();
    let lat = over_connections(
        &addr,
        connections,
        rounds,
        move |mut conn, (vin, manifest, tag)| async move {
            if Instant::now() < deadline {
                let mut tag = tag;
                cycle(&mut conn, &vin, &manifest, &mut tag).await?;
            }
            Ok(conn)
        },
    )
    .await?;
    let steady_s = t.elapsed().as_secs_f64().min(steady);
    let steady_cpu = cpu_of(&server_pids) - cpu0;
    // Items after the deadline were skipped in well under 0.1 ms; a check-in takes more.
    let lat: Vec<f64> = lat.into_iter().filter(|l| *l > 1e-4).collect();
    let steady_state = latency_summary(lat, steady_s, Some(steady_cpu));
    eprintln!("fleet: steady state: {steady_state}");

    Ok(json!({
        "vehicles": vehicles,
        "ecus_per_vehicle": ECUS.len(),
        "connections": connections,
        "registration": registration,
        "campaign_create_s": campaign_s,
        "storm": storm,
        "steady": steady_state,
        "server_peak_rss_mib": server_pid.and_then(peak_rss_mib),
    }))
}

//! Measure 5: what campaigns cost the director, in process (no HTTP: the director's own
//! work), on SQLite or PostgreSQL (`--database URL`; default a temporary SQLite file).
//!
//! `campaign --vehicles N --checkins M` registers N vehicles of two ECUs (real keys), then:
//! * times `campaign::create` over all N (target set resolved against the fleet, waves
//!   `1%,10%,50%,100%`, members stored, the 1% canary wave instructed);
//! * times M check-ins (real signed manifests) of vehicles with nothing to report, first
//!   before any campaign exists (the baseline), then while a campaign over every vehicle is
//!   running (the cost a campaign adds to a check-in that changes nothing);
//! * times check-ins that confirm a campaign's install (each triggers a judgement of the
//!   campaign: the expensive case, proportional to the campaign's size today).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use chrono::Utc;
use rampart_core::hash::compute_hashes;
use rampart_core::key::KeyScheme;
use rampart_core::metadata::Expiry;
use rampart_core::signer::{InMemorySigner, Signer};
use rampart_core::uptane::manifest::{
    sign_ecu_report, sign_vehicle_manifest, EcuVersionReport, VehicleManifest, ECU_REPORT_TYPE,
    VEHICLE_MANIFEST_TYPE,
};
use rampart_core::uptane::InstalledImage;
use rampart_server::campaign::{self, CampaignSpec, Criteria, ReleaseImage, TargetSet};
use rampart_server::db::{Db, NewEcu, NewVehicle};
use rampart_server::director::{Director, DirectorKeys};
use serde_json::{json, Value};

use crate::Args;

struct Car {
    vin: String,
    primary: InMemorySigner,
    ivi: InMemorySigner,
    installed: InstalledImage,
    counter: u64,
}

fn image(name: &str) -> InstalledImage {
    InstalledImage {
        filename: name.into(),
        length: 7,
        hashes: compute_hashes(name.as_bytes()),
        release_counter: 1,
    }
}

impl Car {
    fn manifest(&mut self) -> anyhow::Result<Vec<u8>> {
        self.counter += 1;
        let mut reports = BTreeMap::new();
        for (id, signer, installed) in [
            ("TBOX", &self.primary, image("factory/tbox.bin")),
            ("IVI", &self.ivi, self.installed.clone()),
        ] {
            let report = EcuVersionReport {
                type_: ECU_REPORT_TYPE.into(),
                ecu_id: id.into(),
                installed_image: installed,
                attacks_detected: String::new(),
                latest_verified_time: Expiry::new(Utc::now()),
                report_counter: self.counter,
                nonce: "00".into(),
                unrecognized: BTreeMap::new(),
            };
            let doc: Value = serde_json::from_slice(&sign_ecu_report(&report, signer)?)?;
            reports.insert(id.to_owned(), doc);
        }
        let manifest = VehicleManifest {
            type_: VEHICLE_MANIFEST_TYPE.into(),
            vin: self.vin.clone(),
            primary_ecu_id: "TBOX".into(),
            manifest_counter: self.counter,
            nonce: "00".into(),
            ecu_version_reports: reports,
            attacks_detected: String::new(),
            update_failures: Vec::new(),
            progress: Vec::new(),
            unrecognized: BTreeMap::new(),
        };
        Ok(sign_vehicle_manifest(&manifest, &self.primary)?)
    }
}

fn signer() -> anyhow::Result<InMemorySigner> {
    Ok(InMemorySigner::generate(KeyScheme::Ed25519)?)
}

/// Mean microseconds of check-ins of `cars` (round robin, `n` of them), manifests signed
/// before the clock starts.
async fn checkins(d: &Director, cars: &mut [Car], n: usize) -> anyhow::Result<f64> {
    let mut bodies = Vec::with_capacity(n);
    for i in 0..n {
        let len = cars.len();
        let car = cars.get_mut(i % len).context("no cars")?;
        bodies.push((car.vin.clone(), car.manifest()?));
    }
    let started = Instant::now();
    for (vin, body) in &bodies {
        d.check_in(vin, body, None, Utc::now()).await?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / n as f64)
}

/// `cars` check in once each, `at_once` at a time (a fleet confirming together); the wall
/// time per check-in, in µs.
async fn checkins_at_once(d: &Director, cars: &mut [Car], at_once: usize) -> anyhow::Result<f64> {
    let mut bodies = Vec::with_capacity(cars.len());
    for car in cars.iter_mut() {
        bodies.push((car.vin.clone(), car.manifest()?));
    }
    let n = bodies.len().max(1);
    let started = Instant::now();
    for chunk in bodies.chunks(at_once.max(1)) {
        let results = futures_util::future::join_all(
            chunk
                .iter()
                .map(|(vin, body)| d.check_in(vin, body, None, Utc::now())),
        )
        .await;
        for r in results {
            r?;
        }
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / n as f64)
}

pub(crate) fn main(args: &Args) -> anyhow::Result<Value> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: &Args) -> anyhow::Result<Value> {
    let vehicles: usize = args.num("vehicles", 10_000)?;
    let n: usize = args.num("checkins", 2_000)?;
    let dir = tempfile::tempdir()?;
    let url = match args.get("database") {
        Some(u) => u.to_owned(),
        None => format!("sqlite://{}", dir.path().join("bench.db").display()),
    };
    let db = Db::connect(&url).await?;
    let keys = DirectorKeys {
        targets: Box::new(signer()?),
        snapshot: Box::new(signer()?),
        timestamp: Box::new(signer()?),
    };
    let d = Director::new(db, keys, dir.path());
    let tag = std::process::id() % 100_000;
    let mut cars = Vec::with_capacity(vehicles);
    let started = Instant::now();
    for i in 0..vehicles {
        let car = Car {
            vin: format!("WC{tag:05}{i:010}"),
            primary: signer()?,
            ivi: signer()?,
            installed: image("factory/ivi.bin"),
            counter: 0,
        };
        let ecu = |id: &str, hw: &str, s: &InMemorySigner| -> anyhow::Result<NewEcu> {
            Ok(NewEcu {
                ecu_id: id.into(),
                hardware_id: hw.into(),
                public_key: serde_json::to_value(s.public_key())?,
                encryption_key: None,
                verification: "full".into(),
            })
        };
        d.db()
            .register_vehicle(&NewVehicle {
                vin: car.vin.clone(),
                primary_ecu: "TBOX".into(),
                ecus: vec![
                    ecu("TBOX", "tbox-a", &car.primary)?,
                    ecu("IVI", "ivi-x", &car.ivi)?,
                ],
                attributes: BTreeMap::from([("region".into(), "eu".into())]),
                tags: Default::default(),
            })
            .await?;
        cars.push(car);
    }
    let register_s = started.elapsed().as_secs_f64();
    // Every car checks in once (the director signs its metadata), unmeasured.
    for car in &mut cars {
        let body = car.manifest()?;
        d.check_in(&car.vin, &body, None, Utc::now()).await?;
    }
    let baseline_us = checkins(&d, &mut cars, n).await?;

    let target = image("ivi/app-2.0.bin");
    let release = vec![ReleaseImage {
        target: target.filename.clone(),
        hardware_id: "ivi-x".into(),
        length: target.length,
        hashes: serde_json::to_value(&target.hashes)?,
        release_counter: 2,
        encrypted: false,
    }];
    let spec = CampaignSpec {
        name: "bench".into(),
        images: vec![target.filename.clone()],
        target: TargetSet {
            attributes: BTreeMap::from([("region".into(), "eu".into())]),
            ..TargetSet::default()
        },
        waves: "1%,10%,50%,100%".into(),
        criteria: Criteria {
            min_success_pct: 100.0,
            max_failure_pct: 50.0,
            soak_seconds: 3600,
        },
        critical: false,
        rxswin: None,
        window: None,
        override_windows: false,
        deadline: None,
        start: true,
    };
    let started = Instant::now();
    let created = campaign::create(&d, spec, release, Utc::now()).await?;
    let create_s = started.elapsed().as_secs_f64();
    let canaries = created.wave_sizes.first().copied().unwrap_or(0) as usize;

    // Vehicles of later waves (not instructed): a check-in that changes nothing.
    let status = campaign::status(d.db(), "bench").await?;
    let later: Vec<String> = status
        .vehicles
        .iter()
        .filter(|v| v.wave > 1)
        .map(|v| v.vin.clone())
        .collect();
    let mut idle: Vec<Car> = Vec::new();
    let mut canary_cars: Vec<Car> = Vec::new();
    let wave1: Vec<String> = status
        .vehicles
        .iter()
        .filter(|v| v.wave == 1)
        .map(|v| v.vin.clone())
        .collect();
    for car in cars {
        if wave1.contains(&car.vin) {
            canary_cars.push(car);
        } else if later.contains(&car.vin) && idle.len() < 1000 {
            idle.push(car);
        }
    }
    let with_campaign_us = checkins(&d, &mut idle, n).await?;
    // The canaries confirm the install: each check-in completes an assignment and judges the
    // campaign.
    for car in &mut canary_cars {
        car.installed = target.clone();
    }
    // Half of them one after the other, the other half 16 at a time (a wave confirming
    // together: one judgement of the campaign at a time, the others do not wait for it).
    let half = canary_cars.len() / 2;
    let (one_by_one, together) = canary_cars.split_at_mut(half);
    let completing_us = checkins(&d, one_by_one, half.max(1)).await?;
    let completing_together_us = checkins_at_once(&d, together, 16).await?;
    Ok(json!({
        "database": if url.starts_with("postgres") { "postgres" } else { "sqlite" },
        "vehicles": vehicles,
        "checkins": n,
        "register_per_s": vehicles as f64 / register_s,
        "create_seconds": create_s,
        "canaries": canaries,
        "checkin_us_no_campaign": baseline_us,
        "checkin_us_campaign_running": with_campaign_us,
        "checkin_us_confirming_install": completing_us,
        "checkin_us_confirming_install_16_at_once": completing_together_us,
        "ratio_campaign_running": with_campaign_us / baseline_us,
        "ratio_confirming_install": completing_us / baseline_us,
    }))
}

//! Campaigns against the director, in process, on both backends: simulated vehicles sign
//! real manifests (primary and ECU keys, counters, reported failures) and check in; the
//! campaign instructs wave by wave, halts by itself on a breach and takes instructions back
//! (the director re-signs the vehicle's targets without them), and refuses what cannot work.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;
mod fleet;

use fleet::{director, fleet, image, instructions, vin, Behaviour, Car};

use std::collections::BTreeMap;

use chrono::{Timelike, Utc};
use rampart_core::uptane::manifest::UpdateStage;
use rampart_server::campaign::{
    self, CampaignSpec, Criteria, Progress, ReleaseImage, State, TargetSet,
};
use rampart_server::director::Director;
use serde_json::Value;

fn spec(name: &str, waves: &str, criteria: Criteria) -> CampaignSpec {
    CampaignSpec {
        name: name.into(),
        images: vec!["ivi/app-2.0.bin".into()],
        target: TargetSet::default(),
        waves: waves.into(),
        criteria,
        critical: false,
        rxswin: None,
        window: None,
        override_windows: false,
        deadline: None,
        start: true,
    }
}

/// Criteria without a soak time (the tests move on at once).
fn criteria(min_success_pct: f64, max_failure_pct: f64) -> Criteria {
    Criteria {
        min_success_pct,
        max_failure_pct,
        soak_seconds: 0,
    }
}

fn release() -> Vec<ReleaseImage> {
    vec![image("ivi/app-2.0.bin", "ivi-hw", 2)]
}

/// The VINs of a campaign's vehicles in each progress state.
async fn by_progress(d: &Director, name: &str) -> BTreeMap<String, Vec<String>> {
    let status = campaign::status(d.db(), name).await.unwrap();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for v in status.vehicles {
        out.entry(v.progress.as_str().to_owned())
            .or_default()
            .push(v.vin);
    }
    out
}

fn car_mut<'a>(cars: &'a mut [Car], vin: &str) -> &'a mut Car {
    cars.iter_mut().find(|c| c.vin == vin).unwrap()
}

async fn staged_rollout(url: String) {
    let (d, _dir) = director(&url).await;
    let mut cars = fleet(&d, 10, "id4").await;
    let criteria = criteria(100.0, 20.0);
    let mut s = spec("ivi-2.0", "1,50%,all", criteria);
    s.rxswin = Some("R156-ID4-02".into());
    let c = campaign::create(&d, s, release(), Utc::now())
        .await
        .unwrap();
    assert_eq!(
        (c.state, c.wave, c.wave_sizes.clone()),
        (State::Running, 0, vec![1, 4, 5])
    );
    let status = campaign::status(d.db(), "ivi-2.0").await.unwrap();
    let canary = status.vehicles[0].vin.clone();
    // Every car checks in: only the canary is told about the image.
    for car in &mut cars {
        let told = car.cycle(&d).await;
        assert_eq!(
            told.contains(&"ivi/app-2.0.bin".to_owned()),
            car.vin == canary,
            "{}: {told:?}",
            car.vin
        );
    }
    // Installed, but not yet confirmed by a signed report: the RXSWIN has not changed.
    assert_eq!(d.db().rxswin(&canary).await.unwrap(), None);
    // The canary reports the install: wave 2 starts at that check-in, its RXSWIN changes.
    car_mut(&mut cars, &canary).cycle(&d).await;
    assert_eq!(
        d.db().rxswin(&canary).await.unwrap().as_deref(),
        Some("R156-ID4-02")
    );
    let c = d.db().campaign("ivi-2.0").await.unwrap().unwrap();
    assert_eq!(
        c.wave, 1,
        "wave 2 started on the canary's confirmed install"
    );
    let p = by_progress(&d, "ivi-2.0").await;
    assert_eq!(p["installed"], std::slice::from_ref(&canary));
    assert_eq!(p["instructed"].len(), 4);
    assert_eq!(p["pending"].len(), 5);
    // Rounds of check-ins: wave 2 installs and confirms, wave 3 starts at the last
    // confirmation, installs and confirms. Four rounds at most, whatever the order.
    let mut rounds = 0;
    while rounds < 6 && d.db().campaign("ivi-2.0").await.unwrap().unwrap().state == State::Running {
        for car in &mut cars {
            car.cycle(&d).await;
        }
        rounds += 1;
    }
    assert!(rounds <= 4, "{rounds} rounds");
    let c = d.db().campaign("ivi-2.0").await.unwrap().unwrap();
    assert_eq!(c.state, State::Completed, "{:?}", c.reason);
    assert_eq!(by_progress(&d, "ivi-2.0").await["installed"].len(), 10);
    let log = d.db().campaign_log(c.id).await.unwrap();
    let actions: Vec<_> = log.iter().map(|l| l.action.as_str()).collect();
    assert_eq!(actions, ["created", "started", "wave", "wave", "completed"]);
    // R156: every vehicle's RXSWIN and an update record per confirmed install.
    for car in &cars {
        let history = d.db().rxswin_history(&car.vin).await.unwrap();
        assert_eq!(history.len(), 1, "{}", car.vin);
        assert_eq!(history[0].campaign.as_deref(), Some("ivi-2.0"));
    }
    let records = d
        .db()
        .update_records(None, Some("ivi-2.0"), 0, 100)
        .await
        .unwrap();
    assert_eq!(records.len(), 10);
    for r in &records {
        assert_eq!(
            (
                r.ecu_id.as_str(),
                r.from_target.as_deref(),
                r.to_target.as_str()
            ),
            ("IVI", Some("factory/IVI.bin"), "ivi/app-2.0.bin")
        );
        assert_eq!(
            (r.result.as_str(), r.rxswin.as_deref()),
            ("installed", Some("R156-ID4-02"))
        );
    }
    let csv = rampart_server::records::to_csv(&records);
    assert_eq!(csv.lines().count(), 11, "{csv}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_rollout_instructs_wave_by_wave_on_sqlite() {
    common::with_sqlite(staged_rollout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_rollout_instructs_wave_by_wave_on_postgres() {
    common::with_postgres(staged_rollout).await;
}

async fn halt(url: String) {
    let (d, _dir) = director(&url).await;
    let mut cars = fleet(&d, 10, "id4").await;
    let criteria = criteria(100.0, 25.0);
    campaign::create(
        &d,
        spec("ivi-2.0", "2,6,all", criteria),
        release(),
        Utc::now(),
    )
    .await
    .unwrap();
    let order: Vec<String> = campaign::status(d.db(), "ivi-2.0")
        .await
        .unwrap()
        .vehicles
        .iter()
        .map(|v| v.vin.clone())
        .collect();
    // Wave 1 (2 canaries) installs; wave 2 (4 vehicles) starts.
    for vin in &order[..2] {
        let car = car_mut(&mut cars, vin);
        car.cycle(&d).await;
        car.cycle(&d).await;
    }
    assert_eq!(d.db().campaign("ivi-2.0").await.unwrap().unwrap().wave, 1);
    // In wave 2, one car gets a tampered image and one fails its boot check; the other two
    // have been told but not started.
    let (tampered, rolled_back, waiting) = (&order[2], &order[3], &order[4..6]);
    car_mut(&mut cars, tampered).behaviour = Behaviour::Tampered;
    car_mut(&mut cars, rolled_back).behaviour = Behaviour::FailBoot;
    for vin in &order[2..6] {
        let told = car_mut(&mut cars, vin).cycle(&d).await;
        assert!(told.contains(&"ivi/app-2.0.bin".to_owned()));
    }
    // One of the waiting cars is installing when the halt comes: its instruction stands.
    let installing = waiting[0].clone();
    car_mut(&mut cars, &installing)
        .report_progress(&d, UpdateStage::Installing)
        .await;
    let waiting = &order[5..6];
    // The first failure is 1 of 4 (25%, not above the threshold): still running.
    car_mut(&mut cars, tampered).cycle(&d).await;
    assert_eq!(
        d.db().campaign("ivi-2.0").await.unwrap().unwrap().state,
        State::Running
    );
    // The second is 2 of 4: the campaign halts at this check-in...
    let told = car_mut(&mut cars, rolled_back).cycle(&d).await;
    let c = d.db().campaign("ivi-2.0").await.unwrap().unwrap();
    assert_eq!(c.state, State::Halted);
    let reason = c.reason.clone().unwrap();
    assert!(
        reason.contains("wave 2")
            && reason.contains("hash-mismatch")
            && reason.contains("boot-failed"),
        "{reason}"
    );
    // ... and its answer no longer lists the image, nor do the waiting cars' targets.
    assert!(told.is_empty(), "{told:?}");
    for vin in waiting {
        assert!(
            instructions(&d, vin).await.is_empty(),
            "{vin} still instructed"
        );
    }
    assert_eq!(instructions(&d, &installing).await, ["ivi/app-2.0.bin"]);
    let p = by_progress(&d, "ivi-2.0").await;
    assert_eq!(p["failed"], std::slice::from_ref(tampered));
    assert_eq!(p["rolled-back"], std::slice::from_ref(rolled_back));
    assert_eq!(p["installing"], std::slice::from_ref(&installing));
    assert_eq!(p["withdrawn"].len(), 1);
    assert_eq!(p["installed"].len(), 2);
    assert_eq!(p["pending"].len(), 4, "wave 3 was never instructed");
    // The failures are update records, with their rules.
    let records = d
        .db()
        .update_records(None, Some("ivi-2.0"), 0, 100)
        .await
        .unwrap();
    let failed: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r.result != "installed")
        .map(|r| (r.vin.as_str(), r.result.as_str()))
        .collect();
    assert_eq!(
        failed,
        [
            (tampered.as_str(), "failed"),
            (rolled_back.as_str(), "rolled-back")
        ]
    );
    // Wave 3 never hears of it, whatever it does.
    for vin in &order[6..] {
        assert!(car_mut(&mut cars, vin).cycle(&d).await.is_empty());
    }
    // A hash mismatch is an attack rule: the halt is a security event too.
    let events = d
        .db()
        .events(None, Some("campaign-halted"), 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0].detail.contains("hash-mismatch"),
        "{}",
        events[0].detail
    );

    // Resume: the withdrawn and failed are told again.
    let c = campaign::start(&d, "ivi-2.0", Utc::now()).await.unwrap();
    assert_eq!(c.state, State::Running);
    for vin in waiting.iter().chain([tampered, rolled_back]) {
        assert_eq!(instructions(&d, vin).await, ["ivi/app-2.0.bin"], "{vin}");
    }
    // The car that was installing finishes, and its signed report completes it.
    let car = car_mut(&mut cars, &installing);
    car.cycle(&d).await;
    car.cycle(&d).await;
    assert_eq!(by_progress(&d, "ivi-2.0").await["installed"].len(), 3);
    // Cancel: every instruction not yet installed is taken back.
    let c = campaign::cancel(&d, "ivi-2.0", "release withdrawn by QA")
        .await
        .unwrap();
    assert_eq!(c.state, State::Cancelled);
    for vin in &order[2..] {
        assert!(instructions(&d, vin).await.is_empty(), "{vin}");
    }
    for vin in &order[..2] {
        let car = cars.iter().find(|c| &c.vin == vin).unwrap();
        assert_eq!(car.ecus[1].installed.filename, "ivi/app-2.0.bin");
    }
    let err = campaign::start(&d, "ivi-2.0", Utc::now())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is cancelled"), "{err}");

    // Manifest retention keeps the one that reported the boot failure (its only sign: an
    // update failure, no event) when a month of quiet ones goes, the car's newest too.
    car_mut(&mut cars, rolled_back).cycle(&d).await;
    let month = std::time::Duration::from_secs(30 * 86_400);
    let later = Utc::now() + chrono::Duration::days(31);
    d.db()
        .prune_manifests(later, Some(month), None)
        .await
        .unwrap();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let kept: Vec<String> =
        sqlx::query_scalar("SELECT document FROM manifests WHERE vin = $1 ORDER BY id")
            .bind(rolled_back)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(kept.len(), 2, "the failure's and the newest");
    assert!(kept[0].contains("boot-failed"), "{}", kept[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breach_halts_withdraws_and_spares_later_waves_on_sqlite() {
    common::with_sqlite(halt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breach_halts_withdraws_and_spares_later_waves_on_postgres() {
    common::with_postgres(halt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_work_is_refused() {
    common::with_sqlite(|url| async move {
        let (d, _dir) = director(&url).await;
        let _cars = fleet(&d, 4, "id4").await;
        let ok = || spec("c1", "1,all", Criteria::default());
        let refused = |s: CampaignSpec, images: Vec<ReleaseImage>| {
            let d = &d;
            async move {
                campaign::create(d, s, images, Utc::now())
                    .await
                    .unwrap_err()
                    .to_string()
            }
        };
        // An empty target set says why.
        let mut s = ok();
        s.target.attributes.insert("model".into(), "golf".into());
        let e = refused(s, release()).await;
        assert!(e.contains("target set is empty"), "{e}");
        // A hardware ID no vehicle has.
        let e = refused(ok(), vec![image("bcm/fw.bin", "bcm-hw", 1)]).await;
        assert!(e.contains("target set is empty"), "{e}");
        // Two images for one hardware ID.
        let e = refused(
            ok(),
            vec![
                image("ivi/a.bin", "ivi-hw", 1),
                image("ivi/b.bin", "ivi-hw", 2),
            ],
        )
        .await;
        assert!(e.contains("one image per hardware ID"), "{e}");
        // Waves, thresholds, names, deadlines.
        let mut s = ok();
        s.waves = "10%,50%".into();
        assert!(refused(s, release()).await.contains("must cover"));
        let mut s = ok();
        s.criteria.max_failure_pct = 120.0;
        assert!(refused(s, release()).await.contains("out of range"));
        let mut s = ok();
        s.name = "no spaces please".into();
        assert!(refused(s, release()).await.contains("campaign name"));
        let mut s = ok();
        s.deadline = Some("tomorrow".into());
        assert!(refused(s, release()).await.contains("RFC 3339"));
        // Unknown VIN.
        let mut s = ok();
        s.target.vins = vec![vin(99)];
        assert!(refused(s, release()).await.contains("not registered"));
        // Overlap: the same ECUs cannot be in two running campaigns.
        campaign::create(&d, ok(), release(), Utc::now())
            .await
            .unwrap();
        let mut s = ok();
        s.name = "c2".into();
        let e = refused(s, vec![image("ivi/app-3.0.bin", "ivi-hw", 3)]).await;
        assert!(e.contains("is in campaign c1"), "{e}");
        // Same name twice.
        let e = refused(ok(), release()).await;
        assert!(e.contains("exists already"), "{e}");
        // Nothing was stored by the refusals.
        assert_eq!(d.db().campaigns().await.unwrap().len(), 1);
        assert_eq!(d.db().count("campaign_members").await.unwrap(), 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_set_chooses_by_attribute_and_an_explicit_list_keeps_its_order() {
    common::with_sqlite(|url| async move {
        let (d, _dir) = director(&url).await;
        let _id4 = fleet(&d, 3, "id4").await;
        let golf = Car::new(50);
        d.db()
            .register_vehicle(&golf.registration("golf"))
            .await
            .unwrap();
        let mut s = spec("golf-only", "all", Criteria::default());
        s.target.attributes.insert("model".into(), "golf".into());
        s.start = false;
        let c = campaign::create(&d, s, release(), Utc::now())
            .await
            .unwrap();
        assert_eq!((c.state, c.wave_sizes.clone()), (State::Draft, vec![1]));
        let status = campaign::status(d.db(), "golf-only").await.unwrap();
        assert_eq!(status.vehicles.len(), 1);
        assert_eq!(status.vehicles[0].vin, golf.vin);
        assert_eq!(status.vehicles[0].progress, Progress::Pending);
        // A draft instructs nobody.
        assert!(instructions(&d, &golf.vin).await.is_empty());
        campaign::cancel(&d, "golf-only", "wrong model")
            .await
            .unwrap();

        let mut s = spec("listed", "1,all", Criteria::default());
        s.target.vins = vec![vin(2), vin(0)];
        let c = campaign::create(&d, s, release(), Utc::now())
            .await
            .unwrap();
        assert_eq!(c.wave_sizes, [1, 1]);
        let status = campaign::status(d.db(), "listed").await.unwrap();
        let order: Vec<_> = status.vehicles.iter().map(|v| v.vin.clone()).collect();
        assert_eq!(order, [vin(2), vin(0)], "the first listed is the canary");
        assert_eq!(instructions(&d, &vin(2)).await, ["ivi/app-2.0.bin"]);
        assert!(instructions(&d, &vin(0)).await.is_empty());
    })
    .await;
}

/// A fleet of 1,000 vehicles on PostgreSQL, four waves, failures injected in wave 3: the
/// campaign halts in wave 3 and no vehicle of wave 4 is ever instructed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_vehicles_four_waves_halt_in_the_third_on_postgres() {
    common::with_postgres(|url| async move {
        let (d, _dir) = director(&url).await;
        let mut cars = fleet(&d, 1000, "id4").await;
        let criteria = criteria(95.0, 5.0);
        let c = campaign::create(
            &d,
            spec("big", "1%,10%,50%,100%", criteria),
            release(),
            Utc::now(),
        )
        .await
        .unwrap();
        assert_eq!(c.wave_sizes, [10, 90, 400, 500]);
        let status = campaign::status(d.db(), "big").await.unwrap();
        let wave_of: BTreeMap<String, usize> = status
            .vehicles
            .iter()
            .map(|v| (v.vin.clone(), v.wave))
            .collect();
        // In wave 3, one vehicle in ten fails its boot check (10% > 5%).
        let mut wave3 = 0;
        for car in &mut cars {
            if wave_of[&car.vin] == 3 {
                wave3 += 1;
                if wave3 % 10 == 0 {
                    car.behaviour = Behaviour::FailBoot;
                }
            }
        }
        // Everyone checks in, round after round, until the campaign stops running.
        let mut rounds = 0;
        while d.db().campaign("big").await.unwrap().unwrap().state == State::Running {
            assert!(rounds < 8, "still running after {rounds} rounds");
            for car in &mut cars {
                car.cycle(&d).await;
            }
            rounds += 1;
        }
        let c = d.db().campaign("big").await.unwrap().unwrap();
        assert_eq!(c.state, State::Halted);
        assert_eq!(c.wave, 2, "halted in wave 3");
        assert!(
            c.reason.as_deref().unwrap().contains("wave 3"),
            "{:?}",
            c.reason
        );
        let status = campaign::status(d.db(), "big").await.unwrap();
        for v in &status.vehicles {
            match v.wave {
                1 | 2 => assert_eq!(v.progress, Progress::Installed, "{}", v.vin),
                4 => assert_eq!(v.progress, Progress::Pending, "{} of wave 4", v.vin),
                _ => {}
            }
        }
        // Not one assignment was ever made for a wave-4 vehicle.
        let wave4: Vec<&String> = wave_of
            .iter()
            .filter(|(_, w)| **w == 4)
            .map(|(v, _)| v)
            .collect();
        assert_eq!(wave4.len(), 500);
        let all = d.db().assignments(None, None).await.unwrap();
        assert!(all.len() < 10_000, "the listing is complete");
        let instructed: std::collections::BTreeSet<&str> =
            all.iter().map(|a| a.vin.as_str()).collect();
        for vin in &wave4 {
            assert!(
                !instructed.contains(vin.as_str()),
                "{vin} of wave 4 was instructed"
            );
        }
        let counts = &status.waves[2].counts;
        eprintln!(
            "1,000 vehicles: halted after {rounds} rounds; wave 3: {:?}",
            counts.by_progress
        );
    })
    .await;
}

/// `daily HH:MM-HH:MM UTC` from `from` hours after `now` to `to` hours after it.
fn daily_window(now: chrono::DateTime<Utc>, from: i64, to: i64) -> String {
    let at = |h: i64| {
        (now + chrono::Duration::hours(h))
            .format("%H:00")
            .to_string()
    };
    format!("daily {}-{} UTC", at(from), at(to))
}

/// The maintenance window the director signed into `vin`'s instruction for `target`.
async fn signed_window(d: &Director, vin: &str, target: &str) -> Option<String> {
    let docs = d.documents(vin, Utc::now()).await.unwrap();
    let doc: Value = serde_json::from_str(&docs.targets.document).unwrap();
    doc["signed"]["targets"][target]["custom"]["maintenance_window"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vehicles_are_instructed_inside_their_maintenance_window_only() {
    common::with_sqlite(|url| async move {
        let (d, _dir) = director(&url).await;
        let cars = fleet(&d, 3, "id4").await;
        let now = Utc::now();
        let (closed, open) = (daily_window(now, 6, 7), daily_window(now, -1, 1));
        let label = |w: &str| {
            BTreeMap::from([(
                rampart_server::db::WINDOW_ATTRIBUTE.to_owned(),
                w.to_owned(),
            )])
        };
        d.db()
            .set_labels(&cars[0].vin, &label(&closed), &Default::default())
            .await
            .unwrap();
        d.db()
            .set_labels(&cars[1].vin, &label(&open), &Default::default())
            .await
            .unwrap();
        // Car 2 has no window of its own: the campaign's applies.
        let mut s = spec("windowed", "all", Criteria::default());
        s.window = Some(open.clone());
        campaign::create(&d, s, release(), now).await.unwrap();
        let target = "ivi/app-2.0.bin";
        assert!(
            instructions(&d, &cars[0].vin).await.is_empty(),
            "outside its window"
        );
        assert_eq!(
            signed_window(&d, &cars[1].vin, target).await.as_deref(),
            Some(open.as_str())
        );
        assert_eq!(
            signed_window(&d, &cars[2].vin, target).await.as_deref(),
            Some(open.as_str())
        );
        // Its window opens: the periodic judgement instructs it, with its window signed in.
        campaign::tick(&d, now + chrono::Duration::minutes(30)).await;
        assert!(
            instructions(&d, &cars[0].vin).await.is_empty(),
            "still closed"
        );
        // (The windows start on the hour: half past the hour six hours on is inside.)
        let hour = now - chrono::Duration::seconds(i64::from(now.minute() * 60 + now.second()));
        campaign::tick(&d, hour + chrono::Duration::minutes(6 * 60 + 30)).await;
        assert_eq!(
            signed_window(&d, &cars[0].vin, target).await.as_deref(),
            Some(closed.as_str())
        );
        campaign::cancel(&d, "windowed", "next test").await.unwrap();

        // A critical fix may override windows, and only a critical fix.
        let mut s = spec("urgent", "all", Criteria::default());
        s.override_windows = true;
        let e = campaign::create(&d, s.clone(), release(), now)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("critical"), "{e}");
        s.critical = true;
        campaign::create(&d, s, release(), now).await.unwrap();
        assert_eq!(instructions(&d, &cars[0].vin).await, [target]);
        assert_eq!(signed_window(&d, &cars[0].vin, target).await, None);
        // A window that does not parse is refused where it is set.
        let e = d
            .db()
            .set_labels(&cars[2].vin, &label("nights"), &Default::default())
            .await;
        assert!(e.is_ok(), "the storage layer stores; the API validates");
        let e =
            rampart_server::db::validate_labels(&label("nights"), &Default::default()).unwrap_err();
        assert!(e.to_string().contains("maintenance_window"), "{e}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_campaign_waits_and_a_passed_deadline_ends_it() {
    common::with_sqlite(|url| async move {
        let (d, _dir) = director(&url).await;
        let mut cars = fleet(&d, 3, "id4").await;
        let now = Utc::now();
        let criteria = criteria(100.0, 50.0);
        let mut s = spec("paused", "1,all", criteria);
        s.target.vins = cars.iter().map(|c| c.vin.clone()).collect();
        s.deadline = Some((now + chrono::Duration::hours(1)).to_rfc3339());
        campaign::create(&d, s, release(), now).await.unwrap();
        let c = campaign::pause(&d, "paused", "waiting for the hotline")
            .await
            .unwrap();
        assert_eq!(c.state, State::Paused);
        // The canary installs while the campaign is paused: no next wave.
        cars[0].cycle(&d).await;
        cars[0].cycle(&d).await;
        campaign::tick(&d, now).await;
        let c = d.db().campaign("paused").await.unwrap().unwrap();
        assert_eq!((c.state, c.wave), (State::Paused, 0));
        assert!(instructions(&d, &cars[1].vin).await.is_empty());
        // Resumed, it goes on at once.
        campaign::start(&d, "paused", now).await.unwrap();
        let c = d.db().campaign("paused").await.unwrap().unwrap();
        assert_eq!((c.state, c.wave), (State::Running, 1));
        assert_eq!(instructions(&d, &cars[1].vin).await, ["ivi/app-2.0.bin"]);
        // Car 1 installs; car 2 never checks in. The deadline passes: the campaign ends and
        // car 2's instruction is taken back.
        cars[1].cycle(&d).await;
        cars[1].cycle(&d).await;
        campaign::tick(&d, now + chrono::Duration::hours(2)).await;
        let c = d.db().campaign("paused").await.unwrap().unwrap();
        assert_eq!(c.state, State::Completed);
        assert!(
            c.reason.as_deref().unwrap().contains("deadline"),
            "{:?}",
            c.reason
        );
        assert!(instructions(&d, &cars[2].vin).await.is_empty());
        let p = by_progress(&d, "paused").await;
        assert_eq!(p["installed"].len(), 2);
        assert_eq!(p["withdrawn"], std::slice::from_ref(&cars[2].vin));
        let e = campaign::start(&d, "paused", now).await.unwrap_err();
        assert!(e.to_string().contains("is completed"), "{e}");
    })
    .await;
}

/// A wave larger than one batch of instructions (4,000 members): every ECU is instructed once,
/// with its own assignment linked to it; an operator's earlier instruction for one of them is
/// superseded; the director re-signs each vehicle's targets (including one it had signed
/// before); a second judgement finds every member claimed and makes nothing.
async fn wave_over_batches(url: String) {
    const FLEET: usize = 4_100;
    let (d, _dir) = director(&url).await;
    let cars = fleet(&d, FLEET, "id4").await;
    let first = &cars[0].vin;
    let last = &cars[FLEET - 1].vin;
    let manual = fleet::operator_assignment(first, "IVI", "ivi/app-1.5.bin", 1);
    d.db().create_assignment(&manual).await.unwrap();
    assert_eq!(instructions(&d, first).await, ["ivi/app-1.5.bin"]);
    assert!(instructions(&d, last).await.is_empty());
    let c = campaign::create(
        &d,
        spec("whole-fleet", "100%", criteria(95.0, 5.0)),
        release(),
        Utc::now(),
    )
    .await
    .unwrap();
    let pending = |all: Vec<rampart_server::db::Assignment>| -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for a in all {
            out.entry(a.vin).or_default().push(a.target);
        }
        out
    };
    let instructed = pending(d.db().assignments(None, Some("pending")).await.unwrap());
    assert_eq!(instructed.len(), FLEET);
    assert!(instructed.values().all(|t| t == &["ivi/app-2.0.bin"]));
    let superseded = d
        .db()
        .assignments(Some(first), Some("superseded"))
        .await
        .unwrap();
    assert_eq!(superseded.len(), 1);
    assert_eq!(superseded[0].target, "ivi/app-1.5.bin");
    assert_eq!(instructions(&d, first).await, ["ivi/app-2.0.bin"]);
    assert_eq!(instructions(&d, last).await, ["ivi/app-2.0.bin"]);
    let p = by_progress(&d, "whole-fleet").await;
    assert_eq!(p["instructed"].len(), FLEET, "{:?}", p.keys());
    // Judged again (another instance, the periodic judgement): nothing more is made.
    campaign::evaluate(&d, c.id, Utc::now()).await.unwrap();
    let again = d.db().assignments(None, Some("pending")).await.unwrap();
    assert_eq!(again.len(), FLEET);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_over_more_than_one_batch_instructs_each_ecu_once_on_sqlite() {
    common::with_sqlite(wave_over_batches).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_over_more_than_one_batch_instructs_each_ecu_once_on_postgres() {
    common::with_postgres(wave_over_batches).await;
}

/// Targeting reads the fleet without keys or hashes (`fleet_page`): it still leaves out
/// removed vehicles and ECUs that run the release (or something newer), chooses by tag and
/// hardware ID, and refuses an encrypted image for ECUs without an encryption key.
async fn targeting(url: String) {
    let (d, _dir) = director(&url).await;
    let mut cars = fleet(&d, 5, "id4").await;
    let db = d.db();
    db.set_labels(
        &cars[0].vin,
        &BTreeMap::from([("model".into(), "id4".into())]),
        &["beta".to_owned()].into(),
    )
    .await
    .unwrap();
    db.remove_vehicle(&cars[4].vin, "scrapped").await.unwrap();
    for (car, running, counter) in [(2, "ivi/app-2.0.bin", 2), (3, "ivi/app-9.bin", 9)] {
        let ivi = cars[car].ecus.iter_mut().find(|e| e.id == "IVI").unwrap();
        ivi.installed.filename = running.into();
        ivi.installed.release_counter = counter;
        cars[car].cycle(&d).await;
    }
    let vins = |status: campaign::CampaignStatus| {
        let mut v: Vec<String> = status.vehicles.into_iter().map(|v| v.vin).collect();
        v.sort();
        v
    };
    let mut s = spec("all", "all", Criteria::default());
    s.start = false;
    campaign::create(&d, s, release(), Utc::now())
        .await
        .unwrap();
    assert_eq!(
        vins(campaign::status(db, "all").await.unwrap()),
        [cars[0].vin.clone(), cars[1].vin.clone()]
    );
    let c = db.campaign("all").await.unwrap().unwrap();
    let log = db.campaign_log(c.id).await.unwrap();
    assert!(
        log[0].detail.contains("2 ECUs already up to date"),
        "{:?}",
        log[0].detail
    );
    campaign::cancel(&d, "all", "next").await.unwrap();

    let mut s = spec("beta", "all", Criteria::default());
    s.start = false;
    s.target.tags.insert("beta".into());
    s.target.hardware_ids.insert("tbox-hw".into());
    campaign::create(&d, s, release(), Utc::now())
        .await
        .unwrap();
    assert_eq!(
        vins(campaign::status(db, "beta").await.unwrap()),
        [cars[0].vin.clone()]
    );
    campaign::cancel(&d, "beta", "next").await.unwrap();

    let mut s = spec("bcm", "all", Criteria::default());
    s.target.hardware_ids.insert("bcm-hw".into());
    let e = campaign::create(&d, s, release(), Utc::now())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("target set is empty"), "{e}");

    let mut encrypted = release();
    encrypted[0].encrypted = true;
    let e = campaign::create(
        &d,
        spec("enc", "all", Criteria::default()),
        encrypted,
        Utc::now(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("has no encryption key registered"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeting_leaves_out_removed_and_up_to_date_and_chooses_by_tag_on_sqlite() {
    common::with_sqlite(targeting).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeting_leaves_out_removed_and_up_to_date_and_chooses_by_tag_on_postgres() {
    common::with_postgres(targeting).await;
}

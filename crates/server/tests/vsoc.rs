//! The V-SOC engine against the director, in process, without a browser: simulated vehicles
//! (real keys, signed manifests) roll out a campaign and report what they see; the
//! correlation rules open incidents, the responses halt campaigns and quarantine vehicles,
//! and a normal rollout of 1,000 vehicles opens none.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;
mod fleet;

use chrono::Utc;
use rampart_server::campaign::{self, CampaignSpec, Criteria, State, TargetSet};
use rampart_server::db::{Aggregate, NewEvent};
use rampart_server::director::Director;
use rampart_server::vsoc::{self, Kind, Recorded, VsocConfig};

use fleet::{director, fleet, image, instructions, Behaviour, Car};

fn spec(name: &str, waves: &str, max_failure_pct: f64) -> CampaignSpec {
    CampaignSpec {
        name: name.into(),
        images: vec!["ivi/app-2.0.bin".into()],
        target: TargetSet::default(),
        waves: waves.into(),
        criteria: Criteria {
            min_success_pct: 90.0,
            max_failure_pct,
            soak_seconds: 0,
        },
        critical: false,
        rxswin: None,
        window: None,
        override_windows: false,
        deadline: None,
        start: true,
    }
}

/// A director, `cars` cars of `model`, and a running campaign `name` shipping
/// ivi/app-2.0.bin to all of them in one wave (halting past `max_failure_pct`).
async fn spring_campaign(
    url: &str,
    cars: usize,
    model: &str,
    name: &str,
    max_failure_pct: f64,
) -> (Director, tempfile::TempDir, Vec<Car>) {
    let (d, dir) = director(url).await;
    let cars = fleet(&d, cars, model).await;
    campaign::create(
        &d,
        spec(name, "100%", max_failure_pct),
        vec![image("ivi/app-2.0.bin", "ivi-hw", 2)],
        Utc::now(),
    )
    .await
    .unwrap();
    (d, dir, cars)
}

async fn opened(d: &Director, config: &VsocConfig) -> Vec<(Kind, String, i64)> {
    vsoc::evaluate(d, config, Utc::now())
        .await
        .unwrap()
        .into_iter()
        .filter_map(|(r, f)| match r {
            Recorded::Opened(id) => Some((f.kind, f.subject, id)),
            _ => None,
        })
        .collect()
}

async fn round(d: &Director, cars: &mut [Car]) {
    for car in cars.iter_mut() {
        car.cycle(d).await;
    }
}

/// Three cars find the image tampered with (a hostile mirror): one fleet incident about the
/// image; the campaign shipping it is halted by the V-SOC (its own threshold would not have
/// halted it), pending instructions are withdrawn, the audit log says who did it; the same
/// evidence does not open a second incident, nor a new one once resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_image_seen_by_three_cars_halts_the_campaign_that_ships_it() {
    common::with_sqlite(a_tampered_image_seen_by_three_cars_halts_the_campaign_that_ships_it_on)
        .await;
}

async fn a_tampered_image_seen_by_three_cars_halts_the_campaign_that_ships_it_on(url: String) {
    let (d, _dir, mut cars) = spring_campaign(&url, 20, "id4", "spring", 50.0).await;
    let config = VsocConfig::default();
    for car in &mut cars[..3] {
        car.behaviour = Behaviour::Tampered;
    }
    // Two cars first: below the fleet threshold (3), nothing opens.
    cars[0].cycle(&d).await;
    cars[0].cycle(&d).await;
    cars[1].cycle(&d).await;
    cars[1].cycle(&d).await;
    assert_eq!(opened(&d, &config).await, vec![]);
    assert_eq!(
        d.db().campaign("spring").await.unwrap().unwrap().state,
        State::Running
    );
    cars[2].cycle(&d).await;
    cars[2].cycle(&d).await;
    let found = opened(&d, &config).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let (kind, subject, id) = found[0].clone();
    assert_eq!(
        (kind, subject.as_str()),
        (Kind::FleetAttack, "hash-mismatch")
    );

    let incident = vsoc::store::incident(d.db(), id).await.unwrap();
    assert_eq!(incident.severity, "high");
    assert_eq!(incident.state, "open");
    assert_eq!(incident.image.as_deref(), Some("ivi/app-2.0.bin"));
    assert_eq!(
        incident.vehicles,
        vec![
            cars[0].vin.clone(),
            cars[1].vin.clone(),
            cars[2].vin.clone()
        ]
    );
    assert!(
        incident.events.iter().all(|e| e.rule == "hash-mismatch"),
        "{:?}",
        incident.events
    );

    // The response: halted by the V-SOC, instructions taken back, audited.
    let c = d.db().campaign("spring").await.unwrap().unwrap();
    assert_eq!(c.state, State::Halted);
    assert!(
        c.reason
            .as_deref()
            .unwrap()
            .contains(&format!("incident #{id}")),
        "{:?}",
        c.reason
    );
    assert!(
        instructions(&d, &cars[10].vin).await.is_empty(),
        "a car not yet installing keeps no instruction"
    );
    let audit = rampart_server::audit::entries(d.db(), Some("v-soc"), 10)
        .await
        .unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "campaign.halt" && e.subject == "spring"),
        "{audit:?}"
    );

    // Nothing new: the same incident, updated.
    let again = vsoc::evaluate(&d, &config, Utc::now()).await.unwrap();
    assert!(
        again.iter().all(|(r, _)| *r == Recorded::Updated(id)),
        "{again:?}"
    );
    // Resolved: the same evidence does not open it again.
    vsoc::set_incident_state(d.db(), id, "resolved", "analyst")
        .await
        .unwrap();
    let after = vsoc::evaluate(&d, &config, Utc::now() + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert!(
        after.iter().all(|(r, _)| *r == Recorded::Skipped),
        "{after:?}"
    );
    let log = rampart_server::audit::entries(d.db(), Some("analyst"), 10)
        .await
        .unwrap();
    assert_eq!(log[0].action, "incident.resolve");
}

/// Without the V-SOC's response (`halt_campaigns = false`) the same evidence leaves the
/// campaign running: the response, not the campaign's own threshold, is what halted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_response_the_campaign_keeps_running() {
    common::with_sqlite(without_the_response_the_campaign_keeps_running_on).await;
}

async fn without_the_response_the_campaign_keeps_running_on(url: String) {
    let (d, _dir, mut cars) = spring_campaign(&url, 20, "id4", "spring", 50.0).await;
    for car in &mut cars[..3] {
        car.behaviour = Behaviour::Tampered;
        car.cycle(&d).await;
        car.cycle(&d).await;
    }
    let config = VsocConfig {
        halt_campaigns: false,
        ..VsocConfig::default()
    };
    assert_eq!(opened(&d, &config).await.len(), 1);
    assert_eq!(
        d.db().campaign("spring").await.unwrap().unwrap().state,
        State::Running
    );
}

/// A vehicle rejecting metadata again and again is a vehicle incident; quarantined (here
/// automatically), the director signs it no instructions until it is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_rejecting_metadata_is_quarantined_and_released() {
    common::with_sqlite(a_vehicle_rejecting_metadata_is_quarantined_and_released_on).await;
}

async fn a_vehicle_rejecting_metadata_is_quarantined_and_released_on(url: String) {
    let (d, _dir, mut cars) = spring_campaign(&url, 3, "id4", "c", 100.0).await;
    let vin = cars[0].vin.clone();
    assert_eq!(cars[0].cycle(&d).await, vec!["ivi/app-2.0.bin".to_owned()]);
    for i in 0..5 {
        d.event(
            "vehicle",
            "rollback",
            Some(&vin),
            Some("TBOX"),
            None,
            &format!("rollback: director timestamp version {i} below 9"),
        )
        .await;
    }
    let config = VsocConfig {
        quarantine_automatically: true,
        ..VsocConfig::default()
    };
    let found = opened(&d, &config).await;
    assert_eq!(
        found
            .iter()
            .map(|f| (f.0, f.1.as_str()))
            .collect::<Vec<_>>(),
        vec![(Kind::VehicleRejecting, vin.as_str())]
    );
    let v = d.db().vehicle(&vin).await.unwrap().unwrap();
    assert!(v.quarantined_at.is_some());
    assert!(
        instructions(&d, &vin).await.is_empty(),
        "quarantined: no instructions"
    );
    assert_eq!(
        instructions(&d, &cars[1].vin).await,
        vec!["ivi/app-2.0.bin".to_owned()],
        "the others keep theirs"
    );
    // Quarantining twice is refused; releasing brings the instruction back.
    assert!(vsoc::quarantine(&d, &vin, "analyst", "again")
        .await
        .is_err());
    vsoc::release(&d, &vin, "analyst", "false alarm: a test bench")
        .await
        .unwrap();
    assert_eq!(
        instructions(&d, &vin).await,
        vec!["ivi/app-2.0.bin".to_owned()]
    );
    let audit = rampart_server::audit::entries(d.db(), None, 10)
        .await
        .unwrap();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str()))
        .collect();
    assert!(
        actions.contains(&("v-soc", "vehicle.quarantine")),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("analyst", "vehicle.release")),
        "{actions:?}"
    );
}

/// Refusals from one address (rate limiting, certificates) and signature failures across
/// vehicles: an address incident and a suspected key compromise with its runbook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abusive_address_and_a_suspected_key_compromise() {
    common::with_sqlite(an_abusive_address_and_a_suspected_key_compromise_on).await;
}

async fn an_abusive_address_and_a_suspected_key_compromise_on(url: String) {
    let (d, _dir) = director(&url).await;
    let db = d.db();
    for i in 0..60 {
        let e = NewEvent {
            source: "server",
            rule: if i % 2 == 0 {
                "rate-limited"
            } else {
                "client-certificate-refused"
            },
            vin: None,
            ecu_id: None,
            remote: Some("198.51.100.9:40000"),
            detail: &format!("refusal {i}"),
        };
        db.record_event_at(&e, Utc::now(), Aggregate::Identical)
            .await
            .unwrap();
    }
    for vin in ["WVWZZZ1JZXW000001", "WVWZZZ1JZXW000002"] {
        let e = NewEvent {
            source: "vehicle",
            rule: "bad-signature",
            vin: Some(vin),
            ecu_id: Some("TBOX"),
            remote: Some("10.1.0.1:5000"),
            detail: "bad-signature: director targets: signature by key 4f2a does not verify",
        };
        db.record_event_at(&e, Utc::now(), Aggregate::Identical)
            .await
            .unwrap();
    }
    let found = opened(&d, &VsocConfig::default()).await;
    let kinds: Vec<(Kind, &str)> = found.iter().map(|f| (f.0, f.1.as_str())).collect();
    assert!(
        kinds.contains(&(Kind::AddressAbuse, "198.51.100.9")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(Kind::KeyCompromise, "director")),
        "{kinds:?}"
    );
    let key = found.iter().find(|f| f.0 == Kind::KeyCompromise).unwrap();
    let i = vsoc::store::incident(db, key.2).await.unwrap();
    assert_eq!(i.severity, "critical");
    assert!(i
        .runbook
        .unwrap()
        .contains("rampart rotate --repository director"));
}

/// A normal rollout of 1,000 vehicles on PostgreSQL — two waves, every car installs, some
/// ordinary noise — opens no incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_normal_rollout_of_a_thousand_vehicles_opens_no_incident_on_postgres() {
    common::with_postgres(|url| async move {
        let (d, _dir) = director(&url).await;
        let mut cars = fleet(&d, 1000, "id4").await;
        campaign::create(
            &d,
            spec("big", "10%,100%", 5.0),
            vec![image("ivi/app-2.0.bin", "ivi-hw", 2)],
            Utc::now(),
        )
        .await
        .unwrap();
        // Noise of a normal day: a few cars behind a NAT hit the rate limit once, one car
        // reports a boot failure it recovered from.
        for i in 0..5 {
            d.event(
                "server",
                "rate-limited",
                None,
                None,
                Some(&format!("10.9.0.{i}:1000")),
                "burst",
            )
            .await;
        }
        cars[7].behaviour = Behaviour::FailBoot;
        let config = VsocConfig::default();
        let mut rounds = 0;
        while d.db().campaign("big").await.unwrap().unwrap().state == State::Running {
            assert!(rounds < 6, "still running after {rounds} rounds");
            round(&d, &mut cars).await;
            assert_eq!(opened(&d, &config).await, vec![], "round {rounds}");
            rounds += 1;
        }
        assert_eq!(
            d.db().campaign("big").await.unwrap().unwrap().state,
            State::Completed
        );
        assert_eq!(
            vsoc::store::incidents(d.db(), None, None, 10)
                .await
                .unwrap()
                .len(),
            0
        );
    })
    .await;
}

/// The webhook: a SIEM that is down at first (500) gets the incident later, signed; the
/// delivery waits out its backoff, keeps its ID across retries, and is not sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_reach_a_siem_webhook_signed_after_it_comes_back() {
    common::with_sqlite(incidents_reach_a_siem_webhook_signed_after_it_comes_back_on).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_reach_a_siem_webhook_signed_after_it_comes_back_on_postgres() {
    common::with_postgres(incidents_reach_a_siem_webhook_signed_after_it_comes_back_on).await;
}

async fn incidents_reach_a_siem_webhook_signed_after_it_comes_back_on(url: String) {
    use axum::http::{HeaderMap, StatusCode};
    use std::sync::{Arc, Mutex};
    use vsoc::export::{self, ExportConfig};

    type Seen = Arc<Mutex<Vec<(HeaderMap, String)>>>;
    let seen: Seen = Arc::default();
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let app = axum::Router::new().route(
        "/siem",
        axum::routing::post({
            let (seen, up) = (seen.clone(), up.clone());
            move |headers: HeaderMap, body: String| async move {
                seen.lock().unwrap().push((headers, body));
                if up.load(std::sync::atomic::Ordering::SeqCst) {
                    StatusCode::NO_CONTENT
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (d, _dir) = director(&url).await;
    for (i, vin) in ["WVWZZZ1JZXW000001", "WVWZZZ1JZXW000002"]
        .into_iter()
        .enumerate()
    {
        let e = NewEvent {
            source: "vehicle",
            rule: "bad-signature",
            vin: Some(vin),
            ecu_id: Some("TBOX"),
            remote: Some("10.1.0.1:5000"),
            detail: &format!("bad-signature: image targets: signature by key {i} does not verify"),
        };
        d.db()
            .record_event_at(&e, Utc::now(), Aggregate::Identical)
            .await
            .unwrap();
    }
    let found = opened(&d, &VsocConfig::default()).await;
    assert_eq!(found.len(), 1);
    let secret = b"a shared secret of the SIEM".to_vec();
    let config = ExportConfig {
        webhook_url: format!("http://{addr}/siem"),
        ..ExportConfig::default()
    };
    let client = reqwest::Client::new();
    let now = Utc::now();
    // Down: one attempt, then it waits (2 s backoff); nothing is lost.
    assert_eq!(
        export::deliver(d.db(), &config, &client, &secret, now)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        export::deliver(d.db(), &config, &client, &secret, now)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "not retried before its backoff"
    );
    // Back: delivered once, with the same delivery ID, signed over timestamp and body.
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    let later = now + chrono::Duration::seconds(3);
    assert_eq!(
        export::deliver(d.db(), &config, &client, &secret, later)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        export::deliver(d.db(), &config, &client, &secret, later)
            .await
            .unwrap(),
        0
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let (headers, body) = &seen[1];
    assert_eq!(
        headers["x-rampart-delivery"],
        seen[0].0["x-rampart-delivery"]
    );
    let timestamp: i64 = headers["x-rampart-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(timestamp, later.timestamp());
    assert_eq!(
        headers["x-rampart-signature"].to_str().unwrap(),
        export::signature(&secret, timestamp, body.as_bytes())
    );
    assert_ne!(
        headers["x-rampart-signature"].to_str().unwrap(),
        export::signature(b"another secret", timestamp, body.as_bytes())
    );
    let incident: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(incident["type"], "incident");
    assert_eq!(incident["kind"], "key-compromise");
    // New security events go out in batches after the incident.
    assert_eq!(export::enqueue_events(d.db(), &config).await.unwrap(), 2);
    assert_eq!(
        export::enqueue_events(d.db(), &config).await.unwrap(),
        0,
        "once"
    );
    assert_eq!(
        export::deliver(d.db(), &config, &client, &secret, later)
            .await
            .unwrap(),
        1
    );
    // Retention: deliveries older than the events' age limit go, except the newest batch of
    // events, whose cursor says where the next batch starts (nothing is sent twice); one not
    // yet delivered stays.
    let outbox = || async { d.db().count("webhook_outbox").await.unwrap() };
    for vin in ["WVWZZZ1JZXW000003", "WVWZZZ1JZXW000004"] {
        record_event(&d, vin).await;
        assert_eq!(export::enqueue_events(d.db(), &config).await.unwrap(), 1);
    }
    assert_eq!(outbox().await, 4, "the incident, three batches of events");
    let month = std::time::Duration::from_secs(30 * 86_400);
    assert_eq!(
        export::prune(d.db(), &config, now, month).await.unwrap(),
        0,
        "nothing is a month old"
    );
    let in_two_months = now + chrono::Duration::days(60);
    let prune = || export::prune(d.db(), &config, in_two_months, month);
    assert_eq!(
        prune().await.unwrap(),
        2,
        "the incident and the first batch"
    );
    assert_eq!(outbox().await, 2, "two batches not delivered yet");
    assert_eq!(
        export::deliver(d.db(), &config, &client, &secret, later)
            .await
            .unwrap(),
        2
    );
    assert_eq!(prune().await.unwrap(), 1, "all but the newest batch");
    assert_eq!(
        export::enqueue_events(d.db(), &config).await.unwrap(),
        0,
        "nothing is queued again"
    );
    // And the same as JSON lines, for a SIEM that pulls.
    let lines = export::json_lines(d.db(), 0, 100).await.unwrap();
    let types: Vec<String> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(types, ["incident", "event", "event", "event", "event"]);
}

/// Records a security event of `vin`.
async fn record_event(d: &Director, vin: &str) {
    let e = NewEvent {
        source: "vehicle",
        rule: "rollback",
        vin: Some(vin),
        ecu_id: Some("TBOX"),
        remote: Some("10.1.0.2:5000"),
        detail: "rollback: director timestamp version 3 is below the trusted 4",
    };
    d.db()
        .record_event_at(&e, Utc::now(), Aggregate::Identical)
        .await
        .unwrap();
}

/// A car instructed by a running campaign that stops checking in is a silent-vehicle
/// incident once `silent_after_secs` passed; the cars that checked in since are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_car_silent_during_a_campaign_is_an_incident() {
    common::with_sqlite(a_car_silent_during_a_campaign_is_an_incident_on).await;
}

async fn a_car_silent_during_a_campaign_is_an_incident_on(url: String) {
    let (d, _dir, mut cars) = spring_campaign(&url, 3, "id4", "c", 100.0).await;
    // Two cars check in after their instruction (and install); the third never does.
    cars[0].behaviour = Behaviour::FailBoot;
    cars[0].cycle(&d).await;
    cars[1].behaviour = Behaviour::FailBoot;
    cars[1].cycle(&d).await;
    let config = |silent_after_secs| VsocConfig {
        thresholds: vsoc::Thresholds {
            silent_after_secs,
            ..vsoc::Thresholds::default()
        },
        ..VsocConfig::default()
    };
    assert_eq!(
        opened(&d, &config(3600)).await,
        vec![],
        "not silent long enough"
    );
    // Two hours pass since the instructions (moved back in the database): the cars that
    // checked in since are heard from; the third is silent.
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let two_hours_ago = (Utc::now() - chrono::Duration::seconds(7200))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    sqlx::query("UPDATE campaign_members SET instructed_at = $1")
        .bind(&two_hours_ago)
        .execute(&pool)
        .await
        .unwrap();
    let found = opened(&d, &config(3600)).await;
    let silent: Vec<&str> = found
        .iter()
        .filter(|f| f.0 == Kind::SilentVehicle)
        .map(|f| f.1.as_str())
        .collect();
    assert_eq!(silent, vec![cars[2].vin.as_str()], "{found:?}");
}

/// Manifests the server refused as replays from many vehicles open a fleet incident, but it
/// is about the vehicles or the network, not about an image: the campaign running meanwhile
/// is not halted and no instruction is withdrawn. (It halted the campaign when any image the
/// vehicles were told to install was taken for the incident's image.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_across_the_fleet_halt_no_campaign() {
    common::with_sqlite(replays_across_the_fleet_halt_no_campaign_on).await;
}

async fn replays_across_the_fleet_halt_no_campaign_on(url: String) {
    let (d, _dir, cars) = spring_campaign(&url, 20, "id9", "spring", 50.0).await;
    let pending = d
        .db()
        .assignments(None, Some("pending"))
        .await
        .unwrap()
        .len();
    assert!(pending >= 20, "{pending} instructions pending");
    for car in &cars[..8] {
        let detail = format!(
            "manifest of {}: counter 3 is not above the last accepted 3 (replay)",
            car.vin
        );
        let e = NewEvent {
            source: "server",
            rule: "replay",
            vin: Some(&car.vin),
            ecu_id: None,
            remote: Some("10.1.0.1:5000"),
            detail: &detail,
        };
        d.db()
            .record_event_at(&e, Utc::now(), Aggregate::Identical)
            .await
            .unwrap();
    }
    let found = opened(&d, &VsocConfig::default()).await;
    assert!(
        found
            .iter()
            .any(|f| f.0 == Kind::FleetAttack && f.1 == "replay"),
        "{found:?}"
    );
    assert_eq!(
        d.db().campaign("spring").await.unwrap().unwrap().state,
        State::Running
    );
    assert_eq!(
        d.db()
            .assignments(None, Some("pending"))
            .await
            .unwrap()
            .len(),
        pending
    );
}

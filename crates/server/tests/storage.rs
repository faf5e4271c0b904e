//! The storage suite: every test of `rampart_server::db::Db` is written once and generated
//! twice, `sqlite::NAME` (a temporary file) and `postgres::NAME` (a fresh database on the
//! server of `RAMPART_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/postgres`;
//! start it with `scripts/postgres-up`). PostgreSQL tests fail when the server is unreachable,
//! unless `RAMPART_SKIP_POSTGRES=1`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use rampart_core::key::KeyScheme;
use rampart_core::rule::Rule;
use rampart_core::signer::{InMemorySigner, Signer};
use rampart_server::db::{
    Aggregate, Assignment, Backend, Checkin, Db, DirectorRoles, ImageKey, Installed, NewEcu,
    NewEvent, NewVehicle, ReportUpdate, StoredRole, Vehicle, INSTRUCTIONS_CHANGED, TABLES,
};
use rampart_server::Error;
use serde_json::json;
use tokio::sync::Barrier;

/// Generates `sqlite::CASE` and `postgres::CASE` for every `CASE(url)` given.
macro_rules! storage_suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    crate::common::with_sqlite(super::$case).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    crate::common::with_postgres(super::$case).await
                }
            )*
        }
    };
}

storage_suite!(
    migrations_are_idempotent,
    register_and_read_back_vehicle,
    duplicate_vehicle_is_a_conflict_and_changes_nothing,
    failed_registration_leaves_nothing_behind,
    a_removed_vehicle_is_kept_for_audit_and_out_of_the_fleet,
    vehicles_come_whole_a_page_at_a_time,
    attributes_and_tags_are_stored_and_replaced,
    assignment_supersedes_pending_ones_for_the_same_ecu,
    checkin_moves_counter_forward_and_refuses_replays,
    counters_beyond_the_database_integer_are_refused_not_clamped,
    checkin_completes_only_matching_assignments,
    concurrent_checkins_with_one_counter_accept_one,
    stale_ecu_report_in_an_accepted_checkin_is_not_stored,
    quiet_checkins_race_once_refuse_replays_and_drop_stale_reports,
    checkins_arriving_together_are_each_decided_and_stored_when_answered,
    director_roles_read_together_reach_their_own_vehicle,
    director_roles_replace_only_from_the_version_read,
    a_quiet_checkin_reads_the_director_documents_it_leaves_current,
    concurrent_director_role_replace_has_one_winner,
    instruction_changes_mark_director_targets_and_fence_stale_writers,
    security_events_filter_and_limit,
    identical_events_within_the_window_are_counted_on_one_row,
    events_over_their_rate_are_counted_per_address_and_rule,
    retention_prunes_old_rows_and_keeps_the_newest,
    manifest_retention_prunes_quiet_ones_and_keeps_what_changed_something,
    revocations_match_by_vin_or_serial,
    image_keys_store_replace_read,
    expire_director_roles_marks_every_document,
    count_only_knows_our_tables,
);

// ---------------------------------------------------------------------------------------
// Fixtures

async fn connect(url: &str) -> Db {
    let db = Db::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    let expected = if url.starts_with("sqlite:") {
        Backend::Sqlite
    } else {
        Backend::Postgres
    };
    assert_eq!(db.backend(), expected);
    db
}

fn public_key() -> serde_json::Value {
    let signer = InMemorySigner::generate(KeyScheme::Ed25519).unwrap();
    serde_json::to_value(signer.public_key()).unwrap()
}

fn new_vehicle(vin: &str) -> NewVehicle {
    NewVehicle {
        vin: vin.to_owned(),
        primary_ecu: "TBOX-1".into(),
        ecus: vec![
            NewEcu {
                ecu_id: "TBOX-1".into(),
                hardware_id: "tbox-hw".into(),
                public_key: public_key(),
                encryption_key: None,
                verification: "full".into(),
            },
            NewEcu {
                ecu_id: "IVI-1".into(),
                hardware_id: "ivi-hw".into(),
                public_key: public_key(),
                encryption_key: Some("ab".repeat(32)),
                verification: "partial".into(),
            },
        ],
        attributes: Default::default(),
        tags: Default::default(),
    }
}

fn hashes(tag: &str) -> serde_json::Value {
    json!({ "sha256": format!("{tag:0>64}"), "sha512": format!("{tag:0>128}") })
}

fn assignment(vin: &str, ecu: &str, target: &str, release_counter: u64) -> Assignment {
    Assignment {
        id: 0,
        vin: vin.to_owned(),
        ecu_id: ecu.to_owned(),
        target: target.to_owned(),
        length: 1000 + release_counter,
        hashes: hashes(target.len().to_string().as_str()),
        release_counter,
        encrypt: ecu == "IVI-1",
        status: "pending".into(),
        created_at: String::new(),
        completed_at: None,
        last_error: None,
        maintenance_window: None,
    }
}

/// What an ECU reports when it runs exactly what `a` asks for.
fn installed_as(a: &Assignment) -> Installed {
    Installed {
        target: a.target.clone(),
        length: a.length,
        hashes: a.hashes.clone(),
        release_counter: a.release_counter,
    }
}

fn report(ecu: &str, installed: Installed, counter: u64) -> ReportUpdate {
    ReportUpdate {
        ecu_id: ecu.to_owned(),
        installed,
        report_counter: counter,
    }
}

fn checkin<'a>(vin: &'a str, counter: u64, reports: Vec<ReportUpdate>) -> Checkin<'a> {
    Checkin {
        vin,
        counter,
        nonce: "00ff",
        document: "{\"signed\":{},\"signatures\":[]}",
        reports,
        remote: None,
        events: Vec::new(),
        progress: Vec::new(),
        update_failures: false,
    }
}

fn role(name: &str, version: u64, tag: &str) -> StoredRole {
    StoredRole {
        role: name.to_owned(),
        version,
        expires_at: "2099-01-01T00:00:00Z".into(),
        content_digest: format!("digest-{tag}"),
        document: format!("{{\"role\":\"{name}\",\"version\":{version},\"by\":\"{tag}\"}}"),
    }
}

/// Registers `count` vehicles named `PREFIX00`, `PREFIX01`, …; returns their VINs.
async fn register_fleet(db: &Db, prefix: &str, count: usize) -> Vec<String> {
    let vins: Vec<String> = (0..count).map(|i| format!("{prefix}{i:02}")).collect();
    for vin in &vins {
        db.register_vehicle(&new_vehicle(vin)).await.unwrap();
    }
    vins
}

async fn vehicle(db: &Db, vin: &str) -> Vehicle {
    db.vehicle(vin).await.unwrap().expect("vehicle registered")
}

fn is_rfc3339(s: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

/// Row counts of every table, to show that a refused write changed nothing.
async fn counts(db: &Db) -> Vec<(&'static str, u64)> {
    let mut out = Vec::new();
    for table in TABLES {
        out.push((table, db.count(table).await.unwrap()));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Cases

async fn migrations_are_idempotent(url: String) {
    let first = connect(&url).await;
    first.ping().await.unwrap();
    first
        .register_vehicle(&new_vehicle("VIN-MIGRATE"))
        .await
        .unwrap();
    // Connecting again runs the migrator again: nothing to do, nothing lost.
    let second = connect(&url).await;
    let third = connect(&url).await;
    assert_eq!(second.list_vins().await.unwrap(), vec!["VIN-MIGRATE"]);
    assert_eq!(third.count("ecus").await.unwrap(), 2);
    assert_eq!(
        vehicle(&first, "VIN-MIGRATE").await,
        vehicle(&third, "VIN-MIGRATE").await
    );
}

async fn register_and_read_back_vehicle(url: String) {
    let db = connect(&url).await;
    assert_eq!(db.vehicle("VIN-1").await.unwrap(), None);
    let new = new_vehicle("VIN-1");
    db.register_vehicle(&new).await.unwrap();
    db.register_vehicle(&new_vehicle("VIN-0")).await.unwrap();

    let v = vehicle(&db, "VIN-1").await;
    assert_eq!(v.vin, "VIN-1");
    assert_eq!(v.primary_ecu, "TBOX-1");
    assert!(is_rfc3339(&v.created_at), "{}", v.created_at);
    assert_eq!(v.last_manifest_counter, None);
    assert_eq!(v.last_seen, None);
    // ECUs come back ordered by ID, every field as registered, nothing installed yet.
    let ids: Vec<&str> = v.ecus.iter().map(|e| e.ecu_id.as_str()).collect();
    assert_eq!(ids, ["IVI-1", "TBOX-1"]);
    for ecu in &v.ecus {
        let registered = new.ecus.iter().find(|e| e.ecu_id == ecu.ecu_id).unwrap();
        assert_eq!(ecu.hardware_id, registered.hardware_id);
        assert_eq!(ecu.public_key, registered.public_key);
        assert_eq!(ecu.encryption_key, registered.encryption_key);
        assert_eq!(ecu.verification, registered.verification);
        assert_eq!(ecu.installed, None);
        assert_eq!(ecu.last_report_counter, None);
    }
    assert_eq!(db.list_vins().await.unwrap(), vec!["VIN-0", "VIN-1"]);
    assert_eq!(db.count("vehicles").await.unwrap(), 2);
    assert_eq!(db.count("ecus").await.unwrap(), 4);
}

async fn duplicate_vehicle_is_a_conflict_and_changes_nothing(url: String) {
    let db = connect(&url).await;
    db.register_vehicle(&new_vehicle("VIN-DUP")).await.unwrap();
    let before = (vehicle(&db, "VIN-DUP").await, counts(&db).await);
    let mut again = new_vehicle("VIN-DUP");
    again.primary_ecu = "OTHER".into();
    again.ecus[0].ecu_id = "OTHER".into();
    match db.register_vehicle(&again).await {
        Err(Error::Conflict(msg)) => assert!(msg.contains("VIN-DUP"), "{msg}"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!((vehicle(&db, "VIN-DUP").await, counts(&db).await), before);
}

async fn failed_registration_leaves_nothing_behind(url: String) {
    let db = connect(&url).await;
    // The same ECU twice: the second insert fails, and the vehicle must not stay half-made.
    let mut bad = new_vehicle("VIN-HALF");
    bad.ecus[1].ecu_id = bad.ecus[0].ecu_id.clone();
    assert!(db.register_vehicle(&bad).await.is_err());
    assert_eq!(db.vehicle("VIN-HALF").await.unwrap(), None);
    assert_eq!(db.count("vehicles").await.unwrap(), 0);
    assert_eq!(db.count("ecus").await.unwrap(), 0);
    // And the VIN is still free.
    db.register_vehicle(&new_vehicle("VIN-HALF")).await.unwrap();
}

async fn attributes_and_tags_are_stored_and_replaced(url: String) {
    let db = connect(&url).await;
    let mut v = new_vehicle("VIN-L");
    v.attributes.insert("model".into(), "id4".into());
    v.tags.insert("fleet-a".into());
    db.register_vehicle(&v).await.unwrap();
    let stored = db.vehicle("VIN-L").await.unwrap().unwrap();
    assert_eq!(stored.attributes, v.attributes);
    assert_eq!(stored.tags, v.tags);
    let attributes = [("region".to_owned(), "eu".to_owned())].into();
    db.set_labels("VIN-L", &attributes, &Default::default())
        .await
        .unwrap();
    let stored = db.vehicle("VIN-L").await.unwrap().unwrap();
    assert_eq!(stored.attributes, attributes);
    assert!(stored.tags.is_empty());
    assert!(matches!(
        db.set_labels("VIN-NONE", &attributes, &Default::default())
            .await,
        Err(Error::NotFound(_))
    ));
}

async fn vehicles_come_whole_a_page_at_a_time(url: String) {
    let db = connect(&url).await;
    for vin in ["VIN-P3", "VIN-P1", "VIN-P2", "VIN-P4"] {
        db.register_vehicle(&new_vehicle(vin)).await.unwrap();
    }
    db.remove_vehicle("VIN-P4", "scrapped").await.unwrap();
    let first = db.vehicles("", 2).await.unwrap();
    let vins: Vec<&str> = first.iter().map(|v| v.vin.as_str()).collect();
    assert_eq!(vins, ["VIN-P1", "VIN-P2"]);
    assert!(first.iter().all(|v| v.ecus.len() == 2), "{first:?}");
    assert_eq!(first[0], db.vehicle("VIN-P1").await.unwrap().unwrap());
    let rest = db.vehicles("VIN-P2", 10).await.unwrap();
    let vins: Vec<&str> = rest.iter().map(|v| v.vin.as_str()).collect();
    assert_eq!(vins, ["VIN-P3"], "the removed VIN-P4 is left out");
}

async fn a_removed_vehicle_is_kept_for_audit_and_out_of_the_fleet(url: String) {
    let db = connect(&url).await;
    db.register_vehicle(&new_vehicle("VIN-GONE")).await.unwrap();
    db.register_vehicle(&new_vehicle("VIN-STAYS"))
        .await
        .unwrap();
    let pending = db
        .create_assignment(&assignment("VIN-GONE", "TBOX-1", "tbox/fw-1.bin", 1))
        .await
        .unwrap();
    let at = db.remove_vehicle("VIN-GONE", "scrapped").await.unwrap();
    assert_eq!(db.list_vins().await.unwrap(), ["VIN-STAYS"]);
    let kept = db
        .vehicle("VIN-GONE")
        .await
        .unwrap()
        .expect("kept for audit");
    assert_eq!(kept.removed_at.as_deref(), Some(at.as_str()));
    assert_eq!(kept.removed_reason.as_deref(), Some("scrapped"));
    assert_eq!(kept.ecus.len(), 2);
    let statuses: Vec<(i64, String)> = db
        .assignments(Some("VIN-GONE"), None)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.id, a.status))
        .collect();
    assert_eq!(statuses, [(pending, "cancelled".to_owned())]);
    // Its manifests are not taken, whichever way they are stored (a server that kept its
    // keys verifies first and learns of the removal here): the refusal names the removal.
    let quiet = checkin("VIN-GONE", 1, vec![]);
    let mut with_event = checkin("VIN-GONE", 2, vec![]);
    with_event.events = vec![NewEvent {
        source: "vehicle",
        rule: "bad-signature",
        vin: Some("VIN-GONE"),
        ecu_id: Some("ECU-1"),
        remote: None,
        detail: "indicator",
    }];
    for c in [quiet, with_event] {
        let refused = db.record_checkin(&c).await.unwrap_err();
        assert_eq!(refused.rule(), Rule::VehicleRemoved, "{refused}");
        assert!(refused.to_string().contains("scrapped"), "{refused}");
    }
    assert_eq!(vehicle(&db, "VIN-GONE").await.last_manifest_counter, None);
    match db.remove_vehicle("VIN-GONE", "again").await {
        Err(Error::Conflict(m)) => assert!(m.contains("already removed"), "{m}"),
        other => panic!("{other:?}"),
    }
    match db.register_vehicle(&new_vehicle("VIN-GONE")).await {
        Err(Error::Conflict(m)) => assert!(m.contains("was removed"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        db.remove_vehicle("VIN-NEVER", "x").await,
        Err(Error::NotFound(_))
    ));
}

async fn assignment_supersedes_pending_ones_for_the_same_ecu(url: String) {
    let db = connect(&url).await;
    db.register_vehicle(&new_vehicle("VIN-A")).await.unwrap();
    db.register_vehicle(&new_vehicle("VIN-B")).await.unwrap();
    let first = assignment("VIN-A", "TBOX-1", "tbox/fw-1.bin", 1);
    let id1 = db.create_assignment(&first).await.unwrap();
    let ivi = assignment("VIN-A", "IVI-1", "ivi/app-1.bin", 1);
    let id_ivi = db.create_assignment(&ivi).await.unwrap();
    let other_car = assignment("VIN-B", "TBOX-1", "tbox/fw-1.bin", 1);
    let id_b = db.create_assignment(&other_car).await.unwrap();
    let second = assignment("VIN-A", "TBOX-1", "tbox/fw-2.bin", 2);
    let id2 = db.create_assignment(&second).await.unwrap();
    assert!(id1 < id_ivi && id_ivi < id_b && id_b < id2);

    // Newest first; only VIN-A's TBOX assignment was superseded.
    let all = db.assignments(Some("VIN-A"), None).await.unwrap();
    let summary: Vec<(i64, &str)> = all.iter().map(|a| (a.id, a.status.as_str())).collect();
    assert_eq!(
        summary,
        [(id2, "pending"), (id_ivi, "pending"), (id1, "superseded")]
    );
    let stored = &all[0];
    assert_eq!(stored.vin, "VIN-A");
    assert_eq!(stored.ecu_id, "TBOX-1");
    assert_eq!(stored.target, second.target);
    assert_eq!(stored.length, second.length);
    assert_eq!(stored.hashes, second.hashes);
    assert_eq!(stored.release_counter, 2);
    assert!(!stored.encrypt);
    assert!(all[1].encrypt);
    assert!(is_rfc3339(&stored.created_at));
    assert_eq!(stored.completed_at, None);

    let pending = db.assignments(None, Some("pending")).await.unwrap();
    let ids: Vec<i64> = pending.iter().map(|a| a.id).collect();
    assert_eq!(ids, [id2, id_b, id_ivi]);
    let b = db
        .assignments(Some("VIN-B"), Some("pending"))
        .await
        .unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].id, id_b);

    // An installed assignment is history: a new one does not touch it.
    let done = db
        .record_checkin(&checkin(
            "VIN-A",
            1,
            vec![report("TBOX-1", installed_as(&second), 1)],
        ))
        .await
        .unwrap();
    assert_eq!(done, [id2]);
    let third = assignment("VIN-A", "TBOX-1", "tbox/fw-3.bin", 3);
    let id3 = db.create_assignment(&third).await.unwrap();
    let tbox: Vec<(i64, String)> = db
        .assignments(Some("VIN-A"), None)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.ecu_id == "TBOX-1")
        .map(|a| (a.id, a.status))
        .collect();
    assert_eq!(
        tbox,
        [
            (id3, "pending".to_owned()),
            (id2, "installed".to_owned()),
            (id1, "superseded".to_owned())
        ]
    );
}

async fn checkin_moves_counter_forward_and_refuses_replays(url: String) {
    let db = connect(&url).await;
    db.register_vehicle(&new_vehicle("VIN-C")).await.unwrap();
    let a = assignment("VIN-C", "TBOX-1", "tbox/fw-7.bin", 7);
    let id = db.create_assignment(&a).await.unwrap();

    let done = db
        .record_checkin(&checkin(
            "VIN-C",
            5,
            vec![report("TBOX-1", installed_as(&a), 11)],
        ))
        .await
        .unwrap();
    assert_eq!(done, [id]);
    let v = vehicle(&db, "VIN-C").await;
    assert_eq!(v.last_manifest_counter, Some(5));
    assert!(v.last_seen.as_deref().is_some_and(is_rfc3339));
    let tbox = v.ecus.iter().find(|e| e.ecu_id == "TBOX-1").unwrap();
    assert_eq!(tbox.installed, Some(installed_as(&a)));
    assert_eq!(tbox.last_report_counter, Some(11));
    let ivi = v.ecus.iter().find(|e| e.ecu_id == "IVI-1").unwrap();
    assert_eq!(ivi.installed, None, "an ECU without a report is untouched");
    let stored = db.assignments(Some("VIN-C"), None).await.unwrap();
    assert_eq!(stored[0].status, "installed");
    assert!(stored[0].completed_at.as_deref().is_some_and(is_rfc3339));

    // Equal and lower counters are replays: refused, and nothing at all changes.
    let before = (
        vehicle(&db, "VIN-C").await,
        db.assignments(None, None).await.unwrap(),
        counts(&db).await,
    );
    let other = Installed {
        target: "tbox/evil.bin".into(),
        length: 1,
        hashes: hashes("e"),
        release_counter: 99,
    };
    for counter in [5, 4, 0] {
        let replay = checkin("VIN-C", counter, vec![report("TBOX-1", other.clone(), 12)]);
        match db.record_checkin(&replay).await {
            Err(Error::Replay(msg)) => assert!(msg.contains("VIN-C"), "{msg}"),
            other => panic!("counter {counter}: expected Replay, got {other:?}"),
        }
        let after = (
            vehicle(&db, "VIN-C").await,
            db.assignments(None, None).await.unwrap(),
            counts(&db).await,
        );
        assert_eq!(after, before, "counter {counter} changed stored state");
    }
    assert_eq!(db.count("manifests").await.unwrap(), 1);

    // A higher counter is accepted, even with a gap.
    assert_eq!(
        db.record_checkin(&checkin("VIN-C", 9, vec![]))
            .await
            .unwrap(),
        Vec::<i64>::new()
    );
    assert_eq!(vehicle(&db, "VIN-C").await.last_manifest_counter, Some(9));
    assert_eq!(db.count("manifests").await.unwrap(), 2);
}

/// Replay protection rests on stored counters: one that does not fit the database's signed
/// 64-bit integer must be refused, not stored as i64::MAX (where every later counter would
/// look like a replay, or a lower one like an equal one); a negative value read back means
/// the database was tampered with, and is an error, not 0.
async fn counters_beyond_the_database_integer_are_refused_not_clamped(url: String) {
    let db = connect(&url).await;
    db.register_vehicle(&new_vehicle("VIN-O")).await.unwrap();
    let before = (vehicle(&db, "VIN-O").await, counts(&db).await);
    let too_big = i64::MAX as u64 + 1;
    for c in [
        checkin("VIN-O", too_big, vec![]),
        checkin("VIN-O", u64::MAX, vec![]),
        checkin(
            "VIN-O",
            3,
            vec![report(
                "TBOX-1",
                Installed {
                    target: "tbox/fw.bin".into(),
                    length: 1,
                    hashes: hashes("a"),
                    release_counter: 1,
                },
                u64::MAX,
            )],
        ),
    ] {
        let err = db.record_checkin(&c).await.unwrap_err();
        assert_eq!(err.rule(), "counter-out-of-range", "{err}");
        assert_eq!((vehicle(&db, "VIN-O").await, counts(&db).await), before);
    }
    // The largest counter that fits is stored exactly.
    db.record_checkin(&checkin("VIN-O", i64::MAX as u64, vec![]))
        .await
        .unwrap();
    assert_eq!(
        vehicle(&db, "VIN-O").await.last_manifest_counter,
        Some(i64::MAX as u64)
    );
    // A negative counter in the database is refused when read, not taken as 0.
    sqlx::any::install_default_drivers();
    let raw = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query("UPDATE vehicles SET last_manifest_counter = -5 WHERE vin = 'VIN-O'")
        .execute(&raw)
        .await
        .unwrap();
    let err = db.vehicle("VIN-O").await.unwrap_err();
    assert_eq!(err.rule(), "database", "{err}");
    assert!(err.to_string().contains("negative"), "{err}");
}

async fn checkin_completes_only_matching_assignments(url: String) {
    let db = connect(&url).await;
    db.register_vehicle(&new_vehicle("VIN-M")).await.unwrap();
    db.register_vehicle(&new_vehicle("VIN-N")).await.unwrap();
    let tbox = assignment("VIN-M", "TBOX-1", "tbox/fw-2.bin", 2);
    let ivi = assignment("VIN-M", "IVI-1", "ivi/app-2.bin", 2);
    let other_car = assignment("VIN-N", "IVI-1", "ivi/app-2.bin", 2);
    let id_tbox = db.create_assignment(&tbox).await.unwrap();
    let id_ivi = db.create_assignment(&ivi).await.unwrap();
    let id_other = db.create_assignment(&other_car).await.unwrap();

    // TBOX reports the right name with different hashes: not done. IVI matches: done.
    let mut wrong = installed_as(&tbox);
    wrong.hashes = hashes("f");
    let done = db
        .record_checkin(&checkin(
            "VIN-M",
            1,
            vec![
                report("TBOX-1", wrong.clone(), 1),
                report("IVI-1", installed_as(&ivi), 1),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(done, [id_ivi]);
    let status = |all: &[Assignment], id: i64| {
        all.iter()
            .find(|a| a.id == id)
            .map(|a| a.status.clone())
            .unwrap()
    };
    let all = db.assignments(None, None).await.unwrap();
    assert_eq!(status(&all, id_tbox), "pending");
    assert_eq!(status(&all, id_ivi), "installed");
    assert_eq!(
        status(&all, id_other),
        "pending",
        "another car's assignment"
    );
    let v = vehicle(&db, "VIN-M").await;
    let tbox_ecu = v.ecus.iter().find(|e| e.ecu_id == "TBOX-1").unwrap();
    assert_eq!(
        tbox_ecu.installed,
        Some(wrong),
        "what runs is stored anyway"
    );

    // Wrong length or wrong target name: still pending. Exact match: done.
    let mut short = installed_as(&tbox);
    short.length -= 1;
    let mut renamed = installed_as(&tbox);
    renamed.target = "tbox/fw-2b.bin".into();
    for (counter, inst) in [(2, short), (3, renamed)] {
        let done = db
            .record_checkin(&checkin(
                "VIN-M",
                counter,
                vec![report("TBOX-1", inst, counter)],
            ))
            .await
            .unwrap();
        assert!(done.is_empty());
    }
    let done = db
        .record_checkin(&checkin(
            "VIN-M",
            4,
            vec![report("TBOX-1", installed_as(&tbox), 4)],
        ))
        .await
        .unwrap();
    assert_eq!(done, [id_tbox]);
    // Reporting it again completes nothing new.
    let done = db
        .record_checkin(&checkin(
            "VIN-M",
            5,
            vec![report("TBOX-1", installed_as(&tbox), 5)],
        ))
        .await
        .unwrap();
    assert!(done.is_empty());
    let all = db.assignments(None, None).await.unwrap();
    assert_eq!(status(&all, id_other), "pending");
}

async fn concurrent_checkins_with_one_counter_accept_one(url: String) {
    let db = connect(&url).await;
    db.register_vehicle(&new_vehicle("VIN-RACE")).await.unwrap();
    let a = assignment("VIN-RACE", "TBOX-1", "tbox/fw-2.bin", 2);
    let id = db.create_assignment(&a).await.unwrap();
    let tasks = 6;
    let barrier = Arc::new(Barrier::new(tasks));
    let mut handles = Vec::new();
    for i in 0..tasks {
        let (db, barrier, a) = (db.clone(), barrier.clone(), a.clone());
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let detail = format!("indicator of copy {i}");
            let mut c = checkin(
                "VIN-RACE",
                1,
                vec![report("TBOX-1", installed_as(&a), 1 + i as u64)],
            );
            c.events.push(NewEvent {
                source: "vehicle",
                rule: "freeze",
                vin: Some("VIN-RACE"),
                ecu_id: Some("TBOX-1"),
                remote: None,
                detail: &detail,
            });
            db.record_checkin(&c)
                .await
                .map(|done| (done, detail.clone()))
        }));
    }
    let mut accepted = Vec::new();
    let mut winner = String::new();
    for h in handles {
        match h.await.unwrap() {
            Ok((done, detail)) => {
                accepted.push(done);
                winner = detail;
            }
            Err(Error::Replay(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(accepted, vec![vec![id]], "exactly one check-in wins");
    assert_eq!(db.count("manifests").await.unwrap(), 1);
    // The winner's events, and only its, were stored with it.
    let events = db.events(None, None, 100).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].detail, winner);
    assert_eq!(events[0].rule, "freeze");
    assert_eq!(
        vehicle(&db, "VIN-RACE").await.last_manifest_counter,
        Some(1)
    );
}

/// The director checks ECU report counters against what it read; a check-in that committed in
/// between may have moved them. The store re-checks: a report whose counter is not above the
/// stored one changes nothing (installed image, counter, assignments) and is recorded as a
/// `replay` event, while the rest of the check-in is accepted.
async fn stale_ecu_report_in_an_accepted_checkin_is_not_stored(url: String) {
    let db = connect(&url).await;
    db.register_vehicle(&new_vehicle("VIN-S")).await.unwrap();
    let a = assignment("VIN-S", "TBOX-1", "tbox/fw-7.bin", 7);
    let id = db.create_assignment(&a).await.unwrap();
    let factory = Installed {
        target: "tbox/fw-1.bin".into(),
        length: 1,
        hashes: hashes("1"),
        release_counter: 1,
    };
    db.record_checkin(&checkin(
        "VIN-S",
        1,
        vec![report("TBOX-1", factory.clone(), 5)],
    ))
    .await
    .unwrap();
    let mut stale = checkin("VIN-S", 2, vec![report("TBOX-1", installed_as(&a), 5)]);
    stale.remote = Some("10.0.0.7:4242");
    assert_eq!(db.record_checkin(&stale).await.unwrap(), Vec::<i64>::new());
    let v = vehicle(&db, "VIN-S").await;
    assert_eq!(
        v.last_manifest_counter,
        Some(2),
        "the check-in itself counts"
    );
    let tbox = v.ecus.iter().find(|e| e.ecu_id == "TBOX-1").unwrap();
    assert_eq!(tbox.installed, Some(factory));
    assert_eq!(tbox.last_report_counter, Some(5));
    let stored = db.assignments(Some("VIN-S"), None).await.unwrap();
    assert_eq!((stored[0].id, stored[0].status.as_str()), (id, "pending"));
    let events = db.events(Some("VIN-S"), Some("replay"), 10).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].ecu_id.as_deref(), Some("TBOX-1"));
    assert_eq!(events[0].remote.as_deref(), Some("10.0.0.7:4242"));
}

/// The common check-in — nothing pending, no event, no progress — which PostgreSQL stores in
/// one statement (`db::quiet_checkin`): of concurrent copies of one manifest exactly one is
/// accepted (one manifest kept, one report stored); a replay is refused and changes nothing;
/// a report whose counter is not above the stored one is dropped and recorded as a `replay`
/// event while the check-in itself counts.
async fn quiet_checkins_race_once_refuse_replays_and_drop_stale_reports(url: String) {
    let db = connect(&url).await;
    db.register_vehicle(&new_vehicle("VIN-Q")).await.unwrap();
    let image = |n: u64| Installed {
        target: format!("tbox/fw-{n}.bin"),
        length: n,
        hashes: hashes(&n.to_string()),
        release_counter: n,
    };
    let tasks = 6;
    let barrier = Arc::new(Barrier::new(tasks));
    let mut handles = Vec::new();
    for i in 1..=tasks as u64 {
        let (db, barrier) = (db.clone(), barrier.clone());
        let report = report("TBOX-1", image(i), i);
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            db.record_checkin(&checkin("VIN-Q", 1, vec![report]))
                .await
                .map(|done| (done, i))
        }));
    }
    let mut winners = Vec::new();
    for h in handles {
        match h.await.unwrap() {
            Ok((done, i)) => {
                assert!(done.is_empty());
                winners.push(i);
            }
            Err(Error::Replay(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one copy wins: {winners:?}");
    let won = winners[0];
    assert_eq!(db.count("manifests").await.unwrap(), 1);
    let v = vehicle(&db, "VIN-Q").await;
    assert_eq!(v.last_manifest_counter, Some(1));
    let tbox = v.ecus.iter().find(|e| e.ecu_id == "TBOX-1").unwrap();
    assert_eq!(tbox.installed, Some(image(won)), "the winner's report");
    assert_eq!(tbox.last_report_counter, Some(won));

    // A replay changes nothing.
    let before = (vehicle(&db, "VIN-Q").await, counts(&db).await);
    let replay = checkin("VIN-Q", 1, vec![report("TBOX-1", image(99), 99)]);
    assert!(matches!(
        db.record_checkin(&replay).await,
        Err(Error::Replay(_))
    ));
    assert_eq!((vehicle(&db, "VIN-Q").await, counts(&db).await), before);

    // A newer manifest with a stale report: accepted, the report dropped and recorded.
    let mut stale = checkin("VIN-Q", 2, vec![report("TBOX-1", image(50), won)]);
    stale.remote = Some("10.0.0.9:4242");
    assert!(db.record_checkin(&stale).await.unwrap().is_empty());
    let v = vehicle(&db, "VIN-Q").await;
    assert_eq!(v.last_manifest_counter, Some(2));
    let tbox = v.ecus.iter().find(|e| e.ecu_id == "TBOX-1").unwrap();
    assert_eq!(tbox.installed, Some(image(won)));
    let events = db.events(Some("VIN-Q"), Some("replay"), 10).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].remote.as_deref(), Some("10.0.0.9:4242"));
    assert_eq!(db.count("manifests").await.unwrap(), 2);

    // An instruction pending: reports of other images leave it pending; the report of its
    // image completes it.
    let a = assignment("VIN-Q", "TBOX-1", "tbox/fw-100.bin", 100);
    let id = db.create_assignment(&a).await.unwrap();
    let waiting = checkin("VIN-Q", 3, vec![report("TBOX-1", image(7), 10)]);
    assert!(db.record_checkin(&waiting).await.unwrap().is_empty());
    let stored = db
        .assignments(Some("VIN-Q"), Some("pending"))
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    let v = vehicle(&db, "VIN-Q").await;
    let tbox = v.ecus.iter().find(|e| e.ecu_id == "TBOX-1").unwrap();
    assert_eq!(tbox.installed, Some(image(7)));
    let done = checkin("VIN-Q", 4, vec![report("TBOX-1", installed_as(&a), 11)]);
    assert_eq!(db.record_checkin(&done).await.unwrap(), [id]);
    assert!(db
        .assignments(Some("VIN-Q"), Some("pending"))
        .await
        .unwrap()
        .is_empty());
}

/// Many check-ins at once — what SQLite stores in one transaction (`db::group_commit`): each
/// is decided as if alone (of two copies of one manifest one is accepted and one refused as a
/// replay, whichever batch they fall in), a refused one leaves nothing behind and takes
/// nothing from the others, and an accepted one is on disk when it is answered (another
/// connection, opened afresh, reads it at once).
async fn checkins_arriving_together_are_each_decided_and_stored_when_answered(url: String) {
    let db = connect(&url).await;
    let other = Db::connect(&url).await.unwrap();
    let vins = register_fleet(&db, "VIN-G", 40).await;
    let barrier = Arc::new(Barrier::new(vins.len() * 2));
    let mut handles = Vec::new();
    for vin in &vins {
        for copy in 0..2u64 {
            let (db, other, barrier, vin) =
                (db.clone(), other.clone(), barrier.clone(), vin.clone());
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                let installed = Installed {
                    target: format!("tbox/copy-{copy}.bin"),
                    length: copy,
                    hashes: hashes(&copy.to_string()),
                    release_counter: copy,
                };
                let c = checkin(&vin, 3, vec![report("TBOX-1", installed, 1)]);
                let answer = db.record_checkin(&c).await;
                if answer.is_ok() {
                    let stored = other.vehicle(&vin).await.unwrap().unwrap();
                    assert_eq!(
                        stored.last_manifest_counter,
                        Some(3),
                        "{vin} answered before stored"
                    );
                }
                (vin, copy, answer)
            }));
        }
    }
    let mut accepted: BTreeMap<String, u64> = BTreeMap::new();
    for h in handles {
        let (vin, copy, answer) = h.await.unwrap();
        match answer {
            Ok(done) => {
                assert!(done.is_empty());
                assert!(
                    accepted.insert(vin.clone(), copy).is_none(),
                    "{vin} accepted twice"
                );
            }
            Err(Error::Replay(_)) => {}
            Err(e) => panic!("{vin}: {e}"),
        }
    }
    assert_eq!(accepted.len(), vins.len(), "one copy of each accepted");
    assert_eq!(db.count("manifests").await.unwrap(), vins.len() as u64);
    for (vin, copy) in &accepted {
        let v = vehicle(&db, vin).await;
        let tbox = v.ecus.iter().find(|e| e.ecu_id == "TBOX-1").unwrap();
        assert_eq!(
            tbox.installed.as_ref().map(|i| i.target.clone()),
            Some(format!("tbox/copy-{copy}.bin")),
            "{vin}: the accepted copy's report"
        );
    }
}

/// PostgreSQL stores quiet check-ins that arrive together in one statement a batch
/// (`db::quiet_batch`): the manifests of 40 vehicles checking in at once are written by far
/// fewer transactions than check-ins (rows written by one transaction share its `xmin`), and
/// each check-in is still decided on its own: its counter and report stored, each answered
/// only once stored, and a copy arriving later refused as a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quiet_checkins_arriving_together_share_one_statement_on_postgres() {
    common::with_postgres(|url| async move {
        let db = connect(&url).await;
        let vins = register_fleet(&db, "VIN-B", 40).await;
        // Each vehicle its own counter and image, so that a batch that mixed up its rows
        // (one vehicle's counter or report stored for another) shows.
        let image = |i: usize| Installed {
            target: format!("tbox/fw-{i}.bin"),
            length: 2,
            hashes: hashes("2"),
            release_counter: 2,
        };
        let counter = |i: usize| 5 + i as u64;
        // Each manifest its own length, with characters JSON escapes and characters of
        // several bytes, so that a batch that cut one vehicle's document from another's
        // bytes, or counted characters for bytes, stores what was not sent.
        let document = |i: usize| {
            format!(
                "{{\"signed\":{{\"n\":{i},\"note\":\"{}\\\\ \\\"q\\\" é 🚗\"}},\"signatures\":[]}}",
                "ü".repeat(i * 37)
            )
        };
        let barrier = Arc::new(Barrier::new(vins.len()));
        let mut handles = Vec::new();
        for (i, vin) in vins.iter().enumerate() {
            let (db, barrier, vin, image) = (db.clone(), barrier.clone(), vin.clone(), image(i));
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                let reports = vec![report("TBOX-1", image, counter(i))];
                let document = document(i);
                let mut c = checkin(&vin, counter(i), reports);
                c.document = &document;
                db.record_checkin(&c).await
            }));
        }
        for h in handles {
            assert!(h.await.unwrap().unwrap().is_empty());
        }
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let (rows, transactions): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(DISTINCT xmin::text) FROM manifests")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(rows, 40);
        assert!(
            transactions <= 20,
            "40 check-ins arriving together were written by {transactions} transactions"
        );
        for (i, vin) in vins.iter().enumerate() {
            let v = vehicle(&db, vin).await;
            assert_eq!(v.last_manifest_counter, Some(counter(i)), "{vin}");
            let tbox = v.ecus.iter().find(|e| e.ecu_id == "TBOX-1").unwrap();
            assert_eq!(tbox.installed, Some(image(i)), "{vin}");
            assert_eq!(tbox.last_report_counter, Some(counter(i)), "{vin}");
            let kept: (i64, String) =
                sqlx::query_as("SELECT counter, document FROM manifests WHERE vin = $1")
                    .bind(vin)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            assert_eq!(
                kept,
                (counter(i) as i64, document(i)),
                "{vin}: the manifest kept"
            );
            let replay = checkin(vin, counter(i), vec![report("TBOX-1", image(i), 99)]);
            assert!(matches!(
                db.record_checkin(&replay).await,
                Err(Error::Replay(_))
            ));
        }
        assert_eq!(db.count("manifests").await.unwrap(), 40);
    })
    .await;
}

/// A check-in carrying a NUL character, which PostgreSQL's text cannot hold, is refused whole
/// (the vehicle's counter and reports stay as they were) and does not take down the quiet
/// check-ins that arrive with it (`db::quiet_batch` keeps it out of their statement).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkin_postgres_cannot_hold_is_refused_alone_on_postgres() {
    common::with_postgres(|url| async move {
        let db = connect(&url).await;
        let vins = register_fleet(&db, "VIN-N", 10).await;
        let image = |target: &str| Installed {
            target: target.into(),
            length: 2,
            hashes: hashes("2"),
            release_counter: 2,
        };
        let barrier = Arc::new(Barrier::new(vins.len()));
        let mut handles = Vec::new();
        for (i, vin) in vins.iter().enumerate() {
            let (db, barrier, vin) = (db.clone(), barrier.clone(), vin.clone());
            let target = if i == 0 {
                "tbox/fw\0-2.bin"
            } else {
                "tbox/fw-2.bin"
            };
            let image = image(target);
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                let answer = db
                    .record_checkin(&checkin(&vin, 5, vec![report("TBOX-1", image, 5)]))
                    .await;
                (i, answer)
            }));
        }
        for h in handles {
            let (i, answer) = h.await.unwrap();
            if i == 0 {
                assert!(answer.is_err(), "a NUL in a target name was stored");
            } else {
                assert!(answer.unwrap().is_empty());
            }
        }
        let refused = vehicle(&db, &vins[0]).await;
        assert_eq!(refused.last_manifest_counter, None);
        let tbox = refused.ecus.iter().find(|e| e.ecu_id == "TBOX-1").unwrap();
        assert_eq!(tbox.installed, None);
        for vin in &vins[1..] {
            let v = vehicle(&db, vin).await;
            assert_eq!(v.last_manifest_counter, Some(5), "{vin}");
        }
        assert_eq!(db.count("manifests").await.unwrap(), 9);
    })
    .await;
}

/// The batch tasks keep their PostgreSQL connection between batches (`db::held`): when the
/// database drops every connection (a restart, a fail-over, an administrator), reads of
/// director documents and quiet check-ins work again once the dead connection would have been
/// tested — the kept one is tested after sitting idle as the pool's are, and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_outlive_the_database_dropping_their_connections_on_postgres() {
    common::with_postgres(|url| async move {
        let db = connect(&url).await;
        let vin = "VIN-DROP";
        db.register_vehicle(&new_vehicle(vin)).await.unwrap();
        let roles = [(None, role("timestamp", 1, vin))];
        assert!(db.replace_director_roles(vin, &roles).await.unwrap());
        assert!(db
            .record_checkin(&checkin(vin, 1, Vec::new()))
            .await
            .unwrap()
            .is_empty());
        assert!(db.director_roles(vin).await.unwrap().timestamp.is_some());

        let admin = sqlx::PgPool::connect(&url).await.unwrap();
        let dropped: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
        )
        .fetch_one(&admin)
        .await
        .unwrap();
        assert!(dropped >= 2, "dropped {dropped} connections");
        tokio::time::sleep(std::time::Duration::from_millis(1_300)).await;

        assert_eq!(
            db.director_roles(vin).await.unwrap().timestamp,
            Some(role("timestamp", 1, vin))
        );
        assert!(db
            .record_checkin(&checkin(vin, 2, Vec::new()))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(vehicle(&db, vin).await.last_manifest_counter, Some(2));
    })
    .await;
}

/// Director documents read at once for many vehicles (on PostgreSQL, in shared statements:
/// `db::role_reads`) come back each to its own vehicle, and a vehicle with none gets none.
async fn director_roles_read_together_reach_their_own_vehicle(url: String) {
    let db = connect(&url).await;
    let vins: Vec<String> = (0..30).map(|i| format!("VIN-R{i:02}")).collect();
    for (i, vin) in vins.iter().enumerate().skip(1) {
        let roles = [
            (None, role("targets", i as u64, vin)),
            (None, role("snapshot", i as u64, vin)),
            (None, role("timestamp", i as u64, vin)),
        ];
        assert!(db.replace_director_roles(vin, &roles).await.unwrap());
    }
    let barrier = Arc::new(Barrier::new(vins.len()));
    let mut handles = Vec::new();
    for (i, vin) in vins.iter().enumerate() {
        let (db, barrier, vin) = (db.clone(), barrier.clone(), vin.clone());
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            (i, vin.clone(), db.director_roles(&vin).await.unwrap())
        }));
    }
    for h in handles {
        let (i, vin, roles) = h.await.unwrap();
        if i == 0 {
            assert_eq!(roles, DirectorRoles::default(), "{vin} has none");
            continue;
        }
        assert_eq!(roles.targets, Some(role("targets", i as u64, &vin)));
        assert_eq!(roles.snapshot, Some(role("snapshot", i as u64, &vin)));
        assert_eq!(roles.timestamp, Some(role("timestamp", i as u64, &vin)));
    }
}

async fn director_roles_replace_only_from_the_version_read(url: String) {
    let db = connect(&url).await;
    assert_eq!(db.director_role("VIN-D", "targets").await.unwrap(), None);
    let (t1, s1, ts1) = (
        role("targets", 1, "a"),
        role("snapshot", 1, "a"),
        role("timestamp", 1, "a"),
    );
    assert!(db
        .replace_director_roles(
            "VIN-D",
            &[(None, t1.clone()), (None, s1.clone()), (None, ts1.clone())]
        )
        .await
        .unwrap());
    assert_eq!(
        db.director_role("VIN-D", "targets").await.unwrap(),
        Some(t1.clone())
    );
    assert_eq!(
        db.director_role("VIN-D", "timestamp").await.unwrap(),
        Some(ts1.clone())
    );

    // A writer that believes nothing is stored loses, and changes nothing.
    assert!(!db
        .replace_director_roles("VIN-D", &[(None, role("targets", 1, "b"))])
        .await
        .unwrap());
    assert_eq!(
        db.director_role("VIN-D", "targets").await.unwrap(),
        Some(t1.clone())
    );

    // From the version read: accepted.
    let t2 = role("targets", 2, "c");
    assert!(db
        .replace_director_roles("VIN-D", &[(Some(1), t2.clone())])
        .await
        .unwrap());
    assert_eq!(
        db.director_role("VIN-D", "targets").await.unwrap(),
        Some(t2.clone())
    );

    // A stale writer (read version 1, now 2) gets false and nothing changes.
    let before = counts(&db).await;
    assert!(!db
        .replace_director_roles("VIN-D", &[(Some(1), role("targets", 2, "stale"))])
        .await
        .unwrap());
    assert_eq!(
        db.director_role("VIN-D", "targets").await.unwrap(),
        Some(t2.clone())
    );

    // All or nothing: the targets update is valid, the snapshot one is stale, so the
    // targets update is rolled back too.
    assert!(!db
        .replace_director_roles(
            "VIN-D",
            &[
                (Some(2), role("targets", 3, "d")),
                (Some(7), role("snapshot", 8, "d")),
            ]
        )
        .await
        .unwrap());
    assert_eq!(
        db.director_role("VIN-D", "targets").await.unwrap(),
        Some(t2.clone())
    );
    assert_eq!(
        db.director_role("VIN-D", "snapshot").await.unwrap(),
        Some(s1.clone())
    );
    assert_eq!(counts(&db).await, before);

    // Another vehicle's documents are separate.
    assert_eq!(db.director_role("VIN-E", "targets").await.unwrap(), None);
    assert!(db
        .replace_director_roles("VIN-E", &[(None, role("targets", 1, "e"))])
        .await
        .unwrap());
    assert_eq!(
        db.director_role("VIN-D", "targets").await.unwrap(),
        Some(t2)
    );
}

/// A new assignment and a completed one mark the vehicle's stored director targets (and only
/// that vehicle's, only targets); a writer that read the targets before the change cannot
/// store instructions derived from the old state; a check-in that completes nothing marks
/// nothing.
async fn instruction_changes_mark_director_targets_and_fence_stale_writers(url: String) {
    let db = connect(&url).await;
    for vin in ["VIN-F", "VIN-G"] {
        db.register_vehicle(&new_vehicle(vin)).await.unwrap();
        let roles = [
            (None, role("targets", 1, vin)),
            (None, role("snapshot", 1, vin)),
            (None, role("timestamp", 1, vin)),
        ];
        assert!(db.replace_director_roles(vin, &roles).await.unwrap());
    }
    let read = db.director_roles("VIN-F").await.unwrap();
    let t1 = read.targets.clone().unwrap();
    assert_eq!(t1, role("targets", 1, "VIN-F"));
    assert_eq!(read.snapshot, Some(role("snapshot", 1, "VIN-F")));
    assert_eq!(read.timestamp, Some(role("timestamp", 1, "VIN-F")));

    let a = assignment("VIN-F", "TBOX-1", "tbox/fw-3.bin", 3);
    db.create_assignment(&a).await.unwrap();
    let marked = db.director_roles("VIN-F").await.unwrap();
    let t = marked.targets.clone().unwrap();
    assert!(t.content_digest.starts_with(INSTRUCTIONS_CHANGED), "{t:?}");
    assert_eq!(
        (t.version, &t.document),
        (1, &t1.document),
        "only the digest"
    );
    assert_eq!(marked.snapshot, read.snapshot);
    let other = db.director_roles("VIN-G").await.unwrap();
    assert_eq!(other.targets, Some(role("targets", 1, "VIN-G")));

    // A writer that read digest-VIN-F before the assignment loses, and changes nothing.
    let before = counts(&db).await;
    assert!(!db
        .replace_director_roles_from(
            "VIN-F",
            Some(&t1.content_digest),
            &[(Some(1), role("targets", 2, "old-instructions"))]
        )
        .await
        .unwrap());
    assert_eq!(db.director_roles("VIN-F").await.unwrap(), marked);
    assert_eq!(counts(&db).await, before);
    // One that read the marker wins.
    let t2 = role("targets", 2, "new-instructions");
    assert!(db
        .replace_director_roles_from("VIN-F", Some(&t.content_digest), &[(Some(1), t2.clone())])
        .await
        .unwrap());
    assert_eq!(
        db.director_roles("VIN-F").await.unwrap().targets,
        Some(t2.clone())
    );

    // A check-in that completes nothing leaves the targets alone; one that completes the
    // assignment marks them again, with a marker never seen before.
    let mut other_image = installed_as(&a);
    other_image.target = "tbox/fw-1.bin".into();
    let done = db
        .record_checkin(&checkin("VIN-F", 1, vec![report("TBOX-1", other_image, 1)]))
        .await
        .unwrap();
    assert!(done.is_empty());
    assert_eq!(db.director_roles("VIN-F").await.unwrap().targets, Some(t2));
    let done = db
        .record_checkin(&checkin(
            "VIN-F",
            2,
            vec![report("TBOX-1", installed_as(&a), 2)],
        ))
        .await
        .unwrap();
    assert_eq!(done.len(), 1);
    let again = db.director_roles("VIN-F").await.unwrap().targets.unwrap();
    assert!(again.content_digest.starts_with(INSTRUCTIONS_CHANGED));
    assert_ne!(again.content_digest, t.content_digest);
    // No documents stored yet: a first signer that read nothing, derived the instructions
    // and then lost the race to an assignment must not store instructions without it (a
    // vehicle's first check-in during a campaign's first wave). The change leaves a marked
    // placeholder (version 0, no document) that the first signer's insert cannot pass.
    db.register_vehicle(&new_vehicle("VIN-H")).await.unwrap();
    let first = db.director_roles("VIN-H").await.unwrap();
    assert_eq!(first, Default::default());
    db.create_assignment(&assignment("VIN-H", "TBOX-1", "tbox/fw-3.bin", 3))
        .await
        .unwrap();
    let stale = [
        (None, role("targets", 1, "no-instructions")),
        (None, role("snapshot", 1, "no-instructions")),
        (None, role("timestamp", 1, "no-instructions")),
    ];
    assert!(
        !db.replace_director_roles_from("VIN-H", None, &stale)
            .await
            .unwrap(),
        "instructions derived before the first assignment were stored after it"
    );
    let placeholder = db.director_roles("VIN-H").await.unwrap();
    let p = placeholder.targets.clone().unwrap();
    assert!(p.content_digest.starts_with(INSTRUCTIONS_CHANGED), "{p:?}");
    assert_eq!((p.version, p.document.as_str()), (0, ""));
    assert_eq!((placeholder.snapshot, placeholder.timestamp), (None, None));
    // A second change moves the marker: a signer that read the first one loses too.
    db.create_assignment(&assignment("VIN-H", "TBOX-1", "tbox/fw-4.bin", 4))
        .await
        .unwrap();
    let moved = db.director_roles("VIN-H").await.unwrap().targets.unwrap();
    assert_ne!(moved.content_digest, p.content_digest);
    let first_signing = |what: &str| {
        [
            (Some(0), role("targets", 1, what)),
            (None, role("snapshot", 1, what)),
            (None, role("timestamp", 1, what)),
        ]
    };
    assert!(!db
        .replace_director_roles_from("VIN-H", Some(&p.content_digest), &first_signing("fw-3"))
        .await
        .unwrap());
    // The signer that read the current marker stores version 1 over the placeholder.
    assert!(db
        .replace_director_roles_from("VIN-H", Some(&moved.content_digest), &first_signing("fw-4"))
        .await
        .unwrap());
    let signed = db.director_roles("VIN-H").await.unwrap();
    assert_eq!(signed.targets, Some(role("targets", 1, "fw-4")));
    assert_eq!(signed.timestamp, Some(role("timestamp", 1, "fw-4")));
}

async fn concurrent_director_role_replace_has_one_winner(url: String) {
    let db = connect(&url).await;
    // Two writers, both starting from nothing stored.
    let race = |previous: Option<u64>, version: u64| {
        let db = db.clone();
        async move {
            let barrier = Arc::new(Barrier::new(2));
            let mut handles = Vec::new();
            for who in ["one", "two"] {
                let (db, barrier) = (db.clone(), barrier.clone());
                handles.push(tokio::spawn(async move {
                    barrier.wait().await;
                    let roles = [
                        (previous, role("targets", version, who)),
                        (previous, role("snapshot", version, who)),
                    ];
                    (
                        who,
                        db.replace_director_roles("VIN-R", &roles).await.unwrap(),
                    )
                }));
            }
            let mut winners = Vec::new();
            for h in handles {
                let (who, won) = h.await.unwrap();
                if won {
                    winners.push(who);
                }
            }
            winners
        }
    };
    for (previous, version) in [(None, 1), (Some(1), 2), (Some(2), 3)] {
        let winners = race(previous, version).await;
        assert_eq!(winners.len(), 1, "from {previous:?}: winners {winners:?}");
        let who = winners[0];
        // Both documents are the winner's: no mix of the two writers.
        for name in ["targets", "snapshot"] {
            assert_eq!(
                db.director_role("VIN-R", name).await.unwrap(),
                Some(role(name, version, who)),
                "from {previous:?}"
            );
        }
    }
    assert_eq!(db.count("director_roles").await.unwrap(), 2);
}

async fn security_events_filter_and_limit(url: String) {
    let db = connect(&url).await;
    assert!(db.events(None, None, 100).await.unwrap().is_empty());
    let events = [
        (
            "server",
            "bad-signature",
            Some("VIN-1"),
            Some("IVI-1"),
            Some("10.0.0.1:4000"),
        ),
        ("server", "replay", Some("VIN-1"), None, None),
        ("vehicle", "rollback", Some("VIN-2"), Some("TBOX-1"), None),
        ("server", "unauthorized", None, None, Some("10.0.0.9:5000")),
        ("server", "replay", Some("VIN-2"), None, None),
    ];
    for (i, (source, rule, vin, ecu_id, remote)) in events.iter().enumerate() {
        db.record_event(&NewEvent {
            source,
            rule,
            vin: *vin,
            ecu_id: *ecu_id,
            remote: *remote,
            detail: &format!("event {i}"),
        })
        .await
        .unwrap();
    }
    let all = db.events(None, None, 100).await.unwrap();
    assert_eq!(all.len(), 5);
    // Newest first, with increasing IDs.
    let details: Vec<&str> = all.iter().map(|e| e.detail.as_str()).collect();
    assert_eq!(
        details,
        ["event 4", "event 3", "event 2", "event 1", "event 0"]
    );
    assert!(all.windows(2).all(|w| w[0].id > w[1].id));
    let oldest = &all[4];
    assert_eq!(oldest.source, "server");
    assert_eq!(oldest.rule, "bad-signature");
    assert_eq!(oldest.vin.as_deref(), Some("VIN-1"));
    assert_eq!(oldest.ecu_id.as_deref(), Some("IVI-1"));
    assert_eq!(oldest.remote.as_deref(), Some("10.0.0.1:4000"));
    assert!(is_rfc3339(&oldest.at));
    assert_eq!(all[1].vin, None);
    assert_eq!(all[1].ecu_id, None);

    let by_vin = db.events(Some("VIN-1"), None, 100).await.unwrap();
    let d: Vec<&str> = by_vin.iter().map(|e| e.detail.as_str()).collect();
    assert_eq!(d, ["event 1", "event 0"]);
    let by_rule = db.events(None, Some("replay"), 100).await.unwrap();
    let d: Vec<&str> = by_rule.iter().map(|e| e.detail.as_str()).collect();
    assert_eq!(d, ["event 4", "event 1"]);
    let both = db.events(Some("VIN-2"), Some("replay"), 100).await.unwrap();
    let d: Vec<&str> = both.iter().map(|e| e.detail.as_str()).collect();
    assert_eq!(d, ["event 4"]);
    assert!(db
        .events(Some("VIN-3"), None, 100)
        .await
        .unwrap()
        .is_empty());

    // The limit keeps the newest; 0 is clamped to 1.
    let two = db.events(None, None, 2).await.unwrap();
    let d: Vec<&str> = two.iter().map(|e| e.detail.as_str()).collect();
    assert_eq!(d, ["event 4", "event 3"]);
    assert_eq!(db.events(None, None, 0).await.unwrap().len(), 1);
    assert_eq!(db.count("security_events").await.unwrap(), 5);
}

fn event<'a>(
    rule: &'a str,
    vin: Option<&'a str>,
    remote: &'a str,
    detail: &'a str,
) -> NewEvent<'a> {
    NewEvent {
        source: "server",
        rule,
        vin,
        ecu_id: None,
        remote: Some(remote),
        detail,
    }
}

/// A repeat of an event (same source, rule, vehicle, ECU, detail, client address — the port
/// may differ) within the window is counted on its row, which moves to the newest ID; any
/// difference, or a gap longer than the window, makes a new row.
async fn identical_events_within_the_window_are_counted_on_one_row(url: String) {
    let db = connect(&url)
        .await
        .with_event_window(std::time::Duration::from_secs(60));
    let now = chrono::Utc::now();
    let e = event("replay", Some("VIN-1"), "10.0.0.1:4000", "counter 3");
    db.record_event_at(
        &e,
        now - chrono::Duration::seconds(30),
        Aggregate::Identical,
    )
    .await
    .unwrap();
    let first = db.events(None, None, 10).await.unwrap();
    let other = event("replay", Some("VIN-2"), "10.0.0.1:4000", "counter 3");
    db.record_event(&other).await.unwrap();
    for port in [4001, 4002] {
        let remote = format!("10.0.0.1:{port}");
        let again = event("replay", Some("VIN-1"), &remote, "counter 3");
        db.record_event_at(&again, now, Aggregate::Identical)
            .await
            .unwrap();
    }
    let all = db.events(None, None, 10).await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    let counted = &all[0];
    assert_eq!(counted.vin.as_deref(), Some("VIN-1"));
    assert_eq!(counted.count, 3);
    assert_eq!(counted.at, first[0].at, "first seen");
    assert_eq!(
        counted.last_at,
        now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    assert!(counted.id > first[0].id, "a repeat moves to the newest ID");
    assert_eq!(all[1].count, 1);
    // A different detail, another address, or a gap past the window: new rows.
    db.record_event(&event("replay", Some("VIN-1"), "10.0.0.1:1", "counter 4"))
        .await
        .unwrap();
    db.record_event(&event("replay", Some("VIN-1"), "10.0.0.2:1", "counter 3"))
        .await
        .unwrap();
    db.record_event_at(
        &e,
        now + chrono::Duration::seconds(120),
        Aggregate::Identical,
    )
    .await
    .unwrap();
    let all = db.events(None, None, 10).await.unwrap();
    assert_eq!(all.len(), 5, "{all:?}");
    assert_eq!(all.iter().map(|e| e.count).sum::<u64>(), 7);
}

/// Over its rate, an event is counted on the latest row of its client address and rule,
/// whatever its vehicle or detail: one address cannot write rows about every VIN.
async fn events_over_their_rate_are_counted_per_address_and_rule(url: String) {
    let db = connect(&url).await;
    db.record_event(&event(
        "client-certificate-required",
        Some("VIN-A"),
        "10.0.0.9:1",
        "no cert",
    ))
    .await
    .unwrap();
    for i in 0..50 {
        let vin = format!("VIN-{i}");
        let e = event(
            "client-certificate-required",
            Some(&vin),
            "10.0.0.9:2",
            "no cert",
        );
        db.record_event_at(&e, chrono::Utc::now(), Aggregate::SameAddressAndRule)
            .await
            .unwrap();
    }
    // Another address and another rule are not folded in.
    let e = event(
        "client-certificate-required",
        Some("VIN-B"),
        "10.0.0.8:1",
        "no cert",
    );
    db.record_event_at(&e, chrono::Utc::now(), Aggregate::SameAddressAndRule)
        .await
        .unwrap();
    let e = event("vin-mismatch", Some("VIN-B"), "10.0.0.9:1", "x");
    db.record_event_at(&e, chrono::Utc::now(), Aggregate::SameAddressAndRule)
        .await
        .unwrap();
    let all = db.events(None, None, 100).await.unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    let flood = all
        .iter()
        .find(|e| {
            e.remote.as_deref() == Some("10.0.0.9:1") && e.rule == "client-certificate-required"
        })
        .unwrap();
    assert_eq!(flood.count, 51);
    assert_eq!(
        flood.vin.as_deref(),
        Some("VIN-A"),
        "the first occurrence's row"
    );
}

/// Retention: rows last seen before the age limit go; then all but the newest `max_rows`.
async fn retention_prunes_old_rows_and_keeps_the_newest(url: String) {
    let db = connect(&url).await;
    let now = chrono::Utc::now();
    for i in 0..3 {
        let detail = format!("old {i}");
        let e = event("replay", None, "10.0.0.1:1", &detail);
        db.record_event_at(&e, now - chrono::Duration::days(100), Aggregate::Identical)
            .await
            .unwrap();
    }
    for i in 0..5 {
        let detail = format!("new {i}");
        let e = event("replay", None, "10.0.0.1:1", &detail);
        db.record_event_at(&e, now - chrono::Duration::days(1), Aggregate::Identical)
            .await
            .unwrap();
    }
    let day = std::time::Duration::from_secs(86_400);
    assert_eq!(db.prune_events(now, None, None).await.unwrap(), 0);
    assert_eq!(db.prune_events(now, Some(90 * day), None).await.unwrap(), 3);
    let left: Vec<String> = db
        .events(None, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.detail)
        .collect();
    assert_eq!(left, ["new 4", "new 3", "new 2", "new 1", "new 0"]);
    assert_eq!(db.prune_events(now, None, Some(2)).await.unwrap(), 3);
    let left: Vec<String> = db
        .events(None, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.detail)
        .collect();
    assert_eq!(left, ["new 4", "new 3"]);
    // Nothing more to do: both bounds hold.
    assert_eq!(
        db.prune_events(now, Some(90 * day), Some(2)).await.unwrap(),
        0
    );
}

/// Manifest retention: a manifest whose check-in changed nothing (quiet) goes after its age
/// limit; one that completed an assignment, carried an event (a refused ECU report, on the
/// general path and on PostgreSQL's quiet statement alike), progress or an update failure
/// stays until the limit for all; each vehicle's newest stays whatever its age.
async fn manifest_retention_prunes_quiet_ones_and_keeps_what_changed_something(url: String) {
    let db = connect(&url).await;
    db.register_vehicle(&new_vehicle("VIN-R")).await.unwrap();
    db.register_vehicle(&new_vehicle("VIN-Q")).await.unwrap();
    let a = assignment("VIN-R", "TBOX-1", "tbox/fw-2.bin", 2);
    db.create_assignment(&a).await.unwrap();
    let factory = Installed {
        target: "tbox/fw-1.bin".into(),
        length: 1,
        hashes: hashes("1"),
        release_counter: 1,
    };
    let store = |c: Checkin<'static>| {
        let db = db.clone();
        async move { db.record_checkin(&c).await.unwrap() }
    };
    // VIN-R: 1 quiet, 2 quiet (names the pending image's ECU with the old image),
    // 3 completes the assignment, 4 quiet, 5 an event, 6 progress, 7 an update failure,
    // 8 a refused (stale) report, 9 quiet, 10 quiet: its newest.
    store(checkin(
        "VIN-R",
        1,
        vec![report("TBOX-1", factory.clone(), 1)],
    ))
    .await;
    store(checkin(
        "VIN-R",
        2,
        vec![report("TBOX-1", factory.clone(), 2)],
    ))
    .await;
    let done = store(checkin(
        "VIN-R",
        3,
        vec![report("TBOX-1", installed_as(&a), 3)],
    ))
    .await;
    assert_eq!(done.len(), 1);
    store(checkin(
        "VIN-R",
        4,
        vec![report("TBOX-1", installed_as(&a), 4)],
    ))
    .await;
    let mut with_event = checkin("VIN-R", 5, Vec::new());
    with_event.events = vec![event("attack_detected", Some("VIN-R"), "10.0.0.1:1", "x")];
    store(with_event).await;
    let mut with_progress = checkin("VIN-R", 6, Vec::new());
    with_progress.progress = vec![("tbox/fw-2.bin".into(), "TBOX-1".into(), "downloading")];
    store(with_progress).await;
    let mut with_failure = checkin("VIN-R", 7, Vec::new());
    with_failure.update_failures = true;
    store(with_failure).await;
    // No pending assignment named: PostgreSQL takes it on its quiet statement, then finds
    // the report stale.
    store(checkin(
        "VIN-R",
        8,
        vec![report("TBOX-1", installed_as(&a), 4)],
    ))
    .await;
    store(checkin("VIN-R", 9, Vec::new())).await;
    store(checkin("VIN-R", 10, Vec::new())).await;
    // VIN-Q: one quiet manifest, its newest.
    store(checkin("VIN-Q", 1, Vec::new())).await;

    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let left = || {
        let pool = pool.clone();
        async move {
            let rows: Vec<(String, i64)> =
                sqlx::query_as("SELECT vin, counter FROM manifests ORDER BY vin, counter")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            rows.into_iter()
                .map(|(vin, c)| format!("{vin}/{c}"))
                .collect::<Vec<_>>()
        }
    };
    let day = std::time::Duration::from_secs(86_400);
    let now = chrono::Utc::now();
    let later = |days: i64| now + chrono::Duration::days(days);
    assert_eq!(db.prune_manifests(now, None, None).await.unwrap(), 0);
    assert_eq!(
        db.prune_manifests(now, Some(30 * day), None).await.unwrap(),
        0,
        "nothing is 30 days old yet"
    );
    assert_eq!(
        db.prune_manifests(later(31), Some(30 * day), None)
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        left().await,
        ["VIN-Q/1", "VIN-R/3", "VIN-R/5", "VIN-R/6", "VIN-R/7", "VIN-R/8", "VIN-R/10"],
        "quiet ones went, except each vehicle's newest"
    );
    assert_eq!(
        db.prune_manifests(later(31), Some(30 * day), Some(400 * day))
            .await
            .unwrap(),
        0,
        "both bounds hold"
    );
    assert_eq!(
        db.prune_manifests(later(401), None, Some(400 * day))
            .await
            .unwrap(),
        5
    );
    assert_eq!(left().await, ["VIN-Q/1", "VIN-R/10"], "the newest stay");
    // A newer check-in makes the old newest one prunable.
    store(checkin("VIN-Q", 2, Vec::new())).await;
    assert_eq!(
        db.prune_manifests(later(31), Some(30 * day), None)
            .await
            .unwrap(),
        1
    );
    assert_eq!(left().await, ["VIN-Q/2", "VIN-R/10"]);
}

/// A revocation names a VIN (all its certificates) or a serial (one certificate, any case
/// and `:`-separated on input); the lookup finds either, and nothing for others.
async fn revocations_match_by_vin_or_serial(url: String) {
    let db = connect(&url).await;
    assert_eq!(db.revocation_of("VIN-1", Some("0a0b")).await.unwrap(), None);
    assert!(db.revoke(None, None, "nothing").await.is_err());
    assert!(db.revoke(None, Some("xyz"), "bad").await.is_err());
    let by_vin = db.revoke(Some("VIN-1"), None, "stolen").await.unwrap();
    let by_serial = db
        .revoke(None, Some("0A:0B:0C"), "key leaked")
        .await
        .unwrap();
    assert!(by_serial > by_vin);
    let hit = db
        .revocation_of("VIN-1", Some("ffff"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((hit.id, hit.reason.as_str()), (by_vin, "stolen"));
    let hit = db
        .revocation_of("VIN-2", Some("0a0b0c"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hit.serial.as_deref(), Some("0a0b0c"));
    assert_eq!(db.revocation_of("VIN-2", Some("0a0b")).await.unwrap(), None);
    assert_eq!(db.revocation_of("VIN-2", None).await.unwrap(), None);
    let all = db.revocations().await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|r| is_rfc3339(&r.revoked_at)));
    assert_eq!(db.unrevoke_vin("VIN-1").await.unwrap(), 1);
    assert_eq!(db.revocation_of("VIN-1", None).await.unwrap(), None);
    assert_eq!(db.count("revocations").await.unwrap(), 1);
}

async fn image_keys_store_replace_read(url: String) {
    let db = connect(&url).await;
    assert_eq!(db.image_key("ivi/app.bin").await.unwrap(), None);
    let first = ImageKey {
        target: "ivi/app.bin".into(),
        content_key: "11".repeat(32),
        ciphertext_path: format!("ivi/{}.app.bin.enc", "a".repeat(64)),
        ciphertext_length: 4242,
        ciphertext_hashes: json!({ "sha256": "a".repeat(64) }).to_string(),
    };
    db.store_image_key(&first).await.unwrap();
    let other = ImageKey {
        target: "tbox/fw.bin".into(),
        content_key: "22".repeat(32),
        ciphertext_path: "tbox/x.fw.bin.enc".into(),
        ciphertext_length: 1,
        ciphertext_hashes: "{}".into(),
    };
    db.store_image_key(&other).await.unwrap();
    assert_eq!(
        db.image_key("ivi/app.bin").await.unwrap(),
        Some(first.clone())
    );

    // Publishing again replaces the key of that target only.
    let second = ImageKey {
        content_key: "33".repeat(32),
        ciphertext_path: format!("ivi/{}.app.bin.enc", "b".repeat(64)),
        ciphertext_length: 4343,
        ciphertext_hashes: json!({ "sha256": "b".repeat(64) }).to_string(),
        ..first.clone()
    };
    db.store_image_key(&second).await.unwrap();
    assert_eq!(db.image_key("ivi/app.bin").await.unwrap(), Some(second));
    assert_eq!(db.image_key("tbox/fw.bin").await.unwrap(), Some(other));
    assert_eq!(db.count("image_keys").await.unwrap(), 2);
}

async fn expire_director_roles_marks_every_document(url: String) {
    let db = connect(&url).await;
    assert_eq!(db.expire_director_roles().await.unwrap(), 0);
    let mut stored = Vec::new();
    for (vin, names) in [
        ("VIN-X", &["targets", "snapshot", "timestamp"][..]),
        ("VIN-Y", &["targets", "snapshot"][..]),
    ] {
        let roles: Vec<(Option<u64>, StoredRole)> =
            names.iter().map(|n| (None, role(n, 4, vin))).collect();
        assert!(db.replace_director_roles(vin, &roles).await.unwrap());
        for (_, r) in roles {
            stored.push((vin, r));
        }
    }
    assert_eq!(db.expire_director_roles().await.unwrap(), 5);
    for (vin, original) in stored {
        let now = db
            .director_role(vin, &original.role)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(now.expires_at, "1970-01-01T00:00:00Z");
        // Only the expiry changes: the next request re-signs from this version.
        assert_eq!(
            StoredRole {
                expires_at: original.expires_at.clone(),
                ..now
            },
            original
        );
    }
}

async fn count_only_knows_our_tables(url: String) {
    let db = connect(&url).await;
    for table in ["vehicles", "security_events", "image_keys"] {
        assert_eq!(db.count(table).await.unwrap(), 0);
    }
    for table in [
        "_sqlx_migrations",
        "pg_class",
        "vehicles; DROP TABLE vehicles",
    ] {
        assert!(
            matches!(db.count(table).await, Err(Error::Config(_))),
            "{table}"
        );
    }
    assert_eq!(db.count("vehicles").await.unwrap(), 0);
}

#[test]
fn test_database_url_replaces_only_the_name() {
    use common::with_database_name;
    assert_eq!(
        with_database_name("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database_name("postgres://u:p@h/db?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(
        with_database_name("postgres://h:5432", "x"),
        "postgres://h:5432/x"
    );
}

/// A pooled PostgreSQL connection whose backend died while it sat idle (a restart, a
/// failover, an idle TCP connection dropped on the way) is tested before it is used and
/// replaced: no statement fails for it. The pool does not test busy connections (a round
/// trip per statement), so this holds only for connections idle long enough (a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_connections_that_died_idle_are_replaced_before_use() {
    common::with_postgres(|url| async move {
        use sqlx::Connection;
        let db = connect(&url).await;
        db.register_vehicle(&new_vehicle("VIN-IDLE-0001"))
            .await
            .unwrap();
        // Several connections in the pool, each idle afterwards.
        let reads: Vec<_> = (0..8)
            .map(|_| {
                let db = db.clone();
                tokio::spawn(async move { db.vehicle("VIN-IDLE-0001").await })
            })
            .collect();
        for read in reads {
            read.await.unwrap().unwrap();
        }
        let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()) AS k",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
        assert!(killed >= 1, "no pooled backend to end");
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        // At once (each dead connection is taken) and one after another.
        let reads: Vec<_> = (0..8)
            .map(|_| {
                let db = db.clone();
                tokio::spawn(async move { db.vehicle("VIN-IDLE-0001").await })
            })
            .collect();
        let mut results = Vec::new();
        for read in reads {
            results.push(read.await.unwrap());
        }
        for _ in 0..8 {
            results.push(db.vehicle("VIN-IDLE-0001").await);
        }
        for read in results {
            assert!(
                matches!(read, Ok(Some(_))),
                "a read after the backends ended: {read:?}"
            );
        }
    })
    .await;
}

/// PostgreSQL's one-statement check-in returns the vehicle's director documents as stored
/// (the director answers from them without another read); a check-in that goes the general
/// way (a replay, a report that completes an assignment) and SQLite return none.
async fn a_quiet_checkin_reads_the_director_documents_it_leaves_current(url: String) {
    let db = connect(&url).await;
    for vin in ["VIN-Q1", "VIN-Q2"] {
        db.register_vehicle(&new_vehicle(vin)).await.unwrap();
        db.replace_director_roles(
            vin,
            &[
                (None, role("targets", 3, vin)),
                (None, role("snapshot", 4, vin)),
                (None, role("timestamp", 5, vin)),
            ],
        )
        .await
        .unwrap();
    }
    let stored = db.director_roles("VIN-Q1").await.unwrap();
    assert_eq!(stored.targets.as_ref().map(|t| t.version), Some(3));
    let (completed, roles) = db
        .record_checkin_reading_roles(&checkin("VIN-Q1", 1, vec![]))
        .await
        .unwrap();
    assert!(completed.is_empty());
    match db.backend() {
        // Its own vehicle's, all three, whole.
        Backend::Postgres => assert_eq!(roles, Some(stored)),
        Backend::Sqlite => assert_eq!(roles, None),
    }
    // A replay is refused and reads nothing.
    assert!(matches!(
        db.record_checkin_reading_roles(&checkin("VIN-Q1", 1, vec![]))
            .await,
        Err(Error::Replay(_))
    ));
    // A report completing an assignment changes the instructions: no documents returned.
    let a = assignment("VIN-Q2", "IVI-1", "fw-2.bin", 2);
    db.create_assignment(&a).await.unwrap();
    let (completed, roles) = db
        .record_checkin_reading_roles(&checkin(
            "VIN-Q2",
            1,
            vec![report("IVI-1", installed_as(&a), 1)],
        ))
        .await
        .unwrap();
    assert_eq!(completed.len(), 1);
    assert_eq!(roles, None);
}

/// A stored manifest (over PostgreSQL's 2 KB threshold, so compressed) is compressed with lz4
/// where the server has it (pglz was a tenth of PostgreSQL's CPU in a check-in), and reads back
/// as it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stores_manifests_compressed_with_lz4() {
    common::with_postgres(|url| async move {
        use sqlx::Connection;
        let db = connect(&url).await;
        db.register_vehicle(&new_vehicle("VIN-LZ4-0001")).await.unwrap();
        let document = format!(
            "{{\"signed\":{{\"reports\":[{}]}},\"signatures\":[]}}",
            vec!["{\"ecu\":\"IVI-1\",\"image\":\"fw-1.bin\"}"; 120].join(",")
        );
        assert!(document.len() > 4_000);
        let mut c = checkin("VIN-LZ4-0001", 1, vec![]);
        c.document = &document;
        db.record_checkin(&c).await.unwrap();
        let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
        let has_lz4: bool = sqlx::query_scalar(
            "SELECT 'lz4' = ANY (enumvals) FROM pg_settings WHERE name = 'default_toast_compression'",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
        let (stored, compression): (String, Option<String>) = sqlx::query_as(
            "SELECT document, pg_column_compression(document) FROM manifests WHERE vin = $1",
        )
        .bind("VIN-LZ4-0001")
        .fetch_one(&mut admin)
        .await
        .unwrap();
        assert_eq!(stored, document);
        let expected = if has_lz4 { "lz4" } else { "pglz" };
        assert_eq!(compression.as_deref(), Some(expected));
    })
    .await;
}

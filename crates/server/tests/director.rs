//! The director's signing under contention: many requests for one vehicle's documents at
//! once (a primary retrying, several instances) while its instructions keep changing (an
//! operator assigning ECU after ECU). Every request gets current documents; none gives up.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;
mod fleet;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::Utc;
use fleet::{director, fleet, instructions, operator_assignment};
use rampart_core::rule::Rule;
use rampart_server::director::Director;

async fn signing_under_changing_instructions(url: String) {
    let (d, _dir) = director(&url).await;
    let cars = fleet(&d, 1, "id4").await;
    let vin = cars[0].vin.clone();
    let d = Arc::new(d);
    let changing = Arc::new(AtomicBool::new(true));
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (d, vin, changing) = (d.clone(), vin.clone(), changing.clone());
        readers.spawn(async move {
            let mut asked = 0;
            while changing.load(Ordering::Relaxed) || asked < 5 {
                d.documents(&vin, Utc::now())
                    .await
                    .unwrap_or_else(|e| panic!("request {asked}: {e}"));
                asked += 1;
            }
        });
    }
    for n in 1..=40 {
        let ecu = if n % 2 == 0 { "TBOX" } else { "IVI" };
        d.db()
            .create_assignment(&operator_assignment(
                &vin,
                ecu,
                &format!("{}/fw-{n}.bin", ecu.to_lowercase()),
                n,
            ))
            .await
            .unwrap();
    }
    changing.store(false, Ordering::Relaxed);
    while let Some(r) = readers.join_next().await {
        r.unwrap();
    }
    // What the vehicle is told in the end: the last instruction of each ECU.
    assert_eq!(
        instructions(&d, &vin).await,
        ["ivi/fw-39.bin", "tbox/fw-40.bin"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_is_answered_while_instructions_keep_changing_on_sqlite() {
    common::with_sqlite(signing_under_changing_instructions).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_is_answered_while_instructions_keep_changing_on_postgres() {
    common::with_postgres(signing_under_changing_instructions).await;
}

// A director keeps the registered keys of the vehicles that checked in (`director::known`),
// so a check-in reads no vehicle first. What can change about a vehicle — its removal, its
// counters — is decided where the check-in is stored, so another instance's changes hold.

/// Two directors (two `rampart serve` instances) over one database, and a car registered
/// through the first.
async fn two_instances(url: &str) -> (Director, Director, fleet::Car, [tempfile::TempDir; 2]) {
    let (a, dir_a) = director(url).await;
    let (b, dir_b) = director(url).await;
    let car = fleet(&a, 1, "id4").await.remove(0);
    (a, b, car, [dir_a, dir_b])
}

/// `car`'s next manifest, checked in with `d`.
async fn next_check_in(
    d: &Director,
    car: &mut fleet::Car,
) -> rampart_server::error::Result<rampart_server::director::CheckinResponse> {
    let body = car.manifest();
    d.check_in(&car.vin, &body, None, Utc::now()).await
}

async fn stored_counter(d: &Director, vin: &str) -> Option<u64> {
    let vehicle = d.db().vehicle(vin).await.unwrap().unwrap();
    vehicle.last_manifest_counter
}

async fn events_of(d: &Director, vin: &str, rule: Rule) -> u64 {
    d.db()
        .events(Some(vin), Some(rule.as_str()), 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.count)
        .sum()
}

async fn removal_through_another_instance(url: String) {
    let (a, b, mut car, _dirs) = two_instances(&url).await;
    // The first instance knows the car's keys after its first check-in.
    next_check_in(&a, &mut car).await.unwrap();
    let before = stored_counter(&a, &car.vin).await;
    b.db().remove_vehicle(&car.vin, "stolen").await.unwrap();
    let refused = next_check_in(&a, &mut car)
        .await
        .expect_err("a removed vehicle's manifest is not taken");
    assert_eq!(refused.rule(), Rule::VehicleRemoved, "{refused}");
    assert_eq!(refused.status().as_u16(), 403);
    assert_eq!(stored_counter(&a, &car.vin).await, before);
    assert_eq!(events_of(&a, &car.vin, Rule::VehicleRemoved).await, 1);
    // And again, now that the first instance has read the removal.
    let refused = next_check_in(&a, &mut car)
        .await
        .expect_err("still removed");
    assert_eq!(refused.rule(), Rule::VehicleRemoved, "{refused}");
}

#[tokio::test]
async fn a_vehicle_removed_through_another_instance_is_refused_by_one_that_knew_its_keys_on_sqlite()
{
    common::with_sqlite(removal_through_another_instance).await;
}

#[tokio::test]
async fn a_vehicle_removed_through_another_instance_is_refused_by_one_that_knew_its_keys_on_postgres(
) {
    common::with_postgres(removal_through_another_instance).await;
}

async fn replay_across_instances(url: String) {
    let (a, b, mut car, _dirs) = two_instances(&url).await;
    next_check_in(&a, &mut car).await.unwrap();
    // The next manifest goes to the other instance; the first still holds the counter before.
    let second = car.manifest();
    b.check_in(&car.vin, &second, None, Utc::now())
        .await
        .unwrap();
    let refused = a
        .check_in(&car.vin, &second, None, Utc::now())
        .await
        .expect_err("a manifest accepted by another instance is a replay here");
    assert_eq!(refused.rule(), Rule::Replay, "{refused}");
    assert_eq!(refused.status().as_u16(), 409);
    // Decided once: one event, though the first instance tried with what it knew first.
    assert_eq!(events_of(&a, &car.vin, Rule::Replay).await, 1);
    // A fresh manifest is taken by either.
    next_check_in(&a, &mut car).await.unwrap();
}

#[tokio::test]
async fn a_manifest_accepted_by_another_instance_is_refused_once_as_a_replay_on_sqlite() {
    common::with_sqlite(replay_across_instances).await;
}

#[tokio::test]
async fn a_manifest_accepted_by_another_instance_is_refused_once_as_a_replay_on_postgres() {
    common::with_postgres(replay_across_instances).await;
}

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

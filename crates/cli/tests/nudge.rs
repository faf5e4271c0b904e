//! "Check in now" nudges over a real MQTT broker (Mosquitto on 127.0.0.1:1883, or
//! `RAMPART_TEST_MQTT`): a vehicle polling every minute installs a campaign's update within
//! seconds of its start because the server nudged it; a forged nudge from anyone on the
//! broker makes it check in and nothing more; a flood of nudges gets at most one check-in
//! per its minimum interval.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, Instant};

use rampart_lab::{image_bytes, Lab, LabOptions};
use rumqttc::{AsyncClient, QoS};
use serde_json::json;

fn broker() -> String {
    std::env::var("RAMPART_TEST_MQTT").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into())
}

/// The director's count of the vehicle's accepted manifests (its manifest counter).
async fn checkins(lab: &Lab, vin: &str) -> u64 {
    lab.admin_get(&format!("vehicles/{vin}"))
        .await
        .unwrap()
        .get("last_manifest_counter")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// Waits up to `limit` for `done`, polling.
async fn until<F, Fut>(limit: Duration, mut done: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if done().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Someone else on the broker: publishes `n` nudges on `topic`.
async fn forge(topic: &str, n: usize) {
    let options = rampart_client::nudge::Broker {
        url: broker(),
        ..Default::default()
    }
    .options(&format!("forger-{}", std::process::id()))
    .unwrap();
    let (client, mut events) = AsyncClient::new(options, 256);
    let pump = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    for _ in 0..n {
        client
            .publish(
                topic,
                QoS::AtMostOnce,
                false,
                b"{\"please\":\"install evil.bin\"}".to_vec(),
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = client.disconnect().await;
    pump.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nudge_brings_the_check_in_forward_and_a_forged_one_nothing_more() {
    let url = broker();
    let address = url.trim_start_matches("mqtt://").to_owned();
    if tokio::net::TcpStream::connect(&address).await.is_err() {
        panic!("no MQTT broker at {url}: run ./scripts/mqtt-up (or set RAMPART_TEST_MQTT)");
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_rampart"));
    let mut options = LabOptions::new(dir.path(), bin.clone(), 1);
    options.mqtt = Some(broker());
    let mut lab = Lab::create(options).await.unwrap();
    lab.start_ecus().await.unwrap();
    let vin = lab.vehicles[0].vin.clone();
    let topic = format!("{}/{vin}/nudge", lab.nudge_prefix.clone().unwrap());

    // The vehicle runs as a service, polling every 60 s.
    let v = &lab.vehicles[0];
    let log = v.dir.join("primary.log");
    let mut primary = tokio::process::Command::new(&bin)
        .args(["-v", "vehicle", "--consent", "auto", "--config"])
        .arg(&v.primary_config)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("primary.err")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let read_log = || {
        format!(
            "{}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("primary.err")).unwrap_or_default()
        )
    };
    until(Duration::from_secs(30), || async {
        checkins(&lab, &vin).await >= 1
    })
    .await
    .unwrap_or_else(|| panic!("no first check-in\n{}", read_log()));
    // Subscribed (the broker keeps no message for a client not yet listening).
    until(Duration::from_secs(10), || async {
        read_log().contains("listening for nudges")
    })
    .await
    .unwrap_or_else(|| panic!("not listening\n{}", read_log()));

    // A campaign starts: the server nudges; the vehicle installs well before its next poll.
    lab.publish_bytes(
        "bcm/fw-2.0.bin",
        "bcm-1",
        "2.0",
        &image_bytes("bcm 2.0", 30_000),
        false,
    )
    .await
    .unwrap();
    let bcm = lab.vehicles[0].ecus[2].ecu_id.clone();
    let started = Instant::now();
    lab.admin_post(
        "campaigns",
        &json!({"name": "nudged", "images": ["bcm/fw-2.0.bin"], "waves": "all",
                "criteria": {"soak_seconds": 0}, "start": true}),
    )
    .await
    .unwrap();
    let took = until(Duration::from_secs(30), || async {
        lab.installed(&vin)
            .await
            .unwrap()
            .get(&bcm)
            .map(String::as_str)
            == Some("bcm/fw-2.0.bin")
    })
    .await
    .unwrap_or_else(|| panic!("not installed after a nudge\n{}", read_log()));
    assert!(
        took < Duration::from_secs(30) && started.elapsed() < Duration::from_secs(55),
        "the nudge did not bring the check-in forward: {took:?}"
    );
    assert!(
        read_log().contains("nudged: checking in now"),
        "{}",
        read_log()
    );

    // A forged nudge: a check-in, and nothing installed (there is nothing to install).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = checkins(&lab, &vin).await;
    let installed_before = lab.installed(&vin).await.unwrap();
    forge(&topic, 1).await;
    until(Duration::from_secs(10), || async {
        checkins(&lab, &vin).await > before
    })
    .await
    .unwrap_or_else(|| panic!("a nudge did not make it check in\n{}", read_log()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(lab.installed(&vin).await.unwrap(), installed_before);

    // A flood: 200 nudges in a burst give at most one check-in per 2 s (its minimum interval).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = checkins(&lab, &vin).await;
    let flood = Instant::now();
    forge(&topic, 200).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let window = flood.elapsed().as_secs_f64();
    let cycles = checkins(&lab, &vin).await - before;
    assert!(
        cycles >= 1 && (cycles as f64) <= 1.0 + (window / 2.0).ceil(),
        "{cycles} check-ins in {window:.1} s after 200 nudges\n{}",
        read_log()
    );
    primary.kill().await.unwrap();
    lab.stop().await.unwrap();
}

//! The demo's delta update: the next navigation release is published with a delta from the
//! one every IVI runs (encrypted per ECU like the image), and each vehicle downloads the delta
//! instead of the image; the owner is told the bytes saved.

use rampart_lab::image_bytes;
use rampart_vehicle::consent::human_bytes;
use serde_json::Value;

use super::{ok, Demo};

/// The navigation release after 3.1: some maps changed, a region added, a new tail.
fn nav_3_2() -> Vec<u8> {
    let mut new = image_bytes("ivi/nav-3.1.bin", 2_500_000);
    for b in new.iter_mut().skip(50_000).step_by(997).take(800) {
        *b = b.wrapping_add(3);
    }
    new.splice(1_200_000..1_200_000, image_bytes("nav 3.2 region", 30_000));
    new.extend_from_slice(&image_bytes("nav 3.2 tail", 20_000));
    new
}

impl Demo {
    /// Step 8: a delta update of the IVI on every vehicle.
    pub(super) async fn delta_update(&mut self) -> anyhow::Result<()> {
        self.out
            .step("Delta update: navigation 3.2 as a delta from 3.1 (encrypted per ECU)");
        let request = self
            .lab
            .image_request("ivi/nav-3.2.bin", "ivi-x", &nav_3_2())?;
        let p = self
            .lab
            .publish(&rampart_server::ops::PublishRequest {
                version: Some("3.2".into()),
                purpose: Some("navigation maps: new region".into()),
                encrypt: true,
                delta_from: vec!["ivi/nav-3.1.bin".into()],
                ..request
            })
            .await?;
        for (delta, length) in &p.deltas {
            ok(format!(
                "{} published ({}) with the delta {delta} ({}, signed by the same offline key)",
                p.name,
                human_bytes(p.length),
                human_bytes(*length)
            ));
        }
        self.lab
            .assign_all("ivi/nav-3.2.bin", "ivi-x", true)
            .await?;
        let (mut sent, mut saved) = (0u64, 0u64);
        for i in 0..self.lab.vehicles.len() {
            let vin = self
                .lab
                .vehicles
                .get(i)
                .map(|v| v.vin.clone())
                .unwrap_or_default();
            let run = self.lab.run_vehicle(i, "auto").await?;
            if i == 0 {
                rampart_cli::say!("   What the owner of {vin} is shown:");
                for line in run.stdout.lines().filter(|l| l.contains("size:")) {
                    rampart_cli::say!("   │{line}");
                }
            }
            let update = run
                .report
                .as_ref()
                .and_then(|r| r.get("updates"))
                .and_then(Value::as_array)
                .and_then(|u| u.first())
                .cloned()
                .unwrap_or(Value::Null);
            let bytes = update.get("bytes").and_then(Value::as_u64).unwrap_or(0);
            let spared = update
                .get("saved_bytes")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            sent += bytes;
            saved += spared;
            self.expect(
                run.success && update.get("status") == Some(&Value::from("Installed")) && spared > 0,
                format!(
                    "{vin}: IVI built nav 3.2 from 3.1 and a {} delta ({} saved); its hashes are the signed image's",
                    human_bytes(bytes),
                    human_bytes(spared)
                ),
                format!("{vin}: the delta update did not install as a delta"),
                format!(
                    "vehicle {vin}, delta update: {update}\n{}\n{}",
                    run.stdout, run.stderr
                ),
            );
        }
        ok(format!(
            "fleet: {} sent instead of {} ({:.0} % saved)",
            human_bytes(sent),
            human_bytes(sent + saved),
            saved as f64 * 100.0 / (sent + saved).max(1) as f64
        ));
        Ok(())
    }
}

//! The demo's campaigns: the release rolled out in waves (canary first), then a release
//! whose body-controller image fails its health check after it boots: the campaign halts by
//! itself on the canary, whose ECU rolls back, and the later waves never hear of it. Each
//! vehicle's RXSWIN before and after shows that only confirmed installs change it.

use serde_json::{json, Value};

use super::{bad, ok, Demo, IMAGES};

/// The first release's campaign.
const FIRST: &str = "fleet-2026.12";
/// The campaign of the release that fails its health check.
const FAILING: &str = "bcm-1.5";
/// The RXSWIN each release gives the vehicles (UNECE R156).
const RXSWIN_FIRST: &str = "R156-RAMPART-DEMO.2";
const RXSWIN_FAILING: &str = "R156-RAMPART-DEMO.3";

/// Cumulative waves for `n` vehicles: a canary, then half, then all.
fn waves(n: usize) -> &'static str {
    match n {
        0 | 1 => "all",
        2 => "1,all",
        _ => "1,50%,100%",
    }
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

impl Demo {
    fn vins(&self) -> Vec<String> {
        self.lab.vehicles.iter().map(|v| v.vin.clone()).collect()
    }

    /// Creates and starts a campaign over the fleet in VIN order (the first is the canary).
    async fn start_campaign(
        &self,
        name: &str,
        images: &[&str],
        rxswin: &str,
    ) -> anyhow::Result<Value> {
        let vins = self.vins();
        self.lab
            .admin_post(
                "campaigns",
                &json!({
                    "name": name,
                    "images": images,
                    "target": {"vins": vins},
                    "waves": waves(vins.len()),
                    "criteria": {"min_success_pct": 100.0, "max_failure_pct": 0.0, "soak_seconds": 0},
                    "rxswin": rxswin,
                    "start": true,
                }),
            )
            .await
    }

    /// A vehicle's RXSWIN now, and the one it had before any campaign changed it.
    async fn rxswin(&self, vin: &str) -> anyhow::Result<(String, String)> {
        let r = self
            .lab
            .admin_get(&format!("vehicles/{vin}/rxswin"))
            .await?;
        let now = text(&r, "/rxswin");
        let first = r
            .pointer("/history/0")
            .map_or(now, |h| text(h, "/previous"));
        let or_none = |s: &str| {
            if s.is_empty() {
                "none".to_owned()
            } else {
                s.to_owned()
            }
        };
        Ok((or_none(first), or_none(now)))
    }

    /// Step 4: the release as a staged campaign.
    pub(super) async fn campaign(&mut self) -> anyhow::Result<()> {
        self.out
            .step("Campaign: a staged rollout of the release, canary first");
        let images: Vec<&str> = IMAGES.iter().map(|i| i.0).collect();
        let c = self.start_campaign(FIRST, &images, RXSWIN_FIRST).await?;
        let sizes: Vec<String> = c
            .get("wave_sizes")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(Value::to_string).collect())
            .unwrap_or_default();
        ok(format!(
            "campaign {FIRST}: {} images to {} vehicles in waves of {} (canary {}); the next \
             wave starts when every vehicle of the last one confirmed its install; any \
             failure halts it",
            images.len(),
            self.lab.vehicles.len(),
            sizes.join(", "),
            self.vins().first().map_or("-", String::as_str)
        ));
        ok(format!(
            "RXSWIN {RXSWIN_FIRST} recorded per vehicle once its ECUs' signed reports confirm the install"
        ));
        Ok(())
    }

    /// After step 5: the first campaign completed, every vehicle on its RXSWIN.
    pub(super) async fn rollout_completed(&mut self) -> anyhow::Result<()> {
        let status = self.lab.admin_get(&format!("campaigns/{FIRST}")).await?;
        let state = text(&status, "/campaign/state").to_owned();
        let log: Vec<String> = status
            .get("log")
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .filter(|e| text(e, "/action") == "wave")
                    .map(|e| text(e, "/detail").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        for line in &log {
            rampart_cli::say!("   director: {line}");
        }
        self.expect(
            state == "completed",
            format!("campaign {FIRST} completed: every wave confirmed by signed reports"),
            format!("campaign {FIRST} is {state}"),
            format!("campaign {FIRST}: {status:#}"),
        );
        Ok(())
    }

    /// Step 7: a release that fails its health check halts its campaign on the canary.
    pub(super) async fn halting_rollout(&mut self, root: &std::path::Path) -> anyhow::Result<()> {
        self.out
            .step("Staged rollout of a bad release: it halts itself on the canary");
        let vins = self.vins();
        let mut before = Vec::new();
        for vin in &vins {
            before.push(self.rxswin(vin).await?);
        }
        // The body controller's image passes every signature and hash check, but the ECU's
        // health check fails after it boots into it.
        let mut broken = rampart_lab::image_bytes("bcm 1.5", 200_000);
        broken.extend_from_slice(b"BROKEN");
        let file = root.join("release/bcm-1.5.bin");
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&file, &broken)?;
        self.lab
            .publish(&rampart_server::ops::PublishRequest {
                name: Some("bcm/fw-1.5.bin".into()),
                version: Some("1.5".into()),
                purpose: Some("body controller: new locking logic".into()),
                ..rampart_server::ops::PublishRequest::new(file, "bcm-1")
            })
            .await?;
        self.start_campaign(FAILING, &["bcm/fw-1.5.bin"], RXSWIN_FAILING)
            .await?;
        ok(format!(
            "bcm/fw-1.5.bin published (signed, valid) and campaign {FAILING} started, canary {}",
            vins.first().map_or("-", String::as_str)
        ));
        let Some((canary, bcm)) = self.lab.vehicles.first().map(|v| {
            (
                v.vin.clone(),
                v.ecus.get(2).map(|e| e.ecu_id.clone()).unwrap_or_default(),
            )
        }) else {
            return Ok(());
        };
        let run = self.lab.run_vehicle(0, "auto").await?;
        let after = self.lab.installed(&canary).await?;
        let rolled_back = after.get(&bcm).map(String::as_str) == Some("bcm/fw-1.4.bin");
        let said = run.stdout.contains("boot-failed") || run.stderr.contains("boot-failed");
        self.expect(
            rolled_back && said,
            format!(
                "canary {canary}: {bcm} booted bcm/fw-1.5.bin, failed its health check and rolled back to bcm/fw-1.4.bin (boot-failed)"
            ),
            "the canary did not roll back as expected",
            format!("canary: {after:?}\n{}\n{}", run.stdout, run.stderr),
        );
        let status = self.lab.admin_get(&format!("campaigns/{FAILING}")).await?;
        let state = text(&status, "/campaign/state").to_owned();
        let reason = text(&status, "/campaign/reason").to_owned();
        self.expect(
            state == "halted",
            format!("campaign {FAILING} halted by itself at the canary's report: {reason}"),
            format!("campaign {FAILING} is {state}, not halted"),
            format!("{FAILING}: {status:#}"),
        );
        // The later waves check in as usual and are told nothing.
        let mut spared = 0;
        for i in 1..self.lab.vehicles.len() {
            let vin = vins.get(i).cloned().unwrap_or_default();
            let run = self.lab.run_vehicle(i, "auto").await?;
            let told = self
                .lab
                .admin_get(&format!("assignments?vin={vin}"))
                .await?
                .as_array()
                .is_some_and(|a| {
                    a.iter()
                        .any(|x| x.get("target").and_then(Value::as_str) == Some("bcm/fw-1.5.bin"))
                });
            if run.success && !told {
                spared += 1;
            } else {
                bad(format!("{vin} was instructed to install bcm/fw-1.5.bin"));
                self.failures
                    .push(format!("{vin}: {}\n{}", run.stdout, run.stderr));
            }
        }
        if vins.len() > 1 {
            ok(format!(
                "{spared} vehicle(s) of the later waves checked in and were never instructed"
            ));
        }
        rampart_cli::say!(
            "   {:<18} {:<22} {:<22} {}",
            "vehicle",
            "RXSWIN at the factory",
            format!("after {FIRST}"),
            format!("after {FAILING}")
        );
        for (vin, (factory, was)) in vins.iter().zip(&before) {
            let (_, now) = self.rxswin(vin).await?;
            rampart_cli::say!("   {vin:<18} {factory:<22} {was:<22} {now}");
            if now != RXSWIN_FIRST {
                bad(format!("{vin}: RXSWIN {now}, expected {RXSWIN_FIRST}"));
                self.failures.push(format!("{vin}: RXSWIN {now}"));
            }
        }
        ok(format!(
            "no vehicle took {RXSWIN_FAILING}: an RXSWIN changes only on confirmed installs"
        ));
        self.lab
            .admin_post(
                &format!("campaigns/{FAILING}/cancel"),
                &json!({"reason": "fails its health check on the canary"}),
            )
            .await?;
        ok(format!(
            "the operator cancels {FAILING}; the update records keep what happened"
        ));
        Ok(())
    }
}

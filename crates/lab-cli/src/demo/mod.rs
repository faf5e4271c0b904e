//! `rampart-lab demo`: the main job on embedded defaults. A server after a real key ceremony, a
//! release published, a small fleet whose ECUs run as real processes, a staged campaign
//! (canary first) with owner consent, download, verification, install and reports; then a
//! release that fails its health check, which halts its campaign on the canary; then three
//! attacks, each rejected, and a summary. Exit status 0 only if everything went as it should.
//!
//! Modules: `rollout` (the campaigns), `delta` (a delta update), `offline` (an install from
//! a workshop's bundle).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use rampart_core::signer::InMemorySigner;
use rampart_core::uptane::manifest::{
    sign_vehicle_manifest, VehicleManifest, VEHICLE_MANIFEST_TYPE,
};
use rampart_lab::{image_bytes, Lab, LabOptions};
use serde_json::Value;

mod delta;
mod offline;
mod rollout;

/// `rampart-lab demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Answer the owner's consent with yes (for CI; implied when there is no terminal).
    #[arg(long)]
    yes: bool,
    /// Number of vehicles.
    #[arg(long, default_value_t = 3)]
    vehicles: usize,
    /// Keep everything in this folder (new or empty) instead of a temporary one that is
    /// removed at the end, whatever the outcome.
    #[arg(long)]
    keep: Option<PathBuf>,
}

/// The release the demo publishes: name, hardware ID, version, size, encrypted per ECU.
const IMAGES: [(&str, &str, &str, usize, bool); 4] = [
    ("tbox/fw-2.0.bin", "tbox-a", "2.0", 1_500_000, false),
    ("ivi/nav-3.1.bin", "ivi-x", "3.1", 2_500_000, true),
    ("bcm/fw-1.4.bin", "bcm-1", "1.4", 200_000, false),
    ("seat/fw-5.2.bin", "seat-uds", "5.2", 300_000, false),
];

/// What each image of the release is for, as the release engineer states it: what the owner
/// is told before it installs (UNECE R156 §7.2).
fn purpose_of(name: &str) -> &'static str {
    match name {
        "tbox/fw-2.0.bin" => "modem firmware: more reliable connections and security fixes",
        "ivi/nav-3.1.bin" => "navigation maps and routing fixes",
        "seat/fw-5.2.bin" => "seat memory positions are kept after a battery change",
        _ => "body controller fixes for the central locking",
    }
}

struct Out {
    step: usize,
}

impl Out {
    fn step(&mut self, title: &str) {
        self.step += 1;
        rampart_cli::say!(
            "\n── {}. {title} {}",
            self.step,
            "─".repeat(60usize.saturating_sub(title.len()))
        );
    }
}

fn ok(msg: impl AsRef<str>) {
    rampart_cli::say!("   ✔ {}", msg.as_ref());
}

fn bad(msg: impl AsRef<str>) {
    rampart_cli::say!("   ✘ {}", msg.as_ref());
}

fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

/// Runs the demo.
pub(crate) fn main(args: DemoArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

/// The demo's working folder: `--keep DIR` (absolute, so the configurations written in it
/// hold paths that work from any folder; new or empty, so nothing is overwritten), or a
/// temporary folder removed when the demo ends — declined, failed or done — since it holds
/// private keys.
fn working_folder(keep: Option<&Path>) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match keep {
        Some(p) => {
            let p = std::path::absolute(p).with_context(|| format!("--keep {}", p.display()))?;
            if let Ok(mut entries) = std::fs::read_dir(&p) {
                if entries.next().is_some() {
                    bail!(
                        "--keep {}: the folder is not empty; give a new or empty folder (the demo \
                         writes keys and configurations and must not overwrite anything)",
                        p.display()
                    );
                }
            }
            std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
            Ok((p, None))
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("rampart-demo-")
                .tempdir()
                .context("creating a temporary folder")?;
            Ok((temp.path().to_path_buf(), Some(temp)))
        }
    }
}

async fn run(args: DemoArgs) -> anyhow::Result<()> {
    // Dropped at the end of `run`, on every path: the temporary folder goes with it.
    let (root, _temp) = working_folder(args.keep.as_deref())?;
    let bin = std::env::current_exe().context("locating the rampart-lab binary")?;
    rampart_cli::say!(
        "Rampart demo — secure over-the-air updates for a fleet of {} vehicles (Uptane on TUF)",
        args.vehicles
    );
    rampart_cli::say!("Working folder: {}", root.display());
    let mut demo = Demo::start(&root, &bin, args.vehicles).await?;
    demo.publish().await?;
    demo.start_fleet().await?;
    demo.campaign().await?;
    if !owner_approves(&args)? {
        demo.lab.stop().await?;
        return Ok(());
    }
    let before_after = demo.update_vehicles().await?;
    demo.summary(&before_after).await?;
    demo.rollout_completed().await?;
    demo.halting_rollout(&root).await?;
    demo.delta_update().await?;
    demo.offline_install(&root).await?;
    demo.out
        .step("Attacks (each must be rejected, noticed and recorded)");
    let first_vin = demo
        .lab
        .vehicles
        .first()
        .map(|v| v.vin.clone())
        .unwrap_or_default();
    demo.tampered_image(&first_vin).await?;
    demo.replayed_manifest(&first_vin).await?;
    demo.rollback(&first_vin, &root).await?;
    demo.events(&first_vin).await?;
    let Demo { lab, failures, .. } = demo;
    lab.stop().await?;
    rampart_cli::say!();
    if failures.is_empty() {
        rampart_cli::say!(
            "All {} vehicles updated in waves; a failing release halted on its canary; a delta \
             update saved most of its bytes; an offline install reached the director; 3 of 3 \
             attacks rejected and recorded. ✔",
            args.vehicles
        );
        Ok(())
    } else {
        for f in &failures {
            rampart_cli::say_err!("{f}");
        }
        if args.keep.is_some() {
            bail!(
                "{} check(s) failed (files kept in {})",
                failures.len(),
                root.display()
            )
        }
        bail!(
            "{} check(s) failed (run with --keep DIR to keep the files to look at)",
            failures.len()
        )
    }
}

/// The demo's fleet and what went wrong so far.
struct Demo {
    lab: Lab,
    out: Out,
    failures: Vec<String>,
}

/// Per vehicle: its VIN, what each ECU ran before and runs after, and the updates handled.
type BeforeAfter = Vec<(VinMap, VinMap, Vec<Value>, String)>;

/// ECU ID → installed target.
type VinMap = std::collections::BTreeMap<String, String>;

impl Demo {
    /// Step 1: the key ceremony and the server.
    async fn start(
        root: &std::path::Path,
        bin: &std::path::Path,
        vehicles: usize,
    ) -> anyhow::Result<Demo> {
        let mut out = Out { step: 0 };
        out.step("Key ceremony and server");
        // Every vehicle carries the three Uptane ECUs and one legacy ECU that the primary
        // flashes as its gateway over UDS on DoIP.
        let mut options = LabOptions::new(root, bin, vehicles);
        options.ecus.push(rampart_lab::legacy_ecu());
        let lab = Lab::create(options).await?;
        ok("root keys (2 of 3) and targets key of the image repository: offline folder, 0600");
        ok("director root keys offline; snapshot, timestamp and director keys online");
        ok("fleet CA, TLS server certificate, admin token");
        ok(format!(
        "server listening on {} (SQLite, HTTPS; vehicles authenticate with client certificates)",
        lab.url
    ));

        Ok(Demo {
            lab,
            out,
            failures: Vec::new(),
        })
    }

    /// One expectation of the story: `good` if it `held`, else `failed`, and `why` kept for
    /// the end of the demo (which then fails).
    fn expect(&mut self, held: bool, good: impl AsRef<str>, failed: impl AsRef<str>, why: String) {
        if held {
            ok(good);
        } else {
            bad(failed);
            self.failures.push(why);
        }
    }

    /// An attack the vehicle's cycle `run` must have refused by `rule`, with `kept` true when
    /// the ECU still runs what it ran.
    fn expect_refused(
        &mut self,
        run: &rampart_lab::VehicleRun,
        rule: &str,
        kept: bool,
        good: &str,
        what: &str,
    ) {
        let noticed = run.stdout.contains(rule) || run.stderr.contains(rule);
        self.expect(
            kept && noticed,
            good,
            format!("{what} was not rejected as expected"),
            format!("{what}: {}\n{}", run.stdout, run.stderr),
        );
    }

    /// Step 2: the release engineer publishes the images.
    async fn publish(&mut self) -> anyhow::Result<()> {
        self.out.step("Release engineering: publishing images");
        rampart_cli::say!(
            "   {:<18} {:<8} {:>10}  {:<14} {:>7}  delivery",
            "image",
            "hardware",
            "size",
            "sha256",
            "counter"
        );
        for (name, hw, version, size, encrypt) in IMAGES {
            let request = self.lab.image_request(name, hw, &image_bytes(name, size))?;
            let p = self
                .lab
                .publish(&rampart_server::ops::PublishRequest {
                    version: Some(version.into()),
                    purpose: Some(purpose_of(name).into()),
                    encrypt,
                    ..request
                })
                .await?;
            rampart_cli::say!(
                "   {:<18} {:<8} {:>10}  {:<14} {:>7}  {}",
                p.name,
                hw,
                rampart_vehicle::consent::human_bytes(p.length),
                format!("{}…", short(&p.sha256)),
                p.release_counter,
                if encrypt {
                    "encrypted per ECU"
                } else {
                    "signed"
                }
            );
        }
        ok("targets metadata signed with the offline targets key; snapshot and timestamp online");

        Ok(())
    }

    /// Step 3: the vehicles are registered and their ECUs started.
    async fn start_fleet(&mut self) -> anyhow::Result<()> {
        self.out
            .step("Fleet: registering vehicles and starting their ECUs");
        self.lab.start_ecus().await?;
        for v in &self.lab.vehicles {
            let ecus: Vec<String> = v
                .ecus
                .iter()
                .map(|e| {
                    format!(
                        "{} ({}, {})",
                        e.ecu_id,
                        e.spec.hardware_id,
                        if e.spec.legacy {
                            "UDS/DoIP"
                        } else if e.spec.verification
                            == rampart_vehicle::secondary::Verification::Full
                        {
                            "full"
                        } else {
                            "partial"
                        }
                    )
                })
                .collect();
            ok(format!("{}  {}", v.vin, ecus.join(", ")));
        }
        rampart_cli::say!("   {} ECU processes listening on loopback; each has its own trusted roots and A/B slots (flash banks); the Uptane ECUs their own keys, the legacy ones a UDS bootloader with a security-access secret shared with the gateway", self.lab.vehicles.iter().map(|v| v.ecus.len()).sum::<usize>());

        Ok(())
    }

    /// Step 5: each vehicle's cycle.
    async fn update_vehicles(&mut self) -> anyhow::Result<BeforeAfter> {
        self.out
            .step("Vehicles: manifest → verification → consent → download → install → report");
        let mut before_after = Vec::new();
        for i in 0..self.lab.vehicles.len() {
            let vin = self
                .lab
                .vehicles
                .get(i)
                .map(|v| v.vin.clone())
                .unwrap_or_default();
            let before = self.lab.installed(&vin).await?;
            let run = self.lab.run_vehicle(i, "auto").await?;
            if i == 0 {
                rampart_cli::say!("   What the owner of {vin} is shown:");
                for line in run.stdout.lines().filter(|l| l.starts_with("  ")) {
                    rampart_cli::say!("   │{line}");
                }
            }
            let report = run.report.clone().unwrap_or(Value::Null);
            let updates = report
                .get("updates")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let installed = updates
                .iter()
                .filter(|u| u.get("status") == Some(&Value::from("Installed")))
                .count();
            self.expect(
                run.success && installed == updates.len() && !updates.is_empty(),
                format!("{vin}: {installed} image(s) verified (director + image repository) and installed; ECUs rebooted into the new slots"),
                format!("{vin}: {installed}/{} installed", updates.len()),
                format!(
                    "vehicle {vin} did not install everything:\n{}\n{}",
                    run.stdout, run.stderr
                ),
            );
            let after = self.lab.installed(&vin).await?;
            before_after.push((before, after, updates, vin));
        }

        Ok(before_after)
    }

    /// Step 6: what each ECU runs, as the director knows it.
    async fn summary(&mut self, before_after: &BeforeAfter) -> anyhow::Result<()> {
        self.out
            .step("Summary: what each ECU runs, as the director knows it");
        rampart_cli::say!(
            "   {:<18} {:<10} {:<26} {:<20} how",
            "vehicle",
            "ECU",
            "before",
            "after"
        );
        for (before, after, updates, vin) in before_after {
            for (ecu, now) in after {
                let how = updates
                    .iter()
                    .find(|u| u.get("ecu_id").and_then(Value::as_str) == Some(ecu))
                    .map(|u| {
                        if u.get("via").and_then(Value::as_str) == Some("uds-doip") {
                            "flashed over UDS/DoIP by the gateway"
                        } else if u.get("encrypted") == Some(&Value::Bool(true)) {
                            "encrypted, decrypted by the ECU"
                        } else {
                            "signed image"
                        }
                    })
                    .unwrap_or("");
                let was = before
                    .get(ecu)
                    .map(String::as_str)
                    .filter(|b| !b.starts_with('('))
                    .unwrap_or("factory image");
                rampart_cli::say!("   {:<18} {:<10} {:<26} {:<20} {}", vin, ecu, was, now, how);
            }
        }
        let pending: usize = self
            .lab
            .admin_get("assignments?status=pending")
            .await?
            .as_array()
            .map_or(0, Vec::len);
        self.expect(
            pending == 0,
            "every assignment is complete: the ECUs' signed reports confirmed each image",
            format!("{pending} assignment(s) still pending"),
            format!("{pending} assignments pending"),
        );

        Ok(())
    }

    /// Attack 1: a tampered image on the mirror.
    async fn tampered_image(&mut self, first_vin: &str) -> anyhow::Result<()> {
        // 1. A tampered image on the mirror.
        let p = self
            .lab
            .publish_bytes(
                "tbox/fw-2.1.bin",
                "tbox-a",
                "2.1",
                &image_bytes("tbox 2.1", 800_000),
                false,
            )
            .await?;
        self.lab.admin_post("assignments", &serde_json::json!({"target": "tbox/fw-2.1.bin", "vins": [first_vin], "hardware_id": "tbox-a"})).await?;
        let tampered = self
            .lab
            .layout
            .image_targets()
            .join("tbox")
            .join(format!("{}.fw-2.1.bin", p.sha256));
        let mut bytes = std::fs::read(&tampered)?;
        if let Some(b) = bytes.get_mut(4242) {
            *b ^= 0x01;
        }
        std::fs::write(&tampered, &bytes)?;
        let run = self.lab.run_vehicle(0, "auto").await?;
        let installed_now = self.lab.installed(first_vin).await?;
        let tbox = self
            .lab
            .vehicles
            .first()
            .and_then(|v| v.ecus.first())
            .map(|e| e.ecu_id.clone())
            .unwrap_or_default();
        let still_old = installed_now.get(&tbox).map(String::as_str) == Some("tbox/fw-2.0.bin");
        self.expect_refused(
            &run,
            "hash-mismatch",
            still_old,
            "tampered image on the mirror: download rejected (hash-mismatch); the T-BOX still runs fw-2.0",
            "tampered image",
        );

        Ok(())
    }

    /// Attack 2: a replayed vehicle manifest.
    async fn replayed_manifest(&mut self, first_vin: &str) -> anyhow::Result<()> {
        let tbox = self
            .lab
            .vehicles
            .first()
            .and_then(|v| v.ecus.first())
            .map(|e| e.ecu_id.clone())
            .unwrap_or_default();
        // 2. A replayed vehicle manifest.
        let v0 = self.lab.vehicles.first().context("no vehicle")?;
        let key = std::fs::read_to_string(v0.dir.join("primary-key.pem"))?;
        let signer = InMemorySigner::from_pkcs8_pem_any(&key)?;
        let manifest = VehicleManifest {
            type_: VEHICLE_MANIFEST_TYPE.into(),
            vin: first_vin.to_owned(),
            primary_ecu_id: tbox.clone(),
            manifest_counter: 1,
            nonce: "00".into(),
            ecu_version_reports: Default::default(),
            attacks_detected: String::new(),
            update_failures: Vec::new(),
            progress: Vec::new(),
            unrecognized: Default::default(),
        };
        let body = sign_vehicle_manifest(&manifest, &signer)?;
        let status = post_manifest(&self.lab, v0, &body).await?;
        self.expect(
            status == 409,
            "replayed vehicle manifest (old counter, valid signature): refused with 409 (replay)",
            format!("replayed manifest answered {status}"),
            format!("replay answered {status}"),
        );

        Ok(())
    }

    /// Attack 3: the director is told to install an older release than the ECU runs.
    async fn rollback(&mut self, first_vin: &str, root: &std::path::Path) -> anyhow::Result<()> {
        // 3. Rollback: an older release than the ECU runs (release counter 0). The
        //    director's API refuses to assign it; an insider writes it into the director's
        //    database anyway, and the vehicle refuses it.
        let ran = self.lab.installed(first_vin).await?;
        let old_build = image_bytes("bcm 1.2", 150_000);
        let req = rampart_server::ops::PublishRequest {
            name: Some("bcm/fw-1.2.bin".into()),
            version: Some("1.2".into()),
            release_counter: Some(0),
            ..rampart_server::ops::PublishRequest::new(
                {
                    let f = root.join("release/bcm-old.bin");
                    std::fs::write(&f, &old_build)?;
                    f
                },
                "bcm-1",
            )
        };
        self.lab.publish(&req).await?;
        let through_api = self.lab.admin_post("assignments", &serde_json::json!({"target": "bcm/fw-1.2.bin", "vins": [first_vin], "hardware_id": "bcm-1"})).await;
        let refused = through_api
            .as_ref()
            .is_err_and(|e| e.to_string().contains("release-counter-decreased"));
        self.expect(
            refused,
            "assigning an older release (release counter 0, below the one the BCM runs): refused by the director's API (release-counter-decreased)",
            "the director's API accepted an older release",
            format!("rollback assignment: {through_api:?}"),
        );
        let bcm = self
            .lab
            .vehicles
            .first()
            .and_then(|v| v.ecus.get(2))
            .map(|e| e.ecu_id.clone())
            .unwrap_or_default();
        self.lab
            .insider_assign(first_vin, &bcm, "bcm/fw-1.2.bin", &old_build, 0)
            .await?;
        let run = self.lab.run_vehicle(0, "auto").await?;
        let installed_now = self.lab.installed(first_vin).await?;
        let kept = installed_now.contains_key(&bcm) && installed_now.get(&bcm) == ran.get(&bcm);
        self.expect_refused(
            &run,
            "release-counter-decreased",
            kept,
            "the same, written into the director's database by an insider: rejected by the vehicle (release-counter-decreased)",
            "rollback",
        );

        Ok(())
    }

    /// Step 9: the security events the server recorded.
    async fn events(&mut self, first_vin: &str) -> anyhow::Result<()> {
        self.out
            .step("Security events recorded by the server (V-SOC view)");
        let events = self.lab.events(Some(first_vin)).await?;
        for e in events.iter().take(8) {
            rampart_cli::say!(
                "   {}  {:<8} {:<28} {}",
                e.get("at").and_then(Value::as_str).unwrap_or(""),
                e.get("source").and_then(Value::as_str).unwrap_or(""),
                e.get("rule").and_then(Value::as_str).unwrap_or(""),
                rampart_cli::out::shorten(
                    e.get("detail").and_then(Value::as_str).unwrap_or(""),
                    70
                )
            );
        }
        let rules: Vec<&str> = events
            .iter()
            .filter_map(|e| e.get("rule").and_then(Value::as_str))
            .collect();
        for expected in ["hash-mismatch", "replay", "release-counter-decreased"] {
            if !rules.contains(&expected) {
                bad(format!("no security event for {expected}"));
                self.failures.push(format!("missing event {expected}"));
            }
        }

        Ok(())
    }
}

/// Asks the owner (at a terminal, unless --yes) before anything installs.
fn owner_approves(args: &DemoArgs) -> anyhow::Result<bool> {
    let interactive = std::io::stdin().is_terminal() && !args.yes;
    if interactive {
        rampart_cli::say!(
            "\n   The owner of each car is asked before anything installs (UNECE R156 §7.2):"
        );
        for (name, _, version, size, _) in IMAGES {
            rampart_cli::say!(
                "   • {name} version {version}, {}",
                rampart_vehicle::consent::human_bytes(size as u64)
            );
        }
        rampart_cli::ask!("   Approve the update for your vehicles? [y/N] ");
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            rampart_cli::say!(
                "   Declined: nothing is installed. (Run with --yes to skip this question.)"
            );
            return Ok(false);
        }
    }

    Ok(true)
}

async fn post_manifest(
    lab: &Lab,
    v: &rampart_lab::VehicleHandle,
    body: &[u8],
) -> anyhow::Result<u16> {
    let ca = std::fs::read(v.dir.join("ca.pem"))?;
    let id = std::fs::read(v.dir.join("vehicle-cert.pem"))?;
    let client = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca)?)
        .identity(reqwest::Identity::from_pem(&id)?)
        .build()?;
    let r = client
        .post(format!("{}director/{}/manifest", lab.url, v.vin))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await?;
    Ok(r.status().as_u16())
}

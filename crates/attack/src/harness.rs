//! The stage every scenario starts from: one vehicle (T-BOX and IVI with full verification,
//! a body controller with partial verification) on a real server, a baseline release
//! installed through the normal path (so there is trusted state and installed images to
//! protect), and a man in the middle placed between the vehicle and the server.

use rampart_core::rule::Rule;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rampart_lab::{image_bytes, EcuHandle, Lab, LabOptions, VehicleRun};
use serde_json::Value;

use crate::naive::{naive_cycle, NaiveDirector, NaiveEcu};
use crate::proxy::Proxy;
use crate::Findings;

/// Components swapped for deliberately naive ones ([`crate::naive`]) once the baseline is
/// installed: the negative controls run scenarios against them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Weakness {
    /// ECUs (by index: 0 T-BOX, 1 IVI, 2 BCM) replaced by [`NaiveEcu`]s.
    pub naive_ecus: Vec<usize>,
    /// Cycles run by [`naive_cycle`] instead of the real primary.
    pub naive_primary: bool,
    /// Manifests recorded by a [`NaiveDirector`] in front of the server.
    pub naive_director: bool,
    /// The legacy ECU (ECU 3 of a harness built with one) replaced by a
    /// [`crate::naive_uds::NaiveUdsEcu`].
    pub naive_uds: bool,
}

impl Weakness {
    /// Whether anything is weakened.
    pub fn any(&self) -> bool {
        *self != Weakness::default()
    }
}

/// Names of the baseline images (installed before the attack).
pub const BASELINE: [(&str, &str); 3] = [
    ("tbox/fw-1.0.bin", "tbox-a"),
    ("ivi/app-1.0.bin", "ivi-x"),
    ("bcm/fw-1.0.bin", "bcm-1"),
];

/// The baseline of the legacy ECU (ECU 3) in a harness built with one.
pub const LEGACY_BASELINE: (&str, &str) = ("seat/fw-1.0.bin", "seat-uds");

/// What a vehicle trusts and runs, read from its disk and from the director.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrustState {
    /// ECU ID → (image it runs, release counter), from each ECU's boot-control file.
    pub running: BTreeMap<String, (String, u64)>,
    /// `who/repo/role` → trusted version, from the primary's and ECUs' metadata folders.
    pub versions: BTreeMap<String, u64>,
    /// ECU ID → installed image, as the director knows it.
    pub director_view: BTreeMap<String, String>,
}

/// What one attack attempt must show, judged by [`Harness::attempt`].
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    /// What the attacker served, for the evidence line.
    pub what: String,
    /// Forged answers on paths containing this are the evidence that the attack reached
    /// the vehicle (it requested them)…
    pub filter: &'a str,
    /// …at least this many of them (one per forged document the attack needs).
    pub min_forged: usize,
    /// The vehicle must name one of these rules…
    pub rules: &'a [Rule],
    /// …about this (e.g. the role), when the rule family alone could be met by another
    /// check than the one under test.
    pub about: Option<&'a str>,
    /// Images the attacker chose: none may be installed.
    pub forbidden: &'a [&'a str],
}

impl<'a> Attempt<'a> {
    /// An attempt whose forged answers are on paths containing `filter` (at least one),
    /// refused with one of `rules`.
    pub fn new(what: impl Into<String>, filter: &'a str, rules: &'a [Rule]) -> Self {
        Attempt {
            what: what.into(),
            filter,
            min_forged: 1,
            rules,
            about: None,
            forbidden: &[],
        }
    }

    /// The rule must be named about this (see [`Attempt::about`]).
    pub fn about(self, about: &'a str) -> Self {
        Attempt {
            about: Some(about),
            ..self
        }
    }

    /// Images the attacker chose, which must not be installed.
    pub fn forbid(self, forbidden: &'a [&'a str]) -> Self {
        Attempt { forbidden, ..self }
    }

    /// At least `n` forged answers must reach the vehicle.
    pub fn at_least(self, n: usize) -> Self {
        Attempt {
            min_forged: n,
            ..self
        }
    }
}

/// A lab with an attacker in place.
pub struct Harness {
    /// The fleet.
    pub lab: Lab,
    /// The man in the middle (vehicle → proxy → server).
    pub proxy: Proxy,
    /// Scenario folder.
    pub dir: PathBuf,
    /// State after the baseline release.
    pub baseline: TrustState,
    /// Highest security event ID before the last cycle: only newer events count as noticed.
    mark: std::sync::atomic::AtomicI64,
    /// What was swapped for naive components (nothing, outside the negative controls).
    pub weakness: Weakness,
    naive_ecus: Vec<NaiveEcu>,
    naive_uds: Option<crate::naive_uds::NaiveUdsEcu>,
    _naive_director: Option<NaiveDirector>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn version_of(path: &Path) -> Option<u64> {
    let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    v.pointer("/signed/version").and_then(Value::as_u64)
}

impl Harness {
    /// Builds the fleet, installs the baseline release, and routes the vehicle through a
    /// proxy. With `tls`, the lab serves HTTPS and the proxy is not in the path.
    pub async fn new(bin: &Path, dir: &Path, tls: bool) -> anyhow::Result<Harness> {
        Harness::weakened(bin, dir, tls, Weakness::default()).await
    }

    /// [`Harness::new`], with the components `weakness` names swapped for naive ones after
    /// the baseline release is installed.
    pub async fn weakened(
        bin: &Path,
        dir: &Path,
        tls: bool,
        weakness: Weakness,
    ) -> anyhow::Result<Harness> {
        Harness::build(bin, dir, tls, weakness, false).await
    }

    /// [`Harness::weakened`]; with `legacy`, the vehicle also carries a legacy ECU (ECU 3,
    /// [`rampart_lab::legacy_ecu`]) flashed by the primary over UDS on DoIP, its baseline
    /// [`LEGACY_BASELINE`].
    pub async fn build(
        bin: &Path,
        dir: &Path,
        tls: bool,
        weakness: Weakness,
        legacy: bool,
    ) -> anyhow::Result<Harness> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let mut options = LabOptions::new(dir, bin, 1);
        options.plain_http = !tls;
        if legacy {
            options.ecus.push(rampart_lab::legacy_ecu());
        }
        let mut lab = Lab::create(options).await.context("creating the lab")?;
        lab.start_ecus().await?;
        let legacy_baseline = legacy.then_some(LEGACY_BASELINE);
        for (name, hw) in BASELINE.into_iter().chain(legacy_baseline) {
            lab.publish_bytes(name, hw, "1.0", &image_bytes(name, 120_000), hw == "ivi-x")
                .await?;
            lab.assign_all(name, hw, hw == "ivi-x").await?;
        }
        let run = lab.run_vehicle(0, "auto").await?;
        if !run.success {
            anyhow::bail!("baseline update failed:\n{}\n{}", run.stdout, run.stderr);
        }
        let naive_director = if weakness.naive_director {
            let config = rampart_server::config::Config::load(&lab.layout)?;
            let db = config.database_url(&lab.layout);
            Some(NaiveDirector::start(&lab.url, &db).await?)
        } else {
            None
        };
        let upstream = naive_director
            .as_ref()
            .map_or_else(|| lab.url.clone(), |d| d.url.clone());
        let proxy = Proxy::start(&upstream).await?;
        if !tls {
            lab.write_primary_config(0, Some((&proxy.url.clone(), None)))?;
        }
        let mut h = Harness {
            lab,
            proxy,
            dir: dir.to_path_buf(),
            baseline: TrustState::default(),
            mark: std::sync::atomic::AtomicI64::new(0),
            weakness: weakness.clone(),
            naive_ecus: Vec::new(),
            naive_uds: None,
            _naive_director: naive_director,
        };
        for &i in &weakness.naive_ecus {
            h.replace_ecu_naively(i).await?;
        }
        if weakness.naive_uds {
            let e = h.ecu_mut(3)?;
            e.stop().await?;
            let config = rampart_vehicle::uds::load_config(&e.config)?;
            let naive = crate::naive_uds::NaiveUdsEcu::start(&config).await?;
            let address = naive.address.clone();
            h.naive_uds = Some(naive);
            h.point_ecu_at(3, &address)?;
        }
        h.baseline = h.trust_state().await?;
        Ok(h)
    }

    /// Stops the real ECU `i` and puts a [`NaiveEcu`] on its slots and key in its place.
    async fn replace_ecu_naively(&mut self, i: usize) -> anyhow::Result<()> {
        let e = self.ecu_mut(i)?;
        e.stop().await?;
        let config = rampart_vehicle::secondary::load_config(&e.config)?;
        let naive = NaiveEcu::start(&config).await?;
        let address = naive.address.clone();
        self.naive_ecus.push(naive);
        self.point_ecu_at(i, &address)
    }

    /// The vehicle under attack.
    pub fn vin(&self) -> String {
        self.lab
            .vehicles
            .first()
            .map(|v| v.vin.clone())
            .unwrap_or_default()
    }

    /// ECU ID of the vehicle's ECU number `i` (0 T-BOX, 1 IVI, 2 BCM).
    pub fn ecu_id(&self, i: usize) -> String {
        self.lab
            .vehicles
            .first()
            .and_then(|v| v.ecus.get(i))
            .map(|e| e.ecu_id.clone())
            .unwrap_or_default()
    }

    /// The vehicle's ECU `i` (0 T-BOX, 1 IVI, 2 BCM).
    pub fn ecu(&self, i: usize) -> anyhow::Result<&EcuHandle> {
        self.lab
            .vehicles
            .first()
            .and_then(|v| v.ecus.get(i))
            .with_context(|| format!("no ECU {i}"))
    }

    /// The same, to start or stop it.
    pub fn ecu_mut(&mut self, i: usize) -> anyhow::Result<&mut EcuHandle> {
        self.lab
            .vehicles
            .first_mut()
            .and_then(|v| v.ecus.get_mut(i))
            .with_context(|| format!("no ECU {i}"))
    }

    /// The folder of the vehicle's ECU `i` (keys, slots, state).
    pub fn ecu_dir(&self, i: usize) -> anyhow::Result<PathBuf> {
        Ok(self.ecu(i)?.dir.clone())
    }

    /// Where the vehicle's ECU `i` listens now (the primary's entry for it).
    pub fn ecu_address(&self, i: usize) -> anyhow::Result<String> {
        self.ecu(i)?
            .address
            .clone()
            .with_context(|| format!("ECU {i} has no address"))
    }

    /// Releases a new T-BOX build of `len` bytes to the vehicle (what a denial-of-service
    /// attacker tries to hold back) and returns its name.
    pub async fn release_tbox_update(&self, len: usize) -> anyhow::Result<&'static str> {
        let image = "tbox/fw-2.0.bin";
        self.lab
            .release(image, "tbox-a", "2.0", &image_bytes(image, len), false)
            .await?;
        Ok(image)
    }

    /// Reads the vehicle's trusted state.
    pub async fn trust_state(&self) -> anyhow::Result<TrustState> {
        let mut s = TrustState::default();
        let v = self.lab.vehicles.first().context("no vehicle")?;
        for e in &v.ecus {
            let bc: Value =
                serde_json::from_slice(&std::fs::read(e.dir.join("boot-control.json"))?)?;
            let active = bc
                .get("active")
                .and_then(Value::as_str)
                .unwrap_or("a")
                .to_owned();
            let img = bc.get(&active).cloned().unwrap_or(Value::Null);
            s.running.insert(
                e.ecu_id.clone(),
                (
                    img.get("filename")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    img.get("release_counter")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                ),
            );
            for repo in ["director", "image"] {
                for role in ["root", "timestamp", "snapshot", "targets"] {
                    if let Some(ver) =
                        version_of(&e.dir.join("state").join(repo).join(format!("{role}.json")))
                    {
                        s.versions
                            .insert(format!("{}/{repo}/{role}", e.ecu_id), ver);
                    }
                }
            }
        }
        for repo in ["director", "image"] {
            for role in ["root", "timestamp", "snapshot", "targets"] {
                if let Some(ver) = version_of(
                    &v.dir
                        .join("primary-state")
                        .join(repo)
                        .join(format!("{role}.json")),
                ) {
                    s.versions.insert(format!("primary/{repo}/{role}"), ver);
                }
            }
        }
        s.director_view = self.lab.installed(&v.vin).await?;
        Ok(s)
    }

    /// One update cycle of the vehicle (through the proxy), by the naive primary when the
    /// harness is weakened so.
    pub async fn cycle(&self) -> anyhow::Result<VehicleRun> {
        self.mark_events().await?;
        if self.weakness.naive_primary {
            let config = &self
                .lab
                .vehicles
                .first()
                .context("no vehicle")?
                .primary_config;
            return naive_cycle(config).await;
        }
        self.lab.run_vehicle(0, "auto").await
    }

    /// From now on, only newer security events count as "noticed".
    pub async fn mark_events(&self) -> anyhow::Result<()> {
        let newest = self.newest_event_id().await?;
        self.mark.store(newest, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// The highest security event ID so far (0 if none).
    pub async fn newest_event_id(&self) -> anyhow::Result<i64> {
        Ok(self
            .events()
            .await?
            .first()
            .and_then(|e| e.get("id"))
            .and_then(Value::as_i64)
            .unwrap_or(0))
    }

    /// The detail (first 160 characters) of a security event newer than `mark` from
    /// `source`, about ECU `ecu`, with one of `rules`.
    pub async fn event_since(
        &self,
        mark: i64,
        source: &str,
        ecu: &str,
        rules: &[Rule],
    ) -> anyhow::Result<Option<String>> {
        Ok(self
            .events()
            .await?
            .iter()
            .find(|e| {
                e.get("id").and_then(Value::as_i64).unwrap_or(0) > mark
                    && e.get("source").and_then(Value::as_str) == Some(source)
                    && e.get("ecu_id").and_then(Value::as_str) == Some(ecu)
                    && e.get("rule")
                        .and_then(Value::as_str)
                        .is_some_and(|r| rules.iter().any(|rule| rule == r))
            })
            .and_then(|e| e.get("detail").and_then(Value::as_str))
            .map(|d| d.chars().take(160).collect()))
    }

    /// Points the primary's entry for ECU `i` at `address` and rewrites its configuration.
    pub fn point_ecu_at(&mut self, i: usize, address: &str) -> anyhow::Result<()> {
        let e = self
            .lab
            .vehicles
            .first_mut()
            .and_then(|v| v.ecus.get_mut(i))
            .context("no such ECU")?;
        e.address = Some(address.to_owned());
        self.lab
            .write_primary_config(0, Some((&self.proxy.url, None)))
    }

    /// Security events of the vehicle, newest first.
    pub async fn events(&self) -> anyhow::Result<Vec<Value>> {
        self.lab.events(Some(&self.vin())).await
    }

    /// Checks 1 and 2: nothing in `forbidden` runs anywhere, no ECU went to a lower release
    /// counter or another image than allowed, and no trusted version went down.
    pub fn check_state(&self, f: &mut Findings, after: &TrustState, forbidden: &[&str]) {
        let chosen: Vec<String> = after
            .running
            .iter()
            .filter(|(_, (img, _))| forbidden.iter().any(|x| x == img))
            .map(|(e, (img, _))| format!("{e} runs {img}"))
            .collect();
        f.check_none(
            "nothing the attacker chose is installed",
            &chosen,
            "no ECU runs an attacker's image",
        );
        let mut regressions = Vec::new();
        for (ecu, (img, counter)) in &self.baseline.running {
            match after.running.get(ecu) {
                Some((now, c)) if c < counter => regressions.push(format!(
                    "{ecu}: {img} (counter {counter}) → {now} (counter {c})"
                )),
                None => regressions.push(format!("{ecu}: no longer reports an image")),
                _ => {}
            }
        }
        f.check_none(
            "no ECU moved to an older or mixed set",
            &regressions,
            format!("running: {}", describe(&after.running)),
        );
        f.check_none(
            "trusted metadata versions never went back",
            &versions_back(&self.baseline, after),
            format!("{} trusted files checked", after.versions.len()),
        );
    }

    /// Check 3: the rejection named one of `rules` on the vehicle, and the server recorded a
    /// security event (source `vehicle`: the vehicle's attack indicator; `server`: the
    /// server's own refusal) newer than the last cycle.
    pub async fn check_noticed(
        &self,
        f: &mut Findings,
        run: &VehicleRun,
        rules: &[Rule],
        source: &str,
    ) -> anyhow::Result<()> {
        let output = format!("{}\n{}", run.stderr, run.stdout);
        let said = rules.iter().find(|r| output.contains(r.as_str()));
        f.check(
            format!("the vehicle names the rule ({})", join(rules)),
            said.is_some(),
            said.map_or_else(
                || "no rule named in its output".to_owned(),
                |r| first_line_with(&output, r.as_str()),
            ),
        );
        self.check_event(f, rules, source).await
    }

    /// Check 3 for one specific rule: as [`Harness::check_noticed`], but the vehicle's line
    /// naming `rule` and the server's event must both also name `about` (e.g. the role:
    /// `timestamp version` for a timestamp rollback). A family name alone (`rollback`) would
    /// also be satisfied by the next check in line, so a missing check could go unseen.
    pub async fn check_noticed_about(
        &self,
        f: &mut Findings,
        run: &VehicleRun,
        rules: &[Rule],
        about: &str,
        source: &str,
    ) -> anyhow::Result<()> {
        let output = format!("{}\n{}", run.stderr, run.stdout);
        let rule = join(rules);
        let line = output
            .lines()
            .find(|l| rules.iter().any(|r| l.contains(r.as_str())) && l.contains(about));
        f.check(
            format!("the vehicle names the rule ({rule}: {about})"),
            line.is_some(),
            line.map_or_else(
                || {
                    format!(
                        "no line names {rule} for {about}: {}",
                        first_line_with(&output, rules.first().map_or("", |r| r.as_str()))
                    )
                },
                |l| l.chars().take(200).collect(),
            ),
        );
        self.check_event_about(f, rules, Some(about), source).await
    }

    /// A security event with one of `rules` from `source`, newer than the last cycle.
    pub async fn check_event(
        &self,
        f: &mut Findings,
        rules: &[Rule],
        source: &str,
    ) -> anyhow::Result<()> {
        self.check_event_about(f, rules, None, source).await
    }

    /// [`Harness::check_event`], the event's detail also naming `about` when given.
    async fn check_event_about(
        &self,
        f: &mut Findings,
        rules: &[Rule],
        about: Option<&str>,
        source: &str,
    ) -> anyhow::Result<()> {
        let mark = self.mark.load(std::sync::atomic::Ordering::SeqCst);
        let events = self.events().await?;
        let hit = events.iter().find(|e| {
            e.get("id").and_then(Value::as_i64).unwrap_or(0) > mark
                && e.get("rule")
                    .and_then(Value::as_str)
                    .is_some_and(|r| rules.iter().any(|rule| rule == r))
                && e.get("source").and_then(Value::as_str) == Some(source)
                && about.is_none_or(|a| {
                    e.get("detail")
                        .and_then(Value::as_str)
                        .is_some_and(|d| d.contains(a))
                })
        });
        let rules = join(rules);
        f.check(
            match about {
                Some(a) => format!("the server recorded a {source} security event ({rules}: {a})"),
                None => format!("the server recorded a {source} security event ({rules})"),
            },
            hit.is_some(),
            hit.and_then(|e| e.get("detail").and_then(Value::as_str))
                .unwrap_or("no such event")
                .chars()
                .take(160)
                .collect::<String>(),
        );
        Ok(())
    }

    /// Checks that ECU `ecu` now runs `image` (after the attacker left), under `what`.
    pub async fn check_runs(
        &self,
        f: &mut Findings,
        what: &str,
        ecu: &str,
        image: &str,
    ) -> anyhow::Result<()> {
        let after = self.trust_state().await?;
        let running = after.running.get(ecu).map(|(i, _)| i.as_str());
        f.check(
            what,
            running == Some(image),
            format!("{ecu} runs {running:?}"),
        );
        Ok(())
    }

    /// Whether a cycle refused to install anything: it failed outright, or every update it
    /// handled ended in a failure.
    pub fn check_refused(&self, f: &mut Findings, run: &VehicleRun) {
        let updates = run
            .report
            .as_ref()
            .and_then(|r| r.get("updates"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let installed: Vec<String> = updates
            .iter()
            .filter(|u| u.get("status").and_then(Value::as_str) == Some("Installed"))
            .filter_map(|u| u.get("target").and_then(Value::as_str).map(str::to_owned))
            .collect();
        let detail = if !run.success {
            first_line_with(&run.stderr, "error:")
        } else {
            format!(
                "{} update(s) handled, {} installed",
                updates.len(),
                installed.len()
            )
        };
        f.check(
            "the vehicle refused the update",
            installed.is_empty(),
            detail,
        );
    }

    /// Checks 2 and 3 for a cycle the attacker interfered with: the vehicle refused, named
    /// one of `rules` and the server recorded it, and nothing in `forbidden` is trusted or
    /// runs. Returns the state it checked.
    pub async fn check_rejected(
        &self,
        f: &mut Findings,
        run: &VehicleRun,
        rules: &[Rule],
        forbidden: &[&str],
    ) -> anyhow::Result<TrustState> {
        self.check_refused(f, run);
        self.check_noticed(f, run, rules, "vehicle").await?;
        let after = self.trust_state().await?;
        self.check_state(f, &after, forbidden);
        Ok(after)
    }

    /// Check 4 with its proof: once the attacker leaves a cycle succeeds and `ecu` runs the
    /// `image` the attacker held back.
    pub async fn check_installs_once_gone(
        &self,
        f: &mut Findings,
        ecu: &str,
        image: &str,
    ) -> anyhow::Result<VehicleRun> {
        let run = self.check_recovers(f).await?;
        self.check_runs(
            f,
            "the update installs once the attacker leaves",
            ecu,
            image,
        )
        .await?;
        Ok(run)
    }

    /// The steps every attack attempt repeats, with the attacker's rules already on the
    /// proxy: one cycle; evidence that the forged answers reached the vehicle (if none did,
    /// the step goes to `missing` and the verdict cannot be `defeated`); the vehicle refused;
    /// it named the rule (about the right thing) and the server recorded it; nothing the
    /// attacker chose is installed; nothing moved against `before`.
    pub async fn attempt(
        &self,
        f: &mut Findings,
        missing: &mut Vec<String>,
        before: &TrustState,
        a: Attempt<'_>,
    ) -> anyhow::Result<VehicleRun> {
        self.proxy.clear_log();
        let run = self
            .forged_cycle(f, missing, a.filter, a.min_forged, &a.what)
            .await?;
        self.check_refused(f, &run);
        match a.about {
            Some(about) => {
                self.check_noticed_about(f, &run, a.rules, about, "vehicle")
                    .await?
            }
            None => self.check_noticed(f, &run, a.rules, "vehicle").await?,
        }
        let after = self.trust_state().await?;
        self.check_state(f, &after, a.forbidden);
        check_unchanged(f, before, &after);
        Ok(run)
    }

    /// One cycle with the attacker's rules in place; the answers it forged on paths
    /// containing `filter` become evidence, and fewer than `min` of them (the documents the
    /// attack needs) mark the step as never reached in `missing`.
    pub async fn forged_cycle(
        &self,
        f: &mut Findings,
        missing: &mut Vec<String>,
        filter: &str,
        min: usize,
        what: &str,
    ) -> anyhow::Result<VehicleRun> {
        let run = self.cycle().await?;
        let n = self.evidence_forged(f, filter, what);
        if n < min.max(1) {
            missing.push(format!(
                "only {n} of the {} forged answers were requested: {what}",
                min.max(1)
            ));
        }
        Ok(run)
    }

    /// Records, as one line of evidence, every answer the attacker forged on a path
    /// containing `filter` (each one a request of the vehicle); returns how many there were.
    pub fn evidence_forged(&self, f: &mut Findings, filter: &str, what: &str) -> usize {
        let forged: Vec<String> = self
            .proxy
            .forged()
            .into_iter()
            .filter(|s| s.path.contains(filter))
            .map(|s| {
                format!(
                    "{} {} → {}, {} bytes, sha256 {}…",
                    s.method,
                    s.path,
                    s.action,
                    s.bytes,
                    s.sha256.as_deref().and_then(|h| h.get(..12)).unwrap_or("")
                )
            })
            .collect();
        if !forged.is_empty() {
            f.evidence(format!(
                "{what} — the vehicle requested, the attacker answered: {}",
                forged.join("; ")
            ));
        }
        forged.len()
    }

    /// Check 4: once the attacker leaves, a cycle succeeds.
    pub async fn check_recovers(&self, f: &mut Findings) -> anyhow::Result<VehicleRun> {
        self.proxy.clear();
        let run = self.cycle().await?;
        check_succeeded(
            f,
            "recovers once the attacker leaves",
            &run,
            "next cycle succeeded",
        );
        Ok(run)
    }
}

/// A check that the vehicle's `run` succeeded: `fine` if it did, its last error lines if not.
pub fn check_succeeded(f: &mut Findings, what: &str, run: &VehicleRun, fine: &str) {
    f.check(
        what,
        run.success,
        if run.success {
            fine.to_owned()
        } else {
            run.stderr
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ")
        },
    );
}

/// Checks the attack changed nothing against the state just before it: every ECU runs what
/// it ran, and no trusted metadata version went down.
pub fn check_unchanged(f: &mut Findings, before: &TrustState, after: &TrustState) {
    let runs = |state: &TrustState, ecu: &str| {
        state
            .running
            .get(ecu)
            .map(|(img, counter)| format!("{img}#{counter}"))
            .unwrap_or_else(|| "(nothing)".to_owned())
    };
    let moved: Vec<String> = before
        .running
        .iter()
        .filter(|(ecu, img)| after.running.get(*ecu) != Some(*img))
        .map(|(ecu, (img, c))| format!("{ecu}: {img}#{c} → {}", runs(after, ecu)))
        .collect();
    f.check_none(
        "every ECU still runs what it ran before the attack",
        &moved,
        format!("{} ECUs unchanged", before.running.len()),
    );
    f.check_none(
        "no trusted metadata version went below what it was before the attack",
        &versions_back(before, after),
        format!("{} trusted files checked", after.versions.len()),
    );
}

/// The trusted metadata versions of `after` below what they were in `before`.
fn versions_back(before: &TrustState, after: &TrustState) -> Vec<String> {
    before
        .versions
        .iter()
        .filter_map(|(k, v)| {
            let now = after.versions.get(k)?;
            (now < v).then(|| format!("{k}: {v} → {now}"))
        })
        .collect()
}

/// `a or b or c`.
fn join(rules: &[Rule]) -> String {
    rules
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

fn describe(running: &BTreeMap<String, (String, u64)>) -> String {
    running
        .iter()
        .map(|(e, (i, c))| format!("{e}={i}#{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An ECU's attack indicators not yet acknowledged by the director (`rule: message`, and
/// `(N×)` for repeats), read from its state file in `ecu_dir`.
pub fn pending_indicators(ecu_dir: &Path) -> Vec<String> {
    let state: Value = std::fs::read(ecu_dir.join("state/ecu-state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    state
        .pointer("/indicators/entries")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| {
            let count = e.get("count").and_then(Value::as_u64).unwrap_or(1);
            format!(
                "{}: {}{}",
                e.get("rule").and_then(Value::as_str).unwrap_or_default(),
                e.get("message").and_then(Value::as_str).unwrap_or_default(),
                if count > 1 {
                    format!(" ({count}×)")
                } else {
                    String::new()
                }
            )
        })
        .collect()
}

/// The image in an ECU's active slot: its file name (from the boot-control file) and bytes.
pub fn active_slot(ecu_dir: &Path) -> anyhow::Result<(String, Vec<u8>)> {
    let bc: Value = serde_json::from_slice(&std::fs::read(ecu_dir.join("boot-control.json"))?)?;
    let active = bc.get("active").and_then(Value::as_str).unwrap_or("a");
    let name = bc
        .pointer(&format!("/{active}/filename"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    Ok((name, std::fs::read(ecu_dir.join(format!("slot-{active}")))?))
}

/// The first 12 hex digits of the SHA-256 of `bytes`, to name them in evidence.
pub fn sha12(bytes: &[u8]) -> String {
    hex::encode(rampart_core::hash::sha256(bytes))
        .get(..12)
        .unwrap_or("")
        .to_owned()
}

/// The first line of `text` that mentions `needle` (for evidence), shortened.
pub fn first_line_with(text: &str, needle: &str) -> String {
    text.lines()
        .find(|l| l.contains(needle))
        .map(|l| l.chars().take(200).collect())
        .unwrap_or_else(|| format!("(no line mentions {needle})"))
}

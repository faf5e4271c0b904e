//! One update cycle of the primary, in Uptane's order (see the module above), with the
//! owner's consent, preconditions, all-or-nothing downloads and the hand-over to the ECUs.

use std::path::Path;

use rampart_core::rule::Rule;
use rampart_core::uptane::manifest::UpdateStage;
use rampart_core::uptane::window::MaintenanceWindow;
use rampart_core::uptane::{DeltaOffer, FullVerifier, VerifiedUpdate};

use super::*;

impl Primary {
    /// Runs one whole cycle.
    pub async fn cycle(&mut self, consent_mode: &ConsentMode) -> Result<CycleReport> {
        let mut report = CycleReport::default();
        let v = self.report_in_and_verify(&mut report).await?;
        let verdict = v.verdict().cloned().unwrap_or_default();
        report.director_targets_version = verdict.director_targets_version;
        report.up_to_date = verdict.up_to_date.clone();
        self.prune_downloads(&v, &verdict.updates);
        if verdict.updates.is_empty() {
            return Ok(report);
        }
        if !self
            .allowed(consent_mode, &v, &verdict.updates, &mut report)
            .await?
        {
            return Ok(report);
        }
        self.deliver(&v, &verdict.updates, &mut report).await;
        self.confirm_and_report(&mut report).await;
        self.say_results(&report);
        Ok(report)
    }

    /// Steps 1–3: the ECUs' signed reports, the vehicle manifest, full verification of both
    /// repositories. A failed verification is told to the director at once (the indicator is
    /// the point) before the cycle ends.
    async fn report_in_and_verify(&mut self, report: &mut CycleReport) -> Result<FullVerifier> {
        let (docs, installed) = self.collect_reports(report).await;
        let answer = match self.send_manifest(docs).await {
            Ok(a) => a,
            Err(e) => {
                self.note(report, e.rule(), &format!("manifest not accepted: {e}"));
                return Err(e);
            }
        };
        tracing::info!(director_targets_version = %answer.get("director_targets_version").cloned().unwrap_or_default(), "manifest accepted");
        let current_timestamp = answer.get("director_timestamp_tag").and_then(Value::as_str);
        match self.verify(installed, current_timestamp).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.note(report, e.rule(), &e.to_string());
                if let Some(target) = e.target() {
                    self.failed(&target, None, e.rule(), &e.to_string());
                }
                let (docs, _) = self.collect_reports(&mut CycleReport::default()).await;
                let _ = self.send_manifest(docs).await;
                Err(e)
            }
        }
    }

    /// The owner's consent to the whole set (a partial set could be a mix the OEM never
    /// tested), then the preconditions. `false`: nothing is to be installed now (recorded).
    async fn allowed(
        &mut self,
        consent_mode: &ConsentMode,
        v: &FullVerifier,
        updates: &[VerifiedUpdate],
        report: &mut CycleReport,
    ) -> Result<bool> {
        // Outside the maintenance window the director signed, nothing is installed and the
        // owner is not asked for what cannot happen now.
        if let Some(why) = outside_window(updates, chrono::Utc::now()) {
            for u in updates {
                report
                    .updates
                    .push(self.outcome(u, UpdateStatus::PreconditionFailed(why.clone())));
            }
            self.reporter.say(&format!("Update postponed: {why}."));
            return Ok(false);
        }
        let notices: Vec<UpdateNotice> = updates.iter().map(|u| self.notice(v, u)).collect();
        if let Decision::Declined(why) =
            consent::ask(consent_mode, &notices, self.reporter.clone()).await?
        {
            for u in updates {
                report
                    .updates
                    .push(self.outcome(u, UpdateStatus::Declined(why.clone())));
            }
            self.reporter
                .say(&format!("Update declined: {why}. Nothing was installed."));
            return Ok(false);
        }
        if let Some(cmd) = &self.config.precondition {
            if let Err(why) = run_precondition(cmd).await {
                for u in updates {
                    report
                        .updates
                        .push(self.outcome(u, UpdateStatus::PreconditionFailed(why.clone())));
                }
                self.reporter
                    .say(&format!("Update postponed: precondition not met ({why})."));
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Steps 4–5: every image downloaded and verified first — if one cannot be had, none is
    /// installed, so an attacker who blocks part of a bundle cannot leave a mixed set — then
    /// each handed to its ECU. The downloads are removed afterwards.
    async fn deliver(
        &mut self,
        v: &FullVerifier,
        updates: &[VerifiedUpdate],
        report: &mut CycleReport,
    ) {
        self.send_progress(report, updates, UpdateStage::Downloading)
            .await;
        let mut downloaded = Vec::new();
        let mut blocked = None;
        for u in updates {
            match self.download_delta_or_image(v, u).await {
                Ok(got) => downloaded.push(got),
                Err(e) => {
                    let rule = self.update_failed(report, u, "for", &e);
                    blocked = Some((u.instruction.target.clone(), rule, e.to_string()));
                    break;
                }
            }
        }
        if let Some((target, rule, message)) = blocked {
            for u in updates {
                let status = if u.instruction.target == target {
                    UpdateStatus::Failed(rule.to_string(), message.clone())
                } else {
                    UpdateStatus::Failed(
                        "partial-bundle".into(),
                        format!(
                            "not installed: {target} of the same bundle could not be downloaded"
                        ),
                    )
                };
                report.updates.push(self.outcome(u, status));
            }
        } else {
            self.send_progress(report, updates, UpdateStage::Installing)
                .await;
            for (u, (path, delta)) in updates.iter().zip(&downloaded) {
                let (result, by_delta) = self.install_delta_or_image(v, u, path, delta).await;
                let status = match result {
                    Ok(()) => UpdateStatus::Installed,
                    Err(e) => {
                        let rule = self.update_failed(report, u, "on", &e);
                        UpdateStatus::Failed(rule.to_string(), e.to_string())
                    }
                };
                let mut outcome = self.outcome(u, status);
                if let Some(sent) = by_delta {
                    outcome.saved_bytes = outcome.bytes.saturating_sub(sent);
                    outcome.bytes = sent;
                }
                report.updates.push(outcome);
            }
        }
        for (path, _) in &downloaded {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Downloads the delta the director offered for `u` when this cycle can use it (see
    /// `delta_for`), else — or when the delta cannot be had — the image.
    async fn download_delta_or_image(
        &mut self,
        v: &FullVerifier,
        u: &VerifiedUpdate,
    ) -> Result<(std::path::PathBuf, Option<DeltaOffer>)> {
        if let Some(offer) = self.delta_for(v, u) {
            match self.download(v, u, Some(&offer)).await {
                Ok(path) => return Ok((path, Some(offer))),
                Err(e) => self.reporter.say(&format!(
                    "The delta {} could not be downloaded ({e}); downloading the whole image.",
                    offer.path
                )),
            }
        }
        Ok((self.download(v, u, None).await?, None))
    }

    /// Installs a downloaded delta, falling back to the whole image (downloaded now) when the
    /// ECU cannot build it — its source differs, the delta is corrupt, the ECU went down while
    /// building it: it never boots a slot that did not verify, so the fallback starts from
    /// the image it runs. With a delta that installed, the bytes it took.
    async fn install_delta_or_image(
        &mut self,
        v: &FullVerifier,
        u: &VerifiedUpdate,
        path: &Path,
        delta: &Option<DeltaOffer>,
    ) -> (Result<()>, Option<u64>) {
        let Some(offer) = delta else {
            return (self.install(v, u, path, false).await, None);
        };
        let sent = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let e = match self.install(v, u, path, true).await {
            Ok(()) => return (Ok(()), Some(sent)),
            Err(e) => e,
        };
        let (target, ecu) = (&u.instruction.target, &u.instruction.ecu_id);
        tracing::warn!(%target, %ecu, delta = %offer.path, error = %e, "delta install failed; falling back to the whole image");
        self.reporter.say(&format!(
            "The delta for {target} on {ecu} did not install [{}]: {e}. Installing the whole image.",
            e.rule()
        ));
        let full = match self.download(v, u, None).await {
            Ok(full) => full,
            Err(e) => return (Err(e), None),
        };
        let result = self.install(v, u, &full, false).await;
        let _ = std::fs::remove_file(&full);
        (result, None)
    }

    /// Step 6: the ECUs' fresh signed reports go to the director at once, and an ECU's
    /// "installed" counts only if its report shows the image.
    async fn confirm_and_report(&mut self, report: &mut CycleReport) {
        let (docs, running) = self.collect_reports(&mut CycleReport::default()).await;
        let mut unconfirmed = Vec::new();
        for (i, o) in report.updates.iter().enumerate() {
            if o.status == UpdateStatus::Installed
                && running.get(&o.ecu_id).map(|img| img.filename.as_str())
                    != Some(o.target.as_str())
            {
                let seen = running
                    .get(&o.ecu_id)
                    .map_or("no report".to_owned(), |img| img.filename.clone());
                unconfirmed.push((
                    i,
                    format!(
                        "ECU {} said installed, but its signed report shows {seen}",
                        o.ecu_id
                    ),
                ));
            }
        }
        for (i, why) in unconfirmed {
            self.note(report, Rule::UnconfirmedInstall, &why);
            if let Some(o) = report.updates.get_mut(i) {
                o.status = UpdateStatus::Failed(Rule::UnconfirmedInstall.to_string(), why);
            }
        }
        if let Err(e) = self.send_manifest(docs).await {
            self.note(report, e.rule(), &format!("final manifest: {e}"));
        }
    }

    /// An instructed update failed: noted as an indicator (`TARGET {how} ECU: error`) and
    /// reported to the director for its assignment. Its rule.
    fn update_failed(
        &mut self,
        report: &mut CycleReport,
        u: &VerifiedUpdate,
        how: &str,
        e: &Error,
    ) -> Rule {
        let (target, ecu) = (&u.instruction.target, &u.instruction.ecu_id);
        let rule = e.rule();
        self.note(report, rule, &format!("{target} {how} {ecu}: {e}"));
        self.failed(target, Some(ecu), rule, &e.to_string());
        rule
    }

    /// One line per update for the people around.
    fn say_results(&self, report: &CycleReport) {
        for o in &report.updates {
            let line = match &o.status {
                UpdateStatus::Installed => format!("✔ {} installed on {}", o.target, o.ecu_id),
                UpdateStatus::Failed(rule, msg) => {
                    format!("✘ {} on {} failed [{rule}]: {msg}", o.target, o.ecu_id)
                }
                UpdateStatus::Declined(w) | UpdateStatus::PreconditionFailed(w) => {
                    format!("– {} on {}: {w}", o.target, o.ecu_id)
                }
            };
            self.reporter.say(&format!("Update result: {line}"));
        }
    }

    pub(super) fn ecu(&self, id: &str) -> Option<&EcuRef> {
        self.config.ecus.iter().find(|e| e.ecu_id == id)
    }

    pub(super) fn outcome(&self, u: &VerifiedUpdate, status: UpdateStatus) -> UpdateOutcome {
        let enc = u.instruction.encryption.as_ref();
        UpdateOutcome {
            ecu_id: u.instruction.ecu_id.clone(),
            target: u.instruction.target.clone(),
            bytes: enc.map_or(u.instruction.file.length, |e| e.ciphertext.length),
            saved_bytes: 0,
            encrypted: enc.is_some(),
            via: self
                .ecu(&u.instruction.ecu_id)
                .and_then(|e| e.uds.as_ref())
                .map(|_| "uds-doip".to_owned()),
            status,
        }
    }

    pub(super) fn notice(&self, v: &FullVerifier, u: &VerifiedUpdate) -> UpdateNotice {
        let ecu = self.ecu(&u.instruction.ecu_id);
        let custom = rampart_core::uptane::image_custom(
            &u.instruction.target,
            &self.image_file(v, u).unwrap_or(u.instruction.file.clone()),
        )
        .ok();
        let full = u
            .instruction
            .encryption
            .as_ref()
            .map_or(u.instruction.file.length, |e| e.ciphertext.length);
        let delta = self.delta_for(v, u).map(|d| {
            d.encryption
                .as_ref()
                .map_or(d.length, |e| e.ciphertext.length)
        });
        let size = delta.unwrap_or(full);
        let ecu_description = ecu
            .map(|e| e.description.clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| u.instruction.hardware_id.clone());
        let (version, purpose, install_seconds) = custom
            .map(|c| (c.version, c.purpose, c.install_seconds))
            .unwrap_or_default();
        UpdateNotice {
            ecu_id: u.instruction.ecu_id.clone(),
            target: u.instruction.target.clone(),
            version,
            purpose: purpose
                .filter(|p| !p.trim().is_empty())
                .unwrap_or_else(|| format!("a software update of the {ecu_description}")),
            ecu_description,
            size_bytes: size,
            full_bytes: delta.map(|_| full),
            estimated_seconds: install_seconds
                .unwrap_or_else(|| crate::consent::estimated_install_seconds(size)),
            unavailable: ecu
                .map(|e| e.unavailable.clone())
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "the functions of this ECU".into()),
        }
    }

    /// Hands a downloaded image (or its `delta`) and the metadata to verify it to its ECU.
    pub(super) async fn install(
        &mut self,
        v: &FullVerifier,
        u: &VerifiedUpdate,
        path: &Path,
        delta: bool,
    ) -> Result<()> {
        let ecu = self.ecu(&u.instruction.ecu_id).cloned().ok_or_else(|| {
            Error::Config(format!("ECU {} is not configured", u.instruction.ecu_id))
        })?;
        let length = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        if let Some(link) = &ecu.uds {
            return self
                .flash_legacy(v, &ecu, link, &u.instruction.target, path, length)
                .await;
        }
        let bundle = self.bundle_for(v, ecu.verification)?;
        let result = self
            .send_to_ecu(&ecu, &u.instruction.target, bundle, path, length, delta)
            .await?;
        if result.ok {
            Ok(())
        } else {
            Err(Error::EcuRefused {
                ecu: ecu.ecu_id.clone(),
                rule: result
                    .rule
                    .as_deref()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(Rule::Protocol),
                message: result.message,
            })
        }
    }
}

/// Why `updates` may not be installed at `now`, if one of them carries a maintenance window
/// that does not contain it. A signed window that does not parse keeps the update back too:
/// the director meant to limit it, and the vehicle cannot tell how.
pub(super) fn outside_window(
    updates: &[VerifiedUpdate],
    now: chrono::DateTime<chrono::Utc>,
) -> Option<String> {
    updates.iter().find_map(|u| {
        let spec = u.instruction.maintenance_window.as_deref()?;
        match spec.parse::<MaintenanceWindow>() {
            Ok(w) if w.contains(now) => None,
            Ok(w) => Some(format!(
                "outside its maintenance window ({w}); {} waits for it",
                u.instruction.target
            )),
            Err(e) => Some(format!("{}: {e}", u.instruction.target)),
        }
    })
}

pub(super) async fn run_precondition(cmd: &str) -> std::result::Result<(), String> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .await
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} exited with {status}"))
    }
}

//! The primary as the gateway of legacy ECUs (`[ecus.uds]` in `vehicle.toml`): their version
//! reports, made and signed by the primary from what they answer over UDS, and their
//! flashing (see [`crate::uds::gateway`]).
//!
//! A legacy ECU has no Uptane key, so its report cannot be its own word: the primary reads
//! the running image (DIDs 0xF189, 0xF1A0) and the ECU's security log (0xF1A2), and signs a
//! report with its own key, marked `vouched_by` with its ECU ID. The director registers such
//! an ECU with the primary's key and refuses a report that hides or fakes the mark
//! (`rampart_core::uptane::manifest`). The security log is cleared on the ECU only after the
//! director's signed receipt acknowledged the report that carried it.

use std::path::Path;

use rampart_core::metadata::Expiry;
use rampart_core::uptane::manifest::{
    sign_ecu_report, EcuVersionReport, ECU_REPORT_TYPE, VOUCHED_BY_FIELD,
};
use rampart_core::uptane::FullVerifier;

use super::*;
use crate::uds::gateway::{self, Flash, UdsLink};

impl Primary {
    /// The signed report of a legacy ECU, made from what it answers now.
    pub(super) async fn legacy_report(
        &mut self,
        ecu: &EcuRef,
        link: &UdsLink,
        nonce: &str,
    ) -> Result<Value> {
        let state = gateway::read_state(&ecu.address, link, &ecu.ecu_id).await?;
        let counter = {
            let c = self
                .state
                .legacy_counters
                .entry(ecu.ecu_id.clone())
                .or_insert(0);
            *c += 1;
            *c
        };
        // Persisted before the report leaves, as an ECU does with its own counter.
        self.save()?;
        // Only a log that says something is cleared later; an empty one leaves nothing to do.
        if state.log.is_empty() {
            self.legacy_logs.remove(&ecu.ecu_id);
        } else {
            self.legacy_logs
                .insert(ecu.ecu_id.clone(), (counter, state.log_read));
        }
        let report = EcuVersionReport {
            type_: ECU_REPORT_TYPE.into(),
            ecu_id: ecu.ecu_id.clone(),
            installed_image: state.image,
            attacks_detected: state.log,
            latest_verified_time: Expiry::new(Utc::now()),
            report_counter: counter,
            nonce: nonce.to_owned(),
            unrecognized: BTreeMap::from([(
                VOUCHED_BY_FIELD.to_owned(),
                Value::String(self.config.ecu_id.clone()),
            )]),
        };
        let bytes = sign_ecu_report(&report, &self.signer)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Protocol(format!("report of {}: {e}", ecu.ecu_id)))
    }

    /// The director acknowledged a report up to `acknowledged`: the ECU may forget the
    /// security log that report carried. Failing that, it stays for the next report.
    pub(super) async fn clear_legacy_log(
        &self,
        ecu: &EcuRef,
        link: &UdsLink,
        acknowledged: Option<u64>,
    ) {
        let Some(&(counter, read)) = self.legacy_logs.get(&ecu.ecu_id) else {
            return;
        };
        if acknowledged.is_none_or(|a| a < counter) {
            return;
        }
        if let Err(e) = gateway::clear_log(&ecu.address, link, &ecu.ecu_id, read).await {
            tracing::warn!(ecu = %ecu.ecu_id, error = %e, "security log not cleared; it is reported again");
        }
    }

    /// Flashes a legacy ECU with an image this primary fully verified; the ECU's verify
    /// routine checks it again against the director's signed targets.
    pub(super) async fn flash_legacy(
        &mut self,
        v: &FullVerifier,
        ecu: &EcuRef,
        link: &UdsLink,
        target: &str,
        path: &Path,
        length: u64,
    ) -> Result<()> {
        let bundle = self.bundle_for(v, Verification::Partial)?;
        let targets = bundle
            .director
            .get(&metadata_file_name("targets"))
            .ok_or_else(|| Error::Protocol("no director targets to hand to the ECU".into()))?;
        let mut progress = self.reporter.transfer(
            &format!("flash {target} → {} over UDS/DoIP", ecu.ecu_id),
            length,
        );
        let result = Flash {
            address: &ecu.address,
            link,
            ecu_id: &ecu.ecu_id,
            target,
            image: path,
            length,
            director_targets: targets.as_bytes(),
        }
        .run(&mut *progress)
        .await;
        progress.finish();
        result?;
        self.reporter.say(&format!(
            "{}: flashed {target} over UDS/DoIP; it runs it after its reset",
            ecu.ecu_id
        ));
        Ok(())
    }
}

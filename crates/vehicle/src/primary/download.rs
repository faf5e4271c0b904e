//! Downloads of verified images: bounded by the signed length, every hash checked while
//! streaming, resumable, staged in the primary's downloads folder (what no update of the
//! cycle needs is removed).

use std::path::PathBuf;
use std::time::Instant;

use rampart_core::uptane::{DeltaOffer, FullVerifier, VerifiedUpdate};

use super::*;

impl Primary {
    pub(super) fn image_file(
        &self,
        v: &FullVerifier,
        u: &VerifiedUpdate,
    ) -> Option<rampart_core::metadata::TargetFile> {
        v.image()
            .trusted()
            .targets(&u.image_role)?
            .signed
            .targets
            .get(&u.instruction.target)
            .cloned()
    }

    /// The delta the director offered for `u`, if this cycle can use it: an ECU on the
    /// in-vehicle protocol (a legacy ECU's gateway flashes whole images) whose signed report of
    /// this cycle shows the delta's source.
    pub(super) fn delta_for(&self, v: &FullVerifier, u: &VerifiedUpdate) -> Option<DeltaOffer> {
        let offer = u.instruction.delta.as_ref()?;
        if self.ecu(&u.instruction.ecu_id)?.uds.is_some() {
            return None;
        }
        let running = v.installed().get(&u.instruction.ecu_id)?;
        offer.source.is(running).then(|| offer.clone())
    }

    /// What to download for one update — the image, or its `delta` — : path under the
    /// targets URL, length and hashes (of the ciphertext for an encrypted one).
    pub(super) fn download_source(
        &self,
        v: &FullVerifier,
        u: &VerifiedUpdate,
        delta: Option<&DeltaOffer>,
    ) -> (String, u64, rampart_core::hash::Hashes) {
        let (encryption, path, length, hashes) = match delta {
            Some(d) => (d.encryption.as_ref(), &d.path, d.length, &d.hashes),
            None => (
                u.instruction.encryption.as_ref(),
                &u.instruction.target,
                u.instruction.file.length,
                &u.instruction.file.hashes,
            ),
        };
        if let Some(enc) = encryption {
            return (
                enc.ciphertext.path.clone(),
                enc.ciphertext.length,
                enc.ciphertext.hashes.clone(),
            );
        }
        let consistent = v.image().trusted().root().signed.consistent_snapshot();
        let info = TargetInfo {
            path: path.clone(),
            file: rampart_core::metadata::TargetFile {
                length,
                hashes: hashes.clone(),
                custom: None,
                unrecognized: Default::default(),
            },
            role: u.image_role.clone(),
        };
        (target_url_path(&info, consistent), length, hashes.clone())
    }

    pub(super) fn downloads_dir(&self) -> PathBuf {
        self.config.state_dir.join("downloads")
    }

    /// Removes from the download folder whatever no update of this cycle needs: what a
    /// power cut or a failed cycle left of a release the director has since replaced
    /// (whole images, `#partial` ones) would otherwise stay on the T-BOX's disk for good.
    /// Downloads of this cycle's updates stay, to be resumed or reused.
    pub(super) fn prune_downloads(&self, v: &FullVerifier, updates: &[VerifiedUpdate]) {
        let dir = self.downloads_dir();
        let mut keep = std::collections::BTreeSet::new();
        for u in updates {
            let delta = self.delta_for(v, u);
            for source in [None, delta.as_ref()] {
                let (path, _, _) = self.download_source(v, u, source);
                let dest = dir.join(rampart_core::client::safe_file_name(&path));
                keep.insert(rampart_client::runner::partial_path(&dest));
                keep.insert(dest);
            }
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if keep.contains(&path) {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "removed a download no update needs")
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove a stale download")
                }
            }
        }
    }

    /// Downloads one verified update, or its `delta` (bounded, resumable, every hash
    /// checked).
    pub(super) async fn download(
        &mut self,
        v: &FullVerifier,
        u: &VerifiedUpdate,
        delta: Option<&DeltaOffer>,
    ) -> Result<PathBuf> {
        let targets = format!("{}targets/", self.image_base());
        let (path, length, hashes) = self.download_source(v, u, delta);
        let url = format!("{targets}{}", encode_target_path(&path));
        let dest = self
            .downloads_dir()
            .join(rampart_core::client::safe_file_name(&path));
        let mut progress = self.reporter.transfer(
            &format!(
                "download {}{}",
                u.instruction.target,
                if delta.is_some() { " (delta)" } else { "" }
            ),
            length,
        );
        let started = Instant::now();
        let outcome = download_target(
            &self.fetcher,
            &url,
            &dest,
            length,
            &hashes,
            &mut |done, _total| progress.set(done),
        )
        .await;
        progress.finish();
        let outcome = outcome?;
        tracing::info!(target = %u.instruction.target, ?outcome, seconds = started.elapsed().as_secs_f64(), "downloaded and verified");
        Ok(dest)
    }
}

//! Deltas on the server side (issue 18): made at publish from an earlier image of the same
//! hardware ID (`rampart publish NEW --delta-from OLD`), stored and signed into the image
//! repository as targets of their own (see [`rampart_core::uptane`] for the fields), and
//! recorded for the director, which offers one in an ECU's instruction when the image that ECU
//! reported is the delta's source.
//!
//! Nothing here is trusted by a vehicle because the server said it: the primary (and every
//! full-verification ECU) finds the delta in the image repository and checks that it joins the
//! source the director names to the image the director instructs; the ECU checks the bytes it
//! builds against the full image's signed length and hashes.

use std::path::Path;

use rampart_core::encryption::{decrypt_all, ContentKey};
use rampart_core::hash::{verify_bytes, Hashes};
use rampart_core::metadata::{TargetFile, Targets};
use rampart_core::uptane::{
    image_custom, DeltaOf, DeltaOffer, ImageCustom, ImageRef, DELTA_FORMAT,
};

use crate::config::Config;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::repo::{RepoState, Repository};

/// The target path of the delta to `new` from the image whose SHA-256 is `source_sha256`: next
/// to `new`, so a supplier's delegation that covers the image covers its deltas.
pub fn delta_name(new: &str, source_sha256: &str) -> String {
    let short = source_sha256.get(..16).unwrap_or(source_sha256);
    format!("{new}.from-{short}.bsdiff")
}

/// A delta made for a publish, to be staged with the image it leads to.
#[derive(Debug, Clone)]
pub(crate) struct MadeDelta {
    /// Its target path.
    pub(crate) name: String,
    /// Its target entry (length, hashes, custom with `delta`).
    pub(crate) file: TargetFile,
}

/// What a publish of the image `new_name` (plaintext at `new_file`, `custom` its fields) needs
/// to make a delta from the published image `from`.
pub(crate) struct DeltaRequest<'a> {
    pub(crate) layout: &'a Layout,
    pub(crate) config: &'a Config,
    pub(crate) repo: &'a Repository,
    pub(crate) state: &'a RepoState,
    pub(crate) new_name: &'a str,
    pub(crate) new_file: &'a Path,
    pub(crate) new_length: u64,
    pub(crate) new_hashes: &'a Hashes,
    pub(crate) custom: &'a ImageCustom,
    /// The publish's database connection (content keys of encrypted images, here and old).
    pub(crate) db: Option<&'a Db>,
    pub(crate) encrypt: bool,
}

/// Makes, stores (encrypted if the image is) and describes the delta from `from` to the image
/// being published.
pub(crate) async fn make(req: &DeltaRequest<'_>, from: &str) -> Result<MadeDelta> {
    let published = req
        .state
        .roles
        .values()
        .find_map(|t| t.targets.get(from))
        .ok_or_else(|| {
            Error::NotFound(format!(
                "--delta-from {from}: no such image in the image repository"
            ))
        })?;
    let old_custom = image_custom(from, published)?;
    if old_custom.delta.is_some() {
        return Err(Error::BadRequest(format!(
            "--delta-from {from}: that is a delta, not an image"
        )));
    }
    if old_custom.hardware_id != req.custom.hardware_id {
        return Err(Error::BadRequest(format!(
            "--delta-from {from}: it is built for hardware ID {}, the new image for {} (a delta \
             joins two images of one ECU type)",
            old_custom.hardware_id, req.custom.hardware_id
        )));
    }
    let old = published_plaintext(req, from, published).await?;
    let new = std::fs::read(req.new_file).map_err(|e| Error::io(req.new_file, e))?;
    let source_sha256 = published.hashes.get("sha256").cloned().unwrap_or_default();
    let name = delta_name(req.new_name, &source_sha256);
    let mut patch = Vec::new();
    rampart_delta::create(&old, &new, &mut patch)
        .map_err(|e| Error::BadRequest(format!("--delta-from {from}: {e}")))?;
    // Through a file, as every published image: hashed while stored, encrypted if asked. Its
    // own name: two publishes in one process with deltas from the same image (two operators,
    // two repositories) must not write, then remove, each other's file.
    let scratch = Scratch(std::env::temp_dir().join(format!(
        "rampart-delta-{}-{source_sha256}-{:016x}",
        std::process::id(),
        crate::random::u64()
    )));
    std::fs::write(scratch.path(), &patch).map_err(|e| Error::io(scratch.path(), e))?;
    let (length, hashes) = crate::ops::store(
        req.layout,
        req.config,
        req.repo,
        scratch.path(),
        &name,
        req.db.filter(|_| req.encrypt),
    )
    .await?;
    let custom = ImageCustom {
        hardware_id: req.custom.hardware_id.clone(),
        release_counter: req.custom.release_counter,
        version: req.custom.version.clone(),
        purpose: None,
        install_seconds: None,
        delta: Some(DeltaOf {
            format: DELTA_FORMAT.into(),
            source: ImageRef {
                filename: from.to_owned(),
                length: published.length,
                hashes: published.hashes.clone(),
            },
            result: ImageRef {
                filename: req.new_name.to_owned(),
                length: req.new_length,
                hashes: req.new_hashes.clone(),
            },
        }),
    };
    Ok(MadeDelta {
        name,
        file: TargetFile {
            length,
            hashes,
            custom: Some(custom.to_value()),
            unrecognized: Default::default(),
        },
    })
}

/// A scratch file, removed when dropped (a delta being made, an upload staged before it is
/// moved into the store).
pub(crate) struct Scratch(pub(crate) std::path::PathBuf);

impl Scratch {
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The plaintext of a published image — decrypted with its content key when only the
/// ciphertext is stored — checked against its signed length and hashes.
async fn published_plaintext(
    req: &DeltaRequest<'_>,
    name: &str,
    file: &TargetFile,
) -> Result<Vec<u8>> {
    let key = match req.db {
        Some(db) => db.image_key(name).await?,
        None => None,
    };
    let bytes = match key {
        Some(key) => {
            let kek = req.config.content_kek(req.layout)?;
            let content = ContentKey::from_bytes(&kek.content_key(&key)?)?;
            let ciphertext = req.repo.read_target(&key.ciphertext_path)?;
            decrypt_all(&content, &ciphertext)?
        }
        None => {
            let sha = file.hashes.get("sha256").cloned().unwrap_or_default();
            let stored = match name.rsplit_once('/') {
                Some((dir, base)) => format!("{dir}/{sha}.{base}"),
                None => format!("{sha}.{name}"),
            };
            req.repo.read_target(&stored)?
        }
    };
    verify_bytes(name, &bytes, Some(file.length), Some(&file.hashes))?;
    Ok(bytes)
}

/// Records the delta targets of a committed role for the director (publish and import both
/// end here, so a role signed offline brings its deltas too).
pub async fn record(db: &Db, role: &Targets) -> Result<usize> {
    let mut n = 0;
    for (name, file) in &role.targets {
        let Ok(custom) = image_custom(name, file) else {
            continue;
        };
        let Some(of) = custom.delta else { continue };
        let offer = DeltaOffer {
            path: name.to_owned(),
            length: file.length,
            hashes: file.hashes.clone(),
            format: of.format,
            source: of.source,
            encryption: None,
        };
        db.store_delta(&offer, &of.result.filename).await?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_delta_is_named_next_to_its_image() {
        let sha = hex::encode(rampart_core::hash::sha256(b"v1"));
        let name = delta_name("ivi/app-2.bin", &sha);
        assert!(name.starts_with("ivi/app-2.bin.from-"));
        assert!(name.ends_with(".bsdiff"));
        assert_eq!(
            name.len(),
            "ivi/app-2.bin.from-".len() + 16 + ".bsdiff".len()
        );
    }
}

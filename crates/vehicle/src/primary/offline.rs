//! Updates from an offline bundle (issue 18): a workshop laptop or a USB stick instead of the
//! network (`rampart vehicle --from-bundle FILE`). The bundle is unpacked — every entry's name
//! checked by [`rampart_core::bundle::check_entry`] first, links and devices refused, sizes
//! bounded — into a folder that mirrors the server's URLs; the primary then runs its usual
//! cycle against that folder through an offline fetcher: full verification of both
//! repositories from its own trusted roots and versions, consent, downloads checked against
//! the signed lengths and hashes, installs, reports. Nothing in the file is trusted because of
//! where it came from: a bundle for another vehicle, expired, tampered, older than what is
//! trusted, mixing releases, is refused by the same rules as the network. The signed manifests
//! the cycle makes go, one JSON line each, into a report file the workshop uploads
//! (`rampart admin import-reports FILE`); the next online check-in tells the director too.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rampart_core::bundle::{check_entry, Description, Entry};
use serde_json::Value;

use super::{CycleReport, Primary, PrimaryConfig};
use crate::consent::ConsentMode;
use crate::error::{Error, Result};
use crate::report::Reporter;

/// Largest bundle unpacked (all entries together).
pub const MAX_BUNDLE_BYTES: u64 = 16 * 1024 * 1024 * 1024;

fn malformed(why: impl Into<String>) -> Error {
    rampart_core::Error::BundleMalformed(why.into()).into()
}

/// Unpacks `bundle` into `into` (emptied first); returns what the bundle says of itself.
/// One refused entry refuses the bundle, and nothing of it is left behind.
pub fn unpack(bundle: &Path, into: &Path) -> Result<Description> {
    match unpack_checked(bundle, into) {
        Ok(d) => Ok(d),
        Err(e) => {
            let _ = std::fs::remove_dir_all(into);
            Err(e)
        }
    }
}

fn unpack_checked(bundle: &Path, into: &Path) -> Result<Description> {
    if into.exists() {
        std::fs::remove_dir_all(into).map_err(|e| Error::io(into, e))?;
    }
    std::fs::create_dir_all(into).map_err(|e| Error::io(into, e))?;
    let file = std::fs::File::open(bundle).map_err(|e| Error::io(bundle, e))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let entries = archive
        .entries()
        .map_err(|e| malformed(format!("{}: {e}", bundle.display())))?;
    let mut total = 0u64;
    let mut description = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| malformed(format!("not a whole bundle: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8(raw).map_err(|_| {
            Error::Verification(rampart_core::Error::BundleEntry {
                name: "(not UTF-8)".into(),
                reason: "a name that is not UTF-8".into(),
            })
        })?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        let place = check_entry(&name)?;
        if !kind.is_file() {
            return Err(rampart_core::Error::BundleEntry {
                name,
                reason: format!("a {kind:?} entry; a bundle holds only plain files"),
            }
            .into());
        }
        let size = entry
            .header()
            .size()
            .map_err(|e| malformed(format!("{name}: {e}")))?;
        total = total.saturating_add(size);
        if total > MAX_BUNDLE_BYTES {
            return Err(malformed(format!(
                "more than {MAX_BUNDLE_BYTES} bytes of files"
            )));
        }
        let dest = into.join(&name);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut out = std::fs::File::create(&dest).map_err(|e| Error::io(&dest, e))?;
        let copied = std::io::copy(&mut (&mut entry).take(size), &mut out)
            .map_err(|e| malformed(format!("{name}: {e}")))?;
        if copied != size {
            return Err(malformed(format!(
                "{name} ends after {copied} of its {size} bytes (a truncated bundle)"
            )));
        }
        if place == Entry::Description {
            let bytes = std::fs::read(&dest).map_err(|e| Error::io(&dest, e))?;
            description = Some(
                serde_json::from_slice::<Description>(&bytes)
                    .map_err(|e| malformed(format!("bundle.json: {e}")))?,
            );
        }
    }
    let description = description.ok_or_else(|| malformed("no bundle.json"))?;
    if description.format != rampart_core::bundle::FORMAT {
        return Err(malformed(format!(
            "format {:?}; this primary reads {}",
            description.format,
            rampart_core::bundle::FORMAT
        )));
    }
    Ok(description)
}

/// Appends one signed manifest to the report file, as a JSON line `{"vin", "manifest"}`,
/// flushed to disk before the cycle goes on.
pub(super) fn append_report(path: &Path, vin: &str, manifest: &[u8]) -> Result<()> {
    let manifest: Value = serde_json::from_slice(manifest)
        .map_err(|e| Error::Protocol(format!("manifest is not JSON: {e}")))?;
    let mut line = serde_json::to_vec(&serde_json::json!({ "vin": vin, "manifest": manifest }))
        .map_err(|e| Error::Protocol(e.to_string()))?;
    line.push(b'\n');
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(&line).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// The report file next to `bundle`: `BUNDLE.reports.jsonl`.
pub fn default_reports(bundle: &Path) -> PathBuf {
    let mut name = bundle.as_os_str().to_owned();
    name.push(".reports.jsonl");
    PathBuf::from(name)
}

/// One cycle from the bundle at `bundle`: unpacked into the primary's state folder, verified
/// and installed as online, the signed manifests appended to `reports`.
pub async fn run_from_bundle(
    mut config: PrimaryConfig,
    bundle: &Path,
    reports: &Path,
    consent: ConsentMode,
    reporter: Arc<dyn Reporter>,
) -> Result<CycleReport> {
    let folder = config.state_dir.join("offline-bundle");
    let description = match unpack(bundle, &folder) {
        Ok(d) => d,
        Err(e) => {
            // A refused bundle is an attack indicator like a refused download: noted, and
            // carried by a signed manifest in the report file (and by the next online one).
            let mut primary = Primary::open(config)?;
            primary.offline_reports = Some(reports.to_path_buf());
            primary.set_reporter(reporter.clone());
            let mut report = CycleReport::default();
            primary.note(
                &mut report,
                e.rule(),
                &format!("offline bundle {}: {e}", bundle.display()),
            );
            let (docs, _) = primary.collect_reports(&mut CycleReport::default()).await;
            if let Err(written) = primary.send_manifest(docs).await {
                tracing::error!(error = %written, "cannot write the report of a refused bundle");
            }
            return Err(e);
        }
    };
    reporter.say(&format!(
        "Offline bundle {}: for {} vehicle(s), made {}, usable until {}; {} image file(s). \
         Verified like the network: nothing in it is trusted for being in the file.",
        bundle.display(),
        description.vins.len(),
        description.created,
        description.expires,
        description.images
    ));
    let fetcher = rampart_client::HttpFetcher::offline(&folder)?;
    let base = fetcher
        .offline_base()
        .ok_or_else(|| Error::Config(format!("{}: not a usable folder", folder.display())))?;
    config.server = base;
    config.image_base = None;
    let mut primary = Primary::open(config)?;
    primary.fetcher = fetcher;
    primary.offline_reports = Some(reports.to_path_buf());
    primary.set_reporter(reporter.clone());
    let result = primary.cycle(&consent).await;
    let _ = std::fs::remove_dir_all(&folder);
    if result.is_ok() {
        reporter.say(&format!(
            "Signed reports written to {}: upload them with `rampart admin import-reports`, or \
             the vehicle's next online check-in tells the director.",
            reports.display()
        ));
    }
    result
}

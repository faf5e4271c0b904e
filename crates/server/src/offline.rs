//! Offline bundles (issue 18), the server's side: `rampart offline-bundle create --vin V …`
//! writes everything those vehicles need for their pending updates into one file — each
//! vehicle's director metadata (signed for it, as the director serves it; its timestamp
//! expires within a day, which makes the bundle short-lived), the image repository's
//! metadata, and the images the director instructs (their per-ECU ciphertext where they are
//! encrypted) — at the places of the server's URLs (see [`rampart_core::bundle`]). The
//! vehicle verifies all of it as it verifies the network.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rampart_core::bundle::{Description, DESCRIPTION, FORMAT};
use rampart_core::client::{target_url_path, TargetInfo};
use rampart_core::metadata::{Envelope, Targets};
use rampart_core::uptane::director_custom;

use crate::config::Config;
use crate::db::Db;
use crate::director::Director;
use crate::error::{Error, Result};
use crate::layout::Layout;

/// What a bundle holds.
#[derive(Debug, Clone)]
pub struct BundleSummary {
    /// Its description (`bundle.json`).
    pub description: Description,
    /// The file written.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
}

/// Writes the offline bundle for `vins` to `out` (through a temporary file renamed into place).
pub async fn create(
    layout: &Layout,
    vins: &[String],
    out: &Path,
    now: DateTime<Utc>,
) -> Result<BundleSummary> {
    if vins.is_empty() {
        return Err(Error::BadRequest("name at least one --vin".into()));
    }
    let config = Config::load(layout)?;
    let db = Db::connect(&config.database_url(layout)).await?;
    let director = Director::new(
        db.clone(),
        config.director_keys(layout)?,
        layout.director_public(),
    )
    .with_content_kek(std::sync::Arc::new(config.content_kek(layout)?));
    let repo = crate::ops::image_repo_with(layout, &config)?;
    let state = repo.state()?;
    let consistent = state.root.consistent_snapshot();
    let tmp = out.with_extension("partial");
    let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut add = |name: &str, bytes: &[u8]| -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(now.timestamp().max(0) as u64);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes)
            .map_err(|e| Error::io(&tmp, e))
    };
    let mut expires: Option<String> = None;
    let mut earliest = |at: &str| {
        if expires.as_deref().is_none_or(|e| at < e) {
            expires = Some(at.to_owned());
        }
    };
    let mut images = BTreeSet::new();
    for vin in vins {
        let docs = director.documents(vin, now).await?;
        let base = format!("director/{vin}/metadata");
        for entry in std::fs::read_dir(layout.director_public())
            .map_err(|e| Error::io(layout.director_public(), e))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".root.json") {
                let bytes = std::fs::read(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
                add(&format!("{base}/{name}"), &bytes)?;
            }
        }
        add(
            &format!("{base}/timestamp.json"),
            docs.timestamp.document.as_bytes(),
        )?;
        add(
            &format!("{base}/{}.snapshot.json", docs.snapshot.version),
            docs.snapshot.document.as_bytes(),
        )?;
        add(
            &format!("{base}/{}.targets.json", docs.targets.version),
            docs.targets.document.as_bytes(),
        )?;
        for role in [&docs.timestamp, &docs.snapshot, &docs.targets] {
            earliest(&role.expires_at);
        }
        let targets: Targets =
            Envelope::parse(docs.targets.document.as_bytes(), "targets")?.typed("targets")?;
        for (name, file) in &targets.targets {
            let custom = director_custom(name, file)?;
            for assignment in custom.ecus.values() {
                match &assignment.encryption {
                    Some(enc) => images.insert(enc.ciphertext.path.clone()),
                    None => images.insert(target_url_path(
                        &TargetInfo {
                            path: name.to_owned(),
                            file: file.clone(),
                            role: "targets".into(),
                        },
                        consistent,
                    )),
                };
            }
        }
    }
    // The image repository's metadata, every file of it (roots for the chain, the current
    // roles under their consistent-snapshot names).
    let mut names = repo.store().list("metadata")?;
    names.sort();
    for name in names {
        // Files of the repository only (not a writer's temporary file).
        if !name.ends_with(".json") {
            continue;
        }
        if let Some(stored) = repo.store().get(&format!("metadata/{name}"))? {
            add(&format!("image/metadata/{name}"), &stored.bytes)?;
        }
    }
    earliest(&state.timestamp.expires.to_string());
    let mut image_bytes = 0u64;
    for path in &images {
        let bytes = repo.read_target(path)?;
        image_bytes += bytes.len() as u64;
        add(&format!("image/targets/{path}"), &bytes)?;
    }
    let description = Description {
        format: FORMAT.into(),
        vins: vins.to_vec(),
        created: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        expires: expires.unwrap_or_default(),
        images: images.len() as u64,
        image_bytes,
    };
    let json = serde_json::to_vec_pretty(&description)
        .map_err(|e| Error::BadRequest(format!("bundle.json: {e}")))?;
    add(DESCRIPTION, &json)?;
    let writer = tar.into_inner().map_err(|e| Error::io(&tmp, e))?;
    let file = writer
        .into_inner()
        .map_err(|e| Error::io(&tmp, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    let bytes = std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len();
    Ok(BundleSummary {
        description,
        path: out.to_path_buf(),
        bytes,
    })
}

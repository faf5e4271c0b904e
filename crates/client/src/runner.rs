//! Runs the core's state machine against a repository over HTTP(S) and a local store, and
//! downloads targets into place.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use rampart_core::client::{Action, Client, Fetched};
use rampart_core::hash::{Hashes, StreamVerifier};

use crate::error::{Error, Result};
use crate::fetch::{join_url, HttpFetcher, Sink};
use crate::store::{sync_dir, MetadataStore};

/// Executes `client`'s actions until it is done: local reads and writes against `store`,
/// fetches against `metadata_base_url` (ending in `/`).
pub async fn run(
    client: &mut Client,
    fetcher: &HttpFetcher,
    metadata_base_url: &str,
    store: &MetadataStore,
) -> Result<()> {
    loop {
        match client.next_action()? {
            Action::ReadLocal { name } => client.provide_local(store.read(&name)?)?,
            Action::Fetch { path, max_length } => {
                let url = join_url(metadata_base_url, &path)?;
                tracing::debug!(%url, max_length, "fetching metadata");
                let held = held_copy(store, &path)?;
                let fetched = match fetcher
                    .fetch_bytes_unless(&url, max_length, held.as_deref())
                    .await?
                {
                    Some(bytes) => Fetched::Bytes(bytes),
                    None => Fetched::NotFound,
                };
                client.provide_fetched(&path, fetched)?;
            }
            Action::Persist { name, bytes } => {
                tracing::debug!(%name, len = bytes.len(), "persisting trusted metadata");
                store.write(&name, &bytes)?;
            }
            Action::Remove { name } => {
                tracing::info!(%name, "removing trusted metadata (keys rotated)");
                store.remove(&name)?;
            }
            Action::Done => return Ok(()),
        }
    }
}

/// The trusted copy of an unversioned metadata file (`timestamp.json`), to fetch it again
/// only if it changed; versioned files (`N.snapshot.json`) are never fetched twice.
pub fn held_copy(store: &MetadataStore, path: &str) -> Result<Option<Vec<u8>>> {
    if path == "timestamp.json" {
        store.read(path)
    } else {
        Ok(None)
    }
}

/// How a target download ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadOutcome {
    /// The file was already in place with the signed length and hashes.
    AlreadyPresent,
    /// Downloaded from the start.
    Downloaded,
    /// Continued from an interrupted earlier download (HTTP Range).
    Resumed {
        /// Bytes that were already on disk.
        from: u64,
    },
}

/// Where [`download_target`] stages the bytes of `dest` until they verify.
pub fn partial_path(dest: &Path) -> PathBuf {
    PathBuf::from(format!("{}#partial", dest.display()))
}

/// Checks an existing file against length and hashes, streaming.
pub fn file_matches(path: &Path, length: u64, hashes: &Hashes) -> Result<bool> {
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut verifier = StreamVerifier::new("local file", Some(length), length, Some(hashes))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        if verifier.update(buf.get(..n).unwrap_or_default()).is_err() {
            return Ok(false);
        }
    }
    Ok(verifier.finish().is_ok())
}

struct FileSink<'a> {
    file: crate::writeback::WriteBehind,
    path: PathBuf,
    verifier: Option<StreamVerifier>,
    what: String,
    length: u64,
    hashes: &'a Hashes,
    done: u64,
    progress: &'a mut (dyn FnMut(u64, u64) + Send),
}

impl Sink for FileSink<'_> {
    fn begin(&mut self, resumed: bool) -> Result<()> {
        if !resumed {
            // Server ignored the Range request: start over.
            self.file.restart().map_err(|e| Error::io(&self.path, e))?;
            self.verifier = Some(StreamVerifier::new(
                &self.what,
                Some(self.length),
                self.length,
                Some(self.hashes),
            )?);
            self.done = 0;
        }
        Ok(())
    }

    fn data(&mut self, chunk: &[u8]) -> Result<()> {
        if let Some(v) = self.verifier.as_mut() {
            v.update(chunk)?;
        }
        self.file
            .write_all(chunk)
            .map_err(|e| Error::io(&self.path, e))?;
        self.done = self.done.saturating_add(chunk.len() as u64);
        (self.progress)(self.done, self.length);
        Ok(())
    }
}

/// Downloads `url` to `dest`, bounded by the signed `length`, checking every hash while
/// streaming. Bytes go to `dest#partial` first and are renamed into place only after every
/// check passed; an interrupted download is resumed with HTTP Range (the bytes already on
/// disk are hashed again, never trusted blindly). A file already at `dest` with the right
/// length and hashes is not downloaded again.
pub async fn download_target(
    fetcher: &HttpFetcher,
    url: &str,
    dest: &Path,
    length: u64,
    hashes: &Hashes,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<DownloadOutcome> {
    if file_matches(dest, length, hashes)? {
        return Ok(DownloadOutcome::AlreadyPresent);
    }
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    // The staging name ends in "#partial": quoted target names never contain '#', so it
    // cannot collide with another target stored next to this one (e.g. `a.txt.part`).
    let part = partial_path(dest);
    let what = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut verifier = StreamVerifier::new(&what, Some(length), length, Some(hashes))?;
    // Re-hash what an earlier attempt left, if it is not already too long.
    let mut start = 0u64;
    if let Ok(mut existing) = fs::File::open(&part) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut ok = true;
        loop {
            let n = existing.read(&mut buf).map_err(|e| Error::io(&part, e))?;
            if n == 0 {
                break;
            }
            if verifier.update(buf.get(..n).unwrap_or_default()).is_err() {
                ok = false;
                break;
            }
            start += n as u64;
        }
        if !ok || start >= length {
            start = 0;
            verifier = StreamVerifier::new(&what, Some(length), length, Some(hashes))?;
        }
    }
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .map_err(|e| Error::io(&part, e))?;
    if start == 0 {
        file.set_len(0).map_err(|e| Error::io(&part, e))?;
    }
    let mut sink = FileSink {
        file: crate::writeback::WriteBehind::new(file, start),
        path: part.clone(),
        verifier: Some(verifier),
        what: what.clone(),
        length,
        hashes,
        done: start,
        progress,
    };
    let status = match fetcher.fetch(url, start, length, &mut sink).await {
        Ok(status) => status,
        Err(e) => {
            if !e.is_resumable() {
                // Too many or wrong bytes, or no such file: nothing here is worth resuming,
                // and the folder must hold only verified targets.
                drop(sink);
                let _ = fs::remove_file(&part);
            }
            return Err(e);
        }
    };
    let resumed = match status {
        crate::fetch::FetchStatus::NotFound => {
            drop(sink);
            let _ = fs::remove_file(&part);
            return Err(Error::HttpStatus {
                url: url.to_owned(),
                status: 404,
            });
        }
        crate::fetch::FetchStatus::Complete { resumed } => resumed && start > 0,
        // Never asked for (no If-None-Match on downloads).
        crate::fetch::FetchStatus::NotModified => {
            return Err(Error::HttpStatus {
                url: url.to_owned(),
                status: 304,
            })
        }
    };
    let verifier = sink.verifier.take();
    let check = verifier.map(|v| v.finish()).transpose();
    if let Err(e) = check {
        // Wrong bytes are not worth resuming from.
        let _ = fs::remove_file(&part);
        return Err(e.into());
    }
    let FileSink { file, .. } = sink;
    file.sync_all().map_err(|e| Error::io(&part, e))?;
    fs::rename(&part, dest).map_err(|e| Error::io(dest, e))?;
    if let Some(dir) = dest.parent() {
        sync_dir(dir)?;
    }
    Ok(if resumed {
        DownloadOutcome::Resumed { from: start }
    } else {
        DownloadOutcome::Downloaded
    })
}

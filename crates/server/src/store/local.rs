//! The image repository in a local folder (the embedded default): files written atomically
//! (temporary file, `fsync`, rename, `fsync` of the folder), one writer at a time by `flock`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{split_key, Namespace, PublicStore, Stored, WriterGuard};
use crate::error::{Error, Result};

/// A repository's metadata and targets folders (one folder for both, for the director's root
/// chain).
#[derive(Debug, Clone)]
pub struct LocalFolder {
    metadata_dir: PathBuf,
    targets_dir: PathBuf,
}

impl LocalFolder {
    /// The store over these folders.
    pub fn new(metadata_dir: impl Into<PathBuf>, targets_dir: impl Into<PathBuf>) -> Self {
        LocalFolder {
            metadata_dir: metadata_dir.into(),
            targets_dir: targets_dir.into(),
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        let (namespace, rest) = split_key(key)?;
        Ok(match namespace {
            Namespace::Metadata => self.metadata_dir.join(rest),
            Namespace::Targets => self.targets_dir.join(rest),
        })
    }
}

/// The tag of stored bytes: their SHA-256.
fn tag(bytes: &[u8]) -> String {
    hex::encode(rampart_core::hash::sha256(bytes))
}

fn read(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

pub(crate) fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

impl PublicStore for LocalFolder {
    fn describe(&self) -> String {
        self.metadata_dir.display().to_string()
    }

    fn get(&self, key: &str) -> Result<Option<Stored>> {
        Ok(read(&self.path(key)?)?.map(|bytes| Stored {
            tag: tag(&bytes),
            bytes,
        }))
    }

    fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.path(key)?.exists())
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let (namespace, sub) = match dir.split_once('/') {
            Some((namespace, sub)) => (namespace, Some(sub)),
            None => (dir, None),
        };
        let base = match namespace {
            "metadata" => &self.metadata_dir,
            "targets" => &self.targets_dir,
            _ => {
                return Err(Error::BadRequest(format!(
                    "{dir:?} is not metadata or targets"
                )))
            }
        };
        let path = &sub.map_or_else(|| base.clone(), |s| base.join(s));
        let entries = match fs::read_dir(path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(path, e)),
        };
        Ok(entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        write_file_atomic(&self.path(key)?, bytes)
    }

    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        // Writers hold the lock: nobody creates the file between the check and the write.
        let path = self.path(key)?;
        if path.exists() {
            return Ok(false);
        }
        write_file_atomic(&path, bytes)?;
        Ok(true)
    }

    fn replace(&self, key: &str, bytes: &[u8], expected: Option<&str>) -> Result<bool> {
        let path = self.path(key)?;
        let current = read(&path)?.map(|b| tag(&b));
        if current.as_deref() != expected {
            return Ok(false);
        }
        write_file_atomic(&path, bytes)?;
        Ok(true)
    }

    fn staging_path(&self, key: &str) -> Result<PathBuf> {
        let path = self.path(key)?;
        let dir = path.parent().unwrap_or(&self.targets_dir).to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let base = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(dir.join(format!(
            ".incoming-{}-{}",
            std::process::id(),
            rampart_core::client::safe_file_name(&base)
        )))
    }

    fn put_file(&self, key: &str, staged: &Path) -> Result<()> {
        let path = self.path(key)?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        fs::rename(staged, &path).map_err(|e| Error::io(&path, e))
    }

    fn copy(&self, from: &str, to: &str) -> Result<()> {
        let (from, to) = (self.path(from)?, self.path(to)?);
        if to.exists() {
            return Ok(());
        }
        fs::hard_link(&from, &to)
            .or_else(|_| fs::copy(&from, &to).map(|_| ()))
            .map_err(|e| Error::io(&to, e))
    }

    /// An exclusive `flock` on the metadata folder itself, released when the handle drops (a
    /// killed process included). Waits for the holder (writes take milliseconds).
    fn lock(&self) -> Result<WriterGuard> {
        let dir =
            fs::File::open(&self.metadata_dir).map_err(|e| Error::io(&self.metadata_dir, e))?;
        dir.lock().map_err(|e| Error::io(&self.metadata_dir, e))?;
        Ok(WriterGuard(Box::new(dir)))
    }

    fn folders(&self) -> Option<(&Path, &Path)> {
        Some((&self.metadata_dir, &self.targets_dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditional_writes_refuse_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalFolder::new(dir.path().join("m"), dir.path().join("t"));
        assert!(store.put_new("metadata/2.snapshot.json", b"a").unwrap());
        assert!(!store.put_new("metadata/2.snapshot.json", b"b").unwrap());
        assert_eq!(
            store
                .get("metadata/2.snapshot.json")
                .unwrap()
                .unwrap()
                .bytes,
            b"a"
        );
        assert!(store
            .replace("metadata/timestamp.json", b"1", None)
            .unwrap());
        let read = store.get("metadata/timestamp.json").unwrap().unwrap();
        assert!(!store
            .replace("metadata/timestamp.json", b"x", None)
            .unwrap());
        assert!(store
            .replace("metadata/timestamp.json", b"2", Some(&read.tag))
            .unwrap());
        // A writer that read version 1 cannot replace version 2.
        assert!(!store
            .replace("metadata/timestamp.json", b"3", Some(&read.tag))
            .unwrap());
        assert_eq!(
            store.get("metadata/timestamp.json").unwrap().unwrap().bytes,
            b"2"
        );
        assert_eq!(
            store.list("metadata").unwrap().len(),
            2,
            "{:?}",
            store.list("metadata")
        );
    }
}

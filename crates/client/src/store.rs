//! Trusted metadata on disk.
//!
//! Files are written the only way that survives a power cut: to a temporary file in the same
//! directory, fsync'd, renamed over the old name, and the directory fsync'd. A reader sees the
//! old bytes or the new bytes, never a mix. Names come from the core's state machine (role
//! names percent-encoded), and are checked again here so no name can leave the directory.

use rampart_core::rule::Rule;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Largest local metadata file read back (a corrupted or planted huge file is not trusted).
pub const MAX_LOCAL_FILE: u64 = 64 * 1024 * 1024;

/// A directory of trusted metadata files under unversioned names.
#[derive(Debug, Clone)]
pub struct MetadataStore {
    dir: PathBuf,
}

fn check_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\\')
        || name.contains('\0');
    if bad {
        return Err(Error::Verification(rampart_core::Error::UnsafeName {
            name: name.to_owned(),
            reason: "not a plain file name".into(),
        }));
    }
    Ok(())
}

impl MetadataStore {
    /// Opens (and creates) the directory.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(MetadataStore { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads `name`, `None` if it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        check_name(name)?;
        let path = self.dir.join(name);
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_LOCAL_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&path, e))?;
        if bytes.len() as u64 > MAX_LOCAL_FILE {
            // Not trusted: treat as absent so the client fetches a fresh copy.
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// Atomically replaces `name` with `bytes`.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        check_name(name)?;
        write_atomic(&self.dir.join(name), bytes)
    }

    /// Removes `name` if it exists.
    pub fn remove(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let path = self.dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(path, e)),
        }
    }
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    sync_dir(dir)
}

/// The folder `path` is in: `.` for a bare file name (whose `parent()` is the empty path, which
/// names no folder to sync).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A secret file (private key, token, key-encryption key) that must not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretFileError {
    /// Group or others have some access to it.
    #[error(
        "{}: a secret, but {what} (mode {mode:04o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Who may do what, in words.
        what: &'static str,
    },

    /// Its metadata could not be read (missing, unreadable directory…).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

impl SecretFileError {
    /// Stable short name of the failed rule.
    pub fn rule(&self) -> Rule {
        match self {
            SecretFileError::Exposed { .. } => Rule::SecretPermissions,
            SecretFileError::Io { .. } => Rule::Io,
        }
    }
}

/// Checks that the secret file `path` (following symlinks) is accessible to its owner only:
/// no permission bit for group or others, as ssh requires of private keys. A secret anyone
/// on the machine can read is no secret, and one they can write is not ours. Shared by the
/// server (admin token, TLS and online keys, key-encryption key) and the vehicle side.
pub fn check_secret_permissions(path: &Path) -> std::result::Result<(), SecretFileError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).map_err(|source| SecretFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    let what = match (mode & 0o044 != 0, mode & 0o022 != 0) {
        (true, true) => "readable and writable by group or others",
        (true, false) => "readable by group or others",
        (false, true) => "writable by group or others",
        (false, false) if mode & 0o011 != 0 => "executable by group or others",
        (false, false) => return Ok(()),
    };
    Err(SecretFileError::Exposed {
        path: path.to_path_buf(),
        mode,
        what,
    })
}

/// fsyncs a directory so a rename in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_file_name_is_in_the_current_folder() {
        assert_eq!(parent_dir(Path::new("answer.json")), Path::new("."));
        assert_eq!(parent_dir(Path::new("a/b.json")), Path::new("a"));
        assert_eq!(parent_dir(Path::new("/b.json")), Path::new("/"));
    }

    #[test]
    fn writes_reads_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetadataStore::open(dir.path()).unwrap();
        assert_eq!(store.read("root.json").unwrap(), None);
        store.write("root.json", b"one").unwrap();
        store.write("root.json", b"two").unwrap();
        assert_eq!(store.read("root.json").unwrap().unwrap(), b"two");
        store.remove("root.json").unwrap();
        store.remove("root.json").unwrap();
        assert_eq!(store.read("root.json").unwrap(), None);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "no temp files left behind");
    }

    #[test]
    fn secret_files_must_be_private_to_their_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, b"secret").unwrap();
        for ok in [0o600, 0o400, 0o700] {
            fs::set_permissions(&path, fs::Permissions::from_mode(ok)).unwrap();
            check_secret_permissions(&path).unwrap();
        }
        for bad in [0o644, 0o640, 0o604, 0o620, 0o602, 0o666, 0o610] {
            fs::set_permissions(&path, fs::Permissions::from_mode(bad)).unwrap();
            let err = check_secret_permissions(&path).unwrap_err();
            assert_eq!(err.rule(), "secret-permissions", "{bad:o}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("chmod 600 {}", path.display())),
                "{text}"
            );
            assert!(text.contains(&format!("{bad:04o}")), "{text}");
        }
        let missing = check_secret_permissions(&dir.path().join("missing")).unwrap_err();
        assert_eq!(missing.rule(), "io");
    }

    #[test]
    fn refuses_names_that_leave_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetadataStore::open(dir.path()).unwrap();
        for name in ["../x.json", "a/b.json", "..", ".", ""] {
            assert!(store.write(name, b"x").is_err(), "{name}");
            assert!(store.read(name).is_err(), "{name}");
        }
        store.write("..%2Fx.json", b"x").unwrap();
        assert!(dir.path().join("..%2Fx.json").exists());
    }
}

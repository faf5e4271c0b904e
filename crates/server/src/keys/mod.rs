//! Signing keys: PKCS#8 files (default) and PKCS#11 HSMs, both behind rampart-core's
//! [`Signer`] trait, so the repository and director code never know which one signs.
//!
//! A key is named by a *key source* string: a file path (`online-keys/timestamp.pem`), or a
//! PKCS#11 URI (`pkcs11:token=…;object=…?module-path=…&pin-source=env:…`, RFC 7512). The content
//! key-encryption key of encrypted images is in [`kek`].

pub mod kek;
pub mod pkcs11;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rampart_core::key::{pem_decode, Key, KeyScheme};
use rampart_core::signer::{InMemorySigner, Signer};

use crate::error::{Error, Result};

/// Where a signing key lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A PKCS#8 PEM file.
    File(PathBuf),
    /// A key on a PKCS#11 token (`pkcs11:token=…;object=…?module-path=…&pin-source=env:…`, RFC 7512).
    Pkcs11(String),
}

impl KeySource {
    /// Parses a key source string; relative file paths are taken relative to `base`.
    pub fn parse(s: &str, base: &Path) -> Self {
        if s.starts_with("pkcs11:") {
            KeySource::Pkcs11(s.to_owned())
        } else {
            let p = Path::new(s);
            KeySource::File(if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            })
        }
    }

    /// Opens the key for signing.
    pub fn load(&self) -> Result<Box<dyn Signer>> {
        match self {
            KeySource::File(path) => Ok(Box::new(load_key_file(path)?)),
            KeySource::Pkcs11(spec) => load_pkcs11(spec),
        }
    }
}

fn load_pkcs11(spec: &str) -> Result<Box<dyn Signer>> {
    let config = pkcs11::Pkcs11Config::parse(spec)
        .map_err(|e| Error::Config(format!("key source {spec:?}: {e}")))?;
    let signer = pkcs11::Pkcs11Signer::open(&config).map_err(|e| Error::Config(e.to_string()))?;
    Ok(Box::new(signer))
}

/// Creates `dir` with mode 0700 (keys folders).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| Error::io(dir, e))
}

/// Writes a private key as PKCS#8 PEM with mode 0600, refusing to overwrite an existing key.
pub fn write_key_file(path: &Path, signer: &InMemorySigner) -> Result<()> {
    write_new_secret(path, signer.to_pkcs8_pem().as_bytes())
}

/// Writes a new secret file (mode 0600 from its creation, synced), refusing to overwrite one
/// that exists: a key or KEK is never replaced by accident.
pub(crate) fn write_new_secret(path: &Path, contents: &[u8]) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Reads a PKCS#8 PEM private key file (any supported scheme). Refuses files readable by
/// group or others, as ssh does: a key anyone can read is not a secret.
pub fn load_key_file(path: &Path) -> Result<InMemorySigner> {
    rampart_client::store::check_secret_permissions(path)
        .map_err(|e| Error::Config(e.to_string()))?;
    let pem = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    InMemorySigner::from_pkcs8_pem_any(&pem)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// Generates a key and writes it to `path` (0600).
pub fn generate_key_file(path: &Path, scheme: KeyScheme) -> Result<InMemorySigner> {
    let signer = InMemorySigner::generate(scheme)?;
    write_key_file(path, &signer)?;
    Ok(signer)
}

/// Reads a public key for a delegation or an ECU: a TUF key object (JSON), an ed25519 /
/// P-256 / RSA `PUBLIC KEY` PEM, or a private key file (whose public half is taken).
pub fn read_public_key(path: &Path) -> Result<Key> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    public_key_from_text(&text).map_err(|e| Error::BadRequest(format!("{}: {e}", path.display())))
}

/// Parses a public key from the text of a file (see [`read_public_key`]).
pub fn public_key_from_text(text: &str) -> std::result::Result<Key, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        let key: Key =
            serde_json::from_str(trimmed).map_err(|e| format!("not a TUF key object: {e}"))?;
        key.parse(&rampart_core::key::KeyId("(imported)".into()))
            .map_err(|e| e.to_string())?;
        return Ok(key);
    }
    if trimmed.contains("BEGIN PRIVATE KEY") {
        let signer = InMemorySigner::from_pkcs8_pem_any(trimmed).map_err(|e| e.to_string())?;
        return Ok(signer.public_key().clone());
    }
    let der = pem_decode(trimmed, "PUBLIC KEY")?;
    // Ed25519 SPKI is a fixed 12-byte prefix and the 32-byte key.
    use rampart_core::key::ED25519_SPKI_PREFIX;
    if der.len() == 44 && der.starts_with(&ED25519_SPKI_PREFIX) {
        return Ok(Key::new(
            KeyScheme::Ed25519,
            hex::encode(der.get(12..).unwrap_or_default()),
        ));
    }
    for scheme in [KeyScheme::EcdsaP256Sha256, KeyScheme::RsaPssSha256] {
        let key = Key::new(scheme, rampart_core::key::pem_encode(&der, "PUBLIC KEY"));
        if key
            .parse(&rampart_core::key::KeyId("(imported)".into()))
            .is_ok()
        {
            return Ok(key);
        }
    }
    Err("not a supported public key (ed25519, ECDSA P-256 or RSA)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_private_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let signer = generate_key_file(&path, KeyScheme::Ed25519).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_key_file(&path).unwrap().key_id(), signer.key_id());
        assert!(
            generate_key_file(&path, KeyScheme::Ed25519).is_err(),
            "never overwrites a key"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_key_file(&path).is_err(), "world-readable key refused");
    }

    #[test]
    fn public_keys_are_read_from_each_format() {
        for scheme in [KeyScheme::Ed25519, KeyScheme::EcdsaP256Sha256] {
            let s = InMemorySigner::generate(scheme).unwrap();
            let from_json =
                public_key_from_text(&serde_json::to_string(s.public_key()).unwrap()).unwrap();
            assert_eq!(from_json, *s.public_key());
            let from_private = public_key_from_text(&s.to_pkcs8_pem()).unwrap();
            assert_eq!(from_private, *s.public_key());
        }
        let ecdsa = InMemorySigner::generate(KeyScheme::EcdsaP256Sha256).unwrap();
        let pem = &ecdsa.public_key().keyval.public;
        assert_eq!(public_key_from_text(pem).unwrap(), *ecdsa.public_key());
        assert!(public_key_from_text("garbage").is_err());
    }
}

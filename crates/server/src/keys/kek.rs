//! The content key-encryption key (KEK): content keys of encrypted images are stored in the
//! database sealed under it, never in plain text.
//!
//! Whoever reads a content key can decrypt the published ciphertext of that image, which any
//! CDN serves; the database file is readable by whoever gets a copy of it (a backup, a
//! replica, a careless mode). So each content key is sealed with AES-256-GCM (aws-lc-rs)
//! under a 256-bit KEK kept like the online keys: a file, mode 0600, in the online keys folder
//! (`D/online-keys/content-kek`, made by `rampart repo init`, or on first start for data
//! directories made before it existed). The target path is the associated data, so a sealed
//! key moved to another target's row does not open.
//!
//! Stored form: `kek1:` followed by hex of a random 96-bit nonce, the ciphertext and the tag.
//!
//! The KEK may also be an AES-256 key in a PKCS#11 token (`content_kek = "pkcs11:…"`,
//! [`Pkcs11AesKey`]): the token seals and opens, the key never leaves it. `rampart rotate
//! --role content-kek --to SOURCE` moves every stored content key to a new KEK (a new file, or
//! a key generated on a token) and points the configuration at it.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

use crate::db::{Db, ImageKey};
use crate::error::{Error, Result};
use crate::keys::pkcs11::{Pkcs11AesKey, Pkcs11Config};

/// Prefix of a sealed content key as stored.
pub const SEALED_PREFIX: &str = "kek1:";
/// File name of the KEK in the online keys folder.
pub const DEFAULT_FILE_NAME: &str = "content-kek";
/// Length of the KEK.
const KEK_LEN: usize = 32;

/// The content KEK.
pub struct ContentKek {
    key: Sealer,
    /// Where it is (a file path, or the token and key label), for messages.
    path: PathBuf,
}

/// Who seals: a key in memory read from a file, or a token.
enum Sealer {
    File(LessSafeKey),
    Token(Pkcs11AesKey),
}

impl fmt::Debug for ContentKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentKek")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn secret_error(e: rampart_client::store::SecretFileError) -> Error {
    Error::Config(e.to_string())
}

impl ContentKek {
    /// Creates a new random KEK at `path` (mode 0600; never overwrites).
    pub fn create(path: &Path) -> Result<Self> {
        let mut bytes = [0u8; KEK_LEN];
        aws_lc_rs::rand::fill(&mut bytes)
            .map_err(|_| Error::Config("the system random number generator failed".into()))?;
        super::write_new_secret(path, format!("{}\n", hex::encode(bytes)).as_bytes())?;
        Self::from_bytes(&bytes, path)
    }

    /// Reads the KEK at `path`, refusing a file others can access.
    pub fn load(path: &Path) -> Result<Self> {
        rampart_client::store::check_secret_permissions(path).map_err(secret_error)?;
        let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let bytes = hex::decode(text.trim()).map_err(|e| {
            Error::Config(format!(
                "{}: not a content KEK (64 hex digits): {e}",
                path.display()
            ))
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Reads the KEK at `path`, or creates it if there is none (a data directory made before
    /// content keys were sealed). Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool)> {
        match Self::create(path) {
            Ok(kek) => Ok((kek, true)),
            Err(_) if path.exists() => Ok((Self::load(path)?, false)),
            Err(e) => Err(e),
        }
    }

    fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        if bytes.len() != KEK_LEN {
            return Err(Error::Config(format!(
                "{}: a content KEK has {KEK_LEN} bytes, not {}",
                path.display(),
                bytes.len()
            )));
        }
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| Error::Config(format!("{}: unusable content KEK", path.display())))?;
        Ok(ContentKek {
            key: Sealer::File(LessSafeKey::new(key)),
            path: path.to_path_buf(),
        })
    }

    /// Opens the KEK held by a PKCS#11 token (`pkcs11:token=…;object=…?module-path=…&pin-source=env:…`).
    pub fn open_pkcs11(spec: &str) -> Result<Self> {
        let config = Pkcs11Config::parse(spec)
            .map_err(|e| Error::Config(format!("content_kek {spec:?}: {e}")))?;
        let key = Pkcs11AesKey::open(&config).map_err(|e| Error::Config(e.to_string()))?;
        Ok(Self::from_token(key, &config))
    }

    /// Generates a new KEK in a PKCS#11 token (refused if the label is taken) and opens it.
    pub fn generate_pkcs11(spec: &str) -> Result<Self> {
        let config = Pkcs11Config::parse(spec)
            .map_err(|e| Error::Config(format!("content_kek {spec:?}: {e}")))?;
        let key = Pkcs11AesKey::generate(&config).map_err(|e| Error::Config(e.to_string()))?;
        Ok(Self::from_token(key, &config))
    }

    fn from_token(key: Pkcs11AesKey, config: &Pkcs11Config) -> Self {
        ContentKek {
            key: Sealer::Token(key),
            path: PathBuf::from(format!(
                "pkcs11 token {:?} key {:?}",
                config.token_label, config.key_label
            )),
        }
    }

    /// Whether a stored content key is sealed (rather than legacy plain hex).
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(SEALED_PREFIX)
    }

    /// Seals the content key of `target`.
    pub fn seal(&self, target: &str, content_key: &[u8]) -> Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| Error::Config("the system random number generator failed".into()))?;
        let sealed = match &self.key {
            Sealer::File(key) => {
                let mut sealed = content_key.to_vec();
                key.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(target.as_bytes()),
                    &mut sealed,
                )
                .map_err(|_| Error::Config(format!("cannot seal the content key of {target}")))?;
                sealed
            }
            Sealer::Token(key) => key
                .seal(&nonce, target.as_bytes(), content_key)
                .map_err(|e| Error::Config(e.to_string()))?,
        };
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("{SEALED_PREFIX}{}", hex::encode(out)))
    }

    /// Opens the sealed content key of `target`.
    pub fn open(&self, target: &str, stored: &str) -> Result<Vec<u8>> {
        let refused = |why: &str| {
            Error::Database(format!(
                "the stored content key of {target} does not open with {}: {why}",
                self.path.display()
            ))
        };
        let hex_text = stored
            .strip_prefix(SEALED_PREFIX)
            .ok_or_else(|| refused("not sealed"))?;
        let mut bytes = hex::decode(hex_text).map_err(|_| refused("not hex"))?;
        if bytes.len() < NONCE_LEN {
            return Err(refused("too short"));
        }
        let mut sealed = bytes.split_off(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| refused("bad nonce"))?;
        match &self.key {
            Sealer::File(key) => {
                let plain = key
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(target.as_bytes()),
                        &mut sealed,
                    )
                    .map_err(|_| refused("wrong KEK, or the row was altered or moved"))?;
                Ok(plain.to_vec())
            }
            Sealer::Token(key) => key
                .open_sealed(&nonce, target.as_bytes(), &sealed)
                .map_err(|e| refused(&format!("wrong KEK, or the row was altered or moved ({e})"))),
        }
    }

    /// The content key of `key` as bytes: opened if sealed, decoded if legacy plain hex.
    pub fn content_key(&self, key: &ImageKey) -> Result<Vec<u8>> {
        if Self::is_sealed(&key.content_key) {
            self.open(&key.target, &key.content_key)
        } else {
            hex::decode(&key.content_key)
                .map_err(|e| Error::Database(format!("content key of {}: {e}", key.target)))
        }
    }
}

/// Re-seals every stored content key from `old` to `new` (each only if unchanged since it
/// was read). Returns how many moved.
pub async fn reseal_content_keys(db: &Db, old: &ContentKek, new: &ContentKek) -> Result<u64> {
    let mut moved = 0;
    for key in db.image_keys().await? {
        let raw = old.content_key(&key)?;
        let sealed = new.seal(&key.target, &raw)?;
        if db
            .replace_content_key(&key.target, &key.content_key, &sealed)
            .await?
        {
            moved += 1;
        }
    }
    Ok(moved)
}

/// Seals every content key still stored in plain text (rows written before keys were
/// sealed), each only if unchanged since it was read. Returns how many were sealed.
pub async fn seal_plaintext_content_keys(db: &Db, kek: &ContentKek) -> Result<u64> {
    let mut sealed = 0;
    for key in db.image_keys().await? {
        if ContentKek::is_sealed(&key.content_key) {
            continue;
        }
        let raw = kek.content_key(&key)?;
        let new = kek.seal(&key.target, &raw)?;
        if db
            .replace_content_key(&key.target, &key.content_key, &new)
            .await?
        {
            sealed += 1;
        }
    }
    Ok(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn sealed_keys_open_only_for_their_target_and_kek() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEFAULT_FILE_NAME);
        let kek = ContentKek::create(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let key = [7u8; 32];
        let sealed = kek.seal("ivi/app.bin", &key).unwrap();
        assert!(ContentKek::is_sealed(&sealed));
        assert!(!sealed.contains(&hex::encode(key)));
        assert_ne!(
            sealed,
            kek.seal("ivi/app.bin", &key).unwrap(),
            "random nonce"
        );
        assert_eq!(kek.open("ivi/app.bin", &sealed).unwrap(), key);
        assert!(
            kek.open("ivi/other.bin", &sealed).is_err(),
            "bound to the target"
        );
        // The last hex digit changed (to another digit: one time in 16 it already was '0').
        let mut tampered = sealed.clone();
        let last = tampered.pop();
        tampered.push(if last == Some('0') { '1' } else { '0' });
        assert_ne!(tampered, sealed);
        assert!(kek.open("ivi/app.bin", &tampered).is_err());
        let reloaded = ContentKek::load(&path).unwrap();
        assert_eq!(reloaded.open("ivi/app.bin", &sealed).unwrap(), key);
        let other = ContentKek::create(&dir.path().join("other")).unwrap();
        assert!(other.open("ivi/app.bin", &sealed).is_err());
        assert!(ContentKek::create(&path).is_err(), "never overwrites");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = ContentKek::load(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}

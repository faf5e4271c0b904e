//! Online signing keys held in an HSM, through PKCS#11 — and the content key-encryption key
//! ([`Pkcs11AesKey`], AES-256-GCM on the token).
//!
//! [`Pkcs11Signer`] implements rampart-core's [`Signer`] with a private key that never leaves
//! the token: Ed25519 keys sign with `CKM_EDDSA` over the message, ECDSA P-256 keys sign with
//! `CKM_ECDSA` over SHA-256 of the message (computed here with aws-lc-rs), and the token's
//! raw `r || s` signature is re-encoded as the DER `ECDSA-Sig-Value` TUF's
//! `ecdsa-sha2-nistp256` scheme uses. The TUF public key object (and so the key ID) is built
//! from the token's public key object (`CKA_EC_POINT`).
//!
//! A key is named by a [`Pkcs11Config`], which config files write as an RFC 7512 URI:
//!
//! ```text
//! pkcs11:token=rampart;object=timestamp;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:RAMPART_HSM_PIN
//! ```
//!
//! `token` is the token label (which selects the slot), `object` the `CKA_LABEL` of the key
//! (and of its public key), `module-path` the PKCS#11 library, and the user PIN comes from
//! `pin-source` (`env:VAR`, or `file:PATH` of a 0600 file) or literally from `pin-value`
//! (tests only). The earlier form `pkcs11:module=…;token=…;key=…;pin-env=…` is still read,
//! with a deprecation warning (see `uri`).
//!
//! PKCS#11 modules may be initialised once per process, and login state is shared by every
//! session an application has on a token. This module therefore keeps one context per module
//! path for the life of the process, and remembers (as a SHA-256 digest) the PIN that last
//! logged in to each token, so that a second signer presenting a *different* PIN while the
//! token is still logged in is refused instead of riding on the earlier login.

mod der;
mod session;
mod uri;

use der::*;
use session::*;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
pub use uri::Pkcs11Config;

use aws_lc_rs::digest;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use rampart_core::key::{Key, KeyId, KeyScheme};
use rampart_core::signer::Signer;
use subtle::ConstantTimeEq;

/// Why a PKCS#11 key could not be configured, opened, generated or used.
///
/// Every message names what failed (module, token, key) and, for token errors, the PKCS#11
/// function and return value (`C_Login returned CKR_PIN_INCORRECT`). PINs never appear.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Pkcs11Error {
    /// The `pkcs11:` config string is malformed, or its PIN environment variable is unset.
    #[error("PKCS#11 config: {0}")]
    Config(String),

    /// The PKCS#11 module could not be loaded or initialised.
    #[error("PKCS#11 module load failed for {module}: {reason}")]
    ModuleLoad {
        /// Module path.
        module: String,
        /// What went wrong.
        reason: String,
    },

    /// No token (or more than one) with the configured label.
    #[error("PKCS#11 token {token:?} not found in module {module}: {reason}")]
    TokenNotFound {
        /// Token label looked for.
        token: String,
        /// Module path.
        module: String,
        /// Which tokens there are, or why the label is ambiguous.
        reason: String,
    },

    /// The user could not log in (wrong PIN, locked PIN, …).
    #[error("PKCS#11 login to token {token:?} failed: {reason}")]
    LoginFailed {
        /// Token label.
        token: String,
        /// What went wrong.
        reason: String,
    },

    /// No private key with the configured label on the token.
    #[error("PKCS#11 key not found: no private key labelled {key:?} on token {token:?}")]
    KeyNotFound {
        /// Key label.
        key: String,
        /// Token label.
        token: String,
    },

    /// A key with the label exists but cannot be used (no public half, unsupported type or
    /// curve, several keys with one label, public key that does not match the private key…).
    #[error("PKCS#11 key {key:?} on token {token:?} is unusable: {reason}")]
    BadKey {
        /// Key label.
        key: String,
        /// Token label.
        token: String,
        /// What is wrong.
        reason: String,
    },

    /// Key generation failed (or was refused because the label is taken).
    #[error("PKCS#11 key generation of {key:?} on token {token:?} failed: {reason}")]
    Generate {
        /// Key label.
        key: String,
        /// Token label.
        token: String,
        /// What went wrong.
        reason: String,
    },

    /// The token refused or failed to sign.
    #[error("PKCS#11 sign failed with key {key:?} on token {token:?}: {reason}")]
    Sign {
        /// Key label.
        key: String,
        /// Token label.
        token: String,
        /// What went wrong.
        reason: String,
    },

    /// Another token operation failed (opening a session, searching or reading objects).
    #[error("PKCS#11 {operation} on token {token:?} failed: {reason}")]
    Token {
        /// Token label.
        token: String,
        /// What was being done.
        operation: String,
        /// What went wrong.
        reason: String,
    },
}

impl From<Pkcs11Error> for rampart_core::Error {
    fn from(e: Pkcs11Error) -> Self {
        match e {
            Pkcs11Error::Config(reason) => rampart_core::Error::Malformed {
                what: "PKCS#11 config".into(),
                reason,
            },
            Pkcs11Error::BadKey { key, token, reason } => rampart_core::Error::BadKey {
                keyid: format!("pkcs11 token {token:?} key {key:?}"),
                reason,
            },
            other => rampart_core::Error::Crypto(other.to_string()),
        }
    }
}

/// `C_Login returned CKR_PIN_INCORRECT` rather than cryptoki's paragraph-long texts.
fn describe(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => {
            format!("C_{function:?} returned {}", ckr_name(*rv))
        }
        other => other.to_string(),
    }
}

/// `PinIncorrect` → `CKR_PIN_INCORRECT`.
fn ckr_name(rv: RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn rv_of(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// Module path → module. Entries are never removed: finalising a module would break every
/// other session of the process on it.
static MODULES: Mutex<BTreeMap<PathBuf, Arc<Module>>> = Mutex::new(BTreeMap::new());

/// An online signing key held in a PKCS#11 token (HSM, smart card, SoftHSM).
///
/// The session is guarded by a mutex, so one signer can be shared between threads; signatures
/// through one signer are made one at a time.
pub struct Pkcs11Signer {
    session: Mutex<Session>,
    private: ObjectHandle,
    scheme: KeyScheme,
    public: Key,
    keyid: KeyId,
    token_label: String,
    key_label: String,
    /// The module: keeps its context alive at least as long as the session, and its lock.
    module: Arc<Module>,
}

impl fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Signer")
            .field("token", &self.token_label)
            .field("key", &self.key_label)
            .field("scheme", &self.scheme.scheme())
            .field("keyid", &self.keyid)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Signer {
    /// Opens the existing key pair labelled `config.key_label` on the token labelled
    /// `config.token_label`, logging in with `config.pin`.
    ///
    /// Supports Ed25519 (`CKK_EC_EDWARDS` on edwards25519) and ECDSA P-256 (`CKK_EC` on
    /// prime256v1) keys. The key is checked with one test signature before it is returned.
    pub fn open(config: &Pkcs11Config) -> Result<Self, Pkcs11Error> {
        let module = load_module(&config.module)?;
        let shared = module
            .token_ops
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let session = open_session(&module, config, false)?;
        let bad = |reason: String| Pkcs11Error::BadKey {
            key: config.key_label.clone(),
            token: config.token_label.clone(),
            reason,
        };
        let token_err = |operation: &str, e: &CkError| Pkcs11Error::Token {
            token: config.token_label.clone(),
            operation: format!("{operation} for key {:?}", config.key_label),
            reason: describe(e),
        };
        let label = Attribute::Label(config.key_label.as_bytes().to_vec());

        let privates = session
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), label.clone()])
            .map_err(|e| token_err("searching the private key", &e))?;
        let private = match privates.as_slice() {
            [one] => *one,
            [] => {
                return Err(Pkcs11Error::KeyNotFound {
                    key: config.key_label.clone(),
                    token: config.token_label.clone(),
                })
            }
            more => {
                return Err(bad(format!(
                    "{} private keys carry this label; labels must be unique",
                    more.len()
                )))
            }
        };
        let attrs = session
            .get_attributes(private, &[AttributeType::KeyType, AttributeType::Id])
            .map_err(|e| token_err("reading the private key", &e))?;
        let mut key_type = None;
        let mut id = Vec::new();
        for attr in attrs {
            match attr {
                Attribute::KeyType(t) => key_type = Some(t),
                Attribute::Id(v) => id = v,
                _ => {}
            }
        }

        let mut template = vec![Attribute::Class(ObjectClass::PUBLIC_KEY), label];
        if !id.is_empty() {
            template.push(Attribute::Id(id));
        }
        let publics = session
            .find_objects(&template)
            .map_err(|e| token_err("searching the public key", &e))?;
        let public_handle = match publics.as_slice() {
            [one] => *one,
            [] => {
                return Err(bad(
                    "no public key object with the same label and CKA_ID; the signer needs it to build the TUF key".into(),
                ))
            }
            more => {
                return Err(bad(format!(
                    "{} public keys match the private key's label and CKA_ID",
                    more.len()
                )))
            }
        };
        let attrs = session
            .get_attributes(
                public_handle,
                &[AttributeType::EcParams, AttributeType::EcPoint],
            )
            .map_err(|e| token_err("reading the public key", &e))?;
        let mut params = None;
        let mut point = None;
        for attr in attrs {
            match attr {
                Attribute::EcParams(v) => params = Some(v),
                Attribute::EcPoint(v) => point = Some(v),
                _ => {}
            }
        }
        let params = params.ok_or_else(|| bad("public key has no CKA_EC_PARAMS".into()))?;
        let point = point.ok_or_else(|| bad("public key has no CKA_EC_POINT".into()))?;

        let scheme = match key_type {
            Some(t) if t == KeyType::EC_EDWARDS => {
                if params != ED25519_PARAMS_OID && params != ED25519_PARAMS_NAME {
                    return Err(bad(format!(
                        "EdDSA key on a curve other than edwards25519 (CKA_EC_PARAMS {})",
                        hex::encode(&params)
                    )));
                }
                KeyScheme::Ed25519
            }
            Some(t) if t == KeyType::EC => {
                if params != P256_PARAMS_OID {
                    return Err(bad(format!(
                        "EC key on a curve other than P-256 (CKA_EC_PARAMS {})",
                        hex::encode(&params)
                    )));
                }
                KeyScheme::EcdsaP256Sha256
            }
            Some(t) => {
                return Err(bad(format!(
                    "key type {t} is not supported (Ed25519 and ECDSA P-256 are)"
                )))
            }
            None => return Err(bad("private key has no CKA_KEY_TYPE".into())),
        };
        let public = tuf_public_key(scheme, &point).map_err(bad)?;
        let keyid = public.key_id().map_err(|e| bad(e.to_string()))?;
        let verifier = public.parse(&keyid).map_err(|e| bad(e.to_string()))?;

        drop(shared);
        let signer = Pkcs11Signer {
            session: Mutex::new(session),
            private,
            scheme,
            public,
            keyid,
            token_label: config.token_label.clone(),
            key_label: config.key_label.clone(),
            module,
        };
        let sig = signer.sign_raw(SELF_TEST_MESSAGE)?;
        if !verifier.verify(SELF_TEST_MESSAGE, &sig) {
            return Err(bad(
                "a test signature does not verify with the public key found on the token (private and public objects do not belong together)".into(),
            ));
        }
        Ok(signer)
    }

    /// Generates a persistent key pair labelled `config.key_label` on the token and opens it.
    ///
    /// The private key is sensitive and not extractable. Refuses to run if a private key with
    /// that label already exists. Supports [`KeyScheme::Ed25519`] and
    /// [`KeyScheme::EcdsaP256Sha256`].
    pub fn generate(config: &Pkcs11Config, scheme: KeyScheme) -> Result<Self, Pkcs11Error> {
        let failed = |reason: String| Pkcs11Error::Generate {
            key: config.key_label.clone(),
            token: config.token_label.clone(),
            reason,
        };
        let (mechanism, params) = match scheme {
            KeyScheme::Ed25519 => (Mechanism::EccEdwardsKeyPairGen, ED25519_PARAMS_OID),
            KeyScheme::EcdsaP256Sha256 => (Mechanism::EccKeyPairGen, P256_PARAMS_OID),
            other => {
                return Err(failed(format!(
                "scheme {} is not supported for PKCS#11 keys (ed25519 and ecdsa-sha2-nistp256 are)",
                other.scheme()
            )))
            }
        };
        let module = load_module(&config.module)?;
        {
            let _exclusive = module
                .token_ops
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let session = open_session(&module, config, true)?;
            let label = Attribute::Label(config.key_label.as_bytes().to_vec());
            let existing = session
                .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), label.clone()])
                .map_err(|e| failed(format!("searching for existing keys: {}", describe(&e))))?;
            if !existing.is_empty() {
                return Err(failed(
                    "a private key with this label already exists on the token".into(),
                ));
            }
            let mut id = vec![0u8; 16];
            aws_lc_rs::rand::fill(&mut id)
                .map_err(|e| failed(format!("cannot draw a random CKA_ID: {e}")))?;
            let public_template = [
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::EcParams(params.to_vec()),
                label.clone(),
                Attribute::Id(id.clone()),
            ];
            let private_template = [
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                label,
                Attribute::Id(id),
            ];
            session
                .generate_key_pair(&mechanism, &public_template, &private_template)
                .map_err(|e| failed(describe(&e)))?;
            // The read-write session closes here; `open` uses a read-only one.
        }
        Self::open(config)
    }

    /// The signature scheme of the key.
    pub fn scheme(&self) -> KeyScheme {
        self.scheme
    }

    /// The label of the token holding the key.
    pub fn token_label(&self) -> &str {
        &self.token_label
    }

    /// The `CKA_LABEL` of the key.
    pub fn key_label(&self) -> &str {
        &self.key_label
    }

    /// Signs with the token and returns the signature in TUF's encoding.
    fn sign_raw(&self, message: &[u8]) -> Result<Vec<u8>, Pkcs11Error> {
        let failed = |reason: String| Pkcs11Error::Sign {
            key: self.key_label.clone(),
            token: self.token_label.clone(),
            reason,
        };
        let session = lock(&self.session);
        let _shared = self
            .module
            .token_ops
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match self.scheme {
            KeyScheme::EcdsaP256Sha256 => {
                let hash = digest::digest(&digest::SHA256, message);
                let raw = session
                    .sign(&Mechanism::Ecdsa, self.private, hash.as_ref())
                    .map_err(|e| failed(describe(&e)))?;
                ecdsa_raw_to_der(&raw).map_err(failed)
            }
            _ => session
                .sign(
                    &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                    self.private,
                    message,
                )
                .map_err(|e| failed(describe(&e))),
        }
    }
}

impl Signer for Pkcs11Signer {
    fn public_key(&self) -> &Key {
        &self.public
    }

    fn key_id(&self) -> KeyId {
        self.keyid.clone()
    }

    fn sign(&self, message: &[u8]) -> rampart_core::Result<Vec<u8>> {
        Ok(self.sign_raw(message)?)
    }
}

/// Length of an AES-GCM nonce (IV) used with [`Pkcs11AesKey`].
pub const GCM_NONCE_LEN: usize = 12;
/// Length of an AES-GCM tag.
/// Message signed (and verified) when a signer is opened, to prove that the public key read
/// from the token belongs to the private key found there.
const SELF_TEST_MESSAGE: &[u8] = b"rampart pkcs11 signer self-test";

const GCM_TAG_BITS: u64 = 128;

/// An AES-256 secret key held in a PKCS#11 token, for AES-GCM sealing (the content
/// key-encryption key, [`crate::keys::kek`]). The key is sensitive and not extractable: the
/// token seals and opens, the key never leaves it.
pub struct Pkcs11AesKey {
    session: Mutex<Session>,
    key: ObjectHandle,
    token_label: String,
    key_label: String,
    module: Arc<Module>,
}

impl fmt::Debug for Pkcs11AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11AesKey")
            .field("token", &self.token_label)
            .field("key", &self.key_label)
            .finish_non_exhaustive()
    }
}

impl Pkcs11AesKey {
    /// Opens the AES key labelled `config.key_label` on the token, and checks it seals and
    /// opens (one round trip) before it is returned.
    pub fn open(config: &Pkcs11Config) -> Result<Self, Pkcs11Error> {
        let module = load_module(&config.module)?;
        let shared = module
            .token_ops
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let session = open_session(&module, config, false)?;
        let bad = |reason: String| Pkcs11Error::BadKey {
            key: config.key_label.clone(),
            token: config.token_label.clone(),
            reason,
        };
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(config.key_label.as_bytes().to_vec()),
            ])
            .map_err(|e| Pkcs11Error::Token {
                token: config.token_label.clone(),
                operation: format!("searching the secret key {:?}", config.key_label),
                reason: describe(&e),
            })?;
        let key = match found.as_slice() {
            [one] => *one,
            [] => {
                return Err(Pkcs11Error::KeyNotFound {
                    key: config.key_label.clone(),
                    token: config.token_label.clone(),
                })
            }
            more => {
                return Err(bad(format!(
                    "{} secret keys carry this label; labels must be unique",
                    more.len()
                )))
            }
        };
        drop(shared);
        let aes = Pkcs11AesKey {
            session: Mutex::new(session),
            key,
            token_label: config.token_label.clone(),
            key_label: config.key_label.clone(),
            module,
        };
        // A fresh random nonce: a GCM nonce is never used twice with one key.
        let mut nonce = [0u8; GCM_NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|e| Pkcs11Error::Token {
            token: config.token_label.clone(),
            operation: "drawing a nonce".into(),
            reason: e.to_string(),
        })?;
        let sealed = aes.seal(&nonce, b"self-test", SELF_TEST_MESSAGE)?;
        if aes.open_sealed(&nonce, b"self-test", &sealed)? != SELF_TEST_MESSAGE {
            return Err(bad(
                "AES-GCM round trip on the token gave other bytes".into()
            ));
        }
        Ok(aes)
    }

    /// Generates a persistent AES-256 key labelled `config.key_label` on the token (sensitive,
    /// not extractable, encrypt and decrypt only) and opens it. Refuses if a secret key with
    /// that label exists.
    pub fn generate(config: &Pkcs11Config) -> Result<Self, Pkcs11Error> {
        let failed = |reason: String| Pkcs11Error::Generate {
            key: config.key_label.clone(),
            token: config.token_label.clone(),
            reason,
        };
        let module = load_module(&config.module)?;
        {
            let _exclusive = module
                .token_ops
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let session = open_session(&module, config, true)?;
            let label = Attribute::Label(config.key_label.as_bytes().to_vec());
            let existing = session
                .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), label.clone()])
                .map_err(|e| failed(format!("searching for existing keys: {}", describe(&e))))?;
            if !existing.is_empty() {
                return Err(failed(
                    "a secret key with this label already exists on the token".into(),
                ));
            }
            let template = [
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::ValueLen(32.into()),
                label,
            ];
            session
                .generate_key(&Mechanism::AesKeyGen, &template)
                .map_err(|e| failed(describe(&e)))?;
        }
        Self::open(config)
    }

    /// AES-GCM seals `plaintext` with `nonce` and `aad`: ciphertext followed by the tag.
    pub fn seal(
        &self,
        nonce: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, Pkcs11Error> {
        self.gcm(nonce, aad, plaintext, true)
    }

    /// Opens what [`Pkcs11AesKey::seal`] sealed (fails if anything was altered).
    pub fn open_sealed(
        &self,
        nonce: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, Pkcs11Error> {
        self.gcm(nonce, aad, sealed, false)
    }

    fn gcm(
        &self,
        nonce: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        data: &[u8],
        seal: bool,
    ) -> Result<Vec<u8>, Pkcs11Error> {
        let failed = |reason: String| Pkcs11Error::Token {
            token: self.token_label.clone(),
            operation: format!(
                "AES-GCM {} with key {:?}",
                if seal { "seal" } else { "open" },
                self.key_label
            ),
            reason,
        };
        // The token may write the IV it used into the parameter: a copy of ours.
        let mut iv = *nonce;
        let params = cryptoki::mechanism::aead::GcmParams::new(&mut iv, aad, GCM_TAG_BITS.into())
            .map_err(|e| failed(describe(&e)))?;
        let mechanism = Mechanism::AesGcm(params);
        let session = lock(&self.session);
        let _shared = self
            .module
            .token_ops
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if seal {
            session.encrypt(&mechanism, self.key, data)
        } else {
            session.decrypt(&mechanism, self.key, data)
        }
        .map_err(|e| failed(describe(&e)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn return_values_are_named_like_the_standard() {
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            describe(&CkError::Pkcs11(
                RvError::UserAlreadyLoggedIn,
                cryptoki::context::Function::Login
            )),
            "C_Login returned CKR_USER_ALREADY_LOGGED_IN"
        );
    }

    #[test]
    fn a_missing_module_is_a_module_load_error() {
        let c = Pkcs11Config {
            module: "/nonexistent/libnothing.so".into(),
            token_label: "t".into(),
            pin: "1".into(),
            key_label: "k".into(),
        };
        let err = Pkcs11Signer::open(&c).unwrap_err();
        assert!(matches!(err, Pkcs11Error::ModuleLoad { .. }), "{err}");
        assert!(err.to_string().contains("module load failed"), "{err}");
    }

    #[test]
    fn signer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Pkcs11Signer>();
    }
}

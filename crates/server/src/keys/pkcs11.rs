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
//! A key is named by a [`Pkcs11Config`], which config files write in a compact form:
//!
//! ```text
//! pkcs11:module=/usr/lib/softhsm/libsofthsm2.so;token=rampart;key=timestamp;pin-env=RAMPART_HSM_PIN
//! ```
//!
//! `module` is the PKCS#11 library, `token` the token label (which selects the slot), `key`
//! the `CKA_LABEL` of the private key (and of its public key), and the user PIN comes from the
//! environment variable named by `pin-env`, or literally from `pin=` (tests only).
//!
//! PKCS#11 modules may be initialised once per process, and login state is shared by every
//! session an application has on a token. This module therefore keeps one context per module
//! path for the life of the process, and remembers (as a SHA-256 digest) the PIN that last
//! logged in to each token, so that a second signer presenting a *different* PIN while the
//! token is still logged in is refused instead of riding on the earlier login.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use aws_lc_rs::digest;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use rampart_core::key::{pem_encode, Key, KeyId, KeyScheme};
use rampart_core::signer::Signer;
use subtle::ConstantTimeEq;

/// DER of the OID id-Ed25519 (1.3.101.112, RFC 8410): `CKA_EC_PARAMS` of Ed25519 keys.
const ED25519_PARAMS_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER PrintableString "edwards25519": the alternative `CKA_EC_PARAMS` PKCS#11 3.0 allows.
const ED25519_PARAMS_NAME: &[u8] = b"\x13\x0cedwards25519";
/// DER of the OID prime256v1 / secp256r1 (1.2.840.10045.3.1.7): `CKA_EC_PARAMS` of P-256.
const P256_PARAMS_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// SubjectPublicKeyInfo DER up to the point: SEQUENCE { SEQUENCE { id-ecPublicKey,
/// prime256v1 }, BIT STRING (66 bytes, 0 unused bits) ... }. The 65-byte point follows.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// Length of an uncompressed P-256 point (`04 || X || Y`).
const P256_POINT_LEN: usize = 65;
/// Length of an Ed25519 public key.
const ED25519_KEY_LEN: usize = 32;
/// Maximum length of a PKCS#11 token label (`CK_TOKEN_INFO.label`).
const MAX_TOKEN_LABEL: usize = 32;
/// Message signed (and verified) when a signer is opened, to prove that the public key read
/// from the token belongs to the private key found there.
const SELF_TEST_MESSAGE: &[u8] = b"rampart pkcs11 signer self-test";

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

/// Where a PKCS#11 key lives and how to log in to its token.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// Label of the token; selects the slot.
    pub token_label: String,
    /// User PIN of the token. Never printed by `Debug`.
    pub pin: String,
    /// `CKA_LABEL` of the key pair.
    pub key_label: String,
}

impl fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pin", &"<redacted>")
            .field("key_label", &self.key_label)
            .finish()
    }
}

impl Pkcs11Config {
    /// Parses the compact config form
    /// `pkcs11:module=PATH;token=LABEL;key=LABEL;pin-env=VAR` (or `pin=PIN` instead of
    /// `pin-env`), reading the PIN from the process environment.
    pub fn parse(s: &str) -> Result<Self, Pkcs11Error> {
        Self::parse_with_env(s, |name| std::env::var(name).ok())
    }

    /// Like [`Pkcs11Config::parse`], with `env` looking up environment variables (for tests
    /// and for callers with their own environment).
    pub fn parse_with_env(
        s: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Pkcs11Error> {
        let bad = |m: String| Pkcs11Error::Config(m);
        let body = s.trim().strip_prefix("pkcs11:").ok_or_else(|| {
            bad("a PKCS#11 key must start with \"pkcs11:\" (pkcs11:module=PATH;token=LABEL;key=LABEL;pin-env=VAR)".into())
        })?;
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for part in body.split(';') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let Some((name, value)) = part.split_once('=') else {
                // Do not echo the segment: it might be a PIN typed without "pin=".
                return Err(bad(format!(
                    "segment {} is not NAME=VALUE",
                    fields.len() + 1
                )));
            };
            let (name, value) = (name.trim(), value.trim());
            if !matches!(name, "module" | "token" | "key" | "pin" | "pin-env") {
                return Err(bad(format!(
                    "unknown attribute {name:?} (known: module, token, key, pin, pin-env)"
                )));
            }
            if value.is_empty() {
                return Err(bad(format!("attribute {name:?} is empty")));
            }
            if fields.insert(name, value).is_some() {
                return Err(bad(format!("attribute {name:?} given twice")));
            }
        }
        let required = |name: &str| {
            fields
                .get(name)
                .map(|v| (*v).to_owned())
                .ok_or_else(|| bad(format!("missing attribute {name:?}")))
        };
        let module = PathBuf::from(required("module")?);
        let token_label = required("token")?;
        let key_label = required("key")?;
        if token_label.len() > MAX_TOKEN_LABEL {
            return Err(bad(format!(
                "token label {token_label:?} is longer than {MAX_TOKEN_LABEL} bytes"
            )));
        }
        let pin = match (fields.get("pin"), fields.get("pin-env")) {
            (Some(_), Some(_)) => {
                return Err(bad("give either \"pin\" or \"pin-env\", not both".into()))
            }
            (None, None) => {
                return Err(bad(
                    "missing PIN: add pin-env=VAR (environment variable holding the PIN)".into(),
                ))
            }
            (Some(pin), None) => (*pin).to_owned(),
            (None, Some(var)) => env(var).ok_or_else(|| {
                bad(format!(
                    "environment variable {var} (pin-env) is not set or not UTF-8"
                ))
            })?,
        };
        Ok(Pkcs11Config {
            module,
            token_label,
            pin,
            key_label,
        })
    }
}

impl FromStr for Pkcs11Config {
    type Err = Pkcs11Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// One initialised PKCS#11 module, shared by every signer of the process that uses it.
struct Module {
    ctx: Pkcs11,
    /// Token label → SHA-256 of the PIN that last logged in successfully.
    logins: Mutex<BTreeMap<String, [u8; 32]>>,
    /// Key generation holds this exclusively, from the login through "is the label free?" to
    /// `C_GenerateKeyPair`, so that two generations of one label in this process cannot both
    /// pass the check; opening and signing hold it shared. SoftHSM 2.6's file store does not
    /// survive creating objects while other sessions read the token (`C_GenerateKeyPair`
    /// fails with `CKR_GENERAL_ERROR`, softhsm/SoftHSMv2#573); for other modules the shared
    /// side costs an uncontended read lock.
    token_ops: RwLock<()>,
}

/// Module path → module. Entries are never removed: finalising a module would break every
/// other session of the process on it.
static MODULES: Mutex<BTreeMap<PathBuf, Arc<Module>>> = Mutex::new(BTreeMap::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves nothing half-updated that matters.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn load_module(path: &Path) -> Result<Arc<Module>, Pkcs11Error> {
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut modules = lock(&MODULES);
    if let Some(module) = modules.get(&key) {
        return Ok(Arc::clone(module));
    }
    let fail = |reason: String| Pkcs11Error::ModuleLoad {
        module: path.display().to_string(),
        reason,
    };
    if !path.exists() {
        return Err(fail("no such file".into()));
    }
    let ctx = Pkcs11::new(&key).map_err(|e| fail(describe(&e)))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        // Someone else in this process initialised it already: usable as is.
        Err(e) if rv_of(&e) == Some(RvError::CryptokiAlreadyInitialized) => {}
        Err(e) => return Err(fail(describe(&e))),
    }
    let module = Arc::new(Module {
        ctx,
        logins: Mutex::new(BTreeMap::new()),
        token_ops: RwLock::new(()),
    });
    modules.insert(key, Arc::clone(&module));
    Ok(module)
}

fn find_slot(module: &Module, config: &Pkcs11Config) -> Result<Slot, Pkcs11Error> {
    let not_found = |reason: String| Pkcs11Error::TokenNotFound {
        token: config.token_label.clone(),
        module: config.module.display().to_string(),
        reason,
    };
    let slots = module
        .ctx
        .get_slots_with_token()
        .map_err(|e| not_found(format!("cannot list slots: {}", describe(&e))))?;
    let mut labels = Vec::new();
    let mut matching = Vec::new();
    for slot in slots {
        let Ok(info) = module.ctx.get_token_info(slot) else {
            continue;
        };
        if !info.token_initialized() {
            continue;
        }
        if info.label() == config.token_label {
            matching.push(slot);
        }
        labels.push(format!("{:?}", info.label()));
    }
    match matching.as_slice() {
        [slot] => Ok(*slot),
        [] if labels.is_empty() => Err(not_found("the module has no initialised token".into())),
        [] => Err(not_found(format!("tokens present: {}", labels.join(", ")))),
        more => Err(not_found(format!(
            "{} tokens carry this label; labels must be unique",
            more.len()
        ))),
    }
}

fn open_session(
    module: &Arc<Module>,
    config: &Pkcs11Config,
    read_write: bool,
) -> Result<Session, Pkcs11Error> {
    let slot = find_slot(module, config)?;
    let session = if read_write {
        module.ctx.open_rw_session(slot)
    } else {
        module.ctx.open_ro_session(slot)
    }
    .map_err(|e| Pkcs11Error::Token {
        token: config.token_label.clone(),
        operation: "opening a session".into(),
        reason: describe(&e),
    })?;
    login(module, &session, config)?;
    Ok(session)
}

fn login(module: &Module, session: &Session, config: &Pkcs11Config) -> Result<(), Pkcs11Error> {
    let failed = |reason: String| Pkcs11Error::LoginFailed {
        token: config.token_label.clone(),
        reason,
    };
    let pin_digest: [u8; 32] = {
        let d = digest::digest(&digest::SHA256, config.pin.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    };
    // Held across C_Login so that two signers logging in at once cannot both see
    // CKR_USER_ALREADY_LOGGED_IN before either has recorded its PIN.
    let mut logins = lock(&module.logins);
    let pin = AuthPin::from(config.pin.as_str());
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) => {
            logins.insert(config.token_label.clone(), pin_digest);
            Ok(())
        }
        Err(e) => match rv_of(&e) {
            Some(RvError::UserAlreadyLoggedIn) => match logins.get(&config.token_label) {
                Some(known) if !bool::from(known.ct_eq(&pin_digest)) => Err(failed(
                    "PIN incorrect: it differs from the PIN this process is logged in with".into(),
                )),
                // Same PIN, or logged in by other code of this process that we cannot check.
                _ => Ok(()),
            },
            Some(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange) => {
                Err(failed(format!("PIN incorrect ({})", describe(&e))))
            }
            Some(RvError::PinLocked) => Err(failed(format!("PIN locked ({})", describe(&e)))),
            Some(RvError::PinExpired) => Err(failed(format!("PIN expired ({})", describe(&e)))),
            _ => Err(failed(describe(&e))),
        },
    }
}

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

/// Builds the TUF key object from a token's `CKA_EC_POINT`.
fn tuf_public_key(scheme: KeyScheme, ec_point: &[u8]) -> Result<Key, String> {
    match scheme {
        KeyScheme::Ed25519 => {
            let raw = unwrap_ec_point(ec_point, ED25519_KEY_LEN).ok_or_else(|| {
                format!(
                    "CKA_EC_POINT is not an Ed25519 public key ({} bytes)",
                    ec_point.len()
                )
            })?;
            Ok(Key::new(scheme, hex::encode(raw)))
        }
        KeyScheme::EcdsaP256Sha256 => {
            let point = unwrap_ec_point(ec_point, P256_POINT_LEN)
                .filter(|p| p.first() == Some(&0x04))
                .ok_or_else(|| {
                    format!(
                        "CKA_EC_POINT is not an uncompressed P-256 point ({} bytes)",
                        ec_point.len()
                    )
                })?;
            let mut spki = P256_SPKI_PREFIX.to_vec();
            spki.extend_from_slice(point);
            Ok(Key::new(scheme, pem_encode(&spki, "PUBLIC KEY")))
        }
        other => Err(format!("scheme {} is not supported", other.scheme())),
    }
}

/// The key bytes of a `CKA_EC_POINT`: the content of a DER OCTET STRING (what the standard
/// asks for), or the bytes as they are when a token returns them raw.
fn unwrap_ec_point(value: &[u8], expected_len: usize) -> Option<&[u8]> {
    if let Some(inner) = der_octet_string(value) {
        if inner.len() == expected_len {
            return Some(inner);
        }
    }
    (value.len() == expected_len).then_some(value)
}

/// The content of `value` if it is exactly one DER OCTET STRING.
fn der_octet_string(value: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = value.split_first()?;
    if tag != 0x04 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 2 {
            return None;
        }
        let (len_bytes, rest) = rest.split_at_checked(n)?;
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    (rest.len() == len).then_some(rest)
}

/// Converts a PKCS#11 ECDSA signature (`r || s`, each half the length) into the DER
/// `SEQUENCE { INTEGER r, INTEGER s }` TUF verifies.
fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, String> {
    if raw.is_empty() || raw.len() % 2 != 0 {
        return Err(format!(
            "token returned a {}-byte ECDSA signature, expected r || s of equal halves",
            raw.len()
        ));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut body = der_integer(r);
    body.extend_from_slice(&der_integer(s));
    let mut out = vec![0x30];
    push_der_len(&mut out, body.len());
    out.extend_from_slice(&body);
    Ok(out)
}

/// DER INTEGER of an unsigned big-endian number: no superfluous leading zeros, and one zero
/// byte in front when the top bit is set (so the value stays positive).
fn der_integer(unsigned: &[u8]) -> Vec<u8> {
    let start = unsigned
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(unsigned.len());
    let digits = unsigned.get(start..).unwrap_or(&[]);
    let mut content = Vec::with_capacity(digits.len() + 1);
    match digits.first() {
        None => content.push(0),
        Some(b) if b & 0x80 != 0 => {
            content.push(0);
            content.extend_from_slice(digits);
        }
        Some(_) => content.extend_from_slice(digits),
    }
    let mut out = vec![0x02];
    push_der_len(&mut out, content.len());
    out.extend_from_slice(&content);
    out
}

fn push_der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        let significant = bytes.get(skip..).unwrap_or(&[]);
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};

    #[test]
    fn der_integers_follow_the_leading_zero_rules() {
        assert_eq!(der_integer(&[0x00, 0x00]), vec![0x02, 0x01, 0x00]);
        assert_eq!(der_integer(&[]), vec![0x02, 0x01, 0x00]);
        assert_eq!(der_integer(&[0x00, 0x7f]), vec![0x02, 0x01, 0x7f]);
        assert_eq!(der_integer(&[0x00, 0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(
            der_integer(&[0xff, 0x01]),
            vec![0x02, 0x03, 0x00, 0xff, 0x01]
        );
        assert_eq!(
            der_integer(&[0x00, 0x00, 0x01, 0x02]),
            vec![0x02, 0x02, 0x01, 0x02]
        );
    }

    #[test]
    fn der_lengths_use_long_form_from_128() {
        let mut v = Vec::new();
        push_der_len(&mut v, 127);
        assert_eq!(v, [0x7f]);
        v.clear();
        push_der_len(&mut v, 128);
        assert_eq!(v, [0x81, 0x80]);
        v.clear();
        push_der_len(&mut v, 300);
        assert_eq!(v, [0x82, 0x01, 0x2c]);
    }

    #[test]
    fn raw_ecdsa_signatures_become_der_that_aws_lc_verifies() {
        // Fixed-length signatures from aws-lc-rs play the token's part; 2000 of them cover
        // r/s with the top bit set and with leading zero bytes.
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                .unwrap();
        let verifier = UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_ASN1,
            pair.public_key().as_ref(),
        );
        let mut short_r_or_s = 0;
        for i in 0u32..2000 {
            let msg = i.to_be_bytes();
            let raw = pair.sign(&rng, &msg).unwrap();
            let raw = raw.as_ref();
            if raw[0] == 0 || raw[32] == 0 {
                short_r_or_s += 1;
            }
            let der = ecdsa_raw_to_der(raw).unwrap();
            verifier.verify(&msg, &der).unwrap();
        }
        assert!(
            short_r_or_s > 0,
            "no signature exercised the leading-zero rule"
        );
    }

    #[test]
    fn odd_length_raw_signatures_are_refused() {
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_err());
        assert!(ecdsa_raw_to_der(&[]).is_err());
    }

    #[test]
    fn ec_points_are_unwrapped_from_octet_strings_or_taken_raw() {
        let raw = [7u8; 32];
        let mut wrapped = vec![0x04, 0x20];
        wrapped.extend_from_slice(&raw);
        assert_eq!(unwrap_ec_point(&wrapped, 32), Some(&raw[..]));
        assert_eq!(unwrap_ec_point(&raw, 32), Some(&raw[..]));
        assert_eq!(unwrap_ec_point(&raw[..31], 32), None);

        let mut point = vec![0x04];
        point.extend_from_slice(&[9u8; 64]);
        let mut wrapped = vec![0x04, 0x41];
        wrapped.extend_from_slice(&point);
        assert_eq!(unwrap_ec_point(&wrapped, 65), Some(&point[..]));
        assert_eq!(unwrap_ec_point(&point, 65), Some(&point[..]));
        let mut long_form = vec![0x04, 0x81, 0x41];
        long_form.extend_from_slice(&point);
        assert_eq!(unwrap_ec_point(&long_form, 65), Some(&point[..]));
    }

    #[test]
    fn p256_spki_matches_what_aws_lc_writes() {
        use aws_lc_rs::encoding::AsDer;
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
                .unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let mut ec_point = vec![0x04, 0x41];
        ec_point.extend_from_slice(&point);
        let key = tuf_public_key(KeyScheme::EcdsaP256Sha256, &ec_point).unwrap();
        let der: aws_lc_rs::encoding::PublicKeyX509Der<'static> =
            pair.public_key().as_der().unwrap();
        assert_eq!(key.keyval.public, pem_encode(der.as_ref(), "PUBLIC KEY"));
        assert!(key.parse(&key.key_id().unwrap()).is_ok());
    }

    #[test]
    fn parses_the_compact_config_form() {
        let env = |name: &str| (name == "RAMPART_HSM_PIN").then(|| "4321".to_owned());
        let c = Pkcs11Config::parse_with_env(
            "pkcs11:module=/usr/lib/softhsm/libsofthsm2.so;token=rampart;key=timestamp;pin-env=RAMPART_HSM_PIN",
            env,
        )
        .unwrap();
        assert_eq!(c.module, PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
        assert_eq!(c.token_label, "rampart");
        assert_eq!(c.key_label, "timestamp");
        assert_eq!(c.pin, "4321");

        let c: Pkcs11Config = "pkcs11:module=/m.so; token=t; key=k; pin=1234;"
            .parse()
            .unwrap();
        assert_eq!(c.pin, "1234");
        assert_eq!(c.token_label, "t");
    }

    #[test]
    fn rejects_bad_config_strings_without_leaking_the_pin() {
        let none = |_: &str| None;
        for (input, expect) in [
            ("module=/m.so;token=t;key=k;pin=1", "must start with"),
            ("pkcs11:token=t;key=k;pin=1", "missing attribute \"module\""),
            (
                "pkcs11:module=/m.so;key=k;pin=1",
                "missing attribute \"token\"",
            ),
            (
                "pkcs11:module=/m.so;token=t;pin=1",
                "missing attribute \"key\"",
            ),
            ("pkcs11:module=/m.so;token=t;key=k", "missing PIN"),
            (
                "pkcs11:module=/m.so;token=t;key=k;pin=1;pin-env=X",
                "not both",
            ),
            (
                "pkcs11:module=/m.so;token=t;key=k;pin-env=UNSET",
                "UNSET (pin-env) is not set",
            ),
            (
                "pkcs11:module=/m.so;token=t;key=k;key=j;pin=1",
                "given twice",
            ),
            (
                "pkcs11:module=/m.so;token=t;key=k;slot=3;pin=1",
                "unknown attribute \"slot\"",
            ),
            ("pkcs11:module=/m.so;token=t;key=;pin=1", "\"key\" is empty"),
            (
                "pkcs11:module=/m.so;token=t;key=k;s3cret",
                "is not NAME=VALUE",
            ),
        ] {
            let err = Pkcs11Config::parse_with_env(input, none).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(expect), "{input}: {msg}");
            assert!(!msg.contains("s3cret"), "{input}: {msg}");
        }
        let long = format!("pkcs11:module=/m.so;token={};key=k;pin=1", "x".repeat(33));
        assert!(Pkcs11Config::parse_with_env(&long, none).is_err());
    }

    #[test]
    fn debug_does_not_print_the_pin() {
        let c = Pkcs11Config {
            module: "/m.so".into(),
            token_label: "t".into(),
            pin: "s3cret-pin".into(),
            key_label: "k".into(),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret-pin"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

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

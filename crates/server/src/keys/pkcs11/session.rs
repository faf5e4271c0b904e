//! Modules, slots, sessions and logins: one context per module for the process, and the PIN
//! that last logged in to each token (as a digest), so a second signer with another PIN is
//! refused instead of riding on the first login.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use super::*;

/// One initialised PKCS#11 module, shared by every signer of the process that uses it.
pub(super) struct Module {
    pub(super) ctx: Pkcs11,
    /// Token label → SHA-256 of the PIN that last logged in successfully.
    pub(super) logins: Mutex<BTreeMap<String, [u8; 32]>>,
    /// Key generation holds this exclusively, from the login through "is the label free?" to
    /// `C_GenerateKeyPair`, so that two generations of one label in this process cannot both
    /// pass the check; opening and signing hold it shared. SoftHSM 2.6's file store does not
    /// survive creating objects while other sessions read the token (`C_GenerateKeyPair`
    /// fails with `CKR_GENERAL_ERROR`, softhsm/SoftHSMv2#573); for other modules the shared
    /// side costs an uncontended read lock.
    pub(super) token_ops: RwLock<()>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves nothing half-updated that matters.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn load_module(path: &Path) -> Result<Arc<Module>, Pkcs11Error> {
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

pub(super) fn find_slot(module: &Module, config: &Pkcs11Config) -> Result<Slot, Pkcs11Error> {
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

pub(super) fn open_session(
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

pub(super) fn login(
    module: &Module,
    session: &Session,
    config: &Pkcs11Config,
) -> Result<(), Pkcs11Error> {
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

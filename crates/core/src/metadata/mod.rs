//! TUF 1.0.x metadata: the signed envelope, the four top-level roles and delegated targets.
//!
//! Parsing works in two layers so that signatures never depend on our re-serialisation:
//!
//! 1. [`Envelope::parse`] reads the bytes strictly (no duplicate keys, no floats), keeps the
//!    `signed` object as a JSON value and computes its canonical bytes once;
//! 2. [`Envelope::verify`] counts valid signatures from distinct authorised keys over those
//!    canonical bytes, and only then is the value turned into a typed role ([`Root`],
//!    [`Timestamp`], [`Snapshot`], [`Targets`]).
//!
//! Every typed struct keeps fields it does not know in `unrecognized` (and `custom` verbatim),
//! so serialising a parsed document yields the same canonical bytes and its signatures still
//! verify (TUF 4.2 asks implementations to ignore, not drop, unknown attributes).

mod delegation;
mod expiry;
mod root;
mod snapshot;
mod target_map;
mod targets;
mod timestamp;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use delegation::{is_delegated_path, succinct_role_for};
pub use expiry::Expiry;
pub use root::{RoleKeys, Root};
pub use snapshot::Snapshot;
pub use target_map::TargetMap;
pub use targets::{
    Delegate, DelegatedRole, Delegations, SuccinctRoles, TargetFile, Targets, HARDWARE_IDS_FIELD,
};
pub use timestamp::Timestamp;

use crate::canonical;
use crate::error::{Error, Result};
use crate::key::{Key, KeyId, Signature};
use crate::signer::Signer;

/// The TUF specification version Rampart writes.
pub const SPEC_VERSION: &str = "1.0.31";

/// Top-level role names.
pub const TOP_LEVEL_ROLES: [&str; 4] = ["root", "timestamp", "snapshot", "targets"];

/// A `METAFILES` entry: the version (and optionally length and hashes) of a metadata file, as
/// listed by timestamp (for snapshot) and snapshot (for targets roles).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaFile {
    /// Version of the listed file.
    pub version: u64,
    /// Its length in bytes, if the repository lists it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Its hashes, if the repository lists them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<crate::hash::Hashes>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl MetaFile {
    /// A `METAFILES` entry with only a version.
    pub fn version_only(version: u64) -> Self {
        MetaFile {
            version,
            length: None,
            hashes: None,
            unrecognized: BTreeMap::new(),
        }
    }

    /// A `METAFILES` entry pinning a document: its version, exact length and hashes (sha256,
    /// sha512), so a client bounds the download and refuses any other bytes.
    pub fn pinning(version: u64, document: &[u8]) -> Self {
        MetaFile {
            version,
            length: Some(document.len() as u64),
            hashes: Some(crate::hash::compute_hashes(document)),
            unrecognized: BTreeMap::new(),
        }
    }

    fn validate(&self, what: &str) -> Result<()> {
        if self.version == 0 {
            return Err(Error::malformed(what, "meta version must be at least 1"));
        }
        if let Some(hashes) = &self.hashes {
            if hashes.is_empty() {
                return Err(Error::malformed(what, "hashes must not be empty"));
            }
        }
        Ok(())
    }
}

/// What every role's `signed` part has; implemented by the four role types.
pub trait RoleMetadata: Serialize + DeserializeOwned + Clone {
    /// The `_type` value (`root`, `timestamp`, `snapshot`, `targets`).
    const TYPE: &'static str;

    /// `_type` as found in the document.
    fn type_field(&self) -> &str;
    /// `spec_version`.
    fn spec_version(&self) -> &str;
    /// `version`.
    fn version(&self) -> u64;
    /// `expires`.
    fn expires(&self) -> &Expiry;
    /// Rules of this role type beyond what serde checks (called after parsing).
    fn validate(&self, role: &str) -> Result<()>;
}

/// The accessors of [`RoleMetadata`] every role type implements the same way, from its
/// `type_`, `spec_version`, `version` and `expires` fields.
macro_rules! common_role_fields {
    () => {
        fn type_field(&self) -> &str {
            &self.type_
        }
        fn spec_version(&self) -> &str {
            &self.spec_version
        }
        fn version(&self) -> u64 {
            self.version
        }
        fn expires(&self) -> &Expiry {
            &self.expires
        }
    };
}
pub(crate) use common_role_fields;

/// Checks the fields common to all roles: `_type`, `spec_version` major, version ≥ 1.
fn validate_common<T: RoleMetadata>(signed: &T, role: &str) -> Result<()> {
    if signed.type_field() != T::TYPE {
        return Err(Error::WrongType {
            expected: T::TYPE.to_owned(),
            found: signed.type_field().to_owned(),
        });
    }
    let spec = signed.spec_version();
    let parts: Vec<&str> = spec.split('.').collect();
    let numeric = parts
        .iter()
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !(numeric && (parts.len() == 2 || parts.len() == 3) && parts.first() == Some(&"1")) {
        return Err(Error::UnsupportedSpecVersion {
            role: role.to_owned(),
            found: spec.to_owned(),
            supported: "1.x".to_owned(),
        });
    }
    if signed.version() == 0 {
        return Err(Error::malformed(role, "version must be at least 1"));
    }
    signed.validate(role)
}

/// A parsed but not yet verified metadata document.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The `signed` object as a tree, when the document needed the tree path (keys not in
    /// canonical order); `None` when it was canonicalised while parsing.
    signed: Option<Value>,
    /// `signed._type`, if a string.
    type_field: Option<String>,
    /// The `signatures` list.
    pub signatures: Vec<Signature>,
    /// Canonical JSON bytes of `signed`: what the signatures cover.
    pub canonical_signed: Vec<u8>,
}

impl Envelope {
    /// Parses metadata bytes (strictly: no duplicate keys, no floats, nothing trailing).
    ///
    /// Two paths, same verdicts, same bytes: documents whose keys are already sorted at
    /// every level (what python-tuf and Rampart write) are canonicalised while they are
    /// parsed, with no intermediate tree (`canonical::canonicalize_sorted_envelope`); the
    /// typed role is later read from those canonical bytes. Anything else — or anything that
    /// path refuses — goes through the strict tree ([`canonical::parse_strict`]), which sorts
    /// and names the error. For a 10,000-target role this halves the parse
    /// (BENCHMARKS.md, refresh).
    pub fn parse(bytes: &[u8], role: &str) -> Result<Self> {
        if let Some(fast) = canonical::canonicalize_sorted_envelope(bytes) {
            if let Some(env) = Self::from_sorted(fast, role)? {
                return Ok(env);
            }
        }
        Self::parse_tree(bytes, role)
    }

    /// The envelope of a document canonicalised while parsing; `None` sends the caller to
    /// the tree path (e.g. a `signatures` field of the wrong shape, so that the error reads
    /// the same whichever path found it).
    fn from_sorted(fast: canonical::SortedEnvelope, role: &str) -> Result<Option<Self>> {
        // Canonical JSON writes control characters raw (JSON text must escape them): such a
        // document is left to the tree path, so that the typed role can always be read back
        // from the canonical bytes. Canonical output has no whitespace, so any byte below
        // 0x20 is inside a string.
        if holds_raw_control(&fast.document) {
            return Ok(None);
        }
        // The canonical document is plain JSON; only `signatures` is read from it here.
        let sigs = fast
            .document
            .get(fast.signatures)
            .and_then(|s| serde_json::from_slice::<Vec<Signature>>(s).ok());
        let Some(signatures) = sigs else {
            return Ok(None);
        };
        // The document's buffer becomes the signed part's (no second copy of a large role).
        let mut canonical_signed = fast.document;
        if fast.signed.start <= fast.signed.end && fast.signed.end <= canonical_signed.len() {
            canonical_signed.truncate(fast.signed.end);
            canonical_signed.drain(..fast.signed.start);
        } else {
            canonical_signed.clear();
        }
        Self::checked(None, fast.type_field, signatures, canonical_signed, role).map(Some)
    }

    fn parse_tree(bytes: &[u8], role: &str) -> Result<Self> {
        let what = || format!("{role} metadata");
        let value = canonical::parse_strict(bytes, &what())?;
        // Take `signed` out of the parsed tree as it is (other top-level fields are ignored);
        // rebuilding the tree through serde would cost as much as parsing it again.
        let Value::Object(mut top) = value else {
            return Err(Self::not_an_envelope(role));
        };
        let signed = top
            .remove("signed")
            .ok_or_else(|| Error::malformed(what(), "missing field `signed`"))?;
        Self::of_tree(Cow::Owned(signed), top.get("signatures"), role)
    }

    /// The envelope of a document that is already a strictly parsed tree, such as an ECU
    /// version report inside a vehicle manifest: the same verdict, canonical bytes and
    /// signatures as [`Envelope::parse`] of its serialisation, without serialising the tree
    /// and parsing it again (the director did that for every report of every manifest).
    ///
    /// The tree must come from a strict parse (no duplicate keys, no floats), as every tree
    /// inside a parsed envelope does.
    ///
    /// The tree is borrowed, not copied: the envelope keeps only the canonical bytes, from
    /// which the typed document is read as on the fast path of [`Envelope::parse`] (a copy of
    /// each report's tree was a sixth of the allocations of a director's check-in). Canonical
    /// bytes holding a control character are not JSON text; that rare document keeps a copy
    /// of its tree instead.
    pub fn from_tree(document: &Value, role: &str) -> Result<Self> {
        let Value::Object(top) = document else {
            return Err(Self::not_an_envelope(role));
        };
        let signed = top.get("signed").ok_or_else(|| {
            Error::malformed(format!("{role} metadata"), "missing field `signed`")
        })?;
        Self::of_tree(Cow::Borrowed(signed), top.get("signatures"), role)
    }

    fn not_an_envelope(role: &str) -> Error {
        Error::malformed(
            format!("{role} metadata"),
            "expected an object with `signed` and `signatures`",
        )
    }

    /// The envelope of a `signed` tree and its `signatures` field. A tree given by value is
    /// kept (the typed role is read from it by reference); one only lent is not copied unless
    /// its canonical bytes are not JSON text.
    fn of_tree(signed: Cow<'_, Value>, signatures: Option<&Value>, role: &str) -> Result<Self> {
        let what = || format!("{role} metadata");
        let signatures = Vec::<Signature>::deserialize(
            signatures.ok_or_else(|| Error::malformed(what(), "missing field `signatures`"))?,
        )
        .map_err(|e| Error::malformed(what(), e))?;
        let canonical_signed = canonical::to_canonical(&signed)?;
        let type_field = signed
            .get("_type")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let tree = match signed {
            Cow::Owned(tree) => Some(tree),
            Cow::Borrowed(tree) => holds_raw_control(&canonical_signed).then(|| tree.clone()),
        };
        Self::checked(tree, type_field, signatures, canonical_signed, role)
    }

    fn checked(
        signed: Option<Value>,
        type_field: Option<String>,
        signatures: Vec<Signature>,
        canonical_signed: Vec<u8>,
        role: &str,
    ) -> Result<Self> {
        let mut seen = BTreeSet::new();
        for sig in &signatures {
            if !seen.insert(&sig.keyid) {
                return Err(Error::malformed(
                    format!("{role} metadata"),
                    format!("two signatures by key {}", sig.keyid),
                ));
            }
        }
        Ok(Envelope {
            signed,
            type_field,
            signatures,
            canonical_signed,
        })
    }

    /// The `_type` of the signed object, if it has one.
    pub fn type_field(&self) -> Option<&str> {
        self.type_field.as_deref()
    }

    /// The `signed` object as a JSON value (built on demand on the fast path).
    pub fn signed_value(&self) -> Result<Value> {
        match &self.signed {
            Some(v) => Ok(v.clone()),
            None => serde_json::from_slice(&self.canonical_signed)
                .map_err(|e| Error::malformed("metadata", e)),
        }
    }

    /// Deserialises the signed object into any type *without* checking signatures (callers
    /// verify first), from the tree or straight from the canonical bytes.
    pub fn signed_as<T: DeserializeOwned>(&self, what: &str) -> Result<T> {
        match &self.signed {
            Some(tree) => T::deserialize(tree),
            None => serde_json::from_slice(&self.canonical_signed),
        }
        .map_err(|e| Error::malformed(what, e))
    }

    /// Turns the signed object into a typed role *without* checking signatures; callers must
    /// have verified them (see [`Envelope::verify`]).
    pub fn typed<T: RoleMetadata>(&self, role: &str) -> Result<T> {
        // Check `_type` first so a wrong role reads as such, not as a missing field.
        if let Some(found) = self.type_field() {
            if found != T::TYPE {
                return Err(Error::WrongType {
                    expected: T::TYPE.to_owned(),
                    found: found.to_owned(),
                });
            }
        }
        // From the tree by reference (a clone of a large targets role would cost more than
        // the rest of the parse), or straight from the canonical bytes.
        let typed: T = self.signed_as(&format!("{role} metadata"))?;
        validate_common(&typed, role)?;
        Ok(typed)
    }

    /// Checks that at least `threshold` distinct keys among `keyids` (looked up in `keys`)
    /// signed the canonical bytes.
    ///
    /// Keys that are unknown, of an unsupported type or malformed simply do not count; two key
    /// IDs naming the same key material count once.
    pub fn verify(
        &self,
        role: &str,
        keys: &BTreeMap<KeyId, Key>,
        keyids: &[KeyId],
        threshold: u32,
    ) -> Result<()> {
        let valid = count_valid_signatures(&self.canonical_signed, &self.signatures, keys, keyids);
        if threshold == 0 || valid < threshold {
            return Err(Error::ThresholdNotMet {
                role: role.to_owned(),
                valid,
                threshold,
            });
        }
        Ok(())
    }
}

/// Counts signatures over `message` that verify with distinct authorised keys.
pub fn count_valid_signatures(
    message: &[u8],
    signatures: &[Signature],
    keys: &BTreeMap<KeyId, Key>,
    keyids: &[KeyId],
) -> u32 {
    let authorised: BTreeSet<&KeyId> = keyids.iter().collect();
    let mut counted: BTreeSet<Vec<u8>> = BTreeSet::new();
    for sig in signatures {
        if !authorised.contains(&sig.keyid) {
            continue;
        }
        let Some(key) = keys.get(&sig.keyid) else {
            continue;
        };
        let Ok(public) = key.parse(&sig.keyid) else {
            continue;
        };
        if counted.contains(public.material()) {
            continue;
        }
        let Some(sig_bytes) = sig.bytes() else {
            continue;
        };
        if public.verify(message, &sig_bytes) {
            counted.insert(public.material().to_vec());
        }
    }
    u32::try_from(counted.len()).unwrap_or(u32::MAX)
}

/// Whether canonical JSON bytes hold a control character, which canonical JSON writes raw:
/// such bytes are not JSON text, so the typed role cannot be read back from them. Canonical
/// output has no whitespace, so any byte below 0x20 is inside a string.
fn holds_raw_control(canonical: &[u8]) -> bool {
    canonical.iter().any(|&b| b < 0x20)
}

/// Serialises and signs a role: returns the document bytes (`{"signatures": […], "signed": …}`,
/// pretty-printed like python-tuf writes it).
pub fn sign_role<T: Serialize>(signed: &T, signers: &[&dyn Signer]) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(&signed_document(signed, signers)?)
        .map_err(|e| Error::malformed("metadata", e))
}

/// [`sign_role`] written compactly (no whitespace): for documents that travel inside other
/// messages many times over, such as the manifest receipt of every check-in.
pub fn sign_role_compact<T: Serialize>(signed: &T, signers: &[&dyn Signer]) -> Result<Vec<u8>> {
    serde_json::to_vec(&signed_document(signed, signers)?)
        .map_err(|e| Error::malformed("metadata", e))
}

/// `{"signed": …, "signatures": […]}`: `signed` signed over its canonical JSON by each signer.
fn signed_document<T: Serialize>(signed: &T, signers: &[&dyn Signer]) -> Result<Value> {
    let value = serde_json::to_value(signed).map_err(|e| Error::malformed("metadata", e))?;
    let message = canonical::to_canonical(&value)?;
    let mut signatures = Vec::with_capacity(signers.len());
    for signer in signers {
        signatures.push(Signature::new(signer.key_id(), &signer.sign(&message)?));
    }
    Ok(serde_json::json!({ "signed": value, "signatures": signatures }))
}

/// Adds signatures to an already signed document (threshold signing by several parties, or
/// the offline workflow: export, sign elsewhere, import). Existing signatures are kept.
pub fn add_signatures(document: &[u8], signers: &[&dyn Signer]) -> Result<Vec<u8>> {
    let env = Envelope::parse(document, "metadata")?;
    let mut signatures = env.signatures.clone();
    for signer in signers {
        let keyid = signer.key_id();
        signatures.retain(|s| s.keyid != keyid);
        signatures.push(Signature::new(keyid, &signer.sign(&env.canonical_signed)?));
    }
    let doc = serde_json::json!({ "signed": env.signed_value()?, "signatures": signatures });
    serde_json::to_vec_pretty(&doc).map_err(|e| Error::malformed("metadata", e))
}

#[cfg(test)]
pub(crate) mod tests;

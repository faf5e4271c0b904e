//! The one error type of the verification core.
//!
//! Every variant names the rule that failed, with the role, versions, ECU or target involved,
//! so that a rejection can be shown to a person, stored as a security event and matched by a
//! test without parsing prose. [`Error::rule`] gives a short stable identifier per variant for
//! event stores and attack indicators.

use std::fmt;

use crate::rule::Rule;

/// Result alias of the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the core refused something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bytes that are not the document they claim to be (bad JSON, missing or mistyped field,
    /// bad hex, bad PEM, duplicate keys, floats in signed data…).
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being parsed.
        what: String,
        /// What was wrong with it.
        reason: String,
    },

    /// The document's `_type` is not the role we asked for.
    #[error("wrong metadata type: expected {expected}, found {found}")]
    WrongType {
        /// Role type we expected.
        expected: String,
        /// `_type` in the document.
        found: String,
    },

    /// `spec_version` has a major version this implementation does not speak.
    #[error("{role}: unsupported spec_version {found} (supported: {supported})")]
    UnsupportedSpecVersion {
        /// Role name.
        role: String,
        /// Version string found.
        found: String,
        /// Versions supported.
        supported: String,
    },

    /// Metadata whose `expires` lies before the reference time (TUF 5.3.10, 5.4.4, 5.5.6, …).
    #[error("{role} metadata expired at {expires} (reference time {now})")]
    ExpiredMetadata {
        /// Role name.
        role: String,
        /// Its expiry.
        expires: String,
        /// The reference time it was checked against.
        now: String,
    },

    /// A new version is lower than the trusted one (rollback; TUF 5.4.3, 5.5.5).
    #[error("{role} version {new} is older than the trusted version {trusted} (rollback)")]
    OlderMetadata {
        /// Role name.
        role: String,
        /// Version already trusted.
        trusted: u64,
        /// Version offered.
        new: u64,
    },

    /// The same version as the trusted one: nothing to update. Not an attack by itself; the
    /// client keeps the trusted copy.
    #[error("{role} version {version} is already trusted")]
    EqualVersion {
        /// Role name.
        role: String,
        /// The version.
        version: u64,
    },

    /// A version other than the one the signing parent declared (TUF 5.3.5, 5.5.2, 5.6.4).
    #[error("{role} version {found} differs from version {expected} listed in {listed_by}")]
    VersionMismatch {
        /// Role name.
        role: String,
        /// Version expected.
        expected: u64,
        /// Version found.
        found: u64,
        /// The role whose metadata declared the expected version.
        listed_by: String,
    },

    /// Fewer valid signatures from distinct authorised keys than the role's threshold.
    #[error("{role}: {valid} valid signature(s) from distinct authorised keys, threshold is {threshold}")]
    ThresholdNotMet {
        /// Role name.
        role: String,
        /// Valid distinct signatures counted.
        valid: u32,
        /// Threshold required.
        threshold: u32,
    },

    /// A hash of the received bytes differs from the signed one.
    #[error("{what}: {algorithm} hash mismatch")]
    HashMismatch {
        /// File or target name.
        what: String,
        /// Hash algorithm that differed.
        algorithm: String,
    },

    /// The received length differs from the signed one.
    #[error("{what}: length {actual} differs from the signed length {expected}")]
    LengthMismatch {
        /// File or target name.
        what: String,
        /// Signed length.
        expected: u64,
        /// Received length.
        actual: u64,
    },

    /// More bytes than the signed length or the fixed maximum (endless data).
    #[error("{what}: more than the allowed {max} bytes (endless data)")]
    LengthExceeded {
        /// File or target name.
        what: String,
        /// Allowed maximum.
        max: u64,
    },

    /// A hash algorithm is listed that we cannot compute, and no supported one is present.
    #[error("{what}: no supported hash algorithm (have {algorithms})")]
    NoSupportedHash {
        /// File or target name.
        what: String,
        /// Algorithms offered.
        algorithms: String,
    },

    /// A key whose type or scheme is not supported, or whose material does not parse.
    #[error("key {keyid}: {reason}")]
    BadKey {
        /// Key ID.
        keyid: String,
        /// What is wrong.
        reason: String,
    },

    /// A signature that did not verify where one had to (single-signature documents).
    #[error("{what}: signature by key {keyid} does not verify")]
    BadSignature {
        /// What was signed.
        what: String,
        /// Key ID.
        keyid: String,
    },

    /// A role that metadata must describe is not there (TUF roles, snapshot entries).
    #[error("{role} is missing from {listed_in}")]
    MissingRole {
        /// Role that is missing.
        role: String,
        /// Where it should have been.
        listed_in: String,
    },

    /// A role's metadata was asked for in an order the workflow does not allow.
    #[error("workflow: {0}")]
    Workflow(String),

    /// A file the workflow needs is not on the repository.
    #[error("{path} not found on the {repository} repository")]
    NotFound {
        /// Path requested.
        path: String,
        /// Repository asked.
        repository: String,
    },

    /// The delegation walk hit its depth or visit cap (TUF 5.6.7).
    #[error("delegation walk for {target} exceeded {max} visited roles")]
    DelegationLimit {
        /// Target searched.
        target: String,
        /// The cap.
        max: u32,
    },

    /// No role that may sign for this target lists it.
    #[error("target {target} not found in the {repository} repository")]
    TargetNotFound {
        /// Target name.
        target: String,
        /// Repository searched.
        repository: String,
    },

    /// A role name or target path that cannot be safely turned into a file name or URL.
    #[error("unsafe name {name:?}: {reason}")]
    UnsafeName {
        /// The name.
        name: String,
        /// Why it is unsafe.
        reason: String,
    },

    /// Uptane: the director's targets delegate, which Uptane forbids.
    #[error("director targets metadata must not delegate")]
    DirectorDelegates,

    /// Uptane: the director lists one ECU twice.
    #[error("director targets list ECU {ecu} more than once")]
    DuplicateEcu {
        /// ECU identifier.
        ecu: String,
    },

    /// Uptane: the director addresses an ECU this vehicle does not have.
    #[error("director targets name ECU {ecu}, which is not in this vehicle")]
    EcuNotInVehicle {
        /// ECU identifier.
        ecu: String,
    },

    /// Uptane: a director target lacks required custom metadata.
    #[error("target {target}: missing or malformed Uptane custom field {field}")]
    MissingCustom {
        /// Target.
        target: String,
        /// Field.
        field: String,
    },

    /// Uptane: hardware identifiers disagree (director vs image repository, or vs the ECU).
    #[error("target {target}: hardware ID {found} does not match {expected}")]
    HardwareIdMismatch {
        /// Target.
        target: String,
        /// Expected hardware ID.
        expected: String,
        /// Hardware ID found.
        found: String,
    },

    /// Uptane: the director's target and the image repository's differ in length, a hash or a
    /// custom field that must match.
    #[error("target {target}: director and image repository disagree on {field}")]
    DirectorImageMismatch {
        /// Target.
        target: String,
        /// Field that differs.
        field: String,
    },

    /// An offline bundle holds an entry it may not (see [`crate::bundle`]).
    #[error("offline bundle: entry {name:?} refused: {reason}")]
    BundleEntry {
        /// The entry's name, as the bundle gives it.
        name: String,
        /// Why it is refused.
        reason: String,
    },

    /// An offline bundle that is not whole or readable.
    #[error("offline bundle: {0}")]
    BundleMalformed(String),

    /// Uptane: a release counter lower than the one trusted or installed (rollback).
    #[error("target {target}: release counter {new} is lower than {trusted} (rollback)")]
    ReleaseCounterDecreased {
        /// Target.
        target: String,
        /// Counter trusted/installed.
        trusted: u64,
        /// Counter offered.
        new: u64,
    },

    /// Uptane: the director has no instruction for this ECU.
    #[error("director targets have no image for ECU {ecu}")]
    NoTargetForEcu {
        /// ECU identifier.
        ecu: String,
    },

    /// Uptane: a director targets document that does not name this vehicle (replayed from
    /// another vehicle).
    #[error("director targets are for vehicle {found}, not {expected}")]
    WrongVehicle {
        /// Our VIN.
        expected: String,
        /// VIN in the metadata.
        found: String,
    },

    /// A version manifest or ECU report that fails a rule (wrong VIN, unknown ECU, stale nonce…).
    #[error("manifest rejected: {0}")]
    Manifest(String),

    /// A report counter that did not move forward (replayed manifest or report).
    #[error("{what}: counter {new} is not above the last accepted {last} (replay)")]
    Replay {
        /// What was replayed.
        what: String,
        /// Last accepted counter.
        last: u64,
        /// Counter offered.
        new: u64,
    },

    /// Encrypted image: authentication failed (tampering, reordering, wrong key).
    #[error(
        "encrypted image: chunk {chunk} failed authentication (tampered, reordered or wrong key)"
    )]
    DecryptionFailed {
        /// Chunk index.
        chunk: u64,
    },

    /// Encrypted image ended before its final chunk (truncation).
    #[error("encrypted image truncated after {chunks} chunk(s)")]
    Truncated {
        /// Chunks received.
        chunks: u64,
    },

    /// A cryptographic primitive failed where it should not (RNG, key generation).
    #[error("crypto failure: {0}")]
    Crypto(String),
}

impl Error {
    /// Builds [`Error::Malformed`].
    pub fn malformed(what: impl Into<String>, reason: impl fmt::Display) -> Self {
        Error::Malformed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// A short, stable identifier of the rule that failed, for security events and attack
    /// The target an error is about, for errors that name one (a failed update the director
    /// can tie to its assignment).
    pub fn target(&self) -> Option<&str> {
        match self {
            Error::DelegationLimit { target, .. }
            | Error::TargetNotFound { target, .. }
            | Error::MissingCustom { target, .. }
            | Error::HardwareIdMismatch { target, .. }
            | Error::DirectorImageMismatch { target, .. }
            | Error::ReleaseCounterDecreased { target, .. } => Some(target),
            _ => None,
        }
    }

    /// indicators (`expired`, `rollback`, `threshold`, …).
    pub fn rule(&self) -> Rule {
        match self {
            Error::Malformed { .. } => Rule::Malformed,
            Error::WrongType { .. } => Rule::WrongType,
            Error::UnsupportedSpecVersion { .. } => Rule::SpecVersion,
            Error::ExpiredMetadata { .. } => Rule::Expired,
            Error::OlderMetadata { .. } => Rule::Rollback,
            Error::EqualVersion { .. } => Rule::EqualVersion,
            Error::VersionMismatch { .. } => Rule::VersionMismatch,
            Error::ThresholdNotMet { .. } => Rule::Threshold,
            Error::HashMismatch { .. } => Rule::HashMismatch,
            Error::LengthMismatch { .. } => Rule::LengthMismatch,
            Error::LengthExceeded { .. } => Rule::EndlessData,
            Error::NoSupportedHash { .. } => Rule::NoSupportedHash,
            Error::BadKey { .. } => Rule::BadKey,
            Error::BadSignature { .. } => Rule::BadSignature,
            Error::MissingRole { .. } => Rule::MissingRole,
            Error::Workflow(_) => Rule::Workflow,
            Error::NotFound { .. } => Rule::NotFound,
            Error::DelegationLimit { .. } => Rule::DelegationLimit,
            Error::TargetNotFound { .. } => Rule::TargetNotFound,
            Error::UnsafeName { .. } => Rule::UnsafeName,
            Error::DirectorDelegates => Rule::DirectorDelegates,
            Error::DuplicateEcu { .. } => Rule::DuplicateEcu,
            Error::EcuNotInVehicle { .. } => Rule::EcuNotInVehicle,
            Error::MissingCustom { .. } => Rule::MissingCustom,
            Error::HardwareIdMismatch { .. } => Rule::HardwareIdMismatch,
            Error::DirectorImageMismatch { .. } => Rule::DirectorImageMismatch,
            Error::ReleaseCounterDecreased { .. } => Rule::ReleaseCounterDecreased,
            Error::NoTargetForEcu { .. } => Rule::NoTargetForEcu,
            Error::WrongVehicle { .. } => Rule::WrongVehicle,
            Error::Manifest(_) => Rule::Manifest,
            Error::Replay { .. } => Rule::Replay,
            Error::DecryptionFailed { .. } => Rule::DecryptionFailed,
            Error::Truncated { .. } => Rule::Truncated,
            Error::Crypto(_) => Rule::Crypto,
            Error::BundleEntry { .. } => Rule::BundleEntry,
            Error::BundleMalformed(_) => Rule::BundleMalformed,
        }
    }
}

//! Errors of the vehicle side, each naming the rule that failed.

use rampart_core::rule::Rule;
use std::path::PathBuf;

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in a primary or an ECU.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The verification core rejected metadata or an image.
    #[error(transparent)]
    Verification(#[from] rampart_core::Error),
    /// Transport or download failure (includes slow retrieval, endless data).
    #[error(transparent)]
    Client(#[from] rampart_client::Error),
    /// A slot could not be written or did not verify.
    #[error(transparent)]
    Slot(#[from] crate::slots::SlotError),
    /// A bad in-vehicle frame.
    #[error(transparent)]
    Frame(#[from] crate::protocol::FrameError),
    /// The other side broke the protocol (wrong target, missing metadata…).
    #[error("in-vehicle protocol: {0}")]
    Protocol(String),
    /// The director refused our manifest (its own rule is kept in `rule`).
    #[error("director refused the manifest (HTTP {status}, {rule}): {message}")]
    Director {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
        /// The rule it named.
        rule: String,
    },
    /// The new image failed to boot and was rolled back.
    #[error("boot failed: {0}")]
    BootFailed(String),
    /// An ECU refused an image, naming its own rule (kept, so that the director learns why:
    /// a rollback after a failed boot is not a hash mismatch).
    #[error("ECU {ecu} refused: [{rule}] {message}")]
    EcuRefused {
        /// The ECU.
        ecu: String,
        /// The rule it named (`protocol` if it named none we know).
        rule: Rule,
        /// Its message.
        message: String,
    },
    /// A legacy ECU answered a UDS request with a negative response.
    #[error("ECU {ecu}: service 0x{service:02X} refused with NRC 0x{nrc:02X} ({name})")]
    Diagnostic {
        /// The ECU.
        ecu: String,
        /// The request's service identifier.
        service: u8,
        /// The negative response code.
        nrc: u8,
        /// Its name in ISO 14229-1.
        name: String,
        /// The rule the code stands for.
        rule: Rule,
    },
    /// A delta could not be applied (its source differs, or it does not build the image).
    #[error("delta {target}: {message}")]
    Delta {
        /// The delta's target path.
        target: String,
        /// [`Rule::DeltaSource`] or [`Rule::DeltaCorrupt`].
        rule: Rule,
        /// What went wrong.
        message: String,
    },
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// A private key or other secret file that others may read or write.
    #[error(transparent)]
    Secret(#[from] rampart_client::store::SecretFileError),
    /// File-system failure.
    #[error("{}: {source}", path.display())]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

impl Error {
    /// Builds [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Stable short name of the failed rule (the director's own rule, for a refused
    /// manifest, is in the message).
    pub fn rule(&self) -> Rule {
        match self {
            Error::Verification(e) => e.rule(),
            Error::Client(e) => e.rule(),
            Error::Slot(crate::slots::SlotError::Verify(e)) => e.rule(),
            Error::Slot(_) => Rule::Slot,
            Error::Frame(e) => e.rule(),
            Error::Protocol(_) => Rule::Protocol,
            Error::Director { .. } => Rule::DirectorRefused,
            Error::BootFailed(_) => Rule::BootFailed,
            Error::EcuRefused { rule, .. }
            | Error::Diagnostic { rule, .. }
            | Error::Delta { rule, .. } => *rule,
            Error::Config(_) => Rule::Config,
            Error::Secret(e) => e.rule(),
            Error::Io { .. } => Rule::Io,
        }
    }

    /// The image the error is about, when the core's verification names one.
    pub fn target(&self) -> Option<String> {
        match self {
            Error::Verification(e) => e.target().map(str::to_owned),
            Error::Client(rampart_client::Error::Verification(e)) => e.target().map(str::to_owned),
            _ => None,
        }
    }
}

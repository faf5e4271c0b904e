//! Errors of the I/O shell: the core's verification errors plus transport and disk failures.

use rampart_core::rule::Rule;
use std::path::PathBuf;

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while moving bytes (or what the core rejected).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The core rejected metadata or an image; names the rule.
    #[error(transparent)]
    Verification(#[from] rampart_core::Error),

    /// The server answered with an unexpected HTTP status.
    #[error("{url}: HTTP status {status}")]
    HttpStatus {
        /// URL requested.
        url: String,
        /// Status code.
        status: u16,
    },

    /// Connection, TLS or protocol failure.
    #[error("{url}: {reason}")]
    Transport {
        /// URL requested.
        url: String,
        /// What failed.
        reason: String,
    },

    /// The server sent data too slowly (Uptane's slow retrieval attack) or stopped sending.
    #[error("{url}: slow retrieval: {bytes} bytes in {seconds:.1}s, below the minimum of {min_bytes_per_second} B/s")]
    SlowRetrieval {
        /// URL requested.
        url: String,
        /// Bytes received in the measured window.
        bytes: u64,
        /// Length of the window.
        seconds: f64,
        /// Required average speed.
        min_bytes_per_second: u64,
    },

    /// A local file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },

    /// A URL that cannot be used.
    #[error("bad URL {url}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// Stable short name of the failed rule, for logs, security events and attack indicators.
    pub fn rule(&self) -> Rule {
        match self {
            Error::Verification(e) => e.rule(),
            Error::HttpStatus { .. } => Rule::HttpStatus,
            Error::Transport { .. } => Rule::Transport,
            Error::SlowRetrieval { .. } => Rule::SlowRetrieval,
            Error::Io { .. } => Rule::Io,
            Error::BadUrl { .. } => Rule::BadUrl,
        }
    }

    /// Whether the bytes received before this error may be kept to resume from: only when
    /// the transfer was cut (connection lost, too slow). Bytes the verifier refused, an HTTP
    /// error or a local failure are not worth resuming.
    pub fn is_resumable(&self) -> bool {
        matches!(self, Error::Transport { .. } | Error::SlowRetrieval { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

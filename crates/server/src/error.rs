//! Errors of the server, each with the HTTP status it maps to and the rule it names.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rampart_core::rule::Rule;

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong on the server side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The core rejected metadata, a manifest or a key.
    #[error(transparent)]
    Verification(#[from] rampart_core::Error),

    /// Stored data that is not what we write (corrupt or tampered with).
    #[error("database: {0}")]
    Database(String),

    /// A database operation failed.
    #[error("database: {what}")]
    Sql {
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// A file of the data directory could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// File.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },

    /// Object storage (the image repository on a bucket) failed or could not be reached.
    #[error("object storage: {0}")]
    Storage(String),

    /// Another writer changed the image repository between this writer's read and its write
    /// (its lease was taken over, or it could not get the lease): nothing was published.
    #[error("{0}")]
    WriterRaced(String),

    /// Bad or missing configuration.
    #[error("configuration: {0}")]
    Config(String),

    /// A request that is well-formed but not acceptable (unknown ECU, bad field…).
    #[error("{0}")]
    BadRequest(String),

    /// Something that already exists.
    #[error("{0}")]
    Conflict(String),

    /// Something that does not exist.
    #[error("{0}")]
    NotFound(String),

    /// Missing or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),

    /// Authenticated, but not allowed (e.g. a certificate for another VIN).
    #[error("{0}")]
    Forbidden(String),

    /// A request body over the limit (endless data).
    #[error("{0}")]
    TooLarge(String),

    /// A refusal with its own rule and status (e.g. `vin-mismatch`, 403), so the answer names
    /// the same rule as the security event recorded for it.
    #[error("{message}")]
    Rejected {
        /// HTTP status.
        status: StatusCode,
        /// Rule.
        rule: Rule,
        /// Message.
        message: String,
    },

    /// A replayed manifest.
    #[error("replay: {0}")]
    Replay(String),
}

impl Error {
    /// Builds [`Error::Io`].
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// This error and its causes, `: `-separated (for logs and answers; `Display` alone
    /// stops at the first).
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }

    /// Stable short name of the failed rule.
    pub fn rule(&self) -> Rule {
        match self {
            Error::Verification(e) => e.rule(),
            Error::Database(_) | Error::Sql { .. } => Rule::Database,
            Error::Io { .. } | Error::Storage(_) => Rule::Io,
            Error::WriterRaced(_) => Rule::Conflict,
            Error::Config(_) => Rule::Config,
            Error::BadRequest(_) => Rule::BadRequest,
            Error::Conflict(_) => Rule::Conflict,
            Error::NotFound(_) => Rule::NotFound,
            Error::Unauthorized(_) => Rule::Unauthorized,
            Error::Forbidden(_) => Rule::Forbidden,
            Error::Replay(_) => Rule::Replay,
            Error::TooLarge(_) => Rule::EndlessData,
            Error::Rejected { rule, .. } => *rule,
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Verification(rampart_core::Error::Replay { .. }) | Error::Replay(_) => {
                StatusCode::CONFLICT
            }
            Error::Verification(_) | Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Conflict(_) | Error::WriterRaced(_) => StatusCode::CONFLICT,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Rejected { status, .. } => *status,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Database(_)
            | Error::Sql { .. }
            | Error::Io { .. }
            | Error::Storage(_)
            | Error::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self.chain(), "request failed");
        }
        let body = serde_json::json!({ "error": self.chain(), "rule": self.rule() });
        (status, axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_cause_as_a_source() {
        let e = Error::io(
            "/srv/rampart.toml",
            std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied"),
        );
        assert_eq!(e.to_string(), "/srv/rampart.toml");
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("denied"));
        assert_eq!(e.chain(), "/srv/rampart.toml: denied");
        assert_eq!(e.rule(), "io");
        let sql = Error::Sql {
            what: "vehicle",
            source: sqlx::Error::RowNotFound,
        };
        assert!(std::error::Error::source(&sql).is_some());
        assert!(
            sql.chain().starts_with("database: vehicle: "),
            "{}",
            sql.chain()
        );
    }
}

//! Long text fields of a batch statement's rows (signed manifests, director documents, image
//! names and hashes), sent to PostgreSQL as one `bytea` parameter while the rows, as JSON
//! (`json_to_recordset`), name each field's byte range in it.
//!
//! Why: inside JSON a signed document is a string full of escaped quotes, which the server
//! escapes and PostgreSQL 15 un-escapes again a character at a time (`json_lex`,
//! `appendStringInfoChar`: 3 % of all the CPU of a check-in run, an eighth of PostgreSQL's).
//! As bytes it is one copy each way. The statement reads a field back with
//! [`sql!`](crate::db::byte_runs::sql)'s expression, where `convert_from` checks that it is
//! UTF-8, as a text parameter would have been.

use super::to_i64;
use crate::error::{Error, Result};

/// The bytes of a batch's long fields, in the order they were added.
#[derive(Debug, Default)]
pub(super) struct ByteRuns {
    bytes: Vec<u8>,
}

/// Where one field is in [`ByteRuns`]: what a row carries instead of the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    /// Its first byte, counted from 0.
    pub start: i64,
    /// Its length in bytes.
    pub length: i64,
}

impl ByteRuns {
    /// Room for `bytes` bytes of fields.
    pub(super) fn with_capacity(bytes: usize) -> Self {
        ByteRuns {
            bytes: Vec::with_capacity(bytes),
        }
    }

    /// Adds `text`; its range.
    pub(super) fn push(&mut self, text: &str) -> Result<Run> {
        let start = to_i64(self.bytes.len() as u64)?;
        self.bytes.extend_from_slice(text.as_bytes());
        Ok(Run {
            start,
            length: to_i64(text.len() as u64)?,
        })
    }

    /// Adds `value` as compact JSON text (what `to_string` gives), written in place rather
    /// than formatted into a string of its own first; its range.
    pub(super) fn push_json(&mut self, value: &serde_json::Value) -> Result<Run> {
        let start = self.bytes.len();
        serde_json::to_writer(&mut self.bytes, value)
            .map_err(|e| Error::Database(format!("JSON text of a batch: {e}")))?;
        Ok(Run {
            start: to_i64(start as u64)?,
            length: to_i64((self.bytes.len() - start) as u64)?,
        })
    }

    /// The parameter to bind.
    pub(super) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// The SQL expression of the text at `start`/`length` (columns of the rows) in `bytea`
/// parameter `param` (`$4`): `sql!("$4", "i.start", "i.length")`.
macro_rules! sql {
    ($param:literal, $start:literal, $length:literal) => {
        concat!(
            "convert_from(substring(",
            $param,
            "::bytea FROM (",
            $start,
            " + 1)::INT FOR ",
            $length,
            "::INT), 'UTF8')"
        )
    };
}
pub(super) use sql;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_count_bytes_one_after_the_other() {
        let mut runs = ByteRuns::with_capacity(8);
        assert_eq!(
            runs.push("ab").unwrap(),
            Run {
                start: 0,
                length: 2
            }
        );
        assert_eq!(
            runs.push("é🚗").unwrap(),
            Run {
                start: 2,
                length: 6
            }
        );
        assert_eq!(
            runs.push("").unwrap(),
            Run {
                start: 8,
                length: 0
            }
        );
        let hashes = serde_json::json!({"sha256": "ab", "sha512": "\"é"});
        assert_eq!(
            runs.push_json(&hashes).unwrap(),
            Run {
                start: 8,
                length: hashes.to_string().len() as i64
            }
        );
        assert_eq!(runs.into_bytes(), format!("abé🚗{hashes}").as_bytes());
        assert_eq!(
            sql!("$4", "i.start", "i.length"),
            "convert_from(substring($4::bytea FROM (i.start + 1)::INT FOR i.length::INT), 'UTF8')"
        );
    }
}

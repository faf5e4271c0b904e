//! Hashes and lengths of files, checked in one pass.
//!
//! TUF lists a file's `length` and a `hashes` object (`{"sha256": "<hex>", …}`). Rampart checks
//! *every* listed hash (Uptane 5.4.4.2 asks for all of them; python-tuf does the same) and
//! refuses algorithms it cannot compute rather than skipping them, so an attacker cannot pass
//! a file by listing only an algorithm we ignore. [`StreamVerifier`] checks while bytes arrive,
//! so a file larger than its signed length is cut off at the first extra byte (endless data)
//! and memory stays constant whatever the size.

use std::collections::BTreeMap;

use aws_lc_rs::digest;

use crate::error::{Error, Result};
use crate::key::decode_lower_hex;

/// A `hashes` object: algorithm name to lowercase hex digest.
pub type Hashes = BTreeMap<String, String>;

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// SHA-512 of `data`.
pub fn sha512(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA512, data).as_ref().to_vec()
}

fn algorithm(name: &str) -> Option<&'static digest::Algorithm> {
    match name {
        "sha224" => Some(&digest::SHA224),
        "sha256" => Some(&digest::SHA256),
        "sha384" => Some(&digest::SHA384),
        "sha512" => Some(&digest::SHA512),
        _ => None,
    }
}

/// Computes the `hashes` object TUF would list for `data` (sha256 and sha512, Rampart's
/// defaults).
pub fn compute_hashes(data: &[u8]) -> Hashes {
    let mut out = Hashes::new();
    out.insert("sha256".into(), hex::encode(sha256(data)));
    out.insert("sha512".into(), hex::encode(sha512(data)));
    out
}

/// Checks `data` against an optional signed length and an optional `hashes` object.
pub fn verify_bytes(
    what: &str,
    data: &[u8],
    length: Option<u64>,
    hashes: Option<&Hashes>,
) -> Result<()> {
    let mut v = StreamVerifier::new(what, length, length.unwrap_or(u64::MAX), hashes)?;
    v.update(data)?;
    v.finish().map(|_| ())
}

/// Verifies length and hashes of a stream of bytes as it arrives.
pub struct StreamVerifier {
    what: String,
    expected_length: Option<u64>,
    max_length: u64,
    seen: u64,
    contexts: Vec<(String, Vec<u8>, digest::Context)>,
}

impl std::fmt::Debug for StreamVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamVerifier")
            .field("what", &self.what)
            .field("expected_length", &self.expected_length)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl StreamVerifier {
    /// Starts checking a file called `what` that must be exactly `expected_length` bytes (if
    /// given), at most `max_length` bytes in any case, and match every hash in `hashes`.
    pub fn new(
        what: &str,
        expected_length: Option<u64>,
        max_length: u64,
        hashes: Option<&Hashes>,
    ) -> Result<Self> {
        let mut contexts = Vec::new();
        for (name, hex_digest) in hashes.into_iter().flatten() {
            let alg = algorithm(name).ok_or_else(|| Error::NoSupportedHash {
                what: what.to_owned(),
                algorithms: name.clone(),
            })?;
            let expected = decode_lower_hex(hex_digest)
                .filter(|d| d.len() == alg.output_len())
                .ok_or_else(|| {
                    Error::malformed(
                        what,
                        format!(
                            "{name} digest is not {} bytes of lowercase hex",
                            alg.output_len()
                        ),
                    )
                })?;
            contexts.push((name.clone(), expected, digest::Context::new(alg)));
        }
        Ok(StreamVerifier {
            what: what.to_owned(),
            expected_length,
            max_length: expected_length.map_or(max_length, |l| l.min(max_length)),
            seen: 0,
            contexts,
        })
    }

    /// Feeds the next bytes; fails as soon as the total passes the bound.
    pub fn update(&mut self, data: &[u8]) -> Result<()> {
        let total = self.seen.saturating_add(data.len() as u64);
        if total > self.max_length {
            return Err(Error::LengthExceeded {
                what: self.what.clone(),
                max: self.max_length,
            });
        }
        self.seen = total;
        for (_, _, ctx) in &mut self.contexts {
            ctx.update(data);
        }
        Ok(())
    }

    /// Bytes fed so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Checks the final length and every hash; returns the length.
    pub fn finish(self) -> Result<u64> {
        if let Some(expected) = self.expected_length {
            if self.seen != expected {
                return Err(Error::LengthMismatch {
                    what: self.what,
                    expected,
                    actual: self.seen,
                });
            }
        }
        for (name, expected, ctx) in self.contexts {
            let got = ctx.finish();
            if got.as_ref() != expected.as_slice() {
                return Err(Error::HashMismatch {
                    what: self.what,
                    algorithm: name,
                });
            }
        }
        Ok(self.seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_matching_length_and_all_hashes() {
        let data = b"firmware image";
        let hashes = compute_hashes(data);
        verify_bytes("img", data, Some(data.len() as u64), Some(&hashes)).unwrap();
    }

    #[test]
    fn detects_a_mismatch_in_any_listed_hash() {
        let data = b"firmware image";
        let mut hashes = compute_hashes(data);
        hashes.insert("sha512".into(), hex::encode(sha512(b"other")));
        let err = verify_bytes("img", data, None, Some(&hashes)).unwrap_err();
        assert_eq!(
            err,
            Error::HashMismatch {
                what: "img".into(),
                algorithm: "sha512".into()
            }
        );
    }

    #[test]
    fn refuses_unsupported_hash_algorithms() {
        let mut hashes = compute_hashes(b"x");
        hashes.insert("md5".into(), "00".repeat(16));
        let err = verify_bytes("img", b"x", None, Some(&hashes)).unwrap_err();
        assert_eq!(err.rule(), "no-supported-hash");
    }

    #[test]
    fn stops_at_the_first_byte_past_the_signed_length() {
        let mut v = StreamVerifier::new("img", Some(4), u64::MAX, None).unwrap();
        v.update(b"abcd").unwrap();
        let err = v.update(b"e").unwrap_err();
        assert_eq!(err.rule(), "endless-data");
    }

    #[test]
    fn detects_a_short_file() {
        let err = verify_bytes("img", b"abc", Some(4), None).unwrap_err();
        assert_eq!(err.rule(), "length-mismatch");
    }

    #[test]
    fn rejects_uppercase_or_wrong_size_digests() {
        let mut hashes = Hashes::new();
        hashes.insert("sha256".into(), hex::encode(sha256(b"x")).to_uppercase());
        assert!(verify_bytes("img", b"x", None, Some(&hashes)).is_err());
        hashes.insert("sha256".into(), "00".into());
        assert!(verify_bytes("img", b"x", None, Some(&hashes)).is_err());
    }

    #[test]
    fn streaming_in_pieces_equals_one_shot() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let hashes = compute_hashes(&data);
        let mut v =
            StreamVerifier::new("img", Some(data.len() as u64), u64::MAX, Some(&hashes)).unwrap();
        for piece in data.chunks(777) {
            v.update(piece).unwrap();
        }
        assert_eq!(v.finish().unwrap(), 10_000);
    }
}

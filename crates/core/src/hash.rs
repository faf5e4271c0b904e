//! Hashes and lengths of files, checked in one pass.
//!
//! TUF lists a file's `length` and a `hashes` object (`{"sha256": "<hex>", …}`). Rampart checks
//! *every* listed hash (Uptane 5.4.4.2 asks for all of them; python-tuf does the same) and
//! refuses algorithms it cannot compute rather than skipping them, so an attacker cannot pass
//! a file by listing only an algorithm we ignore. [`StreamVerifier`] checks while bytes arrive,
//! so a file larger than its signed length is cut off at the first extra byte (endless data)
//! and memory stays constant whatever the size.
//!
//! Images are hashed twice (sha256 and sha512 by default), and on CPUs without SHA-512
//! instructions — most T-BOX SoCs, and x86 before Arrow Lake — SHA-512 alone is slower than
//! downloading, decrypting and writing. So for large files (at least [`PARALLEL_MIN_LENGTH`]
//! bytes), [`StreamVerifier`] runs the slowest algorithm on a helper thread while the
//! caller's thread computes the others: the checks are the same, the time is that of the
//! slowest hash instead of their sum. With one hash the helper takes it and the caller's
//! thread only moves the bytes (receives, decrypts, writes) meanwhile: an image listed with
//! SHA-256 alone went from 272 to 304 MiB/s through the whole path (BENCHMARKS.md). The
//! helper gets copies of the bytes in 64 KiB pieces through a bounded queue (at most
//! [`QUEUE_CHUNKS`] in flight, buffers recycled), so memory stays constant (under 1 MiB);
//! small files (metadata) never start a thread.

use std::collections::BTreeMap;
use std::sync::mpsc;

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

/// The HTTP entity tag of a metadata document on the wire: its SHA-256, lowercase hex, in
/// quotes. The director sends it as `ETag`; a client holding a document computes it from
/// its copy for `If-None-Match`, without having kept a tag.
pub fn entity_tag(document: &[u8]) -> String {
    format!("\"{}\"", hex::encode(sha256(document)))
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

/// [`verify_bytes`] while `work` runs: a document at least [`PARALLEL_MIN_LENGTH`] long is
/// hashed on a helper thread while the calling thread runs `work` (for metadata: parsing it
/// and checking its signatures), so that a large targets role costs the longer of the two
/// rather than their sum. Nothing `work` returns is used unless the length and every hash
/// match: a failed check is the error, whatever `work` found, as if it had come first.
/// `work` must therefore not change anything (it reads bytes no one has vouched for yet).
pub fn verify_bytes_while<T>(
    what: &str,
    data: &[u8],
    length: Option<u64>,
    hashes: Option<&Hashes>,
    work: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let len = data.len() as u64;
    if len < PARALLEL_MIN_LENGTH || length.is_some_and(|l| l != len) {
        verify_bytes(what, data, length, hashes)?;
        return work();
    }
    std::thread::scope(|s| {
        let helper = std::thread::Builder::new()
            .name("rampart-hash".into())
            .spawn_scoped(s, || verify_bytes(what, data, length, hashes));
        let Ok(helper) = helper else {
            verify_bytes(what, data, length, hashes)?;
            return work();
        };
        let out = work();
        helper
            .join()
            .unwrap_or_else(|_| Err(Error::Workflow(format!("hashing {what} failed"))))?;
        out
    })
}

/// Files at least this long are hashed on a helper thread (their slowest hash).
pub const PARALLEL_MIN_LENGTH: u64 = 4 * 1024 * 1024;

/// Pieces queued for the helper thread at most: 512 KiB, more than an HTTP stack hands over
/// at once (hyper's read buffer grows to hundreds of KiB), so a download's thread does not
/// wait for the hash in the middle of every chunk it received. A 1 GiB download took
/// 1.30–1.44 s with 4, 1.13–1.37 s with 8 and 1.13–1.24 s with 16 (BENCHMARKS.md); 8 keeps
/// the memory small.
pub const QUEUE_CHUNKS: usize = 8;

/// Size of the pieces the helper gets (copies of the caller's bytes). A buffer is made only
/// when none came back, so at most `QUEUE_CHUNKS + 2` exist (queued, being hashed, being
/// filled): 640 KiB.
const PIECE: usize = 64 * 1024;

/// One hash computed on a helper thread: chunks go out through a bounded queue, emptied
/// buffers come back for reuse, and the context comes back when the sender is dropped.
struct Offloaded {
    name: String,
    expected: Vec<u8>,
    chunks: Option<mpsc::SyncSender<Vec<u8>>>,
    spare: mpsc::Receiver<Vec<u8>>,
    worker: std::thread::JoinHandle<digest::Context>,
}

impl Offloaded {
    fn start(name: String, expected: Vec<u8>, mut ctx: digest::Context) -> Option<Self> {
        let (chunks, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE_CHUNKS);
        let (give_back, spare) = mpsc::sync_channel::<Vec<u8>>(QUEUE_CHUNKS + 1);
        let worker = std::thread::Builder::new()
            .name(format!("rampart-{name}"))
            .stack_size(64 * 1024)
            .spawn(move || {
                for mut chunk in rx {
                    ctx.update(&chunk);
                    chunk.clear();
                    // The verifier may have stopped taking buffers back; that is fine.
                    let _ = give_back.try_send(chunk);
                }
                ctx
            })
            .ok()?;
        Some(Offloaded {
            name,
            expected,
            chunks: Some(chunks),
            spare,
            worker,
        })
    }

    fn update(&mut self, data: &[u8]) -> bool {
        // Fixed-size pieces, so that what is queued never exceeds QUEUE_CHUNKS × PIECE
        // however large the caller's chunks are (an HTTP stack's read buffer grows to
        // hundreds of KiB on a fast link).
        for piece in data.chunks(PIECE) {
            let mut buf = self
                .spare
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(PIECE));
            buf.extend_from_slice(piece);
            let sent = self.chunks.as_ref().is_some_and(|tx| tx.send(buf).is_ok());
            if !sent {
                return false;
            }
        }
        true
    }

    fn finish(mut self) -> Option<(String, Vec<u8>, digest::Digest)> {
        drop(self.chunks.take());
        let ctx = self.worker.join().ok()?;
        Some((self.name, self.expected, ctx.finish()))
    }
}

/// Verifies length and hashes of a stream of bytes as it arrives.
pub struct StreamVerifier {
    what: String,
    expected_length: Option<u64>,
    max_length: u64,
    seen: u64,
    contexts: Vec<(String, Vec<u8>, digest::Context)>,
    offloaded: Option<Offloaded>,
    /// The helper thread went away (it cannot, short of a panic in the hash): the file is
    /// refused rather than passed on the hashes that were computed.
    offload_failed: bool,
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
        // The slowest algorithm (the widest block: SHA-384/512) goes to the helper.
        let offloaded =
            if !contexts.is_empty() && expected_length.is_some_and(|l| l >= PARALLEL_MIN_LENGTH) {
                contexts
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, (_, _, ctx))| ctx.algorithm().block_len())
                    .map(|(i, _)| i)
                    .map(|i| contexts.remove(i))
                    .and_then(|(name, expected, ctx)| Offloaded::start(name, expected, ctx))
            } else {
                None
            };
        Ok(StreamVerifier {
            what: what.to_owned(),
            expected_length,
            max_length: expected_length.map_or(max_length, |l| l.min(max_length)),
            seen: 0,
            contexts,
            offloaded,
            offload_failed: false,
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
        if let Some(off) = self.offloaded.as_mut() {
            if !off.update(data) {
                self.offload_failed = true;
            }
        }
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
        let mut digests: Vec<(String, Vec<u8>, digest::Digest)> = self
            .contexts
            .into_iter()
            .map(|(name, expected, ctx)| (name, expected, ctx.finish()))
            .collect();
        if let Some(off) = self.offloaded {
            let name = off.name.clone();
            match off.finish() {
                Some(d) if !self.offload_failed => digests.push(d),
                _ => {
                    return Err(Error::HashMismatch {
                        what: self.what,
                        algorithm: name,
                    })
                }
            }
        }
        for (name, expected, got) in digests {
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

    /// Large files hash their slowest algorithm on a helper thread; the verdicts are the
    /// same, and a mismatch in either hash (the offloaded one or the other) is caught.
    #[test]
    fn large_files_check_every_hash_on_two_threads() {
        let data: Vec<u8> = (0..PARALLEL_MIN_LENGTH + 12_345)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let len = data.len() as u64;
        let good = compute_hashes(&data);
        let feed = |hashes: &Hashes| {
            let mut v = StreamVerifier::new("img", Some(len), len, Some(hashes)).unwrap();
            assert!(
                v.offloaded.is_some(),
                "the slowest pass runs on a helper thread"
            );
            for chunk in data.chunks(64 * 1024 + 7) {
                v.update(chunk).unwrap();
            }
            v.finish()
        };
        assert_eq!(feed(&good), Ok(len));
        for alg in ["sha256", "sha512"] {
            let mut bad = good.clone();
            let other = compute_hashes(b"other");
            bad.insert(alg.into(), other[alg].clone());
            assert_eq!(
                feed(&bad),
                Err(Error::HashMismatch {
                    what: "img".into(),
                    algorithm: alg.into()
                })
            );
        }
        // One hash: on the helper too (the caller's thread moves the bytes meanwhile), and
        // checked as well.
        let mut only = good.clone();
        only.remove("sha512");
        assert_eq!(feed(&only), Ok(len));
        only.insert("sha256".into(), compute_hashes(b"other")["sha256"].clone());
        assert_eq!(
            feed(&only),
            Err(Error::HashMismatch {
                what: "img".into(),
                algorithm: "sha256".into()
            })
        );
        // A small file: no thread.
        let v = StreamVerifier::new("img", Some(10), 10, Some(&good)).unwrap();
        assert!(v.offloaded.is_none());
        // Dropped half-way: the helper ends on its own.
        let mut v = StreamVerifier::new("img", Some(len), len, Some(&good)).unwrap();
        v.update(data.get(..1000).unwrap()).unwrap();
        drop(v);
    }

    /// A large document is hashed while `work` runs on it; whatever `work` found, a failed
    /// length or hash check is the answer (its bytes were never vouched for).
    #[test]
    fn a_failed_check_wins_over_the_work_done_meanwhile() {
        for len in [100, PARALLEL_MIN_LENGTH + 3] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let good = compute_hashes(&data);
            let mut bad = good.clone();
            bad.insert("sha512".into(), compute_hashes(b"other")["sha512"].clone());
            let ran = std::sync::atomic::AtomicUsize::new(0);
            let work = |r: Result<u32>| {
                ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                r
            };
            let check = |hashes: &Hashes, length: u64, r: Result<u32>| {
                verify_bytes_while("role", &data, Some(length), Some(hashes), || work(r))
            };
            assert_eq!(check(&good, len, Ok(7)), Ok(7));
            let malformed = || Err(Error::malformed("role", "not JSON"));
            assert_eq!(
                check(&good, len, malformed()).unwrap_err().rule(),
                "malformed"
            );
            let mismatch = Err(Error::HashMismatch {
                what: "role".into(),
                algorithm: "sha512".into(),
            });
            assert_eq!(check(&bad, len, Ok(7)), mismatch);
            assert_eq!(check(&bad, len, malformed()), mismatch);
            assert_eq!(
                check(&good, len + 1, Ok(7)).unwrap_err().rule(),
                "length-mismatch"
            );
            // In parallel for a large document of the signed length; otherwise after the
            // check, so not at all when it fails.
            let expected = if len >= PARALLEL_MIN_LENGTH { 4 } else { 2 };
            assert_eq!(
                ran.load(std::sync::atomic::Ordering::SeqCst),
                expected,
                "{len}"
            );
        }
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

//! Binary deltas between two images of one ECU, in the BSDIFF40 format of bsdiff 4.3.
//!
//! Why this format, and why our own applier: measured on three pairs of real releases and on
//! 128/256 MiB images (`docs/research/delta-measurements.md`), patches made by `qbsdiff` are
//! 0.99–1.04× the size of bsdiff 4.3's in a third to a quarter of its time; zstd's
//! `--patch-from`, xdelta3 and bidiff make larger patches. But every existing BSDIFF40 applier
//! (bspatch 4.3, `qbsdiff::Bspatch`) holds the whole source image, and often the result, in
//! memory — 139 MiB for a 128 MiB image — which an ECU does not have. [`apply`] streams
//! instead: the source is read through a small window with seeks, the three compressed
//! sections are decoded side by side, and the result is written strictly in order, so memory
//! stays a few MiB whatever the image size (the bench measures it).
//!
//! A patch is untrusted input even after its signature checked out: every length and offset
//! it declares is checked before it is used, arithmetic is checked, nothing it says sizes an
//! allocation, and a patch that would write past the result length it declares is refused.
//! Source positions outside the source read as zero bytes, as in bspatch. What the result
//! must be (its signed length and hashes) is for the caller to check as the bytes come out.
//!
//! ```text
//! offset  0: "BSDIFF40"
//! offset  8: length of the compressed control section   (offtin)
//! offset 16: length of the compressed diff section      (offtin)
//! offset 24: length of the result                       (offtin)
//! offset 32: bzip2(control) bzip2(diff) bzip2(extra)
//! control:   triples (x, y, z): add x diff bytes to the source at the source position,
//!            copy y extra bytes, move the source position by z
//! ```
//! An offtin is 8 bytes, little endian, sign and magnitude (the top bit is the sign).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use bzip2::read::BzDecoder;

/// The format name signed into a delta target's custom fields.
pub const FORMAT: &str = "bsdiff40";

/// The first 8 bytes of every patch.
pub const MAGIC: &[u8; 8] = b"BSDIFF40";

/// Length of the header.
pub const HEADER_LEN: u64 = 32;

/// Bytes moved per step (source window, diff and extra buffers).
const CHUNK: usize = 64 * 1024;

/// Control triples in a row that write nothing (x = y = 0) before the patch is refused: real
/// patches have at most one, and a stream of them would spin the applier for nothing.
const MAX_IDLE_TRIPLES: u32 = 16;

/// Why a delta could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// The patch is not BSDIFF40 or declares impossible lengths.
    #[error("not a usable BSDIFF40 delta: {0}")]
    Header(String),
    /// The patch's sections contradict themselves (ends early, negative or too long a step).
    #[error("corrupt delta: {0}")]
    Corrupt(String),
    /// The patch file could not be read.
    #[error("cannot read the delta: {0}")]
    Patch(#[source] io::Error),
    /// The source image could not be read (shorter than its stated length, I/O error).
    #[error("cannot read the source image: {0}")]
    Source(#[source] io::Error),
    /// The result could not be written (or its writer refused it).
    #[error("cannot write the result: {0}")]
    Output(#[source] io::Error),
    /// Making a delta failed (server side).
    #[error("cannot make the delta: {0}")]
    Create(String),
}

/// A result type for this crate.
pub type Result<T> = std::result::Result<T, DeltaError>;

/// The header of a BSDIFF40 patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes of the compressed control section.
    pub control_len: u64,
    /// Bytes of the compressed diff section.
    pub diff_len: u64,
    /// Bytes of the result.
    pub result_len: u64,
}

impl Header {
    /// Reads the header from the first [`HEADER_LEN`] bytes of a patch of `patch_len` bytes.
    pub fn parse(bytes: &[u8], patch_len: u64) -> Result<Header> {
        let field = |at: usize| -> Result<u64> {
            let raw: [u8; 8] = bytes
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| DeltaError::Header("shorter than its 32-byte header".into()))?;
            u64::try_from(offtin(raw))
                .map_err(|_| DeltaError::Header(format!("negative length at byte {at}")))
        };
        if bytes.get(..8) != Some(MAGIC.as_slice()) {
            return Err(DeltaError::Header("it does not start with BSDIFF40".into()));
        }
        let header = Header {
            control_len: field(8)?,
            diff_len: field(16)?,
            result_len: field(24)?,
        };
        HEADER_LEN
            .checked_add(header.control_len)
            .and_then(|n| n.checked_add(header.diff_len))
            .filter(|&n| n <= patch_len)
            .ok_or_else(|| {
                DeltaError::Header(format!(
                    "its sections ({} + {} bytes) do not fit in its {patch_len} bytes",
                    header.control_len, header.diff_len
                ))
            })?;
        Ok(header)
    }

    /// Where the control, diff and extra sections lie (offset, length) in a patch of
    /// `patch_len` bytes whose header this is ([`Header::parse`] checked they fit).
    fn sections(&self, patch_len: u64) -> [(u64, u64); 3] {
        let diff_at = HEADER_LEN + self.control_len;
        let extra_at = diff_at + self.diff_len;
        [
            (HEADER_LEN, self.control_len),
            (diff_at, self.diff_len),
            (extra_at, patch_len.saturating_sub(extra_at)),
        ]
    }
}

/// Reads a BSDIFF40 integer: little endian, top bit the sign.
fn offtin(b: [u8; 8]) -> i64 {
    let raw = u64::from_le_bytes(b);
    let magnitude = (raw & !(1 << 63)) as i64;
    if raw >> 63 == 1 {
        -magnitude
    } else {
        magnitude
    }
}

/// Reads the header of the patch file at `patch`.
pub fn read_header(patch: &Path) -> Result<Header> {
    let mut file = File::open(patch).map_err(DeltaError::Patch)?;
    let len = file.metadata().map_err(DeltaError::Patch)?.len();
    let mut head = [0u8; HEADER_LEN as usize];
    let n = read_full(&mut file, &mut head).map_err(DeltaError::Patch)?;
    Header::parse(head.get(..n).unwrap_or_default(), len)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(buf.get_mut(n..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Applies the patch file at `patch` to `source` (`source_len` bytes; read with seeks, never
/// held), writing the result to `out` in order. Returns the bytes written (the header's result
/// length). Memory: three bzip2 decoders and three 64 KiB buffers.
pub fn apply<S: Read + Seek, W: Write>(
    source: S,
    source_len: u64,
    patch: &Path,
    out: W,
) -> Result<u64> {
    let mut file = File::open(patch).map_err(DeltaError::Patch)?;
    let patch_len = file.metadata().map_err(DeltaError::Patch)?.len();
    let mut head = [0u8; HEADER_LEN as usize];
    let n = read_full(&mut file, &mut head).map_err(DeltaError::Patch)?;
    let header = Header::parse(head.get(..n).unwrap_or_default(), patch_len)?;
    let [control, diff, extra] = header.sections(patch_len).map(|(offset, len)| {
        let mut f = File::open(patch).map_err(DeltaError::Patch)?;
        f.seek(SeekFrom::Start(offset)).map_err(DeltaError::Patch)?;
        Ok(BzDecoder::new(f.take(len)))
    });
    apply_sections(
        source,
        source_len,
        header.result_len,
        control?,
        diff?,
        extra?,
        out,
    )
}

/// [`apply`] with the patch in memory (tests, fuzzing, small images).
pub fn apply_bytes<S: Read + Seek, W: Write>(
    source: S,
    source_len: u64,
    patch: &[u8],
    out: W,
) -> Result<u64> {
    let header = Header::parse(patch, patch.len() as u64)?;
    let [control, diff, extra] = header.sections(patch.len() as u64).map(|(from, len)| {
        let from = usize::try_from(from).unwrap_or(usize::MAX);
        let to = from.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
        BzDecoder::new(patch.get(from..to.min(patch.len())).unwrap_or_default())
    });
    apply_sections(
        source,
        source_len,
        header.result_len,
        control,
        diff,
        extra,
        out,
    )
}

/// Where the source is read from: a window of `CHUNK` bytes, seeking only when the patch
/// moves elsewhere.
struct Source<S> {
    inner: S,
    len: u64,
    /// The reader's position, when known (saves a seek for sequential reads).
    at: Option<u64>,
    buf: Vec<u8>,
}

impl<S: Read + Seek> Source<S> {
    /// Adds the source bytes at `pos .. pos + out.len()` to `out` (positions outside the
    /// source add nothing).
    fn add_to(&mut self, pos: i64, out: &mut [u8]) -> Result<()> {
        let start = i128::from(pos);
        let end = start + out.len() as i128;
        let lo = start.max(0);
        let hi = end.min(i128::from(self.len));
        if lo >= hi {
            return Ok(());
        }
        // lo and hi are within 0..=len (a u64), and hi - lo <= out.len().
        let (lo_u, n) = (lo as u64, (hi - lo) as usize);
        if self.at != Some(lo_u) {
            self.inner
                .seek(SeekFrom::Start(lo_u))
                .map_err(DeltaError::Source)?;
        }
        let window = self
            .buf
            .get_mut(..n)
            .ok_or_else(|| DeltaError::Corrupt("source window larger than its buffer".into()))?;
        self.inner.read_exact(window).map_err(DeltaError::Source)?;
        self.at = Some(lo_u + n as u64);
        let offset = (lo - start) as usize;
        let target = out
            .get_mut(offset..offset + n)
            .ok_or_else(|| DeltaError::Corrupt("source window outside the step".into()))?;
        for (t, s) in target.iter_mut().zip(window.iter()) {
            *t = t.wrapping_add(*s);
        }
        Ok(())
    }
}

fn section_ended(what: &str, e: io::Error, new_pos: u64, result_len: u64) -> DeltaError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        DeltaError::Corrupt(format!(
            "the {what} section ends at byte {new_pos} of {result_len}"
        ))
    } else {
        DeltaError::Corrupt(format!("the {what} section does not decode: {e}"))
    }
}

/// The applier proper, over the three decompressed sections.
fn apply_sections<S: Read + Seek, C: Read, D: Read, E: Read, W: Write>(
    source: S,
    source_len: u64,
    result_len: u64,
    mut control: C,
    mut diff: D,
    mut extra: E,
    mut out: W,
) -> Result<u64> {
    let mut src = Source {
        inner: source,
        len: source_len,
        at: None,
        buf: vec![0; CHUNK],
    };
    let mut buf = vec![0u8; CHUNK];
    let mut new_pos: u64 = 0;
    let mut old_pos: i64 = 0;
    let mut idle = 0u32;
    while new_pos < result_len {
        let mut triple = [0u8; 24];
        control
            .read_exact(&mut triple)
            .map_err(|e| section_ended("control", e, new_pos, result_len))?;
        let value = |i: usize| -> i64 {
            let mut b = [0u8; 8];
            if let Some(s) = triple.get(i * 8..i * 8 + 8) {
                b.copy_from_slice(s);
            }
            offtin(b)
        };
        let (x, y, z) = (value(0), value(1), value(2));
        let (Ok(add), Ok(copy)) = (u64::try_from(x), u64::try_from(y)) else {
            return Err(DeltaError::Corrupt(format!(
                "a negative step ({x}, {y}) at byte {new_pos}"
            )));
        };
        if add == 0 && copy == 0 {
            idle += 1;
            if idle > MAX_IDLE_TRIPLES {
                return Err(DeltaError::Corrupt(format!(
                    "more than {MAX_IDLE_TRIPLES} steps in a row that write nothing, at byte {new_pos}"
                )));
            }
        } else {
            idle = 0;
        }
        let past = |n: u64, at: u64| {
            DeltaError::Corrupt(format!(
                "a step of {n} bytes at byte {at} goes past the result's {result_len} bytes"
            ))
        };
        if add > result_len - new_pos {
            return Err(past(add, new_pos));
        }
        let mut left = add;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            let step = buf.get_mut(..n).unwrap_or_default();
            diff.read_exact(step)
                .map_err(|e| section_ended("diff", e, new_pos, result_len))?;
            src.add_to(old_pos, step)?;
            out.write_all(step).map_err(DeltaError::Output)?;
            old_pos = old_pos
                .checked_add(n as i64)
                .ok_or_else(|| DeltaError::Corrupt("the source position overflows".into()))?;
            new_pos += n as u64;
            left -= n as u64;
        }
        if copy > result_len - new_pos {
            return Err(past(copy, new_pos));
        }
        let mut left = copy;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            let step = buf.get_mut(..n).unwrap_or_default();
            extra
                .read_exact(step)
                .map_err(|e| section_ended("extra", e, new_pos, result_len))?;
            out.write_all(step).map_err(DeltaError::Output)?;
            new_pos += n as u64;
            left -= n as u64;
        }
        old_pos = old_pos
            .checked_add(z)
            .ok_or_else(|| DeltaError::Corrupt("the source position overflows".into()))?;
    }
    // After the last byte, the control section may only hold steps that write nothing
    // (qbsdiff's parallel search ends its chunks with such steps), and not many of them.
    let mut trailing = 0u32;
    loop {
        let mut triple = [0u8; 24];
        match read_full(&mut control, &mut triple) {
            Ok(0) => break,
            Ok(24) => {}
            Ok(_) => {
                return Err(DeltaError::Corrupt(
                    "the control section ends inside a step".into(),
                ))
            }
            Err(e) => return Err(section_ended("control", e, new_pos, result_len)),
        }
        let writes = triple.get(..16).is_some_and(|xy| {
            xy.chunks(8)
                .any(|b| <[u8; 8]>::try_from(b).is_ok_and(|b| offtin(b) != 0))
        });
        trailing += 1;
        if writes || trailing > MAX_IDLE_TRIPLES {
            return Err(DeltaError::Corrupt(
                "the control section holds data after the last step".into(),
            ));
        }
    }
    // The diff and extra sections must end there, as bzip2 streams end (a truncated patch
    // whose missing tail held no data is refused too).
    for (what, section) in [("diff", &mut diff as &mut dyn Read), ("extra", &mut extra)] {
        let mut probe = [0u8; 1];
        match section.read(&mut probe) {
            Ok(0) => {}
            Ok(_) => {
                return Err(DeltaError::Corrupt(format!(
                    "the {what} section holds data after the last step"
                )))
            }
            Err(e) => return Err(section_ended(what, e, new_pos, result_len)),
        }
    }
    out.flush().map_err(DeltaError::Output)?;
    Ok(new_pos)
}

/// Makes a BSDIFF40 patch from `source` to `target` with qbsdiff. The target is cut into four
/// chunks per core (at least 1 MiB each), searched in parallel against the whole source:
/// about as fast as qbsdiff's own parallel search, without its fixed 512 KiB chunks, which
/// lose the matches across many chunk boundaries (38 % larger patches on a 128 MiB image).
/// Memory: about six times the source.
#[cfg(feature = "create")]
pub fn create(source: &[u8], target: &[u8], out: impl Write) -> Result<u64> {
    if source.len() as u64 > qbsdiff::bsdiff::MAX_LENGTH as u64 {
        return Err(DeltaError::Create(format!(
            "the source is {} bytes; qbsdiff takes at most {}",
            source.len(),
            qbsdiff::bsdiff::MAX_LENGTH
        )));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = target.len().div_ceil(4 * cores).max(1 << 20);
    let scheme = if chunk >= target.len() {
        qbsdiff::ParallelScheme::Never
    } else {
        qbsdiff::ParallelScheme::ChunkSize(chunk)
    };
    qbsdiff::Bsdiff::new(source, target)
        .parallel_scheme(scheme)
        .compare(out)
        .map_err(|e| DeltaError::Create(e.to_string()))
}

#[cfg(test)]
mod tests;

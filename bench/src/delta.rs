//! Deltas (issue 18): what `bench/delta` times and measures, one operation per process so
//! that GNU time's peak RSS is the operation's own.
//!
//! * `delta-create OLD NEW PATCH [--qbsdiff-default]` — Rampart's delta (`rampart_delta::create`:
//!   qbsdiff, one thread), or qbsdiff as shipped (its default parallel search), for the
//!   "creation time ≤ qbsdiff's" line;
//! * `delta-apply OLD PATCH OUT` — Rampart's streaming applier, as an ECU runs it (the
//!   source read from a file with seeks, the result written to a file);
//! * `delta-synth --mib N OLD NEW` — two "releases" of a large image: real-looking structure,
//!   a few relocated regions, rewritten regions, insertions and deletions.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde_json::{json, Value};

use crate::Args;

pub(crate) fn create(args: &Args) -> anyhow::Result<Value> {
    let (old, new, patch) = (
        args.word(1, "OLD")?,
        args.word(2, "NEW")?,
        args.word(3, "PATCH")?,
    );
    let old_bytes = std::fs::read(old).with_context(|| old.to_owned())?;
    let new_bytes = std::fs::read(new).with_context(|| new.to_owned())?;
    let started = Instant::now();
    let mut out = BufWriter::new(File::create(patch).with_context(|| patch.to_owned())?);
    let shipped = args.get("qbsdiff-default").is_some();
    if shipped {
        qbsdiff::Bsdiff::new(&old_bytes, &new_bytes).compare(&mut out)?;
    } else {
        rampart_delta::create(&old_bytes, &new_bytes, &mut out)?;
    }
    out.flush()?;
    drop(out);
    Ok(json!({
        "creator": if shipped { "qbsdiff default (parallel search)" } else { "rampart (qbsdiff, one thread)" },
        "seconds": started.elapsed().as_secs_f64(),
        "patch_bytes": std::fs::metadata(patch)?.len(),
        "old_bytes": old_bytes.len(),
        "new_bytes": new_bytes.len(),
    }))
}

pub(crate) fn apply(args: &Args) -> anyhow::Result<Value> {
    let (old, patch, out) = (
        args.word(1, "OLD")?,
        args.word(2, "PATCH")?,
        args.word(3, "OUT")?,
    );
    let source = File::open(old).with_context(|| old.to_owned())?;
    let source_len = source.metadata()?.len();
    let started = Instant::now();
    let mut sink = BufWriter::with_capacity(
        64 * 1024,
        File::create(out).with_context(|| out.to_owned())?,
    );
    let written = rampart_delta::apply(
        BufReader::with_capacity(64 * 1024, source),
        source_len,
        Path::new(patch),
        &mut sink,
    )?;
    sink.flush()?;
    Ok(json!({ "seconds": started.elapsed().as_secs_f64(), "result_bytes": written }))
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub(crate) fn synth(args: &Args) -> anyhow::Result<Value> {
    let mib: usize = args.num("mib", 256)?;
    let (old_path, new_path) = (args.word(1, "OLD")?, args.word(2, "NEW")?);
    let len = mib * 1024 * 1024;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // Code-like bytes: runs of a small instruction vocabulary with random operands.
    let vocab: Vec<[u8; 8]> = (0..512).map(|_| rng.next().to_le_bytes()).collect();
    let mut old = Vec::with_capacity(len);
    while old.len() < len {
        let w = vocab
            .get(rng.below(vocab.len() as u64) as usize)
            .copied()
            .unwrap_or_default();
        old.extend_from_slice(w.get(..4).unwrap_or_default());
        old.extend_from_slice(&(rng.below(4096) as u32).to_le_bytes());
    }
    old.truncate(len);
    let mut new = old.clone();
    // Three relocated regions of 1 MiB: every 8-byte pointer moves by 0x1000.
    for _ in 0..3 {
        let at = rng.below((len - (1 << 20)) as u64) as usize & !7;
        for p in (at..at + (1 << 20)).step_by(8) {
            if let Some(b) = new.get_mut(p..p + 4) {
                let v = u32::from_le_bytes(<[u8; 4]>::try_from(&*b).unwrap_or_default())
                    .wrapping_add(0x1000);
                b.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
    // About 2 % rewritten in 40 KiB regions.
    for _ in 0..(len / 50 / 40_960).max(1) {
        let at = rng.below((len - 40_960) as u64) as usize;
        for b in new.iter_mut().skip(at).take(40_960) {
            *b = rng.next() as u8;
        }
    }
    // 24 insertions or deletions of 4–64 KiB.
    for _ in 0..24 {
        let at = rng.below((new.len() - 70_000) as u64) as usize;
        let n = 4096 + rng.below(60 * 1024) as usize;
        if rng.below(2) == 0 {
            let fresh: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            new.splice(at..at, fresh);
        } else {
            new.drain(at..at + n);
        }
    }
    std::fs::write(old_path, &old)?;
    std::fs::write(new_path, &new)?;
    Ok(json!({ "old_bytes": old.len(), "new_bytes": new.len() }))
}

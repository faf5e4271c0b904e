#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

use std::io::{Cursor, Write};

use bzip2::write::BzEncoder;
use bzip2::Compression;

use super::*;

/// Repeatable pseudo-random bytes (xorshift), so images compress like code, not like zeros.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A "next release" of `old`: a patched region, an insertion, a deletion, a changed tail.
fn next_release(old: &[u8]) -> Vec<u8> {
    let mut new = old.to_vec();
    for b in new.iter_mut().skip(1000).step_by(97).take(500) {
        *b = b.wrapping_add(7);
    }
    new.splice(20_000..20_000, bytes(99, 3000));
    new.drain(50_000..52_000);
    new.extend_from_slice(&bytes(5, 4096));
    new
}

fn off(v: i64) -> [u8; 8] {
    let mut b = v.unsigned_abs().to_le_bytes();
    if v < 0 {
        b[7] |= 0x80;
    }
    b
}

fn bz(data: &[u8]) -> Vec<u8> {
    let mut e = BzEncoder::new(Vec::new(), Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A patch written by hand: `triples` as the control section.
fn patch(result_len: i64, triples: &[(i64, i64, i64)], diff: &[u8], extra: &[u8]) -> Vec<u8> {
    let control: Vec<u8> = triples
        .iter()
        .flat_map(|&(x, y, z)| [off(x), off(y), off(z)].concat())
        .collect();
    let (c, d, e) = (bz(&control), bz(diff), bz(extra));
    let mut p = MAGIC.to_vec();
    p.extend_from_slice(&off(c.len() as i64));
    p.extend_from_slice(&off(d.len() as i64));
    p.extend_from_slice(&off(result_len));
    p.extend_from_slice(&c);
    p.extend_from_slice(&d);
    p.extend_from_slice(&e);
    p
}

fn run(old: &[u8], patch: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    apply_bytes(Cursor::new(old), old.len() as u64, patch, &mut out)?;
    Ok(out)
}

#[test]
fn offtin_is_sign_and_magnitude() {
    assert_eq!(offtin(off(0)), 0);
    assert_eq!(offtin(off(5)), 5);
    assert_eq!(offtin(off(-5)), -5);
    assert_eq!(offtin(off(i64::MAX)), i64::MAX);
    assert_eq!(
        offtin([0, 0, 0, 0, 0, 0, 0, 0x80]),
        0,
        "negative zero is zero"
    );
}

#[test]
fn a_qbsdiff_patch_rebuilds_the_new_image_from_a_file_and_from_memory() {
    let old = bytes(1, 300_000);
    let new = next_release(&old);
    let mut delta = Vec::new();
    create(&old, &new, &mut delta).unwrap();
    assert!(delta.len() < new.len() / 4, "delta {} bytes", delta.len());
    assert_eq!(run(&old, &delta).unwrap(), new);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.bsdiff");
    std::fs::write(&path, &delta).unwrap();
    let header = read_header(&path).unwrap();
    assert_eq!(header.result_len, new.len() as u64);
    let mut out = Vec::new();
    let n = apply(Cursor::new(&old), old.len() as u64, &path, &mut out).unwrap();
    assert_eq!((n, out), (new.len() as u64, new));
}

#[test]
fn identical_and_empty_images() {
    let old = bytes(2, 70_000);
    let mut delta = Vec::new();
    create(&old, &old, &mut delta).unwrap();
    assert_eq!(run(&old, &delta).unwrap(), old);
    let mut delta = Vec::new();
    create(&[], &old, &mut delta).unwrap();
    assert_eq!(run(&[], &delta).unwrap(), old);
    let mut delta = Vec::new();
    create(&old, &[], &mut delta).unwrap();
    assert_eq!(run(&old, &delta).unwrap(), Vec::<u8>::new());
}

#[test]
fn source_positions_outside_the_source_read_as_zero() {
    // Start 3 bytes before the source, add 6 bytes: the first 3 see zeros.
    let p = patch(6, &[(0, 0, -3), (6, 0, 0)], &[1, 1, 1, 1, 1, 1], &[]);
    assert_eq!(run(&[10, 20, 30], &p).unwrap(), vec![1, 1, 1, 11, 21, 31]);
    // And past its end.
    let p = patch(4, &[(0, 0, 2), (4, 0, 0)], &[0, 0, 0, 0], &[]);
    assert_eq!(run(&[10, 20, 30], &p).unwrap(), vec![30, 0, 0, 0]);
}

#[test]
fn steps_that_write_nothing_may_follow_the_last_byte_but_nothing_else() {
    // qbsdiff's parallel search ends its chunks with such steps.
    let p = patch(3, &[(0, 3, 0), (0, 0, 7), (0, 0, -2)], &[], b"abc");
    assert_eq!(run(&[], &p).unwrap(), b"abc");
    let p = patch(3, &[(0, 3, 0), (0, 1, 0)], &[], b"abcd");
    assert!(matches!(run(&[], &p), Err(DeltaError::Corrupt(_))));
    let p = patch(3, &[(0, 3, 0)], &[9], b"abc");
    assert!(matches!(run(&[], &p), Err(DeltaError::Corrupt(_))));
}

#[test]
fn a_parallel_qbsdiff_patch_of_a_large_image_applies() {
    // Over 2 MiB: cut into chunks searched on every core.
    let old = bytes(8, 9 << 20);
    let mut new = old.clone();
    for b in new.iter_mut().skip(4096).step_by(65_537) {
        *b ^= 1;
    }
    new.splice(5_000_000..5_000_000, bytes(9, 10_000));
    let mut delta = Vec::new();
    create(&old, &new, &mut delta).unwrap();
    assert!(run(&old, &delta).unwrap() == new);
}

#[test]
fn a_header_that_lies_is_refused() {
    let good = patch(3, &[(0, 3, 0)], &[], b"abc");
    assert_eq!(run(&[], &good).unwrap(), b"abc");
    // Not BSDIFF40.
    let mut p = good.clone();
    p[0] = b'X';
    assert!(matches!(run(&[], &p), Err(DeltaError::Header(_))));
    // Shorter than a header.
    assert!(matches!(run(&[], &good[..20]), Err(DeltaError::Header(_))));
    // Negative and oversized section lengths.
    for (at, v) in [(8, -1i64), (16, -1), (24, -1), (8, i64::MAX), (16, 1 << 40)] {
        let mut p = good.clone();
        p[at..at + 8].copy_from_slice(&off(v));
        assert!(
            matches!(run(&[], &p), Err(DeltaError::Header(_))),
            "field {at} = {v}"
        );
    }
}

#[test]
fn steps_that_contradict_the_result_length_are_refused() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("negative add", patch(4, &[(-1, 0, 0)], &[], &[])),
        ("negative copy", patch(4, &[(0, -1, 0)], &[], &[])),
        ("add past the end", patch(2, &[(3, 0, 0)], &[0, 0, 0], &[])),
        ("copy past the end", patch(2, &[(0, 3, 0)], &[], b"abc")),
        ("control ends early", patch(4, &[(0, 2, 0)], &[], b"ab")),
        ("diff ends early", patch(4, &[(4, 0, 0)], &[1, 2], &[])),
        ("extra ends early", patch(4, &[(0, 4, 0)], &[], b"ab")),
        (
            "data after the last step",
            patch(3, &[(0, 3, 0)], &[], b"abcd"),
        ),
        ("idle steps", patch(1, &vec![(0, 0, 1); 40], &[], &[])),
        (
            "source position overflow",
            patch(
                2,
                &[(0, 0, i64::MAX), (1, 0, i64::MAX), (1, 0, 0)],
                &[0, 0],
                &[],
            ),
        ),
    ];
    for (what, p) in cases {
        let err = run(&[1, 2, 3], &p).unwrap_err();
        assert!(matches!(err, DeltaError::Corrupt(_)), "{what}: {err}");
    }
}

#[test]
fn a_source_shorter_than_stated_is_an_error_of_the_source() {
    let old = bytes(3, 100_000);
    let new = next_release(&old);
    let mut delta = Vec::new();
    create(&old, &new, &mut delta).unwrap();
    let mut out = Vec::new();
    // Says 100,000 bytes, holds 50,000.
    let err = apply_bytes(Cursor::new(&old[..50_000]), 100_000, &delta, &mut out).unwrap_err();
    assert!(matches!(err, DeltaError::Source(_)), "{err}");
}

#[test]
fn a_writer_that_refuses_stops_the_apply() {
    struct Refuse;
    impl Write for Refuse {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("hash mismatch"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let p = patch(3, &[(0, 3, 0)], &[], b"abc");
    let err = apply_bytes(Cursor::new(&[][..]), 0, &p, Refuse).unwrap_err();
    assert!(matches!(err, DeltaError::Output(_)), "{err}");
}

#[test]
fn truncations_and_bit_flips_never_panic_nor_write_past_the_declared_length() {
    let old = bytes(4, 60_000);
    let new = next_release(&old);
    let mut delta = Vec::new();
    create(&old, &new, &mut delta).unwrap();
    for cut in (0..delta.len()).step_by(7) {
        let mut out = Vec::new();
        let r = apply_bytes(Cursor::new(&old), old.len() as u64, &delta[..cut], &mut out);
        assert!(r.is_err(), "cut at {cut} of {}", delta.len());
        assert!(out.len() <= new.len());
    }
    let mut x = 7u64;
    for _ in 0..400 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut p = delta.clone();
        let at = (x as usize) % p.len();
        p[at] ^= 1 << (x % 8);
        let mut out = Vec::new();
        let declared = Header::parse(&p, p.len() as u64).map(|h| h.result_len).ok();
        let r = apply_bytes(Cursor::new(&old), old.len() as u64, &p, &mut out);
        if let Ok(n) = r {
            // Success means exactly the declared length was written.
            assert_eq!((Some(n), out.len() as u64), (declared, n));
        }
        if let Some(d) = declared {
            assert!(out.len() as u64 <= d);
        }
    }
}

//! Interoperability with bsdiff 4.3 (Debian's `bsdiff`/`bspatch`), an implementation we did
//! not write: its patches go through our streaming applier, and the patches we make (qbsdiff)
//! go through its `bspatch`. Skipped when the tools are missing, unless
//! `RAMPART_REQUIRE_BSDIFF=1` (set by `scripts/test`, which installs them).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Cursor;
use std::path::Path;
use std::process::Command;

fn tools() -> bool {
    let found = ["bsdiff", "bspatch"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !found && std::env::var("RAMPART_REQUIRE_BSDIFF").is_ok_and(|v| v == "1") {
        panic!("bsdiff/bspatch are missing and RAMPART_REQUIRE_BSDIFF=1 (apt-get install bsdiff)");
    }
    found
}

/// Two "releases": code-like bytes with a patched region, an insertion and a new tail.
fn releases() -> (Vec<u8>, Vec<u8>) {
    let mut x = 11u64;
    let old: Vec<u8> = (0..400_000u32)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly repeated structure, some noise: compresses like machine code.
            if i % 16 < 12 {
                (i / 16 % 251) as u8
            } else {
                (x >> 30) as u8
            }
        })
        .collect();
    let mut new = old.clone();
    for b in new.iter_mut().skip(5000).step_by(61).take(2000) {
        *b ^= 0x20;
    }
    new.splice(100_000..100_000, std::iter::repeat_n(7u8, 1500));
    new.truncate(380_000);
    new.extend(old[..9000].iter().rev());
    (old, new)
}

fn run(cmd: &str, args: &[&Path]) {
    let st = Command::new(cmd).args(args).status().unwrap();
    assert!(st.success(), "{cmd} failed");
}

#[test]
fn patches_of_bsdiff_4_3_apply_with_our_applier_and_ours_with_its_bspatch() {
    if !tools() {
        eprintln!("skipped: bsdiff/bspatch not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = releases();
    let (old_p, new_p) = (dir.path().join("old"), dir.path().join("new"));
    std::fs::write(&old_p, &old).unwrap();
    std::fs::write(&new_p, &new).unwrap();

    // bsdiff 4.3 makes, we apply (streaming, from the file).
    let theirs = dir.path().join("theirs.bsdiff");
    run("bsdiff", &[&old_p, &new_p, &theirs]);
    let mut out = Vec::new();
    let n = rampart_delta::apply(Cursor::new(&old), old.len() as u64, &theirs, &mut out).unwrap();
    assert_eq!(n, new.len() as u64);
    assert!(
        out == new,
        "our applier rebuilt another image from bsdiff 4.3's patch"
    );

    // We make (qbsdiff), bspatch 4.3 applies.
    let ours = dir.path().join("ours.bsdiff");
    let mut f = std::fs::File::create(&ours).unwrap();
    rampart_delta::create(&old, &new, &mut f).unwrap();
    drop(f);
    let rebuilt = dir.path().join("rebuilt");
    run("bspatch", &[&old_p, &rebuilt, &ours]);
    assert!(
        std::fs::read(&rebuilt).unwrap() == new,
        "bspatch 4.3 rebuilt another image from ours"
    );

    let (a, b) = (
        std::fs::metadata(&theirs).unwrap().len(),
        std::fs::metadata(&ours).unwrap().len(),
    );
    eprintln!("bsdiff 4.3: {a} bytes, ours: {b} bytes");
    assert!(b <= a * 2, "ours {b} bytes vs bsdiff 4.3's {a}");
}

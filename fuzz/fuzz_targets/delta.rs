//! The streaming BSDIFF40 applier (`rampart-delta`), fed arbitrary patches against a fixed
//! source: it may refuse, never panic, and never writes more than the result length the patch
//! declares (what an ECU checks against the signed length before it starts).
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let source: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
    let declared = rampart_delta::Header::parse(data, data.len() as u64).map(|h| h.result_len);
    // Only patches an ECU would start: the declared result is bounded by the signed length.
    if declared.as_ref().is_ok_and(|&n| n > 1 << 20) {
        return;
    }
    let mut out = Vec::new();
    let r = rampart_delta::apply_bytes(Cursor::new(&source), source.len() as u64, data, &mut out);
    if let Ok(n) = declared {
        assert!(out.len() as u64 <= n);
    }
    if let Ok(written) = r {
        assert_eq!(written, out.len() as u64);
    }
});

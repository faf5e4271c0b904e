//! Any bytes as any role: parsing, verification and typed conversion must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_core::metadata::{Envelope, Root, Snapshot, Targets, Timestamp};

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::parse(data, "fuzz") {
        let _ = env.typed::<Root>("root");
        let _ = env.typed::<Timestamp>("timestamp");
        let _ = env.typed::<Snapshot>("snapshot");
        let _ = env.typed::<Targets>("targets");
    }
    let _ = rampart_core::trusted::TrustedSet::new("fuzz", data, rampart_core::testing::test_now());
});

//! The streaming decryptor on arbitrary ciphertext, fed in arbitrary pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_core::encryption::{ContentKey, Decryptor};

fuzz_target!(|data: &[u8]| {
    let key = ContentKey::from_bytes(&[7u8; 32]).expect("key");
    let mut d = Decryptor::new(&key);
    let mut out = Vec::new();
    let split = data.first().map_or(1, |b| usize::from(*b).max(1));
    for piece in data.chunks(split) {
        if d.update(piece, &mut out).is_err() {
            return;
        }
    }
    let _ = d.finish(&mut out);
});

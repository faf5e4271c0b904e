//! Random bits for what needs them without secrecy: names that must not repeat across
//! processes (a storage lease's holder), jitter that keeps retrying servers apart (the
//! director's signing). Keys and tokens use the crypto library directly.

/// 64 random bits from aws-lc-rs's generator; it fails only if the OS has no randomness,
/// and then the time in nanoseconds is good enough for these uses.
pub(crate) fn u64() -> u64 {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64;
    }
    u64::from_le_bytes(b)
}

//! # rampart-core
//!
//! The verification core of Rampart: everything that decides whether an update may be trusted,
//! with no I/O. Bytes, the current time and the trusted state come in; a verdict ("trusted,
//! here is the new state" or "rejected, because rule X") comes out. No sockets, files, clock
//! or async runtime, so every rule can be unit-tested and fuzzed.
//!
//! * [`canonical`] — canonical JSON exactly as python-tuf signs it, and a strict JSON reader.
//! * [`key`], [`signer`] — TUF keys (ed25519, ECDSA P-256, RSA-PSS), key IDs, signatures.
//! * [`hash`] — lengths and hashes, checked while bytes stream in.
//! * [`metadata`] — TUF 1.0.x roles with unknown fields preserved.
//! * [`trusted`] — the trusted metadata set: each rule of the TUF client workflow (TUF 5.3–5.6).
//! * [`client`] — the client workflow as a sans-IO state machine (refresh, delegation walk).
//! * [`uptane`] — Uptane 2.1 full and partial verification, version reports and manifests.
//! * [`encryption`] — per-ECU image encryption (X25519, HKDF-SHA256, AES-256-GCM STREAM).

pub mod bundle;
pub mod canonical;
pub mod client;
pub mod encryption;
pub mod error;
pub mod hash;
pub mod key;
pub mod metadata;
pub mod rule;
pub mod signer;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod trusted;
pub mod uptane;

pub use error::{Error, Result};

#[cfg(test)]
mod hostile_input_tests;

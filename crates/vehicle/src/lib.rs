//! # rampart-vehicle
//!
//! Rampart's vehicle side (the seed's third phase): the T-BOX primary that talks to the
//! cloud, the in-vehicle protocol the gateway carries, and the secondary ECUs that verify,
//! decrypt and write their A/B slots.
//!
//! * [`primary`] — each cycle: collect signed ECU reports → sign and send the vehicle
//!   manifest → Uptane full verification of both repositories → bounded, resumable downloads
//!   → owner consent → preconditions → hand each image and its metadata to its ECU → report.
//! * [`protocol`] — the length-framed, versioned in-vehicle protocol (see docs/in-vehicle-protocol.md).
//! * [`secondary`] — an ECU: full or partial verification with its own trusted state,
//!   constant-memory decryption, A/B install, signed reports.
//! * [`slots`] — A/B slots and boot counting.
//! * [`consent`] — asking the owner (UNECE R156 7.2 information).

pub mod consent;
pub mod error;
pub mod indicators;
pub mod primary;
pub mod protocol;
pub mod report;
pub mod secondary;
pub mod slots;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod uds;

pub use error::{Error, Result};

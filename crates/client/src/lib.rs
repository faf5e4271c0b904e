//! # rampart-client
//!
//! The thin I/O shell around [`rampart_core::client::Client`]: it moves bytes, the core
//! decides. Three parts:
//!
//! * [`store`] — trusted metadata on disk, written atomically (temp file, fsync, rename,
//!   fsync of the directory), so a power cut never leaves a half-written trusted file;
//! * [`fetch`] — bounded HTTP(S) downloads: a hard byte limit (endless data), a stall timeout
//!   and a minimum average speed (slow retrieval), HTTP Range resume for large images, TLS by
//!   rustls with an optional private CA and client certificate (mTLS);
//! * [`runner`] — executes the state machine's actions against a fetcher and a store, and
//!   downloads targets into place with every hash checked while streaming;
//! * [`writeback`] — large files written back to disk while they are still being written,
//!   so the closing `fsync` does not stall (also used for the ECUs' slots);
//! * [`nudge`] — the MQTT connection of "check in now" nudges (server and vehicle alike).

pub mod diagnose;
pub mod direct;
pub mod error;
pub mod fetch;
pub mod nudge;
pub mod runner;
pub mod store;
pub mod writeback;

pub use direct::SlotFile;
pub use error::{Error, Result};
pub use fetch::{FetchConfig, FetchStatus, HttpFetcher, TlsConfig};
pub use runner::{download_target, run, DownloadOutcome};
pub use store::MetadataStore;
pub use writeback::WriteBehind;

//! # rampart-server
//!
//! Rampart's cloud side (the seed's first phase): the OEM's image repository, the director,
//! the signer and the fleet PKI, behind one HTTPS API (`rampart serve`).
//!
//! * [`repo`] — the image repository as a folder any CDN can serve; stage → sign → commit.
//! * [`director`] — per-vehicle director metadata from the inventory and assignments.
//! * [`campaign`] — staged rollouts: waves, automatic halt, progress from signed reports.
//! * [`db`] — SQLite or PostgreSQL storage; no per-vehicle state in memory.
//! * [`keys`] — signing keys: PKCS#8 files or PKCS#11 tokens behind one trait.
//! * [`records`] — UNECE R156 update records and each vehicle's RXSWIN.
//! * [`pki`], [`tls`] — fleet CA, vehicle certificates, HTTPS with client certificates.

pub mod api;
pub mod audit;
pub mod campaign;
pub mod ceremony;
pub mod config;
pub mod conn;
pub mod console;
pub mod db;
pub mod delta;
pub mod director;
pub mod error;
pub mod keys;
pub mod layout;
mod linger;
pub mod nudge;
pub mod offline;
pub mod ops;
pub mod pki;
mod random;
pub mod records;
pub mod repo;
pub mod revocation;
pub mod serve;
pub mod store;
pub mod tls;
pub mod vsoc;

pub use error::{Error, Result};

//! The legacy path: ECUs that are not Uptane secondaries, flashed by the gateway over UDS
//! (ISO 14229-1) on DoIP (ISO 13400-2), as diagnostic testers flash bootloaders.
//!
//! * [`doip`] — DoIP messages, sans I/O.
//! * [`service`] — UDS services, negative response codes, data identifiers, routines and
//!   the seed/key function.
//! * [`bootloader`] — the ECU's UDS server: sessions, security access, download into the
//!   inactive flash bank, the verify routine (Uptane partial verification of the director's
//!   signed targets) that alone switches banks, reset.
//! * [`entity`] — `rampart uds-ecu`: the bootloader behind a DoIP entity on TCP/UDP 13400.
//! * [`gateway`] — the primary's tester: reads what a legacy ECU runs, flashes it.

pub mod bootloader;
pub mod doip;
pub mod entity;
pub mod gateway;
pub mod service;

pub use entity::{load_config, logical_address_of, run_with, UdsEcuConfig};

#[cfg(test)]
mod tests;

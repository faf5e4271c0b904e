//! The registered keys of vehicles that checked in lately, parsed once, so that a check-in
//! verifies its manifest without reading the vehicle from the database first.
//!
//! Why a copy is safe: what it is used for cannot change. A vehicle's ECUs and their keys are
//! fixed when it is registered (registration refuses a VIN seen before, removed or not, and no
//! request replaces a key). What can change is decided where the check-in is stored, not here:
//! the statement that stores it moves the manifest counter only above the stored one and only
//! for a vehicle still in service, and each ECU report only above its stored counter
//! (`crate::db`). The counters kept here are ones this server read or accepted; the stored
//! ones only grow, so these are never above them, and a manifest refused by these would be
//! refused by the database too. The caller decides any refusal again from a fresh read of the
//! vehicle, which names the rule (a removed vehicle, a replay).
//!
//! Why bounded: a fleet of millions would otherwise be held in memory. The cache is
//! `quick_cache` (a maintained concurrent cache evicting by S3-FIFO, so vehicles that check in
//! once do not push out those that poll).

use std::collections::BTreeMap;
use std::sync::Arc;

use rampart_core::key::{Key, PreparedKey};
use rampart_core::uptane::manifest::{VehicleKeys, VerifiedManifest};

use crate::db::{ReportUpdate, Vehicle};
use crate::error::{Error, Result};

/// Vehicles held by default: about 1 KB each with three ECUs, so about 100 MB when full (the
/// 100,000-vehicle fleet measure's server peak RSS went from 356 to 454 MiB, BENCHMARKS.md).
pub const DEFAULT_CAPACITY: usize = 100_000;

/// What never changes about a registered vehicle, its keys prepared to verify (key IDs
/// computed, material parsed) once when it is read.
#[derive(Debug)]
struct Registered {
    primary_ecu: String,
    primary_key: PreparedKey,
    /// Every registered ECU's key, the primary's own included, by ECU ID.
    keys: BTreeMap<String, PreparedKey>,
}

/// A vehicle as this server knows it: its registered keys, and the counters it last read or
/// accepted (never above the stored ones).
#[derive(Debug, Clone)]
pub(crate) struct Known {
    registered: Arc<Registered>,
    manifest_counter: Option<u64>,
    /// Each ECU's last report counter, in the order of `registered.keys`.
    report_counters: Vec<Option<u64>>,
}

impl Known {
    /// The vehicle as read from the database, its stored keys parsed.
    pub(crate) fn of(vehicle: &Vehicle) -> Result<Known> {
        let mut keys = BTreeMap::new();
        let mut counters = BTreeMap::new();
        let mut primary_key = None;
        for ecu in &vehicle.ecus {
            let key: Key = serde_json::from_value(ecu.public_key.clone())
                .map_err(|e| Error::Database(format!("stored key of {}: {e}", ecu.ecu_id)))?;
            if ecu.ecu_id == vehicle.primary_ecu {
                primary_key = Some(PreparedKey::new(&key));
            }
            keys.insert(ecu.ecu_id.clone(), PreparedKey::new(&key));
            counters.insert(ecu.ecu_id.as_str(), ecu.last_report_counter);
        }
        let primary_key = primary_key.ok_or_else(|| {
            Error::Database(format!(
                "primary ECU {} of {} has no key",
                vehicle.primary_ecu, vehicle.vin
            ))
        })?;
        Ok(Known {
            report_counters: counters.into_values().collect(),
            registered: Arc::new(Registered {
                primary_ecu: vehicle.primary_ecu.clone(),
                primary_key,
                keys,
            }),
            manifest_counter: vehicle.last_manifest_counter,
        })
    }

    /// The keys a manifest of `vin` is verified against.
    pub(crate) fn keys<'a>(&'a self, vin: &'a str) -> VehicleKeys<'a> {
        let r = &self.registered;
        VehicleKeys {
            vin,
            primary_ecu_id: &r.primary_ecu,
            primary_key: &r.primary_key,
            ecu_keys: &r.keys,
        }
    }

    /// The primary ECU's ID.
    pub(crate) fn primary_ecu(&self) -> &str {
        &self.registered.primary_ecu
    }

    /// The last manifest counter accepted, as far as this server knows.
    pub(crate) fn manifest_counter(&self) -> Option<u64> {
        self.manifest_counter
    }

    /// The last report counter of `ecu_id` accepted, as far as this server knows.
    pub(crate) fn report_counter(&self, ecu_id: &str) -> Option<u64> {
        let at = self.registered.keys.keys().position(|id| id == ecu_id)?;
        self.report_counters.get(at).copied().flatten()
    }

    /// This vehicle after a check-in of `verified` whose accepted reports were `reports` was
    /// stored. A report the database dropped (its stored counter was higher) leaves the
    /// counter here lower than the stored one, which is allowed.
    pub(crate) fn after(&self, verified: &VerifiedManifest, reports: &[ReportUpdate]) -> Known {
        let mut next = self.clone();
        let counter = verified.manifest.manifest_counter;
        next.manifest_counter = Some(next.manifest_counter.map_or(counter, |c| c.max(counter)));
        for (id, slot) in self
            .registered
            .keys
            .keys()
            .zip(next.report_counters.iter_mut())
        {
            if let Some(r) = reports.iter().find(|r| &r.ecu_id == id) {
                *slot = Some(slot.map_or(r.report_counter, |c| c.max(r.report_counter)));
            }
        }
        next
    }
}

/// The vehicles this server knows (see the module documentation).
pub(crate) struct KnownVehicles {
    /// `None`: none are kept, every check-in reads its vehicle.
    cache: Option<quick_cache::sync::Cache<String, Known>>,
}

impl std::fmt::Debug for KnownVehicles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownVehicles")
            .field("held", &self.cache.as_ref().map_or(0, |c| c.len()))
            .finish()
    }
}

impl KnownVehicles {
    /// Holds up to `capacity` vehicles (0: none).
    pub(crate) fn new(capacity: usize) -> Self {
        KnownVehicles {
            cache: (capacity > 0).then(|| quick_cache::sync::Cache::new(capacity)),
        }
    }

    /// `vin` as this server knows it, if it does.
    pub(crate) fn get(&self, vin: &str) -> Option<Known> {
        self.cache.as_ref()?.get(vin)
    }

    /// Remembers `vin` as `known`.
    pub(crate) fn put(&self, vin: &str, known: Known) {
        if let Some(cache) = &self.cache {
            cache.insert(vin.to_owned(), known);
        }
    }

    /// Forgets `vin`: its next check-in reads it.
    pub(crate) fn forget(&self, vin: &str) {
        if let Some(cache) = &self.cache {
            cache.remove(vin);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rampart_core::uptane::manifest::VehicleManifest;

    fn known(counters: &[(&str, Option<u64>)]) -> Known {
        let key = Key::new(rampart_core::key::KeyScheme::Ed25519, "00".repeat(32));
        Known {
            registered: Arc::new(Registered {
                primary_ecu: "TBOX".into(),
                primary_key: PreparedKey::new(&key),
                keys: counters
                    .iter()
                    .map(|(id, _)| ((*id).to_owned(), PreparedKey::new(&key)))
                    .collect(),
            }),
            manifest_counter: Some(5),
            report_counters: counters.iter().map(|(_, c)| *c).collect(),
        }
    }

    fn verified(counter: u64) -> VerifiedManifest {
        VerifiedManifest {
            manifest: VehicleManifest {
                type_: "vehicle_manifest".into(),
                vin: "VIN1".into(),
                primary_ecu_id: "TBOX".into(),
                manifest_counter: counter,
                nonce: "00".into(),
                ecu_version_reports: BTreeMap::new(),
                attacks_detected: String::new(),
                update_failures: Vec::new(),
                progress: Vec::new(),
                unrecognized: BTreeMap::new(),
            },
            reports: BTreeMap::new(),
            rejected_reports: Vec::new(),
        }
    }

    fn report(ecu: &str, counter: u64) -> ReportUpdate {
        ReportUpdate {
            ecu_id: ecu.into(),
            installed: crate::db::Installed {
                target: "t".into(),
                length: 1,
                hashes: serde_json::Value::Null,
                release_counter: 0,
            },
            report_counter: counter,
        }
    }

    /// Counters kept must never exceed the stored ones, which only grow: a check-in stored
    /// after a later one (two requests at once) moves nothing back, and an ECU without a
    /// report in it keeps its counter.
    #[test]
    fn counters_only_move_up() {
        let k = known(&[("BCM", None), ("IVI", Some(7)), ("TBOX", Some(3))]);
        let next = k.after(&verified(9), &[report("TBOX", 4), report("BCM", 1)]);
        assert_eq!(next.manifest_counter(), Some(9));
        assert_eq!(next.report_counter("TBOX"), Some(4));
        assert_eq!(next.report_counter("BCM"), Some(1));
        assert_eq!(next.report_counter("IVI"), Some(7));
        assert_eq!(next.report_counter("GW"), None);
        let older = next.after(&verified(6), &[report("TBOX", 2)]);
        assert_eq!(older.manifest_counter(), Some(9));
        assert_eq!(older.report_counter("TBOX"), Some(4));
    }
}

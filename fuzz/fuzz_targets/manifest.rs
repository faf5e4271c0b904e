//! Vehicle manifests as the director receives them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_core::key::{KeyScheme, PreparedKey};
use rampart_core::signer::{InMemorySigner, Signer};
use rampart_core::uptane::manifest::{verify_vehicle_manifest, VehicleKeys};
use std::collections::BTreeMap;
use std::sync::OnceLock;

fn signer() -> &'static InMemorySigner {
    static S: OnceLock<InMemorySigner> = OnceLock::new();
    S.get_or_init(|| InMemorySigner::generate(KeyScheme::Ed25519).expect("key"))
}

fuzz_target!(|data: &[u8]| {
    let s = signer();
    let primary_key = PreparedKey::new(s.public_key());
    let ecu_keys = BTreeMap::from([("TBOX".to_string(), PreparedKey::new(s.public_key()))]);
    let keys = VehicleKeys { vin: "VIN", primary_ecu_id: "TBOX", primary_key: &primary_key, ecu_keys: &ecu_keys };
    let _ = verify_vehicle_manifest(data, &keys);
});

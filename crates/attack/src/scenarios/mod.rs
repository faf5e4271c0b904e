//! The scenarios, one module each. Every scenario documents which attack it models (its
//! Uptane name), what the attacker can do, the control that defeats it and the expected
//! verdict; `rampart attack --help` and the JSON output repeat that.

use futures_util::future::BoxFuture;

use rampart_server::vsoc::Kind;

use crate::{Findings, Harness, Info, Scenario};

mod arbitrary_software;
mod bus_indicator_erasure;
mod compromised_secondary;
mod connection_flood;
mod diagnostic;
mod director_key_compromise;
mod drop_request;
mod eavesdrop;
mod endless_data;
mod freeze;
mod image_online_keys_compromise;
mod in_vehicle_tamper;
mod mix_and_match;
mod offline_bundle;
mod partial_bundle;
mod replayed_manifest;
mod request_flood;
mod rollback;
mod root_rotation;
mod slow_retrieval;

/// Wraps an async scenario function.
macro_rules! scenario {
    ($info:expr, $tls:expr, $f:path) => {
        scenario!($info, $tls, $f, false)
    };
    ($info:expr, $tls:expr, $f:path, $legacy:expr) => {
        Scenario {
            info: $info,
            tls: $tls,
            legacy: $legacy,
            run: |h: Harness| -> BoxFuture<'static, anyhow::Result<Findings>> { Box::pin($f(h)) },
        }
    };
}

/// Every scenario, in the order `--all` runs them.
pub fn all() -> Vec<Scenario> {
    vec![
        scenario!(eavesdrop::INFO, false, eavesdrop::run),
        scenario!(drop_request::INFO, false, drop_request::run),
        scenario!(slow_retrieval::INFO, false, slow_retrieval::run),
        scenario!(freeze::INFO, false, freeze::run),
        scenario!(partial_bundle::INFO, false, partial_bundle::run),
        scenario!(rollback::INFO, false, rollback::run),
        scenario!(endless_data::INFO, false, endless_data::run),
        scenario!(mix_and_match::INFO, false, mix_and_match::run),
        scenario!(arbitrary_software::INFO, false, arbitrary_software::run),
        scenario!(
            director_key_compromise::INFO,
            false,
            director_key_compromise::run
        ),
        scenario!(
            image_online_keys_compromise::INFO,
            false,
            image_online_keys_compromise::run
        ),
        scenario!(root_rotation::INFO, false, root_rotation::run),
        scenario!(
            compromised_secondary::INFO,
            false,
            compromised_secondary::run
        ),
        scenario!(replayed_manifest::INFO, false, replayed_manifest::run),
        scenario!(in_vehicle_tamper::INFO, false, in_vehicle_tamper::run),
        scenario!(
            bus_indicator_erasure::INFO,
            false,
            bus_indicator_erasure::run
        ),
        scenario!(request_flood::INFO, true, request_flood::run),
        scenario!(connection_flood::INFO, true, connection_flood::run),
        scenario!(
            diagnostic::UNAUTHENTICATED,
            false,
            diagnostic::unauthenticated,
            true
        ),
        scenario!(
            diagnostic::BRUTE_FORCE,
            false,
            diagnostic::brute_force,
            true
        ),
        scenario!(diagnostic::REPLAYED, false, diagnostic::replayed, true),
        scenario!(diagnostic::COUNTER, false, diagnostic::wrong_counter, true),
        scenario!(
            diagnostic::INTERRUPTED,
            false,
            diagnostic::interrupted,
            true
        ),
        scenario!(
            offline_bundle::OTHER_VEHICLE,
            false,
            offline_bundle::other_vehicle
        ),
        scenario!(offline_bundle::EXPIRED, false, offline_bundle::expired),
        scenario!(offline_bundle::TAMPERED, false, offline_bundle::tampered),
        scenario!(offline_bundle::ROLLBACK, false, offline_bundle::rollback),
        scenario!(offline_bundle::MIXED, false, offline_bundle::mixed),
        scenario!(offline_bundle::TRUNCATED, false, offline_bundle::truncated),
        scenario!(
            offline_bundle::TRAVERSAL,
            false,
            offline_bundle::path_traversal
        ),
    ]
}

/// The scenario called `name`.
pub fn find(name: &str) -> Option<Scenario> {
    all().into_iter().find(|s| s.info.name == name)
}

/// Descriptions of every scenario.
pub fn infos() -> Vec<Info> {
    all().into_iter().map(|s| s.info).collect()
}

/// The V-SOC incident each attack should raise (one of the kinds is enough), in a lab of one
/// vehicle ([`crate::detection::lab_thresholds`]: one vehicle is the whole fleet). Empty:
/// the attack leaves nothing to detect (eavesdropping on encrypted images).
pub fn expected_incidents(name: &str) -> &'static [Kind] {
    use Kind::{AddressAbuse, FleetAttack, KeyCompromise, VehicleRejecting};
    match name {
        // Passive: the images are encrypted per ECU, the attacker learns nothing and the
        // fleet sees nothing to report.
        "eavesdrop" => &[],
        "request-flood" | "connection-flood" => &[AddressAbuse],
        "rollback" => &[FleetAttack, VehicleRejecting],
        // Metadata signed by keys the vehicles do not trust (the attacker's own, or a
        // compromised online key's outside its authority).
        "arbitrary-software" | "image-online-keys-compromise" | "root-rotation" => {
            &[KeyCompromise, FleetAttack]
        }
        // Everything else: the attack rule the vehicle (or the server) names, from the
        // whole fleet of the lab.
        _ => &[FleetAttack],
    }
}

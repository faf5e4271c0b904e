//! What tests of the vehicle side share, here and in the crates that drive it (the CLI's
//! power-cut test, the lab): one ECU's files and configuration, repeatable image bytes, a
//! seeded random generator. Behind the `testing` feature: not part of the product's API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use rampart_core::key::KeyScheme;
use rampart_core::signer::InMemorySigner;

use crate::secondary::{EcuConfig, LinkLimits, Verification};

/// The vehicle of the tests.
pub const VIN: &str = "VIN00000000000001";
/// Its ECU.
pub const ECU: &str = "IVI-1";
/// The ECU's hardware ID.
pub const HW: &str = "ivi-x";

/// A partial-verification ECU ([`ECU`] of [`VIN`]) in `dir`: a fresh signing key (0600, as
/// the ECU demands), the director root it trusts, slot A holding a factory image; its
/// configuration. Panics on I/O errors (a test's set-up).
pub fn ecu_config(dir: &Path, director_root: &[u8], limits: LinkLimits) -> EcuConfig {
    std::fs::create_dir_all(dir).unwrap();
    let key = InMemorySigner::generate(KeyScheme::Ed25519).unwrap();
    std::fs::write(dir.join("key.pem"), key.to_pkcs8_pem()).unwrap();
    std::fs::set_permissions(
        dir.join("key.pem"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(dir.join("director-root.json"), director_root).unwrap();
    std::fs::write(dir.join("slot-a"), b"factory").unwrap();
    EcuConfig {
        limits,
        ..EcuConfig::in_folder(dir, ECU, HW, VIN, Verification::Partial)
    }
}

/// Deterministic pseudo-random image bytes: the same `seed` and `len` always give the same
/// image (so runs are comparable).
pub fn image_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = rampart_core::hash::sha256(seed.as_bytes());
    while out.len() < len {
        out.extend_from_slice(&block);
        block = rampart_core::hash::sha256(&block);
    }
    out.truncate(len);
    out
}

/// A director for tests of ECUs that verify its targets (partial verification, the legacy
/// path's verify routine): its root, and targets it signs for one vehicle.
pub struct TestDirector {
    repo: rampart_core::testing::TestRepo,
}

impl Default for TestDirector {
    fn default() -> Self {
        TestDirector::new()
    }
}

impl TestDirector {
    /// A director whose metadata is valid for a year from now.
    pub fn new() -> TestDirector {
        TestDirector {
            repo: rampart_core::testing::TestRepo::new(chrono::Utc::now()),
        }
    }

    /// Its root version 1 (what an ECU is provisioned with).
    pub fn root(&self) -> Vec<u8> {
        self.repo.initial_root()
    }

    /// Signs the next version of the director targets for `vin`, assigning `target` (whose
    /// length and hashes are those of `image`) to `ecu` with `hardware_id` and
    /// `release_counter`; returns the signed document's bytes.
    pub fn assign(
        &mut self,
        vin: &str,
        ecu: &str,
        hardware_id: &str,
        target: &str,
        image: &[u8],
        release_counter: u64,
    ) -> Vec<u8> {
        self.assign_with_delta(vin, ecu, hardware_id, target, image, release_counter, None)
    }

    /// [`TestDirector::assign`], offering the ECU `delta` in place of the whole image.
    #[allow(clippy::too_many_arguments)]
    pub fn assign_with_delta(
        &mut self,
        vin: &str,
        ecu: &str,
        hardware_id: &str,
        target: &str,
        image: &[u8],
        release_counter: u64,
        delta: Option<rampart_core::uptane::DeltaOffer>,
    ) -> Vec<u8> {
        use rampart_core::metadata::TargetFile;
        use rampart_core::uptane::{DirectorCustom, EcuAssignment, DIRECTOR_VEHICLE_FIELD};
        use std::collections::BTreeMap;
        let file = TargetFile {
            length: image.len() as u64,
            hashes: rampart_core::hash::compute_hashes(image),
            custom: Some(
                DirectorCustom {
                    release_counter,
                    maintenance_window: None,
                    ecus: BTreeMap::from([(
                        ecu.to_owned(),
                        EcuAssignment {
                            hardware_id: hardware_id.into(),
                            encryption: None,
                            delta,
                        },
                    )]),
                }
                .to_value(),
            ),
            unrecognized: BTreeMap::new(),
        };
        let targets = self.repo.targets.get_mut("targets").unwrap();
        targets.targets.clear();
        targets.targets.insert(target.into(), file);
        targets.unrecognized.insert(
            DIRECTOR_VEHICLE_FIELD.into(),
            serde_json::json!({ "vin": vin }),
        );
        self.repo.bump("targets");
        self.repo.publish();
        let version = self.repo.targets.get("targets").unwrap().version;
        self.repo
            .metadata
            .get(&format!("{version}.targets.json"))
            .unwrap()
            .clone()
    }
}

/// The number in environment variable `var`, if it holds one (trial counts, seeds).
pub fn env_u64(var: &str) -> Option<u64> {
    std::env::var(var).ok().and_then(|v| v.parse().ok())
}

/// A seed for a randomised test: `POWER_CUT_SEED` when set (to repeat a run), else from the
/// clock. The test prints it.
pub fn power_cut_seed() -> u64 {
    env_u64("POWER_CUT_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    })
}

/// xorshift64*: enough randomness to place power cuts, and repeatable from a printed seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced by 1: xorshift would stay at 0).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_bytes_repeat_and_differ_by_seed() {
        assert_eq!(image_bytes("a", 100), image_bytes("a", 100));
        assert_ne!(image_bytes("a", 100), image_bytes("b", 100));
        assert_eq!(image_bytes("a", 70).len(), 70);
    }

    #[test]
    fn rng_repeats_from_its_seed_and_stays_below_the_bound() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..100 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            assert!(x < 10);
        }
        assert_ne!(Rng::new(0).next_u64(), 0);
    }
}

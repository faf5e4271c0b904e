//! What the vehicle crate's integration tests share: one ECU's files and configuration, and
//! the agent binary to run it with.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rampart_core::key::KeyScheme;
use rampart_core::signer::InMemorySigner;
use rampart_vehicle::secondary::{EcuConfig, LinkLimits, Verification};
use rampart_vehicle::slots::SlotConfig;

/// The vehicle of the tests.
pub(crate) const VIN: &str = "VIN00000000000001";
/// Its ECU.
pub(crate) const ECU: &str = "IVI-1";
/// The ECU's hardware ID.
pub(crate) const HW: &str = "ivi-x";

/// The agent binary: `RAMPART_AGENT` if set (e.g. an older build, to see a test fail
/// against it), else the one cargo built.
pub(crate) fn agent() -> PathBuf {
    std::env::var_os("RAMPART_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rampart-agent")))
}

/// A partial-verification ECU in `dir`: a fresh signing key (0600, as the ECU demands), the
/// director root it trusts, slot A holding a factory image; its configuration.
pub(crate) fn ecu_config(dir: &Path, director_root: &[u8], limits: LinkLimits) -> EcuConfig {
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
        ecu_id: ECU.into(),
        hardware_id: HW.into(),
        vin: VIN.into(),
        listen: "127.0.0.1:0".into(),
        key: dir.join("key.pem"),
        encryption_key: None,
        verification: Verification::Partial,
        director_root: dir.join("director-root.json"),
        image_root: None,
        state_dir: dir.join("state"),
        slots: SlotConfig {
            slot_a: dir.join("slot-a"),
            slot_b: dir.join("slot-b"),
            boot_control: dir.join("boot-control.json"),
            max_boot_attempts: 2,
            health_check: None,
        },
        factory_image: "factory".into(),
        limits,
    }
}

/// Waits (up to 20 s) for an ECU process to publish its listening address in `path`.
pub(crate) fn wait_for_address(path: &Path) -> SocketAddr {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(addr) = text.trim().parse() {
                return addr;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("ECU did not publish its address in {}", path.display());
}

//! What the vehicle crate's integration tests share: one ECU's files and configuration, and
//! the agent binary to run it with.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[allow(unused_imports)] // each test file uses some of them
pub(crate) use rampart_vehicle::testing::{ecu_config, ECU, HW, VIN};

/// The agent binary: `RAMPART_AGENT` if set (e.g. an older build, to see a test fail
/// against it), else the one cargo built.
pub(crate) fn agent() -> PathBuf {
    std::env::var_os("RAMPART_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rampart-agent")))
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

//! The scenarios, one module each. Every scenario documents which attack it models (its
//! Uptane name), what the attacker can do, the control that defeats it and the expected
//! verdict; `rampart attack --help` and the JSON output repeat that.

use futures_util::future::BoxFuture;

use crate::{Findings, Harness, Info, Scenario};

mod arbitrary_software;

/// Wraps an async scenario function.
macro_rules! scenario {
    ($info:expr, $tls:expr, $f:path) => {
        Scenario {
            info: $info,
            tls: $tls,
            run: |h: Harness| -> BoxFuture<'static, anyhow::Result<Findings>> { Box::pin($f(h)) },
        }
    };
}

/// Every scenario, in the order `--all` runs them.
pub fn all() -> Vec<Scenario> {
    vec![scenario!(
        arbitrary_software::INFO,
        false,
        arbitrary_software::run
    )]
}

/// The scenario called `name`.
pub fn find(name: &str) -> Option<Scenario> {
    all().into_iter().find(|s| s.info.name == name)
}

/// Descriptions of every scenario.
pub fn infos() -> Vec<Info> {
    all().into_iter().map(|s| s.info).collect()
}

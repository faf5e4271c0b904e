//! Did the V-SOC see it? After a scenario, the V-SOC's correlation rules
//! (`rampart_server::vsoc::rules`) run over the security events the scenario left in its
//! lab's database, with thresholds for a lab of one vehicle, and the incident kinds they find
//! are compared with the ones the attack should raise ([`crate::scenarios::expected_incidents`]).

use chrono::{DateTime, Utc};
use rampart_server::config::Config;
use rampart_server::db::Db;
use rampart_server::layout::Layout;
use rampart_server::vsoc::{rules, Kind, Thresholds};
use serde::Serialize;

/// What the V-SOC made of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentCheck {
    /// Incident kinds the attack should raise (one of them is enough; empty: none expected).
    pub expected: Vec<&'static str>,
    /// What the rules found, as `kind: subject`.
    pub found: Vec<String>,
    /// Whether one of the expected kinds was found (or none was expected).
    pub ok: bool,
}

/// The thresholds of a lab of one vehicle: one vehicle is the whole fleet.
pub fn lab_thresholds() -> Thresholds {
    Thresholds {
        window_secs: 24 * 3600,
        fleet_vehicles: 1,
        vehicle_rejections: 3,
        address_events: 10,
        address_floods: 1,
        key_vehicles: 1,
        silent_after_secs: 24 * 3600,
    }
}

/// Runs the rules over the events of `layout`'s database since `since`.
pub async fn check(
    layout: &Layout,
    since: DateTime<Utc>,
    expected: &[Kind],
) -> anyhow::Result<IncidentCheck> {
    let config = Config::load(layout)?;
    let db = Db::connect(&config.database_url(layout)).await?;
    let events = db
        .events_since(
            &since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            10_000,
        )
        .await?;
    let findings = rules::correlate(&events, &[], &lab_thresholds(), Utc::now());
    let found: Vec<String> = findings
        .iter()
        .map(|f| format!("{}: {}", f.kind.as_str(), f.subject))
        .collect();
    let ok = expected.is_empty() || findings.iter().any(|f| expected.contains(&f.kind));
    Ok(IncidentCheck {
        expected: expected.iter().map(|k| k.as_str()).collect(),
        found,
        ok,
    })
}

//! The correlation rules, pure: from the security events of a time window (and the campaign
//! members that stopped checking in), the incidents the fleet shows. No I/O, no clock: the
//! engine ([`super`]) reads, calls [`correlate`] and stores; tests feed events directly.
//!
//! | kind | fires when | subject |
//! |---|---|---|
//! | `fleet-attack` | one attack rule reported by or about ≥ `fleet_vehicles` vehicles | the rule |
//! | `vehicle-rejecting` | one vehicle rejected metadata or images ≥ `vehicle_rejections` times | the VIN |
//! | `address-abuse` | certificate refusals or rate limiting from one address ≥ `address_events` times | the address |
//! | `key-compromise` | signature failures on one repository's metadata from ≥ `key_vehicles` vehicles | `director` or `image` |
//! | `silent-vehicle` | a vehicle instructed by a running campaign has not checked in for `silent_after_secs` | the VIN |
//!
//! Occurrences are counted with each event's `count` (repeats are stored once, counted).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use rampart_core::rule::Rule;
use serde::{Deserialize, Serialize};

use crate::db::SecurityEvent;

/// Thresholds of the correlation rules (`[vsoc]` in `rampart.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Thresholds {
    /// The window the rules look at (seconds): events last seen within it count.
    pub window_secs: u64,
    /// Vehicles reporting the same attack rule that make a fleet incident.
    pub fleet_vehicles: usize,
    /// Rejections of metadata or images by one vehicle that make a vehicle incident.
    pub vehicle_rejections: u64,
    /// Certificate or identity refusals of one address that make an incident.
    pub address_events: u64,
    /// Flood episodes of one address (each `rate-limited` or `connection-flood` event is one
    /// episode: the server records one per bucket emptied or cap hit, not one per request)
    /// that make an incident.
    pub address_floods: u64,
    /// Vehicles reporting signature failures on one repository's metadata that make a
    /// suspected key compromise.
    pub key_vehicles: usize,
    /// A vehicle instructed by a running campaign and silent this long makes an incident.
    pub silent_after_secs: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            window_secs: 900,
            fleet_vehicles: 3,
            vehicle_rejections: 5,
            address_events: 50,
            address_floods: 3,
            key_vehicles: 2,
            silent_after_secs: 6 * 3600,
        }
    }
}

/// What an incident is about.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// One attack rule across vehicles: a hostile mirror, a bad release.
    FleetAttack,
    /// One vehicle rejecting metadata or images again and again.
    VehicleRejecting,
    /// Certificate refusals or rate limiting from one address.
    AddressAbuse,
    /// Signature failures on one repository's metadata across vehicles.
    KeyCompromise,
    /// A vehicle in a running campaign that stopped checking in.
    SilentVehicle,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 5] = [
        Kind::FleetAttack,
        Kind::VehicleRejecting,
        Kind::AddressAbuse,
        Kind::KeyCompromise,
        Kind::SilentVehicle,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::FleetAttack => "fleet-attack",
            Kind::VehicleRejecting => "vehicle-rejecting",
            Kind::AddressAbuse => "address-abuse",
            Kind::KeyCompromise => "key-compromise",
            Kind::SilentVehicle => "silent-vehicle",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// How bad.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth a look.
    Low,
    /// One vehicle or one address.
    Medium,
    /// Across the fleet.
    High,
    /// The keys themselves.
    Critical,
}

impl Severity {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Severity> {
        [
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// Rules about the identity or the rate of a client: an address's business, not a vehicle's.
pub const ADDRESS_RULES: [Rule; 7] = [
    Rule::ConnectionFlood,
    Rule::ClientCertificateRequired,
    Rule::VinMismatch,
    Rule::CertificateRevoked,
    Rule::ClientCertificateRefused,
    Rule::RateLimited,
    Rule::UnknownVehicle,
];

/// Flood rules: each event is one episode of an address over a limit.
pub const FLOOD_RULES: [Rule; 2] = [Rule::RateLimited, Rule::ConnectionFlood];

/// Signature rules: across vehicles, a key that signs what it should not.
pub const SIGNATURE_RULES: [Rule; 3] = [Rule::BadSignature, Rule::Threshold, Rule::BadKey];

/// Whether `e` is a vehicle refusing the signatures of repository metadata (not the server
/// refusing a manifest's, nor a vehicle refusing a manifest receipt's).
fn metadata_signature_refused(e: &SecurityEvent) -> bool {
    e.source == "vehicle" && is(&e.rule, &SIGNATURE_RULES) && !e.detail.contains("receipt")
}

/// Rules that say metadata or an image was refused (TUF and Uptane checks).
pub const METADATA_RULES: [Rule; 27] = [
    Rule::Malformed,
    Rule::WrongType,
    Rule::SpecVersion,
    Rule::Expired,
    Rule::Rollback,
    Rule::EqualVersion,
    Rule::VersionMismatch,
    Rule::Threshold,
    Rule::HashMismatch,
    Rule::LengthMismatch,
    Rule::EndlessData,
    Rule::NoSupportedHash,
    Rule::BadKey,
    Rule::BadSignature,
    Rule::MissingRole,
    Rule::DelegationLimit,
    Rule::UnsafeName,
    Rule::DirectorDelegates,
    Rule::DuplicateEcu,
    Rule::EcuNotInVehicle,
    Rule::MissingCustom,
    Rule::HardwareIdMismatch,
    Rule::DirectorImageMismatch,
    Rule::ReleaseCounterDecreased,
    Rule::WrongVehicle,
    Rule::DecryptionFailed,
    Rule::Truncated,
];

/// Rules that are not attacks on their own (operations, administration, our own halts).
const NOT_ATTACKS: [Rule; 11] = [
    Rule::Database,
    Rule::BadRequest,
    Rule::Conflict,
    Rule::Unauthorized,
    Rule::Forbidden,
    Rule::VehicleRemoved,
    Rule::CampaignHalted,
    Rule::Transport,
    Rule::Io,
    Rule::EcuUnreachable,
    Rule::BootFailed,
];

fn is(rule: &str, list: &[Rule]) -> bool {
    list.iter().any(|r| r.as_str() == rule)
}

/// A campaign member the director is waiting for.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    /// Vehicle.
    pub vin: String,
    /// Campaign.
    pub campaign: String,
    /// When it was instructed.
    pub instructed_at: DateTime<Utc>,
    /// Its last accepted check-in.
    pub last_seen: Option<DateTime<Utc>>,
}

/// An incident the rules see.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// What about.
    pub kind: Kind,
    /// Which rule, vehicle, address or repository.
    pub subject: String,
    /// How bad.
    pub severity: Severity,
    /// One line.
    pub title: String,
    /// What the rule saw.
    pub detail: String,
    /// What to do (a command), if there is a runbook.
    pub runbook: Option<String>,
    /// IDs of the events behind it.
    pub events: Vec<i64>,
    /// Vehicles affected.
    pub vins: BTreeSet<String>,
    /// The newest evidence: an incident resolved after it is not opened again for it.
    pub newest: DateTime<Utc>,
}

fn time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn last_at(e: &SecurityEvent) -> DateTime<Utc> {
    time(&e.last_at)
        .or_else(|| time(&e.at))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Which repository's metadata a signature failure is about, from its detail.
pub fn repository_of(detail: &str) -> &'static str {
    let d = detail.to_ascii_lowercase();
    if d.contains("director") {
        "director"
    } else {
        "image"
    }
}

/// The rotation command for a repository's keys (in the incident, for the analyst).
fn rotation_runbook(repository: &str) -> String {
    format!(
        "rampart rotate --repository {repository} --role targets   # then snapshot and timestamp; \
         root too if it signed (docs/operations.md, key rotation)"
    )
}

/// A group of events under construction.
#[derive(Default)]
struct Group<'a> {
    events: Vec<&'a SecurityEvent>,
    vins: BTreeSet<String>,
    occurrences: u64,
}

impl<'a> Group<'a> {
    fn add(&mut self, e: &'a SecurityEvent) {
        self.events.push(e);
        if let Some(v) = &e.vin {
            self.vins.insert(v.clone());
        }
        self.occurrences += e.count.max(1);
    }

    fn finding(
        &self,
        kind: Kind,
        subject: String,
        severity: Severity,
        title: String,
        detail: String,
        runbook: Option<String>,
    ) -> Finding {
        Finding {
            kind,
            subject,
            severity,
            title,
            detail,
            runbook,
            events: self.events.iter().map(|e| e.id).collect(),
            vins: self.vins.clone(),
            newest: self
                .events
                .iter()
                .map(|e| last_at(e))
                .max()
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        }
    }
}

/// The incidents `events` (those of the window) and `waiting` show at `now`.
pub fn correlate(
    events: &[SecurityEvent],
    waiting: &[Waiting],
    t: &Thresholds,
    now: DateTime<Utc>,
) -> Vec<Finding> {
    let since = now - chrono::Duration::seconds(i64::try_from(t.window_secs).unwrap_or(i64::MAX));
    let recent: Vec<&SecurityEvent> = events.iter().filter(|e| last_at(e) >= since).collect();
    let mut out = Vec::new();

    // Signature failures by repository, across vehicles.
    let mut signatures: BTreeMap<&'static str, Group> = BTreeMap::new();
    // Attack rules across vehicles (signature rules have their own incident).
    let mut by_rule: BTreeMap<&str, Group> = BTreeMap::new();
    // Metadata refusals per vehicle.
    let mut by_vehicle: BTreeMap<&str, Group> = BTreeMap::new();
    // Identity and rate refusals per address.
    let mut by_address: BTreeMap<String, Group> = BTreeMap::new();
    for e in &recent {
        let rule = e.rule.as_str();
        if is(rule, &ADDRESS_RULES) {
            if let Some(ip) = e.remote.as_deref().and_then(crate::db::remote_ip) {
                by_address.entry(ip.to_string()).or_default().add(e);
            }
            continue;
        }
        if is(rule, &NOT_ATTACKS) {
            continue;
        }
        if metadata_signature_refused(e) && e.vin.is_some() {
            signatures
                .entry(repository_of(&e.detail))
                .or_default()
                .add(e);
        } else if e.vin.is_some() {
            by_rule.entry(rule).or_default().add(e);
        }
        if is(rule, &METADATA_RULES) {
            if let Some(vin) = e.vin.as_deref() {
                by_vehicle.entry(vin).or_default().add(e);
            }
        }
    }

    for (repository, g) in &signatures {
        if g.vins.len() >= t.key_vehicles.max(1) {
            out.push(g.finding(
                Kind::KeyCompromise,
                (*repository).to_owned(),
                Severity::Critical,
                format!(
                    "suspected key compromise: {} vehicles refused {repository} metadata signatures",
                    g.vins.len()
                ),
                format!(
                    "{} signature failures ({}) on {repository} repository metadata from {} vehicles \
                     within {} s: metadata signed by a key that is not (or no longer) trusted is \
                     reaching the fleet",
                    g.occurrences,
                    rules_of(&g.events),
                    g.vins.len(),
                    t.window_secs
                ),
                Some(rotation_runbook(repository)),
            ));
        }
    }
    for (rule, g) in &by_rule {
        if g.vins.len() >= t.fleet_vehicles.max(1) {
            out.push(g.finding(
                Kind::FleetAttack,
                (*rule).to_owned(),
                Severity::High,
                format!("{rule} reported by {} vehicles", g.vins.len()),
                format!(
                    "{} occurrences of {rule} from {} vehicles within {} s: a hostile mirror or \
                     network, or a bad release",
                    g.occurrences,
                    g.vins.len(),
                    t.window_secs
                ),
                None,
            ));
        }
    }
    for (vin, g) in &by_vehicle {
        if g.occurrences >= t.vehicle_rejections.max(1) {
            out.push(g.finding(
                Kind::VehicleRejecting,
                (*vin).to_owned(),
                Severity::Medium,
                format!("{vin} rejected metadata or images {} times", g.occurrences),
                format!(
                    "{} rejections ({}) by or about {vin} within {} s: something between it and \
                     the servers is hostile, or the vehicle is",
                    g.occurrences,
                    rules_of(&g.events),
                    t.window_secs
                ),
                Some(format!(
                    "quarantine it from the console (V-SOC, incident) or: rampart admin quarantine --vin {vin} --reason \"…\""
                )),
            ));
        }
    }
    for (address, g) in &by_address {
        let floods: u64 = g
            .events
            .iter()
            .filter(|e| is(&e.rule, &FLOOD_RULES))
            .map(|e| e.count.max(1))
            .sum();
        let refusals = g.occurrences - floods;
        if refusals >= t.address_events.max(1) || floods >= t.address_floods.max(1) {
            out.push(g.finding(
                Kind::AddressAbuse,
                address.clone(),
                Severity::Medium,
                format!("{} refusals of {address}", g.occurrences),
                format!(
                    "{refusals} certificate or identity refusals and {floods} flood episodes ({}) \
                     of client address {address} within {} s{}",
                    rules_of(&g.events),
                    t.window_secs,
                    if g.vins.is_empty() {
                        String::new()
                    } else {
                        format!(", naming {} VINs", g.vins.len())
                    }
                ),
                Some(format!("block {address} at the firewall or load balancer")),
            ));
        }
    }

    let silent_for =
        chrono::Duration::seconds(i64::try_from(t.silent_after_secs).unwrap_or(i64::MAX));
    let mut silent: BTreeMap<&str, (&Waiting, DateTime<Utc>)> = BTreeMap::new();
    for w in waiting {
        let heard = w
            .last_seen
            .map_or(w.instructed_at, |s| s.max(w.instructed_at));
        if now - heard >= silent_for {
            let entry = silent.entry(w.vin.as_str()).or_insert((w, heard));
            entry.1 = entry.1.max(heard);
        }
    }
    for (vin, (w, heard)) in silent {
        out.push(Finding {
            kind: Kind::SilentVehicle,
            subject: vin.to_owned(),
            severity: Severity::Low,
            title: format!("{vin} stopped checking in during campaign {}", w.campaign),
            detail: format!(
                "{vin} was instructed by campaign {} at {} and has not checked in since {}",
                w.campaign,
                w.instructed_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                heard.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            runbook: None,
            events: Vec::new(),
            vins: [vin.to_owned()].into(),
            newest: heard,
        });
    }
    out
}

fn rules_of(events: &[&SecurityEvent]) -> String {
    let mut rules: BTreeMap<&str, u64> = BTreeMap::new();
    for e in events {
        *rules.entry(&e.rule).or_default() += e.count.max(1);
    }
    rules
        .iter()
        .map(|(r, n)| format!("{r} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn event(id: i64, rule: &str, vin: Option<&str>, remote: &str, secs: i64) -> SecurityEvent {
        let t = at(secs).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        SecurityEvent {
            id,
            at: t.clone(),
            source: "vehicle".into(),
            rule: rule.into(),
            vin: vin.map(str::to_owned),
            ecu_id: None,
            remote: Some(remote.into()),
            detail: format!("{rule}: something"),
            count: 1,
            last_at: t,
        }
    }

    fn kinds(f: &[Finding]) -> Vec<(Kind, String)> {
        f.iter().map(|f| (f.kind, f.subject.clone())).collect()
    }

    #[test]
    fn the_same_rule_from_enough_vehicles_is_a_fleet_incident_and_fewer_is_not() {
        let t = Thresholds::default();
        let two: Vec<_> = (0..2)
            .map(|i| event(i, "hash-mismatch", Some(&format!("V{i}")), "10.0.0.1:1", 0))
            .collect();
        assert!(correlate(&two, &[], &t, at(10)).is_empty());
        let mut three = two.clone();
        three.push(event(3, "hash-mismatch", Some("V3"), "10.0.0.2:1", 5));
        let f = correlate(&three, &[], &t, at(10));
        assert_eq!(kinds(&f), vec![(Kind::FleetAttack, "hash-mismatch".into())]);
        assert_eq!(f[0].vins.len(), 3);
        assert_eq!(f[0].events, vec![0, 1, 3]);
        // Out of the window: nothing.
        assert!(correlate(&three, &[], &t, at(10_000)).is_empty());
    }

    #[test]
    fn one_vehicle_rejecting_again_and_again_is_a_vehicle_incident() {
        let t = Thresholds::default();
        let mut e = event(1, "rollback", Some("V1"), "10.0.0.1:1", 0);
        e.count = 4;
        assert!(correlate(std::slice::from_ref(&e), &[], &t, at(1)).is_empty());
        e.count = 5;
        let f = correlate(&[e], &[], &t, at(1));
        assert_eq!(kinds(&f), vec![(Kind::VehicleRejecting, "V1".into())]);
        assert!(f[0].runbook.as_deref().unwrap().contains("quarantine"));
    }

    #[test]
    fn certificate_refusals_and_flood_episodes_from_one_address_make_an_incident() {
        let t = Thresholds {
            address_events: 10,
            address_floods: 3,
            ..Thresholds::default()
        };
        // Refusals of identity: counted per request.
        let mut cert = event(
            2,
            "client-certificate-required",
            Some("V9"),
            "192.0.2.7:4001",
            0,
        );
        cert.count = 9;
        assert!(correlate(std::slice::from_ref(&cert), &[], &t, at(1)).is_empty());
        cert.count = 10;
        let other = event(3, "rate-limited", None, "192.0.2.8:4000", 0);
        let f = correlate(&[cert, other.clone()], &[], &t, at(1));
        assert_eq!(kinds(&f), vec![(Kind::AddressAbuse, "192.0.2.7".into())]);
        // Flood episodes: one is a burst, three from one address an incident.
        assert!(correlate(std::slice::from_ref(&other), &[], &t, at(1)).is_empty());
        let mut floods = other;
        floods.count = 2;
        let conn = event(4, "connection-flood", None, "192.0.2.8", 0);
        let f = correlate(&[floods, conn], &[], &t, at(1));
        assert_eq!(kinds(&f), vec![(Kind::AddressAbuse, "192.0.2.8".into())]);
    }

    #[test]
    fn signature_failures_across_vehicles_suspect_the_key_and_give_the_rotation() {
        let t = Thresholds::default();
        let mut e1 = event(1, "bad-signature", Some("V1"), "10.0.0.1:1", 0);
        e1.detail = "bad-signature: director targets: signature by key ab does not verify".into();
        let mut e2 = event(2, "threshold", Some("V2"), "10.0.0.2:1", 0);
        e2.detail = "threshold: director targets: 0 valid signature(s)".into();
        let f = correlate(&[e1.clone(), e2], &[], &t, at(1));
        assert_eq!(kinds(&f), vec![(Kind::KeyCompromise, "director".into())]);
        assert_eq!(f[0].severity, Severity::Critical);
        assert!(f[0]
            .runbook
            .as_deref()
            .unwrap()
            .contains("rampart rotate --repository director"));
        // One vehicle: not (yet) a key.
        assert!(correlate(std::slice::from_ref(&e1), &[], &t, at(1)).is_empty());
        // The server refusing manifests' signatures is not the repositories' keys: forged
        // manifests, a fleet attack.
        let forged: Vec<SecurityEvent> = ["V1", "V2", "V3"]
            .into_iter()
            .map(|vin| {
                let mut e = e1.clone();
                e.source = "server".into();
                e.vin = Some(vin.into());
                e
            })
            .collect();
        let f = correlate(&forged, &[], &t, at(1));
        assert_eq!(kinds(&f), vec![(Kind::FleetAttack, "bad-signature".into())]);
        // Nor is a vehicle refusing a manifest receipt's signature.
        let mut receipt = e1;
        receipt.detail = "threshold: manifest receipt refused: 0 valid signature(s)".into();
        assert!(correlate(&[receipt], &[], &t, at(1)).is_empty());
    }

    #[test]
    fn a_vehicle_silent_past_the_limit_during_a_campaign_is_reported_once() {
        let t = Thresholds::default();
        let w = |seen: Option<i64>| Waiting {
            vin: "V1".into(),
            campaign: "c1".into(),
            instructed_at: at(0),
            last_seen: seen.map(at),
        };
        let limit = i64::try_from(t.silent_after_secs).unwrap();
        assert!(correlate(&[], &[w(None)], &t, at(limit - 1)).is_empty());
        let f = correlate(&[], &[w(None), w(Some(-5))], &t, at(limit));
        assert_eq!(kinds(&f), vec![(Kind::SilentVehicle, "V1".into())]);
        // It checked in after the instruction: the clock restarts there.
        assert!(correlate(&[], &[w(Some(100))], &t, at(limit)).is_empty());
    }

    #[test]
    fn operational_rules_make_no_incident() {
        let t = Thresholds {
            fleet_vehicles: 1,
            ..Thresholds::default()
        };
        let e: Vec<_> = (0..10)
            .map(|i| event(i, "boot-failed", Some(&format!("V{i}")), "10.0.0.1:1", 0))
            .collect();
        assert!(correlate(&e, &[], &t, at(1)).is_empty());
    }
}

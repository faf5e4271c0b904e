//! The decisions of a campaign, without I/O: how its vehicles split into waves, what one
//! member's assignment says about its progress, and whether a wave has met its criteria,
//! breached them, or must wait. The engine ([`super`]) reads the database, asks here, and
//! writes what was decided.

use std::collections::BTreeMap;

use rampart_core::hash::sha256;
use rampart_core::rule::Rule;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a wave must show before the next one starts, and what halts the campaign.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Criteria {
    /// The next wave starts once at least this share (%) of a wave's vehicles installed.
    #[serde(default = "default_min_success")]
    pub min_success_pct: f64,
    /// The campaign halts by itself once more than this share (%) of a started wave's
    /// vehicles failed or rolled back.
    #[serde(default = "default_max_failure")]
    pub max_failure_pct: f64,
    /// Seconds to wait after a wave met its success criterion before the next one starts.
    #[serde(default = "default_soak")]
    pub soak_seconds: u64,
}

fn default_min_success() -> f64 {
    95.0
}
fn default_max_failure() -> f64 {
    5.0
}
fn default_soak() -> u64 {
    600
}

impl Default for Criteria {
    fn default() -> Self {
        Criteria {
            min_success_pct: default_min_success(),
            max_failure_pct: default_max_failure(),
            soak_seconds: default_soak(),
        }
    }
}

impl Criteria {
    /// Refuses thresholds outside 0–100 (and a success threshold of 0: a wave that needs no
    /// installed vehicle would let the next one start on nothing).
    pub fn validate(&self) -> Result<()> {
        let pct = |v: f64| v.is_finite() && (0.0..=100.0).contains(&v);
        if !pct(self.min_success_pct) || self.min_success_pct <= 0.0 {
            return Err(Error::BadRequest(format!(
                "min_success_pct {} is out of range: give a share above 0 and at most 100",
                self.min_success_pct
            )));
        }
        if !pct(self.max_failure_pct) {
            return Err(Error::BadRequest(format!(
                "max_failure_pct {} is out of range: give a share from 0 to 100",
                self.max_failure_pct
            )));
        }
        if self.soak_seconds > 90 * 24 * 3600 {
            return Err(Error::BadRequest(format!(
                "soak_seconds {} is more than 90 days",
                self.soak_seconds
            )));
        }
        Ok(())
    }
}

/// One step of a wave plan: a cumulative share of the target set, or a cumulative count.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Percent(f64),
    Count(u64),
    All,
}

/// Splits `total` vehicles into waves by `spec` (`1%,10%,50%,100%` or `5,50,all`: cumulative
/// shares or counts, canary first). Returns each wave's size; empty waves (1% of 20 vehicles
/// rounds to the same vehicle as 2%) are dropped. The last step must cover everything
/// (`100%` or `all`), so that no vehicle of the target set is left out unnoticed.
pub fn wave_sizes(spec: &str, total: u64) -> Result<Vec<u64>> {
    let bad = |why: String| Error::BadRequest(format!("waves {spec:?}: {why}"));
    let mut steps = Vec::new();
    for part in spec.split(',').map(str::trim) {
        let step = if part.eq_ignore_ascii_case("all") {
            Step::All
        } else if let Some(p) = part.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| bad(format!("{part:?} is not a percentage")))?;
            if !(p.is_finite() && p > 0.0 && p <= 100.0) {
                return Err(bad(format!("{part:?} is not above 0% and at most 100%")));
            }
            if p >= 100.0 {
                Step::All
            } else {
                Step::Percent(p)
            }
        } else {
            let n: u64 = part.parse().map_err(|_| {
                bad(format!(
                    "{part:?} is neither a count, a percentage nor `all`"
                ))
            })?;
            if n == 0 {
                return Err(bad("a wave of 0 vehicles".into()));
            }
            Step::Count(n)
        };
        steps.push(step);
    }
    if steps.len() > 20 {
        return Err(bad("more than 20 waves".into()));
    }
    if steps.last() != Some(&Step::All) {
        return Err(bad(
            "the last wave must cover the whole target set (end with 100% or all)".into(),
        ));
    }
    let mut sizes = Vec::new();
    let mut covered = 0u64;
    for step in steps {
        let upto = match step {
            Step::All => total,
            // At least one vehicle: a 1% canary of 20 vehicles is one vehicle, not none.
            Step::Percent(p) => ((p / 100.0 * total as f64).ceil() as u64).clamp(1, total),
            Step::Count(n) => n.min(total),
        };
        if upto < covered {
            return Err(bad("waves must grow (they are cumulative)".into()));
        }
        if upto > covered {
            sizes.push(upto - covered);
            covered = upto;
        }
    }
    Ok(sizes)
}

/// The order in which a filtered target set is rolled out: pseudo-random but reproducible
/// (by the campaign's name), so the canaries are a sample of the fleet, not the oldest VINs.
/// An explicit VIN list keeps the operator's order instead (the first named are the canaries).
pub fn rollout_order(campaign: &str, vins: &mut [String]) {
    vins.sort_by_cached_key(|vin| sha256(format!("{campaign}\n{vin}").as_bytes()));
}

/// Where one ECU of a campaign stands, from its assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Progress {
    /// Its wave has not started (or the vehicle was not yet instructed).
    Pending,
    /// The director signs the instruction; the vehicle has not reported on it.
    Instructed,
    /// The vehicle reports downloading it.
    Downloading,
    /// The vehicle reports installing it.
    Installing,
    /// Its signed report shows the image.
    Installed,
    /// The vehicle reported a failure (the rule is kept).
    Failed,
    /// The new image failed to boot and the ECU went back to the old one.
    RolledBack,
    /// The instruction was taken back (campaign halted or cancelled) before it was installed.
    Withdrawn,
    /// An operator's later assignment replaced it.
    Superseded,
}

impl Progress {
    /// From the state of an assignment (`None`: not instructed yet) and its last error
    /// (`rule: message`).
    pub fn of(status: Option<&str>, last_error: Option<&str>, stage: Option<&str>) -> Progress {
        let failure = last_error.map(|e| {
            if error_rule(e) == Rule::BootFailed.as_str() {
                Progress::RolledBack
            } else {
                Progress::Failed
            }
        });
        match status {
            None => Progress::Pending,
            Some("installed") => Progress::Installed,
            // A failure stays the fact to show after its instruction was taken back.
            Some("withdrawn" | "cancelled") => failure.unwrap_or(Progress::Withdrawn),
            Some("superseded") => Progress::Superseded,
            Some("failed") => Progress::Failed,
            Some(_) => match failure {
                Some(f) => f,
                None => match stage {
                    Some("installing") => Progress::Installing,
                    Some("downloading") => Progress::Downloading,
                    _ => Progress::Instructed,
                },
            },
        }
    }

    /// The name (`rolled-back`).
    pub fn as_str(self) -> &'static str {
        match self {
            Progress::Pending => "pending",
            Progress::Instructed => "instructed",
            Progress::Downloading => "downloading",
            Progress::Installing => "installing",
            Progress::Installed => "installed",
            Progress::Failed => "failed",
            Progress::RolledBack => "rolled-back",
            Progress::Withdrawn => "withdrawn",
            Progress::Superseded => "superseded",
        }
    }

    /// A failure that counts against the wave's failure threshold.
    pub fn is_failure(self) -> bool {
        matches!(self, Progress::Failed | Progress::RolledBack)
    }

    /// Whether a halt may still take the instruction back: the vehicle is not installing it
    /// (an install under way is left to finish or roll back by itself). A failed or rolled
    /// back ECU's instruction is taken back too, or it would try the same image again.
    pub fn withdrawable(self) -> bool {
        matches!(
            self,
            Progress::Instructed | Progress::Downloading | Progress::Failed | Progress::RolledBack
        )
    }
}

/// The rule of a stored `rule: message` error.
pub fn error_rule(error: &str) -> &str {
    error.split_once(':').map_or(error, |(r, _)| r).trim()
}

/// A vehicle's progress from its ECUs': any failure is the vehicle's; installed only when
/// every ECU is; otherwise the least advanced.
pub fn vehicle_progress(ecus: &[Progress]) -> Progress {
    if let Some(f) = ecus.iter().copied().filter(|p| p.is_failure()).max() {
        return f;
    }
    if ecus.contains(&Progress::Withdrawn) {
        return Progress::Withdrawn;
    }
    if !ecus.is_empty() && ecus.iter().all(|p| *p == Progress::Installed) {
        return Progress::Installed;
    }
    ecus.iter()
        .copied()
        .filter(|p| *p != Progress::Installed)
        .min()
        .unwrap_or(Progress::Pending)
}

/// Rules of failures that are operational (a car that could not boot the image, a network
/// that dropped): they count against the wave but are not signs of an attack. Every other
/// rule an ECU or the primary reports (a bad signature, a hash mismatch…) is, and a halt it
/// causes is also a security event.
pub const OPERATIONAL_RULES: [Rule; 10] = [
    Rule::BootFailed,
    Rule::Io,
    Rule::Slot,
    Rule::Config,
    Rule::EcuUnreachable,
    Rule::Transport,
    Rule::HttpStatus,
    Rule::Closed,
    Rule::Workflow,
    Rule::Database,
];

/// Counts of one wave, by vehicle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WaveCounts {
    /// Vehicles in the wave.
    pub vehicles: u64,
    /// By progress (`installed`, `failed`, …).
    pub by_progress: BTreeMap<String, u64>,
}

impl WaveCounts {
    /// Counts the vehicles of a wave from their progress.
    pub fn of(vehicles: impl IntoIterator<Item = Progress>) -> WaveCounts {
        let mut out = WaveCounts::default();
        for p in vehicles {
            out.vehicles += 1;
            *out.by_progress.entry(p.as_str().to_owned()).or_default() += 1;
        }
        out
    }

    fn get(&self, p: Progress) -> u64 {
        self.by_progress.get(p.as_str()).copied().unwrap_or(0)
    }

    /// Vehicles installed.
    pub fn installed(&self) -> u64 {
        self.get(Progress::Installed)
    }

    /// Vehicles failed or rolled back.
    pub fn failed(&self) -> u64 {
        self.get(Progress::Failed) + self.get(Progress::RolledBack)
    }
}

/// What a started wave's counts mean.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// More failed than the criteria allow: halt.
    Breached(String),
    /// Enough installed.
    Met,
    /// Neither yet.
    Waiting,
}

/// Judges a started wave (`index` counts from 0) by `criteria`.
pub fn judge(index: usize, counts: &WaveCounts, criteria: &Criteria) -> Verdict {
    if counts.vehicles == 0 {
        return Verdict::Met;
    }
    let pct = |n: u64| n as f64 * 100.0 / counts.vehicles as f64;
    let failed = counts.failed();
    if failed > 0 && pct(failed) > criteria.max_failure_pct {
        return Verdict::Breached(format!(
            "wave {} breached its failure threshold: {failed} of {} vehicles failed or rolled \
             back ({:.1}% > {}%)",
            index + 1,
            counts.vehicles,
            pct(failed),
            criteria.max_failure_pct
        ));
    }
    if pct(counts.installed()) >= criteria.min_success_pct {
        Verdict::Met
    } else {
        Verdict::Waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_are_cumulative_shares_or_counts_and_must_cover_everything() {
        assert_eq!(
            wave_sizes("1%,10%,50%,100%", 1000).unwrap(),
            [10, 90, 400, 500]
        );
        // 1% of 20 is one vehicle (a canary), 10% two: the second wave holds one more.
        assert_eq!(wave_sizes("1%,10%,100%", 20).unwrap(), [1, 1, 18]);
        // Waves that round to nothing new are dropped.
        assert_eq!(wave_sizes("1%,2%,100%", 20).unwrap(), [1, 19]);
        assert_eq!(wave_sizes("5,50,all", 30).unwrap(), [5, 25]);
        assert_eq!(wave_sizes("all", 3).unwrap(), [3]);
        for (spec, why) in [
            ("1%,10%", "the last wave must cover"),
            ("10,5,all", "must grow"),
            ("0,all", "0 vehicles"),
            ("abc,all", "neither a count"),
            ("150%", "at most 100%"),
            ("-1%,all", "above 0%"),
        ] {
            let e = wave_sizes(spec, 100).unwrap_err().to_string();
            assert!(e.contains(why), "{spec}: {e}");
        }
    }

    #[test]
    fn criteria_out_of_range_are_refused() {
        assert!(Criteria::default().validate().is_ok());
        for c in [
            Criteria {
                min_success_pct: 0.0,
                ..Criteria::default()
            },
            Criteria {
                min_success_pct: 101.0,
                ..Criteria::default()
            },
            Criteria {
                max_failure_pct: -1.0,
                ..Criteria::default()
            },
            Criteria {
                max_failure_pct: f64::NAN,
                ..Criteria::default()
            },
        ] {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }

    #[test]
    fn rollout_order_is_reproducible_and_depends_on_the_campaign() {
        let vins: Vec<String> = (0..50).map(|i| format!("VIN{i:04}")).collect();
        let (mut a, mut b, mut c) = (vins.clone(), vins.clone(), vins.clone());
        rollout_order("fw-2", &mut a);
        rollout_order("fw-2", &mut b);
        rollout_order("fw-3", &mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, vins, "not the VIN order");
    }

    #[test]
    fn progress_comes_from_the_assignment_and_the_reported_rule() {
        assert_eq!(Progress::of(None, None, None), Progress::Pending);
        assert_eq!(
            Progress::of(Some("pending"), None, None),
            Progress::Instructed
        );
        assert_eq!(
            Progress::of(Some("pending"), None, Some("installing")),
            Progress::Installing
        );
        assert_eq!(
            Progress::of(Some("pending"), Some("boot-failed: no heartbeat"), None),
            Progress::RolledBack
        );
        assert_eq!(
            Progress::of(Some("pending"), Some("hash-mismatch: x"), None),
            Progress::Failed
        );
        assert_eq!(
            Progress::of(Some("failed"), Some("x: y"), None),
            Progress::Failed
        );
        assert_eq!(
            Progress::of(Some("installed"), None, None),
            Progress::Installed
        );
        assert_eq!(
            Progress::of(Some("withdrawn"), None, None),
            Progress::Withdrawn
        );
        assert_eq!(
            Progress::of(Some("withdrawn"), Some("boot-failed: x"), None),
            Progress::RolledBack,
            "a halt does not hide why"
        );
    }

    #[test]
    fn a_vehicle_is_installed_only_when_every_ecu_is_and_failed_when_one_is() {
        use Progress::*;
        assert_eq!(vehicle_progress(&[Installed, Installed]), Installed);
        assert_eq!(vehicle_progress(&[Installed, Instructed]), Instructed);
        assert_eq!(vehicle_progress(&[Installed, RolledBack]), RolledBack);
        assert_eq!(vehicle_progress(&[Failed, Instructed]), Failed);
        assert_eq!(vehicle_progress(&[Withdrawn, Installed]), Withdrawn);
    }

    #[test]
    fn a_wave_halts_past_its_failure_share_and_advances_at_its_success_share() {
        let c = Criteria {
            min_success_pct: 90.0,
            max_failure_pct: 10.0,
            soak_seconds: 0,
        };
        let wave = |installed: usize, failed: usize, waiting: usize| {
            WaveCounts::of(
                std::iter::repeat_n(Progress::Installed, installed)
                    .chain(std::iter::repeat_n(Progress::RolledBack, failed))
                    .chain(std::iter::repeat_n(Progress::Instructed, waiting)),
            )
        };
        assert_eq!(
            judge(0, &wave(9, 1, 0), &c),
            Verdict::Met,
            "10% is not above 10%"
        );
        assert!(matches!(judge(0, &wave(8, 2, 0), &c), Verdict::Breached(_)));
        assert_eq!(judge(0, &wave(5, 0, 5), &c), Verdict::Waiting);
        // A canary of one: its failure halts at once.
        let Verdict::Breached(why) = judge(0, &wave(0, 1, 0), &c) else {
            panic!("a failed canary must halt");
        };
        assert!(why.contains("wave 1") && why.contains("1 of 1"), "{why}");
    }
}

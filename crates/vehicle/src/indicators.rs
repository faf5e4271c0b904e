//! Attack indicators an ECU keeps until the director has them.
//!
//! What an ECU noticed (a refused bundle, garbage on the bus, a failed boot) is the evidence
//! the V-SOC works from, so nobody on the in-vehicle bus may be able to erase it. An
//! indicator therefore travels in *every* signed version report until the director's signed
//! receipt ([`rampart_core::uptane::receipt`]) shows that it accepted a report carrying it;
//! asking for a report, dropping it, or replaying an old receipt forgets nothing.
//!
//! Repeats of one rule are counted, not stored again: a flood of garbage frames cannot push
//! the one indicator that matters out of a bounded list, and the list stays small (at most
//! two entries per rule: one already reported, one not yet).

use serde::{Deserialize, Serialize};

/// Most entries kept; beyond it new ones are only counted as dropped.
pub const MAX_ENTRIES: usize = 64;
/// Longest message kept per entry (a report must fit its frame).
pub const MAX_MESSAGE: usize = 400;

/// One rule's occurrences since the director last acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Indicator {
    /// The rule that failed (`Error::rule()`).
    pub rule: String,
    /// The latest message for it.
    pub message: String,
    /// How many times it happened.
    pub count: u64,
    /// Counter of the first report that carried it (`None`: not reported yet).
    #[serde(default)]
    pub reported_in: Option<u64>,
}

/// The indicators of one ECU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Indicators {
    entries: Vec<Indicator>,
    #[serde(default)]
    dropped: u64,
}

impl Indicators {
    /// Notes one occurrence of `rule`.
    pub fn record(&mut self, rule: &str, message: &str) {
        let message: String = message.chars().take(MAX_MESSAGE).collect();
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.rule == rule && e.reported_in.is_none())
        {
            e.count = e.count.saturating_add(1);
            e.message = message;
            return;
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.dropped = self.dropped.saturating_add(1);
            return;
        }
        self.entries.push(Indicator {
            rule: rule.to_owned(),
            message,
            count: 1,
            reported_in: None,
        });
    }

    /// The text of report `counter` (`rule: message`, one per line, as the director reads
    /// it): every indicator not yet acknowledged. Those reported for the first time are
    /// marked with `counter`.
    pub fn report(&mut self, counter: u64) -> String {
        let mut lines = Vec::with_capacity(self.entries.len() + 1);
        for e in &mut self.entries {
            e.reported_in.get_or_insert(counter);
            lines.push(if e.count > 1 {
                format!("{}: {} ({} times)", e.rule, e.message, e.count)
            } else {
                format!("{}: {}", e.rule, e.message)
            });
        }
        if self.dropped > 0 {
            lines.push(format!(
                "indicator-overflow: {} indicator(s) not kept (more than {MAX_ENTRIES} rules)",
                self.dropped
            ));
        }
        lines.join("\n")
    }

    /// The director accepted report `counter`: forgets what reports up to it carried.
    /// Returns how many entries were forgotten.
    pub fn acknowledge(&mut self, counter: u64) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|e| e.reported_in.is_none_or(|r| r > counter));
        if self.entries.iter().all(|e| e.reported_in.is_none()) && before > 0 {
            self.dropped = 0;
        }
        before - self.entries.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.dropped == 0
    }

    /// The entries.
    #[cfg(test)]
    fn entries(&self) -> &[Indicator] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indicators_stay_in_every_report_until_acknowledged() {
        let mut i = Indicators::default();
        i.record("hash-mismatch", "image tampered");
        assert_eq!(i.report(5), "hash-mismatch: image tampered");
        // Asked again (by anyone): still there.
        assert_eq!(i.report(6), "hash-mismatch: image tampered");
        // An older receipt forgets nothing newer than it.
        assert_eq!(i.acknowledge(4), 0);
        assert!(!i.is_empty());
        assert_eq!(i.acknowledge(6), 1);
        assert!(i.is_empty());
    }

    #[test]
    fn what_happened_after_the_acknowledged_report_is_kept() {
        let mut i = Indicators::default();
        i.record("garbage-frame", "one");
        i.report(1);
        i.record("garbage-frame", "two");
        i.record("rollback", "old image offered");
        assert_eq!(i.acknowledge(1), 1);
        let text = i.report(2);
        assert_eq!(text, "garbage-frame: two\nrollback: old image offered");
    }

    #[test]
    fn repeats_are_counted_and_cannot_push_others_out() {
        let mut i = Indicators::default();
        i.record("boot-failed", "slot B failed its health check");
        for n in 0..10_000 {
            i.record("garbage-frame", &format!("frame {n}"));
        }
        assert_eq!(i.entries().len(), 2);
        let text = i.report(1);
        assert!(text.contains("boot-failed: slot B"));
        assert!(text.contains("garbage-frame: frame 9999 (10000 times)"));
        for n in 0..(2 * MAX_ENTRIES) {
            i.record(&format!("rule-{n}"), "x");
        }
        assert_eq!(i.entries().len(), MAX_ENTRIES);
        assert!(i.report(2).ends_with("more than 64 rules)"));
        i.record("x", &"y".repeat(10_000));
        assert!(i.report(3).len() < 64 * 1024);
    }
}

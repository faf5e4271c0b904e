//! What the vehicle side tells people, behind a small trait.
//!
//! The library decides and moves bytes; how a line, a progress bar or a yes/no question reaches
//! a person is the binary's business: `rampart vehicle` draws progress bars on a terminal,
//! `rampart-agent` prints lines, a head unit would show a dialog, a test records. Without a
//! reporter of its own, the primary logs through `tracing` ([`LogReporter`]) and never prints.

/// Where a primary's messages, progress and questions go.
pub trait Reporter: Send + Sync {
    /// A line for the owner or the operator ("Update declined: …").
    fn say(&self, line: &str);

    /// A transfer of `len` bytes starts (a download, an install on an ECU), labelled.
    fn transfer(&self, label: &str, len: u64) -> Box<dyn Progress>;

    /// Asks the owner a yes/no question; `None` if there is nobody to ask this way (no
    /// terminal). Called off the async runtime: it may block.
    fn ask(&self, question: &str) -> Option<bool> {
        let _ = question;
        None
    }
}

/// One transfer's progress.
pub trait Progress: Send {
    /// `done` bytes of the transfer are through.
    fn set(&mut self, done: u64);
    /// The transfer is over (finished or not).
    fn finish(self: Box<Self>);
}

/// Reports through `tracing` only: lines at info, transfers at every quarter. Asks nobody.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogReporter;

impl Reporter for LogReporter {
    fn say(&self, line: &str) {
        tracing::info!("{line}");
    }

    fn transfer(&self, label: &str, len: u64) -> Box<dyn Progress> {
        Box::new(LoggedTransfer {
            label: label.to_owned(),
            len,
            quarter: 0,
        })
    }
}

struct LoggedTransfer {
    label: String,
    len: u64,
    quarter: u64,
}

impl Progress for LoggedTransfer {
    fn set(&mut self, done: u64) {
        if self.len > 0 && done.saturating_mul(4) / self.len > self.quarter {
            self.quarter = done.saturating_mul(4) / self.len;
            tracing::info!(transfer = %self.label, done, total = self.len, "in progress");
        }
    }

    fn finish(self: Box<Self>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_reporter_asks_nobody_and_follows_progress() {
        let r = LogReporter;
        assert_eq!(r.ask("Install now?"), None);
        let mut t = r.transfer("download x", 100);
        for done in [10, 30, 60, 100] {
            t.set(done);
        }
        t.finish();
        let mut empty = r.transfer("empty", 0);
        empty.set(0);
        empty.finish();
    }
}

//! The vehicle side's messages on a terminal: progress bars (indicatif) when stderr is a
//! terminal, log lines otherwise; the owner's yes/no question on stdin when it is a terminal.

use std::io::{BufRead, IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use rampart_vehicle::report::{LogReporter, Progress, Reporter};

/// Prints to the terminal the primary runs in.
#[derive(Debug, Clone, Copy, Default)]
pub struct TerminalReporter;

impl Reporter for TerminalReporter {
    fn say(&self, line: &str) {
        crate::say!("{line}");
    }

    fn transfer(&self, label: &str, len: u64) -> Box<dyn Progress> {
        if !std::io::stderr().is_terminal() {
            return LogReporter.transfer(label, len);
        }
        let bar = ProgressBar::new(len);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:32} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_owned());
        Box::new(Bar(bar))
    }

    fn ask(&self, question: &str) -> Option<bool> {
        if !std::io::stdin().is_terminal() {
            return None;
        }
        crate::ask!("{question} [y/N] ");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).ok()?;
        Some(matches!(line.trim(), "y" | "Y" | "yes"))
    }
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn set(&mut self, done: u64) {
        self.0.set_position(done);
    }

    fn finish(self: Box<Self>) {
        self.0.finish_and_clear();
    }
}

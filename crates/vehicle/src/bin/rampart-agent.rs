//! `rampart-agent`: the slim vehicle-side binary. It runs the T-BOX primary and secondary ECUs
//! exactly as `rampart vehicle` and `rampart ecu` do (same library code, same configuration
//! files), without the server, the lab and the command-line framework the full `rampart`
//! binary carries. Built small with `cargo build --profile release-agent --bin rampart-agent`.
//!
//! ```text
//! rampart-agent [-v…] vehicle [--config vehicle.toml] [--once] [--consent ask|auto|deny|file:PATH] [--json]
//! rampart-agent [-v…] ecu [--config ecu.toml]
//! ```
//!
//! Exit status of `vehicle --once`: 0 every update due installed and every ECU answered, 1
//! something failed, 3 an update waits (declined, or a precondition); 2 a bad command line.
//!
//! It runs on a single-threaded runtime (an update agent has one thing to do at a time) and
//! logs to stderr with `-v` (info) or `-vv` (debug).
// Output goes through `say!` & co., which never panic on a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use rampart_vehicle::consent::ConsentMode;
use rampart_vehicle::primary::CycleOutcome;

/// Output that never panics: `println!` panics once stdout is a pipe whose reader left
/// (`rampart-agent vehicle --once | head`); these drop what cannot be written and the agent
/// goes on with its cycle. (`rampart_cli::out` does the same for `rampart`; the agent does not
/// link that crate.)
fn write_out(args: std::fmt::Arguments<'_>, newline: bool, to_stderr: bool) {
    use std::io::Write;
    let result = if to_stderr {
        let mut e = std::io::stderr().lock();
        e.write_fmt(args)
            .and_then(|()| if newline { e.write_all(b"\n") } else { Ok(()) })
    } else {
        let mut o = std::io::stdout().lock();
        o.write_fmt(args)
            .and_then(|()| if newline { o.write_all(b"\n") } else { Ok(()) })
            .and_then(|()| o.flush())
    };
    drop(result); // the reader is gone: nothing to tell it
}

macro_rules! say {
    ($($arg:tt)*) => { write_out(format_args!($($arg)*), true, false) };
}
macro_rules! say_err {
    ($($arg:tt)*) => { write_out(format_args!($($arg)*), true, true) };
}
macro_rules! ask {
    ($($arg:tt)*) => { write_out(format_args!($($arg)*), false, false) };
}

const USAGE: &str = "usage:
  rampart-agent [-v...] vehicle [--config vehicle.toml] [--once] [--consent ask|auto|deny|file:PATH] [--json]
  rampart-agent [-v...] ecu [--config ecu.toml]";

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Vehicle {
        config: PathBuf,
        once: bool,
        consent: String,
        json: bool,
    },
    Ecu {
        config: PathBuf,
    },
}

#[derive(Debug)]
struct Cli {
    verbose: u8,
    command: Command,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Cli, String> {
    let mut verbose = 0u8;
    let mut sub: Option<String> = None;
    let mut config: Option<PathBuf> = None;
    let mut once = false;
    let mut json = false;
    let mut consent = "ask".to_owned();
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "-h" | "--help" => return Err(USAGE.to_owned()),
            "-V" | "--version" => {
                return Err(format!("rampart-agent {}", env!("CARGO_PKG_VERSION")))
            }
            "--verbose" => verbose = verbose.saturating_add(1),
            v if v.len() > 1 && v.starts_with('-') && v.bytes().skip(1).all(|b| b == b'v') => {
                verbose = verbose.saturating_add(u8::try_from(v.len() - 1).unwrap_or(u8::MAX));
            }
            "--config" => config = Some(PathBuf::from(value("--config")?)),
            "--consent" => consent = value("--consent")?,
            "--once" => once = true,
            "--json" => json = true,
            "vehicle" | "ecu" if sub.is_none() => sub = Some(a),
            other => return Err(format!("unexpected argument {other:?}\n{USAGE}")),
        }
    }
    let command = match sub.as_deref() {
        Some("vehicle") => Command::Vehicle {
            config: config.unwrap_or_else(|| PathBuf::from("vehicle.toml")),
            once,
            consent,
            json,
        },
        Some("ecu") => {
            if once || json {
                return Err(format!("--once and --json are for `vehicle`\n{USAGE}"));
            }
            Command::Ecu {
                config: config.unwrap_or_else(|| PathBuf::from("ecu.toml")),
            }
        }
        _ => return Err(USAGE.to_owned()),
    };
    Ok(Cli { verbose, command })
}

/// A minimal `tracing` subscriber: `LEVEL target: message key=value…` lines on stderr, no
/// spans, no filtering beyond the level (the full binary uses tracing-subscriber).
struct StderrLog {
    max: tracing::Level,
}

struct Line(String);

impl tracing::field::Visit for Line {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl tracing::Subscriber for StderrLog {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let m = event.metadata();
        let mut line = Line(format!(
            "{} {:>5} {}:",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            m.level(),
            m.target()
        ));
        event.record(&mut line);
        say_err!("{}", line.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn init_logging(verbose: u8) {
    let max = match verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        2 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    let _ = tracing::subscriber::set_global_default(StderrLog { max });
}

fn run(cli: Cli) -> Result<(), Ended> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    match cli.command {
        Command::Vehicle {
            config,
            once,
            consent,
            json,
        } => {
            let config =
                rampart_vehicle::primary::load_config(&config).map_err(|e| e.to_string())?;
            let consent: ConsentMode = consent.parse().map_err(|e| format!("{e}"))?;
            let report = rt
                .block_on(rampart_vehicle::primary::run_with(
                    config,
                    consent,
                    once,
                    std::sync::Arc::new(Lines),
                ))
                .map_err(|e| e.to_string())?;
            if json {
                let text = serde_json::to_string(&report).map_err(|e| e.to_string())?;
                say!("{text}");
            }
            match report.outcome() {
                CycleOutcome::Complete => Ok(()),
                CycleOutcome::Postponed(why) => Err(Ended::Postponed(why)),
                CycleOutcome::Failed(why) => Err(Ended::Failed(why)),
            }
        }
        Command::Ecu { config } => {
            let config =
                rampart_vehicle::secondary::load_config(&config).map_err(|e| e.to_string())?;
            rt.block_on(async move {
                tokio::select! {
                    r = rampart_vehicle::secondary::run_with(config, std::sync::Arc::new(Lines)) => r.map_err(|e| Ended::Failed(e.to_string())),
                    _ = tokio::signal::ctrl_c() => Ok(()),
                }
            })
        }
    }
}

fn main() -> ExitCode {
    let cli = match parse(std::env::args().skip(1)) {
        Ok(cli) => cli,
        Err(message) => {
            say_err!("{message}");
            return ExitCode::from(2);
        }
    };
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Ended::Postponed(why)) => {
            say_err!("postponed: {why}");
            ExitCode::from(3)
        }
        Err(Ended::Failed(why)) => {
            say_err!("error: {why}");
            ExitCode::FAILURE
        }
    }
}

/// How a run that did not succeed ended: exit status 3 (an update waits) or 1 (failed), as
/// `rampart vehicle --once`.
enum Ended {
    Postponed(String),
    Failed(String),
}

impl From<String> for Ended {
    fn from(why: String) -> Self {
        Ended::Failed(why)
    }
}

/// The agent's messages: plain lines on stdout (no progress bars: the agent is built small),
/// transfers logged, the owner asked on stdin when it is a terminal.
struct Lines;

impl rampart_vehicle::report::Reporter for Lines {
    fn say(&self, line: &str) {
        say!("{line}");
    }

    fn transfer(&self, label: &str, len: u64) -> Box<dyn rampart_vehicle::report::Progress> {
        rampart_vehicle::report::LogReporter.transfer(label, len)
    }

    fn ask(&self, question: &str) -> Option<bool> {
        use std::io::{BufRead, IsTerminal, Write};
        if !std::io::stdin().is_terminal() {
            return None;
        }
        ask!("{question} [y/N] ");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).ok()?;
        Some(matches!(line.trim(), "y" | "Y" | "yes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Cli, String> {
        parse(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_the_lab_command_lines() {
        // As the lab runs it (`rampart_lab::VehicleHandle::once_args`).
        let lab_line = "-v vehicle --once --json --consent auto --config v.toml";
        let c = cli(&lab_line.split(' ').collect::<Vec<_>>()).unwrap();
        assert_eq!(c.verbose, 1);
        let expected = Command::Vehicle {
            config: PathBuf::from("v.toml"),
            once: true,
            consent: "auto".into(),
            json: true,
        };
        assert_eq!(c.command, expected);
        let c = cli(&["-vv", "ecu", "--config", "e.toml"]).unwrap();
        assert_eq!(c.verbose, 2);
        assert!(matches!(c.command, Command::Ecu { .. }));
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        assert!(cli(&[]).is_err());
        assert!(cli(&["vehicle", "--bogus"]).is_err());
        assert!(cli(&["ecu", "--once"]).is_err());
        assert!(cli(&["vehicle", "--config"]).is_err());
        assert!(cli(&["vehicle", "ecu"]).is_err());
    }
}

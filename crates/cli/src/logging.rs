//! Logging to stderr with `tracing`, shared by `rampart` and `rampart-lab`.

/// The logging flag every binary takes (flattened into its command line).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Verbosity {
    /// More logging (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

/// `-v` info, `-vv` debug, `-vvv` trace; `RUST_LOG` overrides. `quiet` commands (those that
/// narrate for people) show only errors by default.
pub fn init(verbosity: Verbosity, quiet: bool) {
    let default = match verbosity.verbose {
        0 if quiet => "error",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

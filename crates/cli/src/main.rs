//! `rampart`: the one binary of Rampart. Each subcommand is a thin layer over a library crate.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};

mod admin;
mod attack_cmd;
mod demo;
mod server_cmds;
mod tuf_client;
mod vehicle_cmds;

/// Secure over-the-air updates for vehicle fleets (Uptane on TUF).
#[derive(Debug, Parser)]
#[command(name = "rampart", version, about)]
struct Cli {
    /// More logging (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The attack lab: run OTA attacks against a real fleet on loopback and show each fails.
    Attack(attack_cmd::AttackArgs),
    /// The whole story on loopback: a server, a fleet, an update, attacks rejected.
    Demo(demo::DemoArgs),
    /// Image repository: key ceremony, listing.
    #[command(subcommand)]
    Repo(server_cmds::RepoCommand),
    /// Publish an image to the image repository.
    Publish(server_cmds::PublishArgs),
    /// Sign a metadata document with key files (offline signing).
    Sign {
        /// The document (e.g. exported by `publish --export-unsigned`).
        document: PathBuf,
        /// Key file(s).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Output (default: overwrite the document).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Import a role signed offline into the image repository.
    Import {
        #[command(flatten)]
        data: server_cmds::DataDir,
        /// The signed document.
        document: PathBuf,
        /// Its role.
        #[arg(long, default_value = "targets")]
        role: String,
    },
    /// Delegate part of the image repository to a supplier.
    Delegate(server_cmds::DelegateArgs),
    /// Rotate the keys of a role.
    Rotate(server_cmds::RotateArgs),
    /// Fleet PKI: CA, server certificate, vehicle certificates.
    #[command(subcommand)]
    Pki(server_cmds::PkiCommand),
    /// Run the server: image repository, director, admin API.
    Serve(server_cmds::ServeArgs),
    /// Talk to a server's admin API.
    Admin(admin::AdminArgs),
    /// Run a vehicle's primary (the T-BOX update agent).
    Vehicle(vehicle_cmds::VehicleArgs),
    /// Run a secondary ECU.
    Ecu(vehicle_cmds::EcuArgs),
    /// Generate a signing key (and optionally an X25519 key) for an ECU or a primary.
    Keygen(vehicle_cmds::KeygenArgs),
    /// A standalone TUF client (the cross-implementation test CLI).
    TufClient(tuf_client::Args),
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match verbose {
        // The demo narrates for people; the server's own warnings would interleave.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(
        cli.verbose,
        matches!(cli.command, Command::Demo(_) | Command::Attack(_)),
    );
    let result = match cli.command {
        Command::Demo(args) => demo::main(args),
        Command::Attack(args) => attack_cmd::main(args),
        Command::Repo(cmd) => server_cmds::repo(cmd),
        Command::Publish(args) => server_cmds::publish(args),
        Command::Sign {
            document,
            keys,
            out,
        } => server_cmds::sign(document, keys, out),
        Command::Import {
            data,
            document,
            role,
        } => server_cmds::import(data, role, document),
        Command::Delegate(args) => server_cmds::delegate(args),
        Command::Rotate(args) => server_cmds::rotate(args),
        Command::Pki(cmd) => server_cmds::pki(cmd),
        Command::Serve(args) => server_cmds::serve(args),
        Command::Admin(args) => admin::main(args),
        Command::Vehicle(args) => vehicle_cmds::vehicle(args),
        Command::Ecu(args) => vehicle_cmds::ecu(args),
        Command::Keygen(args) => vehicle_cmds::keygen(args),
        Command::TufClient(args) => tuf_client::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}

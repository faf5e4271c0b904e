//! `rampart`: Rampart's binary for the cloud side, operators and tools, and for vehicles
//! (`rampart-agent` is the slim vehicle-only build). Each subcommand is a thin layer over a
//! library crate. It carries no lab or attack-lab code: the demo and the attack lab are
//! `rampart-lab` (crate `rampart-lab-cli`).
// Output goes through `say!` & co., which never panic on a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod admin;
mod campaign;
mod provision;
mod server_cmds;
mod tara;
mod tuf_client;

use rampart_cli::{exit, logging, vehicle_cmds};

/// mimalloc instead of the system allocator: a check-in allocates and frees many small
/// objects (parsed JSON, canonical bytes, rows) across tokio's worker threads, and glibc's
/// malloc was about a sixth of the server's CPU in one (`perf`, bench/profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Secure over-the-air updates for vehicle fleets (Uptane on TUF).
#[derive(Debug, Parser)]
#[command(name = "rampart", version, about)]
struct Cli {
    #[command(flatten)]
    log: logging::Verbosity,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Moved: the demo is `rampart-lab demo` (cargo run --release --bin rampart-lab -- demo).
    #[command(hide = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// Moved: the attack lab is `rampart-lab attack`.
    #[command(hide = true)]
    Attack {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
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
    /// Staged rollouts: create, list, status, start, pause, resume, cancel.
    Campaign(campaign::CampaignArgs),
    /// Everything one vehicle needs from the server's data dir: certificate, roots, keys,
    /// commented vehicle.toml and ecu.toml files.
    Provision(provision::ProvisionArgs),
    /// Offline updates: a bundle with everything some vehicles need, for a workshop or a USB
    /// stick (`rampart vehicle --from-bundle` reads it).
    #[command(subcommand)]
    OfflineBundle(server_cmds::OfflineBundleCommand),
    /// Run a vehicle's primary (the T-BOX update agent).
    Vehicle(vehicle_cmds::VehicleArgs),
    /// Run a secondary ECU.
    Ecu(vehicle_cmds::EcuArgs),
    /// Run a legacy ECU's bootloader: UDS (ISO 14229) over DoIP (ISO 13400), flashed by the
    /// gateway or a diagnostic tester.
    UdsEcu(vehicle_cmds::UdsEcuArgs),
    /// Generate a signing key (and optionally an X25519 key) for an ECU or a primary.
    Keygen(vehicle_cmds::KeygenArgs),
    /// Threat analysis and risk assessment (ISO/SAE 21434) of Rampart's OTA item, checked
    /// against the attack lab and the tests: summary, --report, --verify.
    Tara(tara::TaraArgs),
    /// A standalone TUF client (the cross-implementation test CLI).
    #[command(override_usage = "rampart tuf-client --metadata-dir DIR init ROOT.json
       rampart tuf-client --metadata-url URL --metadata-dir DIR refresh
       rampart tuf-client --metadata-url URL --metadata-dir DIR --target-name NAME \\
                          --target-dir DIR --target-base-url URL download")]
    TufClient(tuf_client::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log, false);
    let result = match cli.command {
        Command::Demo { .. } | Command::Attack { .. } => Err(anyhow::anyhow!(
            "the demo and the attack lab are not part of the product binary; run them with \
             `rampart-lab demo` / `rampart-lab attack` (from a checkout: cargo run --release \
             --bin rampart-lab -- demo)"
        )),
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
        Command::Campaign(args) => campaign::main(args),
        Command::Provision(args) => provision::provision(args),
        Command::OfflineBundle(cmd) => server_cmds::offline_bundle(cmd),
        Command::Vehicle(args) => vehicle_cmds::vehicle(args),
        Command::Ecu(args) => vehicle_cmds::ecu(args),
        Command::UdsEcu(args) => vehicle_cmds::uds_ecu(args),
        Command::Keygen(args) => vehicle_cmds::keygen(args),
        Command::Tara(args) => tara::main(args),
        Command::TufClient(args) => tuf_client::main(args),
    };
    exit::report(result)
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

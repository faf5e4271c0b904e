//! `rampart-lab`: the demo and the attack lab — a whole fleet on loopback (a server after a
//! real key ceremony, vehicles whose primaries and ECUs are processes of this binary running
//! exactly the code of `rampart vehicle` and `rampart ecu`), attacked and judged. Test
//! tooling: it is never deployed, and no product crate depends on it.
// Output goes through `say!` & co., which never panic on a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rampart_cli::{exit, logging, vehicle_cmds};

mod attack_cmd;
mod demo;

/// Rampart's lab: the demo and the attack lab on a fleet on loopback.
#[derive(Debug, Parser)]
#[command(name = "rampart-lab", version, about)]
struct Cli {
    #[command(flatten)]
    log: logging::Verbosity,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole story on loopback: a server, a fleet, an update, attacks rejected.
    Demo(demo::DemoArgs),
    /// The attack lab: run OTA attacks against a real fleet on loopback and show each fails.
    Attack(attack_cmd::AttackArgs),
    /// A vehicle's primary, as `rampart vehicle` (the lab's fleets run it as a process).
    #[command(hide = true)]
    Vehicle(vehicle_cmds::VehicleArgs),
    /// A secondary ECU, as `rampart ecu`.
    #[command(hide = true)]
    Ecu(vehicle_cmds::EcuArgs),
    /// A legacy ECU's bootloader, as `rampart uds-ecu`.
    #[command(hide = true)]
    UdsEcu(vehicle_cmds::UdsEcuArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(
        cli.log,
        matches!(cli.command, Command::Demo(_) | Command::Attack(_)),
    );
    let result = match cli.command {
        Command::Demo(args) => demo::main(args),
        Command::Attack(args) => attack_cmd::main(args),
        Command::Vehicle(args) => vehicle_cmds::vehicle(args),
        Command::Ecu(args) => vehicle_cmds::ecu(args),
        Command::UdsEcu(args) => vehicle_cmds::uds_ecu(args),
    };
    exit::report(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The definition is consistent, and the hidden primary command parses the line the
    /// lab's fleets run (`rampart_lab::VehicleHandle::once_args`).
    #[test]
    fn parses_the_command_line_the_fleets_run() {
        Cli::command().debug_assert();
        let line = "rampart-lab -v vehicle --once --json --consent auto --config v.toml";
        let cli = Cli::try_parse_from(line.split(' ')).unwrap();
        assert_eq!(cli.log.verbose, 1);
        assert!(matches!(cli.command, Command::Vehicle(_)));
    }
}

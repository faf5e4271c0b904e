//! What the `rampart` binary shares with the lab's `rampart-lab` binary: the vehicle-side
//! commands (so the lab's fleets run exactly the code path of `rampart vehicle` and `rampart
//! ecu`), logging and how an outcome becomes an exit code. The rest of `rampart` lives in its binary's own modules.
// Output goes through `say!` & co., which never panic on a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod exit;
pub mod logging;
pub mod out;
pub mod terminal;
pub mod vehicle_cmds;

//! How a command's outcome becomes the process's: the error and its causes on stderr, one
//! line, and the exit code.

use std::process::ExitCode;

/// Exit status of a command that did not do everything it was asked (1), the rest of its
/// work done and reported.
pub const FAILED: u8 = 1;
/// Exit status of a command line that does not parse (clap's).
pub const USAGE: u8 = 2;
/// Exit status of a vehicle cycle where nothing failed but an update waits (the owner
/// declined it, or a precondition held it back).
pub const POSTPONED: u8 = 3;

/// An outcome that is not a success but not an error of the program either: its line, and
/// the exit status that says what happened.
#[derive(Debug)]
pub struct Status {
    /// Exit status.
    pub code: u8,
    /// What happened, one line.
    pub message: String,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Status {}

/// A vehicle cycle's outcome as the result of `rampart vehicle --once`.
pub fn cycle_result(outcome: rampart_vehicle::primary::CycleOutcome) -> anyhow::Result<()> {
    use rampart_vehicle::primary::CycleOutcome;
    match outcome {
        CycleOutcome::Complete => Ok(()),
        CycleOutcome::Postponed(why) => Err(Status {
            code: POSTPONED,
            message: format!("postponed: {why}"),
        }
        .into()),
        CycleOutcome::Failed(why) => Err(Status {
            code: FAILED,
            message: why,
        }
        .into()),
    }
}

/// Prints `result`'s error, if any, with its chain of causes (`error: a: b: c`) and turns it
/// into the exit code: 0 on success, the [`Status`]'s code when the error is one, else 1.
pub fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<Status>() {
            Some(Status { code, message }) if *code == POSTPONED => {
                crate::say_err!("{message}");
                ExitCode::from(*code)
            }
            Some(status) => {
                crate::say_err!("error: {}", status.message);
                ExitCode::from(status.code)
            }
            None => {
                crate::say_err!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

//! How a command's outcome becomes the process's: the error and its causes on stderr, one
//! line, and the exit code.

use std::process::ExitCode;

/// Prints `result`'s error, if any, with its chain of causes (`error: a: b: c`) and turns it
/// into the exit code: 0 on success, 1 on failure.
pub fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! How a command's outcome becomes the process's: the error and its causes on stderr, one
//! line, and the exit code.

use std::process::ExitCode;

/// Makes writing to a closed pipe (`rampart … | head`) end the process as it ends any Unix
/// tool, by SIGPIPE, instead of Rust's default: the signal ignored, and `println!` panicking
/// on the EPIPE error. Sockets are not concerned (the standard library sends with
/// `MSG_NOSIGNAL`); long-running servers do not call it (a logger that goes away must not
/// take a server down).
pub fn end_quietly_on_closed_pipe() {
    sigpipe::reset();
}

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

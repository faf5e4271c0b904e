//! Output for people that never panics. `println!` panics when stdout is a pipe whose reader
//! went away (`rampart admin events | head`); these write and, once the reader is gone, drop
//! the rest of the output while the command goes on with its work (a vehicle cycle must not
//! stop half way because nobody reads its lines any more). Rust's SIGPIPE default (ignored)
//! stays as it is: a process that talks to servers and ECUs over sockets must not be killed
//! by a peer that closed.
//!
//! `say!` is `println!`, `say_err!` is `eprintln!`, `ask!` is `print!` then a flush.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
static STDERR_GONE: AtomicBool = AtomicBool::new(false);

/// Writes `args` (and a newline if `newline`) to stdout, or stderr if `to_stderr`; a write
/// error (the reader left) silences that stream for the rest of the process.
pub fn write(args: std::fmt::Arguments<'_>, newline: bool, to_stderr: bool) {
    let gone = if to_stderr {
        &STDERR_GONE
    } else {
        &STDOUT_GONE
    };
    if gone.load(Ordering::Relaxed) {
        return;
    }
    let result = if to_stderr {
        let mut e = std::io::stderr().lock();
        e.write_fmt(args)
            .and_then(|()| if newline { e.write_all(b"\n") } else { Ok(()) })
            .and_then(|()| e.flush())
    } else {
        let mut o = std::io::stdout().lock();
        o.write_fmt(args)
            .and_then(|()| if newline { o.write_all(b"\n") } else { Ok(()) })
            .and_then(|()| o.flush())
    };
    if result.is_err() {
        gone.store(true, Ordering::Relaxed);
    }
}

/// `println!` that never panics (see the module).
#[macro_export]
macro_rules! say {
    () => { $crate::out::write(format_args!(""), true, false) };
    ($($arg:tt)*) => { $crate::out::write(format_args!($($arg)*), true, false) };
}

/// `eprintln!` that never panics (see the module).
#[macro_export]
macro_rules! say_err {
    ($($arg:tt)*) => { $crate::out::write(format_args!($($arg)*), true, true) };
}

/// `print!` and a flush, for a question on the same line as its answer.
#[macro_export]
macro_rules! ask {
    ($($arg:tt)*) => { $crate::out::write(format_args!($($arg)*), false, false) };
}

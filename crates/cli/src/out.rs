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

/// `text` in at most `max` characters, cut at a word boundary with `…` when it is longer
/// (never in the middle of a word, unless one word alone is longer than `max`).
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let room = max.saturating_sub(1); // for the ellipsis
    let head: String = text.chars().take(room).collect();
    let cut = match head.rfind(char::is_whitespace) {
        // Only if a reasonable part stays: else a cut word beats an empty line.
        Some(i) if i >= room / 2 => head.get(..i).unwrap_or(&head),
        _ => head.as_str(),
    };
    format!("{}…", cut.trim_end_matches([' ', ',', ';', ':']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_line_is_cut_between_words() {
        let line = "hash-mismatch: tbox/fw-2.1.bin for TBOX-001: sha256 of the download differs";
        let short = shorten(line, 40);
        assert!(short.chars().count() <= 40, "{short}");
        assert_eq!(short, "hash-mismatch: tbox/fw-2.1.bin for…");
        assert_eq!(shorten("short", 40), "short");
        assert_eq!(shorten("abcdefghij", 5), "abcd…");
    }
}

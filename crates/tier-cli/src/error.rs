//! The CLI's error: one line for the operator and the exit code that goes with it.
//!
//! Exit codes (also in `tier --help`):
//! - `0` success;
//! - `1` runtime error (unreachable Redis, missing or unreadable directory, I/O, bad data);
//! - `2` usage error (unknown flag, bad duration, bad URL, bad ratio);
//! - `3` `tier disk verify` found damage.

use std::fmt;
use std::process::ExitCode;

/// Exit code of a runtime error.
pub const EXIT_RUNTIME: u8 = 1;
/// Exit code of a usage error.
pub const EXIT_USAGE: u8 = 2;
/// Exit code of `tier disk verify` when it found damage.
pub const EXIT_DAMAGE: u8 = 3;

/// An error the CLI reports on one line of stderr, with its exit code.
#[derive(Debug)]
pub struct CliError {
    code: u8,
    message: String,
}

impl CliError {
    /// A runtime error (exit code 1).
    pub fn runtime(message: impl Into<String>) -> Self {
        Self { code: EXIT_RUNTIME, message: message.into() }
    }

    /// A usage error (exit code 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self { code: EXIT_USAGE, message: message.into() }
    }

    /// Damage found by a verification (exit code 3).
    pub fn damage(message: impl Into<String>) -> Self {
        Self { code: EXIT_DAMAGE, message: message.into() }
    }

    /// The process exit code.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, whatever the sources put in their messages.
        let one_line: String =
            self.message.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }).collect();
        f.write_str(&one_line)
    }
}

/// `Result` with [`CliError`].
pub type Result<T> = std::result::Result<T, CliError>;

/// Attach what was being done to an error and make it a runtime [`CliError`].
pub trait Context<T> {
    /// `what: cause (cause's sources...)`, exit code 1.
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::error::Error> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| CliError::runtime(format!("{}: {}", what(), chain(&e))))
    }
}

/// An error and its sources, joined with `": "` (skipping sources the message already repeats).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_is_one_line() {
        let e = CliError::runtime("a\nb\r\nc");
        assert_eq!(e.to_string(), "a b  c");
    }

    #[test]
    fn context_chains_sources() {
        let r: std::result::Result<(), std::io::Error> =
            Err(std::io::Error::new(std::io::ErrorKind::NotFound, "gone"));
        let e = r.context(|| "open x".into()).unwrap_err();
        assert_eq!(e.to_string(), "open x: gone");
    }
}

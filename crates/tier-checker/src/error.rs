//! The harness's one error: something of the run itself went wrong (a server or node that does
//! not start, a history that cannot be read) — never a finding about the cache, which the
//! checker reports as violations.

/// A harness error: one line saying what failed, with its cause.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HarnessError(String);

impl HarnessError {
    /// An error saying `what`.
    pub fn new(what: impl Into<String>) -> Self {
        Self(what.into())
    }
}

/// Adds what was being done to an error.
pub trait Context<T> {
    /// `what: cause` when `self` is an error.
    fn context(self, what: impl FnOnce() -> String) -> Result<T, HarnessError>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, HarnessError> {
        self.map_err(|e| HarnessError(format!("{}: {e}", what())))
    }
}

//! The crate's own error type, for opening and inspecting a directory.
//! Operations of the [`Tier`](tier_core::spi::Tier) trait return [`TierError`] instead.

use std::path::PathBuf;

use tier_core::{TierError, TierErrorKind};

/// What went wrong opening, recovering or inspecting a disk-tier directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiskError {
    /// Another handle (in this or another process) holds the directory's exclusive lock.
    #[error(
        "disk tier directory is locked by another owner (lock file {lock}{})",
        owner.map(|p| format!(", last opened by pid {p}")).unwrap_or_default()
    )]
    Locked {
        /// The lock file.
        lock: PathBuf,
        /// The pid the lock file names (the process that took the lock last), if readable.
        owner: Option<u32>,
    },
    /// A file system call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done ("create directory", "open segment", ...).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The directory, or a file the tier must use in it, cannot be trusted: a directory that
    /// others can write or that another user owns, or a `LOCK` or `STATE` that is a symbolic
    /// link or not a regular file. The message names the problem and the fix.
    #[error("{} {problem}; {fix}", path.display())]
    Unsafe {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// What to do about it.
        fix: String,
    },
    /// The builder's settings are not valid.
    #[error("invalid disk tier configuration: {0}")]
    Config(String),
    /// A key, a value or the state file would pass its bound (see [`DiskState`](crate::DiskState)).
    #[error("disk tier: {0}")]
    TooLarge(String),
    /// [`RecoveryMode::Strict`](crate::RecoveryMode::Strict) found a torn or corrupt record.
    #[error("corrupt record in segment {segment} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment id.
        segment: u32,
        /// Byte offset of the bad record in the segment file.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
}

impl DiskError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { what, path: path.into(), source }
    }

    pub(crate) fn unsafe_path(
        path: impl Into<PathBuf>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::Unsafe { path: path.into(), problem: problem.into(), fix: fix.into() }
    }

    /// True when the directory is held by another owner.
    pub fn is_locked(&self) -> bool {
        matches!(self, Self::Locked { .. })
    }
}

impl From<DiskError> for TierError {
    fn from(e: DiskError) -> Self {
        let kind = match &e {
            DiskError::Config(_) | DiskError::Unsafe { .. } => TierErrorKind::Rejected,
            DiskError::TooLarge(_) => TierErrorKind::TooLarge,
            DiskError::Corrupt { .. } => TierErrorKind::Decode,
            DiskError::Locked { .. } | DiskError::Io { .. } => TierErrorKind::Io,
        };
        TierError::with_source(kind, "disk tier", e)
    }
}

//! The directory: opened once, checked, and every file in it reached relative to that
//! descriptor (`openat`), never through a symbolic link (`O_NOFOLLOW`), and only when it is a
//! regular file (checked before opening, and again with `fstat` after an `O_NONBLOCK` open, so
//! that a FIFO, a device or a directory planted under a file's name never hangs an open).
//!
//! The directory's own path may pass through symbolic links: it is the configuration. What is
//! checked is the directory it names: owned by this process's user, writable by no one else.

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::error::DiskError;

/// Name of the lock file in a disk-tier directory.
pub const LOCK_FILE: &str = "LOCK";
pub(crate) const SEGMENT_SUFFIX: &str = ".seg";
/// What a file that is not a valid segment is renamed to, after its name.
pub(crate) const SET_ASIDE_SUFFIX: &str = ".damaged";

/// Append `rec` to an append-only file of records whose valid part ends at `at`, and
/// `fdatasync` it when `sync`; a write that fails part way is cut off again (the file ends at
/// `at`), so no half record is left.
pub(crate) fn append_at(file: &File, at: u64, rec: &[u8], sync: bool) -> io::Result<()> {
    if let Err(e) = file.write_all_at(rec, at) {
        let _ = file.set_len(at);
        return Err(e);
    }
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

/// `fdatasync` an append-only file when `dirty` (written since its last sync), and mark it
/// synced.
pub(crate) fn sync_dirty(file: Option<&File>, dirty: &mut bool) -> io::Result<()> {
    if let (true, Some(file)) = (*dirty, file) {
        file.sync_data()?;
        *dirty = false;
    }
    Ok(())
}

/// The file name of segment `id`: `{id:08x}.seg` (so that names sort in write order).
pub fn segment_file_name(id: u32) -> String {
    format!("{id:08x}{SEGMENT_SUFFIX}")
}

/// The segment id a file name names: exactly `{id:08x}.seg`, lowercase (anything else is not
/// one of ours, even when it would parse).
pub fn parse_segment_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(SEGMENT_SUFFIX)?;
    let id = u32::from_str_radix(hex, 16).ok()?;
    (segment_file_name(id) == name).then_some(id)
}

/// What kind of file system object a type is, for messages.
pub(crate) fn describe(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice | FileType::BlockDevice => "a device",
        FileType::Unknown => "of an unknown type",
    }
}

/// Why a file in the directory could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// It is not there.
    Missing,
    /// It is not a regular file (a symbolic link, FIFO, directory, device, ...).
    NotRegular(&'static str),
    /// The system call failed.
    Io(io::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => f.write_str("not found"),
            Self::NotRegular(what) => write!(f, "is {what}, not a regular file"),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// An open directory.
#[derive(Debug)]
pub(crate) struct Dir {
    fd: File,
    path: PathBuf,
}

impl Dir {
    /// Create `path` if missing (mode 0700, parents too), open it, and check that it is owned
    /// by this process's user and writable by no one else.
    pub fn open_private(path: &Path) -> Result<Self, DiskError> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(path)
                    .map_err(|e| DiskError::io("create directory", path, e))?;
                // The umask may have cleared bits we asked for; it cannot have added any, but
                // be exact.
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| DiskError::io("set permissions of", path, e))?;
            }
            _ => {}
        }
        let dir = Self::open(path)?;
        let meta = dir.fd.metadata().map_err(|e| DiskError::io("stat directory", path, e))?;
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(DiskError::unsafe_path(
                path,
                format!("is owned by uid {}, not by this process's uid {me}", meta.uid()),
                "give the tier a directory of its own user (or chown this one)",
            ));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(DiskError::unsafe_path(
                path,
                format!("is writable by group or others (mode {mode:04o})"),
                format!("make it private: chmod 700 {}", path.display()),
            ));
        }
        Ok(dir)
    }

    /// Open an existing directory as it is (for the read-only inspector).
    pub fn open(path: &Path) -> Result<Self, DiskError> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| DiskError::io("open directory", path, errno(e)))?;
        Ok(Self { fd: File::from(fd), path: path.to_path_buf() })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in the directory (for messages).
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The type of `name`, without following a symbolic link; `None` when it does not exist.
    pub fn file_type(&self, name: &str) -> io::Result<Option<FileType>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(errno(e)),
        }
    }

    /// Open the regular file `name` (read-only, or read-write with `write`), never following a
    /// link and never blocking on a FIFO.
    pub fn open_file(&self, name: &str, write: bool) -> Result<File, OpenError> {
        match self.file_type(name) {
            Ok(None) => return Err(OpenError::Missing),
            Ok(Some(FileType::RegularFile)) => {}
            Ok(Some(t)) => return Err(OpenError::NotRegular(describe(t))),
            Err(e) => return Err(OpenError::Io(e)),
        }
        let access = if write { OFlags::RDWR } else { OFlags::RDONLY };
        let flags = access | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Err(OpenError::Missing),
            Err(Errno::LOOP) => return Err(OpenError::NotRegular(describe(FileType::Symlink))),
            Err(e) => return Err(OpenError::Io(errno(e))),
        };
        check_regular(File::from(fd))
    }

    /// Create the file `name`, which must not exist yet (a link in its place is not followed:
    /// the creation fails), mode 0600.
    pub fn create_file(&self, name: &str) -> io::Result<File> {
        let flags = OFlags::RDWR
            | OFlags::CREATE
            | OFlags::EXCL
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::CLOEXEC;
        let fd =
            rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(0o600)).map_err(errno)?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600)).map_err(errno)?;
        Ok(File::from(fd))
    }

    /// Open `name` for reading and writing, creating it (0600) when missing; refused with a
    /// clear error when it is a link or not a regular file (the lock file, the state file).
    pub fn open_or_create(&self, name: &str, fix: &str) -> Result<File, DiskError> {
        let refuse = |problem: String| {
            DiskError::unsafe_path(self.join(name), problem, format!("{fix}: remove it"))
        };
        let link = || refuse("is a symbolic link, which the tier never follows".into());
        // Look before opening: a device or FIFO planted here is never opened at all.
        match self.file_type(name) {
            Ok(None | Some(FileType::RegularFile)) => {}
            Ok(Some(FileType::Symlink)) => return Err(link()),
            Ok(Some(t)) => return Err(refuse(format!("is {}, not a regular file", describe(t)))),
            Err(e) => return Err(DiskError::io("stat", self.join(name), e)),
        }
        let flags =
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => return Err(link()),
            Err(Errno::ISDIR) => {
                let dir = describe(FileType::Directory);
                return Err(refuse(format!("is {dir}, not a regular file")));
            }
            Err(e) => return Err(DiskError::io("open", self.join(name), errno(e))),
        };
        let file = match check_regular(File::from(fd)) {
            Ok(f) => f,
            Err(e) => return Err(refuse(e.to_string())),
        };
        let meta = file.metadata().map_err(|e| DiskError::io("stat", self.join(name), e))?;
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(refuse(format!(
                "is owned by uid {}, not by this process's uid {me}",
                meta.uid()
            )));
        }
        Ok(file)
    }

    /// Every name in the directory (not `.` and `..`; names that are not UTF-8 are not ours and
    /// are left out).
    pub fn names(&self) -> Result<Vec<String>, DiskError> {
        let err = |e: Errno| DiskError::io("read directory", &self.path, errno(e));
        let mut out = Vec::new();
        for ent in rustix::fs::Dir::read_from(&self.fd).map_err(err)? {
            let ent = ent.map_err(err)?;
            let Ok(name) = ent.file_name().to_str() else { continue };
            if name != "." && name != ".." {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }

    /// Rename `from` to `to` in the directory, never replacing an existing `to`.
    pub fn rename_new(&self, from: &str, to: &str) -> io::Result<()> {
        rustix::fs::renameat_with(&self.fd, from, &self.fd, to, RenameFlags::NOREPLACE)
            .map_err(errno)
    }

    /// Rename `from` to `to`, replacing `to` (atomic).
    pub fn rename_over(&self, from: &str, to: &str) -> io::Result<()> {
        rustix::fs::renameat(&self.fd, from, &self.fd, to).map_err(errno)
    }

    /// Remove the directory entry `name` (a link is removed itself, never its target).
    /// Missing is not an error.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(errno(e)),
        }
    }

    /// Write `bytes` to a new file `tmp`, sync it and rename it over `name` (then sync the
    /// directory), so that a crash leaves the old file or the new one, whole. Returns the new
    /// file, open; on failure `tmp` is removed.
    pub fn replace(&self, tmp: &str, name: &str, bytes: &[u8]) -> io::Result<File> {
        let _ = self.remove(tmp);
        let file = self.create_file(tmp)?;
        let written = file
            .write_all_at(bytes, 0)
            .and_then(|()| file.sync_data())
            .and_then(|()| self.rename_over(tmp, name))
            .and_then(|()| self.sync());
        if let Err(e) = written {
            let _ = self.remove(tmp);
            return Err(e);
        }
        Ok(file)
    }

    /// `fsync` the directory itself (makes created, renamed and removed names durable).
    pub fn sync(&self) -> io::Result<()> {
        self.fd.sync_all()
    }

    /// The pid written in the lock file, if it is a readable regular file.
    pub fn lock_owner(&self) -> Option<u32> {
        let file = self.open_file(LOCK_FILE, false).ok()?;
        let mut buf = [0u8; 32];
        let n = file.read_at(&mut buf, 0).ok()?;
        std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
    }
}

/// `file` when `fstat` says it is a regular file.
fn check_regular(file: File) -> Result<File, OpenError> {
    let meta = file.metadata().map_err(OpenError::Io)?;
    let t = FileType::from_raw_mode(meta.mode());
    if t == FileType::RegularFile {
        Ok(file)
    } else {
        Err(OpenError::NotRegular(describe(t)))
    }
}

/// How long a held lock is tried again before the open fails with `Locked`.
pub(crate) const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(200);

/// The directory's exclusive lock: `flock(LOCK_EX | LOCK_NB)` on `LOCK`, held while this value
/// lives (closing the file releases it). The lock file names the owner's pid.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Take the lock or fail with [`DiskError::Locked`].
    ///
    /// A `flock` belongs to the open file, which a child process shares from `fork` until it
    /// `exec`s: a lock just released by this process can look held for that instant when
    /// another thread spawns a process. So a held lock is tried again for up to
    /// [`LOCK_PATIENCE`] before the answer is `Locked`.
    pub fn acquire(dir: &Dir) -> Result<Self, DiskError> {
        let file = dir.open_or_create(LOCK_FILE, "the lock file must be a regular file")?;
        let path = dir.join(LOCK_FILE);
        let deadline = std::time::Instant::now() + LOCK_PATIENCE;
        let mut pause = std::time::Duration::from_micros(500);
        loop {
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                    // Nothing signals the end of another process's fork-to-exec window.
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(20));
                }
                Err(Errno::WOULDBLOCK) => {
                    return Err(DiskError::Locked { owner: dir.lock_owner(), lock: path })
                }
                Err(e) => return Err(DiskError::io("lock", path, errno(e))),
            }
        }
        // Name ourselves as the owner (for the error another opener gets, and for the CLI).
        let pid = std::process::id().to_string();
        let named = file.set_len(0).and_then(|()| file.write_all_at(pid.as_bytes(), 0));
        if let Err(e) = named {
            tracing::warn!(error = %e, lock = %path.display(), "could not write pid to lock file");
        }
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_are_exact() {
        assert_eq!(parse_segment_name("0000002a.seg"), Some(42));
        assert_eq!(parse_segment_name(&segment_file_name(u32::MAX)), Some(u32::MAX));
        for bad in ["0000002A.seg", "2a.seg", "x.seg", "0000002a.seg.damaged", "+000002a.seg"] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }
}

//! A hostile directory: planted symbolic links, FIFOs, directories and stray files named like
//! segments or `LOCK`, and directories that others can write. The tier never follows a link
//! inside its directory, never writes outside it, opens only regular files (so nothing hangs),
//! refuses a directory it cannot trust with an error that says what to do, and a stray name never
//! costs it a valid segment or its ability to open.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use common::{check_value, decoded, entry, segment_files, value_for};
use tier_core::spi::Tier;
use tier_disk::{DiskInspector, DiskTier};

/// Every open must finish within this (a FIFO opened for reading would block forever).
const BOUND: Duration = Duration::from_secs(20);

fn builder(dir: &Path) -> tier_disk::DiskTierBuilder {
    DiskTier::builder(dir).segment_size(64 << 10).capacity_bytes(4 << 20)
}

fn key(i: usize) -> String {
    format!("key-{i}")
}

/// A directory holding `n` keys over several segments (closed again).
fn filled(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let rt = common::runtime();
    let tier = builder(dir.path()).build().unwrap();
    rt.block_on(async {
        for i in 0..n {
            let v = value_for(&key(i), 1, 700);
            tier.insert(Bytes::from(key(i)), entry(&v, 600_000)).await.unwrap();
        }
    });
    drop(tier);
    dir
}

/// Run `f` on another thread; `None` when it did not finish within [`BOUND`]. `unblock` is run
/// after a timeout so that the stuck thread can end.
fn within<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
    unblock: impl FnOnce(),
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(BOUND) {
        Ok(v) => Some(v),
        Err(_) => {
            unblock();
            None
        }
    }
}

/// Make a FIFO at `path`.
fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path and a mode; no memory is shared with the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

/// Open a FIFO for writing without blocking (there is a reader): releases a reader stuck in open.
fn release_fifo(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path);
}

/// Every key `0..n` is served with its value.
fn all_served(tier: &DiskTier, n: usize) -> usize {
    let rt = common::runtime();
    rt.block_on(async {
        let mut served = 0;
        for i in 0..n {
            if let Some(v) = decoded(&tier.get(key(i).as_bytes()).await.unwrap()) {
                assert_eq!(check_value(&key(i), &v), Some(1));
                served += 1;
            }
        }
        served
    })
}

fn outside_file(content: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, content).unwrap();
    (outside, victim)
}

#[test]
fn a_lock_that_is_a_symlink_is_refused_and_its_target_untouched() {
    let dir = filled(10);
    let (_outside, victim) = outside_file(b"precious data that must stay as it is");
    std::fs::remove_file(dir.path().join("LOCK")).unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("LOCK")).unwrap();
    let err = builder(dir.path()).build().expect_err("a symlinked LOCK must be refused");
    let msg = err.to_string();
    assert!(msg.contains("LOCK") && msg.contains("symbolic link"), "{msg}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious data that must stay as it is");
}

#[test]
fn a_segment_symlink_is_never_followed_nor_written_through() {
    let dir = filled(200);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    // A real segment moved outside the directory and damaged there, linked back in its place.
    let mut bytes = std::fs::read(&files[1]).unwrap();
    bytes[8 << 10] ^= 0xFF;
    let (_outside, victim) = outside_file(&bytes);
    std::fs::remove_file(&files[1]).unwrap();
    std::os::unix::fs::symlink(&victim, &files[1]).unwrap();
    let tier = builder(dir.path()).build().expect("a symlinked segment is skipped, not fatal");
    assert!(std::fs::read(&victim).unwrap() == bytes, "the link's target was written to");
    assert!(std::fs::symlink_metadata(&files[1]).unwrap().file_type().is_symlink());
    drop(tier);
}

#[test]
fn a_directory_others_can_write_is_refused_with_the_fix() {
    for mode in [0o777, 0o1777, 0o770] {
        let dir = filled(5);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        let err = builder(dir.path()).build().expect_err("an open directory must be refused");
        let msg = err.to_string();
        assert!(msg.contains("writable") && msg.contains("chmod"), "mode {mode:o}: {msg}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        builder(dir.path()).build().expect("accepted once private again");
    }
}

#[test]
fn a_directory_owned_by_another_user_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: changing a directory's owner needs root");
        return;
    }
    let dir = filled(5);
    std::os::unix::fs::chown(dir.path(), Some(65534), None).unwrap();
    let err = builder(dir.path()).build().expect_err("a foreign directory must be refused");
    let msg = err.to_string();
    assert!(msg.contains("owned by uid 65534"), "{msg}");
    std::os::unix::fs::chown(dir.path(), Some(0), None).unwrap();
}

#[test]
fn a_fifo_named_like_a_segment_never_hangs_an_open() {
    let dir = filled(200);
    let files = segment_files(dir.path());
    let id = u32::from_str_radix(files[1].file_stem().unwrap().to_str().unwrap(), 16).unwrap();
    let fifo = dir.path().join(format!("{:08x}.seg", id + 100));
    mkfifo(&fifo);
    let path = dir.path().to_path_buf();
    let tier = within(move || builder(&path).build(), || release_fifo(&fifo))
        .expect("open hung on a FIFO")
        .expect("a FIFO is skipped, not fatal");
    assert_eq!(all_served(&tier, 200), 200);
    drop(tier);
    let (path, fifo) = (dir.path().to_path_buf(), dir.path().join(format!("{:08x}.seg", id + 100)));
    let insp = within(
        move || DiskInspector::open(&path).map(|i| i.stats().entries),
        || release_fifo(&fifo),
    )
    .expect("the inspector hung on a FIFO")
    .expect("inspect");
    assert_eq!(insp, 200);
}

#[test]
fn a_fifo_or_directory_as_lock_is_a_clear_error_not_a_hang() {
    for make in [mkfifo as fn(&Path), |p: &Path| std::fs::create_dir(p).unwrap()] {
        let dir = filled(5);
        let lock = dir.path().join("LOCK");
        std::fs::remove_file(&lock).unwrap();
        make(&lock);
        let path = dir.path().to_path_buf();
        let lock2 = lock.clone();
        let res = within(move || builder(&path).build().map(|_| ()), || release_fifo(&lock2))
            .expect("open hung on LOCK");
        let msg = res.expect_err("a LOCK that is not a regular file is refused").to_string();
        assert!(msg.contains("LOCK") && msg.contains("not a regular file"), "{msg}");
        let path = dir.path().to_path_buf();
        let owner = within(
            move || DiskInspector::open(&path).map(|i| i.owner_pid()),
            || release_fifo(&lock),
        )
        .expect("the inspector hung on LOCK");
        assert!(matches!(owner, Ok(None)), "{owner:?}");
    }
}

#[test]
fn a_stray_segment_name_never_deletes_valid_segments() {
    let dir = filled(300);
    let before = segment_files(dir.path()).len();
    let mut noise = vec![0u8; 4096];
    rand::Rng::fill(&mut rand::rng(), &mut noise[..]);
    std::fs::write(dir.path().join("00ffffff.seg"), &noise).unwrap();
    let tier = builder(dir.path()).build().expect("a stray file never stops the open");
    assert_eq!(all_served(&tier, 300), 300, "valid segments were lost to a stray name");
    drop(tier);
    assert!(segment_files(dir.path()).len() >= before, "segments deleted");
}

#[test]
fn a_stray_ffffffff_segment_does_not_exhaust_the_ids() {
    let dir = filled(50);
    std::fs::write(dir.path().join("ffffffff.seg"), b"not a segment at all").unwrap();
    let tier = builder(dir.path()).build().expect("a stray name never exhausts the ids");
    assert_eq!(all_served(&tier, 50), 50);
    let rt = common::runtime();
    rt.block_on(async {
        // Writes keep working, through rotations.
        for i in 50..400 {
            let v = value_for(&key(i), 1, 700);
            tier.insert(Bytes::from(key(i)), entry(&v, 600_000)).await.unwrap();
        }
    });
    assert_eq!(all_served(&tier, 400), 400);
}

#[test]
fn a_directory_named_like_a_segment_is_skipped() {
    let dir = filled(100);
    let files = segment_files(dir.path());
    let id = u32::from_str_radix(files[0].file_stem().unwrap().to_str().unwrap(), 16).unwrap();
    std::fs::create_dir(dir.path().join("x.seg")).unwrap();
    std::fs::create_dir(dir.path().join(format!("{:08x}.seg", id + 50))).unwrap();
    let tier = builder(dir.path()).build().expect("a directory named like a segment is skipped");
    assert_eq!(all_served(&tier, 100), 100);
    drop(tier);
    let insp = DiskInspector::open(dir.path()).expect("the inspector skips it too");
    assert_eq!(insp.stats().entries, 100);
}

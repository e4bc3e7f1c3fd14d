//! A real full file system: a small tmpfs mounted by the test (mounting needs root). Reading a
//! hole of a file through a mapping on a full tmpfs is a SIGBUS, so the tier must never touch a
//! mapped page past what it validated; and segments are reserved when created, so a full disk
//! shows up at rotation, never in the middle of a segment.
//!
//! Without root the tests say so and pass, unless `TIER_TEST_REQUIRE_ROOT` is set (as
//! `scripts/test` does): then not being able to mount is a failure, so that CI cannot skip them.
#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::CString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use common::{check_value, decoded, entry, value_for};
use tier_core::spi::Tier;
use tier_core::TierErrorKind;
use tier_disk::DiskTier;

const CHILD: &str = "TIER_DISK_TMPFS_CHILD";
const SEGMENT: u64 = 256 << 10;

/// A tmpfs mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    _parent: tempfile::TempDir,
    at: PathBuf,
}

impl Tmpfs {
    /// A tmpfs of `size` bytes, or `None` (with a message) when this process cannot mount.
    fn mount(size: u64) -> Option<Self> {
        let required = std::env::var_os("TIER_TEST_REQUIRE_ROOT").is_some();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(!required, "TIER_TEST_REQUIRE_ROOT is set but the tests do not run as root");
            eprintln!("skipped: mounting a tmpfs needs root (set TIER_TEST_REQUIRE_ROOT to fail)");
            return None;
        }
        let parent = tempfile::tempdir().unwrap();
        let at = parent.path().join("mnt");
        std::fs::create_dir(&at).unwrap();
        let c = |s: &str| CString::new(s).unwrap();
        let target = CString::new(at.as_os_str().as_encoded_bytes()).unwrap();
        let data = c(&format!("size={size},mode=0700"));
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c("tmpfs").as_ptr(),
                target.as_ptr(),
                c("tmpfs").as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            assert!(!required, "TIER_TEST_REQUIRE_ROOT is set but mounting a tmpfs failed: {e}");
            eprintln!("skipped: cannot mount a tmpfs: {e}");
            return None;
        }
        Some(Self { _parent: parent, at })
    }

    fn path(&self) -> &Path {
        &self.at
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.at.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
            // SAFETY: as above; a lazy unmount in case a child still had a file open.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Write `filler` until the file system has no room left.
fn fill(dir: &Path, name: &str) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join(name)).unwrap();
    let block = vec![0x5Au8; 64 << 10];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("fill: {e}"),
        }
    }
    // Small writes too, so that not one page is left.
    let byte = [0u8; 512];
    while f.write(&byte[..]).is_ok_and(|n| n > 0) {}
    let _ = f.flush();
}

fn builder(dir: &Path) -> tier_disk::DiskTierBuilder {
    DiskTier::builder(dir).segment_size(SEGMENT).capacity_bytes(4 * SEGMENT)
}

fn key(i: usize) -> String {
    format!("k{i:05}")
}

/// Where the records of segment file `path` end (read with `pread`, like the tier does).
fn end_of_records(path: &Path) -> u64 {
    let insp = tier_disk::DiskInspector::open(path.parent().unwrap()).unwrap();
    let name = path.file_stem().unwrap().to_str().unwrap();
    let id = u32::from_str_radix(name, 16).unwrap();
    insp.records()
        .map(|r| r.unwrap())
        .filter(|r| r.segment == id)
        .map(|r| r.offset + u64::from(r.record_len))
        .max()
        .unwrap_or(32)
        .next_multiple_of(4096)
}

/// Re-run this test binary's test `name` with `CHILD=<dir>`; fails on a signal (SIGBUS).
fn run_child(name: &str, dir: &Path) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture"])
        .env(CHILD, dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.signal(), Some(libc::SIGBUS), "the reopen died of SIGBUS:\n{stderr}");
    assert!(out.status.success(), "child failed: {:?}\n{stderr}", out.status);
    assert!(String::from_utf8_lossy(&out.stdout).contains("child ok"), "{stderr}");
}

/// Child side of the reopen tests: open, check every key written, try a write.
fn reopen_and_check(dir: &Path, keys: usize) {
    let rt = common::runtime();
    let tier = builder(dir).build().expect("a full file system still opens");
    rt.block_on(async {
        for i in 0..keys {
            let v = decoded(&tier.get(key(i).as_bytes()).await.unwrap()).expect("kept");
            assert!(check_value(&key(i), &v).is_some());
        }
        // Writes are I/O errors (or succeed, when the reopened segment has room), never a crash.
        for i in 0..400 {
            let v = value_for("extra", i, 2000);
            if let Err(e) = tier.insert(Bytes::from(format!("x{i}")), entry(&v, 600_000)).await {
                assert_eq!(e.kind(), TierErrorKind::Io, "{e}");
            }
        }
    });
    println!("child ok");
}

#[test]
fn reopen_of_a_full_tmpfs_never_sigbus() {
    if let Some(dir) = std::env::var_os(CHILD) {
        reopen_and_check(Path::new(&dir), 40);
        return;
    }
    let Some(fs) = Tmpfs::mount(4 << 20) else { return };
    let dir = fs.path().join("tier");
    let rt = common::runtime();
    {
        let tier = builder(&dir).build().unwrap();
        rt.block_on(async {
            for i in 0..40 {
                let v = value_for(&key(i), 1, 300 + i * 13);
                tier.insert(Bytes::from(key(i)), entry(&v, 600_000)).await.unwrap();
            }
            // One more record, sized so that the written part ends exactly at a page boundary:
            // the next record header lies in a page that was never written.
            let written = tier.disk_stats().written_bytes;
            let len = (100..5000)
                .find(|&n| {
                    let env = entry(&value_for("edge", 0, n), 600_000);
                    let body = 32 + 4 + env.envelope().unwrap().len() as u64;
                    (written + body.div_ceil(8) * 8).is_multiple_of(4096)
                })
                .expect("a length that ends on a page");
            let v = value_for("edge", 0, len);
            tier.insert(Bytes::from_static(b"edge"), entry(&v, 600_000)).await.unwrap();
            assert!(tier.disk_stats().written_bytes.is_multiple_of(4096));
        });
    }
    // Segments are reserved whole when created; make the unwritten part a hole again, as in a
    // segment written before that (or on a file system without fallocate): the next record
    // header then lies in a page that does not exist.
    for seg in common::segment_files(&dir) {
        use std::os::unix::io::AsRawFd;
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        let written = end_of_records(&seg);
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: a valid descriptor and a range inside the file.
        let rc = unsafe {
            libc::fallocate(f.as_raw_fd(), mode, written as i64, (SEGMENT - written) as i64)
        };
        assert_eq!(rc, 0, "punch a hole: {}", std::io::Error::last_os_error());
    }
    fill(fs.path(), "filler");
    run_child("reopen_of_a_full_tmpfs_never_sigbus", &dir);
}

#[test]
fn a_full_tmpfs_fails_writes_at_rotation_not_mid_segment() {
    let Some(fs) = Tmpfs::mount(4 << 20) else { return };
    let dir = fs.path().join("tier");
    let rt = common::runtime();
    let tier = builder(&dir).build().unwrap();
    rt.block_on(async {
        tier.insert(Bytes::from(key(0)), entry(&value_for(&key(0), 0, 900), 600_000))
            .await
            .unwrap();
        fill(fs.path(), "filler");
        // The active segment was reserved whole when it was created: it takes ~250 records of
        // 1 KiB before the tier needs a new segment, which the full file system refuses.
        let (mut ok, mut failed) = (0usize, 0usize);
        for i in 1..600 {
            let v = value_for(&key(i), 0, 900);
            match tier.insert(Bytes::from(key(i)), entry(&v, 600_000)).await {
                Ok(()) if failed == 0 => ok += 1,
                Ok(()) => panic!("a write succeeded after the disk was full"),
                Err(e) => {
                    assert_eq!(e.kind(), TierErrorKind::Io, "{e}");
                    failed += 1;
                }
            }
        }
        assert!(ok >= 200, "only {ok} writes fit in the reserved segment: it was not reserved");
        assert!(failed > 0);
        // Reads go on; what was written is served.
        for i in 0..=ok {
            let v = decoded(&tier.get(key(i).as_bytes()).await.unwrap()).expect("written");
            assert!(check_value(&key(i), &v).is_some());
        }
        // Room again: the next write rotates and succeeds.
        std::fs::remove_file(fs.path().join("filler")).unwrap();
        tier.insert(Bytes::from_static(b"after"), entry("after|0|", 600_000)).await.unwrap();
        assert!(tier.get(b"after").await.unwrap().is_hit());
    });
    drop(tier);
    // And it reopens on a full file system again, without a SIGBUS.
    fill(fs.path(), "filler");
    run_child("reopen_of_a_full_tmpfs_never_sigbus", &dir);
}

#[test]
fn a_lost_state_file_on_a_full_tmpfs_does_not_stop_the_open() {
    let Some(fs) = Tmpfs::mount(4 << 20) else { return };
    let dir = fs.path().join("tier");
    let rt = common::runtime();
    {
        let tier = builder(&dir).build().unwrap();
        rt.block_on(async {
            for i in 0..20 {
                let v = value_for(&key(i), 1, 500);
                tier.insert(Bytes::from(key(i)), entry(&v, 600_000)).await.unwrap();
            }
        });
        tier.state().put(b"gen:a", b"1").unwrap();
    }
    std::fs::remove_file(dir.join("STATE")).unwrap();
    fill(fs.path(), "filler");
    let tier = builder(&dir).build().expect("opens on a full disk without its state file");
    assert!(tier.state().was_lost());
    let err = tier.state().put(b"gen:a", b"2").expect_err("no room to write the state");
    assert!(matches!(err, tier_disk::DiskError::Io { .. }), "{err}");
    rt.block_on(async {
        let v = decoded(&tier.get(key(3).as_bytes()).await.unwrap()).expect("reads go on");
        assert!(check_value(&key(3), &v).is_some());
    });
    std::fs::remove_file(fs.path().join("filler")).unwrap();
    tier.state().put(b"gen:a", b"3").expect("room again: the state file is rewritten");
    drop(tier);
    let tier = builder(&dir).build().unwrap();
    assert_eq!(tier.state().get(b"gen:a").as_deref(), Some(&b"3"[..]));
    assert!(tier.state().was_lost(), "the loss stays reported until cleared");
}

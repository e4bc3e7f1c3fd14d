//! Damage to a directory never brings back what a later write replaced or removed: an entry
//! that a lost record could have superseded is served only as stale (or dropped), never fresh.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;
use common::{check_value, decoded, entry, value_for};
use tier_core::spi::{Lookup, Tier};
use tier_disk::{DiskInspector, DiskTier, RecordKind};

const KEYS: usize = 300;
const REMOVED: usize = 100;

fn builder(dir: &Path) -> tier_disk::DiskTierBuilder {
    DiskTier::builder(dir).segment_size(64 << 10).capacity_bytes(8 << 20)
}

fn key(i: usize) -> String {
    format!("key-{i}")
}

/// Every key at version 1, then every key at version 2, then keys `0..REMOVED` removed.
fn history(dir: &Path) {
    let rt = common::runtime();
    let tier = builder(dir).build().unwrap();
    rt.block_on(async {
        for seq in 1..=2 {
            for i in 0..KEYS {
                let v = value_for(&key(i), seq, 600);
                tier.insert(Bytes::from(key(i)), entry(&v, 600_000)).await.unwrap();
            }
        }
        for i in 0..REMOVED {
            tier.remove(key(i).as_bytes()).await.unwrap();
        }
    });
}

/// What the reopened tier serves: (fresh hits that are not the last write, removed keys served
/// fresh, values that were never written).
fn violations(dir: &Path) -> (usize, usize, usize) {
    let rt = common::runtime();
    let tier = builder(dir).build().unwrap();
    rt.block_on(async {
        let (mut older, mut resurrected, mut wrong) = (0, 0, 0);
        for i in 0..KEYS {
            let got = tier.get(key(i).as_bytes()).await.unwrap();
            let Some(v) = decoded(&got) else { continue };
            let Some(seq) = check_value(&key(i), &v) else {
                wrong += 1;
                continue;
            };
            if matches!(got, Lookup::Hit(_)) {
                if i < REMOVED {
                    resurrected += 1;
                } else if seq != 2 {
                    older += 1;
                }
            }
        }
        (older, resurrected, wrong)
    })
}

fn segment_path(dir: &Path, id: u32) -> std::path::PathBuf {
    dir.join(format!("{id:08x}.seg"))
}

#[test]
fn a_bit_flip_in_the_newest_segment_never_brings_removed_keys_back_fresh() {
    let dir = tempfile::tempdir().unwrap();
    history(dir.path());
    let first_tombstone = DiskInspector::open(dir.path())
        .unwrap()
        .records()
        .map(|r| r.unwrap())
        .find(|r| r.kind == RecordKind::Tombstone)
        .unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(segment_path(dir.path(), first_tombstone.segment))
        .unwrap();
    let at = first_tombstone.offset + 20; // inside its key hash: the CRC no longer matches
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
    drop(f);
    assert_eq!(violations(dir.path()), (0, 0, 0), "(older fresh, removed fresh, wrong)");
}

#[test]
fn a_deleted_segment_never_brings_older_versions_back_fresh() {
    let dir = tempfile::tempdir().unwrap();
    history(dir.path());
    // A segment that holds version-2 records (and so replaced version-1 records before it).
    let v2 = DiskInspector::open(dir.path())
        .unwrap()
        .records()
        .map(|r| r.unwrap())
        .filter(|r| r.kind == RecordKind::Value && r.live)
        .map(|r| r.segment)
        .min()
        .unwrap();
    std::fs::remove_file(segment_path(dir.path(), v2 + 1)).unwrap();
    assert_eq!(violations(dir.path()), (0, 0, 0), "(older fresh, removed fresh, wrong)");
}

// ---------------------------------------------------------------------------------------------
// The damage suite: every kind of damage of issue 21 applied to a copy of one directory, then
// the inspector (what `tier disk verify` prints) and a reopen, each bounded in time.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tier_disk::{DiskError, RecoveryMode};

/// Every open and every inspection must end within this.
const BOUND: Duration = Duration::from_secs(20);

/// A directory holding `history()`, and where each segment's written part ends.
struct Pristine {
    dir: tempfile::TempDir,
    /// (id, written end), oldest first.
    segs: Vec<(u32, u64)>,
}

impl Pristine {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        history(dir.path());
        let mut ends: std::collections::BTreeMap<u32, u64> = Default::default();
        for r in DiskInspector::open(dir.path()).unwrap().records() {
            let r = r.unwrap();
            let e = ends.entry(r.segment).or_default();
            *e = (*e).max(r.offset + u64::from(r.record_len));
        }
        Self { dir, segs: ends.into_iter().collect() }
    }

    /// A fresh copy of the directory.
    fn copy(&self) -> tempfile::TempDir {
        let to = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(self.dir.path()).unwrap() {
            let p = f.unwrap().path();
            std::fs::copy(&p, to.path().join(p.file_name().unwrap())).unwrap();
        }
        to
    }

    fn newest(&self) -> u32 {
        self.segs.last().unwrap().0
    }
}

fn seg_file(dir: &Path, id: u32) -> PathBuf {
    segment_path(dir, id)
}

fn flip(path: &Path, at: u64, bit: u8) {
    let f = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ (1 << bit)], at).unwrap();
}

fn write_at(path: &Path, at: u64, bytes: &[u8]) {
    OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, at).unwrap();
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

fn random(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v[..]);
    v
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path and a mode.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// Release a reader stuck opening a FIFO (there is a reader, so this does not block).
fn release_fifos(dir: &Path) {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    for f in std::fs::read_dir(dir).unwrap() {
        let p = f.unwrap().path();
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_fifo()) {
            let _ = OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&p);
        }
    }
}

/// Run `f` on a thread, bounded by [`BOUND`]; `Err(true)` on a panic, `Err(false)` on a hang.
fn bounded<T: Send + 'static>(
    dir: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, bool> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(BOUND) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(true),
        Err(_) => {
            release_fifos(dir);
            Err(false)
        }
    }
}

/// What one reopen of a damaged directory served.
#[derive(Debug, Default, Clone, Copy)]
struct Served {
    fresh: usize,
    stale: usize,
    older_fresh: usize,
    removed_fresh: usize,
    wrong: usize,
    /// The key written after the previous open's damage check was served fresh.
    after_fresh: bool,
}

/// Open `dir` and read every key: the report and what was served.
fn reopen(
    dir: &Path,
    mode: RecoveryMode,
) -> Result<(tier_disk::RecoveryReport, Served), DiskError> {
    let rt = common::runtime();
    let tier = builder(dir).recovery(mode).build()?;
    let served = rt.block_on(async {
        let mut s = Served::default();
        for i in 0..KEYS {
            let got = tier.get(key(i).as_bytes()).await.expect("get never fails on damage");
            let Some(v) = decoded(&got) else { continue };
            let Some(seq) = check_value(&key(i), &v) else {
                s.wrong += 1;
                continue;
            };
            if matches!(got, Lookup::Hit(_)) {
                s.fresh += 1;
                s.removed_fresh += usize::from(i < REMOVED);
                s.older_fresh += usize::from(i >= REMOVED && seq != 2);
            } else {
                s.stale += 1;
            }
        }
        // Writes after the damage are fresh, and stay fresh across the next open.
        let after = "written-after-damage";
        s.after_fresh = tier.get(after.as_bytes()).await.unwrap().is_hit();
        let v = value_for(after, 3, 100);
        tier.insert(Bytes::from(after), entry(&v, 600_000)).await.expect("insert after damage");
        assert!(tier.get(after.as_bytes()).await.unwrap().is_hit());
        s
    });
    Ok((tier.recovery_report().clone(), served))
}

/// What is expected of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Opens; `tier disk verify` reports the damage.
    Reported,
    /// Opens; the damage cannot be told from normal operation and loses nothing that could
    /// come back (the oldest segment deleted looks like a reclaim).
    Harmless,
    /// The open is refused with an error naming the file (a LOCK or STATE that is not a
    /// regular file); nothing is written through it.
    Refused,
}

type Damage = Box<dyn Fn(&Path, &mut StdRng)>;

fn cases(p: &Pristine) -> Vec<(String, Expect, Damage)> {
    let mut v: Vec<(String, Expect, Damage)> = Vec::new();
    let segs = p.segs.clone();
    let (oldest, newest) = (segs[0].0, p.newest());
    for &(id, end) in &segs {
        for n in 0..3 {
            v.push((
                format!("bit flip {n} in segment {id}"),
                Expect::Reported,
                Box::new(move |d, r| {
                    flip(&seg_file(d, id), r.random_range(32..end), r.random_range(0..8));
                }),
            ));
        }
        v.push((
            format!("header flip of segment {id}"),
            Expect::Reported,
            Box::new(move |d, r| {
                flip(&seg_file(d, id), r.random_range(0..28), r.random_range(0..8));
            }),
        ));
        for n in 0..2 {
            v.push((
                format!("truncation {n} of segment {id}"),
                Expect::Reported,
                Box::new(move |d, r| {
                    truncate(&seg_file(d, id), r.random_range(33..end));
                }),
            ));
            v.push((
                format!("zero range {n} in segment {id}"),
                Expect::Reported,
                Box::new(move |d, r| {
                    let at = r.random_range(33..end);
                    let len = r.random_range(1..8192).min(end - at);
                    write_at(&seg_file(d, id), at, &vec![0u8; len as usize]);
                }),
            ));
        }
        v.push((
            format!("garbage after the written part of {id}"),
            Expect::Reported,
            Box::new(move |d, r| {
                let n = r.random_range(1..4096);
                write_at(&seg_file(d, id), end + r.random_range(0..64) * 8, &random(r, n));
            }),
        ));
        v.push((
            format!("garbage appended to the file of {id}"),
            Expect::Reported,
            Box::new(move |d, r| {
                let path = seg_file(d, id);
                let len = std::fs::metadata(&path).unwrap().len();
                let n = r.random_range(1..4096);
                write_at(&path, len, &random(r, n));
            }),
        ));
        v.push((
            format!("random body of segment {id}"),
            Expect::Reported,
            Box::new(move |d, r| {
                write_at(&seg_file(d, id), 32, &random(r, end as usize - 32));
            }),
        ));
        v.push((
            format!("segment {id} emptied"),
            Expect::Reported,
            Box::new(move |d, _| {
                truncate(&seg_file(d, id), 0);
            }),
        ));
        let expect = if id == oldest { Expect::Harmless } else { Expect::Reported };
        v.push((
            format!("segment {id} deleted"),
            expect,
            Box::new(move |d, _| {
                std::fs::remove_file(seg_file(d, id)).unwrap();
            }),
        ));
        v.push((
            format!("directory in place of segment {id}"),
            Expect::Reported,
            Box::new(move |d, _| {
                std::fs::remove_file(seg_file(d, id)).unwrap();
                std::fs::create_dir(seg_file(d, id)).unwrap();
            }),
        ));
        v.push((
            format!("FIFO in place of segment {id}"),
            Expect::Reported,
            Box::new(move |d, _| {
                std::fs::remove_file(seg_file(d, id)).unwrap();
                mkfifo(&seg_file(d, id));
            }),
        ));
        v.push((
            format!("symlink in place of segment {id}"),
            Expect::Reported,
            Box::new(move |d, _| {
                let outside = d.with_extension("outside");
                std::fs::rename(seg_file(d, id), &outside).unwrap();
                std::os::unix::fs::symlink(&outside, seg_file(d, id)).unwrap();
            }),
        ));
    }
    for w in segs.windows(2) {
        let (a, b) = (w[0].0, w[1].0);
        v.push((
            format!("segments {a} and {b} swapped"),
            Expect::Reported,
            Box::new(move |d, _| {
                let tmp = d.join("swap");
                std::fs::rename(seg_file(d, a), &tmp).unwrap();
                std::fs::rename(seg_file(d, b), seg_file(d, a)).unwrap();
                std::fs::rename(&tmp, seg_file(d, b)).unwrap();
            }),
        ));
        v.push((
            format!("segment {a} copied over {b}"),
            Expect::Reported,
            Box::new(move |d, _| {
                std::fs::copy(seg_file(d, a), seg_file(d, b)).unwrap();
            }),
        ));
    }
    v.push((
        "a segment copied to a new id".into(),
        Expect::Reported,
        Box::new(move |d, _| {
            std::fs::copy(seg_file(d, oldest), seg_file(d, newest + 1)).unwrap();
        }),
    ));
    v.push((
        "an empty file at a new id".into(),
        Expect::Harmless,
        Box::new(move |d, _| {
            std::fs::write(seg_file(d, newest + 1), b"").unwrap();
        }),
    ));
    for name in ["00ffffff.seg", "ffffffff.seg", "0000000A.seg", "garbage.seg", "12.seg"] {
        v.push((
            format!("stray {name} of random bytes"),
            Expect::Reported,
            Box::new(move |d, r| {
                std::fs::write(d.join(name), random(r, 4096)).unwrap();
            }),
        ));
    }
    v.push((
        "directory x.seg".into(),
        Expect::Reported,
        Box::new(|d, _| {
            std::fs::create_dir(d.join("x.seg")).unwrap();
        }),
    ));
    v.push((
        "FIFO at the next id".into(),
        Expect::Reported,
        Box::new(move |d, _| {
            mkfifo(&seg_file(d, newest + 1));
        }),
    ));
    v.push((
        "dangling symlink at the next id".into(),
        Expect::Reported,
        Box::new(move |d, _| {
            std::os::unix::fs::symlink(d.join("nowhere"), seg_file(d, newest + 1)).unwrap();
        }),
    ));
    for file in ["LOCK", "STATE"] {
        v.push((
            format!("{file} a symlink"),
            Expect::Refused,
            Box::new(move |d, _| {
                let outside = d.with_extension(format!("{file}-target"));
                std::fs::write(&outside, b"outside").unwrap();
                std::fs::remove_file(d.join(file)).unwrap();
                std::os::unix::fs::symlink(&outside, d.join(file)).unwrap();
            }),
        ));
        v.push((
            format!("{file} a FIFO"),
            Expect::Refused,
            Box::new(move |d, _| {
                std::fs::remove_file(d.join(file)).unwrap();
                mkfifo(&d.join(file));
            }),
        ));
        v.push((
            format!("{file} a directory"),
            Expect::Refused,
            Box::new(move |d, _| {
                std::fs::remove_file(d.join(file)).unwrap();
                std::fs::create_dir(d.join(file)).unwrap();
            }),
        ));
    }
    v.push((
        "STATE deleted".into(),
        Expect::Reported,
        Box::new(|d, _| {
            std::fs::remove_file(d.join("STATE")).unwrap();
        }),
    ));
    v.push((
        "STATE bit flip".into(),
        Expect::Reported,
        Box::new(|d, r| {
            let len = std::fs::metadata(d.join("STATE")).unwrap().len();
            flip(&d.join("STATE"), r.random_range(0..len), r.random_range(0..8));
        }),
    ));
    v
}

#[test]
fn the_damage_suite() {
    let pristine = Pristine::new();
    assert!(pristine.segs.len() >= 5, "{:?}", pristine.segs);
    let mut rng = StdRng::seed_from_u64(0x00DA_3A6E);
    let (mut n, mut panics, mut hangs, mut damage_found, mut suspect, mut stale, mut refused) =
        (0, 0, 0, 0u64, 0u64, 0usize, 0);
    let mut not_reported = Vec::new();
    let mut fresh = 0usize;
    for (name, expect, damage) in cases(&pristine) {
        for mode in [RecoveryMode::Recover, RecoveryMode::DropSuspect] {
            n += 1;
            let copy = pristine.copy();
            let dir = copy.path().to_path_buf();
            damage(&dir, &mut rng);
            let d = dir.clone();
            let verify = bounded(&dir, move || {
                let insp = DiskInspector::open(&d).map_err(|e| e.to_string())?;
                insp.verify().map(|v| v.is_clean()).map_err(|e| e.to_string())
            });
            let d = dir.clone();
            let opened = bounded(&dir, move || reopen(&d, mode));
            match (&verify, &opened) {
                (Err(true), _) | (_, Err(true)) => panics += 1,
                (Err(false), _) | (_, Err(false)) => hangs += 1,
                _ => {}
            }
            let clean = matches!(verify, Ok(Ok(true)));
            if expect != Expect::Harmless && clean {
                not_reported.push(name.clone());
            }
            match opened {
                Ok(Ok((report, s))) => {
                    assert_ne!(expect, Expect::Refused, "{name}: opened");
                    assert_eq!(
                        (s.older_fresh, s.removed_fresh, s.wrong),
                        (0, 0, 0),
                        "{name} ({mode:?}): {report:?}"
                    );
                    if mode == RecoveryMode::DropSuspect {
                        assert_eq!(s.stale, 0, "{name}: suspect entries are dropped");
                    }
                    damage_found += report.corrupt;
                    suspect += report.suspect;
                    stale += s.stale;
                    fresh += s.fresh;
                    // Counted once: the next open finds nothing new.
                    let again = bounded(&dir, {
                        let d = dir.clone();
                        move || reopen(&d, mode)
                    });
                    match again {
                        Ok(Ok((again, s2))) => {
                            assert_eq!(again.corrupt, 0, "{name}: counted again: {again:?}");
                            assert!(
                                s2.after_fresh,
                                "{name}: a write after the damage is not fresh"
                            );
                            assert_eq!(
                                (s2.older_fresh, s2.removed_fresh, s2.wrong),
                                (0, 0, 0),
                                "{name}"
                            );
                        }
                        other => panic!("{name}: second open: {:?}", other.map(|r| r.map(|_| ()))),
                    }
                }
                Ok(Err(e)) => {
                    assert_eq!(expect, Expect::Refused, "{name}: refused: {e}");
                    let msg = e.to_string();
                    assert!(msg.contains("LOCK") || msg.contains("STATE"), "{name}: {msg}");
                    refused += 1;
                    for target in ["LOCK-target", "STATE-target"] {
                        let t = dir.with_extension(target);
                        if t.exists() {
                            assert_eq!(
                                std::fs::read(&t).unwrap(),
                                b"outside",
                                "{name}: written through"
                            );
                        }
                    }
                }
                Err(_) => {}
            }
        }
    }
    assert_eq!((panics, hangs), (0, 0), "panics, hangs");
    assert!(not_reported.is_empty(), "not reported by verify: {not_reported:?}");
    eprintln!(
        "damage suite: {} cases, each in Recover and DropSuspect ({n} damaged directories, each \
         inspected and opened twice), 0 panics, 0 hangs, 0 wrong values, 0 older or removed values served fresh; {damage_found} pieces of damage found, \
         {suspect} entries made suspect ({stale} served as stale, the rest dropped), {fresh} served \
         fresh, {refused} \
         opens refused (LOCK/STATE not a regular file); every damaged case reported by verify",
        n / 2
    );
}

// ---------------------------------------------------------------------------------------------
// What "suspect" means to a reader, and the recovery modes.

/// `a` in the oldest segment, then enough to rotate, then a tombstone in the newest segment,
/// whose CRC is then broken: the lost tombstone could have removed `a`, so `a` is suspect.
fn suspect_a(dir: &Path) {
    let rt = common::runtime();
    let tier = builder(dir).build().unwrap();
    rt.block_on(async {
        tier.insert(Bytes::from_static(b"a"), entry(&value_for("a", 1, 100), 600_000))
            .await
            .unwrap();
        for i in 0..200 {
            tier.insert(Bytes::from(key(i)), entry(&value_for(&key(i), 1, 600), 600_000))
                .await
                .unwrap();
        }
        tier.remove(key(199).as_bytes()).await.unwrap();
    });
    drop(tier);
    let tomb = DiskInspector::open(dir)
        .unwrap()
        .records()
        .map(|r| r.unwrap())
        .find(|r| r.kind == RecordKind::Tombstone)
        .unwrap();
    flip(&segment_path(dir, tomb.segment), tomb.offset + 20, 3);
}

#[test]
fn a_suspect_entry_is_stale_for_the_tier_and_the_hierarchy() {
    let dir = tempfile::tempdir().unwrap();
    suspect_a(dir.path());
    common::runtime().block_on(suspect_is_stale(dir.path()));
}

async fn suspect_is_stale(dir: &Path) {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use tier_core::{Cache, FailSafe, TierPolicy};

    let tier = Arc::new(builder(dir).build().unwrap());
    assert!(tier.recovery_report().suspect > 0, "{:?}", tier.recovery_report());
    let got = tier.get(b"a").await.unwrap();
    let Lookup::Stale(e) = &got else { panic!("a suspect entry must be stale: {got:?}") };
    assert!(e.meta.fresh_until <= tier_core::spi::now_ms());
    assert_eq!(decoded(&got).as_deref(), Some(value_for("a", 1, 100).as_str()));
    assert!(tier.get_raw(b"a").unwrap().info.suspect);

    let cache = Cache::<String>::builder("suspect")
        .tier_arc(Arc::clone(&tier) as Arc<dyn Tier>, TierPolicy::fresh(Duration::from_secs(600)))
        .fail_safe(FailSafe::up_to(Duration::from_secs(3600)))
        .build()
        .unwrap();
    // The origin is down: fail-safe serves the suspect value, as stale.
    let failed = cache
        .get_or_load("a", || async {
            Err::<Option<String>, _>(std::io::Error::other("origin down"))
        })
        .await
        .unwrap();
    assert_eq!(failed.as_deref().map(String::as_str), Some(value_for("a", 1, 100).as_str()));
    // The origin is up: it is asked (the suspect value is never fresh), and its answer replaces it.
    let loads = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&loads);
    let fresh = cache
        .get_or_load_with("a", &tier_core::CallOptions::default(), move || async move {
            counted.fetch_add(1, Ordering::Relaxed);
            Ok::<_, std::convert::Infallible>(Some("a|2|reloaded".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(fresh.as_deref().map(String::as_str), Some("a|2|reloaded"));
    assert_eq!(loads.load(Ordering::Relaxed), 1);
    // The load's write-through runs after its caller is answered (on the tier's writer thread).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !tier.get(b"a").await.unwrap().is_hit() {
        assert!(std::time::Instant::now() < deadline, "the reloaded value is fresh again");
        tokio::task::yield_now().await;
    }
}

#[test]
fn drop_suspect_drops_and_strict_refuses_only_damage_not_recorded_yet() {
    let dir = tempfile::tempdir().unwrap();
    suspect_a(dir.path());
    let err = builder(dir.path()).recovery(RecoveryMode::Strict).build().expect_err("strict");
    assert!(matches!(err, DiskError::Corrupt { .. }), "{err}");
    {
        let tier = builder(dir.path()).recovery(RecoveryMode::DropSuspect).build().unwrap();
        let r = tier.recovery_report();
        assert!(r.corrupt == 1 && r.suspect > 0 && r.damage[0].suspect, "{r:?}");
        let rt = common::runtime();
        assert!(matches!(rt.block_on(tier.get(b"a")).unwrap(), Lookup::Miss));
    }
    // Recorded now: strict opens it, and what damage made suspect stays suspect.
    let tier = builder(dir.path()).recovery(RecoveryMode::Strict).build().expect("recorded damage");
    let r = tier.recovery_report();
    assert!(r.corrupt == 0 && r.known_damage == 1 && r.suspect > 0, "{r:?}");
    let rt = common::runtime();
    assert!(matches!(rt.block_on(tier.get(b"a")).unwrap(), Lookup::Stale(_)));
}

#[test]
fn a_gap_left_by_the_previous_version_is_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    history(dir.path());
    let ids: Vec<u32> = common::segment_files(dir.path())
        .iter()
        .map(|p| u32::from_str_radix(p.file_stem().unwrap().to_str().unwrap(), 16).unwrap())
        .collect();
    assert!(ids.len() >= 4);
    // The previous version wrote headers without the predecessor, and at open deleted an empty
    // newest segment and went on with the next id: renumber the last segments one id up, every
    // header in the old format.
    let skip_from = ids[ids.len() / 2];
    for &id in ids.iter().rev() {
        let mut bytes = std::fs::read(segment_path(dir.path(), id)).unwrap();
        let new_id = if id >= skip_from { id + 1 } else { id };
        bytes[8..12].copy_from_slice(&new_id.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..16]);
        bytes[16..20].copy_from_slice(&crc.to_le_bytes());
        bytes[20..32].fill(0);
        std::fs::remove_file(segment_path(dir.path(), id)).unwrap();
        std::fs::write(segment_path(dir.path(), new_id), &bytes).unwrap();
    }
    // Its state file did not exist either.
    std::fs::remove_file(dir.path().join("STATE")).unwrap();
    assert!(DiskInspector::open(dir.path()).unwrap().damage().is_empty());
    let tier = builder(dir.path()).build().unwrap();
    let r = tier.recovery_report();
    assert!(r.corrupt == 0 && r.suspect == 0 && r.damage.is_empty(), "{r:?}");
    drop(tier);
    let (older, resurrected, wrong) = violations(dir.path());
    assert_eq!((older, resurrected, wrong), (0, 0, 0));
}

/// A directory whose newest segment ends with a 20 KiB record (spanning pages); returns the
/// directory, that record's segment and offset, and its length.
fn with_long_last_record() -> (tempfile::TempDir, u32, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let rt = common::runtime();
    let tier = builder(dir.path()).build().unwrap();
    rt.block_on(async {
        for i in 0..20 {
            let v = value_for(&key(i), 1, 300);
            tier.insert(Bytes::from(key(i)), entry(&v, 600_000)).await.unwrap();
        }
        tier.remove(key(0).as_bytes()).await.unwrap();
        let v = value_for("long", 1, 20_000);
        tier.insert(Bytes::from_static(b"long"), entry(&v, 600_000)).await.unwrap();
    });
    drop(tier);
    let last =
        DiskInspector::open(dir.path()).unwrap().records().map(|r| r.unwrap()).last().unwrap();
    assert_eq!(&last.key[..], b"long");
    (dir, last.segment, last.offset, u64::from(last.record_len))
}

#[test]
fn a_last_write_cut_short_makes_what_came_before_suspect() {
    // What a kill -9 in the middle of that write leaves (its pages up to one boundary) cannot
    // be told for sure from damage to an acknowledged record: treated as damage.
    for extra in [0, 100] {
        let (dir, seg, at, len) = with_long_last_record();
        let cut = (at / 4096 + 2) * 4096 + extra;
        write_at(&segment_path(dir.path(), seg), cut, &vec![0u8; (at + len - cut) as usize]);
        let rt = common::runtime();
        {
            let tier = builder(dir.path()).build().unwrap();
            let r = tier.recovery_report();
            assert!(r.corrupt == 1 && r.suspect > 0 && r.damage[0].suspect, "{r:?}");
            assert!(matches!(rt.block_on(tier.get(b"long")).unwrap(), Lookup::Miss));
            assert!(matches!(rt.block_on(tier.get(key(0).as_bytes())).unwrap(), Lookup::Miss));
            let got = rt.block_on(tier.get(key(5).as_bytes())).unwrap();
            assert!(matches!(got, Lookup::Stale(_)), "{got:?}");
        }
        let again = builder(dir.path()).build().unwrap();
        let r = again.recovery_report();
        assert!(r.corrupt == 0 && r.known_damage == 1 && r.suspect > 0, "counted once: {r:?}");
    }
}

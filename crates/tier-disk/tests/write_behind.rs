//! The write-behind queue in the disk tier's directory, under a hierarchy: what is pending
//! when the cache goes away is written after the directory is opened again (newest value per
//! key, in order); a damaged queue file keeps its good records and says what it lost; a full
//! disk fails the write-behind with an error and loses nothing acknowledged; a damaged queue
//! file on a full disk still opens (kept as it is until there is room). (Kill tests:
//! `write_behind_crash.rs`.)
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tier_core::testing::RecordingOrigin;
use tier_core::{Cache, CacheError, TierPolicy, WriteBehind};
use tier_disk::{DiskInspector, DiskTier};

const ENV: &str = "TIER_DISK_WB_FULL_CHILD";
const DAMAGED_ENV: &str = "TIER_DISK_WB_DAMAGED_FULL_CHILD";

fn cache_of(dir: &Path, origin: &RecordingOrigin<u64>, opts: WriteBehind) -> Cache<u64> {
    let tier = DiskTier::builder(dir).segment_size(256 << 10).capacity_bytes(4 << 20).build();
    Cache::builder("wb")
        .tier(tier.unwrap(), TierPolicy::fresh(Duration::from_secs(600)))
        .write_behind(origin.clone(), opts.max_delay(Duration::ZERO))
        .build()
        .unwrap()
}

fn cache(dir: &Path, origin: &RecordingOrigin<u64>) -> Cache<u64> {
    cache_of(dir, origin, WriteBehind::default())
}

/// An origin that fails every write (its first batch waits an hour to retry): everything
/// written behind stays in the queue.
fn down() -> RecordingOrigin<u64> {
    let origin = RecordingOrigin::new();
    origin.fail(u32::MAX);
    origin
}

fn first_batch_waits_an_hour(origin: &RecordingOrigin<u64>, dir: &Path) -> Cache<u64> {
    let hour = Duration::from_secs(3600);
    cache_of(dir, origin, WriteBehind::default().backoff(hour, hour))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_pending_when_the_cache_goes_away_is_written_after_the_reopen_newest_per_key() {
    let dir = tempfile::tempdir().unwrap();
    {
        let cache = first_batch_waits_an_hour(&down(), dir.path());
        for i in 0..30u64 {
            cache.write_behind(format!("k{}", i % 10), i).await.unwrap();
        }
        assert_eq!(cache.write_behind_status().unwrap().pending, 10);
    }
    let queue = DiskInspector::open(dir.path()).unwrap().queue().unwrap();
    assert!(queue.damage.is_empty(), "{:?}", queue.damage);
    assert_eq!(queue.pending.len(), 10);
    let origin = RecordingOrigin::new();
    let cache = cache(dir.path(), &origin);
    cache.flush_write_behind().await.unwrap();
    let mut got: Vec<(String, u64)> = origin
        .writes()
        .into_iter()
        .map(|(k, v, _)| (String::from_utf8(k.to_vec()).unwrap(), v))
        .collect();
    got.sort();
    let mut want: Vec<(String, u64)> = (20..30u64).map(|i| (format!("k{}", i % 10), i)).collect();
    want.sort();
    assert_eq!(got, want, "the newest value of each key, once");
    drop(cache);
    // Written: nothing is owed after another reopen.
    let queue = DiskInspector::open(dir.path()).unwrap().queue().unwrap();
    assert!(queue.pending.is_empty() && queue.dead.is_empty(), "{queue:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_queue_file_keeps_its_good_records_and_says_what_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    {
        let cache = first_batch_waits_an_hour(&down(), dir.path());
        for i in 0..20u64 {
            cache.write_behind(format!("key-{i:02}"), i).await.unwrap();
        }
    }
    let path = dir.path().join("QUEUE");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let queue = DiskInspector::open(dir.path()).unwrap().queue().unwrap();
    assert_eq!(queue.damage.len(), 1, "{:?}", queue.damage);
    assert_eq!(queue.pending.len(), 19, "one record lost, the others kept");
    let origin = RecordingOrigin::new();
    let cache = cache(dir.path(), &origin);
    cache.flush_write_behind().await.unwrap();
    assert_eq!(origin.writes().len(), 19);
    drop(cache);
    // The file was rewritten with what was read back: no damage is reported again.
    let queue = DiskInspector::open(dir.path()).unwrap().queue().unwrap();
    assert!(queue.damage.is_empty(), "{:?}", queue.damage);
}

/// Child: a write-behind cache whose files may not grow past 96 KiB writes until the queue
/// fails; prints the keys acknowledged (and, apart, those whose queue append failed).
fn full_disk_child(dir: &str) -> ! {
    let rt = common::runtime();
    let (acked, refused) = rt.block_on(async {
        let cache = first_batch_waits_an_hour(&down(), Path::new(dir));
        // SAFETY: plain libc calls with valid arguments (see full_disk.rs).
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit { rlim_cur: 96 << 10, rlim_max: libc::RLIM_INFINITY };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0, "setrlimit");
        }
        let (mut acked, mut refused) = (Vec::new(), Vec::new());
        for i in 0..400u64 {
            let key = format!("k{i:03}-{}", "x".repeat(500));
            match cache.write_behind(&key, i).await {
                Ok(()) => acked.push(i),
                Err(CacheError::Tier { tier, source }) if tier == "write-behind queue" => {
                    assert_eq!(source.kind(), tier_core::TierErrorKind::Io, "{source}");
                    refused.push(i);
                }
                // The queue has it; the disk tier's own write failed.
                Err(CacheError::Tier { source, .. }) => {
                    assert_eq!(source.kind(), tier_core::TierErrorKind::Io, "{source}");
                    acked.push(i);
                }
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        (acked, refused)
    });
    let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    println!("acked={}", list(&acked));
    println!("refused={}", list(&refused));
    std::process::exit(0)
}

#[test]
fn a_full_disk_fails_the_write_behind_with_an_error_and_loses_nothing_acknowledged() {
    if let Ok(dir) = std::env::var(ENV) {
        full_disk_child(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_full_disk_fails_the_write_behind_with_an_error_and_loses_nothing_acknowledged",
            "--nocapture",
        ])
        .env(ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = |name: &str| -> Vec<u64> {
        let line = stdout.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default();
        line.split(',').filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect()
    };
    let (acked, refused) = (list("acked="), list("refused="));
    assert!(acked.len() > 10 && !refused.is_empty(), "acked {acked:?} refused {refused:?}");
    let queue = DiskInspector::open(dir.path()).unwrap().queue().unwrap();
    assert!(queue.damage.is_empty(), "{:?}", queue.damage);
    let mut pending: Vec<u64> =
        queue.pending.iter().map(|w| rmp_serde::from_slice::<u64>(&w.value).unwrap()).collect();
    pending.sort_unstable();
    assert_eq!(pending, acked, "every acknowledged write is owed, no refused one");
}

/// Callers that give up while their write is being appended (a timeout, a dropped request)
/// give their room in the queue back, and a write that became durable meanwhile is still
/// written: before, each such caller kept its room forever (the queue filled up with nothing
/// in it) and a durable write it left was never handed to the writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_mid_append_leaks_no_room_and_strands_no_durable_write() {
    use tier_core::WhenFull;
    let dir = tempfile::tempdir().unwrap();
    let origin = RecordingOrigin::new();
    let opts = WriteBehind::default().capacity(3).when_full(WhenFull::Fail);
    let cache = cache_of(dir.path(), &origin, opts);
    let mut given_up = 0;
    for i in 0..20u64 {
        // Polled once, then dropped: the append (an fdatasync) is still running.
        let once = tokio::time::timeout(Duration::ZERO, cache.write_behind(format!("c{i}"), i));
        given_up += u32::from(once.await.is_err());
    }
    assert!(given_up > 0, "no caller gave up mid-append");
    // The writes that became durable are written; nothing is left owed.
    let queued_or_not = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            cache.flush_write_behind().await.unwrap();
            if DiskInspector::open(dir.path()).unwrap().queue().unwrap().pending.is_empty() {
                return;
            }
            tokio::task::yield_now().await;
        }
    });
    queued_or_not.await.expect("every durable write is written");
    // The room is all there: three writes held at once (the origin holds the first batch).
    origin.hold();
    cache.write_behind("a", 1).await.unwrap();
    origin.entered().await;
    cache.write_behind("b", 1).await.unwrap();
    cache.write_behind("c", 1).await.unwrap();
    origin.release();
    cache.flush_write_behind().await.unwrap();
}

/// A cache whose disk tier has small segments (so that it needs no file past 64 KiB) and whose
/// origin is down (first retry an hour away).
fn small_segments_down(dir: &Path) -> Cache<u64> {
    let hour = Duration::from_secs(3600);
    let tier = DiskTier::builder(dir).segment_size(64 << 10).capacity_bytes(8 << 20).build();
    Cache::builder("wb")
        .tier(tier.unwrap(), TierPolicy::fresh(Duration::from_secs(600)))
        .write_behind(down(), WriteBehind::default().max_delay(Duration::ZERO).backoff(hour, hour))
        .build()
        .unwrap()
}

/// Child: files may not grow past 128 KiB (the queue file's rewrite needs more): the cache is
/// built over the damaged queue; prints what it owes and what a new write-behind did.
fn damaged_full_child(dir: &str) -> ! {
    // SAFETY: plain libc calls with valid arguments (see full_disk.rs).
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit { rlim_cur: 128 << 10, rlim_max: libc::RLIM_INFINITY };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0, "setrlimit");
    }
    let rt = common::runtime();
    rt.block_on(async {
        let cache = small_segments_down(Path::new(dir));
        println!("pending={}", cache.write_behind_status().unwrap().pending);
        match cache.write_behind("late", 1).await {
            Err(CacheError::Tier { tier, source }) if tier == "write-behind queue" => {
                println!("late=refused {:?}", source.kind());
            }
            other => println!("late={other:?}"),
        }
    });
    std::process::exit(0)
}

#[test]
fn a_damaged_queue_on_a_full_disk_opens_keeps_what_it_read_and_is_rewritten_once_there_is_room() {
    if let Ok(dir) = std::env::var(DAMAGED_ENV) {
        damaged_full_child(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    const N: u64 = 300;
    common::runtime().block_on(async {
        let cache = small_segments_down(dir.path());
        for i in 0..N {
            cache.write_behind(format!("k{i:03}-{}", "x".repeat(1000)), i).await.unwrap();
        }
    });
    let path = dir.path().join("QUEUE");
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 256 << 10, "the queue file is larger than the child may write");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();

    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_damaged_queue_on_a_full_disk_opens_keeps_what_it_read_and_is_rewritten_once_there_is_room",
            "--nocapture",
        ])
        .env(DAMAGED_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed: {stdout}\n{stderr}");
    assert!(stdout.contains(&format!("pending={}", N - 1)), "{stdout}\n{stderr}");
    assert!(stdout.contains("late=refused Io"), "{stdout}\n{stderr}");
    // The file was left as it was: the same damage, the same writes owed.
    let queue = DiskInspector::open(dir.path()).unwrap().queue().unwrap();
    assert_eq!(queue.damage.len(), 1, "{:?}", queue.damage);
    assert_eq!(queue.pending.len() as u64, N - 1);
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "left untouched");
    // With room: opened, rewritten, every write read back is written.
    let origin = RecordingOrigin::new();
    common::runtime().block_on(async {
        let cache = cache(dir.path(), &origin);
        cache.flush_write_behind().await.unwrap();
    });
    assert_eq!(origin.writes().len() as u64, N - 1);
    let queue = DiskInspector::open(dir.path()).unwrap().queue().unwrap();
    assert!(queue.damage.is_empty() && queue.pending.is_empty(), "{queue:?}");
}

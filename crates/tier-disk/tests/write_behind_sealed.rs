//! The write-behind queue of a cache with a keyring (tier-core feature `encryption`): the
//! `QUEUE` file holds no value in clear; a record altered on disk (its CRC made valid again, as
//! someone with write access to the disk could) is never written to the origin as a wrong
//! value, nor dropped: it is kept as a dead letter with the reason; a keyring that lacks the
//! key keeps every record owed (dead letters), and once it holds the key again a replay writes
//! them; after a rotation the old records still drain and new ones are sealed with the new key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use tier_core::seal::Keyring;
use tier_core::testing::RecordingOrigin;
use tier_core::{Cache, TierPolicy, WriteBehind};
use tier_disk::{DiskInspector, DiskTier};

const SECRET: &str = "the patient's diagnosis: confidential";
const OLD: [u8; 32] = [0x5a; 32];
const NEW: [u8; 32] = [0xa5; 32];

fn cache(
    dir: &Path,
    origin: &RecordingOrigin<String>,
    keyring: Keyring,
    opts: WriteBehind,
) -> Cache<String> {
    let tier = DiskTier::builder(dir).segment_size(256 << 10).capacity_bytes(4 << 20).build();
    Cache::builder("patients")
        .tier(tier.unwrap(), TierPolicy::fresh(Duration::from_secs(600)))
        .keyring(keyring)
        .write_behind(origin.clone(), opts.max_delay(Duration::ZERO))
        .build()
        .unwrap()
}

fn fast() -> WriteBehind {
    WriteBehind::default().backoff(Duration::from_millis(1), Duration::from_millis(2))
}

/// Write `n` secrets behind with an origin that is down (its first retry an hour away), then
/// drop the cache: everything stays owed in the queue.
async fn queue_secrets(dir: &Path, keyring: Keyring, n: u64) {
    let origin = RecordingOrigin::new();
    origin.fail(u32::MAX);
    let hour = Duration::from_secs(3600);
    let cache = cache(dir, &origin, keyring, WriteBehind::default().backoff(hour, hour));
    for i in 0..n {
        cache.write_behind(format!("patients:{i}"), format!("{SECRET} #{i}")).await.unwrap();
    }
    assert_eq!(cache.write_behind_status().unwrap().pending, n as usize);
}

fn holds(path: &Path, needle: &[u8]) -> bool {
    std::fs::read(path).unwrap().windows(needle.len()).any(|w| w == needle)
}

fn written(origin: &RecordingOrigin<String>) -> Vec<String> {
    let mut v: Vec<String> = origin.writes().into_iter().map(|w| w.1).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_file_holds_no_plaintext_and_a_rotated_keyring_still_drains_it() {
    let dir = tempfile::tempdir().unwrap();
    queue_secrets(dir.path(), Keyring::new(1, &OLD), 5).await;
    let queue_file = dir.path().join("QUEUE");
    assert!(!holds(&queue_file, SECRET.as_bytes()), "a queued value is in clear on disk");
    assert!(!holds(&queue_file, b"diagnosis"));
    let report = DiskInspector::open(dir.path()).unwrap().queue().unwrap();
    assert_eq!(report.pending.len(), 5);
    assert!(report.pending.iter().all(|w| w.key_id() == Some(1)), "{:?}", report.pending);

    // Rotated: key 2 seals, key 1 still opens.
    let rotated = Keyring::new(2, &NEW).with_old_key(1, &OLD).unwrap();
    let origin = RecordingOrigin::new();
    let c = cache(dir.path(), &origin, rotated.clone(), fast());
    c.flush_write_behind().await.unwrap();
    let want: Vec<String> = (0..5).map(|i| format!("{SECRET} #{i}")).collect();
    assert_eq!(written(&origin), want);
    assert!(c.dead_letters().unwrap().is_empty());
    // A new write is sealed with the new key (held: the origin is made to fail once, long).
    origin.fail(u32::MAX);
    drop(c);
    let hour = Duration::from_secs(3600);
    let c = cache(dir.path(), &origin, rotated, WriteBehind::default().backoff(hour, hour));
    c.write_behind("patients:new", format!("{SECRET} new")).await.unwrap();
    drop(c);
    let report = DiskInspector::open(dir.path()).unwrap().queue().unwrap();
    assert_eq!(report.pending.iter().map(|w| w.key_id()).collect::<Vec<_>>(), vec![Some(2)]);
    assert!(!holds(&queue_file, SECRET.as_bytes()));
}

/// Flip one byte of the `nth` sealed write record's body at `from_end` bytes before its end,
/// and make the record's CRC valid again.
fn tamper(path: &Path, nth: usize, from_end: usize) {
    let mut b = std::fs::read(path).unwrap();
    let (mut at, mut seen) = (16usize, 0usize);
    while at < b.len() {
        let body = u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
        let end = at + 9 + body;
        if b[at + 8] == 6 {
            if seen == nth {
                b[end - from_end] ^= 0x20;
                let crc = crc32fast::hash(&b[at + 4..end]);
                b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
                std::fs::write(path, &b).unwrap();
                return;
            }
            seen += 1;
        }
        at = end;
    }
    panic!("no sealed record {nth}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_record_is_never_written_as_a_wrong_value_and_is_kept_as_a_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let keyring = Keyring::new(1, &OLD);
    queue_secrets(dir.path(), keyring.clone(), 4).await;
    // In the tag of record 1, and in the ciphertext of record 2.
    let queue_file = dir.path().join("QUEUE");
    tamper(&queue_file, 1, 1);
    tamper(&queue_file, 2, 20);
    // The file's CRCs hold: the damage is not visible to the file's own checks.
    let report = DiskInspector::open(dir.path()).unwrap().queue().unwrap();
    assert!(report.damage.is_empty(), "{:?}", report.damage);
    assert_eq!(report.pending.len(), 4);

    let origin = RecordingOrigin::new();
    let c = cache(dir.path(), &origin, keyring, fast());
    c.flush_write_behind().await.unwrap();
    assert_eq!(written(&origin), vec![format!("{SECRET} #0"), format!("{SECRET} #3")]);
    let dead = c.dead_letters().unwrap();
    let keys: Vec<&[u8]> = dead.iter().map(|d| &d.write.key[..]).collect();
    assert_eq!(keys, vec![&b"patients:1"[..], b"patients:2"]);
    for d in &dead {
        assert!(d.reason.contains("does not authenticate"), "{}", d.reason);
        assert_eq!(d.write.key_id(), Some(1), "kept as stored: sealed");
    }
    // Replayed, they fail the same way: still kept, never written.
    assert_eq!(c.replay_dead_letters().await.unwrap(), 2);
    c.flush_write_behind().await.unwrap();
    assert_eq!(c.dead_letters().unwrap().len(), 2);
    assert_eq!(origin.writes().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_under_a_key_the_keyring_lacks_stay_owed_until_a_keyring_with_it_replays_them() {
    let dir = tempfile::tempdir().unwrap();
    queue_secrets(dir.path(), Keyring::new(1, &OLD), 3).await;
    let origin = RecordingOrigin::new();
    {
        // Key 1 forgotten: nothing is written, nothing dropped.
        let c = cache(dir.path(), &origin, Keyring::new(2, &NEW), fast());
        c.flush_write_behind().await.unwrap();
        assert!(origin.writes().is_empty());
        let dead = c.dead_letters().unwrap();
        assert_eq!(dead.len(), 3);
        assert!(dead.iter().all(|d| d.reason.contains("key 1")), "{:?}", dead[0].reason);
    }
    let report = DiskInspector::open(dir.path()).unwrap().queue().unwrap();
    assert_eq!(report.dead.len(), 3, "kept on disk as dead letters");
    // The keyring holds key 1 again: a replay writes them, with their values opened.
    let rotated = Keyring::new(2, &NEW).with_old_key(1, &OLD).unwrap();
    let c = cache(dir.path(), &origin, rotated, fast());
    let dead = c.dead_letters().unwrap();
    assert_eq!(dead[0].write.sealing, None, "dead letters are shown opened when they open");
    assert_eq!(
        rmp_serde::from_slice::<String>(&dead[0].write.value).unwrap(),
        format!("{SECRET} #0")
    );
    assert_eq!(c.replay_dead_letters().await.unwrap(), 3);
    c.flush_write_behind().await.unwrap();
    assert_eq!(written(&origin).len(), 3);
    assert!(c.dead_letters().unwrap().is_empty());
}

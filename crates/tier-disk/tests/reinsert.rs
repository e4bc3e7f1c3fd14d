//! Re-insertion on reclaim: an entry read more often survives more reclaims than one read
//! once, which survives more than one never read; what was removed or replaced never comes
//! back through a copy forward, before or after a reopen.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{check_value, decode_string, entry, value_for};
use tier_core::spi::Tier;
use tier_disk::DiskTier;

const SEGMENT: u64 = 64 << 10;
const CAPACITY: u64 = 4 * SEGMENT;
/// Reclaims after which every entry of the tests is gone for sure (each read adds at most a
/// few): the tests stop there.
const MAX_RECLAIMS: usize = 40;

fn open(dir: &std::path::Path) -> DiskTier {
    DiskTier::builder(dir).segment_size(SEGMENT).capacity_bytes(CAPACITY).build().expect("open")
}

async fn put(tier: &DiskTier, key: &str, seq: u64) {
    tier.insert(Bytes::from(key.to_string()), entry(&value_for(key, seq, 200), 600_000))
        .await
        .expect("insert");
}

async fn read(tier: &DiskTier, key: &str, times: usize) {
    for _ in 0..times {
        assert!(tier.get(key.as_bytes()).await.expect("get").is_hit(), "{key} is there");
    }
}

/// The seq of the value `key` has on disk, read without counting a hit.
fn on_disk(tier: &DiskTier, key: &str) -> Option<u64> {
    let raw = tier.get_raw(key.as_bytes())?;
    let value = decode_string(&raw.envelope).expect("a string");
    Some(check_value(key, &value).expect("a value written for this key"))
}

/// Write never-read filler until the oldest segment is reclaimed (once).
async fn fill_one_reclaim(tier: &DiskTier, next: &mut u64) {
    let oldest = tier.disk_stats().oldest_segment;
    while tier.disk_stats().oldest_segment == oldest {
        let k = format!("filler-{next}");
        tier.insert(Bytes::from(k.clone()), entry(&value_for(&k, *next, 1000), 600_000))
            .await
            .expect("insert");
        *next += 1;
    }
}

#[tokio::test]
async fn entries_read_more_often_survive_more_reclaims() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = open(dir.path());
    let keys = ["never", "once", "often"];
    for k in keys {
        put(&tier, k, 1).await;
    }
    read(&tier, "once", 1).await;
    read(&tier, "often", 5).await;
    let mut gone_after = [None; 3];
    let mut next = 0;
    for reclaims in 1..=MAX_RECLAIMS {
        fill_one_reclaim(&tier, &mut next).await;
        for (i, k) in keys.iter().enumerate() {
            if gone_after[i].is_none() && on_disk(&tier, k).is_none() {
                gone_after[i] = Some(reclaims);
            }
        }
        if gone_after.iter().all(Option::is_some) {
            break;
        }
    }
    let [never, once, often] = gone_after.map(|g| g.expect("evicted in the end"));
    assert!(never < once, "read once outlives never read: {gone_after:?}");
    assert!(once < often, "read often outlives read once: {gone_after:?}");
    let stats = tier.disk_stats();
    assert!(stats.reinserted_records >= 2, "copies are counted: {stats:?}");
    assert!(stats.reinserted_bytes >= stats.reinserted_records * 200, "{stats:?}");
}

#[tokio::test]
async fn without_reinsertion_reads_do_not_keep_an_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::builder(dir.path())
        .segment_size(SEGMENT)
        .capacity_bytes(CAPACITY)
        .reinsert_hot(false)
        .build()
        .expect("open");
    put(&tier, "never", 1).await;
    put(&tier, "often", 1).await;
    read(&tier, "often", 5).await;
    let mut next = 0;
    fill_one_reclaim(&tier, &mut next).await;
    assert_eq!((on_disk(&tier, "never"), on_disk(&tier, "often")), (None, None), "FIFO");
    assert_eq!(tier.disk_stats().reinserted_records, 0);
}

#[tokio::test]
async fn a_key_evicted_lately_and_written_again_survives_one_reclaim_unread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = open(dir.path());
    let mut next = 0;
    put(&tier, "returning", 1).await;
    fill_one_reclaim(&tier, &mut next).await;
    assert_eq!(on_disk(&tier, "returning"), None, "never read: evicted, a ghost now");
    // Written again (a miss brought it back), beside a key never seen: neither is read.
    put(&tier, "returning", 2).await;
    put(&tier, "newcomer", 1).await;
    let segment = tier.get_raw(b"returning").expect("written").info.segment;
    while tier.disk_stats().oldest_segment.is_some_and(|oldest| oldest <= segment) {
        fill_one_reclaim(&tier, &mut next).await;
    }
    assert_eq!(on_disk(&tier, "newcomer"), None, "a new key, never read: evicted");
    assert_eq!(on_disk(&tier, "returning"), Some(2), "a returning key: copied forward once");
    for _ in 0..MAX_RECLAIMS {
        if on_disk(&tier, "returning").is_none() {
            return;
        }
        fill_one_reclaim(&tier, &mut next).await;
    }
    panic!("a key copied forward once, never read, is evicted in the end");
}

#[tokio::test]
async fn a_removed_or_replaced_entry_never_comes_back_through_a_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut next = 0;
    {
        let tier = open(dir.path());
        for k in ["removed", "replaced", "kept"] {
            put(&tier, k, 1).await;
            read(&tier, k, 5).await; // as hot as an entry gets
        }
        assert!(tier.remove(b"removed").await.is_ok());
        put(&tier, "replaced", 2).await; // never read: the old, hot record is what is copied
        let first = tier.get_raw(b"kept").expect("written").info.segment;
        let mut kept_copied = false;
        for _ in 0..MAX_RECLAIMS {
            fill_one_reclaim(&tier, &mut next).await;
            assert_eq!(on_disk(&tier, "removed"), None, "a removed key never comes back");
            assert!(
                matches!(on_disk(&tier, "replaced"), None | Some(2)),
                "only the later value, or nothing"
            );
            kept_copied |= tier.get_raw(b"kept").is_some_and(|r| r.info.segment != first);
            if on_disk(&tier, "replaced").is_none() && on_disk(&tier, "kept").is_none() {
                break;
            }
        }
        assert!(kept_copied, "the hot entry beside them was copied forward");
        assert!(tier.disk_stats().reinserted_records > 0);
    }
    // Recovery replays what is on disk, copies included: still nothing old.
    let tier = open(dir.path());
    assert_eq!(on_disk(&tier, "removed"), None);
    assert!(matches!(on_disk(&tier, "replaced"), None | Some(2)));
    assert!(tier.get(b"removed").await.expect("get").entry().is_none());
}

//! Staged inserts (group commit): an insert is read back from the moment it returns, a later
//! write of the same key (insert or remove) always wins — before and after it is written, and
//! after a reopen — and `flush` returns only once everything sent before it is in the files.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use common::{check_value, decoded, entry, value_for};
use tier_core::spi::Tier;
use tier_disk::{DiskInspector, DiskTier, FlushPolicy};

const KEYS: u64 = 50;

fn builder(dir: &std::path::Path) -> tier_disk::DiskTierBuilder {
    // Small segments: batches span rotations and reclaims.
    DiskTier::builder(dir)
        .segment_size(128 << 10)
        .capacity_bytes(4 << 20)
        .flush(FlushPolicy::None)
        .stage_inserts(true)
}

/// Insert, overwrite and remove keys in a seeded order; after every write, the key reads as its
/// latest write. Returns what each key should hold (`None`: removed).
async fn churn(tier: &DiskTier, rounds: u64) -> HashMap<String, Option<u64>> {
    let mut want = HashMap::new();
    for seq in 0..rounds {
        let k = format!("k{}", seq.wrapping_mul(0x9E37_79B9) % KEYS);
        if seq % 7 == 3 {
            tier.remove(k.as_bytes()).await.unwrap();
            want.insert(k.clone(), None);
        } else {
            let v = value_for(&k, seq, 100 + (seq % 900) as usize);
            tier.insert(Bytes::from(k.clone()), entry(&v, 3_600_000)).await.unwrap();
            want.insert(k.clone(), Some(seq));
        }
        let got = decoded(&tier.get(k.as_bytes()).await.unwrap());
        assert_eq!(got.as_deref().and_then(|v| check_value(&k, v)), want[&k], "{k} at {seq}");
    }
    want
}

async fn check(tier: &DiskTier, want: &HashMap<String, Option<u64>>, when: &str) {
    for (k, seq) in want {
        let got = decoded(&tier.get(k.as_bytes()).await.unwrap());
        assert_eq!(got.as_deref().and_then(|v| check_value(k, v)), *seq, "{k} {when}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_insert_is_read_at_once_and_the_latest_write_wins_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let tier = builder(dir.path()).build().unwrap();
    let want = churn(&tier, 5000).await;
    check(&tier, &want, "before flush").await;
    tier.flush().unwrap();
    // flush waited for every write: a reader of the files alone sees the same.
    let insp = DiskInspector::open(dir.path()).unwrap();
    for (k, seq) in &want {
        let got = insp.get(k.as_bytes()).unwrap();
        let got = got.and_then(|r| common::decode_string(&r.envelope));
        assert_eq!(got.as_deref().and_then(|v| check_value(k, v)), *seq, "{k} in the files");
    }
    drop(insp);
    check(&tier, &want, "after flush").await;
    drop(tier);
    let tier = builder(dir.path()).build().unwrap();
    assert_eq!(tier.recovery_report().corrupt, 0);
    check(&tier, &want, "after reopen").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_that_wait_for_the_write_keep_the_same_order() {
    let dir = tempfile::tempdir().unwrap();
    let tier = builder(dir.path()).stage_inserts(false).build().unwrap();
    let want = churn(&tier, 2000).await;
    drop(tier);
    let tier = builder(dir.path()).build().unwrap();
    check(&tier, &want, "after reopen").await;
}

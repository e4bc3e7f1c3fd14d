//! Behaviour of a live tier and its recovery the foyer way: write, close, drop, reopen, assert.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use bytes::Bytes;
use common::{check_value, decoded, entry, segment_bytes, value_for};
use tier_core::spi::{Lookup, Tier};
use tier_core::{Storage, TierErrorKind};
use tier_disk::{DiskError, DiskInspector, DiskTier, RecordKind, RecoveryMode};

fn small(dir: &std::path::Path) -> tier_disk::DiskTierBuilder {
    DiskTier::builder(dir).segment_size(64 << 10).capacity_bytes(8 << 20)
}

fn key(i: usize) -> String {
    format!("key-{i}")
}

#[tokio::test]
async fn values_survive_reopen_and_tombstones_keep_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let tier = small(dir.path()).build().expect("open");
        assert_eq!(tier.storage(), Storage::Envelopes);
        for i in 0..500 {
            let v = value_for(&key(i), 1, 100 + i * 3);
            tier.insert(Bytes::from(key(i)), entry(&v, 600_000)).await.expect("insert");
        }
        // Overwrite some, remove some.
        for i in (0..500).step_by(5) {
            let v = value_for(&key(i), 2, 50);
            tier.insert(Bytes::from(key(i)), entry(&v, 600_000)).await.expect("overwrite");
        }
        for i in (0..500).step_by(7) {
            tier.remove(key(i).as_bytes()).await.expect("remove");
        }
        tier.remove(b"never-there").await.expect("removing a missing key is fine");
    } // close: drop releases the lock
    let tier = small(dir.path()).build().expect("reopen");
    let report = tier.recovery_report().clone();
    assert_eq!(report.corrupt, 0, "{report:?}");
    assert!(report.tombstones > 0);
    for i in 0..500 {
        let got = tier.get(key(i).as_bytes()).await.expect("get");
        if i % 7 == 0 {
            assert!(matches!(got, Lookup::Miss), "key {i} was removed and must stay removed");
            continue;
        }
        let v = decoded(&got).unwrap_or_else(|| panic!("key {i} must survive"));
        let want_seq = if i % 5 == 0 { 2 } else { 1 };
        assert_eq!(check_value(&key(i), &v), Some(want_seq), "key {i}");
        assert!(got.is_hit());
    }
    let live = 500 - (0..500).step_by(7).count();
    assert_eq!(report.entries as usize, live);
    assert_eq!(tier.stats().entries as usize, live);
    assert_eq!(tier.disk_stats().entries as usize, live);
}

#[tokio::test]
async fn clear_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let tier = small(dir.path()).build().expect("open");
        for i in 0..2000 {
            tier.insert(Bytes::from(key(i)), entry(&value_for(&key(i), 1, 200), 600_000))
                .await
                .expect("insert");
        }
        tier.clear().await.expect("clear");
        assert!(matches!(tier.get(key(1).as_bytes()).await.expect("get"), Lookup::Miss));
        tier.insert(Bytes::from(key(1)), entry(&value_for(&key(1), 9, 20), 600_000))
            .await
            .expect("insert after clear");
        assert!(segment_bytes(dir.path()) <= 2 * (64 << 10), "old segments deleted");
    }
    let tier = small(dir.path()).build().expect("reopen");
    assert_eq!(tier.recovery_report().entries, 1);
    assert!(matches!(tier.get(key(2).as_bytes()).await.expect("get"), Lookup::Miss));
    let v = decoded(&tier.get(key(1).as_bytes()).await.expect("get")).expect("kept");
    assert_eq!(check_value(&key(1), &v), Some(9));
}

#[tokio::test]
async fn expired_entries_are_never_returned_nor_recovered() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let tier = small(dir.path()).build().expect("open");
        tier.insert(Bytes::from_static(b"short"), entry("short|1|", 30)).await.expect("insert");
        tier.insert(Bytes::from_static(b"long"), entry("long|1|", 600_000)).await.expect("insert");
        // An entry already past stale_until is not stored (and removes what was there).
        tier.insert(Bytes::from_static(b"long2"), entry("x", 600_000)).await.expect("insert");
        tier.insert(Bytes::from_static(b"long2"), entry("x", 0)).await.expect("insert expired");
        assert!(matches!(tier.get(b"long2").await.expect("get"), Lookup::Miss));
        let until = tier_core::spi::now_ms() + 40;
        while tier_core::spi::now_ms() < until {
            std::thread::yield_now(); // waiting for wall-clock expiry, not for another task
        }
        assert!(matches!(tier.get(b"short").await.expect("get"), Lookup::Miss));
        assert!(tier.get(b"long").await.expect("get").is_hit());
    }
    let tier = small(dir.path()).build().expect("reopen");
    assert!(matches!(tier.get(b"short").await.expect("get"), Lookup::Miss));
    assert!(matches!(tier.get(b"long2").await.expect("get"), Lookup::Miss));
    assert_eq!(tier.recovery_report().entries, 1);
}

#[test]
fn second_opener_gets_a_clear_lock_error_and_files_are_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("l2");
    let tier = small(&sub).build().expect("open");
    let err = small(&sub).build().expect_err("second opener must fail");
    assert!(err.is_locked(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("LOCK") && msg.contains("locked"), "{msg}");
    assert!(msg.contains(&std::process::id().to_string()), "names the owner: {msg}");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&sub), 0o700);
    for f in std::fs::read_dir(&sub).expect("ls") {
        let p = f.expect("entry").path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    drop(tier);
    small(&sub).build().expect("reopen after the owner is gone");
}

#[tokio::test]
async fn oversize_keys_and_values_are_too_large_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = small(dir.path()).build().expect("open");
    let big = "x".repeat(70 << 10);
    let err = tier.insert(Bytes::from_static(b"k"), entry(&big, 60_000)).await.expect_err("big");
    assert_eq!(err.kind(), TierErrorKind::TooLarge);
    assert!(!err.is_tier_failure());
    let long_key = Bytes::from(vec![b'k'; 70_000]);
    let err = tier.insert(long_key.clone(), entry("v", 60_000)).await.expect_err("long key");
    assert_eq!(err.kind(), TierErrorKind::TooLarge);
    assert!(matches!(tier.get(&long_key).await.expect("get"), Lookup::Miss));
    // Not an envelope: a decode error, nothing stored.
    let foreign = tier_core::spi::Entry {
        meta: tier_core::spi::Meta::default(),
        value: tier_core::spi::Value::Envelope(Bytes::from_static(b"{\"json\":true}")),
        size: 13,
    };
    let err = tier.insert(Bytes::from_static(b"j"), foreign).await.expect_err("foreign");
    assert!(err.is_decode());
}

#[test]
fn bad_configuration_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    for b in [
        DiskTier::builder(dir.path()).segment_size(1000),
        DiskTier::builder(dir.path()).segment_size(1 << 20).capacity_bytes(1 << 20),
    ] {
        assert!(matches!(b.build(), Err(DiskError::Config(_))));
    }
}

#[tokio::test]
async fn discard_mode_starts_empty_and_inspector_reads_a_live_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let tier = small(dir.path()).build().expect("open");
        for i in 0..100 {
            tier.insert(Bytes::from(key(i)), entry(&value_for(&key(i), 1, 300), 600_000))
                .await
                .expect("insert");
        }
        tier.remove(key(3).as_bytes()).await.expect("remove");
        // The inspector works while the tier holds the lock, and does not take it.
        let insp = DiskInspector::open(dir.path()).expect("inspect a live directory");
        assert_eq!(insp.owner_pid(), Some(std::process::id()));
        let stats = insp.stats().clone();
        assert_eq!(stats.entries, 99);
        assert!(insp.damage().is_empty());
        let records: Vec<_> = insp.records().collect::<Result<_, _>>().expect("records");
        assert_eq!(records.iter().filter(|r| r.kind == RecordKind::Value).count(), 100);
        assert_eq!(records.iter().filter(|r| r.kind == RecordKind::Tombstone).count(), 1);
        assert_eq!(records.iter().filter(|r| r.live).count(), 99);
        let raw = insp.get(key(5).as_bytes()).expect("read").expect("present");
        assert_eq!(common::decode_string(&raw.envelope), Some(value_for(&key(5), 1, 300)));
        assert!(insp.get(key(3).as_bytes()).expect("read").is_none());
        let verify = insp.verify().expect("verify");
        assert!(verify.is_clean() && verify.records == 101, "{verify:?}");
        // The live tier's own figures agree.
        let live = tier.disk_stats();
        assert_eq!(live.entries, 99);
        assert_eq!(live.live_bytes, stats.live_bytes);
        let raw = tier.get_raw(key(5).as_bytes()).expect("raw");
        assert_eq!(raw.info.stale_until, records[5].stale_until);
    }
    let tier = small(dir.path()).recovery(RecoveryMode::Discard).build().expect("discard");
    assert_eq!(tier.stats().entries, 0);
    assert!(matches!(tier.get(key(1).as_bytes()).await.expect("get"), Lookup::Miss));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_and_writers_through_reclaim() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Tiny capacity: segments are reclaimed all the time while readers read.
    let tier = Arc::new(
        DiskTier::builder(dir.path())
            .segment_size(64 << 10)
            .capacity_bytes(256 << 10)
            .build()
            .expect("open"),
    );
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let tier = Arc::clone(&tier);
        tasks.push(tokio::spawn(async move {
            for seq in 0..3000u64 {
                let k = key(((seq * 7 + w) % 300) as usize);
                let v = value_for(&k, seq, 200 + (seq % 700) as usize);
                tier.insert(Bytes::from(k), entry(&v, 600_000)).await.expect("insert");
                if seq % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    let mut readers = Vec::new();
    for r in 0..4usize {
        let tier = Arc::clone(&tier);
        readers.push(tokio::spawn(async move {
            let mut hits = 0u64;
            for n in 0..20_000usize {
                let k = key((n * 13 + r) % 300);
                let got = tier.get(k.as_bytes()).await.expect("get");
                if let Some(v) = decoded(&got) {
                    assert!(check_value(&k, &v).is_some(), "torn or foreign value for {k}");
                    hits += 1;
                }
                if n % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            hits
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let mut hits = 0;
    for r in readers {
        hits += r.await.expect("reader");
    }
    assert!(hits > 0);
    assert!(segment_bytes(dir.path()) <= (256 << 10) + (64 << 10));
}

#[tokio::test]
async fn every_flush_policy_releases_the_lock_on_drop() {
    let dir = tempfile::tempdir().expect("tempdir");
    for policy in [
        tier_disk::FlushPolicy::None,
        tier_disk::FlushPolicy::Always,
        tier_disk::FlushPolicy::OnClose,
        tier_disk::FlushPolicy::Periodic(std::time::Duration::from_millis(1)),
    ] {
        for round in 0..20u64 {
            let tier = small(dir.path()).flush(policy).build().expect("reopen right after drop");
            let k = key(round as usize);
            tier.insert(Bytes::from(k.clone()), entry(&value_for(&k, round, 64), 600_000))
                .await
                .expect("insert");
            tier.flush().expect("explicit flush");
        }
    }
    let tier = small(dir.path()).build().expect("reopen");
    assert_eq!(tier.recovery_report().entries, 20);
}

#[tokio::test]
async fn reclaim_gives_hot_entries_a_second_chance_but_never_expired_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::builder(dir.path())
        .segment_size(64 << 10)
        .capacity_bytes(256 << 10)
        .build()
        .expect("open");
    let put = |k: &'static str, ttl: u64| {
        let tier = &tier;
        async move {
            tier.insert(Bytes::from_static(k.as_bytes()), entry(&value_for(k, 1, 100), ttl))
                .await
                .expect("insert")
        }
    };
    let short_until = tier_core::spi::now_ms() + 500;
    put("hot", 600_000).await;
    put("hot-short", 500).await;
    put("cold", 600_000).await;
    let first = tier.disk_stats().oldest_segment.expect("a segment");
    assert!(tier.get(b"hot").await.expect("get").is_hit());
    assert!(tier.get(b"hot-short").await.expect("get").is_hit());
    while tier_core::spi::now_ms() <= short_until {
        std::thread::yield_now(); // waiting for wall-clock expiry, not for another task
    }
    // Fill until the first segment is reclaimed.
    let mut i = 0;
    while tier.disk_stats().oldest_segment == Some(first) {
        let k = key(i);
        tier.insert(Bytes::from(k.clone()), entry(&value_for(&k, 1, 1000), 600_000))
            .await
            .expect("insert");
        i += 1;
    }
    assert!(tier.get_raw(b"hot").is_some(), "a hot entry is copied forward");
    assert!(tier.get(b"hot").await.expect("get").is_hit());
    assert!(tier.get_raw(b"hot-short").is_none(), "an expired entry is never re-inserted");
    assert!(tier.get_raw(b"cold").is_none(), "a cold entry is evicted with its segment");
    drop(tier);
    let tier = DiskTier::builder(dir.path())
        .segment_size(64 << 10)
        .capacity_bytes(256 << 10)
        .build()
        .expect("reopen");
    assert!(tier.get(b"hot").await.expect("get").is_hit(), "the copy is the last write");
}

#[tokio::test]
async fn a_segment_cut_short_while_being_created_is_not_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let tier = small(dir.path()).build().expect("open");
        tier.insert(Bytes::from(key(1)), entry(&value_for(&key(1), 1, 100), 600_000))
            .await
            .expect("insert");
    }
    // What a crash between creating the newest file and writing its header leaves behind.
    let newest = common::segment_files(dir.path()).last().cloned().expect("a segment");
    let name = newest.file_stem().and_then(|s| s.to_str()).expect("name");
    let next = u32::from_str_radix(name, 16).expect("hex id") + 1;
    std::fs::write(dir.path().join(format!("{next:08x}.seg")), [0u8; 20]).expect("write");
    assert!(DiskInspector::open(dir.path()).expect("inspect").damage().is_empty());
    let tier = small(dir.path()).build().expect("reopen");
    assert_eq!(tier.recovery_report().corrupt, 0, "{:?}", tier.recovery_report());
    assert!(tier.get(key(1).as_bytes()).await.expect("get").is_hit());
}

#[test]
fn reopening_while_another_thread_spawns_processes_is_never_locked() {
    // A child shares the parent's open files from fork to exec, the lock file's too: right after
    // a drop, the lock can look held by such a child for an instant.
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawner = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::process::Command::new("true").status();
                n += 1;
            }
            n
        })
    };
    for round in 0..300 {
        let tier = small(dir.path()).build();
        assert!(tier.is_ok(), "round {round}: {:?}", tier.err());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(spawner.join().expect("spawner") > 0);
}

/// Recovery keeps each segment's live figures itself and hands them over once per segment
/// (no atomic per record): replacements and removals within the segment being replayed and of
/// earlier segments must come out as the writer counted them and as the inspector recounts them.
#[tokio::test]
async fn reopen_rebuilds_the_live_figures_the_writer_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = {
        let tier = small(dir.path()).build().expect("open");
        for round in 0..3u64 {
            for i in 0..400 {
                // Rounds overwrite keys written in the same segment and in earlier ones.
                let v = value_for(&key(i), round, 60 + (i * 7 + round as usize * 13) % 200);
                tier.insert(Bytes::from(key(i)), entry(&v, 600_000)).await.expect("insert");
                if i % 11 == round as usize {
                    tier.remove(key(i / 2).as_bytes()).await.expect("remove");
                }
            }
        }
        let stats = tier.disk_stats();
        assert!(stats.newest_segment > stats.oldest_segment.map(|o| o + 3), "{stats:?}");
        stats
    };
    let tier = small(dir.path()).build().expect("reopen");
    let after = tier.disk_stats();
    assert_eq!(tier.recovery_report().corrupt, 0);
    assert_eq!(after.entries, before.entries);
    assert_eq!(after.live_bytes, before.live_bytes);
    assert_eq!(after.oldest_created_at, before.oldest_created_at);
    assert_eq!(after.newest_created_at, before.newest_created_at);
    drop(tier);
    let insp = DiskInspector::open(dir.path()).expect("inspect");
    assert_eq!(insp.stats().live_bytes, after.live_bytes);
    assert_eq!(insp.stats().entries, after.entries);
}

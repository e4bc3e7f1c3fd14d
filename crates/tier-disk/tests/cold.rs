//! Reads never wait for the device on the caller's thread: with the segment files dropped from
//! the page cache (`fdatasync`, then `POSIX_FADV_DONTNEED`), a hit is read on the tier's read
//! threads (`tier_disk_reads_total{path="pool"}`); read again, the page cache has the records
//! and every hit is answered inline (`path="page_cache"`), with the same bytes. Values
//! larger than the pages the index can describe take a second read; every value is checked.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::fd::AsRawFd;

use bytes::Bytes;
use common::{check_value, decoded, entry, segment_files, value_for};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tier_core::spi::{Tier, TierContext};
use tier_disk::{DiskTier, FlushPolicy, READS};

/// Reads since the last call, by path: (`pool`, `page_cache`, `rejected`) (a snapshot of the
/// debugging recorder drains its counters).
fn reads(snapshotter: &metrics_util::debugging::Snapshotter) -> (u64, u64, u64) {
    let snap = snapshotter.snapshot().into_vec();
    let count = |path: &str| -> u64 {
        snap.iter()
            .filter(|(k, _, _, _)| {
                k.key().name() == READS
                    && k.key().labels().any(|l| l.key() == "path" && l.value() == path)
            })
            .map(|(_, _, _, v)| match v {
                DebugValue::Counter(c) => *c,
                _ => 0,
            })
            .sum()
    };
    (count("pool"), count("page_cache"), count("rejected"))
}

/// True when `dir` is on tmpfs or ramfs (no device: nothing is ever cold there).
fn in_memory(dir: &std::path::Path) -> bool {
    let f = std::fs::File::open(dir).unwrap();
    // SAFETY: a plain fstatfs into a zeroed struct of the right type.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) }, 0);
    #[allow(clippy::unnecessary_cast)]
    let kind = st.f_type as i64;
    kind == 0x0102_1994 || kind == 0x8584_58f6
}

#[test]
fn cold_hits_are_read_on_the_read_threads_and_warm_hits_inline() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let dir = tempfile::tempdir().unwrap();
    if in_memory(dir.path()) {
        eprintln!("skipped: the temporary directory is in memory (tmpfs), nothing is cold there");
        return;
    }
    let rt = common::runtime();
    let tier = DiskTier::builder(dir.path())
        .segment_size(1 << 20)
        .capacity_bytes(8 << 20)
        .flush(FlushPolicy::None)
        .build()
        .unwrap();
    tier.attach(&TierContext::new("cold", "l2"));
    // 16 KiB values (the index keeps their length), 100 KiB ones (longer than it can keep: a
    // second read). Each spans a page no other record touches: no read finds it all cached.
    let sizes = [16 << 10, 100 << 10, 9000];
    let keys: Vec<(String, usize)> =
        (0..60).map(|i| (format!("k{i}"), sizes[i % sizes.len()])).collect();
    rt.block_on(async {
        for (i, (k, len)) in keys.iter().enumerate() {
            let e = entry(&value_for(k, i as u64, *len), 600_000);
            tier.insert(Bytes::from(k.clone()), e).await.unwrap();
        }
    });
    tier.flush().unwrap();
    for f in segment_files(dir.path()) {
        let file = std::fs::File::open(f).unwrap();
        // SAFETY: a plain fadvise on an open descriptor.
        let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(r, 0);
    }
    let read_all = || {
        rt.block_on(async {
            for (i, (k, _)) in keys.iter().enumerate() {
                let got = decoded(&tier.get(k.as_bytes()).await.unwrap()).expect("a hit");
                assert_eq!(check_value(k, &got), Some(i as u64), "{k}");
            }
        })
    };
    // The first read finds nothing cached: it is read on the read threads.
    rt.block_on(async { tier.get(keys[0].0.as_bytes()).await.unwrap() });
    assert_eq!(reads(&snapshotter), (1, 0, 0));
    // Every other record has pages of its own that were dropped, but the kernel may bring them
    // in with a neighbour's (large folios): each is read on the threads or inline, never
    // refused, and what reading them brought in stays.
    read_all();
    let (pool, cached, rejected) = reads(&snapshotter);
    assert_eq!((pool + cached, rejected), (60, 0));
    assert!(pool > 0);
    read_all();
    assert_eq!(reads(&snapshotter), (0, 60, 0));
}

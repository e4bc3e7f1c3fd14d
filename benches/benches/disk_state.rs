//! `DiskState`, the disk tier's durable small state, at 100k keys (one per tag ever stamped),
//! each beside its physical peer in the same run:
//! - `disk_state_put/{tier-disk,pwrite}/{page-cache,fdatasync}`: one `put` of a new value for one
//!   of 100k keys (a 12-byte key, an 8-byte value), with `FlushPolicy::None` (written to the
//!   page cache) and `FlushPolicy::Always` (and synced); the peer appends the same number of
//!   bytes to a plain file with one `pwrite` (and one `fdatasync`). Compactions are part of the
//!   measured puts.
//! - `disk_state_reopen/{tier-disk,read}/100k`: opening a directory whose state holds 100k keys
//!   (the whole open: lock, state, segments), against reading the same state file into memory.
//!
//! `cargo bench -p tier-benches --bench disk_state`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tier_disk::{DiskTier, FlushPolicy};

const KEYS: u64 = 100_000;
/// Bytes one put of a 12-byte key and an 8-byte value appends: record header (9), pair
/// header (9), key, value.
const RECORD: usize = 9 + 9 + 12 + 8;

fn key(i: u64) -> Vec<u8> {
    format!("tag:{:08}", i % KEYS).into_bytes()
}

fn tier(dir: &std::path::Path, flush: FlushPolicy) -> DiskTier {
    DiskTier::builder(dir)
        .capacity_bytes(1 << 20)
        .segment_size(256 << 10)
        .flush(flush)
        .build()
        .unwrap()
}

/// A directory whose state holds `KEYS` keys.
fn filled(flush: FlushPolicy) -> (tempfile::TempDir, DiskTier) {
    let dir = tempfile::tempdir().unwrap();
    let t = tier(dir.path(), flush);
    for chunk in 0..KEYS / 1000 {
        let keys: Vec<Vec<u8>> = (chunk * 1000..(chunk + 1) * 1000).map(key).collect();
        let values: Vec<[u8; 8]> = (0..1000u64).map(u64::to_le_bytes).collect();
        let pairs: Vec<(&[u8], &[u8])> =
            keys.iter().zip(&values).map(|(k, v)| (&k[..], &v[..])).collect();
        t.state().put_many(&pairs).unwrap();
    }
    assert_eq!(t.state().len() as u64, KEYS);
    (dir, t)
}

fn puts(c: &mut Criterion) {
    let mut g = c.benchmark_group("disk_state_put");
    for (flush, label, sync) in
        [(FlushPolicy::None, "page-cache", false), (FlushPolicy::Always, "fdatasync", true)]
    {
        let (dir, t) = filled(flush);
        let mut i = 0u64;
        g.bench_function(BenchmarkId::new("tier-disk", label), |b| {
            b.iter(|| {
                i += 1;
                t.state().put(&key(i * 7919), &i.to_le_bytes()).unwrap();
            })
        });
        let state_bytes = std::fs::metadata(dir.path().join("STATE")).unwrap().len();
        eprintln!("disk_state_put/{label}: state file {state_bytes} bytes for {KEYS} keys");
        drop(t);

        let file = tempfile::tempfile().unwrap();
        let record = [0x5Au8; RECORD];
        let mut at = 0u64;
        g.bench_function(BenchmarkId::new("pwrite", label), |b| {
            b.iter(|| {
                file.write_all_at(black_box(&record), at).unwrap();
                at += RECORD as u64;
                if sync {
                    file.sync_data().unwrap();
                }
                if at > 64 << 20 {
                    at = 0;
                }
            })
        });
    }
    g.finish();
}

fn reopen(c: &mut Criterion) {
    let (dir, t) = filled(FlushPolicy::OnClose);
    drop(t);
    let state = dir.path().join("STATE");
    eprintln!(
        "disk_state_reopen: state file {} bytes for {KEYS} keys",
        std::fs::metadata(&state).unwrap().len()
    );
    let mut g = c.benchmark_group("disk_state_reopen");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    g.bench_function(BenchmarkId::new("tier-disk", "100k"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let t = tier(dir.path(), FlushPolicy::OnClose);
                total += started.elapsed();
                assert_eq!(t.state().len() as u64, KEYS);
                drop(black_box(t));
            }
            total
        })
    });
    g.bench_function(BenchmarkId::new("read", "100k"), |b| {
        b.iter(|| black_box(std::fs::read(&state).unwrap()))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = puts, reopen
}
criterion_main!(benches);

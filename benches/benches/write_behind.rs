//! Write-behind through a disk tier, each beside its peer in the same run (1 KiB values):
//! - `write_behind/insert`: `Cache::insert` (write-through to the disk tier, no queue): the peer;
//! - `write_behind/queue-page-cache`: `Cache::write_behind` with `queue_flush(OnClose)`: the
//!   queue append is written (survives `kill -9`), not synced;
//! - `write_behind/queue-fdatasync`: the default, `queue_flush(Always)`: one `fdatasync` per
//!   append (survives a power loss);
//! - `write_behind/queue-sealed-fdatasync`: the same with a keyring: the queued value (and the
//!   disk tier's entry) sealed with XChaCha20-Poly1305;
//! - `write_behind/pwrite-fdatasync`: a raw `pwrite` of the same bytes plus `fdatasync` to a
//!   plain file, the floor of a durable append.
//!
//! The origin writer accepts every batch at once (the background drain runs meanwhile, as in
//! production). `cargo bench -p tier-benches --bench write_behind`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::os::unix::fs::FileExt;
use std::time::Duration;

use async_trait::async_trait;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tier_core::{Cache, OriginWrite, OriginWriter, TierPolicy, WriteBehind};
use tier_disk::{DiskTier, FlushPolicy};

struct Accept;

#[async_trait]
impl OriginWriter<String> for Accept {
    type Error = std::io::Error;
    async fn write_batch(&self, _batch: &[OriginWrite<String>]) -> Result<(), std::io::Error> {
        Ok(())
    }
}

fn cache(dir: &std::path::Path, queue_flush: Option<FlushPolicy>, sealed: bool) -> Cache<String> {
    let mut tier = DiskTier::builder(dir).capacity_bytes(256 << 20).segment_size(16 << 20);
    if let Some(flush) = queue_flush {
        tier = tier.queue_flush(flush);
    }
    let mut builder = Cache::builder("bench")
        .tier(tier.build().unwrap(), TierPolicy::fresh(Duration::from_secs(600)));
    if sealed {
        builder = builder.keyring(tier_core::seal::Keyring::new(1, &[0x42; 32]));
    }
    match queue_flush {
        Some(_) => builder.write_behind(Accept, WriteBehind::default()).build().unwrap(),
        None => builder.build().unwrap(),
    }
}

fn writes(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let rt = rt.unwrap();
    let value = "v".repeat(1024);
    let mut g = c.benchmark_group("write_behind");
    g.sample_size(30).measurement_time(Duration::from_secs(4));
    for (label, flush, sealed) in [
        ("insert", None, false),
        ("queue-page-cache", Some(FlushPolicy::OnClose), false),
        ("queue-fdatasync", Some(FlushPolicy::Always), false),
        ("queue-sealed-fdatasync", Some(FlushPolicy::Always), true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cache = rt.block_on(async { cache(dir.path(), flush, sealed) });
        let mut i = 0u64;
        g.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.to_async(&rt).iter(|| {
                i += 1;
                let (cache, value) = (cache.clone(), value.clone());
                async move {
                    let key = format!("k{}", i % 10_000);
                    match flush {
                        None => cache.insert(key, value).await.unwrap(),
                        Some(_) => cache.write_behind(key, value).await.unwrap(),
                    }
                }
            })
        });
        rt.block_on(async {
            if flush.is_some() {
                cache.flush_write_behind().await.unwrap();
            }
        });
        drop(cache);
    }
    let file = tempfile::tempfile().unwrap();
    let record = vec![0x5Au8; 1024 + 40];
    let mut at = 0u64;
    g.bench_function(BenchmarkId::from_parameter("pwrite-fdatasync"), |b| {
        b.iter(|| {
            file.write_all_at(&record, at).unwrap();
            file.sync_data().unwrap();
            at += record.len() as u64;
        })
    });
    g.finish();
}

criterion_group!(benches, writes);
criterion_main!(benches);

//! Encryption at rest (tier-core feature `encryption`) beside the path in clear, same values,
//! same run:
//! - `seal_codec/{clear,sealed}/{1KiB,16KiB}`: encode a value into an envelope and decode it
//!   back (`Codec::encode` + `decode_value` vs `seal::encode_sealed` + `seal::decode_sealed`:
//!   XChaCha20-Poly1305 with a fresh random nonce per entry);
//! - `seal_disk_get/{clear,sealed}/{1KiB,16KiB}`: `Cache::get` of a hit in a disk tier (the only
//!   tier, so that every get reads and decodes the envelope), with and without a keyring.
//!
//! The values are strings of letters that do not compress (`tier_benches::letters`).
//! `cargo bench -p tier-benches --bench seal`; shorter: add `-- --measurement-time 2`.
//!
//! Measured (two runs, `-- --measurement-time 3`, a 2-core machine at load average 23–30, so
//! the absolute figures are several times a quiet machine's; medians, sealed / clear):
//! encode+decode 1 KiB 49 / 5.5 µs (8.9×) and 42 / 6.2 µs (6.8×), 16 KiB 279 / 43 µs (6.4×) and
//! 198 / 24 µs (8.4×); disk-tier get 1 KiB 40 / 10.5 µs (3.8×) and 33 / 8.1 µs (4.1×), 16 KiB
//! 165 / 21.5 µs (7.7×) and 169 / 25 µs (6.8×).

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tier_core::seal::{decode_sealed, encode_sealed, Keyring, Place};
use tier_core::spi::envelope::{decode_meta, decode_value};
use tier_core::spi::{now_ms, Codec, Meta};
use tier_core::{Cache, TierPolicy};
use tier_disk::{DiskTier, FlushPolicy};

const SIZES: [(usize, &str); 2] = [(1 << 10, "1KiB"), (16 << 10, "16KiB")];
const KEYS: u64 = 256;

fn meta() -> Meta {
    let now = now_ms();
    Meta {
        created_at: now,
        fresh_until: now + 3_600_000,
        stale_until: now + 3_600_000,
        ..Meta::default()
    }
}

fn codec(c: &mut Criterion) {
    let keyring = Keyring::new(1, &[7; 32]);
    let place = Place { cache: "bench", key: b"bench:0:42" };
    let (codec, meta) = (Codec::default(), meta());
    let mut g = c.benchmark_group("seal_codec");
    for (len, label) in SIZES {
        let value = tier_benches::letters(len, 42);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::new("clear", label), |b| {
            b.iter(|| {
                let bytes = codec.encode(&meta, Some(&value)).unwrap();
                let (m, at) = decode_meta(&bytes).unwrap();
                black_box(decode_value::<String>(&bytes, &m, at).unwrap())
            })
        });
        g.bench_function(BenchmarkId::new("sealed", label), |b| {
            b.iter(|| {
                let bytes = encode_sealed(&codec, &keyring, place, &meta, Some(&value)).unwrap();
                black_box(decode_sealed::<String>(&bytes, &keyring, place).unwrap())
            })
        });
    }
    g.finish();
}

fn disk_get(c: &mut Criterion) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut g = c.benchmark_group("seal_disk_get");
    for (len, label) in SIZES {
        g.throughput(Throughput::Elements(1));
        for (name, keyring) in [("clear", None), ("sealed", Some(Keyring::new(1, &[7; 32])))] {
            let dir = tempfile::tempdir().unwrap();
            let tier = DiskTier::builder(dir.path())
                .capacity_bytes(256 << 20)
                .segment_size(32 << 20)
                .flush(FlushPolicy::None)
                .build()
                .unwrap();
            let mut builder = Cache::<String>::builder("bench")
                .tier(tier, TierPolicy::fresh(std::time::Duration::from_secs(3600)));
            if let Some(k) = keyring {
                builder = builder.keyring(k);
            }
            let cache = builder.build().unwrap();
            let keys: Vec<_> = (0..KEYS).map(|i| cache.key(i.to_string())).collect();
            rt.block_on(async {
                for (i, k) in keys.iter().enumerate() {
                    cache.insert(k, tier_benches::letters(len, i as u64)).await.unwrap();
                }
                for k in &keys {
                    assert!(cache.get(k).await.is_some(), "a hit");
                }
            });
            let mut i = 0usize;
            g.bench_function(BenchmarkId::new(name, label), |b| {
                b.to_async(&rt).iter(|| {
                    i = (i + 1) % keys.len();
                    let k = &keys[i];
                    let cache = &cache;
                    async move { black_box(cache.get(k).await.unwrap()) }
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(std::time::Duration::from_secs(3))
        .sample_size(30);
    targets = codec, disk_get
}
criterion_main!(benches);

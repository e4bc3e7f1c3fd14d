//! The serializer and compression chosen per cache: what each writes, that every built-in one
//! is read whatever the reader writes, and that an entry of a codec the reader does not know is
//! a miss plus `tier_decode_errors_total` (a debugging recorder is installed for this binary).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tier_core::spi::envelope::{decode_meta, payload_of, FLAG_COMPRESSED};
use tier_core::spi::{now_ms, Codec, Meta};
use tier_core::testing::MapTier;
use tier_core::{metrics as names, Cache, CacheError, Compression, Serializer};

fn snapshotter() -> &'static Snapshotter {
    static S: OnceLock<Snapshotter> = OnceLock::new();
    S.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let s = recorder.snapshotter();
        recorder.install().unwrap();
        s
    })
}

/// `tier_decode_errors_total{cache}` so far. A snapshot drains the counters of every test of
/// this binary, so what each one sees is added to totals kept here.
fn decode_errors(cache: &str) -> u64 {
    static TOTALS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
    let mut totals = TOTALS.lock().unwrap();
    for (k, _, _, v) in snapshotter().snapshot().into_vec() {
        let (DebugValue::Counter(c), true) = (v, k.key().name() == names::TIER_DECODE_ERRORS)
        else {
            continue;
        };
        if let Some(l) = k.key().labels().find(|l| l.key() == "cache") {
            *totals.entry(l.value().to_string()).or_default() += c;
        }
    }
    totals.get(cache).copied().unwrap_or(0)
}

fn cache_over(
    name: &str,
    tier: &Arc<MapTier>,
    codec: impl FnOnce(tier_core::CacheBuilder<String>) -> tier_core::CacheBuilder<String>,
) -> Cache<String> {
    codec(Cache::builder(name).tier(tier.clone(), exact(MINUTE))).build().unwrap()
}

/// What the tier holds under `key`: (serializer, compression).
fn written_with(tier: &MapTier, key: &[u8]) -> (Serializer, Option<Compression>) {
    let bytes = tier.raw(key).unwrap();
    let (_, at) = decode_meta(&bytes).unwrap();
    let p = payload_of(&bytes, at).unwrap();
    (p.serializer, p.compression)
}

#[tokio::test]
async fn each_cache_writes_its_codec_and_reads_every_built_in_one() {
    snapshotter();
    let tier = Arc::new(MapTier::new("bytes"));
    let long = "tiered caches ".repeat(200);
    let mut writers = vec![
        ("w-msgpack", Serializer::MessagePack, Some(Compression::Lz4)),
        ("w-json", Serializer::Json, Some(Compression::Lz4)),
        ("w-json-raw", Serializer::Json, None),
    ];
    if cfg!(feature = "zstd") {
        writers.push(("w-zstd", Serializer::MessagePack, Some(Compression::Zstd)));
    }
    if cfg!(feature = "cbor") {
        writers.push(("w-cbor", Serializer::Cbor, Some(Compression::Lz4)));
    }
    // One reader with the defaults reads what each writer wrote, without loading.
    let reader = cache_over("codecs", &tier, |b| b);
    for (id, serializer, compression) in writers {
        let writer =
            cache_over("codecs", &tier, |b| b.serializer(serializer).compression(compression));
        let key = writer.key(id);
        writer.insert(&key, long.clone()).await.unwrap();
        assert_eq!(written_with(&tier, &key), (serializer, compression), "{id}");
        let calls = Calls::default();
        let got = reader.get_or_load(&key, loader(&calls, "loaded")).await.unwrap();
        assert_eq!(got.as_deref().map(String::as_str), Some(long.as_str()), "{id}");
        assert_eq!(calls.get(), 0, "{id}: read from the tier, not loaded");
    }
    assert_eq!(decode_errors("codecs"), 0);
}

#[tokio::test]
async fn compression_threshold_and_off() {
    let tier = Arc::new(MapTier::new("bytes"));
    let cache = cache_over("threshold", &tier, |b| b.compress_threshold(100));
    let (short, long) = (cache.key("short"), cache.key("long"));
    cache.insert(&short, "a".repeat(50)).await.unwrap();
    cache.insert(&long, "a".repeat(500)).await.unwrap();
    assert_eq!(written_with(&tier, &short).1, None);
    assert_eq!(written_with(&tier, &long).1, Some(Compression::Lz4));
    let off = cache_over("threshold", &tier, |b| b.compression(None));
    off.insert(&long, "a".repeat(500)).await.unwrap();
    assert_eq!(tier.raw(&long).unwrap()[4] & FLAG_COMPRESSED, 0);
}

#[tokio::test]
async fn an_entry_of_a_codec_the_reader_does_not_know_is_a_miss_and_a_decode_error() {
    snapshotter();
    let tier = Arc::new(MapTier::new("bytes"));
    let cache = cache_over("unknown", &tier, |b| b);
    let now = now_ms();
    let meta = Meta {
        created_at: now,
        fresh_until: now + 60_000,
        stale_until: now + 60_000,
        ..Meta::default()
    };
    let good = Codec { compress_threshold: 0, ..Codec::new() }
        .encode(&meta, Some(&"x".repeat(300)))
        .unwrap();
    // (format byte, what it says): a serializer id of a newer writer, a compression id of a
    // newer writer, postcard (retired), and — in a build without the feature — zstd and CBOR.
    let mut cases: Vec<(u8, &str)> =
        vec![(0x09, "serializer 9"), (0x70, "compression 7"), (0x02, "postcard, retired")];
    if !cfg!(feature = "zstd") {
        cases.push((0x10, "zstd without the feature"));
    }
    if !cfg!(feature = "cbor") {
        cases.push((0x03, "CBOR without the feature"));
    }
    for (format, what) in &cases {
        let key = cache.key(what);
        let mut bytes = good.to_vec();
        bytes[5] = *format;
        tier.put_raw(key.clone(), bytes);
        let before = decode_errors("unknown");
        assert!(cache.get(&key).await.is_none(), "{what}: a lookup is a miss");
        assert_eq!(decode_errors("unknown"), before + 1, "{what}: one decode error counted");
        let calls = Calls::default();
        let before = decode_errors("unknown");
        let got = cache.get_or_load(&key, loader(&calls, "loaded")).await.unwrap();
        assert_eq!(got.as_deref().map(String::as_str), Some("loaded"), "{what}: a miss, loaded");
        assert_eq!(calls.get(), 1, "{what}");
        // The walk and the flight's own look both meet the entry: it is counted once.
        assert_eq!(decode_errors("unknown"), before + 1, "{what}: one decode error per load");
        // The loaded value replaced the entry: the next read is a hit of it.
        let again = cache.get_or_load(&key, loader(&calls, "again")).await.unwrap();
        assert_eq!(again.as_deref().map(String::as_str), Some("loaded"), "{what}");
        assert_eq!(written_with(&tier, &key).0, Serializer::MessagePack, "{what}");
    }
}

#[test]
fn a_codec_not_built_in_or_out_of_range_is_refused_at_build() {
    let build = |f: fn(tier_core::CacheBuilder<String>) -> tier_core::CacheBuilder<String>| {
        f(Cache::builder("refused").tier(MapTier::new("bytes"), exact(MINUTE))).build().map(drop)
    };
    let refused = |r: Result<(), CacheError>, needle: &str| match r {
        Err(CacheError::Config(why)) => assert!(why.contains(needle), "{why}"),
        other => panic!("expected a config error with {needle:?}, got {other:?}"),
    };
    if cfg!(feature = "zstd") {
        refused(build(|b| b.compression(Compression::Zstd).zstd_level(0)), "zstd level 0");
        refused(build(|b| b.compression(Compression::Zstd).zstd_level(23)), "zstd level 23");
        build(|b| b.compression(Compression::Zstd).zstd_level(19)).unwrap();
    } else {
        refused(build(|b| b.compression(Compression::Zstd)), "feature `zstd`");
    }
    if cfg!(feature = "cbor") {
        build(|b| b.serializer(Serializer::Cbor)).unwrap();
    } else {
        refused(build(|b| b.serializer(Serializer::Cbor)), "feature `cbor`");
    }
    // The level matters only to zstd.
    build(|b| b.compression(Compression::Lz4).zstd_level(0)).unwrap();
}

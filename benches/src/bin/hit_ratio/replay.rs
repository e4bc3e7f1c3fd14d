//! Replaying a trace: through the hierarchy's L1 (`Cache::get_or_load` over one `MemoryTier`)
//! and through raw moka configured two ways, each answering a miss ratio.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tier_core::spi::{Codec, Meta};
use tier_core::{Cache, TierPolicy};
use tier_memory::{MemoryTier, ENTRY_OVERHEAD};

use super::traces::{mix, Sizes, Trace};

/// The value a trace's object holds: letters drawn from its id (lz4 finds nothing to compress
/// in them, so the encoded size follows the length).
#[derive(Serialize, Deserialize)]
pub struct Blob(String);

impl Blob {
    pub fn of(id: u64, len: usize) -> Self {
        let mut state = id;
        let text = (0..len)
            .map(|_| {
                state = mix(state.wrapping_add(0x9e37_79b9_7f4a_7c15));
                char::from(b'a' + (state % 26) as u8)
            })
            .collect();
        Self(text)
    }
}

/// The key of object `id`: 16 bytes, the same length for every id.
pub fn key_of(id: u64) -> Bytes {
    Bytes::from(format!("obj:{id:012}"))
}

/// What the memory tier weighs each object at: key + envelope + [`ENTRY_OVERHEAD`], as its
/// weigher does; indexed by id (a trace's ids are below twice its object count).
pub struct Weights(Vec<u32>);

impl Weights {
    pub fn new(objects: u64, sizes: Sizes) -> Self {
        let codec = Codec::default();
        let meta = Meta { created_at: 1, fresh_until: 2, stale_until: 3, ..Meta::default() };
        let weights = (0..2 * objects)
            .map(|id| {
                let envelope = codec.encode(&meta, Some(&Blob::of(id, sizes.len_of(id))));
                let envelope = envelope.map(|e| e.len()).unwrap_or(0) as u32;
                key_of(id).len() as u32 + envelope + ENTRY_OVERHEAD
            })
            .collect();
        Self(weights)
    }

    pub fn of(&self, id: u64) -> u32 {
        self.0[id as usize]
    }

    /// The bytes of objects `0..objects` (what the shares of a byte budget are taken of).
    pub fn total(&self, objects: u64) -> u64 {
        self.0[..objects as usize].iter().map(|w| u64::from(*w)).sum()
    }
}

/// The miss ratio of `trace` through `Cache::get_or_load` over one `MemoryTier` of `budget`
/// bytes: a miss is a loader call.
pub fn tier(trace: &Trace, sizes: Sizes, budget: u64, rt: &tokio::runtime::Runtime) -> f64 {
    let cache: Cache<Blob> = Cache::builder("hit-ratio")
        .tier(
            MemoryTier::builder().max_bytes(budget).build(),
            TierPolicy::fresh(Duration::from_secs(86_400)),
        )
        .build()
        .expect("a memory-only cache builds");
    count_loads(trace, sizes, &cache, rt)
}

fn hasher() -> foldhash::quality::RandomState {
    foldhash::quality::RandomState::default()
}

/// The miss ratio of raw `moka::sync::Cache` holding `entries` entries (unit weight): one `get`
/// a request, an `insert` on a miss.
pub fn moka_unit(trace: &Trace, entries: u64) -> f64 {
    let cache = moka::sync::Cache::builder().max_capacity(entries).build_with_hasher(hasher());
    replay_moka(trace, |key, _| {
        if cache.get(&key).is_some() {
            return false;
        }
        cache.insert(key, ());
        true
    })
}

/// The miss ratio of raw moka weighted as `MemoryTier` weighs, bounded by `budget` bytes.
pub fn moka_bytes(trace: &Trace, weights: &Weights, budget: u64) -> f64 {
    let cache = moka::sync::Cache::builder()
        .max_capacity(budget)
        .weigher(|_key: &Bytes, weight: &u32| *weight)
        .build_with_hasher(hasher());
    replay_moka(trace, |key, id| {
        if cache.get(&key).is_some() {
            return false;
        }
        cache.insert(key, weights.of(id));
        true
    })
}

fn replay_moka(trace: &Trace, mut miss: impl FnMut(Bytes, u64) -> bool) -> f64 {
    let misses = trace.requests.iter().filter(|id| miss(key_of(**id), **id)).count();
    misses as f64 / trace.requests.len() as f64
}

/// What the disk tier's record of object `id` takes: a 32-byte header, the key and the
/// envelope, padded to 8 bytes (the memory tier's weight less its overhead, plus the header).
pub fn disk_record(weights: &Weights, id: u64) -> u64 {
    (u64::from(weights.of(id)) - u64::from(ENTRY_OVERHEAD) + 32).next_multiple_of(8)
}

/// The miss ratio of `trace` through `Cache::get_or_load` over one `DiskTier` of `budget`
/// bytes of segments (2 to 16 of at least 64 KiB, the smallest the tier takes; FIFO reclaim of
/// the oldest, with or without copying forward the entries read since they were written):
/// the miss ratio and what reclaim copied forward; `None` when the budget is below two such
/// segments.
pub fn disk(
    trace: &Trace,
    sizes: Sizes,
    budget: u64,
    reinsert_hot: bool,
    rt: &tokio::runtime::Runtime,
) -> Option<(f64, Copied)> {
    const MIN_SEGMENT: u64 = 64 << 10;
    let segments = (budget / MIN_SEGMENT).clamp(2, 16);
    let segment = budget / segments / 8 * 8;
    if segment < MIN_SEGMENT {
        return None;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let tier = tier_disk::DiskTier::builder(dir.path().join("tier"))
        .capacity_bytes(segment * segments)
        .segment_size(segment)
        .reinsert_hot(reinsert_hot)
        .verify_on_read(false)
        .build()
        .expect("the disk tier opens");
    let tier = Arc::new(tier);
    let cache: Cache<Blob> = Cache::builder("hit-ratio")
        .tier(Arc::clone(&tier), TierPolicy::fresh(Duration::from_secs(86_400)))
        .build()
        .expect("a disk-only cache builds");
    let misses = count_loads(trace, sizes, &cache, rt);
    let stats = tier.disk_stats();
    let requests = trace.requests.len() as f64;
    let copied = Copied {
        records: stats.reinserted_records as f64 / requests,
        bytes: stats.reinserted_bytes as f64 / requests,
    };
    Some((misses, copied))
}

/// What the disk tier's reclaim copied forward, per request of the trace.
#[derive(Clone, Copy, Serialize)]
pub struct Copied {
    pub records: f64,
    pub bytes: f64,
}

/// Replay `trace` through `cache.get_or_load`: the share of requests that called the loader.
fn count_loads(
    trace: &Trace,
    sizes: Sizes,
    cache: &Cache<Blob>,
    rt: &tokio::runtime::Runtime,
) -> f64 {
    let loads = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        for &id in &trace.requests {
            let loads = loads.clone();
            let len = sizes.len_of(id);
            cache
                .get_or_load(key_of(id), move || async move {
                    loads.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, Infallible>(Some(Blob::of(id, len)))
                })
                .await
                .expect("the loader never fails");
        }
    });
    loads.load(Ordering::Relaxed) as f64 / trace.requests.len() as f64
}

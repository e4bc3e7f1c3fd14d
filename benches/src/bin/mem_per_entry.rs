//! Memory per entry: fills the hierarchy's L1 (`Cache::insert` into one `MemoryTier`) and raw
//! moka with 1M small entries (a 16-byte key, an 8-byte value) in the same run, and reports the
//! heap bytes each holds per entry, counted by this binary's global allocator: the bytes asked
//! for, and the bytes malloc gave (`malloc_usable_size`: with the allocator's rounding, what the
//! process really holds, less malloc's own headers of 8 bytes a block).
//!
//! ```text
//! cargo run --release -p tier-benches --bin mem-per-entry [-- ENTRIES]
//! ```
//! The figures are exact counts, the same every run (but moka's hash table, which grows in
//! steps: a fill of 1M lands at the same step each time).
#![allow(missing_docs, clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tier_core::spi::ObjectEntry;
use tier_core::{Cache, TierPolicy};
use tier_memory::MemoryTier;

/// Counts the heap: bytes asked for, and bytes malloc handed out.
struct Counting;

static ASKED: AtomicI64 = AtomicI64::new(0);
static USABLE: AtomicI64 = AtomicI64::new(0);

fn usable(ptr: *mut u8) -> i64 {
    // SAFETY: `ptr` was returned by the system allocator (malloc) and is not freed yet.
    unsafe { libc::malloc_usable_size(ptr.cast()) as i64 }
}

// SAFETY: every call is passed to `System` unchanged; the counters are only added to.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller keeps `alloc`'s contract, passed on as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            ASKED.fetch_add(layout.size() as i64, Ordering::Relaxed);
            USABLE.fetch_add(usable(ptr), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ASKED.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        USABLE.fetch_sub(usable(ptr), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let before = usable(ptr);
        // SAFETY: as above.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            ASKED.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
            USABLE.fetch_add(usable(new) - before, Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn heap() -> (i64, i64) {
    (ASKED.load(Ordering::Relaxed), USABLE.load(Ordering::Relaxed))
}

fn key(i: u64) -> Bytes {
    Bytes::from(format!("key:{i:012}"))
}

/// Heap bytes per entry that `fill` leaves held in what `build` made.
fn per_entry<C>(name: &str, entries: u64, build: impl FnOnce() -> C, fill: impl FnOnce(&C)) -> C {
    let start = heap();
    let cache = build();
    let built = heap();
    let t = Instant::now();
    fill(&cache);
    let (asked, usable) = heap();
    let n = entries as f64;
    println!(
        "{name:<14} {:>8.1} B asked  {:>8.1} B from malloc  per entry   (empty: {} B; fill {:.1} s)",
        (asked - built.0) as f64 / n,
        (usable - built.1) as f64 / n,
        built.1 - start.1,
        t.elapsed().as_secs_f64()
    );
    cache
}

struct Never;
impl moka::Expiry<Bytes, Arc<u64>> for Never {
    fn expire_after_create(&self, _k: &Bytes, _v: &Arc<u64>, _at: Instant) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }
}

fn main() {
    let entries: u64 = std::env::args().nth(1).map_or(1_000_000, |a| a.parse().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    println!("{entries} entries of a 16-byte key and an 8-byte value (u64)");
    let plain = per_entry(
        "moka",
        entries,
        || moka::sync::Cache::<Bytes, u64>::builder().max_capacity(2 * entries).build(),
        |c| {
            (0..entries).for_each(|i| c.insert(key(i), i));
            c.run_pending_tasks();
        },
    );
    drop(plain);
    let like = per_entry(
        "moka-as-tier",
        entries,
        || {
            moka::sync::Cache::builder()
                .max_capacity(1 << 30)
                .weigher(|k: &Bytes, _v: &Arc<u64>| k.len() as u32 + 100)
                .expire_after(Never)
                .eviction_listener(|_k, _v, _cause| {})
                .build_with_hasher(foldhash::quality::RandomState::default())
        },
        |c| {
            (0..entries).for_each(|i| c.insert(key(i), Arc::new(i)));
            c.run_pending_tasks();
        },
    );
    drop(like);
    let tier = per_entry(
        "tier L1",
        entries,
        || {
            let tier = Arc::new(MemoryTier::builder().max_bytes(1 << 30).build());
            let cache: Cache<u64> = Cache::builder("mem")
                .tier_arc(tier.clone(), TierPolicy::fresh(Duration::from_secs(3600)))
                .build()
                .unwrap();
            (cache, tier)
        },
        |(cache, tier)| {
            rt.block_on(async {
                for i in 0..entries {
                    cache.insert(key(i), i).await.unwrap();
                }
            });
            tier.run_pending_tasks();
        },
    );
    drop(tier);
    let direct = per_entry(
        "MemoryTier",
        entries,
        || MemoryTier::builder().max_bytes(1 << 30).build(),
        |tier| {
            rt.block_on(async {
                for i in 0..entries {
                    let now = tier_core::spi::now_ms();
                    let meta = tier_core::spi::Meta {
                        created_at: now,
                        fresh_until: now + 3_600_000,
                        stale_until: now + 3_600_000,
                        ..Default::default()
                    };
                    let entry = tier_core::spi::Entry {
                        meta,
                        value: tier_core::spi::Value::Object(Arc::new(i)),
                        size: 49,
                    };
                    tier_core::spi::Tier::insert(tier, key(i), entry).await.unwrap();
                }
            });
            tier.run_pending_tasks();
        },
    );
    let stats = tier_core::spi::Tier::stats(&direct);
    assert_eq!(stats.entries, entries, "every entry held");
    println!(
        "sizes: ObjectEntry {} B (in an Arc: {} B), Meta {} B, Bytes {} B; the value's Arc<u64>: {} B",
        size_of::<ObjectEntry>(),
        size_of::<ObjectEntry>() + 16,
        size_of::<tier_core::spi::Meta>(),
        size_of::<Bytes>(),
        size_of::<u64>() + 16
    );
}

//! The demo's workload: a simulated origin, Zipf-distributed keys, and the workers that read,
//! write and invalidate.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tier_core::{Cache, OriginWrite, OriginWriter};

/// The value the demo caches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    /// Key rank (0 = the most popular).
    pub id: u64,
    /// Bumped on every write of the key.
    pub version: u64,
    /// Filler of `--value-size` bytes.
    pub body: String,
}

/// The origin's failure, as the loader returns it.
#[derive(Debug)]
pub struct OriginError;

impl std::fmt::Display for OriginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("simulated origin failure")
    }
}

impl std::error::Error for OriginError {}

/// A slow, sometimes failing origin.
#[derive(Debug)]
pub struct Origin {
    latency: Duration,
    /// Failure probability in millionths (applied only while `failing` is on).
    error_ppm: u32,
    failing: AtomicBool,
    value_size: usize,
    /// Calls made.
    pub calls: AtomicU64,
    /// Calls that failed.
    pub errors: AtomicU64,
    /// Calls in progress.
    pub in_flight: AtomicU64,
    /// Greatest number of calls in progress at once.
    pub max_in_flight: AtomicU64,
    /// Write-behind batches the origin was handed, and those that failed.
    pub write_batches: AtomicU64,
    /// Write-behind batches that failed.
    pub write_failures: AtomicU64,
    /// Writes the origin took (in batches that succeeded).
    pub written: AtomicU64,
}

impl Origin {
    /// An origin answering after ~`latency`, failing with probability `error_rate` once
    /// [`start_failing`](Self::start_failing) was called.
    pub fn new(latency: Duration, error_rate: f64, value_size: usize) -> Self {
        Self {
            latency,
            error_ppm: (error_rate.clamp(0.0, 1.0) * 1e6).round() as u32,
            failing: AtomicBool::new(false),
            value_size,
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            write_batches: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
            written: AtomicU64::new(0),
        }
    }

    /// From now on, fail at the configured rate.
    pub fn start_failing(&self) {
        self.failing.store(true, Ordering::Relaxed);
    }

    /// Build a value for `id` (also used by writes).
    pub fn item(&self, id: u64, version: u64) -> Item {
        Item { id, version, body: filler(id, self.value_size) }
    }

    /// One call: wait 50–150 % of the latency, then fail or answer.
    pub async fn load(self: Arc<Self>, id: u64) -> Result<Option<Item>, OriginError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        let fail = self.answer().await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if fail {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return Err(OriginError);
        }
        Ok(Some(self.item(id, 0)))
    }

    /// Wait 50–150 % of the latency; true when this call fails.
    async fn answer(&self) -> bool {
        let (wait, fail) = {
            let mut rng = rand::rng();
            let factor: f64 = rng.random_range(0.5..1.5);
            let fail = self.failing.load(Ordering::Relaxed)
                && self.error_ppm > 0
                && rng.random_range(0..1_000_000u32) < self.error_ppm;
            (self.latency.mul_f64(factor), fail)
        };
        tokio::time::sleep(wait).await;
        fail
    }
}

/// The origin as the write-behind writer: a batch takes one call's latency and fails at the
/// origin's error rate (after the warm-up), as a database would.
pub struct OriginSink(pub Arc<Origin>);

#[async_trait::async_trait]
impl OriginWriter<Item> for OriginSink {
    type Error = OriginError;

    async fn write_batch(&self, batch: &[OriginWrite<Item>]) -> Result<(), OriginError> {
        let origin = &self.0;
        origin.write_batches.fetch_add(1, Ordering::Relaxed);
        if origin.answer().await {
            origin.write_failures.fetch_add(1, Ordering::Relaxed);
            return Err(OriginError);
        }
        origin.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn filler(id: u64, size: usize) -> String {
    let seed = format!("item-{id}-");
    seed.chars().cycle().take(size).collect()
}

/// Zipf-distributed ranks `0..n` (rank `k` drawn with probability ∝ `1 / (k+1)^s`), by binary
/// search in the cumulative distribution (8 bytes per key).
#[derive(Debug)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// Ranks `0..n` with exponent `s` (`s = 0` is uniform). `n` ≥ 1.
    pub fn new(n: u64, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n as usize);
        let mut total = 0.0;
        for k in 1..=n.max(1) {
            total += 1.0 / (k as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Self { cdf }
    }

    /// Draw a rank.
    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.random();
        let i = self.cdf.partition_point(|c| *c < u);
        i.min(self.cdf.len() - 1) as u64
    }
}

/// What the workers did (counted by the demo itself, besides the hierarchy's metrics).
#[derive(Debug, Default)]
pub struct Counters {
    /// `get_or_load` calls.
    pub reads: AtomicU64,
    /// Reads answered with a value.
    pub answered: AtomicU64,
    /// Reads that failed (origin failing and nothing stale to serve).
    pub read_errors: AtomicU64,
    /// Of those, reads of a key invalidated since it was last written (so no tier could hold
    /// even a stale value of it, unless a load succeeded in between).
    pub read_errors_invalidated: AtomicU64,
    /// `insert` calls.
    pub writes: AtomicU64,
    /// Writes that reported a tier failure.
    pub write_errors: AtomicU64,
    /// `invalidate` calls.
    pub invalidates: AtomicU64,
    /// Invalidations that reported a tier failure.
    pub invalidate_errors: AtomicU64,
    /// Sum of read latencies in µs.
    pub read_micros: AtomicU64,
}

/// Read latencies in µs, 3 significant digits, up to an hour (each worker keeps its own; the
/// demo adds them up at the end).
pub fn latencies() -> Histogram<u64> {
    // Invariant: low = 1 ≥ 1, high ≥ 2·low and 3 significant digits (≤ 5) are valid bounds, the
    // only inputs `new_with_bounds` checks.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// The mix and pacing of operations.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Share of writes.
    pub write: f64,
    /// Share of invalidations.
    pub invalidate: f64,
    /// Operations per second of one worker (0: unpaced).
    pub per_worker_rate: f64,
}

/// Everything a worker shares with the others.
pub struct Shared {
    /// The hierarchy.
    pub cache: Cache<Item>,
    /// Writes go through `write_behind` (the origin writer is the origin), not `insert`.
    pub write_behind: bool,
    /// The origin.
    pub origin: Arc<Origin>,
    /// The key distribution.
    pub zipf: Zipf,
    /// Counters.
    pub counters: Counters,
    /// Set when the run is over.
    pub stop: AtomicBool,
    /// Key versions for writes.
    pub versions: AtomicU64,
    /// Per key: invalidated since last written (a read answered meanwhile may have been a hit
    /// that raced the invalidation, so only a write clears it).
    pub invalidated: Vec<AtomicBool>,
    /// Told when a worker's read has been answered (or failed; any operation in a mix without
    /// reads): from then on the hierarchy's metrics hold a series of every tier.
    pub first_read: tokio::sync::Notify,
}

impl Shared {
    fn mark_invalidated(&self, id: u64, yes: bool) {
        if let Some(flag) = self.invalidated.get(id as usize) {
            flag.store(yes, Ordering::Relaxed);
        }
    }

    fn is_invalidated(&self, id: u64) -> bool {
        self.invalidated.get(id as usize).is_some_and(|f| f.load(Ordering::Relaxed))
    }
}

/// The cache key of rank `id`.
pub fn key_of(cache: &Cache<Item>, id: u64) -> bytes::Bytes {
    cache.key(format!("item:{id}"))
}

/// One read through the hierarchy; its latency goes into `latency` (µs).
pub async fn read(shared: &Shared, id: u64, latency: &mut Histogram<u64>) -> bool {
    let key = key_of(&shared.cache, id);
    let origin = shared.origin.clone();
    let started = Instant::now();
    // A write may land while the read waits for the origin: look before and after.
    let was_invalidated = shared.is_invalidated(id);
    let r = shared.cache.get_or_load(&key, move || origin.load(id)).await;
    let c = &shared.counters;
    let micros = started.elapsed().as_micros() as u64;
    c.read_micros.fetch_add(micros, Ordering::Relaxed);
    latency.saturating_record(micros.max(1));
    c.reads.fetch_add(1, Ordering::Relaxed);
    match r {
        Ok(_) => {
            c.answered.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(_) => {
            c.read_errors.fetch_add(1, Ordering::Relaxed);
            if was_invalidated || shared.is_invalidated(id) {
                c.read_errors_invalidated.fetch_add(1, Ordering::Relaxed);
            }
            false
        }
    }
}

/// A worker: operations until `stop`, paced to `mix.per_worker_rate`. Returns its reads'
/// latencies.
pub async fn worker(shared: Arc<Shared>, mix: Mix, seed: u64) -> Histogram<u64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut latency = latencies();
    let started = tokio::time::Instant::now();
    let mut done: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        if mix.per_worker_rate > 0.0 {
            let due = started + Duration::from_secs_f64(done as f64 / mix.per_worker_rate);
            if due > tokio::time::Instant::now() {
                tokio::time::sleep_until(due).await;
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
        done += 1;
        let id = shared.zipf.sample(&mut rng);
        let dice: f64 = rng.random();
        let c = &shared.counters;
        if dice < mix.invalidate {
            c.invalidates.fetch_add(1, Ordering::Relaxed);
            // Marked before (a read may start between the removal and a mark after it) and
            // after (a write that completed before the removal may clear the first mark).
            // Invalidations and inserts of one key are serialized by the cache.
            shared.mark_invalidated(id, true);
            if shared.cache.invalidate(key_of(&shared.cache, id)).await.is_err() {
                c.invalidate_errors.fetch_add(1, Ordering::Relaxed);
            }
            shared.mark_invalidated(id, true);
        } else if dice < mix.invalidate + mix.write {
            c.writes.fetch_add(1, Ordering::Relaxed);
            let version = shared.versions.fetch_add(1, Ordering::Relaxed) + 1;
            let item = shared.origin.item(id, version);
            let key = key_of(&shared.cache, id);
            let written = if shared.write_behind {
                shared.cache.write_behind(key, item).await
            } else {
                shared.cache.insert(key, item).await
            };
            if written.is_err() {
                c.write_errors.fetch_add(1, Ordering::Relaxed);
            }
            shared.mark_invalidated(id, false);
        } else {
            read(&shared, id, &mut latency).await;
        }
        if dice >= mix.invalidate + mix.write || mix.invalidate + mix.write >= 1.0 {
            // A read was answered (or, in a mix without reads, any operation was).
            shared.first_read.notify_one();
        }
        if mix.per_worker_rate <= 0.0 && done.is_multiple_of(64) {
            // Unpaced: let the progress display and the timers run on a busy runtime.
            tokio::task::yield_now().await;
        }
    }
    latency
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_low_ranks() {
        let z = Zipf::new(1000, 1.0);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[z.sample(&mut rng) as usize] += 1;
        }
        // P(rank 0) = 1 / H(1000) ≈ 0.1336.
        let p0 = f64::from(counts[0]) / 100_000.0;
        assert!((p0 - 0.1336).abs() < 0.01, "{p0}");
        assert!(counts[0] > counts[1] && counts[1] > counts[9] && counts[9] > counts[999]);
    }

    #[test]
    fn zipf_zero_is_uniform_and_in_range() {
        let z = Zipf::new(10, 0.0);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut counts = [0u32; 10];
        for _ in 0..10_000 {
            counts[z.sample(&mut rng) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
        assert_eq!(Zipf::new(1, 1.0).sample(&mut rng), 0);
    }
}

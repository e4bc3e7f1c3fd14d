//! Metric names (an interface: the dashboards and the CLI depend on them), their help text, and
//! the handles the hierarchy keeps so that the hot path never looks a metric up by name.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tier_requests_total` | counter | cache, tier, op, result (hit/stale/miss/error/timeout/skipped; ok for writes) [, category] |
//! | `tier_op_duration_seconds` | histogram | cache, tier, op |
//! | `tier_backfills_total` | counter | cache, from, to |
//! | `tier_breaker_state` | gauge 0 closed / 1 half-open / 2 open | cache, tier |
//! | `tier_entries`, `tier_bytes`, `tier_capacity_bytes` | gauge | cache, tier |
//! | `tier_evictions_total` | counter | cache, tier, cause |
//! | `tier_decode_errors_total` | counter | cache, tier |
//! | `cache_loads_total` | counter | cache, result (ok/none/error/timeout) |
//! | `cache_load_duration_seconds` | histogram | cache |
//! | `cache_coalesced_total`, `cache_stale_served_total`, `cache_refreshes_total` | counter | cache |
//! | `cache_invalidations_total` | counter | cache, kind (key/tag/namespace/clear), source (local/backplane) |
//! | `cache_backfills_shed_total` | counter | cache (backfills skipped by load shedding) |
//! | `tier_write_behind_queue_depth`, `tier_write_behind_oldest_age_seconds`, `tier_write_behind_dead_letters` | gauge | cache |
//! | `tier_write_behind_writes_total`, `tier_write_behind_retries_total`, `tier_write_behind_dead_letters_total` | counter | cache |
//! | `tier_write_behind_batches_total` | counter | cache, result (ok/error) |
//!
//! The hierarchy's handles are [`LazyCounter`]s, [`LazyGauge`]s and [`LazyHistogram`]s: made when
//! a cache is built, and bound to the recorder when one is installed, before or after the build.
//! Give the exporter the buckets of [`BUCKETS`] (the `tier` crate's `prometheus` feature does).
//!
//! Durations of in-process (object) tiers are sampled (1 call in [`OBJECT_TIER_TIMING_SAMPLE`])
//! so that timing costs less than the hit it measures; counters are never sampled.

use metrics::{Counter, Label, Unit};

use crate::events::EventLimit;

mod lazy;

pub use lazy::{recorder_installed, LazyCounter, LazyGauge, LazyHistogram};

fn labels(pairs: &[(&'static str, &str)]) -> Vec<Label> {
    pairs.iter().map(|(k, v)| Label::new(*k, v.to_string())).collect()
}

/// `tier_requests_total`
pub const TIER_REQUESTS: &str = "tier_requests_total";
/// `tier_op_duration_seconds`
pub const TIER_OP_DURATION: &str = "tier_op_duration_seconds";
/// `tier_backfills_total`
pub const TIER_BACKFILLS: &str = "tier_backfills_total";
/// `tier_breaker_state`
pub const TIER_BREAKER_STATE: &str = "tier_breaker_state";
/// `tier_entries`
pub const TIER_ENTRIES: &str = "tier_entries";
/// `tier_bytes`
pub const TIER_BYTES: &str = "tier_bytes";
/// `tier_capacity_bytes`
pub const TIER_CAPACITY_BYTES: &str = "tier_capacity_bytes";
/// `tier_evictions_total`
pub const TIER_EVICTIONS: &str = "tier_evictions_total";
/// `tier_decode_errors_total`
pub const TIER_DECODE_ERRORS: &str = "tier_decode_errors_total";
/// `cache_loads_total`
pub const CACHE_LOADS: &str = "cache_loads_total";
/// `cache_load_duration_seconds`
pub const CACHE_LOAD_DURATION: &str = "cache_load_duration_seconds";
/// `cache_coalesced_total`
pub const CACHE_COALESCED: &str = "cache_coalesced_total";
/// `cache_stale_served_total`
pub const CACHE_STALE_SERVED: &str = "cache_stale_served_total";
/// `cache_refreshes_total`
pub const CACHE_REFRESHES: &str = "cache_refreshes_total";
/// `cache_invalidations_total`
pub const CACHE_INVALIDATIONS: &str = "cache_invalidations_total";
/// `cache_backfills_shed_total` (beyond the design's table: backfills skipped by load shedding)
pub const CACHE_BACKFILLS_SHED: &str = "cache_backfills_shed_total";
/// `tier_fleet_state_unavailable_total{cache, part}`: calls to a part of the fleet state
/// (`generations`, `namespace`, `lock`, `backplane`, `floor`) that failed, timed out or were
/// refused by its open breaker; the cache went on without it.
pub const FLEET_STATE_UNAVAILABLE: &str = "tier_fleet_state_unavailable_total";

/// `tier_write_behind_queue_depth{cache}`: writes queued for the origin, not yet written.
pub const WRITE_BEHIND_DEPTH: &str = "tier_write_behind_queue_depth";
/// `tier_write_behind_oldest_age_seconds{cache}`: how long the oldest pending write has waited.
pub const WRITE_BEHIND_OLDEST_AGE: &str = "tier_write_behind_oldest_age_seconds";
/// `tier_write_behind_dead_letters{cache}`: dead letters kept (not retried).
pub const WRITE_BEHIND_DEAD_LETTERS: &str = "tier_write_behind_dead_letters";
/// `tier_write_behind_writes_total{cache}`: writes the origin writer acknowledged.
pub const WRITE_BEHIND_WRITES: &str = "tier_write_behind_writes_total";
/// `tier_write_behind_batches_total{cache, result}`: origin writer calls, `ok` or `error`.
pub const WRITE_BEHIND_BATCHES: &str = "tier_write_behind_batches_total";
/// `tier_write_behind_retries_total{cache}`: batches tried again after a failure.
pub const WRITE_BEHIND_RETRIES: &str = "tier_write_behind_retries_total";
/// `tier_write_behind_dead_letters_total{cache}`: writes that became dead letters.
pub const WRITE_BEHIND_DEAD_LETTERED: &str = "tier_write_behind_dead_letters_total";
/// `tier_write_behind_unreadable_total{cache}`: queued writes that could not be read back
/// (sealed with a key the keyring lacks, failing authentication, or not decoding as the
/// cache's type); each is kept as a dead letter, never written, never dropped.
pub const WRITE_BEHIND_UNREADABLE: &str = "tier_write_behind_unreadable_total";

/// One in this many calls to an object (in-process) tier is timed.
///
/// A timed L1 hit reads the monotonic clock twice (~25 ns each on a VM, a tenth of the hit) and
/// records a histogram sample: one in 16 cost about 1 % of an L1 hit on average, one in 64 a
/// quarter of that (the `memory` bench). An L1 hit varies little, so 1,000 hits a second still
/// give ~15 samples a second, over 200 per 15 s scrape.
pub const OBJECT_TIER_TIMING_SAMPLE: u64 = 64;

/// Histogram buckets (seconds) of `tier_op_duration_seconds`: an L1 hit (~100 ns) through a
/// disk read (µs) and a Redis call (50 µs – 5 ms, in steps of 1.5–2×) to a tier timeout.
/// [`BUCKETS`] pairs each histogram with its buckets; the `tier` crate's `prometheus` feature
/// sets them on the exporter.
pub const TIER_DURATION_BUCKETS: &[f64] = &[
    0.000_000_1,
    0.000_000_25,
    0.000_000_5,
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_075,
    0.000_1,
    0.000_15,
    0.000_2,
    0.000_3,
    0.000_5,
    0.000_75,
    0.001,
    0.001_5,
    0.002,
    0.003,
    0.005,
    0.007_5,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
];

/// Histogram buckets (seconds) of `cache_load_duration_seconds`: origin calls, resolved in steps
/// of 10–25 % from 1 to 200 ms (a 50 ms load lands in `(0.05, 0.06]`, not in `(0.05, 0.1]`), then
/// coarser up to 10 s.
pub const LOAD_DURATION_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.001_25, 0.001_5, 0.002, 0.002_5, 0.003, 0.004, 0.005,
    0.006, 0.007, 0.008, 0.01, 0.012_5, 0.015, 0.017_5, 0.02, 0.025, 0.03, 0.035, 0.04, 0.045,
    0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.115, 0.13, 0.15, 0.175, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
];

/// Buckets for every other duration histogram (names ending in `_seconds`): the tier buckets.
pub const DURATION_BUCKETS: &[f64] = TIER_DURATION_BUCKETS;

/// Each histogram of the hierarchy with the buckets that resolve it; give them to the exporter
/// (`set_buckets_for_metric(Matcher::Full(name.into()), buckets)` for each, and
/// [`DURATION_BUCKETS`] for names ending in `_seconds`), or use the `tier` crate's `prometheus`
/// feature, which does.
pub const BUCKETS: &[(&str, &[f64])] =
    &[(TIER_OP_DURATION, TIER_DURATION_BUCKETS), (CACHE_LOAD_DURATION, LOAD_DURATION_BUCKETS)];

/// Register help text and units of every metric with the installed recorder.
/// Call it once after installing your exporter (the hierarchy also calls it when built).
pub fn describe() {
    metrics::describe_counter!(
        TIER_REQUESTS,
        Unit::Count,
        "Requests to a tier, by operation and result."
    );
    metrics::describe_histogram!(TIER_OP_DURATION, Unit::Seconds, "Duration of tier operations.");
    metrics::describe_counter!(
        TIER_BACKFILLS,
        Unit::Count,
        "Entries copied from a lower tier into an upper tier."
    );
    metrics::describe_gauge!(
        TIER_BREAKER_STATE,
        "Circuit breaker state: 0 closed, 1 half-open, 2 open."
    );
    metrics::describe_gauge!(TIER_ENTRIES, Unit::Count, "Entries held by a tier.");
    metrics::describe_gauge!(TIER_BYTES, Unit::Bytes, "Bytes used by a tier.");
    metrics::describe_gauge!(TIER_CAPACITY_BYTES, Unit::Bytes, "Bytes a tier may use.");
    metrics::describe_counter!(
        TIER_EVICTIONS,
        Unit::Count,
        "Entries evicted from a tier, by cause."
    );
    metrics::describe_counter!(
        TIER_DECODE_ERRORS,
        Unit::Count,
        "Stored bytes that did not decode as an entry."
    );
    metrics::describe_counter!(CACHE_LOADS, Unit::Count, "Loader calls, by result.");
    metrics::describe_gauge!(
        WRITE_BEHIND_DEPTH,
        Unit::Count,
        "Write-behind writes not yet written to the origin."
    );
    metrics::describe_gauge!(
        WRITE_BEHIND_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest pending write-behind write."
    );
    metrics::describe_gauge!(
        WRITE_BEHIND_DEAD_LETTERS,
        Unit::Count,
        "Write-behind dead letters kept."
    );
    metrics::describe_counter!(
        WRITE_BEHIND_WRITES,
        Unit::Count,
        "Write-behind writes the origin acknowledged."
    );
    metrics::describe_counter!(
        WRITE_BEHIND_BATCHES,
        Unit::Count,
        "Write-behind origin writer calls, by result."
    );
    metrics::describe_counter!(
        WRITE_BEHIND_RETRIES,
        Unit::Count,
        "Write-behind batches tried again after a failure."
    );
    metrics::describe_counter!(
        WRITE_BEHIND_DEAD_LETTERED,
        Unit::Count,
        "Write-behind writes that became dead letters."
    );
    metrics::describe_counter!(
        WRITE_BEHIND_UNREADABLE,
        Unit::Count,
        "Queued write-behind writes that could not be read back (unknown key, failed authentication, undecodable); kept as dead letters."
    );
    metrics::describe_histogram!(CACHE_LOAD_DURATION, Unit::Seconds, "Duration of loader calls.");
    metrics::describe_counter!(
        CACHE_COALESCED,
        Unit::Count,
        "Callers that waited for a load already in flight."
    );
    metrics::describe_counter!(
        CACHE_STALE_SERVED,
        Unit::Count,
        "Stale values served (fail-safe, soft timeout, stale-while-revalidate)."
    );
    metrics::describe_counter!(CACHE_REFRESHES, Unit::Count, "Background refreshes started.");
    metrics::describe_counter!(
        CACHE_INVALIDATIONS,
        Unit::Count,
        "Invalidations applied, by kind and source."
    );
    metrics::describe_counter!(
        CACHE_BACKFILLS_SHED,
        Unit::Count,
        "Backfills skipped because too many were pending (load shedding)."
    );
    metrics::describe_counter!(
        FLEET_STATE_UNAVAILABLE,
        Unit::Count,
        "Calls to a part of the fleet state that failed, timed out or were refused by its breaker."
    );
}

/// Results of a tier lookup, in the order of [`LookupCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LookupResult {
    Hit = 0,
    Stale = 1,
    Miss = 2,
    Error = 3,
    Timeout = 4,
    Skipped = 5,
}

const LOOKUP_RESULTS: [&str; 6] = ["hit", "stale", "miss", "error", "timeout", "skipped"];

/// The `result` counters of one (tier, op, category).
pub(crate) struct LookupCounters([LazyCounter; 6]);

impl LookupCounters {
    fn new(cache: &str, tier: &str, op: &'static str, category: Option<&str>) -> Self {
        Self(LOOKUP_RESULTS.map(|result| {
            let mut pairs = vec![("cache", cache), ("tier", tier), ("op", op), ("result", result)];
            if let Some(c) = category {
                pairs.push(("category", c));
            }
            LazyCounter::new(TIER_REQUESTS, labels(&pairs))
        }))
    }

    pub(crate) fn add(&self, r: LookupResult, n: u64) {
        self.0[r as usize].increment(n);
    }
}

/// Handles of one tier in one hierarchy.
pub(crate) struct TierMetrics {
    /// `get` counters, one set per category (index 0 when no classifier).
    pub get: Vec<LookupCounters>,
    pub write_ok: LazyCounter,
    pub write_error: LazyCounter,
    pub write_timeout: LazyCounter,
    pub write_skipped: LazyCounter,
    pub get_duration: LazyHistogram,
    pub write_duration: LazyHistogram,
    pub decode_errors: LazyCounter,
    /// The `tracing` events of decode errors, at most one a second.
    pub decode_events: EventLimit,
    pub entries: LazyGauge,
    pub bytes: LazyGauge,
    pub capacity: LazyGauge,
    pub breaker: LazyGauge,
}

impl TierMetrics {
    pub(crate) fn new(cache: &str, tier: &str, categories: &[&'static str]) -> Self {
        let tier_labels = || labels(&[("cache", cache), ("tier", tier)]);
        let get = if categories.is_empty() {
            vec![LookupCounters::new(cache, tier, "get", None)]
        } else {
            categories.iter().map(|c| LookupCounters::new(cache, tier, "get", Some(c))).collect()
        };
        let write = |result: &str| {
            let pairs = [("cache", cache), ("tier", tier), ("op", "insert"), ("result", result)];
            LazyCounter::new(TIER_REQUESTS, labels(&pairs))
        };
        let duration = |op: &str| {
            LazyHistogram::new(
                TIER_OP_DURATION,
                labels(&[("cache", cache), ("tier", tier), ("op", op)]),
            )
        };
        Self {
            get,
            write_ok: write("ok"),
            write_error: write("error"),
            write_timeout: write("timeout"),
            write_skipped: write("skipped"),
            get_duration: duration("get"),
            write_duration: duration("insert"),
            decode_errors: LazyCounter::new(TIER_DECODE_ERRORS, tier_labels()),
            decode_events: EventLimit::default(),
            entries: LazyGauge::new(TIER_ENTRIES, tier_labels()),
            bytes: LazyGauge::new(TIER_BYTES, tier_labels()),
            capacity: LazyGauge::new(TIER_CAPACITY_BYTES, tier_labels()),
            breaker: LazyGauge::new(TIER_BREAKER_STATE, tier_labels()),
        }
    }
}

/// Handles of one hierarchy.
pub(crate) struct CacheMetrics {
    pub loads_ok: LazyCounter,
    pub loads_none: LazyCounter,
    pub loads_error: LazyCounter,
    pub loads_timeout: LazyCounter,
    pub load_duration: LazyHistogram,
    pub coalesced: LazyCounter,
    pub stale_served: LazyCounter,
    /// The `tracing` events of fail-safe answers, at most one a second.
    pub fail_safe_events: EventLimit,
    pub refreshes: LazyCounter,
    pub backfills_shed: LazyCounter,
    cache: String,
    /// Whether the event series were registered with a recorder.
    event_series: std::sync::atomic::AtomicBool,
}

impl CacheMetrics {
    pub(crate) fn new(cache: &str) -> Self {
        let load =
            |result| LazyCounter::new(CACHE_LOADS, labels(&[("cache", cache), ("result", result)]));
        let counter = |name| LazyCounter::new(name, labels(&[("cache", cache)]));
        Self {
            loads_ok: load("ok"),
            loads_none: load("none"),
            loads_error: load("error"),
            loads_timeout: load("timeout"),
            load_duration: LazyHistogram::new(CACHE_LOAD_DURATION, labels(&[("cache", cache)])),
            coalesced: counter(CACHE_COALESCED),
            stale_served: counter(CACHE_STALE_SERVED),
            fail_safe_events: EventLimit::default(),
            refreshes: counter(CACHE_REFRESHES),
            backfills_shed: counter(CACHE_BACKFILLS_SHED),
            cache: cache.to_string(),
            event_series: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Invalidations are rare: looked up by name.
    pub(crate) fn invalidation(&self, kind: &'static str, source: &'static str) {
        metrics::counter!(CACHE_INVALIDATIONS, "cache" => self.cache.clone(), "kind" => kind, "source" => source).increment(1);
    }

    /// Register every series that only moves on events (invalidations by kind and source,
    /// backfills between each pair of tiers) at 0, so dashboards show 0 rather than no data, and
    /// give the recorder the help texts ([`describe`]): once, with the first recorder seen (at
    /// build, or from the gauge task when the recorder was installed after the build).
    pub(crate) fn register_event_series(&self, tiers: impl FnOnce() -> Vec<String>) {
        use std::sync::atomic::Ordering;
        if self.event_series.load(Ordering::Relaxed) || !recorder_installed() {
            return;
        }
        self.event_series.store(true, Ordering::Relaxed);
        describe();
        let tiers = tiers();
        for kind in ["key", "written", "tag", "namespace", "clear"] {
            for source in ["local", "backplane"] {
                metrics::counter!(CACHE_INVALIDATIONS, "cache" => self.cache.clone(), "kind" => kind, "source" => source).increment(0);
            }
        }
        for (from, f) in tiers.iter().enumerate() {
            for t in &tiers[..from] {
                self.backfill(f, t).increment(0);
            }
        }
    }

    pub(crate) fn backfill(&self, from: &str, to: &str) -> Counter {
        metrics::counter!(TIER_BACKFILLS, "cache" => self.cache.clone(), "from" => from.to_string(), "to" => to.to_string())
    }
}

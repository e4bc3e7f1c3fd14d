//! Metric names and handles (see the crate docs for the table).
//!
//! The tier also records tier-core's `tier_evictions_total` (cause `capacity` or `expired`) and
//! `tier_decode_errors_total` (damage it found itself), under tier-core's names.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use metrics::{counter, gauge, Unit};
use tier_core::metrics::{LazyCounter, TIER_DECODE_ERRORS, TIER_EVICTIONS};
use tier_core::spi::TierContext;

use crate::report::RecoveryReport;
/// `tier_disk_recovery_records_total{cache,tier}`: valid records scanned when the directory was
/// opened.
pub const RECOVERY_RECORDS: &str = "tier_disk_recovery_records_total";
/// `tier_disk_recovery_corrupt_total{cache,tier}`: damage found when the directory was opened
/// (torn or corrupt records, missing segments, stray files set aside), each counted once.
pub const RECOVERY_CORRUPT: &str = "tier_disk_recovery_corrupt_total";
/// `tier_disk_recovery_suspect_total{cache,tier}`: entries found at open that damage could have
/// superseded, served only as stale (or dropped).
pub const RECOVERY_SUSPECT: &str = "tier_disk_recovery_suspect_total";
/// `tier_disk_recovery_bytes_total{cache,tier}`: bytes scanned when the directory was opened.
pub const RECOVERY_BYTES: &str = "tier_disk_recovery_bytes_total";
/// `tier_disk_recovery_seconds{cache,tier}` (gauge): how long the last open took.
pub const RECOVERY_SECONDS: &str = "tier_disk_recovery_seconds";
/// `tier_disk_reads_total{cache,tier,path}`: records read for a lookup, by how: `page_cache`
/// (answered inline, the page cache held every byte), `pool` (some bytes came from the device,
/// read on the tier's read threads), `rejected` (the read threads and their queue were full:
/// the lookup failed with a timeout, which the hierarchy reads as a miss of this tier).
pub const READS: &str = "tier_disk_reads_total";
/// `tier_disk_reinserted_total{cache,tier}`: records the reclaim of an old segment copied
/// forward into the active one (entries read since written, or lately evicted and inserted
/// again; see [`DiskTierBuilder::reinsert_hot`](crate::DiskTierBuilder::reinsert_hot)).
pub const REINSERTED: &str = "tier_disk_reinserted_total";
/// `tier_disk_reinserted_bytes_total{cache,tier}`: the bytes of those records (device writes
/// besides the inserts').
pub const REINSERTED_BYTES: &str = "tier_disk_reinserted_bytes_total";

/// Counter handles with the tier's labels (lazy: bound to the metrics recorder whenever the
/// service installs it, before or after building its cache).
pub(crate) struct Handles {
    pub evicted_capacity: LazyCounter,
    pub evicted_expired: LazyCounter,
    pub decode_errors: LazyCounter,
    pub reads_cached: LazyCounter,
    pub reads_pool: LazyCounter,
    pub reads_rejected: LazyCounter,
    pub reinserted: LazyCounter,
    pub reinserted_bytes: LazyCounter,
}

impl Handles {
    /// Handles that record nothing: before the tier is mounted it has no `cache` label, and a
    /// series labelled `cache=""` would stay at 0 forever beside the real one.
    fn detached() -> Self {
        Self {
            evicted_capacity: LazyCounter::noop(),
            evicted_expired: LazyCounter::noop(),
            decode_errors: LazyCounter::noop(),
            reads_cached: LazyCounter::noop(),
            reads_pool: LazyCounter::noop(),
            reads_rejected: LazyCounter::noop(),
            reinserted: LazyCounter::noop(),
            reinserted_bytes: LazyCounter::noop(),
        }
    }

    fn new(cache: &str, tier: &str) -> Self {
        let labels = |cause: Option<&str>| {
            let mut labels = vec![("cache", cache.to_string()), ("tier", tier.to_string())];
            labels.extend(cause.map(|c| ("cause", c.to_string())));
            labels
        };
        let path = |p: &str| {
            let mut labels = labels(None);
            labels.push(("path", p.to_string()));
            labels
        };
        Self {
            evicted_capacity: LazyCounter::new(TIER_EVICTIONS, &labels(Some("capacity"))),
            evicted_expired: LazyCounter::new(TIER_EVICTIONS, &labels(Some("expired"))),
            decode_errors: LazyCounter::new(TIER_DECODE_ERRORS, &labels(None)),
            reads_cached: LazyCounter::new(READS, &path("page_cache")),
            reads_pool: LazyCounter::new(READS, &path("pool")),
            reads_rejected: LazyCounter::new(READS, &path("rejected")),
            reinserted: LazyCounter::new(REINSERTED, &labels(None)),
            reinserted_bytes: LazyCounter::new(REINSERTED_BYTES, &labels(None)),
        }
    }
}

/// The tier's metrics: recorded once the tier is mounted in a hierarchy ([`Metrics::attach`]
/// gives them their `cache` and `tier` labels); until then nothing is recorded.
pub(crate) struct Metrics {
    handles: RwLock<Handles>,
    recovery_emitted: AtomicBool,
}

impl Metrics {
    pub fn new() -> Self {
        Self { handles: RwLock::new(Handles::detached()), recovery_emitted: AtomicBool::new(false) }
    }

    /// Run `f` with the current handles.
    pub fn with<R>(&self, f: impl FnOnce(&Handles) -> R) -> R {
        f(&self.handles.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Relabel, and the first time also emit the recovery figures (recovery ran before the tier
    /// knew its labels).
    pub fn attach(&self, ctx: &TierContext, report: &RecoveryReport) {
        *self.handles.write().unwrap_or_else(|e| e.into_inner()) =
            Handles::new(&ctx.cache, &ctx.tier);
        if self.recovery_emitted.swap(true, Ordering::AcqRel) {
            return;
        }
        describe();
        let labels = [("cache", ctx.cache.clone()), ("tier", ctx.tier.clone())];
        counter!(RECOVERY_RECORDS, &labels[..]).increment(report.records);
        counter!(RECOVERY_CORRUPT, &labels[..]).increment(report.corrupt);
        counter!(RECOVERY_BYTES, &labels[..]).increment(report.bytes_scanned);
        counter!(RECOVERY_SUSPECT, &labels[..]).increment(report.suspect);
        counter!(TIER_DECODE_ERRORS, &labels[..]).increment(report.corrupt);
        gauge!(RECOVERY_SECONDS, &labels[..]).set(report.duration.as_secs_f64());
    }
}

fn describe() {
    metrics::describe_counter!(
        RECOVERY_RECORDS,
        Unit::Count,
        "Valid records scanned when a disk tier was opened."
    );
    metrics::describe_counter!(
        RECOVERY_CORRUPT,
        Unit::Count,
        "Damage found when a disk tier was opened (torn or corrupt records, missing segments, stray files)."
    );
    metrics::describe_counter!(
        RECOVERY_SUSPECT,
        Unit::Count,
        "Entries found when a disk tier was opened that damage could have superseded (served only as stale)."
    );
    metrics::describe_counter!(
        RECOVERY_BYTES,
        Unit::Bytes,
        "Bytes scanned when a disk tier was opened."
    );
    metrics::describe_counter!(
        READS,
        Unit::Count,
        "Records a disk tier read for lookups, by path: page_cache (inline), pool (read threads), rejected (pool full)."
    );
    metrics::describe_counter!(
        REINSERTED,
        Unit::Count,
        "Records a disk tier's reclaim copied forward (re-inserted) into the active segment."
    );
    metrics::describe_counter!(
        REINSERTED_BYTES,
        Unit::Bytes,
        "Bytes of the records a disk tier's reclaim copied forward (device writes besides inserts)."
    );
    metrics::describe_gauge!(
        RECOVERY_SECONDS,
        Unit::Seconds,
        "How long the last open (recovery scan) of a disk tier took."
    );
}

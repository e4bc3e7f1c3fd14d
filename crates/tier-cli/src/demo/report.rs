//! The demo's report: built from the hierarchy's own metrics (the text a Prometheus would
//! scrape, minus the warm-up) and the workers' counters; printed as a table or one JSON document.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::workload::{Counters, Origin};
use crate::duration::{short, short_secs};
use crate::promtext::{breaker_name, CacheFigures, TierFigures};

/// What each column of the tier table counts (the text report and `tier demo --help` say it).
pub const COLUMNS: &str = "\
columns: hits = fresh hits, answered by this tier · stale→next = only a stale copy here (kept as
the fallback), the next tier was asked · misses · tier-err = errors of the tier itself (the next
tier was asked; failed reads are counted under requests) · timeouts · skipped = breaker open or
tier disabled · hit% = hits / lookups that reached the tier (a stale copy is not a hit) ·
p50/p99 = the tier's get latency · breaker = its state at the end (- without one)";

/// The whole report (`tier demo --json` prints it as is).
#[derive(Debug, Serialize)]
pub struct Report {
    /// Cache name.
    pub cache: String,
    /// The settings of the run.
    pub config: RunConfig,
    /// The warm-up, when there was one.
    pub warm_up: Option<WarmUp>,
    /// Measured seconds (warm-up excluded).
    pub elapsed_seconds: f64,
    /// The run was ended early by SIGINT/SIGTERM (the figures are those of the part that ran).
    pub interrupted: bool,
    /// What the workers did.
    pub requests: Requests,
    /// One row per tier, top (L1) first.
    pub tiers: Vec<TierRow>,
    /// The origin's load and what the hierarchy saved it.
    pub origin: OriginReport,
    /// The write-behind queue (`--write-behind`), else `None`.
    pub write_behind: Option<WriteBehindReport>,
    /// The hottest keys seen (sampled), hottest first.
    pub hot_keys: Vec<HotKey>,
}

/// What the write-behind queue did (`--write-behind`).
#[derive(Debug, Serialize)]
pub struct WriteBehindReport {
    /// Writes the origin took (warm-up included: none are written behind then).
    pub written: u64,
    /// Batches the origin writer was handed.
    pub batches: u64,
    /// Batches that failed (each retried with backoff, dead letters after 5 attempts).
    pub failed_batches: u64,
    /// Writes still owed to the origin when the workers stopped.
    pub pending_at_stop: u64,
    /// Age of the oldest of them.
    pub oldest_at_stop_seconds: Option<f64>,
    /// How long the queue took to drain after the workers stopped; `None`: not within the bound.
    pub drain_seconds: Option<f64>,
    /// Writes still owed after the drain (0 unless it timed out).
    pub pending_after_drain: u64,
    /// Dead letters kept (writes whose batch failed too often).
    pub dead_letters: u64,
}

/// The queue as the workers stopped, then drained (waiting at most `bound`).
pub async fn drain(
    cache: &tier_core::Cache<super::workload::Item>,
    origin: &Origin,
    bound: Duration,
) -> WriteBehindReport {
    let at_stop = cache.write_behind_status().ok();
    let started = std::time::Instant::now();
    let drained = tokio::time::timeout(bound, cache.flush_write_behind()).await;
    let drain_seconds = matches!(drained, Ok(Ok(()))).then(|| started.elapsed().as_secs_f64());
    let after = cache.write_behind_status().ok();
    WriteBehindReport {
        written: origin.written.load(Ordering::Relaxed),
        batches: origin.write_batches.load(Ordering::Relaxed),
        failed_batches: origin.write_failures.load(Ordering::Relaxed),
        pending_at_stop: at_stop.as_ref().map_or(0, |s| s.pending as u64),
        oldest_at_stop_seconds: at_stop.and_then(|s| s.oldest_age).map(|d| d.as_secs_f64()),
        drain_seconds,
        pending_after_drain: after.as_ref().map_or(0, |s| s.pending as u64),
        dead_letters: after.map_or(0, |s| s.dead_letters as u64),
    }
}

impl WriteBehindReport {
    fn to_text(&self) -> String {
        let drained = match self.drain_seconds {
            Some(s) => format!("drained in {}", short_secs(Some(s))),
            None => format!("not drained: {} still owed", count(self.pending_after_drain)),
        };
        format!(
            "write-behind {} writes reached the origin in {} batches ({} failed, retried) · {} owed when the workers stopped (oldest {}), {drained} · {} dead letters\n",
            count(self.written),
            count(self.batches),
            count(self.failed_batches),
            count(self.pending_at_stop),
            short_secs(self.oldest_at_stop_seconds),
            count(self.dead_letters),
        )
    }
}

/// Settings of the run.
#[derive(Debug, Serialize)]
pub struct RunConfig {
    /// Measured duration asked for.
    pub duration_seconds: f64,
    /// Workers.
    pub workers: u32,
    /// Distinct keys.
    pub keys: u64,
    /// Zipf exponent.
    pub zipf: f64,
    /// Target ops/s (0: unpaced).
    pub rate: u64,
    /// Share of writes.
    pub write_ratio: f64,
    /// Share of invalidations.
    pub invalidate_ratio: f64,
    /// Mean origin latency.
    pub origin_latency_seconds: f64,
    /// Origin failure rate after the warm-up.
    pub origin_errors: f64,
    /// Tier names, top first.
    pub tiers: Vec<String>,
    /// The disk tier's directory (`null` when a temporary one was used).
    pub disk_dir: Option<String>,
    /// Redis URLs (`null` without Redis).
    pub redis: Option<Vec<String>>,
    /// Where metrics were served.
    pub metrics_addr: Option<String>,
    /// Fail-safe maximum stale age (0: off).
    pub fail_safe_seconds: f64,
    /// XFetch eagerness of early refresh (0: off).
    pub early_refresh_beta: f64,
    /// Fresh lifetime of the memory tier (disk ×2, Redis ×4).
    pub fresh_seconds: f64,
    /// How long entries stay servable as stale after their fresh lifetime.
    pub stale_seconds: f64,
    /// After a failed load, serve stale without calling the origin for this long.
    pub fail_safe_throttle_seconds: f64,
    /// Soft timeout of a load (`null`: off).
    pub soft_timeout_seconds: Option<f64>,
    /// Hard timeout of a load (`null`: never).
    pub hard_timeout_seconds: Option<f64>,
    /// Payload bytes of each value.
    pub value_size: u64,
    /// Memory tier capacity in bytes.
    pub memory_bytes: u64,
    /// Disk tier capacity in bytes.
    pub disk_bytes: u64,
    /// Key prefix of the Redis tier (`null` without Redis).
    pub redis_prefix: Option<String>,
    /// Whether every key was loaded once before the measured run.
    pub warm_up: bool,
    /// Hot keys asked for.
    pub top: u64,
    /// Each tier as configured, top first.
    pub tier_policies: Vec<TierSetting>,
    /// Writes go through `write_behind` (`--write-behind`).
    pub write_behind: bool,
}

/// One tier's policy in the demo.
#[derive(Debug, Clone, Serialize)]
pub struct TierSetting {
    /// Tier name.
    pub name: String,
    /// Fresh lifetime.
    pub fresh_seconds: f64,
    /// Stale lifetime after it.
    pub stale_seconds: f64,
    /// Per-call timeout (`null`: none).
    pub timeout_seconds: Option<f64>,
    /// Whether a circuit breaker guards it.
    pub breaker: bool,
}

/// The warm-up.
#[derive(Debug, Serialize)]
pub struct WarmUp {
    /// Keys loaded.
    pub loaded: u64,
    /// Keys that failed.
    pub failed: u64,
    /// How long it took.
    pub seconds: f64,
}

/// What the workers did.
#[derive(Debug, Serialize)]
pub struct Requests {
    /// Reads (`get_or_load`).
    pub reads: u64,
    /// Reads answered with a value (fresh or stale).
    pub answered: u64,
    /// Reads that failed (origin failed, nothing stale to serve): what a caller saw fail.
    pub failed_reads: u64,
    /// Of those, reads of keys invalidated (and not written again) during the run: no tier
    /// could hold even a stale value of them.
    pub errors_invalidated_keys: u64,
    /// Writes (`insert`).
    pub writes: u64,
    /// Writes a tier failed.
    pub write_errors: u64,
    /// Invalidations.
    pub invalidations: u64,
    /// All operations per second (achieved).
    pub ops_per_second: f64,
    /// Operations per second asked for (`--rate`; `null`: as fast as possible).
    pub target_ops_per_second: Option<f64>,
    /// `ops_per_second / target_ops_per_second` (`null` when unpaced).
    pub achieved_ratio: Option<f64>,
    /// Reads per second.
    pub reads_per_second: f64,
    /// Mean read latency as the caller saw it.
    pub read_mean_seconds: Option<f64>,
    /// Median read latency as the caller saw it.
    pub read_p50_seconds: Option<f64>,
    /// 99th percentile read latency.
    pub read_p99_seconds: Option<f64>,
    /// 99.9th percentile read latency.
    pub read_p999_seconds: Option<f64>,
    /// `answered / reads`.
    pub answered_ratio: Option<f64>,
}

/// One tier's figures (from `tier_requests_total{op="get"}` and `tier_op_duration_seconds`).
#[derive(Debug, Serialize)]
pub struct TierRow {
    /// Tier name.
    pub name: String,
    /// Fresh hits: answered by this tier.
    pub hits: u64,
    /// Lookups where this tier had only a stale copy: kept as the fallback, and the next tier
    /// was asked (the text report's `stale→next`).
    pub stale_next: u64,
    /// Misses.
    pub misses: u64,
    /// Errors of the tier itself (the next tier was asked); not failed reads, which are in
    /// `requests.failed_reads`.
    pub tier_errors: u64,
    /// Timeouts.
    pub timeouts: u64,
    /// Skipped (breaker open, disabled).
    pub skipped: u64,
    /// `hits / (lookups that reached the tier)`: a stale copy is not a hit.
    pub hit_ratio: Option<f64>,
    /// Lookups per second that reached the tier.
    pub lookups_per_second: f64,
    /// Median `get` latency (from histogram buckets; in-process tiers are sampled, one call in
    /// [`tier_core::metrics::OBJECT_TIER_TIMING_SAMPLE`]).
    pub p50_seconds: Option<f64>,
    /// 99th percentile `get` latency.
    pub p99_seconds: Option<f64>,
    /// Breaker state at the end (`closed`, `half_open`, `open`; `null` without a breaker).
    pub breaker: Option<String>,
    /// Entries at the end.
    pub entries: Option<u64>,
    /// Bytes at the end.
    pub bytes: Option<u64>,
    /// Entries copied into this tier from below.
    pub backfills_in: u64,
    /// Writes (loads, inserts, backfills) by result: `ok`, `error`, `timeout`, `skipped`.
    pub writes: std::collections::BTreeMap<String, u64>,
}

/// The origin's load and the savings.
#[derive(Debug, Serialize)]
pub struct OriginReport {
    /// Calls the origin received (warm-up excluded).
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Calls per second.
    pub calls_per_second: f64,
    /// Most calls in progress at once.
    pub max_concurrent_calls: u64,
    /// Loads by result (`cache_loads_total`).
    pub loads_ok: u64,
    /// Loader errors.
    pub loads_error: u64,
    /// Loader timeouts.
    pub loads_timeout: u64,
    /// Median load duration.
    pub load_p50_seconds: Option<f64>,
    /// 99th percentile load duration.
    pub load_p99_seconds: Option<f64>,
    /// Reads that did not call the origin (`reads - calls`, floored at 0).
    pub reads_without_origin: u64,
    /// `reads_without_origin / reads`.
    pub saved_ratio: Option<f64>,
    /// Callers that joined a load already in flight instead of calling the origin
    /// (single-flight, `cache_coalesced_total`).
    pub single_flight_saved: u64,
    /// Stale values served (fail-safe, soft timeout; `cache_stale_served_total`).
    pub stale_served: u64,
    /// Background refreshes.
    pub refreshes: u64,
}

/// A hot key.
#[derive(Debug, Serialize)]
pub struct HotKey {
    /// The key (lossy UTF-8).
    pub key: String,
    /// Sampled hits.
    pub count: u64,
}

fn n(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v.round() as u64
    } else {
        0
    }
}

fn per_sec(v: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        v / secs
    } else {
        0.0
    }
}

/// One row of the tier table.
pub fn tier_row(name: &str, t: &TierFigures, secs: f64) -> TierRow {
    TierRow {
        name: name.to_string(),
        hits: n(t.get("hit")),
        stale_next: n(t.get("stale")),
        misses: n(t.get("miss")),
        tier_errors: n(t.get("error")),
        timeouts: n(t.get("timeout")),
        skipped: n(t.get("skipped")),
        hit_ratio: t.hit_ratio(),
        lookups_per_second: per_sec(t.lookups(), secs),
        p50_seconds: t.get_duration.quantile(0.5),
        p99_seconds: t.get_duration.quantile(0.99),
        breaker: t.breaker.map(|b| breaker_name(Some(b)).to_string()),
        entries: t.entries.map(n),
        bytes: t.bytes.map(n),
        backfills_in: n(t.backfills_in),
        writes: t.insert.iter().map(|(k, v)| (k.clone(), n(*v))).collect(),
    }
}

/// Requests from the counters, the read latencies (µs) and the target rate (0: unpaced).
pub fn requests(c: &Counters, latency: &Histogram<u64>, target: u64, secs: f64) -> Requests {
    let reads = c.reads.load(Ordering::Relaxed);
    let answered = c.answered.load(Ordering::Relaxed);
    let writes = c.writes.load(Ordering::Relaxed);
    let invalidations = c.invalidates.load(Ordering::Relaxed);
    let micros = c.read_micros.load(Ordering::Relaxed);
    let quantile =
        |q: f64| (!latency.is_empty()).then(|| latency.value_at_quantile(q) as f64 / 1e6);
    let ops_per_second = per_sec((reads + writes + invalidations) as f64, secs);
    let target = (target > 0).then_some(target as f64);
    Requests {
        reads,
        answered,
        failed_reads: c.read_errors.load(Ordering::Relaxed),
        errors_invalidated_keys: c.read_errors_invalidated.load(Ordering::Relaxed),
        writes,
        write_errors: c.write_errors.load(Ordering::Relaxed),
        invalidations,
        ops_per_second,
        target_ops_per_second: target,
        achieved_ratio: target.map(|t| ops_per_second / t),
        reads_per_second: per_sec(reads as f64, secs),
        read_mean_seconds: (reads > 0).then(|| micros as f64 / 1e6 / reads as f64),
        read_p50_seconds: quantile(0.5),
        read_p99_seconds: quantile(0.99),
        read_p999_seconds: quantile(0.999),
        answered_ratio: (reads > 0).then(|| answered as f64 / reads as f64),
    }
}

/// The origin part, from the cache's figures (warm-up excluded) and the origin's own counters
/// (`calls_before`/`errors_before`: the counters at the end of the warm-up).
pub fn origin(
    c: &CacheFigures,
    origin: &Origin,
    calls_before: u64,
    errors_before: u64,
    reads: u64,
    secs: f64,
) -> OriginReport {
    let calls = origin.calls.load(Ordering::Relaxed).saturating_sub(calls_before);
    let without = reads.saturating_sub(calls);
    OriginReport {
        calls,
        errors: origin.errors.load(Ordering::Relaxed).saturating_sub(errors_before),
        calls_per_second: per_sec(calls as f64, secs),
        max_concurrent_calls: origin.max_in_flight.load(Ordering::Relaxed),
        loads_ok: n(c.loads("ok")),
        loads_error: n(c.loads("error")),
        loads_timeout: n(c.loads("timeout")),
        load_p50_seconds: c.load_duration.quantile(0.5),
        load_p99_seconds: c.load_duration.quantile(0.99),
        reads_without_origin: without,
        saved_ratio: (reads > 0).then(|| without as f64 / reads as f64),
        single_flight_saved: n(c.coalesced),
        stale_served: n(c.stale_served),
        refreshes: n(c.refreshes),
    }
}

fn pct(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0))
}

/// Thousands separators.
pub fn count(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A compact rate: `950/s`, `12.3k/s`.
pub fn rate(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}k/s", v / 1000.0)
    } else {
        format!("{v:.0}/s")
    }
}

/// The per-tier table.
pub fn tier_table(rows: &[TierRow]) -> String {
    let mut out = String::new();
    let header =
        ["tier", "hits", "stale→next", "misses", "tier-err", "timeouts", "skipped", "hit%"];
    let _ = writeln!(
        out,
        "{:<10} {:>11} {:>10} {:>10} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9}  breaker",
        header[0],
        header[1],
        header[2],
        header[3],
        header[4],
        header[5],
        header[6],
        header[7],
        "p50",
        "p99",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<10} {:>11} {:>10} {:>10} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9}  {}",
            r.name,
            count(r.hits),
            count(r.stale_next),
            count(r.misses),
            count(r.tier_errors),
            count(r.timeouts),
            count(r.skipped),
            pct(r.hit_ratio),
            short_secs(r.p50_seconds),
            short_secs(r.p99_seconds),
            r.breaker.as_deref().unwrap_or("-")
        );
    }
    out
}

impl Report {
    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "tier demo · cache {:?} · tiers {} · {} workers · {} keys (zipf {}) · origin {} ± 50 %, {} errors after warm-up",
            self.cache,
            c.tiers.join(" → "),
            c.workers,
            count(c.keys),
            c.zipf,
            short(Duration::from_secs_f64(c.origin_latency_seconds)),
            pct(Some(c.origin_errors)),
        );
        if let Some(w) = &self.warm_up {
            let _ = writeln!(
                out,
                "warm-up   {} keys loaded ({} failed) in {}",
                count(w.loaded),
                count(w.failed),
                short(Duration::from_secs_f64(w.seconds))
            );
        }
        let _ = writeln!(out);
        out.push_str(&tier_table(&self.tiers));
        let _ = writeln!(out, "{COLUMNS}");
        let _ = writeln!(out);
        let r = &self.requests;
        let _ = writeln!(
            out,
            "requests  {} reads in {} ({}), {} answered, {} failed reads · {} writes · {} invalidations",
            count(r.reads),
            short(Duration::from_secs_f64(self.elapsed_seconds)),
            rate(r.reads_per_second),
            pct(r.answered_ratio),
            count(r.failed_reads),
            count(r.writes),
            count(r.invalidations),
        );
        let target = match r.target_ops_per_second {
            Some(t) => format!("of {} asked for ({})", rate(t), pct(r.achieved_ratio)),
            None => "(unpaced)".into(),
        };
        let _ = writeln!(
            out,
            "          {} ops {target} · read latency p50 {} p99 {} p99.9 {} (mean {})",
            rate(r.ops_per_second),
            short_secs(r.read_p50_seconds),
            short_secs(r.read_p99_seconds),
            short_secs(r.read_p999_seconds),
            short_secs(r.read_mean_seconds),
        );
        if r.failed_reads > 0 {
            let _ = writeln!(
                out,
                "          failed reads: the origin failed and no tier held even a stale value; {} of {} \
                 were keys invalidated during the run",
                count(r.errors_invalidated_keys),
                count(r.failed_reads)
            );
        }
        let o = &self.origin;
        let _ = writeln!(
            out,
            "origin    {} calls ({}), {} failed, at most {} at once · load p50 {} p99 {}",
            count(o.calls),
            rate(o.calls_per_second),
            count(o.errors),
            o.max_concurrent_calls,
            short_secs(o.load_p50_seconds),
            short_secs(o.load_p99_seconds),
        );
        let _ = writeln!(
            out,
            "saved     {} reads never reached the origin ({}) · single-flight saved {} calls · {} stale values served (fail-safe) · {} refreshes",
            count(o.reads_without_origin),
            pct(o.saved_ratio),
            count(o.single_flight_saved),
            count(o.stale_served),
            count(o.refreshes),
        );
        if let Some(w) = &self.write_behind {
            out.push_str(&w.to_text());
        }
        if !self.hot_keys.is_empty() {
            let keys: Vec<String> =
                self.hot_keys.iter().map(|h| format!("{} ({})", h.key, count(h.count))).collect();
            let _ = writeln!(out, "hot keys  {}", keys.join(", "));
        }
        if let Some(addr) = &c.metrics_addr {
            let _ = writeln!(out, "metrics   were served at http://{addr}/metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(count(0), "0");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(123), "123");
        assert_eq!(rate(950.2), "950/s");
        assert_eq!(rate(12_345.0), "12.3k/s");
        assert_eq!(pct(Some(0.5)), "50.0%");
    }
}

//! Server figures for `Tier::stats()` (the `tier_entries`, `tier_bytes` and
//! `tier_capacity_bytes` gauges) and for `tier_evictions_total{cause="capacity"|"expired"}`.
//!
//! The hierarchy reads `Tier::stats()` synchronously, so a background task polls every master
//! (`DBSIZE`, `INFO memory`, `INFO stats`) every [`POLL_INTERVAL`] and caches the sums. They describe
//! the Redis server(s) — keys, `used_memory`, `maxmemory` (0: unlimited), `evicted_keys`,
//! `expired_keys` — not only this tier's prefix: counting the keys under a prefix would take a
//! full SCAN. Evictions count from the first poll on (what the server did before is not ours).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::Value;
use tier_core::{TierError, TierStats};

use crate::commands;
use crate::connection::{RedisConnection, Route};
use crate::error::reply_error;
use crate::metrics::Labels;

/// How often the server figures are read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// The last figures read.
#[derive(Default)]
pub(crate) struct ServerStats {
    entries: AtomicU64,
    bytes: AtomicU64,
    capacity: AtomicU64,
}

impl ServerStats {
    pub(crate) fn get(&self) -> TierStats {
        TierStats {
            entries: self.entries.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            capacity_bytes: self.capacity.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Sample {
    keys: u64,
    used_memory: u64,
    maxmemory: u64,
    evicted: u64,
    expired: u64,
    /// A `maxmemory-policy` of a server that may evict keys without a TTL (`allkeys-*`).
    unsafe_policy: Option<String>,
}

/// The `maxmemory_policy` of an `INFO memory` reply, when it may evict keys without a TTL.
fn unsafe_policy(info: &str) -> Option<String> {
    let policy = info.lines().find_map(|l| l.strip_prefix("maxmemory_policy:"))?.trim();
    policy.starts_with("allkeys-").then(|| policy.to_string())
}

/// One `field:value` of an INFO reply.
fn info_field(info: &str, field: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn text(v: Value) -> Result<String, TierError> {
    redis::from_redis_value(v).map_err(|e| reply_error("INFO", e))
}

async fn sample_node(conn: &RedisConnection, route: &Route) -> Result<Sample, TierError> {
    let op = "server stats";
    let keys: u64 = redis::from_redis_value(conn.query_on(op, route, commands::dbsize()).await?)
        .map_err(|e| reply_error("DBSIZE", e))?;
    let memory = text(conn.query_on(op, route, commands::info("memory")).await?)?;
    let stats = text(conn.query_on(op, route, commands::info("stats")).await?)?;
    Ok(Sample {
        keys,
        used_memory: info_field(&memory, "used_memory"),
        maxmemory: info_field(&memory, "maxmemory"),
        evicted: info_field(&stats, "evicted_keys"),
        expired: info_field(&stats, "expired_keys"),
        unsafe_policy: unsafe_policy(&memory),
    })
}

/// The figures of the server, or the sums over the masters of a Cluster.
async fn sample(conn: &RedisConnection) -> Result<Sample, TierError> {
    let mut sum = Sample::default();
    for route in &conn.routes().await? {
        let s = sample_node(conn, route).await?;
        sum.keys += s.keys;
        sum.used_memory += s.used_memory;
        sum.maxmemory += s.maxmemory;
        sum.evicted += s.evicted;
        sum.expired += s.expired;
        sum.unsafe_policy = sum.unsafe_policy.or(s.unsafe_policy);
    }
    Ok(sum)
}

/// Poll until the tier is gone (its `ServerStats` dropped).
pub(crate) async fn run(
    stats: Weak<ServerStats>,
    conn: RedisConnection,
    labels: Arc<RwLock<Labels>>,
) {
    let mut last: Option<Sample> = None;
    let mut warned: Option<String> = None;
    loop {
        let Some(out) = stats.upgrade() else { return };
        match sample(&conn).await {
            Ok(s) => {
                report_policy(&mut warned, s.unsafe_policy.as_deref());
                out.entries.store(s.keys, Ordering::Relaxed);
                out.bytes.store(s.used_memory, Ordering::Relaxed);
                out.capacity.store(s.maxmemory, Ordering::Relaxed);
                let l = labels.read().unwrap_or_else(|p| p.into_inner()).clone();
                if !l.cache.is_empty() {
                    let counter = |cause: &'static str| metrics::counter!(tier_core::metrics::TIER_EVICTIONS, "cache" => l.cache.clone(), "tier" => l.tier.clone(), "cause" => cause);
                    // A server restart resets its counters: start again from its figures.
                    let (evicted, expired) = match last {
                        Some(p) if s.evicted >= p.evicted && s.expired >= p.expired => {
                            (s.evicted - p.evicted, s.expired - p.expired)
                        }
                        _ => (0, 0),
                    };
                    counter("capacity").increment(evicted);
                    counter("expired").increment(expired);
                    last = Some(s.clone());
                }
            }
            Err(e) => tracing::debug!(error = %e, "Redis server figures not read"),
        }
        drop(out);
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Say once (a warning and the gauge) that a server's eviction policy may evict keys without
/// a TTL, and set the gauge back to 0 when it no longer does.
fn report_policy(warned: &mut Option<String>, now: Option<&str>) {
    if warned.as_deref() == now {
        return;
    }
    if let Some(old) = warned.take() {
        metrics::gauge!(crate::metrics::UNSAFE_EVICTION_POLICY, "policy" => old).set(0.0);
    }
    if let Some(policy) = now {
        tracing::warn!(
            policy,
            "Redis maxmemory-policy may evict keys without a TTL (tag generations, clear floors, the backplane's epoch): a lost generation makes entries stale, a lost epoch makes every instance see a gap; use noeviction or a volatile-* policy"
        );
        metrics::gauge!(crate::metrics::UNSAFE_EVICTION_POLICY, "policy" => policy.to_string())
            .set(1.0);
        *warned = Some(policy.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_info_fields() {
        let info = "# Memory\r\nused_memory:1024\r\nused_memory_human:1.00K\r\nmaxmemory:0\r\n";
        assert_eq!(info_field(info, "used_memory"), 1024);
        assert_eq!(info_field(info, "maxmemory"), 0);
        assert_eq!(info_field(info, "missing"), 0);
        assert_eq!(
            unsafe_policy("maxmemory_policy:allkeys-lru\r\n").as_deref(),
            Some("allkeys-lru")
        );
        assert_eq!(unsafe_policy("maxmemory_policy:volatile-lru\r\n"), None);
        assert_eq!(unsafe_policy(info), None);
    }
}

//! Names of the metrics this crate emits (an interface: dashboards and the CLI depend on them).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tier_redis_write_retries_total` | counter | cache, tier, outcome = queued / replaced / written / failed / dropped_full / expired / too_old / obsolete |
//! | `tier_redis_retry_queue` | gauge | cache, tier |
//! | `tier_redis_node_breaker_state` | gauge 0 closed / 1 half-open / 2 open | cache, tier, node (a Cluster master's `host:port`) |
//! | `tier_redis_node_skipped_total` | counter | cache, tier, node, reason = open / failed |
//! | `tier_redis_topology_refreshes_total` | counter | cache, tier, result = ok / error / unsupported |
//! | `tier_redis_unsafe_eviction_policy` | gauge 1 while a server's `maxmemory-policy` may evict keys without a TTL | policy |
//! | `tier_backplane_messages_total` | counter | channel (the stream key), direction = sent / received |
//! | `tier_backplane_errors_total` | counter | channel, kind = publish / read / decode / gap |
//! | `tier_backplane_reconnects_total` | counter | channel |
//! | `tier_backplane_connected` | gauge 0 / 1 | channel |
//! | `tier_redis_tracking_connected` | gauge 0 / 1 (client-side caching: the tracking connection is up and proven) | cache |
//! | `tier_redis_tracking_reconnects_total` | counter | cache |
//! | `tier_redis_tracking_invalidations_total` | counter | cache, source = other / own / flush |
//! | `tier_redis_tracking_errors_total` | counter | cache, kind = connect / lost / refused / read_back |
//!
//! `tier_evictions_total{cache, tier, cause = capacity / expired}` and the `tier_entries`,
//! `tier_bytes`, `tier_capacity_bytes` gauges come from the Redis server's own figures
//! (`evicted_keys`, `expired_keys`, `DBSIZE`, `used_memory`, `maxmemory`), polled in the
//! background (see the crate docs).
//!
//! Requests, latencies, breaker state and decode errors of the tier itself are counted by the
//! hierarchy (`tier_requests_total`, `tier_decode_errors_total`, ... with `tier="redis"`).

use std::sync::RwLock;

/// Counter: background retries of failed writes, by `outcome`.
pub const WRITE_RETRIES: &str = "tier_redis_write_retries_total";
/// Gauge: keys waiting in the retry queue.
pub const RETRY_QUEUE: &str = "tier_redis_retry_queue";
/// Gauge: the state of a Redis Cluster master's circuit breaker inside the tier (0 closed,
/// 1 half-open, 2 open), by `node` (`host:port`). A master that left the topology reports 0.
pub const NODE_BREAKER_STATE: &str = "tier_redis_node_breaker_state";
/// Counter: keys not answered by their Cluster master, by `node` and `reason`: `open` (its
/// breaker was open: a single-key call answered `CircuitOpen`, a batch's keys were misses or
/// were not written) or `failed` (a batch's keys whose master's call failed: misses, or writes
/// queued for retry).
pub const NODE_SKIPPED: &str = "tier_redis_node_skipped_total";
/// Counter: reads of the Cluster's slot → master map, by `result` (`ok`, `error`,
/// `unsupported`: the server does not tell its topology, and the tier has no per-master
/// breakers).
pub const TOPOLOGY_REFRESHES: &str = "tier_redis_topology_refreshes_total";
/// Gauge: 1 while a Redis server of the tier runs a `maxmemory-policy` that may evict keys
/// without a TTL (`allkeys-*`: generation, floor and epoch keys), by `policy`; 0 once it no
/// longer does. Safe: `noeviction`, `volatile-*`.
pub const UNSAFE_EVICTION_POLICY: &str = "tier_redis_unsafe_eviction_policy";
/// Counter: backplane messages, by `direction` (`sent`, `received`; own messages are not counted
/// as received).
pub const BACKPLANE_MESSAGES: &str = "tier_backplane_messages_total";
/// Counter: backplane problems, by `kind` (`publish` failed, the reader's `read` failed, a
/// message failed to `decode`, a `gap`: messages were lost and cannot be replayed).
pub const BACKPLANE_ERRORS: &str = "tier_backplane_errors_total";
/// Counter: times the backplane's reader lost its connection and resumed.
pub const BACKPLANE_RECONNECTS: &str = "tier_backplane_reconnects_total";
/// Gauge: 1 while the backplane's reader is reading, 0 while it is reconnecting.
pub const BACKPLANE_CONNECTED: &str = "tier_backplane_connected";

/// Gauge: 1 while client-side caching's tracking connection of a cache is up (tracking on,
/// proving delivery), 0 while it is being re-established or after the server refused it.
pub const TRACKING_CONNECTED: &str = "tier_redis_tracking_connected";
/// Counter: times a tracking connection was lost and made again.
pub const TRACKING_RECONNECTS: &str = "tier_redis_tracking_reconnects_total";
/// Counter: keys whose change Redis told the tracking connection of, by `source`: `other` (a
/// write this instance did not make: its local copies dropped), `own` (this instance's own
/// write, still what Redis holds: only older local copies dropped), `flush` (`FLUSHDB` /
/// `FLUSHALL`: a gap).
pub const TRACKING_INVALIDATIONS: &str = "tier_redis_tracking_invalidations_total";
/// Counter: tracking problems, by `kind`: `connect` (an attempt to make the connection
/// failed), `lost` (the connection was lost), `refused` (the server refused `HELLO 3` or
/// `CLIENT TRACKING`: the backplane alone from then on), `read_back` (an own write could not be
/// read back: the local copy was dropped).
pub const TRACKING_ERRORS: &str = "tier_redis_tracking_errors_total";

/// Register help text and units of this crate's metrics with the installed recorder.
///
/// Called by [`RedisTierBuilder::build`](crate::RedisTierBuilder::build),
/// [`RedisBackplaneBuilder::build`](crate::RedisBackplaneBuilder::build) and when a tier is
/// mounted in a hierarchy; call it yourself if the exporter is installed after those.
pub fn describe() {
    use metrics::Unit;
    metrics::describe_counter!(
        WRITE_RETRIES,
        Unit::Count,
        "Background retries of failed Redis writes, by outcome (queued, replaced, written, failed, dropped_full, expired, too_old, obsolete)."
    );
    metrics::describe_gauge!(
        UNSAFE_EVICTION_POLICY,
        "1 while a Redis server runs a maxmemory-policy that may evict keys without a TTL (allkeys-*)."
    );
    metrics::describe_gauge!(
        RETRY_QUEUE,
        Unit::Count,
        "Keys whose failed Redis write waits for a retry."
    );
    metrics::describe_gauge!(
        NODE_BREAKER_STATE,
        "Circuit breaker state of each Redis Cluster master inside the tier (0 closed, 1 half-open, 2 open)."
    );
    metrics::describe_counter!(
        NODE_SKIPPED,
        Unit::Count,
        "Keys not answered by their Redis Cluster master, by reason (open breaker, failed call in a batch)."
    );
    metrics::describe_counter!(
        TOPOLOGY_REFRESHES,
        Unit::Count,
        "Reads of the Redis Cluster slot map, by result (ok, error, unsupported)."
    );
    metrics::describe_counter!(
        BACKPLANE_MESSAGES,
        Unit::Count,
        "Backplane invalidation messages, by direction (sent, received from other instances)."
    );
    metrics::describe_counter!(
        BACKPLANE_ERRORS,
        Unit::Count,
        "Backplane problems, by kind (publish failed, undecodable message, sequence gap)."
    );
    metrics::describe_counter!(
        BACKPLANE_RECONNECTS,
        Unit::Count,
        "Times the backplane subscription was lost and re-established."
    );
    metrics::describe_gauge!(
        TRACKING_CONNECTED,
        "1 while the client-side caching (CLIENT TRACKING) connection of a cache is up."
    );
    metrics::describe_counter!(
        TRACKING_RECONNECTS,
        Unit::Count,
        "Times a client-side caching connection was lost and made again."
    );
    metrics::describe_counter!(
        TRACKING_INVALIDATIONS,
        Unit::Count,
        "Keys Redis reported changed to client-side caching, by source (other, own, flush)."
    );
    metrics::describe_counter!(
        TRACKING_ERRORS,
        Unit::Count,
        "Client-side caching problems, by kind (connect, lost, refused, read_back)."
    );
    metrics::describe_gauge!(
        BACKPLANE_CONNECTED,
        "1 while the backplane subscription is up, 0 while it is being re-established."
    );
}

/// The `cache` and `tier` labels of a mounted tier.
#[derive(Debug, Clone)]
pub(crate) struct Labels {
    pub(crate) cache: String,
    pub(crate) tier: String,
}

impl Default for Labels {
    fn default() -> Self {
        Self { cache: String::new(), tier: "redis".into() }
    }
}

pub(crate) fn read(labels: &RwLock<Labels>) -> Labels {
    // Labels are replaced whole; a poisoned lock still holds a consistent value.
    labels.read().unwrap_or_else(|p| p.into_inner()).clone()
}

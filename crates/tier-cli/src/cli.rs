//! Command-line definitions (clap derive).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Exit codes, shown at the end of `--help`.
const EXIT_CODES: &str = "Exit codes: 0 success, 1 runtime error (unreachable Redis, missing or \
locked directory, I/O), 2 usage error (bad flag, duration, URL or ratio), 3 damage found by \
`tier disk verify`.";

/// tier — multi-tier caching: a demo workload, and inspection of disk, Redis and metrics.
#[derive(Debug, Parser)]
#[command(name = "tier", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a workload against a memory + disk (+ Redis) hierarchy in front of a simulated origin.
    ///
    /// The report has one row per tier, then the requests (reads, failed reads, the rate
    /// achieved against --rate, read latency p50/p99/p99.9), the origin's load and what the
    /// hierarchy saved it. `--json` prints it as one document, described by the JSON Schema
    /// `crates/tier-cli/schema/demo.schema.json` of the repository.
    #[command(after_help = crate::demo::report::COLUMNS)]
    Demo(DemoArgs),
    /// Inspect a disk tier directory (read-only; works while a service holds it).
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Inspect the entries a Redis tier holds (standalone or Cluster; SCAN, never KEYS).
    #[command(subcommand)]
    Redis(RedisCommand),
    /// Scrape a service's /metrics and show per-tier hit ratios, latencies, breakers, loads.
    Stats(StatsArgs),
    /// Invalidate entries fleet-wide: remove them from Redis and publish on the backplane.
    Invalidate(InvalidateArgs),
}

fn duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s)
}

fn ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside 0.0..=1.0"))
    }
}

fn positive_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} must be a finite number >= 0"))
    }
}

/// Redis node URLs: one server, or nodes of one Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrls(pub Vec<String>);

/// A Redis URL, or several comma-separated node URLs of one Cluster. They are checked when
/// connecting (a bad one is a usage error then): an error here would be printed by clap with
/// the value, password and all.
pub fn redis_urls(s: &str) -> Result<RedisUrls, String> {
    let urls: Vec<String> =
        s.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect();
    if urls.is_empty() {
        return Err("empty Redis URL".into());
    }
    Ok(RedisUrls(urls))
}

/// `--disk-bytes`: at least two segments of the smallest size.
fn disk_bytes(s: &str) -> Result<u64, String> {
    const MIN: u64 = 2 * tier_disk::MIN_SEGMENT_SIZE;
    let v: u64 = s.parse().map_err(|_| format!("{s:?} is not a whole number of bytes"))?;
    if v < MIN {
        return Err(format!(
            "{v} is too small: a disk tier needs at least {MIN} bytes (two segments of {})",
            tier_disk::MIN_SEGMENT_SIZE
        ));
    }
    Ok(v)
}

/// `tier demo`.
#[derive(Debug, Args, Clone)]
pub struct DemoArgs {
    /// How long the workload runs (e.g. 10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub duration: Duration,
    /// Concurrent workers.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub workers: u32,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub keys: u64,
    /// Zipf exponent of key popularity (0 = uniform; 1.0 is typical of web traffic).
    #[arg(long, default_value = "1.0", value_parser = positive_f64)]
    pub zipf: f64,
    /// Target operations per second over all workers (0 = as fast as possible).
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Share of operations that write a new value (write-through to every tier).
    #[arg(long, default_value = "0.02", value_parser = ratio)]
    pub write_ratio: f64,
    /// Share of operations that invalidate a key (every tier, every instance).
    #[arg(long, default_value = "0.002", value_parser = ratio)]
    pub invalidate_ratio: f64,
    /// Origin latency per call (each call takes 50–150 % of it).
    #[arg(long, default_value = "20ms", value_parser = duration)]
    pub origin_latency: Duration,
    /// Share of origin calls that fail (0.0–1.0), from the end of the warm-up on.
    #[arg(long, default_value = "0.0", value_parser = ratio)]
    pub origin_errors: f64,
    /// Load every key once before the measured run, with a healthy origin (so stale values
    /// exist when the origin starts failing). `--warm-up false` starts cold.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub warm_up: bool,
    /// Size of each value's payload in bytes.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(0..=(16 << 20)))]
    pub value_size: u32,
    /// Memory tier (L1) capacity in bytes (small by default, so that L2 has work to do).
    #[arg(long, default_value_t = 2 << 20)]
    pub memory_bytes: u64,
    /// Disk tier directory (default: a temporary directory, removed at the end).
    #[arg(long)]
    pub disk: Option<PathBuf>,
    /// Disk tier capacity in bytes (at least 131072: two segments of 64 KiB).
    #[arg(long, default_value_t = 256 << 20, value_parser = disk_bytes)]
    pub disk_bytes: u64,
    /// Add a Redis tier (L3), the invalidation backplane and client-side caching (`CLIENT
    /// TRACKING` of the tier's prefix): `redis://127.0.0.1:6379/`, or comma-separated node URLs
    /// of a Cluster (a single Cluster node URL is detected too).
    #[arg(long, value_parser = redis_urls)]
    pub redis: Option<RedisUrls>,
    /// Key prefix of the Redis tier.
    #[arg(long, default_value = "tier:")]
    pub redis_prefix: String,
    /// Fresh lifetime in memory; disk gets twice, Redis four times as long.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub fresh: Duration,
    /// How long entries stay servable as stale after their fresh lifetime.
    #[arg(long, default_value = "10m", value_parser = duration)]
    pub stale: Duration,
    /// Fail-safe: serve a stale value up to this long past its freshness when the origin fails
    /// (0 = off).
    #[arg(long, default_value = "10m", value_parser = duration)]
    pub fail_safe: Duration,
    /// After the origin failed, serve the stale value without calling it for this long.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub fail_safe_throttle: Duration,
    /// Answer with the stale value when a load takes longer (it finishes in the background;
    /// 0 = off).
    #[arg(long, default_value = "100ms", value_parser = duration)]
    pub soft_timeout: Duration,
    /// Give a load up after this long (0 = never).
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub hard_timeout: Duration,
    /// Early refresh of hot entries before they expire (XFetch eagerness beta; 0 = off).
    #[arg(long, default_value = "1.0", value_parser = positive_f64)]
    pub early_refresh: f64,
    /// Serve Prometheus metrics at http://ADDR/metrics while the demo runs.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Cache name (`cache` metric label and key namespace).
    #[arg(long, default_value = "demo")]
    pub cache: String,
    /// Hot keys shown at the end.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Writes go through `write_behind` (the cache tiers at once, the origin in batches from a
    /// durable queue in the disk tier's directory) instead of `insert`: the progress display
    /// and the report show the queue, its retries and dead letters (with --origin-errors, what
    /// a failing origin does to it), and the end of the run shows the queue draining.
    #[arg(long)]
    pub write_behind: bool,
    /// Print the report as one JSON document (no progress display).
    #[arg(long)]
    pub json: bool,
}

/// `tier disk ...`.
#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// Segments, live/dead bytes, entries, entries by key prefix.
    Stats {
        /// The disk tier directory.
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List records (live ones unless --all).
    Ls {
        /// The disk tier directory.
        dir: PathBuf,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Also overwritten records, tombstones and clear markers.
        #[arg(long)]
        all: bool,
        /// At most this many records.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One key's envelope, decoded: fresh/stale times, tags, value.
    Get {
        /// The disk tier directory.
        dir: PathBuf,
        /// The full key (e.g. `users:0:42`).
        key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// How to open a sealed entry.
        #[command(flatten)]
        unseal: Unseal,
    },
    /// Check every record's CRC; exit code 3 when damage is found.
    Verify {
        /// The disk tier directory.
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The write-behind queue: writes still owed to the origin, dead letters, damage (exit
    /// code 3 when damaged).
    Queue {
        /// The disk tier directory.
        dir: PathBuf,
        /// Show at most this many pending writes and this many dead letters.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// How to open sealed queued writes (a cache with a keyring seals its queue).
        #[command(flatten)]
        unseal: Unseal,
    },
}

/// How `get` opens an entry sealed at rest (a cache built with a keyring): the keyring comes
/// from a file or the `TIER_KEYRING` environment variable (`ID:HEX` entries, the current key
/// first), never from a flag's value. Without one, a sealed entry's metadata is shown and its
/// value is not.
#[derive(Debug, Args, Clone, Default)]
pub struct Unseal {
    /// A file holding the keyring (`ID:HEX` entries, one per line, `#` comments). Default: the
    /// `TIER_KEYRING` environment variable, when set.
    #[arg(long)]
    pub keyring_file: Option<PathBuf>,
    /// The cache the entry belongs to (bound into a sealed entry). Default: the key's namespace,
    /// what comes before its first `:`.
    #[arg(long)]
    pub cache: Option<String>,
}

/// Where a Redis command connects.
#[derive(Debug, Args, Clone)]
pub struct RedisTarget {
    /// `redis://host:port/`, or comma-separated Cluster node URLs (a Cluster is detected).
    #[arg(value_parser = redis_urls)]
    pub url: RedisUrls,
    /// Key prefix of the Redis tier.
    #[arg(long, default_value = "tier:")]
    pub prefix: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `tier redis ...`.
#[derive(Debug, Subcommand)]
pub enum RedisCommand {
    /// The masters (slots, a PING each) and the entries under the prefix: count, bytes, TTLs,
    /// by cache namespace.
    Stats {
        /// Where.
        #[command(flatten)]
        target: RedisTarget,
        /// A service's metrics endpoint (as `tier stats --metrics` takes it): show the state of
        /// its circuit breaker of each Cluster master (`tier_redis_node_breaker_state`) and of
        /// its client-side caching of each tracked cache (`tier_redis_tracking_*`).
        #[arg(long)]
        metrics: Option<String>,
    },
    /// List entries under the prefix with their TTL and size.
    Ls {
        /// Where.
        #[command(flatten)]
        target: RedisTarget,
        /// Only keys (after the prefix) starting with this.
        #[arg(long, default_value = "")]
        key_prefix: String,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One entry's envelope, decoded.
    Get {
        /// Where.
        #[command(flatten)]
        target: RedisTarget,
        /// The cache key, without the tier prefix (e.g. `users:0:42`).
        key: String,
        /// How to open a sealed entry.
        #[command(flatten)]
        unseal: Unseal,
    },
}

/// `tier stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The metrics endpoint, e.g. `http://127.0.0.1:9000/metrics` (or `127.0.0.1:9000`).
    #[arg(long)]
    pub metrics: String,
    /// Refresh every interval until interrupted (rates are shown between refreshes).
    #[arg(long)]
    pub watch: bool,
    /// With --watch: stop after this many scrapes (default: until interrupted).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Refresh interval with --watch.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub interval: Duration,
    /// Only this cache.
    #[arg(long)]
    pub cache: Option<String>,
    /// Print JSON (one document per scrape).
    #[arg(long)]
    pub json: bool,
}

/// `tier invalidate`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["key", "raw_key", "tag", "namespace", "all"])))]
pub struct InvalidateArgs {
    /// `redis://host:port/`, or comma-separated Cluster node URLs.
    #[arg(long, value_parser = redis_urls)]
    pub redis: RedisUrls,
    /// The cache (hierarchy) name.
    #[arg(long)]
    pub cache: String,
    /// One key by id: the key is `CACHE:VERSION:ID` with the namespace's current version.
    #[arg(long)]
    pub key: Option<String>,
    /// One key, given in full (e.g. `users:0:42`).
    #[arg(long)]
    pub raw_key: Option<String>,
    /// Every entry carrying this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// The whole namespace (in tier, a cache's namespace is its name: NAME may be omitted, and
    /// must equal --cache when given). Its version moves on; old keys become unreachable.
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "")]
    pub namespace: Option<String>,
    /// Everything of the cache under the prefix, in every instance's tiers.
    #[arg(long)]
    pub all: bool,
    /// Key prefix of the Redis tier.
    #[arg(long, default_value = "tier:")]
    pub prefix: String,
    /// Key prefix of the tag generations and namespace versions (the service's
    /// `RedisGenerations::prefix`).
    #[arg(long, default_value = "tier-gen:")]
    pub generation_prefix: String,
    /// The backplane stream the service's instances read (its
    /// `RedisBackplane::builder(..).stream(..)`; `--stream` is the same flag).
    #[arg(long, alias = "stream", default_value = "tier-log:invalidations")]
    pub channel: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

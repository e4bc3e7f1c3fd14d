//! Redis: the connection shared by `demo` and `invalidate`, and `tier redis stats|ls|get`
//! (through [`RedisInspector`]: SCAN of every master, never KEYS; TTLs, sizes, decoded
//! envelopes). The key layout, the Cluster's topology and URL redaction are the library's.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tier_core::seal::Place;
use tier_redis::{RedisConnection, RedisInspector, SetupError, StoredKey};

use crate::cli::{RedisCommand, RedisTarget, Unseal};
use crate::demo::report::count;
use crate::envelope::{view, EnvelopeView, Opener};
use crate::error::{chain, CliError, Result};
use crate::keyring;
use crate::stats::TrackingReport;

/// How long connecting may take before the command gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may take (a `SCAN` step of a large database included).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A set-up error as the CLI reports it: a bad URL or setting is a usage error (exit 2),
/// anything else a runtime error. The library's message is one line with the URL redacted.
pub fn setup_error(what: &str, e: &SetupError) -> CliError {
    let message = format!("{what}: {}", chain(e));
    match e {
        SetupError::Url { .. } | SetupError::Config(_) => CliError::usage(message),
        _ => CliError::runtime(message),
    }
}

/// A [`RedisConnection`] to `urls`: several URLs are Cluster nodes; one URL is a standalone
/// server or, when it says so, a Cluster node.
pub async fn connection(urls: &[String]) -> Result<RedisConnection> {
    RedisConnection::detect(urls.iter().cloned())
        .connect_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .connect()
        .await
        .map_err(|e| setup_error("Redis", &e))
}

/// A failed Redis command of a `tier redis` subcommand.
fn failed(e: tier_core::TierError) -> CliError {
    CliError::runtime(format!("Redis: {}", chain(&e)))
}

/// One key found by SCAN, as printed.
#[derive(Debug, Serialize)]
struct EntryOut {
    /// The cache key (tier prefix removed).
    key: String,
    /// The master it lives on.
    node: String,
    /// Milliseconds to live; `null` without expiry.
    ttl_ms: Option<u64>,
    /// Bytes of the value.
    bytes: u64,
    /// `fresh`, `stale`, `expired` or `not_an_envelope`.
    state: &'static str,
    /// From the envelope header.
    fresh_until: Option<u64>,
    /// From the envelope header.
    stale_until: Option<u64>,
}

fn ms(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl EntryOut {
    fn of(k: StoredKey, now: u64) -> Self {
        let state = match k.times {
            None => "not_an_envelope",
            Some((fresh, _)) if now < fresh => "fresh",
            Some((_, stale)) if now < stale => "stale",
            Some(_) => "expired",
        };
        Self {
            key: String::from_utf8_lossy(&k.key).into_owned(),
            node: k.node,
            ttl_ms: ms(k.ttl),
            bytes: k.bytes,
            state,
            fresh_until: k.times.map(|t| t.0),
            stale_until: k.times.map(|t| t.1),
        }
    }
}

/// The keys under the prefix that start with `key_prefix`, at most `limit`; and whether more
/// were left.
async fn scan(
    inspector: &RedisInspector,
    key_prefix: &[u8],
    limit: usize,
) -> Result<(Vec<EntryOut>, bool)> {
    let (keys, more) = inspector.keys(key_prefix, limit).await.map_err(failed)?;
    let now = tier_core::spi::now_ms();
    Ok((keys.into_iter().map(|k| EntryOut::of(k, now)).collect(), more))
}

async fn inspector(t: &RedisTarget) -> Result<RedisInspector> {
    Ok(RedisInspector::new(connection(&t.url.0).await?, t.prefix.as_bytes()))
}

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| CliError::runtime(format!("encode JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

fn ttl_text(ttl: Option<u64>) -> String {
    match ttl {
        None => "none".into(),
        Some(ms) => crate::duration::short(Duration::from_millis(ms)),
    }
}

/// Run a `tier redis` subcommand.
pub async fn run(cmd: RedisCommand) -> Result<()> {
    match cmd {
        RedisCommand::Stats { target, metrics } => stats(target, metrics.as_deref()).await,
        RedisCommand::Ls { target, key_prefix, limit } => ls(target, &key_prefix, limit).await,
        RedisCommand::Get { target, key, unseal } => get(target, &key, &unseal).await,
    }
}

#[derive(Debug, Default, Serialize)]
struct GroupOut {
    entries: u64,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct StatsOut {
    cluster: bool,
    nodes: Vec<String>,
    /// Each master (or the server): slots, PING, and the breaker states a service reports.
    masters: Vec<MasterOut>,
    prefix: String,
    /// With `--metrics`: the service's client-side caching of each tracked cache.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tracking: Vec<TrackingOut>,
    /// The listing's figures; absent when a node did not answer the SCAN (`scan_error`).
    #[serde(flatten)]
    entries: Option<EntriesOut>,
    scan_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct EntriesOut {
    entries: u64,
    bytes: u64,
    states: BTreeMap<&'static str, u64>,
    without_ttl: u64,
    ttl_min_ms: Option<u64>,
    ttl_p50_ms: Option<u64>,
    ttl_max_ms: Option<u64>,
    by_prefix: BTreeMap<String, GroupOut>,
}

#[derive(Debug, Serialize)]
struct MasterOut {
    node: String,
    slots: u32,
    /// Round trip of a PING from here, in microseconds; `null` when it failed.
    ping_us: Option<u64>,
    ping_error: Option<String>,
    /// With `--metrics`: the service's breakers of this master (one per cache and tier).
    breakers: Vec<BreakerOut>,
}

#[derive(Debug, Serialize, PartialEq)]
struct BreakerOut {
    cache: String,
    tier: String,
    /// `closed`, `half_open` or `open`.
    state: &'static str,
}

#[derive(Debug, Serialize, PartialEq)]
struct TrackingOut {
    cache: String,
    #[serde(flatten)]
    report: TrackingReport,
}

/// What a service's metrics say of its Redis tiers: the per-master breaker states by node,
/// and the client-side caching of each tracked cache.
async fn service_of(
    metrics: &str,
) -> Result<(BTreeMap<String, Vec<BreakerOut>>, Vec<TrackingOut>)> {
    let samples = crate::stats::scrape_samples(metrics).await?;
    let tracking = crate::promtext::Figures::from_samples(&samples)
        .caches
        .into_iter()
        .filter_map(|(cache, c)| {
            Some(TrackingOut { cache, report: TrackingReport::of(c.tracking.as_ref()?) })
        })
        .collect();
    Ok((breakers_of(&samples), tracking))
}

/// The service's per-master breaker states, by node, from its metrics.
fn breakers_of(samples: &[crate::promtext::Sample]) -> BTreeMap<String, Vec<BreakerOut>> {
    let mut out: BTreeMap<String, Vec<BreakerOut>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == tier_redis::metrics::NODE_BREAKER_STATE) {
        let label = |l: &str| s.labels.get(l).cloned().unwrap_or_default();
        out.entry(label("node")).or_default().push(BreakerOut {
            cache: label("cache"),
            tier: label("tier"),
            state: crate::promtext::breaker_name(Some(s.value)),
        });
    }
    out
}

fn entries_out(entries: &[EntryOut]) -> EntriesOut {
    let mut states = BTreeMap::new();
    let mut by_prefix: BTreeMap<String, GroupOut> = BTreeMap::new();
    let mut ttls: Vec<u64> = entries.iter().filter_map(|e| e.ttl_ms).collect();
    ttls.sort_unstable();
    for e in entries {
        *states.entry(e.state).or_default() += 1;
        let g = by_prefix.entry(crate::disk::key_group(e.key.as_bytes())).or_default();
        g.entries += 1;
        g.bytes += e.bytes;
    }
    EntriesOut {
        entries: entries.len() as u64,
        bytes: entries.iter().map(|e| e.bytes).sum(),
        states,
        without_ttl: entries.iter().filter(|e| e.ttl_ms.is_none()).count() as u64,
        ttl_min_ms: ttls.first().copied(),
        ttl_p50_ms: ttls.get(ttls.len() / 2).copied(),
        ttl_max_ms: ttls.last().copied(),
        by_prefix,
    }
}

async fn stats(t: RedisTarget, metrics: Option<&str>) -> Result<()> {
    let inspector = inspector(&t).await?;
    let health = inspector.node_health().await.map_err(failed)?;
    let (mut breakers, tracking) = match metrics {
        Some(m) => service_of(m).await?,
        None => (BTreeMap::new(), Vec::new()),
    };
    let mut masters: Vec<MasterOut> = health
        .into_iter()
        .map(|h| MasterOut {
            breakers: breakers.remove(&h.node).unwrap_or_default(),
            node: h.node,
            slots: h.slots,
            ping_us: h.ping.as_ref().ok().map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            ping_error: h.ping.err().map(|e| chain(&e)),
        })
        .collect();
    // Masters the service knows that the topology does not name (any more).
    masters.extend(breakers.into_iter().map(|(node, breakers)| MasterOut {
        node,
        slots: 0,
        ping_us: None,
        ping_error: Some("not a master of this topology".into()),
        breakers,
    }));
    let (entries, scan_error) = match scan(&inspector, b"", usize::MAX).await {
        Ok((entries, _)) => (Some(entries_out(&entries)), None),
        Err(e) => (None, Some(e)),
    };
    let out = StatsOut {
        cluster: inspector.connection().is_cluster(),
        nodes: masters
            .iter()
            .filter(|m| m.slots > 0 || !inspector.connection().is_cluster())
            .map(|m| m.node.clone())
            .collect(),
        masters,
        prefix: t.prefix.clone(),
        tracking,
        entries,
        scan_error: scan_error.as_ref().map(|e| e.to_string()),
    };
    if t.json {
        print_json(&out)?;
    } else {
        print_stats(&out);
    }
    // The masters were shown; a listing that could not be made is still a failure.
    scan_error.map_or(Ok(()), Err)
}

fn print_stats(out: &StatsOut) {
    println!(
        "{} {}",
        if out.cluster { "cluster, masters" } else { "server" },
        out.nodes.join(", ")
    );
    for m in &out.masters {
        let ping = match (&m.ping_us, &m.ping_error) {
            (Some(us), _) => format!("ping {}", crate::duration::short(Duration::from_micros(*us))),
            (None, Some(e)) => format!("DOWN: {e}"),
            (None, None) => "-".into(),
        };
        let slots = if out.cluster { format!("{:>5} slots  ", m.slots) } else { String::new() };
        let breakers: Vec<String> =
            m.breakers.iter().map(|b| format!("{}/{} {}", b.cache, b.tier, b.state)).collect();
        let breakers = if breakers.is_empty() {
            String::new()
        } else {
            format!("  breaker {}", breakers.join(", "))
        };
        println!("  {:<24} {slots}{ping}{breakers}", m.node);
    }
    for t in &out.tracking {
        println!("tracking    {}: {}", t.cache, t.report.line());
    }
    println!("prefix      {:?}", out.prefix);
    let Some(e) = &out.entries else { return };
    println!("entries     {} ({} bytes of values)", count(e.entries), count(e.bytes));
    let states: Vec<String> = e.states.iter().map(|(s, n)| format!("{s} {}", count(*n))).collect();
    println!("state       {}", if states.is_empty() { "-".into() } else { states.join(", ") });
    println!(
        "ttl         min {}, median {}, max {}; {} without expiry",
        ttl_text(e.ttl_min_ms),
        ttl_text(e.ttl_p50_ms),
        ttl_text(e.ttl_max_ms),
        count(e.without_ttl)
    );
    if !e.by_prefix.is_empty() {
        println!("by prefix");
        for (p, g) in &e.by_prefix {
            println!("  {p:<30} {:>10} entries {:>14} bytes", count(g.entries), count(g.bytes));
        }
    }
}

async fn ls(t: RedisTarget, key_prefix: &str, limit: usize) -> Result<()> {
    let (entries, more) = scan(&inspector(&t).await?, key_prefix.as_bytes(), limit).await?;
    if t.json {
        return print_json(&serde_json::json!({ "entries": entries, "more": more }));
    }
    println!("{:<40} {:>10} {:>8}  {:<16} node", "key", "ttl", "bytes", "state");
    for e in &entries {
        println!(
            "{:<40} {:>10} {:>8}  {:<16} {}",
            e.key,
            ttl_text(e.ttl_ms),
            e.bytes,
            e.state,
            e.node
        );
    }
    if more {
        println!("… more under the prefix (raise --limit)");
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct GetOut {
    key: String,
    redis_key: String,
    ttl_ms: Option<u64>,
    bytes: usize,
    envelope: Option<EnvelopeView>,
    envelope_error: Option<String>,
}

async fn get(t: RedisTarget, key: &str, unseal: &Unseal) -> Result<()> {
    let keyring = keyring::load(unseal)?;
    let inspector = inspector(&t).await?;
    let Some(stored) = inspector.get(key.as_bytes()).await.map_err(failed)? else {
        return Err(CliError::runtime(format!(
            "no entry for key {key:?} (Redis key {:?})",
            String::from_utf8_lossy(&inspector.redis_key(key.as_bytes()))
        )));
    };
    let value = stored.value;
    let opener = Opener {
        keyring: keyring.as_ref(),
        place: Place { cache: keyring::cache_of(unseal, key), key: key.as_bytes() },
    };
    let (envelope, envelope_error) = match view(&value, opener) {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e)),
    };
    let out = GetOut {
        key: key.to_string(),
        redis_key: String::from_utf8_lossy(&stored.redis_key).into_owned(),
        ttl_ms: ms(stored.ttl),
        bytes: value.len(),
        envelope,
        envelope_error,
    };
    if t.json {
        return print_json(&out);
    }
    println!("key          {} (Redis key {})", out.key, out.redis_key);
    println!("ttl          {}", ttl_text(out.ttl_ms));
    match (&out.envelope, &out.envelope_error) {
        (Some(v), _) => print!("{}", v.to_text()),
        (None, Some(e)) => println!("envelope     not valid: {e} ({} bytes)", out.bytes),
        (None, None) => {}
    }
    Ok(())
}

//! Redis: URL checks and connections shared by `demo` and `invalidate`, and `tier redis
//! stats|ls|get` (SCAN of every master, never KEYS; TTLs, sizes, decoded envelopes).

use std::collections::BTreeMap;
use std::time::Duration;

use redis::IntoConnectionInfo;
use serde::Serialize;
use tier_redis::RedisConnection;

use crate::cli::{RedisCommand, RedisTarget};
use crate::demo::report::count;
use crate::envelope::{view, EnvelopeView};
use crate::error::{chain, CliError, Result};

/// How long connecting may take before the command gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Check that `url` is a Redis URL (without connecting).
pub fn check_url(url: &str) -> std::result::Result<(), String> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://"))
    {
        return Err(format!("invalid Redis URL {url:?}: expected redis://host:port/"));
    }
    url.into_connection_info().map(|_| ()).map_err(|e| format!("invalid Redis URL {url:?}: {e}"))
}

/// Is the server at `url` a Redis Cluster node?
async fn is_cluster(url: &str) -> Result<bool> {
    let client = redis::Client::open(url)
        .map_err(|e| CliError::usage(format!("invalid Redis URL {url:?}: {e}")))?;
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| CliError::runtime(format!("cannot connect to Redis at {url}: timed out")))?
        .map_err(|e| {
            CliError::runtime(format!("cannot connect to Redis at {url}: {}", chain(&e)))
        })?;
    let info: String = tokio::time::timeout(
        CONNECT_TIMEOUT,
        redis::cmd("INFO").arg("cluster").query_async(&mut conn),
    )
    .await
    .map_err(|_| CliError::runtime(format!("Redis at {url}: INFO timed out")))?
    .map_err(|e| CliError::runtime(format!("Redis at {url}: INFO: {}", chain(&e))))?;
    Ok(info.lines().any(|l| l.trim() == "cluster_enabled:1"))
}

/// A [`RedisConnection`] to `urls`: several URLs are Cluster nodes; one URL is a standalone
/// server or, when it says so, a Cluster node.
pub async fn connection(urls: &[String]) -> Result<RedisConnection> {
    let first = urls.first().ok_or_else(|| CliError::usage("no Redis URL"))?;
    let cluster = urls.len() > 1 || is_cluster(first).await?;
    let builder = if cluster {
        RedisConnection::cluster(urls.iter().cloned())
    } else {
        RedisConnection::standalone(first.clone())
    };
    builder
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|e| CliError::runtime(format!("Redis: {}", chain(&e))))
}

/// Connect with a bound on the time taken.
async fn connect_node(url: &str) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)
        .map_err(|e| CliError::usage(format!("invalid Redis URL {url:?}: {e}")))?;
    tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| CliError::runtime(format!("cannot connect to Redis at {url}: timed out")))?
        .map_err(|e| CliError::runtime(format!("cannot connect to Redis at {url}: {}", chain(&e))))
}

/// Run one command with a bound on the time taken.
async fn query<T: redis::FromRedisValue>(
    conn: &mut impl redis::aio::ConnectionLike,
    node: &str,
    cmd: &redis::Cmd,
) -> Result<T> {
    tokio::time::timeout(CONNECT_TIMEOUT * 5, cmd.query_async(conn))
        .await
        .map_err(|_| CliError::runtime(format!("Redis at {node}: command timed out")))?
        .map_err(|e| CliError::runtime(format!("Redis at {node}: {}", chain(&e))))
}

/// Run a pipeline on one node, bounded like [`query`].
async fn pipeline<T: redis::FromRedisValue>(
    conn: &mut impl redis::aio::ConnectionLike,
    node: &str,
    pipe: &redis::Pipeline,
    what: &str,
) -> Result<Vec<T>> {
    tokio::time::timeout(CONNECT_TIMEOUT * 5, pipe.query_async(conn))
        .await
        .map_err(|_| CliError::runtime(format!("Redis at {node}: {what} timed out")))?
        .map_err(|e| CliError::runtime(format!("Redis at {node}: {}", chain(&e))))
}

/// SCAN (never KEYS) the keys matching `pattern` on one node, a batch at a time; `each` gets
/// the connection and a non-empty batch, and returns false to stop.
async fn scan_node(
    conn: &mut redis::aio::MultiplexedConnection,
    node: &str,
    pattern: &[u8],
    mut each: impl AsyncFnMut(&mut redis::aio::MultiplexedConnection, Vec<Vec<u8>>) -> Result<bool>,
) -> Result<()> {
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = query(
            conn,
            node,
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000),
        )
        .await?;
        if !keys.is_empty() && !each(conn, keys).await? {
            return Ok(());
        }
        cursor = next;
        if cursor == 0 {
            return Ok(());
        }
    }
}

/// `url` with its `host:port` replaced (user, password and database kept).
fn with_host_port(url: &str, host_port: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_string() };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let userinfo = authority.rfind('@').map_or("", |at| &authority[..=at]);
    format!("{}{userinfo}{host_port}{}", &url[..scheme_end], &rest[authority_end..])
}

/// `url` with any password hidden, for display.
pub fn redacted(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_string() };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme_end], &rest[at..])
        }
        None => url.to_string(),
    }
}

/// Every master to SCAN, and a connection that routes single-key commands.
struct Nodes {
    cluster: bool,
    masters: Vec<(String, redis::aio::MultiplexedConnection)>,
    router: Router,
}

enum Router {
    Standalone(redis::aio::MultiplexedConnection),
    Cluster(Box<redis::cluster_async::ClusterConnection>),
}

impl Router {
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T> {
        match self {
            Router::Standalone(c) => query(c, "server", cmd).await,
            Router::Cluster(c) => query(c.as_mut(), "cluster", cmd).await,
        }
    }
}

async fn nodes(urls: &[String]) -> Result<Nodes> {
    let first = urls.first().ok_or_else(|| CliError::usage("no Redis URL"))?;
    let cluster = urls.len() > 1 || is_cluster(first).await?;
    if !cluster {
        let conn = connect_node(first).await?;
        return Ok(Nodes {
            cluster,
            masters: vec![(redacted(first), conn.clone())],
            router: Router::Standalone(conn),
        });
    }
    let mut seed = connect_node(first).await?;
    let text: String = query(&mut seed, first, redis::cmd("CLUSTER").arg("NODES")).await?;
    let mut masters = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 3 {
            continue;
        }
        let flags = fields[2];
        if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
            continue;
        }
        // `ip:port@cport[,hostname]`
        let addr = fields[1].split('@').next().unwrap_or("");
        if addr.is_empty() || addr.starts_with(':') {
            continue;
        }
        let url = with_host_port(first, addr);
        let conn = connect_node(&url).await?;
        masters.push((redacted(&url), conn));
    }
    if masters.is_empty() {
        return Err(CliError::runtime(format!("Redis Cluster at {first}: no reachable master")));
    }
    let client = redis::cluster::ClusterClient::builder(urls.to_vec())
        .connection_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| CliError::usage(format!("Redis Cluster URLs: {e}")))?;
    let router = tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_async_connection())
        .await
        .map_err(|_| {
            CliError::runtime(format!("cannot connect to Redis Cluster at {first}: timed out"))
        })?
        .map_err(|e| {
            CliError::runtime(format!("cannot connect to Redis Cluster at {first}: {}", chain(&e)))
        })?;
    Ok(Nodes { cluster, masters, router: Router::Cluster(Box::new(router)) })
}

/// Escape glob characters for `SCAN MATCH`.
fn glob_escape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 1);
    for b in raw {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(*b);
    }
    out.push(b'*');
    out
}

/// One key found by SCAN, with what a pipeline said about it.
#[derive(Debug, Serialize)]
struct EntryOut {
    /// The cache key (tier prefix removed).
    key: String,
    /// The master it lives on.
    node: String,
    /// Milliseconds to live; `null` without expiry.
    ttl_ms: Option<i64>,
    /// Bytes of the value.
    bytes: u64,
    /// `fresh`, `stale`, `expired` or `not_an_envelope`.
    state: &'static str,
    /// From the envelope header.
    fresh_until: Option<u64>,
    /// From the envelope header.
    stale_until: Option<u64>,
}

/// SCAN every master for keys under `match_prefix` and describe them; stop after `limit`.
/// Returns the entries and whether more were left.
async fn scan(
    nodes: &mut Nodes,
    tier_prefix: &[u8],
    match_prefix: &[u8],
    limit: usize,
) -> Result<(Vec<EntryOut>, bool)> {
    let pattern = glob_escape(match_prefix);
    let now = tier_core::spi::now_ms();
    let mut out = Vec::new();
    let mut more = false;
    for (node, conn) in &mut nodes.masters {
        scan_node(conn, node, &pattern, async |conn, keys| {
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("PTTL")
                    .arg(k)
                    .cmd("STRLEN")
                    .arg(k)
                    .cmd("GETRANGE")
                    .arg(k)
                    .arg(0)
                    .arg(tier_core::spi::envelope::HEADER_LEN as i64 - 1);
            }
            let answers: Vec<redis::Value> = pipeline(conn, node, &pipe, "pipeline").await?;
            for (k, a) in keys.iter().zip(answers.chunks(3)) {
                let ttl: i64 =
                    a.first().and_then(|v| redis::from_redis_value_ref(v).ok()).unwrap_or(-2);
                if ttl == -2 {
                    continue; // gone since SCAN saw it
                }
                let bytes: u64 =
                    a.get(1).and_then(|v| redis::from_redis_value_ref(v).ok()).unwrap_or(0);
                let head: Vec<u8> =
                    a.get(2).and_then(|v| redis::from_redis_value_ref(v).ok()).unwrap_or_default();
                let times = tier_core::spi::envelope::peek_times(&head).ok();
                let state = match times {
                    None => "not_an_envelope",
                    Some((fresh, _)) if now < fresh => "fresh",
                    Some((_, stale)) if now < stale => "stale",
                    Some(_) => "expired",
                };
                if out.len() >= limit {
                    more = true;
                    return Ok(false);
                }
                out.push(EntryOut {
                    key: String::from_utf8_lossy(k.strip_prefix(tier_prefix).unwrap_or(k))
                        .into_owned(),
                    node: node.clone(),
                    ttl_ms: (ttl >= 0).then_some(ttl),
                    bytes,
                    state,
                    fresh_until: times.map(|t| t.0),
                    stale_until: times.map(|t| t.1),
                });
            }
            Ok(true)
        })
        .await?;
        if more {
            break;
        }
    }
    Ok((out, more))
}

/// UNLINK every key starting with `prefix` on every master (one key per command, so no
/// command spans hash slots). Returns how many keys were removed.
pub async fn unlink_under(urls: &[String], prefix: &[u8]) -> Result<u64> {
    let mut nodes = nodes(urls).await?;
    let pattern = glob_escape(prefix);
    let mut removed = 0u64;
    for (node, conn) in &mut nodes.masters {
        scan_node(conn, node, &pattern, async |conn, keys| {
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("UNLINK").arg(k);
            }
            let counts: Vec<u64> = pipeline(conn, node, &pipe, "UNLINK").await?;
            removed += counts.iter().sum::<u64>();
            Ok(true)
        })
        .await?;
    }
    Ok(removed)
}

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| CliError::runtime(format!("encode JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

fn ttl_text(ttl: Option<i64>) -> String {
    match ttl {
        None => "none".into(),
        Some(ms) => crate::duration::short(Duration::from_millis(ms.max(0) as u64)),
    }
}

/// Run a `tier redis` subcommand.
pub async fn run(cmd: RedisCommand) -> Result<()> {
    match cmd {
        RedisCommand::Stats { target } => stats(target).await,
        RedisCommand::Ls { target, key_prefix, limit } => ls(target, &key_prefix, limit).await,
        RedisCommand::Get { target, key } => get(target, &key).await,
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
    prefix: String,
    entries: u64,
    bytes: u64,
    states: BTreeMap<&'static str, u64>,
    without_ttl: u64,
    ttl_min_ms: Option<i64>,
    ttl_p50_ms: Option<i64>,
    ttl_max_ms: Option<i64>,
    by_prefix: BTreeMap<String, GroupOut>,
}

async fn stats(t: RedisTarget) -> Result<()> {
    let mut nodes = nodes(&t.url.0).await?;
    let prefix = t.prefix.as_bytes();
    let (entries, _) = scan(&mut nodes, prefix, prefix, usize::MAX).await?;
    let mut states = BTreeMap::new();
    let mut by_prefix: BTreeMap<String, GroupOut> = BTreeMap::new();
    let mut ttls: Vec<i64> = entries.iter().filter_map(|e| e.ttl_ms).collect();
    ttls.sort_unstable();
    for e in &entries {
        *states.entry(e.state).or_default() += 1;
        let g = by_prefix.entry(crate::disk::key_group(e.key.as_bytes())).or_default();
        g.entries += 1;
        g.bytes += e.bytes;
    }
    let out = StatsOut {
        cluster: nodes.cluster,
        nodes: nodes.masters.iter().map(|(n, _)| n.clone()).collect(),
        prefix: t.prefix.clone(),
        entries: entries.len() as u64,
        bytes: entries.iter().map(|e| e.bytes).sum(),
        states,
        without_ttl: entries.iter().filter(|e| e.ttl_ms.is_none()).count() as u64,
        ttl_min_ms: ttls.first().copied(),
        ttl_p50_ms: ttls.get(ttls.len() / 2).copied(),
        ttl_max_ms: ttls.last().copied(),
        by_prefix,
    };
    if t.json {
        return print_json(&out);
    }
    println!(
        "{} {}",
        if out.cluster { "cluster, masters" } else { "server" },
        out.nodes.join(", ")
    );
    println!("prefix      {:?}", out.prefix);
    println!("entries     {} ({} bytes of values)", count(out.entries), count(out.bytes));
    let states: Vec<String> =
        out.states.iter().map(|(s, n)| format!("{s} {}", count(*n))).collect();
    println!("state       {}", if states.is_empty() { "-".into() } else { states.join(", ") });
    println!(
        "ttl         min {}, median {}, max {}; {} without expiry",
        ttl_text(out.ttl_min_ms),
        ttl_text(out.ttl_p50_ms),
        ttl_text(out.ttl_max_ms),
        count(out.without_ttl)
    );
    if !out.by_prefix.is_empty() {
        println!("by prefix");
        for (p, g) in &out.by_prefix {
            println!("  {p:<30} {:>10} entries {:>14} bytes", count(g.entries), count(g.bytes));
        }
    }
    Ok(())
}

async fn ls(t: RedisTarget, key_prefix: &str, limit: usize) -> Result<()> {
    let mut nodes = nodes(&t.url.0).await?;
    let prefix = t.prefix.as_bytes();
    let mut matching = prefix.to_vec();
    matching.extend_from_slice(key_prefix.as_bytes());
    let (entries, more) = scan(&mut nodes, prefix, &matching, limit).await?;
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
    ttl_ms: Option<i64>,
    bytes: usize,
    envelope: Option<EnvelopeView>,
    envelope_error: Option<String>,
}

async fn get(t: RedisTarget, key: &str) -> Result<()> {
    let mut nodes = nodes(&t.url.0).await?;
    let mut redis_key = t.prefix.as_bytes().to_vec();
    redis_key.extend_from_slice(key.as_bytes());
    let value: Option<Vec<u8>> = nodes.router.query(redis::cmd("GET").arg(&redis_key)).await?;
    let Some(value) = value else {
        return Err(CliError::runtime(format!(
            "no entry for key {key:?} (Redis key {:?})",
            String::from_utf8_lossy(&redis_key)
        )));
    };
    let ttl: i64 = nodes.router.query(redis::cmd("PTTL").arg(&redis_key)).await?;
    let (envelope, envelope_error) = match view(&value) {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e)),
    };
    let out = GetOut {
        key: key.to_string(),
        redis_key: String::from_utf8_lossy(&redis_key).into_owned(),
        ttl_ms: (ttl >= 0).then_some(ttl),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            with_host_port("redis://:pw@10.0.0.1:7000/0", "10.0.0.2:7001"),
            "redis://:pw@10.0.0.2:7001/0"
        );
        assert_eq!(with_host_port("redis://a:1", "b:2"), "redis://b:2");
        assert_eq!(redacted("redis://u:secret@h:1/"), "redis://u:***@h:1/");
        assert!(check_url("redis://127.0.0.1:6379/").is_ok());
        assert!(check_url("http://x").is_err());
        assert!(check_url("redis://").is_err() || check_url("redis://").is_ok());
        assert_eq!(glob_escape(b"a*b"), b"a\\*b*".to_vec());
    }
}

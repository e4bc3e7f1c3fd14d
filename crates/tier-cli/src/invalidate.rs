//! `tier invalidate --redis URL --cache NAME (--key ID | --raw-key KEY | --tag T | --namespace
//! [NAME] | --all)`: what a service's own `invalidate*` calls do, from the command line — remove
//! from Redis (or move the tag generation / namespace version on) and publish on the backplane,
//! so every live instance drops it from its local tiers too.

use std::sync::Arc;

use serde::Serialize;
use tier_core::spi::{Backplane, GenerationStore, Invalidation};
use tier_core::{Cache, ReconnectPolicy, TierPolicy};
use tier_redis::{RedisBackplane, RedisGenerations, RedisTier};

use crate::cli::InvalidateArgs;
use crate::error::{chain, CliError, Context, Result};

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct Out {
    cache: String,
    /// `key`, `tag`, `namespace` or `clear`.
    kind: &'static str,
    /// The key, tag or namespace.
    target: String,
    /// The backplane stream the invalidation was published on (the field keeps the name it had
    /// when the backplane was a pub/sub channel).
    channel: String,
    /// Whether an instance had used the stream before (every instance writes the stream's epoch
    /// key when it starts): `false` means no service reads it (a wrong `--channel`); `null` when
    /// it cannot be asked (a Cluster, no answer in time, an ACL refusal).
    stream_in_use: Option<bool>,
    /// Keys removed from Redis (`--all`).
    removed_keys: Option<u64>,
    /// The namespace version after the invalidation (`--key` and `--namespace`).
    namespace_version: Option<u64>,
}

/// Run `tier invalidate`.
pub async fn run(args: InvalidateArgs) -> Result<()> {
    if args.cache.is_empty() || args.cache.contains(':') {
        return Err(CliError::usage("--cache must be a non-empty name without ':'"));
    }
    if let Some(ns) = &args.namespace {
        if !ns.is_empty() && *ns != args.cache {
            return Err(CliError::usage(format!(
                "--namespace {ns:?} differs from --cache {:?}: a cache's namespace is its name",
                args.cache
            )));
        }
    }
    let conn = crate::redis::connection(&args.redis.0).await?;
    // Asked before this command's own backplane writes the epoch key.
    let stream_in_use =
        if conn.is_cluster() { None } else { stream_in_use(&args.redis.0[0], &args.channel).await };
    let backplane = RedisBackplane::builder(conn.clone())
        .channel(args.channel.clone())
        .build()
        .await
        .map_err(|e| crate::redis::setup_error("Redis backplane", &e))?;
    let channel = backplane.stream().to_string();
    let backplane = Arc::new(backplane);
    let tier = RedisTier::builder(conn.clone())
        .prefix(args.prefix.as_bytes())
        .retry_capacity(0)
        .build()
        .await
        .map_err(|e| crate::redis::setup_error("Redis tier", &e))?;
    let generations = Arc::new(RedisGenerations::new(conn.clone()).prefix(&args.generation_prefix));
    // A hierarchy of the Redis tier alone: its invalidations are exactly a service's.
    let cache: Cache<serde_json::Value> = Cache::builder(args.cache.clone())
        .tier(tier.clone(), TierPolicy::fresh(std::time::Duration::from_secs(1)).no_breaker())
        .generations(generations.clone())
        .backplane(backplane.clone(), ReconnectPolicy::Clear)
        // A command waits for Redis as long as its connection does (a service's cache gives up
        // after 100 ms and goes on without the shared state; this command has nothing else to do).
        .fleet_state_timeout(std::time::Duration::from_secs(30))
        .build()
        .context(|| "build the cache".into())?;
    let version =
        cache.sync_namespace().await.context(|| "read the namespace version from Redis".into())?;
    let fail = |what: &str, e: &dyn std::error::Error| {
        CliError::runtime(format!("invalidate {what} of cache {:?}: {}", args.cache, chain(e)))
    };
    let mut out = Out {
        cache: args.cache.clone(),
        kind: "key",
        target: String::new(),
        channel,
        stream_in_use,
        removed_keys: None,
        namespace_version: None,
    };
    if let Some(id) = &args.key {
        let key = cache.key(id);
        cache.invalidate(&key).await.map_err(|e| fail("key", &e))?;
        out.target = String::from_utf8_lossy(&key).into_owned();
        out.namespace_version = Some(version);
    } else if let Some(key) = &args.raw_key {
        cache.invalidate(key.as_bytes()).await.map_err(|e| fail("key", &e))?;
        out.target = key.clone();
    } else if let Some(tag) = &args.tag {
        cache.invalidate_tag(tag).await.map_err(|e| fail("tag", &e))?;
        out.kind = "tag";
        out.target = tag.clone();
    } else if args.namespace.is_some() {
        cache.invalidate_namespace().await.map_err(|e| fail("namespace", &e))?;
        out.kind = "namespace";
        out.target = args.cache.clone();
        out.namespace_version = Some(cache.keys().version());
    } else if args.all {
        // Only this cache's keys (`Cache::key` puts `NAME:` first): the tier's own `clear`
        // would remove every key under the prefix, other caches' included.
        let under = format!("{}:", args.cache);
        // The clear floor first, as `Cache::clear` does: no instance serves an entry of this
        // cache created before it again, whatever lands in Redis later.
        let at = tier_core::spi::now_ms();
        generations.raise_floor(&args.cache, at).await.map_err(|e| fail("everything", &e))?;
        let removed =
            tier.clear_prefix(under.as_bytes()).await.map_err(|e| fail("everything", &e))?;
        backplane
            .publish(&args.cache, &Invalidation::Clear { at })
            .await
            .map_err(|e| fail("everything", &e))?;
        out.kind = "clear";
        out.target = String::from_utf8_lossy(&tier.redis_key(under.as_bytes())).into_owned() + "*";
        out.removed_keys = Some(removed);
    } else {
        return Err(CliError::usage(
            "say what to invalidate: --key, --raw-key, --tag, --namespace or --all",
        ));
    }
    if args.json {
        let text = serde_json::to_string_pretty(&out)
            .map_err(|e| CliError::runtime(format!("encode JSON: {e}")))?;
        println!("{text}");
    } else {
        let done = match out.kind {
            "key" => format!("removed key {} from Redis", out.target),
            "tag" => format!(
                "moved the generation of tag {:?} on (tagged entries are now misses)",
                out.target
            ),
            "namespace" => format!(
                "moved namespace {:?} to version {} (old keys are unreachable and age out)",
                out.target,
                out.namespace_version.unwrap_or(0)
            ),
            _ => format!(
                "removed {} keys matching {} from Redis",
                out.removed_keys.unwrap_or(0),
                out.target
            ),
        };
        let heard = match out.stream_in_use {
            Some(false) => " — no instance has used this stream: check --channel (the service's \
                            backplane stream)"
                .to_string(),
            Some(true) => ", which the service's instances read".to_string(),
            None => String::new(),
        };
        println!("{done}; appended to the backplane stream {:?}{heard}", out.channel);
    }
    Ok(())
}

/// Whether the epoch key of `stream` exists on the standalone Redis at `url` (an instance
/// reading the stream wrote it); `None` when it cannot be asked (no answer in time, an ACL that
/// refuses `EXISTS`).
async fn stream_in_use(url: &str, stream: &str) -> Option<bool> {
    let ask = async {
        let client = redis::Client::open(url).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let n: u64 = redis::cmd("EXISTS")
            .arg(tier_redis::RedisBackplane::epoch_key_of(stream))
            .query_async(&mut conn)
            .await
            .ok()?;
        Some(n > 0)
    };
    tokio::time::timeout(crate::redis::RESPONSE_TIMEOUT, ask).await.ok().flatten()
}

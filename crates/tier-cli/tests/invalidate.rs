//! `tier invalidate` against the real Redis (standalone and Cluster): removed from Redis and
//! published on the backplane, in the library's wire format (a `RedisBackplane` receives it).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cluster_urls, fails, json, redis_url, runtime, tier, unique};
use serde_json::{json as j, Value};
use tier_core::spi::{Backplane, BackplaneEvent, GenerationStore, Invalidation};
use tier_core::{Cache, TierPolicy};
use tier_redis::{RedisBackplane, RedisConnection, RedisGenerations, RedisTier};
use tokio::sync::broadcast;

async fn connect(urls: &[String]) -> RedisConnection {
    RedisConnection::detect(urls.to_vec()).connect().await.unwrap()
}

/// A service's cache: the Redis tier, its namespace version in Redis (as `tier invalidate` reads
/// it), synced before its first key is built.
async fn cache(urls: &[String], prefix: &str, name: &str) -> Cache<Value> {
    let conn = connect(urls).await;
    let tier = RedisTier::builder(conn.clone()).prefix(prefix).build().await.unwrap();
    let cache = Cache::builder(name)
        .tier(tier, TierPolicy::fresh(Duration::from_secs(60)))
        .generations(std::sync::Arc::new(RedisGenerations::new(conn)))
        .build()
        .unwrap();
    cache.sync_namespace().await.unwrap();
    cache
}

/// Listen on the default backplane channel, as every instance of a service does.
async fn listen(urls: &[String]) -> (RedisBackplane, broadcast::Receiver<BackplaneEvent>) {
    let backplane = RedisBackplane::builder(connect(urls).await).build().await.unwrap();
    let events = backplane.subscribe();
    (backplane, events)
}

/// The next invalidation of `cache` (other caches' are skipped: tests run in parallel). A
/// namespace notice of a version not above `known` is skipped too: every instance, this command
/// included, tells the fleet the version it read at its start (`adopt_namespace`), which moves
/// nothing; a notice above it is a move and becomes the new `known`.
async fn next_of(
    events: &mut broadcast::Receiver<BackplaneEvent>,
    cache: &str,
    known: &mut u64,
) -> Invalidation {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
        match event.expect("an invalidation within 10 s") {
            Ok(BackplaneEvent::Invalidate {
                cache: c, what: Invalidation::Namespace(v), ..
            }) if c == cache && v <= *known => {}
            Ok(BackplaneEvent::Invalidate { cache: c, what, .. }) if c == cache => {
                if let Invalidation::Namespace(v) = what {
                    *known = v;
                }
                return what;
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(e) => panic!("backplane closed: {e}"),
        }
    }
}

#[test]
fn key_is_removed_and_published() {
    let rt = runtime();
    let url = redis_url();
    let prefix = format!("{}:", unique("tier-cli-inv"));
    let name = unique("shop");
    rt.block_on(async {
        let c = cache(std::slice::from_ref(&url), &prefix, &name).await;
        c.insert(c.key("1"), j!(1)).await.unwrap();
        c.insert(c.key("2"), j!(2)).await.unwrap();
        let (_backplane, mut events) = listen(std::slice::from_ref(&url)).await;
        let mut known = c.keys().version();

        let out = json(tier().args([
            "invalidate",
            "--redis",
            &url,
            "--prefix",
            &prefix,
            "--cache",
            &name,
            "--key",
            "1",
            "--json",
        ]));
        assert_eq!(out["kind"], "key");
        let key = c.key("1");
        assert_eq!(out["target"], String::from_utf8_lossy(&key).as_ref());

        assert_eq!(next_of(&mut events, &name, &mut known).await, Invalidation::Key(key));
        assert!(c.get(c.key("1")).await.is_none());
        assert!(c.get(c.key("2")).await.is_some());
    });
}

#[test]
fn tag_namespace_and_all() {
    let rt = runtime();
    let url = redis_url();
    let prefix = format!("{}:", unique("tier-cli-inv"));
    let name = unique("shop");
    let other = unique("other");
    rt.block_on(async {
        let c = cache(std::slice::from_ref(&url), &prefix, &name).await;
        let o = cache(std::slice::from_ref(&url), &prefix, &other).await;
        for i in 0..5 {
            c.insert(c.key(i.to_string()), j!(i)).await.unwrap();
        }
        o.insert(o.key("x"), j!("kept")).await.unwrap();
        let (_backplane, mut events) = listen(std::slice::from_ref(&url)).await;
        let mut known = c.keys().version();

        let base = [
            "invalidate",
            "--redis",
            url.as_str(),
            "--prefix",
            prefix.as_str(),
            "--cache",
            name.as_str(),
            "--json",
        ];
        let tag = format!("{}-tag", unique("t"));
        json(tier().args(base).args(["--tag", &tag]));
        assert_eq!(
            next_of(&mut events, &name, &mut known).await,
            Invalidation::Tag(tag.as_str().into())
        );
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let generation_key =
            RedisGenerations::new(connect(std::slice::from_ref(&url)).await).redis_key(&tag);
        let generation: u64 =
            redis::cmd("GET").arg(generation_key).query_async(&mut conn).await.unwrap();
        // A generation starts at a value no earlier life of the tag held (never 0 or 1).
        assert!(generation > 1 << 20, "{generation}");

        let first = json(tier().args(base).arg("--namespace"))["namespace_version"].as_u64();
        let first = first.expect("a namespace version");
        assert!(first > 1 << 20, "{first}");
        let second =
            json(tier().args(base).args(["--namespace", &name]))["namespace_version"].clone();
        assert_eq!(second, first + 1);
        fails(tier().args(base).args(["--namespace", "someone-else"]), 2);

        let out = json(tier().args(base).arg("--all"));
        assert_eq!(out["removed_keys"], 5, "{out}");
        assert_eq!(out["target"], format!("{prefix}{name}:*"), "{out}");
        let floor = RedisGenerations::new(connect(std::slice::from_ref(&url)).await)
            .floor(&name)
            .await
            .unwrap();
        assert!(floor > 0, "the clear floor of {name} was raised");
        assert_eq!(next_of(&mut events, &name, &mut known).await, Invalidation::Namespace(first));
        assert_eq!(
            next_of(&mut events, &name, &mut known).await,
            Invalidation::Namespace(first + 1)
        );
        assert!(matches!(
            next_of(&mut events, &name, &mut known).await,
            Invalidation::Clear { .. }
        ));
        assert!(o.get(o.key("x")).await.is_some(), "another cache's keys must stay");
        assert!(c.get(c.key("0")).await.is_none());
    });
}

#[test]
fn all_on_a_cluster() {
    let rt = runtime();
    let urls: Vec<String> = cluster_urls().split(',').map(String::from).collect();
    let prefix = format!("{}:", unique("tier-cli-inv"));
    let name = unique("shop");
    rt.block_on(async {
        let c = cache(&urls, &prefix, &name).await;
        for i in 0..20 {
            c.insert(c.key(i.to_string()), j!(i)).await.unwrap();
        }
        let out = json(tier().args([
            "invalidate",
            "--redis",
            &cluster_urls(),
            "--prefix",
            &prefix,
            "--cache",
            &name,
            "--all",
            "--json",
        ]));
        assert_eq!(out["removed_keys"], 20, "{out}");
        let out = json(tier().args([
            "invalidate",
            "--redis",
            &urls[0],
            "--prefix",
            &prefix,
            "--cache",
            &name,
            "--key",
            "3",
            "--json",
        ]));
        assert_eq!(out["kind"], "key");
    });
}

#[test]
fn needs_exactly_one_target() {
    let url = redis_url();
    let line = fails(tier().args(["invalidate", "--redis", &url, "--cache", "c"]), 2);
    assert!(line.contains("required"), "{line}");
    fails(tier().args(["invalidate", "--redis", &url, "--cache", "c", "--tag", "a", "--all"]), 2);
}

/// A service with its own channel and generation prefix is reached with `--channel` and
/// `--generation-prefix`, and the report says whether any instance reads the stream: yes for the
/// two here, no for a stream nobody reads (the mistake that used to print "published … for every
/// instance" while every instance kept the old value).
#[test]
fn custom_stream_and_generation_prefix_and_whether_the_stream_is_read() {
    let rt = runtime();
    let url = redis_url();
    let urls = std::slice::from_ref(&url);
    let prefix = format!("{}:", unique("tier-cli-inv"));
    let generations = format!("{}:", unique("tier-cli-gen"));
    let channel = unique("tier-cli-channel");
    let name = unique("shop");
    rt.block_on(async {
        let listener = || async {
            let b = RedisBackplane::builder(connect(urls).await)
                .channel(channel.clone())
                .build()
                .await
                .unwrap();
            let events = b.subscribe();
            (b, events)
        };
        let (_a, mut events) = listener().await;
        // This test expects no namespace move: every namespace notice is a start announcement.
        let mut known = u64::MAX;
        let (_b, _) = listener().await;
        let tag = unique("t");
        let args = |channel: &str| {
            let mut args = vec!["invalidate", "--redis", url.as_str(), "--cache", name.as_str()];
            args.extend(["--prefix", prefix.as_str(), "--generation-prefix", generations.as_str()]);
            args.extend(["--channel", channel, "--tag", tag.as_str()]);
            args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        };
        let out = json(tier().args(args(&channel)).arg("--json"));
        assert_eq!(out["channel"], channel.as_str());
        assert_eq!(out["stream_in_use"], true, "{out}");
        assert_eq!(
            next_of(&mut events, &name, &mut known).await,
            Invalidation::Tag(tag.as_str().into())
        );
        let generation_key =
            RedisGenerations::new(connect(urls).await).prefix(&generations).redis_key(&tag);
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let generation: Option<u64> =
            redis::cmd("GET").arg(generation_key).query_async(&mut conn).await.unwrap();
        // A generation starts at a fresh value (never 0, never one an earlier life held).
        assert!(
            generation.is_some_and(|g| g > 1 << 20),
            "the generation under --generation-prefix: {generation:?}"
        );

        let nobody = unique("nobody-listens");
        let text = String::from_utf8(tier().args(args(&nobody)).output().unwrap().stdout).unwrap();
        assert!(text.contains("no instance has used this stream"), "{text}");
    });
}

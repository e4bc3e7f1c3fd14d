//! `tier invalidate` against the real Redis (standalone and Cluster): removed from Redis and
//! published on the backplane.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cluster_urls, fails, json, redis_url, runtime, tier, unique};
use futures::StreamExt;
use serde_json::{json as j, Value};
use tier_core::{Cache, TierPolicy};
use tier_redis::{RedisConnection, RedisTier};

async fn cache(urls: &[String], prefix: &str, name: &str) -> Cache<Value> {
    let conn = if urls.len() > 1 {
        RedisConnection::cluster(urls.to_vec()).connect().await.unwrap()
    } else {
        RedisConnection::standalone(urls[0].clone()).connect().await.unwrap()
    };
    let tier = RedisTier::builder(conn).prefix(prefix).build().await.unwrap();
    Cache::builder(name).tier(tier, TierPolicy::fresh(Duration::from_secs(60))).build().unwrap()
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
        // Listen on the backplane channel like every instance does.
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe("tier:invalidations").await.unwrap();

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
        assert_eq!(out["target"], format!("{name}:0:1"));

        let msg = tokio::time::timeout(Duration::from_secs(10), pubsub.on_message().next())
            .await
            .unwrap()
            .unwrap();
        let payload: Vec<u8> = msg.get_payload().unwrap();
        assert!(
            payload.windows(name.len()).any(|w| w == name.as_bytes()),
            "message does not name the cache"
        );
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
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let generation: u64 =
            redis::cmd("GET").arg(format!("tier-gen:{tag}")).query_async(&mut conn).await.unwrap();
        assert_eq!(generation, 1);

        assert_eq!(json(tier().args(base).arg("--namespace"))["namespace_version"], 1);
        assert_eq!(json(tier().args(base).args(["--namespace", &name]))["namespace_version"], 2);
        fails(tier().args(base).args(["--namespace", "someone-else"]), 2);

        let out = json(tier().args(base).arg("--all"));
        assert_eq!(out["removed_keys"], 5, "{out}");
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

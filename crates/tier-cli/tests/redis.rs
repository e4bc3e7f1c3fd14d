//! `tier redis stats|ls|get` against the real standalone Redis and Redis Cluster of the test
//! environment.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cluster_urls, fails, free_port, json, redis_url, runtime, text, tier, unique};
use serde_json::{json as j, Value};
use tier_core::{Cache, TierPolicy};
use tier_redis::{RedisConnection, RedisTier};

/// Write two entries of cache `shop` (one tagged) and one foreign value under `prefix`.
fn fill(urls: &[String], prefix: &str) {
    let rt = runtime();
    rt.block_on(async {
        let conn = if urls.len() > 1 {
            RedisConnection::cluster(urls.to_vec()).connect().await.unwrap()
        } else {
            RedisConnection::standalone(urls[0].clone()).connect().await.unwrap()
        };
        let tier = RedisTier::builder(conn).prefix(prefix).build().await.unwrap();
        let cache: Cache<Value> = Cache::builder("shop")
            .tier(tier, TierPolicy::fresh(Duration::from_secs(60)).stale(Duration::from_secs(600)))
            .build()
            .unwrap();
        cache.insert_with_tags(cache.key("user:1"), j!({"name": "Ada"}), &["users"]).await.unwrap();
        cache.insert(cache.key("user:2"), j!({"name": "Grace"})).await.unwrap();
        // Bytes that are not an envelope, under the same prefix.
        let client = redis::Client::open(urls[0].as_str()).unwrap();
        if urls.len() == 1 {
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let _: () = redis::cmd("SET")
                .arg(format!("{prefix}shop:0:foreign"))
                .arg("{\"json\":1}")
                .query_async(&mut c)
                .await
                .unwrap();
        }
    });
}

fn check(urls: Vec<String>, url_arg: &str) {
    let prefix = format!("{}:", unique("tier-cli-redis"));
    fill(&urls, &prefix);
    let standalone = urls.len() == 1;

    let stats = json(tier().args(["redis", "stats", url_arg, "--prefix", &prefix, "--json"]));
    assert_eq!(stats["cluster"], !standalone, "{stats}");
    let expected = if standalone { 3 } else { 2 };
    assert_eq!(stats["entries"], expected, "{stats}");
    assert_eq!(stats["states"]["fresh"], 2, "{stats}");
    assert_eq!(stats["by_prefix"]["shop:0:"]["entries"], expected, "{stats}");
    assert_eq!(stats["without_ttl"], if standalone { 1 } else { 0 }, "{stats}");
    assert!(stats["ttl_max_ms"].as_i64().unwrap() > 500_000, "{stats}");
    let masters = stats["masters"].as_array().unwrap();
    if !standalone {
        assert_eq!(stats["nodes"].as_array().unwrap().len(), 3, "{stats}");
        assert_eq!(masters.len(), 3, "{stats}");
        let slots: u64 = masters.iter().map(|m| m["slots"].as_u64().unwrap()).sum();
        assert_eq!(slots, 16384, "{stats}");
    } else {
        assert_eq!(masters.len(), 1, "{stats}");
    }
    assert!(masters.iter().all(|m| m["ping_us"].as_u64().is_some()), "every node answers: {stats}");
    let stats_text = text(tier().args(["redis", "stats", url_arg, "--prefix", &prefix]));
    assert!(stats_text.contains("ping "), "{stats_text}");

    let ls = json(tier().args([
        "redis",
        "ls",
        url_arg,
        "--prefix",
        &prefix,
        "--key-prefix",
        "shop:0:user:",
        "--json",
    ]));
    let mut keys: Vec<&str> =
        ls["entries"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["shop:0:user:1", "shop:0:user:2"], "{ls}");
    assert!(ls["entries"][0]["ttl_ms"].as_i64().unwrap() > 0);
    assert!(ls["entries"][0]["bytes"].as_u64().unwrap() > 40);
    let ls_text = text(tier().args(["redis", "ls", url_arg, "--prefix", &prefix]));
    assert!(ls_text.contains("shop:0:user:1") && ls_text.contains("fresh"), "{ls_text}");

    let get = json(tier().args([
        "redis",
        "get",
        url_arg,
        "--prefix",
        &prefix,
        "shop:0:user:1",
        "--json",
    ]));
    assert_eq!(get["envelope"]["value"], j!({"name": "Ada"}), "{get}");
    assert_eq!(get["envelope"]["tags"][0]["tag"], "users", "{get}");
    assert_eq!(get["envelope"]["state"], "fresh", "{get}");
    assert!(get["ttl_ms"].as_i64().unwrap() > 500_000, "{get}");
    let get_text =
        text(tier().args(["redis", "get", url_arg, "--prefix", &prefix, "shop:0:user:2"]));
    assert!(get_text.contains("Grace") && get_text.contains("stale until"), "{get_text}");
    let line = fails(tier().args(["redis", "get", url_arg, "--prefix", &prefix, "shop:0:nope"]), 1);
    assert!(line.contains("no entry"), "{line}");

    if standalone {
        let foreign = json(tier().args([
            "redis",
            "get",
            url_arg,
            "--prefix",
            &prefix,
            "shop:0:foreign",
            "--json",
        ]));
        assert!(foreign["envelope"].is_null());
        assert!(
            foreign["envelope_error"].as_str().unwrap().contains("not a tier envelope"),
            "{foreign}"
        );
        let ls = json(tier().args([
            "redis",
            "ls",
            url_arg,
            "--prefix",
            &prefix,
            "--key-prefix",
            "shop:0:foreign",
            "--json",
        ]));
        assert_eq!(ls["entries"][0]["state"], "not_an_envelope", "{ls}");
    }
}

#[test]
fn standalone() {
    let url = redis_url();
    check(vec![url.clone()], &url);
}

#[test]
fn cluster_by_its_node_urls() {
    let urls = cluster_urls();
    check(urls.split(',').map(String::from).collect(), &urls);
}

#[test]
fn cluster_detected_from_one_node() {
    let urls: Vec<String> = cluster_urls().split(',').map(String::from).collect();
    let prefix = format!("{}:", unique("tier-cli-redis"));
    fill(&urls, &prefix);
    let stats = json(tier().args(["redis", "stats", &urls[1], "--prefix", &prefix, "--json"]));
    assert_eq!(stats["cluster"], true, "{stats}");
    assert_eq!(stats["entries"], 2, "{stats}");
}

#[test]
fn unreachable_or_bad_urls_are_one_line_errors() {
    let closed = format!("redis://127.0.0.1:{}/", free_port());
    let line = fails(tier().args(["redis", "stats", &closed]), 1);
    assert!(line.contains("cannot connect"), "{line}");
    let line = fails(tier().args(["redis", "ls", "http://127.0.0.1:1/"]), 2);
    assert!(line.contains("invalid Redis URL"), "{line}");
}

#[test]
fn stats_shows_a_services_breaker_of_each_master() {
    let urls: Vec<String> = cluster_urls().split(',').map(String::from).collect();
    let master = urls[0].trim_start_matches("redis://").trim_end_matches('/').to_string();
    // A service's metrics: its breaker of the first master is open, and it knows a master the
    // topology does not (any more).
    let body = format!(
        "# TYPE tier_redis_node_breaker_state gauge\n\
         tier_redis_node_breaker_state{{cache=\"shop\",tier=\"redis\",node=\"{master}\"}} 2\n\
         tier_redis_node_breaker_state{{cache=\"shop\",tier=\"redis\",node=\"10.9.9.9:7000\"}} 0\n"
    );
    let (addr, _server) = common::http_server(2, "200 OK", Box::leak(body.into_boxed_str()), None);
    let prefix = format!("{}:", unique("tier-cli-breakers"));
    let stats = json(tier().args([
        "redis",
        "stats",
        &cluster_urls(),
        "--prefix",
        &prefix,
        "--metrics",
        &addr,
        "--json",
    ]));
    let masters = stats["masters"].as_array().unwrap();
    let of = |node: &str| masters.iter().find(|m| m["node"] == node).cloned().unwrap_or_default();
    assert_eq!(of(&master)["breakers"], j!([{"cache": "shop", "tier": "redis", "state": "open"}]));
    assert_eq!(of("10.9.9.9:7000")["ping_error"], "not a master of this topology", "{stats}");
    let others: Vec<&Value> = masters.iter().filter(|m| m["node"] != master.as_str()).collect();
    assert!(others.iter().filter(|m| m["slots"] != 0).all(|m| m["breakers"] == j!([])));
    let text = text(tier().args([
        "redis",
        "stats",
        &cluster_urls(),
        "--prefix",
        &prefix,
        "--metrics",
        &addr,
    ]));
    assert!(text.contains(&master) && text.contains("breaker shop/redis open"), "{text}");
}

#[test]
fn stats_shows_a_services_client_side_caching() {
    let body = "# TYPE tier_redis_tracking_connected gauge\n\
         tier_redis_tracking_connected{cache=\"shop\"} 1\n\
         tier_redis_tracking_connected{cache=\"old\"} 0\n\
         # TYPE tier_redis_tracking_invalidations_total counter\n\
         tier_redis_tracking_invalidations_total{cache=\"shop\",source=\"other\"} 7\n\
         tier_redis_tracking_invalidations_total{cache=\"shop\",source=\"own\"} 3\n\
         # TYPE tier_redis_tracking_reconnects_total counter\n\
         tier_redis_tracking_reconnects_total{cache=\"shop\"} 2\n\
         # TYPE tier_redis_tracking_errors_total counter\n\
         tier_redis_tracking_errors_total{cache=\"shop\",kind=\"lost\"} 2\n\
         tier_redis_tracking_errors_total{cache=\"old\",kind=\"refused\"} 1\n";
    let (addr, _server) = common::http_server(2, "200 OK", body, None);
    let prefix = format!("{}:", unique("tier-cli-tracking"));
    let url = redis_url();
    let stats = json(tier().args([
        "redis",
        "stats",
        &url,
        "--prefix",
        &prefix,
        "--metrics",
        &addr,
        "--json",
    ]));
    assert_eq!(
        stats["tracking"],
        j!([
            {"cache": "old", "state": "refused", "reconnects": 0, "invalidations": {},
             "errors": {"refused": 1}},
            {"cache": "shop", "state": "connected", "reconnects": 2,
             "invalidations": {"other": 7, "own": 3}, "errors": {"lost": 2}},
        ]),
        "{stats}"
    );
    let text = text(tier().args(["redis", "stats", &url, "--prefix", &prefix, "--metrics", &addr]));
    assert!(
        text.contains(
            "tracking    shop: connected · invalidations other 7, own 3 · reconnects 2 · errors lost 2"
        ) && text.contains("tracking    old: refused"),
        "{text}"
    );
}

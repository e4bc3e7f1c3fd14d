//! The metrics this crate emits, with their names and labels (a debugging recorder is installed
//! for this test binary; one test, so snapshots do not race).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use redis::AsyncCommands;
use tier_core::spi::{Backplane, BackplaneEvent, Invalidation};
use tier_core::{Cache, TierPolicy};
use tier_redis::metrics as names;
use tier_redis::{RedisBackplane, RedisConnection, RedisTier};

/// Counters summed over snapshots (a snapshot resets the recorder's values), gauges as last
/// set to a non-zero value, and every metric key seen.
#[derive(Default)]
struct Seen {
    counters: HashMap<String, u64>,
    gauges: HashMap<String, f64>,
    keys: HashSet<String>,
}

fn id(name: &str, labels: &[(&str, &str)]) -> String {
    let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    l.sort();
    format!("{name}{{{}}}", l.join(","))
}

impl Seen {
    fn update(&mut self, snap: &Snapshotter) {
        for (k, _, _, v) in snap.snapshot().into_vec() {
            let key = k.key();
            let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
            let id = id(key.name(), &labels);
            self.keys.insert(id.clone());
            match v {
                DebugValue::Counter(c) => *self.counters.entry(id).or_default() += c,
                DebugValue::Gauge(g) if g.into_inner() != 0.0 => {
                    self.gauges.insert(id, g.into_inner());
                }
                _ => {}
            }
        }
    }

    /// The counter with exactly these labels.
    fn counter(&mut self, snap: &Snapshotter, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.update(snap);
        self.counters.get(&id(name, labels)).copied().unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_their_names_and_labels() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    recorder.install().unwrap();
    let mut seen = Seen::default();

    // Decode errors of the Redis tier are counted by the hierarchy with tier="redis".
    let url = standalone_url();
    let l3 = RedisTier::builder(RedisConnection::standalone(&url))
        .prefix(unique_prefix("metrics"))
        .build()
        .await
        .unwrap();
    let cache: Cache<String> = Cache::builder("metrics")
        .tier(l3.clone(), TierPolicy::fresh(Duration::from_secs(60)))
        .build()
        .unwrap();
    let key = cache.key("k");
    let mut raw_conn = raw(&url).await;
    let _: () = raw_conn.set(l3.redis_key(&key), b"not an envelope").await.unwrap();
    assert!(cache.get(&key).await.is_none());
    let decode = [("cache", "metrics"), ("tier", "redis")];
    assert_eq!(seen.counter(&snap, tier_core::metrics::TIER_DECODE_ERRORS, &decode), 1);

    // Backplane: sent / received, reconnects, connected.
    let server = OwnRedis::start();
    let channel = unique_prefix("metrics-chan");
    let conn = || RedisConnection::standalone(server.url()).connect();
    let a = RedisBackplane::builder(conn().await.unwrap()).stream(&channel).build().await.unwrap();
    let b = RedisBackplane::builder(conn().await.unwrap()).stream(&channel).build().await.unwrap();
    let mut b_rx = b.subscribe();
    a.publish("metrics", &Invalidation::Clear { at: 1 }).await.unwrap();
    loop {
        let event =
            tokio::time::timeout(Duration::from_secs(1), b_rx.recv()).await.unwrap().unwrap();
        if matches!(event, BackplaneEvent::Invalidate { .. }) {
            break;
        }
    }
    let sent = [("channel", channel.as_str()), ("direction", "sent")];
    let received = [("channel", channel.as_str()), ("direction", "received")];
    assert_eq!(seen.counter(&snap, names::BACKPLANE_MESSAGES, &sent), 1);
    assert_eq!(
        seen.counter(&snap, names::BACKPLANE_MESSAGES, &received),
        1,
        "own messages are not received"
    );

    // The readers' connections are killed: each resumes (no gap), counted as a reconnect.
    let _ = kill_normal_clients(&server.url()).await;
    eventually(Duration::from_secs(5), "both resumed", || async {
        a.reconnects() == 1 && b.reconnects() == 1
    })
    .await;
    let chan = [("channel", channel.as_str())];
    assert_eq!(seen.counter(&snap, names::BACKPLANE_RECONNECTS, &chan), 2);
    assert_eq!(seen.gauges.get(&id(names::BACKPLANE_CONNECTED, &chan)), Some(&1.0));

    // A server whose eviction policy may evict generations and the log's epoch: said at
    // connect (the first server poll), as a gauge per policy.
    let evicting = OwnRedis::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let _l3 =
        RedisTier::builder(RedisConnection::standalone(evicting.url())).build().await.unwrap();
    let unsafe_policy = id(names::UNSAFE_EVICTION_POLICY, &[("policy", "allkeys-lru")]);
    eventually(Duration::from_secs(5), "the eviction policy reported", || {
        seen.update(&snap);
        let got = seen.gauges.get(&unsafe_policy).copied();
        async move { got == Some(1.0) }
    })
    .await;

    // Write retries, labelled with the hierarchy's cache and tier names once mounted.
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], server.port))).await;
    let via_proxy = RedisConnection::standalone(proxy.url())
        .connect_timeout(Duration::from_millis(100))
        .response_timeout(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let l3 = RedisTier::builder(via_proxy).prefix(unique_prefix("retry")).build().await.unwrap();
    let cache: Cache<String> = Cache::builder("retrying")
        .tier(l3.clone(), TierPolicy::fresh(Duration::from_secs(60)).name("l3"))
        .build()
        .unwrap();
    proxy.cut();
    assert!(cache.insert(cache.key("k"), "v".to_string()).await.is_err());
    let queued = [("cache", "retrying"), ("tier", "l3"), ("outcome", "queued")];
    assert_eq!(seen.counter(&snap, names::WRITE_RETRIES, &queued), 1);
    proxy.restore();
    eventually(Duration::from_secs(10), "retry written", || async { l3.pending_retries() == 0 })
        .await;
    let written = [("cache", "retrying"), ("tier", "l3"), ("outcome", "written")];
    assert_eq!(seen.counter(&snap, names::WRITE_RETRIES, &written), 1);
    let queue = id(names::RETRY_QUEUE, &[("cache", "retrying"), ("tier", "l3")]);
    assert!(seen.keys.contains(&queue), "{:?}", seen.keys);

    // Per-master breakers of a Cluster (one master of the test's own, to lose it): a state per
    // master once mounted, keys refused while it is open, topology reads.
    let mut nodes = own_cluster(1).await;
    let conn = connect_quick(RedisConnection::cluster([nodes[0].url()])).await;
    let l3 = data_tier(&conn, &unique_prefix("nodes")).await;
    let cache: Cache<String> = Cache::builder("nodes")
        .tier(l3.clone(), TierPolicy::fresh(Duration::from_secs(60)).name("l3"))
        .build()
        .unwrap();
    let node = format!("127.0.0.1:{}", nodes[0].port);
    let state =
        id(names::NODE_BREAKER_STATE, &[("cache", "nodes"), ("tier", "l3"), ("node", &node)]);
    seen.update(&snap);
    assert!(seen.keys.contains(&state), "{state} not in {:?}", seen.keys);
    let refreshed = [("cache", ""), ("tier", "redis"), ("result", "ok")];
    assert_eq!(seen.counter(&snap, names::TOPOLOGY_REFRESHES, &refreshed), 1, "read at build");
    nodes[0].kill();
    eventually(Duration::from_secs(10), "the master's breaker opens", || async {
        let _ = cache.get(&cache.key("k")).await;
        l3.node_breakers() == [(node.clone(), tier_core::BreakerState::Open)]
    })
    .await;
    assert!(cache.get(&cache.key("k")).await.is_none());
    let skipped = [("cache", "nodes"), ("tier", "l3"), ("node", &node), ("reason", "open")];
    assert!(seen.counter(&snap, names::NODE_SKIPPED, &skipped) >= 1);
    seen.update(&snap);
    assert_eq!(seen.gauges.get(&state), Some(&2.0), "open");
}

//! A Redis Cluster that loses a master, under a real hierarchy with the default breaker of the
//! whole tier: the lost master's breaker inside the tier opens, its keys cost next to nothing
//! (they go to the loader at once), the other masters' keys stay L3 hits, the breaker of the
//! whole tier stays closed, and every key is an L3 hit again soon after the master returns.
//!
//! The cluster is the test's own (three masters, no replicas), so that killing or pausing a
//! node disturbs no other test. It runs with `cluster-require-full-coverage no`, so that the
//! masters left keep serving their slots; with Redis's default (`yes`) every node refuses every
//! command once the lost master is marked failed (after `cluster-node-timeout`), and the cache
//! then answers everything from the loader, like the killed standalone server of
//! `hierarchy_faults.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use tier_core::spi::{Tier, TAG_CLOCK_PREFIX};
use tier_core::{BreakerState, Cache, CallOptions, TierErrorKind, TierPolicy};
use tier_memory::MemoryTier;
use tier_redis::{RedisConnection, RedisGenerations, RedisInspector, RedisTier};

/// The hierarchy's timeout around the Redis tier.
const TIMEOUT: Duration = Duration::from_millis(150);
/// What a lost master's key may cost once its breaker is open (the acceptance bound).
const OPEN_COST: Duration = Duration::from_millis(5);
/// How soon after the master returns every key must be an L3 hit again.
const BACK_WITHIN: Duration = Duration::from_secs(20);

/// The tests of this file measure latencies: one at a time (the 16 callers of one would be
/// the other's noise).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A cache over the Cluster's Redis tier alone, with the hierarchy's default breaker and a
/// timeout of [`TIMEOUT`].
struct Setup {
    nodes: Vec<OwnRedis>,
    l3: RedisTier,
    cache: Cache<String>,
    /// Ids whose keys live on master 1 (the one to be lost) and on the others.
    lost: Vec<String>,
    healthy: Vec<String>,
}

impl Setup {
    async fn new(name: &str, on_lost: usize, on_others: usize) -> Self {
        let nodes = own_cluster(3).await;
        let urls: Vec<String> = nodes.iter().map(OwnRedis::url).collect();
        let conn = connect_quick(RedisConnection::cluster(urls.clone())).await;
        let l3 = data_tier(&conn, &unique_prefix(name)).await;
        let cache = Cache::builder(name)
            .tier(l3.clone(), TierPolicy::fresh(Duration::from_secs(600)).timeout(TIMEOUT))
            .build()
            .unwrap();
        // The cluster says where each id lives.
        let mut admin = raw(&urls[0]).await;
        let (first, last) = slot_range(1, 3);
        let (mut lost, mut healthy) = (Vec::new(), Vec::new());
        for i in 0.. {
            if lost.len() == on_lost && healthy.len() == on_others {
                break;
            }
            let id = format!("user:{i}");
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(l3.redis_key(&cache.key(&id)))
                .query_async(&mut admin)
                .await
                .unwrap();
            let (side, wanted) = if (first..=last).contains(&slot) {
                (&mut lost, on_lost)
            } else {
                (&mut healthy, on_others)
            };
            if side.len() < wanted {
                side.push(id);
            }
        }
        Self { nodes, l3, cache, lost, healthy }
    }

    /// The lost master's breaker inside the tier.
    fn lost_breaker(&self) -> BreakerState {
        let address = format!("127.0.0.1:{}", self.nodes[1].port);
        self.l3
            .node_breakers()
            .into_iter()
            .find(|(node, _)| *node == address)
            .map(|(_, s)| s)
            .unwrap_or_else(|| panic!("{address} is not among {:?}", self.l3.node_breakers()))
    }

    /// The breaker of the whole tier, in the hierarchy.
    fn tier_breaker(&self) -> BreakerState {
        self.cache.tiers()[0].breaker.expect("the Redis tier has the default breaker")
    }

    fn all(&self) -> Vec<String> {
        self.healthy.iter().chain(&self.lost).cloned().collect()
    }

    /// Every id loaded once, then an L3 hit.
    async fn fill(&self) {
        let ids = self.all();
        let (loaded, _) = pass(&self.cache, &ids).await;
        assert_eq!(loaded.len(), ids.len(), "first pass: every id loaded");
        let (loaded, _) = pass(&self.cache, &ids).await;
        assert!(loaded.is_empty(), "second pass: all L3 hits, loaded {loaded:?}");
    }

    /// After the lost master is back: within [`BACK_WITHIN`], its breaker is closed and every
    /// id is an L3 hit (its own ids are loaded once more: the master lost its data or missed
    /// the writes).
    async fn comes_back(&self) -> Duration {
        let started = Instant::now();
        let ids = self.all();
        loop {
            pass(&self.cache, &self.lost).await;
            let (loaded, _) = pass(&self.cache, &ids).await;
            if loaded.is_empty() && self.lost_breaker() == BreakerState::Closed {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < BACK_WITHIN,
                "not all L3 hits {BACK_WITHIN:?} after the master returned: still loading \
                 {loaded:?}, its breaker {:?}",
                self.lost_breaker()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Get every id once; returns the ids that had to be loaded and how long each get took.
async fn pass(cache: &Cache<String>, ids: &[String]) -> (Vec<String>, Vec<Duration>) {
    let mut loaded = Vec::new();
    let mut took = Vec::with_capacity(ids.len());
    for id in ids {
        let loads = Loads::default();
        let started = Instant::now();
        assert_eq!(get(cache, &loads, id).await, format!("v:{id}"));
        took.push(started.elapsed());
        if loads.get() > 0 {
            loaded.push(id.clone());
        }
    }
    (loaded, took)
}

/// The acceptance figures of an outage, printed: at least 99 % of the `healthy` gets of the
/// masters that are up were L3 hits (`loaded` went to the origin), and a lost key cost at most
/// [`OPEN_COST`] (p99) with its master's breaker open — or, on a machine so busy that an L3 hit
/// takes longer, no more than a hit did meanwhile — never the timeout.
fn outage_figures(
    what: &str,
    healthy: usize,
    loaded: usize,
    hit_cost: &mut [Duration],
    lost_cost: &mut [Duration],
) {
    assert!(!lost_cost.is_empty(), "{what}: no lost key was read with its breaker open");
    let p99 = quantile(lost_cost, 0.99);
    let hit_p99 = quantile(hit_cost, 0.99);
    eprintln!(
        "{what}: {healthy} healthy gets (p99 {hit_p99:?}), {loaded} loaded; {} lost-key gets \
         with its breaker open, p50 {:?}, p99 {p99:?}, max {:?}",
        lost_cost.len(),
        quantile(lost_cost, 0.5),
        quantile(lost_cost, 1.0)
    );
    let hits = 1.0 - loaded as f64 / healthy as f64;
    assert!(hits >= 0.99, "{what}: {loaded} of {healthy} healthy gets were loaded");
    assert!(
        p99 <= OPEN_COST.max(hit_p99),
        "{what}: a lost key costs {p99:?} (p99) with its master's breaker open; a hit {hit_p99:?}"
    );
}

/// The `q`-quantile of `d` (0.0–1.0).
fn quantile(d: &mut [Duration], q: f64) -> Duration {
    d.sort();
    d[((d.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_takes_out_its_own_keys_and_nothing_else() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut s = Setup::new("cluster-kill", 10, 40).await;
    s.fill().await;
    assert!(s.l3.node_breakers().iter().all(|(_, b)| *b == BreakerState::Closed));

    s.nodes[1].kill();
    // The tier itself, until the lost master's breaker opens: its keys fail with an error that
    // says a part of the tier is sick (partial: not counted against the whole tier's
    // breaker), within the connection's bound; then they answer CircuitOpen at once.
    let op_timeout = QUICK_CONNECT + QUICK_RESPONSE;
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.lost_breaker() != BreakerState::Open {
        assert!(Instant::now() < deadline, "the lost master's breaker never opened");
        let key = s.cache.key(&s.lost[0]);
        let started = Instant::now();
        let e = Tier::get(&s.l3, &key).await.expect_err("the master is lost");
        assert!(started.elapsed() < op_timeout + Duration::from_millis(100));
        assert!(
            e.kind() == TierErrorKind::CircuitOpen
                || e.is_partial()
                    && matches!(e.kind(), TierErrorKind::Unavailable | TierErrorKind::Timeout),
            "{e:?}"
        );
    }
    for id in &s.healthy {
        assert!(Tier::get(&s.l3, &s.cache.key(id)).await.unwrap().is_hit(), "{id} is up");
    }
    // What a tool shows meanwhile: the lost master does not answer its PING, the others do.
    let health = RedisInspector::new(s.l3.connection().clone(), "").node_health().await.unwrap();
    let lost_node = format!("127.0.0.1:{}", s.nodes[1].port);
    assert_eq!(health.len(), 3);
    for h in &health {
        assert_eq!(h.ping.is_err(), h.node == lost_node, "{h:?}");
    }
    let started = Instant::now();
    let e = Tier::get(&s.l3, &s.cache.key(&s.lost[0])).await.unwrap_err();
    assert_eq!(e.kind(), TierErrorKind::CircuitOpen, "{e}");
    assert!(started.elapsed() < OPEN_COST, "refused at once: {:?}", started.elapsed());

    // Batches: the open master's keys are misses, the others' hits; writes to it are skipped.
    let keys: Vec<Bytes> = s.all().iter().map(|id| s.cache.key(id)).collect();
    let lookups = s.l3.get_many(&keys).await.expect("the healthy masters answer");
    for (id, lookup) in s.all().iter().zip(&lookups) {
        assert_eq!(lookup.is_hit(), s.healthy.contains(id), "{id}: {lookup:?}");
    }
    let lost_keys: Vec<Bytes> = s.lost.iter().map(|id| s.cache.key(id)).collect();
    let e = s.l3.get_many(&lost_keys).await.expect_err("no master answered");
    assert_eq!(e.kind(), TierErrorKind::CircuitOpen, "{e}");
    // (The values the loader gives, so that the passes below find what they expect.)
    let entries: Vec<(Bytes, _)> = s
        .all()
        .iter()
        .zip(&keys)
        .map(|(id, k)| (k.clone(), entry(&format!("v:{id}:batch"), 600_000, 600_000)))
        .collect();
    s.l3.insert_many(entries).await.expect("written where the masters are up");
    let again = s.l3.get_many(&keys).await.unwrap();
    for (id, lookup) in s.all().iter().zip(&again) {
        match lookup.entry() {
            Some(e) => assert_eq!(value_of(e), format!("v:{id}:batch")),
            None => assert!(s.lost.contains(id), "{id}: {lookup:?}"),
        }
    }
    let entries = s.all().into_iter().zip(&keys);
    let entries = entries.map(|(id, k)| (k.clone(), entry(&format!("v:{id}"), 600_000, 600_000)));
    s.l3.insert_many(entries.collect()).await.unwrap();
    assert_eq!(s.l3.pending_retries(), 0, "skipped writes are not queued");
    // A removal is not skipped silently: it fails at once (nothing is sent to the lost master)
    // and waits for a retry, which is made once the master is back.
    let started = Instant::now();
    let e = s.l3.remove(&s.cache.key(&s.lost[0])).await.unwrap_err();
    assert!(e.kind() == TierErrorKind::Unavailable && e.is_partial(), "{e:?}");
    assert!(started.elapsed() < OPEN_COST, "{:?}", started.elapsed());
    assert_eq!(s.l3.pending_retries(), 1);

    // Through the hierarchy, while the master is down: the lost keys go to the loader at once,
    // the others stay L3 hits, the whole tier's breaker stays closed.
    let (mut lost_cost, mut hit_cost) = (Vec::new(), Vec::new());
    let (mut healthy_gets, mut healthy_loaded) = (0usize, 0usize);
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let (loaded, took) = pass(&s.cache, &s.healthy).await;
        hit_cost.extend(took);
        healthy_gets += s.healthy.len();
        healthy_loaded += loaded.len();
        let (loaded, took) = pass(&s.cache, &s.lost).await;
        assert_eq!(loaded, s.lost, "the lost master's ids are loaded");
        lost_cost.extend(took);
        assert_eq!(s.tier_breaker(), BreakerState::Closed, "the whole tier's breaker");
    }
    outage_figures("killed master", healthy_gets, healthy_loaded, &mut hit_cost, &mut lost_cost);

    // Back (same port, same nodes.conf: same node, same slots, no data).
    s.nodes[1].restart();
    let back = s.comes_back().await;
    eventually(BACK_WITHIN, "the queued removal is sent", || async { s.l3.pending_retries() == 0 })
        .await;
    eprintln!("killed master: all L3 hits {back:?} after it returned");
    assert_eq!(s.tier_breaker(), BreakerState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_master_is_answered_before_the_hierarchy_timeout_under_concurrency() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let s = Arc::new(Setup::new("cluster-pause", 20, 40).await);
    s.fill().await;

    // 16 callers getting every id in turn while master 1 stops answering (SIGSTOP: its
    // connections stay open, nothing comes back, as with a host cut off). Each call to it ends
    // at the tier's own deadline, just before the hierarchy's timeout: the failures are the
    // master's, so the whole tier's breaker does not open, even with many of them at once.
    s.nodes[1].pause();
    let paused_at = Instant::now();
    let callers: Vec<_> = (0..16)
        .map(|c| {
            let s = s.clone();
            tokio::spawn(async move {
                let (mut healthy, mut healthy_loaded) = (0usize, 0usize);
                let (mut healthy_cost, mut lost_cost) = (Vec::new(), Vec::new());
                let ids = s.all();
                let until = Instant::now() + Duration::from_secs(3);
                let mut i = c;
                while Instant::now() < until {
                    let id = &ids[i % ids.len()];
                    i += 1;
                    let open = s.lost_breaker() == BreakerState::Open;
                    let loads = Loads::default();
                    let started = Instant::now();
                    get(&s.cache, &loads, id).await;
                    let took = started.elapsed();
                    assert!(took < TIMEOUT + Duration::from_millis(250), "{id}: {took:?}");
                    if s.lost.contains(id) {
                        if open {
                            lost_cost.push(took);
                        }
                    } else {
                        healthy += 1;
                        healthy_loaded += loads.get();
                        healthy_cost.push(took);
                    }
                    assert_eq!(s.tier_breaker(), BreakerState::Closed, "the whole tier's breaker");
                }
                (healthy, healthy_loaded, healthy_cost, lost_cost)
            })
        })
        .collect();
    let (mut healthy, mut healthy_loaded) = (0, 0);
    let (mut healthy_cost, mut lost_cost) = (Vec::new(), Vec::new());
    for c in callers {
        let (h, l, h_cost, l_cost) = c.await.unwrap();
        healthy += h;
        healthy_loaded += l;
        healthy_cost.extend(h_cost);
        lost_cost.extend(l_cost);
    }
    // Open, or half-open while the background probe waits for the paused master.
    assert_ne!(s.lost_breaker(), BreakerState::Closed, "opened within {:?}", paused_at.elapsed());
    // (16 callers on two worker threads queue behind each other: hits take longer too.)
    let what = "paused master, 16 callers";
    outage_figures(what, healthy, healthy_loaded, &mut healthy_cost, &mut lost_cost);

    s.nodes[1].resume();
    let back = s.comes_back().await;
    eprintln!("paused master: all L3 hits {back:?} after it resumed");
    assert_eq!(s.tier_breaker(), BreakerState::Closed);
}

/// The slot of `key` in the test's own cluster.
async fn keyslot(admin: &mut redis::aio::MultiplexedConnection, key: &[u8]) -> u16 {
    redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(admin).await.unwrap()
}

/// The checker's long run on the Cluster (issue 13): the generation store had one breaker
/// for the whole store, so a lost master's tags — whose calls failed five in a row — opened
/// it for every tag (13,175 tagged inserts failed). Now each master has its own inside
/// `RedisGenerations`: the lost master's tags answer `CircuitOpen` at once (their entries are
/// stale, their invalidation fails), a failure attributed to a master is partial, and the
/// hierarchy's guard of the whole store stays closed: the other tags' entries stay fresh and
/// loads under them are cached. Each round reads the lost tags' entries first, which opened
/// the store's breaker before the healthy ones were read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_takes_out_its_own_tags_and_nothing_else() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut nodes = own_cluster(3).await;
    let urls: Vec<String> = nodes.iter().map(OwnRedis::url).collect();
    let mut admin = raw(&urls[0]).await;
    let conn = connect_quick(RedisConnection::cluster(urls.clone())).await;
    let generations = RedisGenerations::new(conn).prefix(unique_prefix("gens-kill"));
    let (first, last) = slot_range(1, 3);
    let on_lost = |slot: u16| (first..=last).contains(&slot);
    // A cache whose tag clock (read by every tagged load) lives on a master that stays.
    let mut name = String::new();
    for i in 0.. {
        name = format!("gens-kill-{i}");
        let clock = generations.redis_key(&format!("{TAG_CLOCK_PREFIX}{name}"));
        if !on_lost(keyslot(&mut admin, &clock).await) {
            break;
        }
    }
    let (mut lost, mut healthy) = (Vec::new(), Vec::new());
    for i in 0.. {
        if lost.len() == 5 && healthy.len() == 20 {
            break;
        }
        let tag = format!("team:{i}");
        let (side, wanted) = if on_lost(keyslot(&mut admin, &generations.redis_key(&tag)).await) {
            (&mut lost, 5)
        } else {
            (&mut healthy, 20)
        };
        if side.len() < wanted {
            side.push(tag);
        }
    }
    let cache: Cache<String> = Cache::builder(name.as_str())
        .tier(MemoryTier::builder().build(), TierPolicy::fresh(Duration::from_secs(600)))
        .generations(Arc::new(generations.clone()))
        .build()
        .unwrap();
    cache.sync_namespace().await.unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    let load = |tag: &String| {
        let options = CallOptions::new().tags([tag.clone()]);
        let (cache, loads, tag) = (cache.clone(), loads.clone(), tag.clone());
        async move {
            let expected = format!("v:{tag}");
            let answer = expected.clone();
            let value = cache
                .get_or_load_with(&cache.key(&tag), &options, move || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::convert::Infallible>(Some(answer))
                })
                .await
                .unwrap();
            assert_eq!(value.as_deref(), Some(&expected), "{tag}");
        }
    };
    for tag in lost.iter().chain(&healthy) {
        load(tag).await;
    }
    assert_eq!(loads.load(Ordering::SeqCst), 25);
    eventually(Duration::from_secs(10), "the store knows the masters", || async {
        generations.node_breakers().len() == 3
    })
    .await;

    nodes[1].kill();
    let lost_open = || {
        let address = format!("127.0.0.1:{}", nodes[1].port);
        generations.node_breakers().iter().any(|(a, b)| *a == address && *b == BreakerState::Open)
    };
    let (mut fresh, mut reads, mut lost_cost) = (0usize, 0usize, Vec::new());
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        for tag in &lost {
            let open = lost_open();
            let started = Instant::now();
            assert_eq!(cache.get(cache.key(tag)).await, None, "{tag}: its master is lost");
            if open {
                lost_cost.push(started.elapsed());
            }
        }
        for tag in &healthy {
            reads += 1;
            fresh += usize::from(cache.get(cache.key(tag)).await.is_some());
        }
    }
    assert!(lost_open(), "the lost master's breaker opened");
    let share = fresh as f64 / reads as f64;
    lost_cost.sort();
    let p99 = lost_cost[lost_cost.len() * 99 / 100];
    eprintln!(
        "killed master: {fresh} of {reads} reads of healthy tags' entries fresh ({share:.4}); lost tags' reads p99 {p99:?} once its breaker was open ({} reads)",
        lost_cost.len()
    );
    assert!(share >= 0.99, "healthy tags' entries stay fresh: {fresh} of {reads}");
    assert!(p99 < OPEN_COST, "a lost tag costs next to nothing once open: p99 {p99:?}");

    // Invalidations: a healthy tag's works and its next load is cached; a lost tag's fails
    // at once and says so.
    cache.invalidate_tag(&healthy[0]).await.expect("its master is up");
    load(&healthy[0]).await;
    load(&healthy[0]).await;
    assert_eq!(loads.load(Ordering::SeqCst), 26, "loaded once after its invalidation, then a hit");
    let started = Instant::now();
    let e = cache.invalidate_tag(&lost[0]).await.expect_err("its master is lost");
    assert!(started.elapsed() < OPEN_COST, "refused at once: {:?} {e}", started.elapsed());

    // Back (same port, same nodes.conf, no data: its generations are gone, so its tags'
    // entries stay stale until loaded again).
    nodes[1].restart();
    let back = eventually(BACK_WITHIN, "a lost tag can be invalidated again", || async {
        cache.invalidate_tag(&lost[0]).await.is_ok()
    })
    .await;
    assert!(generations.node_breakers().iter().all(|(_, b)| *b == BreakerState::Closed));
    eprintln!("killed master: its tags can be invalidated again {back:?} after it returned");
}

//! The Redis tier beside its peer, in the same run:
//! - `redis/l3_hit`: an L3 hit through the tier (and through `Cache::get` with Redis as the only
//!   tier) vs a raw redis-rs `GET` of the same bytes on the same kind of connection, and vs that
//!   `GET` plus the decoding of the value (`raw_get_decode`: the work of `Cache::get` without
//!   the hierarchy).
//! - `redis/batch_100`: `get_many` of 100 keys vs 100 sequential `get`s.
//! - (paired only) the write path: `insert` through the compare-and-set script vs a raw
//!   `SET … PX` of the same bytes; `Cache::insert` vs that `SET`, without and with the fleet
//!   state (Redis generations and the backplane: the notice and the namespace version read
//!   after the write).
//!
//! Everything runs on a current-thread runtime: the caller and the connection's driver task on
//! one thread, as a request handler and its connection on one worker. On the multi-thread
//! runtime this bench used before (`block_on` on the main thread, one worker driving the
//! connection), each GET paid two cross-thread wake-ups; on a loaded 2-core machine their
//! latency came in phases (17 µs or 75–150 µs per GET for seconds at a time) and landed on
//! whichever side ran then — the "raw GET slows down beside the tier" of earlier figures.
//!
//! The anchor, a raw GET in a process of its own: `cargo bench -p tier-benches --bench redis --
//! l3_hit/raw_redis_get`.
//!
//! Needs a redis-server: uses `TIER_BENCH_REDIS_URL` (or `TIER_TEST_REDIS_URL`) when set, otherwise
//! starts its own `redis-server` from PATH on a free loopback port and kills it (by PID) at the end.
//!
//! `cargo bench -p tier-benches --bench redis`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use redis::AsyncCommands;
use tier_benches::{user, User};
use tier_core::spi::{Codec, Entry, Meta, Tier};
use tier_core::{Cache, TierPolicy};
use tier_redis::{RedisConnection, RedisTier};
use tokio::runtime::Runtime;

/// A redis-server of the bench's own, killed by PID when dropped.
struct OwnServer(Child);

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

static SERVER: OnceLock<(String, Option<std::sync::Mutex<OwnServer>>)> = OnceLock::new();

fn server_url() -> &'static str {
    let (url, _) = SERVER.get_or_init(|| {
        for var in ["TIER_BENCH_REDIS_URL", "TIER_TEST_REDIS_URL"] {
            if let Ok(url) = std::env::var(var) {
                return (url, None);
            }
        }
        for _ in 0..20 {
            let port =
                std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let dir = std::env::temp_dir().join(format!("tier-bench-redis-{port}"));
            std::fs::create_dir_all(&dir).unwrap();
            let mut child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server on PATH (or set TIER_BENCH_REDIS_URL)");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let url = format!("redis://127.0.0.1:{port}/");
                    return (url, Some(std::sync::Mutex::new(OwnServer(child))));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start a redis-server for the bench");
    });
    url
}

/// The hierarchy's timeout of the Redis tier. Not 50 ms: on a loaded shared machine the bench's
/// thread is descheduled for tens of ms at times, a get then answers a miss (the timeout) and
/// the bench's check of the hit fails; the timer costs the same whatever its duration.
const TIER_TIMEOUT: Duration = Duration::from_secs(1);

fn envelope(id: u64) -> Entry {
    let now = tier_core::spi::now_ms();
    let meta = Meta {
        created_at: now,
        fresh_until: now + 3_600_000,
        stale_until: now + 3_600_000,
        ..Meta::default()
    };
    Entry::from_envelope(Codec::default().encode(&meta, Some(&user(id))).unwrap()).unwrap()
}

fn l3_hit(c: &mut Criterion, rt: &Runtime) {
    let (tier, cache, mut raw) = rt.block_on(async {
        let conn = RedisConnection::standalone(server_url()).connect().await.unwrap();
        let tier = RedisTier::builder(conn).prefix("bench:l3:").build().await.unwrap();
        let cache: Cache<User> = Cache::builder("bench")
            .tier(tier.clone(), TierPolicy::fresh(Duration::from_secs(3600)).timeout(TIER_TIMEOUT))
            .build()
            .unwrap();
        cache.insert(cache.key("user:1"), user(1)).await.unwrap();
        // The raw peer: the same kind of connection (ConnectionManager), the same bytes.
        let raw =
            redis::Client::open(server_url()).unwrap().get_connection_manager().await.unwrap();
        (tier, cache, raw)
    });
    let cache_key = cache.key("user:1");
    let redis_key = tier.redis_key(&cache_key);
    rt.block_on(async {
        let stored: Option<Vec<u8>> = raw.get(&redis_key).await.unwrap();
        assert!(stored.is_some(), "the cache wrote its L3 entry under {redis_key:?}");
        assert!(cache.get(&cache_key).await.is_some());
    });

    let mut g = c.benchmark_group("redis/l3_hit");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw_redis_get", |b| {
        b.to_async(rt).iter(|| {
            let mut raw = raw.clone();
            let k = redis_key.clone();
            async move {
                let v: Option<Bytes> = raw.get(k).await.unwrap();
                assert!(v.is_some());
            }
        })
    });
    g.bench_function("raw_get_decode", |b| {
        b.to_async(rt).iter(|| {
            let mut raw = raw.clone();
            let k = redis_key.clone();
            async move { assert_eq!(decoded(raw.get(k).await.unwrap()).id, 1) }
        })
    });
    g.bench_function("tier_get", |b| {
        b.to_async(rt).iter(|| async { assert!(tier.get(&cache_key).await.unwrap().is_hit()) })
    });
    g.bench_function("cache_get", |b| {
        b.to_async(rt).iter(|| async { assert!(cache.get(&cache_key).await.is_some()) })
    });
    g.finish();
}

/// The value of an envelope read by a raw GET.
fn decoded(bytes: Option<Bytes>) -> User {
    let bytes = bytes.expect("stored");
    let (meta, at) = tier_core::spi::envelope::decode_meta(&bytes).unwrap();
    tier_core::spi::envelope::decode_value::<User>(&bytes, &meta, at).unwrap().expect("a value")
}

fn batch(c: &mut Criterion, rt: &Runtime) {
    let (tier, keys) = rt.block_on(async {
        let tier = RedisTier::builder(RedisConnection::standalone(server_url()))
            .prefix("bench:batch:")
            .build()
            .await
            .unwrap();
        let keys: Vec<Bytes> = (0..100).map(|i| Bytes::from(format!("user:{i}"))).collect();
        tier.insert_many(
            keys.iter().enumerate().map(|(i, k)| (k.clone(), envelope(i as u64))).collect(),
        )
        .await
        .unwrap();
        (tier, keys)
    });
    let mut g = c.benchmark_group("redis/batch_100");
    g.throughput(Throughput::Elements(100));
    g.bench_function(BenchmarkId::new("get_many", 100), |b| {
        b.to_async(rt).iter(|| async {
            let got = tier.get_many(&keys).await.unwrap();
            assert!(got.iter().all(|l| l.is_hit()));
        })
    });
    g.bench_function(BenchmarkId::new("sequential_get", 100), |b| {
        b.to_async(rt).iter(|| async {
            for k in &keys {
                assert!(tier.get(k).await.unwrap().is_hit());
            }
        })
    });
    g.finish();
}

/// Median and mean of `samples` (ns).
fn stats(samples: &mut [u64]) -> (u64, u64) {
    samples.sort_unstable();
    (samples[samples.len() / 2], samples.iter().sum::<u64>() / samples.len() as u64)
}

/// Criterion measures one function after the other, so on a small shared machine a change of
/// background load lands on one side only. This runs both sides alternately, `rounds` times
/// each, and prints the ratio of their medians and means: the figure the targets are about.
async fn paired<A, AF, B, BF>(label: &str, rounds: usize, per_op: u64, mut a: A, mut b: B) -> f64
where
    A: FnMut() -> AF,
    AF: std::future::Future<Output = ()>,
    B: FnMut() -> BF,
    BF: std::future::Future<Output = ()>,
{
    let (mut ta, mut tb) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        let s = Instant::now();
        a().await;
        ta.push(s.elapsed().as_nanos() as u64 / per_op);
        let s = Instant::now();
        b().await;
        tb.push(s.elapsed().as_nanos() as u64);
    }
    let ((ma, ava), (mb, avb)) = (stats(&mut ta), stats(&mut tb));
    let ratio = ma as f64 / mb as f64;
    println!(
        "paired {label}: median {ma} ns vs {mb} ns = {ratio:.3}x (means {ava} vs {avb} ns = {:.3}x), {rounds} rounds",
        ava as f64 / avb as f64
    );
    ratio
}

fn paired_summary(rt: &Runtime) {
    rt.block_on(async {
        let tier = RedisTier::builder(RedisConnection::standalone(server_url()))
            .prefix("bench:paired:")
            .build()
            .await
            .unwrap();
        let cache: Cache<User> = Cache::builder("bench-paired")
            .tier(tier.clone(), TierPolicy::fresh(Duration::from_secs(3600)).timeout(TIER_TIMEOUT))
            .build()
            .unwrap();
        let key = cache.key("user:1");
        cache.insert(&key, user(1)).await.unwrap();
        let redis_key = tier.redis_key(&key);
        let raw =
            redis::Client::open(server_url()).unwrap().get_connection_manager().await.unwrap();
        let raw_get = || {
            let mut raw = raw.clone();
            let k = redis_key.clone();
            async move {
                let v: Option<Bytes> = raw.get(k).await.unwrap();
                assert!(v.is_some());
            }
        };
        paired(
            "cache_get / raw_redis_get",
            20_000,
            1,
            || async { assert!(cache.get(&key).await.is_some()) },
            raw_get,
        )
        .await;
        let raw_get_decode = || {
            let mut raw = raw.clone();
            let k = redis_key.clone();
            async move { assert_eq!(decoded(raw.get(k).await.unwrap()).id, 1) }
        };
        paired(
            "cache_get / raw_get_decode",
            20_000,
            1,
            || async { assert!(cache.get(&key).await.is_some()) },
            raw_get_decode,
        )
        .await;
        // The same hierarchy without the tier's timeout: the share of its timer (one tokio
        // timer per call, registered and cancelled) in the hierarchy's cost.
        let untimed: Cache<User> = Cache::builder("bench-paired-untimed")
            .tier(tier.clone(), TierPolicy::fresh(Duration::from_secs(3600)))
            .build()
            .unwrap();
        let untimed_key = untimed.key("user:1");
        untimed.insert(&untimed_key, user(1)).await.unwrap();
        paired(
            "cache_get without a tier timeout / raw_get_decode",
            20_000,
            1,
            || async { assert!(untimed.get(&untimed_key).await.is_some()) },
            || {
                let mut raw = raw.clone();
                let k = tier.redis_key(&untimed_key);
                async move { assert_eq!(decoded(raw.get(k).await.unwrap()).id, 1) }
            },
        )
        .await;
        paired(
            "tier_get / raw_redis_get",
            20_000,
            1,
            || async { assert!(tier.get(&key).await.unwrap().is_hit()) },
            raw_get,
        )
        .await;

        let keys: Vec<Bytes> = (0..100).map(|i| Bytes::from(format!("user:{i}"))).collect();
        tier.insert_many(
            keys.iter().enumerate().map(|(i, k)| (k.clone(), envelope(i as u64))).collect(),
        )
        .await
        .unwrap();
        // One get of a sequence of 100 (per key) vs one whole get_many(100): ×100 is the
        // per-key speed-up of the batch.
        let seq_per_key = paired(
            "sequential get (per key) / get_many(100) (whole batch)",
            300,
            100,
            || async {
                for k in &keys {
                    assert!(tier.get(k).await.unwrap().is_hit());
                }
            },
            || async {
                let got = tier.get_many(&keys).await.unwrap();
                assert!(got.iter().all(|l| l.is_hit()));
            },
        )
        .await;
        println!("paired batch speed-up per key: {:.1}x", seq_per_key * 100.0);

        // The write path: the compare-and-set script vs a raw SET of the same bytes with the
        // same PX. An insert wins a `created_at` tie, so every round stores.
        let now = tier_core::spi::now_ms();
        let meta = Meta {
            created_at: now,
            fresh_until: now + 3_600_000,
            stale_until: now + 3_600_000,
            insert: true,
            ..Meta::default()
        };
        let written =
            Entry::from_envelope(Codec::default().encode(&meta, Some(&user(2))).unwrap()).unwrap();
        let bytes = written.envelope().unwrap().clone();
        let raw_key = tier.redis_key(b"user:raw-write");
        let raw_set = || {
            let mut raw = raw.clone();
            let (k, v) = (raw_key.clone(), bytes.clone());
            async move {
                let _: () = raw.pset_ex(k, v.as_ref(), 3_600_000).await.unwrap();
            }
        };
        paired(
            "tier_insert (CAS script) / raw_redis_set",
            20_000,
            1,
            || async { tier.insert(Bytes::from_static(b"user:w"), written.clone()).await.unwrap() },
            raw_set,
        )
        .await;

        // `Cache::insert` with Redis as its only tier, without and with the fleet state of a
        // fleet (Redis generations and the stream backplane): the second pays the notice and
        // the namespace version read after the write (concurrent with the notice).
        let wkey = cache.key("user:w");
        paired(
            "cache_insert / raw_redis_set",
            20_000,
            1,
            || async { cache.insert(&wkey, user(2)).await.unwrap() },
            raw_set,
        )
        .await;
        let conn = RedisConnection::standalone(server_url()).connect().await.unwrap();
        let backplane = tier_redis::RedisBackplane::builder(conn.clone())
            .stream("bench:paired:log")
            .build()
            .await
            .unwrap();
        let generations = tier_redis::RedisGenerations::new(conn)
            .prefix("bench:paired:gen:")
            .cached_with(&backplane);
        let fleet: Cache<User> = Cache::builder("bench-fleet")
            .tier(tier.clone(), TierPolicy::fresh(Duration::from_secs(3600)).timeout(TIER_TIMEOUT))
            .generations(std::sync::Arc::new(generations))
            .backplane(std::sync::Arc::new(backplane), tier_core::ReconnectPolicy::CatchUp)
            .build()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), fleet.caught_up()).await.unwrap();
        let fkey = fleet.key("user:w");
        paired(
            "cache_insert with generations and backplane / raw_redis_set",
            20_000,
            1,
            || async { fleet.insert(&fkey, user(2)).await.unwrap() },
            raw_set,
        )
        .await;
    });
}

fn main() {
    // One thread: see the module docs.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    l3_hit(&mut c, &rt);
    batch(&mut c, &rt);
    c.final_summary();
    paired_summary(&rt);
    // Stop our own server (if we started one) before exiting.
    if let Some((_, Some(server))) = SERVER.get() {
        let mut s = server.lock().unwrap_or_else(|p| p.into_inner());
        let _ = s.0.kill();
        let _ = s.0.wait();
    }
}

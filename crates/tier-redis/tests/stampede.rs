//! Fleet stampede: 4 processes × 250 concurrent cold gets of one key, with the Redis lock on →
//! exactly one loader call in the whole fleet (counted with a Redis INCR).
//!
//! The test re-executes this test binary as the 4 "instances" (`--ignored --exact
//! stampede_instance` with `TIER_REDIS_STAMPEDE_PREFIX` set): `stampede_instance` is ignored in a
//! normal run because it is only one part of the fleet test, which runs it four times.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands;
use tier_core::{Cache, LockOptions, TierPolicy};
use tier_memory::MemoryTier;
use tier_redis::{RedisConnection, RedisLock};

const PREFIX_ENV: &str = "TIER_REDIS_STAMPEDE_PREFIX";
const PROCESSES: usize = 4;
const GETS: usize = 250;

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn four_processes_times_250_cold_gets_make_one_load() {
    let url = standalone_url();
    let prefix = unique_prefix("stampede");
    let exe = std::env::current_exe().unwrap();
    let mut children = Children(Vec::new());
    for _ in 0..PROCESSES {
        let child = Command::new(&exe)
            .args(["--ignored", "--exact", "stampede_instance", "--nocapture", "--test-threads=1"])
            .env(PREFIX_ENV, &prefix)
            .env("TIER_TEST_REDIS_URL", &url)
            .stdin(Stdio::null())
            .stdout(Stdio::null()) // libtest's lines of the children; panics go to stderr
            .spawn()
            .unwrap();
        children.0.push(child);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut raw = raw(&url).await;
        // Start every instance at once, when all are ready.
        let ready = format!("{prefix}ready");
        eventually(Duration::from_secs(60), "all instances ready", || {
            let mut raw = raw.clone();
            let ready = ready.clone();
            async move { raw.get::<_, Option<usize>>(&ready).await.unwrap() == Some(PROCESSES) }
        })
        .await;
        let _: () = raw.set(format!("{prefix}go"), 1).await.unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    for c in &mut children.0 {
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                assert!(status.success(), "an instance failed: {status}");
                break;
            }
            assert!(Instant::now() < deadline, "instances did not finish in time");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    rt.block_on(async {
        let mut raw = raw(&url).await;
        let answered: usize = raw.get(format!("{prefix}answered")).await.unwrap();
        assert_eq!(answered, PROCESSES * GETS, "every get answered with the value");
        let loads: usize = raw.get(format!("{prefix}loads")).await.unwrap();
        assert_eq!(loads, 1, "one loader call for the whole fleet");
    });
}

/// One instance of the fleet (run by the test above in a child process).
#[test]
#[ignore = "one instance of four_processes_times_250_cold_gets_make_one_load, which runs it"]
fn stampede_instance() {
    let prefix = std::env::var(PREFIX_ENV)
        .unwrap_or_else(|_| panic!("{PREFIX_ENV} is not set: this runs as part of the fleet test"));
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let url = standalone_url();
        let conn = RedisConnection::standalone(&url).connect().await.unwrap();
        let l3 = data_tier(&conn, &prefix).await;
        let cache: Cache<String> = Cache::builder("fleet")
            .tier(MemoryTier::builder().build(), TierPolicy::fresh(Duration::from_secs(60)))
            .tier(
                l3,
                TierPolicy::fresh(Duration::from_secs(60)).timeout(Duration::from_millis(500)),
            )
            .distributed_lock(
                Arc::new(RedisLock::new(conn).prefix(format!("{prefix}lock:"))),
                LockOptions::default(),
            )
            .build()
            .unwrap();
        let mut raw = raw(&url).await;
        let _: i64 = raw.incr(format!("{prefix}ready"), 1).await.unwrap();
        let go = format!("{prefix}go");
        eventually(Duration::from_secs(60), "go signal", || {
            let mut raw = raw.clone();
            let go = go.clone();
            async move { raw.exists::<_, bool>(&go).await.unwrap() }
        })
        .await;

        let key = cache.key("cold");
        let tasks: Vec<_> = (0..GETS)
            .map(|_| {
                let cache = cache.clone();
                let key = key.clone();
                let raw = raw.clone();
                let loads = format!("{prefix}loads");
                tokio::spawn(async move {
                    cache
                        .get_or_load(&key, move || async move {
                            let mut raw = raw;
                            let _: i64 = raw.incr(loads, 1).await?;
                            // A slow origin: every instance asks for the lock while it is held.
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            Ok::<_, redis::RedisError>(Some("value".to_string()))
                        })
                        .await
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            let v = t.await.unwrap().unwrap();
            assert_eq!(v.as_deref().map(String::as_str), Some("value"));
            ok += 1;
        }
        let _: i64 = raw.incr(format!("{prefix}answered"), ok).await.unwrap();
    });
}

async fn locked_cache(url: &str, prefix: &str, wait: Duration) -> (Cache<String>, RedisLock) {
    let conn = RedisConnection::standalone(url).connect().await.unwrap();
    let l3 = data_tier(&conn, prefix).await;
    let lock = RedisLock::new(conn).prefix(format!("{prefix}lock:"));
    let options = LockOptions { wait, ..LockOptions::default() };
    let cache = Cache::builder("locked")
        .tier(l3, TierPolicy::fresh(Duration::from_secs(60)))
        .distributed_lock(Arc::new(lock.clone()), options)
        .build()
        .unwrap();
    (cache, lock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_reads_the_value_another_instance_wrote() {
    use tier_core::spi::DistributedLock;
    let url = standalone_url();
    let prefix = unique_prefix("lock-appear");
    let (waiter, lock) = locked_cache(&url, &prefix, Duration::from_secs(5)).await;
    let (writer, _) = locked_cache(&url, &prefix, Duration::from_secs(5)).await;
    let key = waiter.key("k");
    // Another instance holds the lock (it is loading).
    let token = lock.try_acquire(&key, Duration::from_secs(30)).await.unwrap().expect("free");
    let task = {
        let (waiter, key) = (waiter.clone(), key.clone());
        tokio::spawn(async move {
            waiter
                .get_or_load(&key, || async {
                    Err::<Option<String>, _>(std::io::Error::other("must not load"))
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await; // the waiter is polling
    writer.insert(&key, "from the lock holder".to_string()).await.unwrap();
    lock.release(&key, &token).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap().unwrap();
    assert_eq!(got.as_deref().map(String::as_str), Some("from the lock holder"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_loads_itself_when_the_holder_never_delivers() {
    use tier_core::spi::DistributedLock;
    let url = standalone_url();
    let prefix = unique_prefix("lock-dead");
    let wait = Duration::from_millis(300);
    let (cache, lock) = locked_cache(&url, &prefix, wait).await;
    let key = cache.key("k");
    // A holder that died: the lock stays until its TTL.
    lock.try_acquire(&key, Duration::from_secs(30)).await.unwrap().expect("free");
    let start = Instant::now();
    let got = cache
        .get_or_load(&key, || async { Ok::<_, std::io::Error>(Some("loaded".to_string())) })
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(got.as_deref().map(String::as_str), Some("loaded"));
    assert!(took >= wait && took < wait + Duration::from_secs(2), "waited {took:?}");
}

//! Expiry and renewal in Redis (the retime script), against real servers: times rewritten in
//! place, compare-and-set like every write (never a newer write changed, never an older one
//! let in after an expiry), and an expiry on one instance reaching another's L1 as stale, not
//! gone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tier_core::spi::{now_ms, Entry, Lookup, Retime, Tier};
use tier_core::{Cache, CacheValue, LoadContext, Loaded, ReconnectPolicy, TierPolicy};
use tier_memory::MemoryTier;
use tier_redis::{RedisBackplane, RedisConnection, RedisGenerations, RedisTier};

const HOUR: Duration = Duration::from_secs(3600);

async fn meta(tier: &RedisTier, k: &str) -> Option<tier_core::spi::Meta> {
    tier.get(k.as_bytes()).await.unwrap().into_entry().map(|e| e.meta)
}

/// An envelope created at `created_at`, fresh for an hour, stale for another (a load's: no tie
/// win).
fn created(value: &str, created_at: u64) -> Entry {
    let mut e = entry(value, 3_600_000, 7_200_000);
    e.meta.created_at = created_at;
    e.meta.insert = false;
    let bytes = tier_core::spi::Codec::default().encode(&e.meta, Some(&value.to_string())).unwrap();
    Entry::from_envelope(bytes).unwrap()
}

async fn retime_script_keeps_the_write_rules(conn: RedisConnection) {
    let tier = data_tier(&conn, &unique_prefix("retime")).await;
    let now = now_ms();

    // Expire: marked created at the expiry, fresh no longer, stale kept, TTL kept.
    tier.insert(key("a"), created("v", now - 10)).await.unwrap();
    let before = meta(&tier, "a").await.unwrap();
    let expire = Retime::Expire { at: now + 1, cut: now, floor: 0 };
    assert!(tier.retime(b"a", expire).await.unwrap());
    let m = meta(&tier, "a").await.unwrap();
    assert_eq!((m.created_at, m.fresh_until, m.stale_until), (now + 1, now, before.stale_until));
    assert!(matches!(tier.get(b"a").await.unwrap(), Lookup::Stale(_)));
    // A write that started before the expiry is refused; a later one lands.
    tier.insert(key("a"), created("older", now)).await.unwrap();
    assert_eq!(meta(&tier, "a").await.unwrap().created_at, now + 1, "older write refused");
    tier.insert(key("a"), created("newer", now + 2)).await.unwrap();
    assert_eq!(meta(&tier, "a").await.unwrap().created_at, now + 2);

    // A newer entry is not expired.
    assert!(!tier.retime(b"a", expire).await.unwrap());
    assert!(meta(&tier, "a").await.unwrap().fresh_until > now_ms());

    // Nothing there: a tombstone at the expiry refuses an older write.
    assert!(!tier.retime(b"none", expire).await.unwrap());
    tier.insert(key("none"), created("older", now)).await.unwrap();
    assert!(meta(&tier, "none").await.is_none(), "a tombstone answers a miss and refused it");
    tier.insert(key("none"), created("newer", now + 2)).await.unwrap();
    assert!(meta(&tier, "none").await.is_some());

    // Renew: only the entry revalidated (its exact created_at), value untouched.
    tier.insert(key("r"), created("kept", now - 10)).await.unwrap();
    let wrong = Retime::Renew {
        created_at: now - 11,
        renewed_at: now,
        fresh_until: now + 5_000_000,
        stale_until: now + 9_000_000,
    };
    assert!(!tier.retime(b"r", wrong).await.unwrap());
    let right = Retime::Renew {
        created_at: now - 10,
        renewed_at: now,
        fresh_until: now + 5_000_000,
        stale_until: now + 9_000_000,
    };
    assert!(tier.retime(b"r", right).await.unwrap());
    let got = tier.get(b"r").await.unwrap().into_entry().unwrap();
    assert_eq!(
        (got.meta.created_at, got.meta.fresh_until, got.meta.stale_until),
        (now, now + 5_000_000, now + 9_000_000)
    );
    assert_eq!(value_of(&got), "kept");
    let mut raw = raw_conn(&conn).await;
    let pttl: i64 =
        redis::cmd("PTTL").arg(tier_key(&tier, "r")).query_async(&mut raw).await.unwrap();
    assert!(pttl > 8_000_000, "the key lives until the new stale_until: {pttl}");
    // Endless times are written as bytes (not Lua numbers).
    let endless = Retime::Renew {
        created_at: now,
        renewed_at: now + 1,
        fresh_until: u64::MAX,
        stale_until: u64::MAX,
    };
    assert!(tier.retime(b"r", endless).await.unwrap());
    assert_eq!(meta(&tier, "r").await.unwrap().fresh_until, u64::MAX);
}

/// The Redis key of `k` in `tier`.
fn tier_key(tier: &RedisTier, k: &str) -> Vec<u8> {
    [tier.prefix(), k.as_bytes()].concat()
}

async fn raw_conn(_conn: &RedisConnection) -> redis::aio::MultiplexedConnection {
    raw(&standalone_url()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retime_script_expires_and_renews_without_letting_an_older_write_in() {
    let conn = RedisConnection::standalone(standalone_url()).connect().await.unwrap();
    retime_script_keeps_the_write_rules(conn).await;
}

struct Instance<V> {
    cache: Cache<V>,
    l1: Arc<MemoryTier>,
}

async fn instance<V: CacheValue>(prefix: &str, stream: &str) -> Instance<V> {
    let url = standalone_url();
    let conn = RedisConnection::standalone(&url).connect().await.unwrap();
    let bp_conn = RedisConnection::standalone(&url).connect().await.unwrap();
    let l3 = data_tier(&conn, prefix).await;
    let backplane = RedisBackplane::builder(bp_conn).stream(stream).build().await.unwrap();
    let generations =
        RedisGenerations::new(conn).prefix(format!("{prefix}gen:")).cached_with(&backplane);
    let l1 = Arc::new(MemoryTier::builder().max_bytes(16 << 20).build());
    let cache = Cache::builder("users")
        .tier(l1.clone(), TierPolicy::fresh(HOUR).stale(HOUR).no_breaker())
        .tier(l3, TierPolicy::fresh(HOUR).stale(HOUR).timeout(Duration::from_millis(500)))
        .generations(Arc::new(generations))
        .backplane(Arc::new(backplane), ReconnectPolicy::CatchUp)
        .fleet_state_timeout(Duration::from_secs(2))
        .synchronous_backfill(true)
        .build()
        .unwrap();
    Instance { cache, l1 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expire_on_one_instance_makes_anothers_l1_copy_stale_not_gone() {
    let prefix = unique_prefix("expire");
    let stream = format!("{prefix}log");
    let a: Instance<String> = instance(&prefix, &stream).await;
    let b: Instance<String> = instance(&prefix, &stream).await;
    b.cache.insert("k", "v".into()).await.unwrap();
    assert!(b.l1.get(b"k").await.unwrap().is_hit(), "b holds a fresh L1 copy");
    a.cache.expire("k").await.unwrap();
    eventually(Duration::from_secs(5), "b's L1 copy turning stale", || async {
        matches!(b.l1.get(b"k").await.unwrap(), Lookup::Stale(_))
    })
    .await;
    let hit = b.cache.try_get("k").await.expect("still servable");
    assert!(!hit.fresh);
    // b revalidates: not modified renews it in its L1 and in Redis; a sees it fresh there.
    b.cache
        .get_or_load_ctx("k", |ctx: LoadContext<String>| async move {
            assert!(ctx.previous().is_some());
            Ok::<_, std::io::Error>(ctx.not_modified())
        })
        .await
        .unwrap();
    assert!(b.l1.get(b"k").await.unwrap().is_hit());
    let hit = a.cache.try_get("k").await.expect("renewed in Redis");
    assert!(hit.fresh, "{hit:?}");
    // expire_all reaches b too (the expiry floor).
    let _ = Loaded::<String>::none();
    a.cache.expire_all().await.unwrap();
    eventually(Duration::from_secs(5), "b applying expire_all", || async {
        b.cache.try_get("k").await.is_some_and(|h| !h.fresh)
    })
    .await;
}

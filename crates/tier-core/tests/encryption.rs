//! Values sealed at rest (feature `encryption`) through a whole hierarchy over envelope tiers:
//! what a byte tier holds is ciphertext; an altered byte, an entry copied under another key or
//! into another cache's keyspace, a key the keyring lacks, an entry in clear — each is a miss
//! (the origin is asked) and a `tier_decode_errors_total`, never a wrong value; rotation keeps
//! old entries readable; backfill between byte tiers keeps the seal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, OnceLock};

use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tier_core::seal::{Keyring, Sealing};
use tier_core::spi::envelope::{decode_meta, FLAG_ENCRYPTED};
use tier_core::testing::sealing::{altered_bytes_are_misses, read_through};
use tier_core::testing::MapTier;
use tier_core::Cache;
use tier_memory::MemoryTier;

const OLD: [u8; 32] = [0x11; 32];
const NEW: [u8; 32] = [0x22; 32];
/// A value whose bytes are easy to look for in what a tier holds.
const SECRET: &str = "card number 4111-1111-1111-1111";

fn keyring() -> Keyring {
    Keyring::new(1, &OLD)
}

fn sealed_cache(name: &str, tier: &Arc<MapTier>, keyring: Keyring) -> Cache<String> {
    Cache::builder(name).tier(tier.clone(), exact(MINUTE)).keyring(keyring).build().unwrap()
}

/// What a read of `key` is served (`None`: a miss).
async fn read(cache: &Cache<String>, key: &[u8]) -> Option<String> {
    read_through(cache, key).await.unwrap()
}

fn recorder() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().unwrap();
        snapshotter
    })
}

/// `tier_decode_errors_total` of `cache` since the last call (a snapshot drains counters; only
/// one test reads them).
fn decode_errors(cache: &str) -> u64 {
    recorder()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, _, _, _)| {
            k.key().name() == tier_core::metrics::TIER_DECODE_ERRORS
                && k.key().labels().any(|l| l.key() == "cache" && l.value() == cache)
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(c) => c,
            _ => 0,
        })
        .sum()
}

#[tokio::test]
async fn a_byte_tier_holds_ciphertext_and_the_cache_reads_it_back() {
    let tier = Arc::new(MapTier::new("disk"));
    let cache = sealed_cache("cards", &tier, keyring());
    let key = cache.key("1");
    cache.insert(&key, SECRET.to_string()).await.unwrap();
    let stored = tier.raw(&key).expect("stored");
    assert!(!stored.windows(11).any(|w| w == &SECRET.as_bytes()[..11]), "plaintext at rest");
    assert_ne!(stored[4] & FLAG_ENCRYPTED, 0);
    let (meta, _) = decode_meta(&stored).unwrap();
    assert_eq!(Sealing::parse(meta.sealing.as_deref().unwrap()).unwrap().key_id, 1);
    assert_eq!(read(&cache, &key).await, Some(SECRET.to_string()));
    // A negative entry is sealed too: its "no value" authenticates like a value.
    let none = cache.key("none");
    let got = cache.get_or_load(&none, || async { Ok::<_, std::io::Error>(None) }).await.unwrap();
    assert!(got.is_none());
    let stored = tier.raw(&none).expect("negative stored");
    assert_ne!(stored[4] & FLAG_ENCRYPTED, 0);
    assert!(cache.get(&none).await.is_none());
}

#[tokio::test]
async fn any_altered_byte_is_a_miss_and_a_decode_error_never_a_wrong_value() {
    let tier = Arc::new(MapTier::new("disk"));
    let cache = sealed_cache("tamper", &tier, keyring());
    let key = cache.key("1");
    cache.insert_with_tags(&key, SECRET.to_string(), &["t"]).await.unwrap();
    let good = tier.raw(&key).expect("stored");
    decode_errors("tamper");
    let seen = altered_bytes_are_misses(&cache, &key, &good, SECRET, |bad| {
        tier.put_raw(key.clone(), bad);
        std::future::ready(())
    })
    .await
    .unwrap();
    let misses = seen.misses;
    assert_eq!((misses, seen.times), (good.len() - 16, 16));
    assert!(seen.times_served > 0, "the reads saw the altered bytes: {seen:?}");
    // Every altered entry is counted, but those whose tag generation was altered: an outdated
    // stamp makes the entry unusable before it is opened (a miss, not a decode error).
    assert!(decode_errors("tamper") >= misses as u64 - 8, "altered entries are counted");
}

#[tokio::test]
async fn an_entry_copied_under_another_key_or_into_another_cache_is_a_miss() {
    let tier = Arc::new(MapTier::new("disk"));
    let users = sealed_cache("users", &tier, keyring());
    let orders = sealed_cache("orders", &tier, keyring());
    let (k1, k2) = (users.key("1"), users.key("2"));
    users.insert(&k1, SECRET.to_string()).await.unwrap();
    let stored = tier.raw(&k1).unwrap();
    tier.put_raw(k2.clone(), stored.clone());
    assert_eq!(read(&users, &k2).await, None, "another key");
    let theirs = orders.key("1");
    tier.put_raw(theirs.clone(), stored.clone());
    assert_eq!(read(&orders, &theirs).await, None, "another cache");
    // The same bytes under another cache's name but the very same key: still the cache's name
    // is bound, not only the key.
    tier.put_raw(k1.clone(), stored);
    let twin = sealed_cache("users-twin", &tier, keyring());
    assert_eq!(read(&twin, &k1).await, None, "same key, other cache");
    assert_eq!(read(&users, &k1).await, Some(SECRET.to_string()), "the original opens");
}

#[tokio::test]
async fn rotation_keeps_old_entries_readable_and_seals_new_ones_with_the_new_key() {
    let tier = Arc::new(MapTier::new("disk"));
    let before = sealed_cache("rot", &tier, keyring());
    let old_key = before.key("old");
    before.insert(&old_key, "written before".to_string()).await.unwrap();
    drop(before);

    let rotated = Keyring::new(2, &NEW).with_old_key(1, &OLD).unwrap();
    let after = sealed_cache("rot", &tier, rotated);
    assert_eq!(read(&after, &old_key).await, Some("written before".to_string()));
    let new_key = after.key("new");
    after.insert(&new_key, "written after".to_string()).await.unwrap();
    let (meta, _) = decode_meta(&tier.raw(&new_key).unwrap()).unwrap();
    assert_eq!(Sealing::parse(meta.sealing.as_deref().unwrap()).unwrap().key_id, 2);

    // Once the old key is retired, entries sealed with it are misses (the origin is asked), the
    // new ones still open.
    let retired = sealed_cache("rot", &tier, Keyring::new(2, &NEW));
    assert_eq!(read(&retired, &old_key).await, None);
    assert_eq!(read(&retired, &new_key).await, Some("written after".to_string()));
    // A keyring with the right id but other material does not open either.
    let impostor = sealed_cache("rot", &tier, Keyring::new(2, &OLD));
    assert_eq!(read(&impostor, &new_key).await, None);
}

#[tokio::test]
async fn entries_in_clear_are_misses_for_a_sealing_cache_and_sealed_ones_for_a_plain_cache() {
    let tier = Arc::new(MapTier::new("disk"));
    let plain: Cache<String> =
        Cache::builder("mix").tier(tier.clone(), exact(MINUTE)).build().unwrap();
    let sealed = sealed_cache("mix", &tier, keyring());
    let (a, b) = (plain.key("a"), plain.key("b"));
    plain.insert(&a, "in clear".to_string()).await.unwrap();
    assert_eq!(read(&sealed, &a).await, None, "clear refused");
    sealed.insert(&b, SECRET.to_string()).await.unwrap();
    assert_eq!(read(&plain, &b).await, None, "no keyring: a miss");
}

#[tokio::test]
async fn backfill_between_byte_tiers_keeps_the_seal_and_the_l1_holds_objects() {
    let l1 = Arc::new(MemoryTier::builder().build());
    let (l2, l3) = (Arc::new(MapTier::new("disk")), Arc::new(MapTier::new("redis")));
    let cache: Cache<String> = Cache::builder("fill")
        .tier(l1.clone(), exact(MINUTE))
        .tier(l2.clone(), exact(MINUTE))
        .tier(l3.clone(), exact(MINUTE))
        .keyring(keyring())
        .synchronous_backfill(true)
        .build()
        .unwrap();
    let key = cache.key("1");
    let writer = sealed_cache("fill", &l3, keyring());
    writer.insert(&key, SECRET.to_string()).await.unwrap();
    assert_eq!(read(&cache, &key).await, Some(SECRET.to_string()));
    let copy = l2.raw(&key).expect("backfilled into the disk tier");
    assert_ne!(copy[4] & FLAG_ENCRYPTED, 0);
    // The copy was given its own (no longer) times in place; it opens on its own.
    tier_core::spi::Tier::clear(&*l1).await.unwrap();
    l3.put_raw(key.clone(), &b"gone"[..]);
    assert_eq!(read(&cache, &key).await, Some(SECRET.to_string()));
}

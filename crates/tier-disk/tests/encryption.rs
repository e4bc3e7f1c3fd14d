//! Values sealed at rest in a real disk tier (tier-core feature `encryption`): the segment
//! files hold no plaintext; every byte of a sealed record altered in its segment file, with the
//! record's CRC made valid again (as someone with write access to the disk could), is a miss; an entry copied under another
//! key or into another cache's keyspace is a miss; after a restart, a rotated keyring reads the
//! old entries and seals new ones with the new key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tier_core::seal::{Keyring, Sealing};
use tier_core::spi::envelope::decode_meta;
use tier_core::spi::{Entry, Tier, Value};
use tier_core::testing::sealing::{altered_bytes_are_misses, read_through};
use tier_core::{Cache, TierPolicy};
use tier_disk::{DiskTier, FlushPolicy};

const SECRET: &str = "the patient's diagnosis: confidential";
const OLD: [u8; 32] = [0x5a; 32];
const NEW: [u8; 32] = [0xa5; 32];

fn tier(dir: &std::path::Path) -> Arc<DiskTier> {
    let builder = DiskTier::builder(dir).capacity_bytes(8 << 20).segment_size(1 << 20);
    Arc::new(builder.flush(FlushPolicy::None).build().unwrap())
}

fn cache(name: &str, tier: &Arc<DiskTier>, keyring: Keyring) -> Cache<String> {
    Cache::builder(name)
        .tier(tier.clone(), TierPolicy::fresh(Duration::from_secs(3600)).jitter(0.0))
        .keyring(keyring)
        .build()
        .unwrap()
}

/// The envelope the tier holds for `key`.
async fn stored(tier: &DiskTier, key: &[u8]) -> Bytes {
    let lookup = tier.get(key).await.unwrap();
    lookup.entry().and_then(Entry::envelope).expect("an entry").clone()
}

/// Store `bytes` under `key` as they are (no check of the envelope: an altered header too).
async fn store_raw(tier: &DiskTier, key: &[u8], bytes: Vec<u8>, like: &Entry) {
    let size = bytes.len() as u32;
    let entry = Entry { meta: like.meta.clone(), value: Value::Envelope(Bytes::from(bytes)), size };
    tier.insert(Bytes::copy_from_slice(key), entry).await.unwrap();
}

fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let files = std::fs::read_dir(dir).unwrap().map(|f| f.unwrap().path());
    files.filter(|p| p.extension().is_some_and(|x| x == "seg")).collect()
}

fn segments_hold(dir: &std::path::Path, needle: &[u8]) -> bool {
    segments(dir)
        .iter()
        .any(|f| std::fs::read(f).unwrap().windows(needle.len()).any(|w| w == needle))
}

/// Where the record holding `value` is: its segment file and the offset of the value.
fn record_of(dir: &std::path::Path, value: &[u8]) -> (std::path::PathBuf, usize) {
    segments(dir)
        .into_iter()
        .find_map(|f| {
            let bytes = std::fs::read(&f).unwrap();
            let at = bytes.windows(value.len()).position(|w| w == value)?;
            Some((f, at))
        })
        .expect("a record holds the value")
}

/// Rewrite the value of the record at `value_at` in `file` (same length) and its CRC (over
/// header bytes 4..32, the key and the value: tier-disk's record format), in place: the tier
/// reads the file as it is now.
fn rewrite_record(file: &std::path::Path, value_at: usize, key_len: usize, value: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(file).unwrap();
    let header_at = value_at - key_len - 32;
    let mut head = vec![0u8; 32 + key_len];
    f.read_exact_at(&mut head, header_at as u64).unwrap();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head[4..]);
    crc.update(value);
    f.write_all_at(value, value_at as u64).unwrap();
    f.write_all_at(&crc.finalize().to_le_bytes(), header_at as u64).unwrap();
}

#[tokio::test]
async fn segment_files_hold_no_plaintext_and_every_altered_byte_is_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let disk = tier(dir.path());
    let cache = cache("records", &disk, Keyring::new(1, &OLD));
    let key = cache.key("7");
    cache.insert_with_tags(&key, SECRET.to_string(), &["ward:3"]).await.unwrap();
    disk.flush().unwrap();
    assert!(!segments_hold(dir.path(), b"diagnosis"), "plaintext in a segment file");
    assert!(segments_hold(dir.path(), b"ward:3"), "tags stay in clear (the threat model)");

    let good = stored(&disk, &key).await;
    let (file, at) = record_of(dir.path(), &good);
    let seen = altered_bytes_are_misses(&cache, &key, &good, SECRET, |bad| {
        rewrite_record(&file, at, key.len(), &bad);
        std::future::ready(())
    })
    .await
    .unwrap();
    assert_eq!((seen.misses, seen.times), (good.len() - 16, 16));
    assert!(seen.times_served > 0, "the reads saw the altered bytes: {seen:?}");
    rewrite_record(&file, at, key.len(), &good);
    assert_eq!(read_through(&cache, &key).await.unwrap(), Some(SECRET.to_string()));
}

#[tokio::test]
async fn an_entry_copied_under_another_key_or_cache_is_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let disk = tier(dir.path());
    let keyring = Keyring::new(1, &OLD);
    let (a, b) = (cache("a", &disk, keyring.clone()), cache("b", &disk, keyring));
    let key = a.key("1");
    a.insert(&key, SECRET.to_string()).await.unwrap();
    let like = disk.get(&key).await.unwrap().into_entry().unwrap();
    let good = stored(&disk, &key).await.to_vec();
    let (other_key, their_key) = (a.key("2"), b.key("1"));
    store_raw(&disk, &other_key, good.clone(), &like).await;
    store_raw(&disk, &their_key, good, &like).await;
    assert_eq!(read_through(&a, &other_key).await.unwrap(), None);
    assert_eq!(read_through(&b, &their_key).await.unwrap(), None);
    assert_eq!(read_through(&a, &key).await.unwrap(), Some(SECRET.to_string()));
}

#[tokio::test]
async fn after_a_restart_a_rotated_keyring_reads_old_entries_and_seals_with_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = {
        let disk = tier(dir.path());
        let cache = cache("rot", &disk, Keyring::new(1, &OLD));
        let key = cache.key("old");
        cache.insert(&key, SECRET.to_string()).await.unwrap();
        disk.flush().unwrap();
        key
    };
    let disk = tier(dir.path());
    let rotated = Keyring::new(2, &NEW).with_old_key(1, &OLD).unwrap();
    let cache = cache("rot", &disk, rotated);
    assert_eq!(read_through(&cache, &key).await.unwrap(), Some(SECRET.to_string()));
    let new_key = cache.key("new");
    cache.insert(&new_key, "after".to_string()).await.unwrap();
    let (meta, _) = decode_meta(&stored(&disk, &new_key).await).unwrap();
    assert_eq!(Sealing::parse(meta.sealing.as_deref().unwrap()).unwrap().key_id, 2);
}

//! Shared helpers of the benches.

use serde::{Deserialize, Serialize};

/// The value the Redis benches store: a small user record (~200 bytes of MessagePack).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    /// Its id.
    pub id: u64,
    /// A name.
    pub name: String,
    /// An address.
    pub email: String,
    /// Two roles.
    pub roles: Vec<String>,
    /// 120 bytes of text.
    pub bio: String,
}

/// The user of `id`.
pub fn user(id: u64) -> User {
    User {
        id,
        name: format!("user {id}"),
        email: format!("user{id}@example.invalid"),
        roles: vec!["reader".into(), "writer".into()],
        bio: "x".repeat(120),
    }
}

/// An envelope of a `len`-byte string that does not compress (letters from a xorshift seeded by
/// `seq`), fresh for a day: what the disk benches store.
pub fn envelope_of_len(len: usize, seq: u64) -> tier_core::spi::Entry {
    use tier_core::spi::{now_ms, Codec, Entry, Meta};
    let now = now_ms();
    let meta = Meta {
        created_at: now,
        fresh_until: now + 24 * 3_600_000,
        stale_until: now + 24 * 3_600_000,
        ..Meta::default()
    };
    let mut x = seq | 1;
    let payload: String = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect();
    let codec = Codec { compress_threshold: usize::MAX, ..Codec::new() };
    let bytes = codec.encode(&meta, Some(&payload)).expect("a string always encodes");
    Entry::from_envelope(bytes).expect("an envelope just encoded is valid")
}

/// foyer's `HybridCache` as the disk benches' peer: the block engine (16 MiB blocks) on an
/// `FsDevice` of `capacity` bytes in `dir`, its memory part one byte (so that hits are disk
/// hits), written on insertion.
pub async fn foyer_disk_cache(
    dir: &std::path::Path,
    capacity: usize,
) -> foyer::HybridCache<u64, Vec<u8>> {
    use foyer::{BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCacheBuilder};
    let device = FsDeviceBuilder::new(dir).with_capacity(capacity).build().expect("foyer device");
    HybridCacheBuilder::new()
        .with_policy(foyer::HybridCachePolicy::WriteOnInsertion)
        .memory(1)
        .with_shards(1)
        .with_weighter(|_k: &u64, v: &Vec<u8>| v.len())
        .storage()
        .with_engine_config(BlockEngineConfig::new(device).with_block_size(16 << 20))
        .build()
        .await
        .expect("foyer cache")
}

/// The value `tier demo` caches (crates/tier-cli, `demo/workload.rs`): an id, a version and a
/// filler of `size` bytes repeating `item-{id}-` — what the codec bench compresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoItem {
    /// Key rank.
    pub id: u64,
    /// Bumped on every write.
    pub version: u64,
    /// Filler of `size` bytes.
    pub body: String,
}

/// The demo's value of `id` with a body of `size` bytes (its generator, byte for byte).
pub fn demo_item(id: u64, size: usize) -> DemoItem {
    let seed = format!("item-{id}-");
    DemoItem { id, version: 0, body: seed.chars().cycle().take(size).collect() }
}

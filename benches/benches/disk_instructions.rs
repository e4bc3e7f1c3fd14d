//! Instructions per warm disk hit, for callgrind: `DiskTier::get` of keys whose records the
//! page cache holds, beside a raw `pread` of the same record's bytes into a buffer of its own
//! (the physical limit the `disk_cold` bench times), each in a function of its own so that
//! callgrind counts only it. Callgrind counts the process's own instructions, not the
//! kernel's: both sides make one read call (the tier a `preadv2(RWF_NOWAIT)`), so the
//! difference is what the tier does around it — the index, the checks, the CRC, the envelope.
//!
//! ```text
//! cargo bench -p tier-benches --bench disk_instructions --no-run
//! for side in tier pread; do
//!   DISK_SIDE=$side valgrind --tool=callgrind --toggle-collect='*disk_instructions*counted*' \
//!     --callgrind-out-file=/dev/null target/release/deps/disk_instructions-<hash> 2>&1 | grep Collected
//! done
//! ```
//! and divide by `DISK_GETS` (20,000): hits over 1,024 records of `DISK_LEN` value bytes
//! (1024) in turn, in a directory under `$TMPDIR` (a device, not tmpfs, for the `RWF_NOWAIT`
//! path). `DISK_VERIFY=0` turns the tier's CRC check of every read off (`verify_on_read`), to
//! show what the rest costs.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs::File;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::pin::Pin;

use bytes::Bytes;
use tier_core::spi::Tier;
use tier_disk::{DiskTier, FlushPolicy};

/// The counted work of one side: a future polled through a vtable, so that its poll is a
/// function of its own (named `…counted_…::{{closure}}`) whatever the inliner does; the box
/// is one allocation on both sides.
type Counted<'a> = Pin<Box<dyn Future<Output = usize> + 'a>>;

fn counted_tier<'a>(tier: &'a DiskTier, key: &'a Bytes) -> Counted<'a> {
    Box::pin(async move {
        let found = tier.get(key).await.unwrap();
        assert!(found.is_hit());
        found.entry().map_or(0, |e| e.size as usize)
    })
}

fn counted_pread<'a>(file: &'a File, offset: u64, len: usize) -> Counted<'a> {
    Box::pin(async move {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).unwrap();
        std::hint::black_box(&buf);
        buf.len()
    })
}

const KEYS: u64 = 1024;

fn main() {
    let env =
        |name, default| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let gets: u64 = env("DISK_GETS", 20_000);
    let len = env("DISK_LEN", 1024) as usize;
    let pread_side = std::env::var("DISK_SIDE").is_ok_and(|s| s == "pread");
    let verify = std::env::var("DISK_VERIFY").map_or(true, |v| v != "0");
    let dir = tempfile::tempdir().unwrap();
    let tier = DiskTier::builder(dir.path())
        .capacity_bytes(1 << 30)
        .segment_size(64 << 20)
        .flush(FlushPolicy::None)
        .verify_on_read(verify)
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let keys: Vec<Bytes> = (0..KEYS).map(|i| Bytes::from(format!("key:{i:08}"))).collect();
        for (i, k) in (0..).zip(&keys) {
            tier.insert(k.clone(), tier_benches::envelope_of_len(len, i)).await.unwrap();
        }
        for k in &keys {
            assert!(tier.get(k).await.unwrap().is_hit()); // in the page cache from here on
        }
        let mut sum = 0;
        if pread_side {
            let at: Vec<_> = keys
                .iter()
                .map(|k| {
                    let info = tier.get_raw(k).unwrap().info;
                    (info.segment, info.offset, info.record_len as usize)
                })
                .collect();
            let segment = at[0].0;
            assert!(at.iter().all(|a| a.0 == segment), "one segment holds them all");
            let file = File::open(dir.path().join(format!("{segment:08x}.seg"))).unwrap();
            for n in 0..gets {
                let (_, offset, len) = at[(n % KEYS) as usize];
                sum += counted_pread(&file, offset, len).await;
            }
        } else {
            for n in 0..gets {
                sum += counted_tier(&tier, &keys[(n % KEYS) as usize]).await;
            }
        }
        assert!(sum > 0);
    });
}

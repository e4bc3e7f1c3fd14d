//! A full disk, simulated without mounting anything: a child process (this test binary, re-run
//! with `TIER_DISK_FULL_CHILD=<dir>`) lowers its `RLIMIT_FSIZE` below the segment size after
//! opening the tier, with SIGXFSZ ignored, so writes past the limit fail with EFBIG. Every
//! write past it must be an I/O `TierError` (no panic, no signal), and reads keep working.
//! Then the same full tier inside a hierarchy (`tier_core::Cache`) with another tier below it:
//! every `get_or_load` and `get` keeps answering, through the other tier.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{check_value, decoded, entry, value_for};
use tier_core::spi::Tier;
use tier_core::testing::MapTier;
use tier_core::{Cache, TierErrorKind, TierPolicy};
use tier_disk::DiskTier;

const ENV: &str = "TIER_DISK_FULL_CHILD";
const LIMIT: u64 = 96 << 10;

fn child(dir: &str) -> ! {
    let rt = common::runtime();
    let (ok, failed) = rt.block_on(async {
        let tier = DiskTier::builder(dir)
            .segment_size(256 << 10)
            .capacity_bytes(4 << 20)
            .build()
            .expect("open before the limit");
        // SAFETY: plain libc calls with valid arguments; done before any other thread of this
        // process touches signals or limits.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit { rlim_cur: LIMIT, rlim_max: libc::RLIM_INFINITY };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0, "setrlimit");
        }
        let (mut ok, mut failed) = (0u32, 0u32);
        for i in 0..600u64 {
            let k = format!("k{i}");
            match tier
                .insert(Bytes::from(k), entry(&value_for(&format!("k{i}"), i, 900), 600_000))
                .await
            {
                Ok(()) => ok += 1,
                Err(e) => {
                    assert_eq!(e.kind(), TierErrorKind::Io, "{e}");
                    assert!(e.is_tier_failure());
                    failed += 1;
                }
            }
        }
        // What was written before the disk filled up is still served, correctly.
        for i in 0..5u64 {
            let k = format!("k{i}");
            let v = decoded(&tier.get(k.as_bytes()).await.expect("get")).expect("early key");
            assert_eq!(check_value(&k, &v), Some(i));
        }
        // The hierarchy keeps answering through its other tier while this one cannot write.
        let policy = || TierPolicy::fresh(Duration::from_secs(600));
        let tier = Arc::new(tier);
        let remote = Arc::new(MapTier::new("remote"));
        let cache = Cache::<String>::builder("full-disk")
            .tier_arc(Arc::clone(&tier) as Arc<dyn Tier>, policy())
            .tier_arc(Arc::clone(&remote) as Arc<dyn Tier>, policy())
            .build()
            .expect("cache");
        let loads = Arc::new(AtomicU64::new(0));
        for i in 1000..1300u64 {
            let v = value_for(&format!("h{i}"), i, 2000);
            let (want, loads) = (v.clone(), Arc::clone(&loads));
            let got = cache
                .get_or_load(format!("h{i}"), move || async move {
                    loads.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, std::convert::Infallible>(Some(v))
                })
                .await
                .expect("the hierarchy answers with a full disk");
            assert_eq!(got.as_deref(), Some(&want));
        }
        // A load's write-through runs after its callers are answered (the disk tier's write, on
        // its writer thread, comes first): wait until every value reached the other tier.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while remote.len() < 300 {
            assert!(std::time::Instant::now() < deadline, "write-through never landed");
            tokio::task::yield_now().await;
        }
        for i in 1000..1300u64 {
            let got = cache.get(format!("h{i}")).await.expect("served by the other tier");
            assert_eq!(check_value(&format!("h{i}"), &got), Some(i));
        }
        assert_eq!(loads.load(Ordering::Relaxed), 300, "one load per key; then served from a tier");
        for i in 1000..1300u64 {
            let got = tier.get(format!("h{i}").as_bytes()).await.expect("disk reads still work");
            assert!(got.entry().is_none(), "the full disk could not have stored h{i}");
        }
        (ok, failed)
    });
    println!("full-disk ok={ok} failed={failed}");
    std::process::exit(0)
}

#[test]
fn a_full_disk_is_an_io_error_not_a_crash() {
    if let Ok(dir) = std::env::var(ENV) {
        child(&dir);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new(exe)
        .args(["a_full_disk_is_an_io_error_not_a_crash", "--exact", "--nocapture"])
        .env(ENV, dir.path())
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().find(|l| l.starts_with("full-disk")).expect("child report");
    let num = |name: &str| -> u32 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|n| n.parse().ok())
            .expect("count")
    };
    let (ok, failed) = (num("ok="), num("failed="));
    assert!(ok > 0 && failed > 0, "{line}");
    eprintln!("{line} (inserts past RLIMIT_FSIZE={LIMIT} failed with Io errors)");
    // After the "disk" is free again, the directory opens and serves what was written.
    let tier = DiskTier::builder(dir.path())
        .segment_size(256 << 10)
        .capacity_bytes(4 << 20)
        .build()
        .expect("reopen");
    // A write cut short at the limit leaves a torn record after the last good one: counted
    // (at most one per segment written past the limit), never served.
    assert!(tier.recovery_report().corrupt <= 2, "{:?}", tier.recovery_report());
    assert!(tier.recovery_report().entries >= u64::from(ok.min(50)));
}

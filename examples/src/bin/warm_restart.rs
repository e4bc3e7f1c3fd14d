//! A warm restart from the disk tier: run it twice over one directory; the first run loads
//! from the origin, the second run's first read is answered by the disk tier (a new process has
//! an empty memory tier, and the origin is not called).
//!
//! ```text
//! cargo run -p tier-examples --bin warm_restart -- --dir target/tier-warm   # origin
//! cargo run -p tier-examples --bin warm_restart -- --dir target/tier-warm   # disk hit
//! ```
//!
//! It prints `first read: origin` or `first read: disk` with the time the read took.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tier::{Cache, DiskTier, MemoryTier, TierPolicy};
use tier_examples::say;

#[derive(Parser)]
#[command(about = "A warm restart from the disk tier: run it twice over one directory")]
struct Args {
    /// The disk tier's directory (created when missing).
    #[arg(long)]
    dir: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Report {
    title: String,
    rows: Vec<u64>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let cache: Cache<Report> = Cache::builder("reports")
        .tier(MemoryTier::builder().build(), TierPolicy::fresh(Duration::from_secs(60)))
        .tier(
            DiskTier::builder(&args.dir).capacity_bytes(64 << 20).segment_size(8 << 20).build()?,
            TierPolicy::fresh(Duration::from_secs(24 * 3600)),
        )
        .build()?;

    let origin_calls = Arc::new(AtomicU64::new(0));
    let calls = origin_calls.clone();
    let started = Instant::now();
    let report = cache
        .get_or_load(cache.key("2026-q4"), move || async move {
            calls.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await; // an expensive query
            let rows = (1..=1000).collect();
            Ok::<_, std::convert::Infallible>(Some(Report { title: "2026 Q4".into(), rows }))
        })
        .await?
        .ok_or("the origin has no report")?;
    let took = started.elapsed();
    // A new process starts with an empty memory tier: a read that did not call the origin was
    // answered by the disk tier.
    let from = if origin_calls.load(Ordering::Relaxed) == 0 { "disk" } else { "origin" };
    say(format!("first read: {from} in {took:.1?} ({}, {} rows)", report.title, report.rows.len()));
    // Dropping the cache closes the disk tier: its writer thread finishes and syncs the files.
    drop(cache);
    Ok(())
}

//! Fail-safe during an origin outage: while the origin fails, the last value is served stale
//! instead of an error, and every such answer is counted (`cache_stale_served_total`, the flag a
//! service alerts on; the read's `get_or_load` span says `result = stale`).
//!
//! ```text
//! cargo run -p tier-examples --bin fail_safe
//! ```
//!
//! Memory only, so that it needs no server; a lower tier's stale copy is served the same way.
//! It exits 0 once it has shown each step, non-zero with the reason otherwise.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tier::{Cache, FailSafe, MemoryTier, TierPolicy};
use tier_examples::say;

#[derive(serde::Serialize, serde::Deserialize)]
struct Price {
    cents: u64,
    /// When the origin answered (ms since the epoch): how old a served value is.
    fetched_at_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The price service: up or down, its answers counted.
#[derive(Default)]
struct Origin {
    down: AtomicBool,
    calls: AtomicU64,
}

const FRESH: Duration = Duration::from_millis(200);

/// What the process's Prometheus text says of `metric` for the cache (0 when absent).
fn counted(metrics: &tier::prometheus::PrometheusHandle, metric: &str) -> u64 {
    let prefix = format!("{metric}{{cache=\"prices\"}} ");
    let text = metrics.render();
    let value = text.lines().find_map(|l| l.strip_prefix(&prefix));
    value.and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let metrics = tier::prometheus::install()?;
    let prices: Cache<Price> = Cache::builder("prices")
        .tier(
            MemoryTier::builder().build(),
            TierPolicy::fresh(FRESH).stale(Duration::from_secs(3600)),
        )
        // Serve values up to an hour past their freshness when the origin fails; once served,
        // a stale value is served for 1 s without asking the origin again.
        .fail_safe(FailSafe::up_to(Duration::from_secs(3600)).throttle(Duration::from_secs(1)))
        .build()?;
    let origin = Arc::new(Origin::default());
    let key = prices.key("EURUSD");
    let read = || {
        let origin = origin.clone();
        prices.get_or_load(&key, move || async move {
            origin.calls.fetch_add(1, Ordering::Relaxed);
            if origin.down.load(Ordering::Relaxed) {
                return Err("origin unavailable: connection refused");
            }
            Ok(Some(Price { cents: 108, fetched_at_ms: now_ms() }))
        })
    };

    let first = read().await?.ok_or("no price")?;
    say(format!("origin up: {} cents, loaded", first.cents));

    origin.down.store(true, Ordering::Relaxed);
    // Let the value's freshness run out (this is time passing, not waiting for an event).
    tokio::time::sleep(FRESH + Duration::from_millis(50)).await;
    let served = read().await?.ok_or("no price")?;
    let age = now_ms().saturating_sub(served.fetched_at_ms);
    let stale = counted(&metrics, "cache_stale_served_total");
    say(format!(
        "origin down: {} cents served stale ({age} ms old), cache_stale_served_total {stale}, origin calls {}",
        served.cents,
        origin.calls.load(Ordering::Relaxed)
    ));
    if stale != 1 || origin.calls.load(Ordering::Relaxed) != 2 {
        return Err("the stale value was not served as a fail-safe answer".into());
    }

    // Within the throttle the stale value is answered without calling the failing origin.
    read().await?.ok_or("no price")?;
    let calls = origin.calls.load(Ordering::Relaxed);
    say(format!("origin still down: served stale again without calling it (origin calls {calls})"));
    if calls != 2 {
        return Err("the throttle did not spare the origin".into());
    }

    // A key never loaded has nothing to fall back on: the caller sees the origin's error.
    let other = prices.get_or_load(prices.key("GBPUSD"), || async {
        Err::<Option<Price>, _>("origin unavailable: connection refused")
    });
    match other.await {
        Err(e) => say(format!("a key with no cached value fails: {e}")),
        Ok(_) => return Err("a read with nothing cached did not fail".into()),
    }

    say("ok: the outage was served stale and counted");
    Ok(())
}

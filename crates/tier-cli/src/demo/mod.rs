//! `tier demo`: a memory + disk (+ Redis) hierarchy in front of a simulated origin, driven by a
//! Zipf workload, with live progress, Prometheus metrics and a final per-tier report.
//!
//! Phases: build the tiers → warm-up (every key loaded once, origin healthy) → the measured run
//! (origin failing at `--origin-errors` from here on) → report. The report's tier figures are
//! the hierarchy's own metrics (`tier_requests_total`, `tier_op_duration_seconds`, ...) read from
//! the installed Prometheus recorder, minus their values at the end of the warm-up.

pub(crate) mod report;
mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use metrics_exporter_prometheus::PrometheusHandle;
use tier_core::{Cache, EarlyRefresh, FailSafe, ReconnectPolicy, TierPolicy, WriteBehind};
use tier_disk::DiskTier;
use tier_memory::MemoryTier;

use crate::cli::DemoArgs;
use crate::error::{chain, CliError, Context, Result};
use crate::promtext::{CacheFigures, Figures};
use report::{HotKey, Report, RunConfig, TierSetting, WarmUp};
use workload::{Counters, Item, Mix, Origin, OriginSink, Shared, Zipf};

/// How long the end of a `--write-behind` run waits for the queue to drain.
const DRAIN_BOUND: Duration = Duration::from_secs(10);

/// SIGINT (Ctrl-C) and SIGTERM, listened to from the start: either ends the run early, and the
/// report of what ran is still printed.
struct Interrupt {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupt {
    fn new() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let err = |e: std::io::Error| CliError::runtime(format!("listen for signals: {e}"));
        Ok(Self {
            int: signal(SignalKind::interrupt()).map_err(err)?,
            term: signal(SignalKind::terminate()).map_err(err)?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// Install the global Prometheus recorder; serve it over HTTP when `addr` is given.
fn install_metrics(addr: Option<SocketAddr>) -> Result<PrometheusHandle> {
    // The buckets of every histogram, as a service gets them from `tier::prometheus`.
    let builder = tier::prometheus::builder()
        .map_err(|e| CliError::runtime(format!("metrics buckets: {}", chain(&e))))?;
    let handle = match addr {
        Some(addr) => {
            let (recorder, exporter) = builder.with_http_listener(addr).build().map_err(|e| {
                CliError::runtime(format!("serve metrics on {addr}: {}", chain(&e)))
            })?;
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)
                .map_err(|e| CliError::runtime(format!("install metrics recorder: {e}")))?;
            // Bound; the line saying so comes once the workload runs (see `announce_metrics`).
            tokio::spawn(async move {
                if let Err(e) = exporter.await {
                    eprintln!("tier: metrics endpoint stopped: {e:?}");
                }
            });
            handle
        }
        None => {
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)
                .map_err(|e| CliError::runtime(format!("install metrics recorder: {e}")))?;
            handle
        }
    };
    tier_core::metrics::describe();
    Ok(handle)
}

/// Say on stderr where the metrics are served, once a first read of the workload has been
/// answered: a scraper coming after this line finds a series of every tier (tests wait for it;
/// before the first request the endpoint would answer an empty body).
async fn announce_metrics(shared: &Shared, addr: Option<SocketAddr>) {
    if let Some(addr) = addr {
        shared.first_read.notified().await;
        eprintln!("tier: serving metrics at http://{addr}/metrics");
    }
}

/// The cache's figures as the recorder has them now.
fn figures(handle: &PrometheusHandle, cache: &str) -> CacheFigures {
    handle.run_upkeep();
    let text = handle.render();
    Figures::from_text(&text).ok().and_then(|mut f| f.caches.remove(cache)).unwrap_or_default()
}

/// A disk tier sized for the demo: segments of 1/32 of the capacity, between 64 KiB and 8 MiB
/// (`--disk-bytes` is at least two of the smallest, so the capacity is never raised).
fn open_disk(dir: &PathBuf, capacity: u64) -> Result<DiskTier> {
    let segment = (capacity / 32).clamp(tier_disk::MIN_SEGMENT_SIZE, 8 << 20) & !7;
    DiskTier::builder(dir).capacity_bytes(capacity).segment_size(segment).build().map_err(|e| {
        let message = format!("open disk tier {}: {}", dir.display(), chain(&e));
        match e {
            // What the flags asked for (e.g. a --disk-bytes of more segments than allowed).
            tier_disk::DiskError::Config(_) => CliError::usage(message),
            _ => CliError::runtime(message),
        }
    })
}

/// The demo's tiers and their policies, top first: the hierarchy is built from them and the
/// report lists them.
fn tier_settings(args: &DemoArgs) -> Vec<TierSetting> {
    let tier = |name: &str, fresh: Duration, timeout: Option<Duration>, breaker| TierSetting {
        name: name.to_string(),
        fresh_seconds: fresh.as_secs_f64(),
        stale_seconds: args.stale.as_secs_f64(),
        timeout_seconds: timeout.map(|t| t.as_secs_f64()),
        breaker,
    };
    let mut tiers = vec![
        tier("memory", args.fresh, None, false),
        tier("disk", args.fresh * 2, Some(Duration::from_millis(50)), true),
    ];
    if args.redis.is_some() {
        tiers.push(tier("redis", args.fresh * 4, Some(Duration::from_millis(250)), true));
    }
    tiers
}

/// The policy of one tier of [`tier_settings`].
fn policy(s: &TierSetting) -> TierPolicy {
    let policy = TierPolicy::fresh(Duration::from_secs_f64(s.fresh_seconds))
        .stale(Duration::from_secs_f64(s.stale_seconds));
    let policy = match s.timeout_seconds {
        Some(t) => policy.timeout(Duration::from_secs_f64(t)),
        None => policy,
    };
    if s.breaker {
        policy
    } else {
        policy.no_breaker()
    }
}

/// Build the hierarchy described by `args`. Returns the cache and the tier names, top first.
async fn build_cache(
    args: &DemoArgs,
    disk_dir: &PathBuf,
    origin: &Arc<Origin>,
) -> Result<Cache<Item>> {
    let settings = tier_settings(args);
    let mut builder = Cache::<Item>::builder(args.cache.clone())
        .tier(MemoryTier::builder().max_bytes(args.memory_bytes).build(), policy(&settings[0]))
        .tier(open_disk(disk_dir, args.disk_bytes)?, policy(&settings[1]))
        .hot_keys(64, 4);
    if args.write_behind {
        let opts = WriteBehind::default()
            .max_delay(Duration::from_millis(20))
            .max_attempts(5)
            .backoff(Duration::from_millis(50), Duration::from_secs(1));
        builder = builder.write_behind(OriginSink(origin.clone()), opts);
    }
    if args.early_refresh > 0.0 {
        builder = builder.early_refresh(EarlyRefresh::XFetch { beta: args.early_refresh });
    }
    if !args.hard_timeout.is_zero() {
        builder = builder.hard_timeout(args.hard_timeout);
    }
    if !args.soft_timeout.is_zero() {
        builder = builder.soft_timeout(args.soft_timeout);
    }
    if !args.fail_safe.is_zero() {
        builder =
            builder.fail_safe(FailSafe::up_to(args.fail_safe).throttle(args.fail_safe_throttle));
    }
    if let Some(urls) = &args.redis {
        let conn = crate::redis::connection(&urls.0).await?;
        let tier = tier_redis::RedisTier::builder(conn.clone())
            .prefix(args.redis_prefix.as_bytes())
            .build()
            .await
            .map_err(|e| crate::redis::setup_error("Redis tier", &e))?;
        // Client-side caching beside the backplane: a write to one of the tier's keys by
        // anyone drops it from L1 and disk (`tier_redis_tracking_*`; in a Cluster one
        // tracking connection per master).
        let backplane = tier_redis::RedisBackplane::builder(conn.clone())
            .track(args.cache.clone(), &tier)
            .build()
            .await
            .map_err(|e| crate::redis::setup_error("Redis backplane", &e))?;
        let generations = tier_redis::RedisGenerations::new(conn).cached_with(&backplane);
        builder = builder
            .tier(tier, settings.get(2).map_or_else(|| TierPolicy::fresh(args.fresh * 4), policy))
            .generations(Arc::new(generations))
            .backplane(Arc::new(backplane), ReconnectPolicy::CatchUp);
    }
    builder.build().context(|| "build the cache".into())
}

/// Run the demo.
pub async fn run(args: DemoArgs) -> Result<()> {
    if args.write_ratio + args.invalidate_ratio > 1.0 {
        return Err(CliError::usage("--write-ratio plus --invalidate-ratio must not exceed 1.0"));
    }
    if args.cache.is_empty() || args.cache.contains(':') {
        return Err(CliError::usage("--cache must be a non-empty name without ':'"));
    }
    if args.metrics_addr.is_some_and(|a| a.port() == 0) {
        // The exporter binds it: the port the system would pick could not be told.
        return Err(CliError::usage("--metrics-addr needs a port (0 would be one nobody knows)"));
    }
    let mut interrupt = Interrupt::new()?;
    let handle = install_metrics(args.metrics_addr)?;
    let temp;
    let disk_dir = match &args.disk {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("tier-demo-")
                .tempdir()
                .context(|| "create a temporary directory for the disk tier".into())?;
            temp.path().to_path_buf()
        }
    };
    let origin =
        Arc::new(Origin::new(args.origin_latency, args.origin_errors, args.value_size as usize));
    let cache = build_cache(&args, &disk_dir, &origin).await?;
    if args.redis.is_some() {
        // Another instance may have moved the namespace on.
        cache.sync_namespace().await.context(|| "read the namespace version from Redis".into())?;
    }
    let tier_names: Vec<String> = cache.tiers().into_iter().map(|t| t.name).collect();
    let shared = Arc::new(Shared {
        cache: cache.clone(),
        write_behind: args.write_behind,
        origin: origin.clone(),
        zipf: Zipf::new(args.keys, args.zipf),
        counters: Counters::default(),
        stop: AtomicBool::new(false),
        versions: AtomicU64::new(0),
        invalidated: (0..args.keys).map(|_| AtomicBool::new(false)).collect(),
        first_read: tokio::sync::Notify::new(),
    });

    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr())
    };
    let mut interrupted = false;
    let warm_up = if args.warm_up {
        tokio::select! {
            w = warm(&shared, &args, &bar) => Some(w),
            _ = interrupt.recv() => {
                interrupted = true;
                None
            }
        }
    } else {
        None
    };

    let baseline = figures(&handle, &args.cache);
    let calls_before = origin.calls.load(Ordering::Relaxed);
    let errors_before = origin.errors.load(Ordering::Relaxed);
    origin.start_failing();

    let mix = Mix {
        write: args.write_ratio,
        invalidate: args.invalidate_ratio,
        per_worker_rate: args.rate as f64 / f64::from(args.workers),
    };
    let started = Instant::now();
    let mut workers = Vec::with_capacity(args.workers as usize);
    for i in 0..args.workers {
        let seed = rand::random::<u64>() ^ u64::from(i);
        workers.push(tokio::spawn(workload::worker(shared.clone(), mix, seed)));
    }

    bar.set_length(args.duration.as_millis().max(1) as u64);
    bar.set_position(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:24}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix("running");
    if !interrupted {
        tokio::select! {
            () = announce_metrics(&shared, args.metrics_addr) => {}
            _ = interrupt.recv() => interrupted = true,
        }
    }
    if !interrupted {
        let run = progress(&shared, &handle, &args, &tier_names, &bar, baseline.clone());
        tokio::select! {
            _ = run => {}
            _ = interrupt.recv() => interrupted = true,
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    bar.set_prefix("stopping");
    bar.set_message("waiting for in-flight requests");
    let mut latency = workload::latencies();
    for w in workers {
        if let Ok(h) = w.await {
            // Same bounds in every worker: adding cannot fail.
            let _ = latency.add(&h);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let write_behind = if args.write_behind && !interrupted {
        bar.set_message("draining the write-behind queue");
        Some(report::drain(&cache, &origin, DRAIN_BOUND).await)
    } else {
        None
    };
    bar.finish_and_clear();

    cache.report_gauges();
    let fig = figures(&handle, &args.cache).since(&baseline);
    let rows: Vec<_> = cache
        .tiers()
        .iter()
        .map(|info| {
            let mut row = report::tier_row(
                &info.name,
                fig.tiers.get(&info.name).unwrap_or(&Default::default()),
                elapsed,
            );
            // The breaker itself (the gauge says 0 for a tier without one).
            row.breaker = info.breaker.map(|b| b.as_str().to_string());
            row
        })
        .collect();
    let requests = report::requests(&shared.counters, &latency, args.rate, elapsed);
    let origin_report =
        report::origin(&fig, &origin, calls_before, errors_before, requests.reads, elapsed);
    let report = Report {
        cache: args.cache.clone(),
        config: RunConfig {
            duration_seconds: args.duration.as_secs_f64(),
            workers: args.workers,
            keys: args.keys,
            zipf: args.zipf,
            rate: args.rate,
            write_ratio: args.write_ratio,
            invalidate_ratio: args.invalidate_ratio,
            origin_latency_seconds: args.origin_latency.as_secs_f64(),
            origin_errors: args.origin_errors,
            tiers: tier_names.clone(),
            disk_dir: args.disk.as_ref().map(|d| d.display().to_string()),
            redis: args
                .redis
                .as_ref()
                .map(|u| u.0.iter().map(|u| tier_redis::redact_url(u)).collect()),
            metrics_addr: args.metrics_addr.map(|a| a.to_string()),
            fail_safe_seconds: args.fail_safe.as_secs_f64(),
            early_refresh_beta: args.early_refresh,
            fresh_seconds: args.fresh.as_secs_f64(),
            stale_seconds: args.stale.as_secs_f64(),
            fail_safe_throttle_seconds: args.fail_safe_throttle.as_secs_f64(),
            soft_timeout_seconds: (!args.soft_timeout.is_zero())
                .then_some(args.soft_timeout.as_secs_f64()),
            hard_timeout_seconds: (!args.hard_timeout.is_zero())
                .then_some(args.hard_timeout.as_secs_f64()),
            value_size: u64::from(args.value_size),
            memory_bytes: args.memory_bytes,
            disk_bytes: args.disk_bytes,
            redis_prefix: args.redis.as_ref().map(|_| args.redis_prefix.clone()),
            warm_up: args.warm_up,
            top: args.top as u64,
            tier_policies: tier_settings(&args),
            write_behind: args.write_behind,
        },
        warm_up,
        elapsed_seconds: elapsed,
        interrupted,
        requests,
        tiers: rows,
        origin: origin_report,
        write_behind,
        hot_keys: cache
            .hot_keys(args.top)
            .into_iter()
            .map(|(k, count)| HotKey { key: String::from_utf8_lossy(&k).into_owned(), count })
            .collect(),
    };
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| CliError::runtime(format!("encode the report: {e}")))?;
        println!("{text}");
    } else {
        if interrupted {
            println!("(interrupted: report of the part that ran)");
        }
        print!("{}", report.to_text());
    }
    drop(cache);
    Ok(())
}

/// Load every key once with a healthy origin.
async fn warm(shared: &Arc<Shared>, args: &DemoArgs, bar: &ProgressBar) -> WarmUp {
    bar.set_length(args.keys);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:24}] {pos}/{len} keys")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix("warm-up");
    let started = Instant::now();
    let keys: Vec<_> = (0..args.keys).map(|i| workload::key_of(&shared.cache, i)).collect();
    let origin = shared.origin.clone();
    let concurrency = (args.workers as usize * 4).clamp(16, 128);
    let load = move |key: bytes::Bytes| {
        let origin = origin.clone();
        async move {
            // Keys are `cache:version:item:ID`.
            let id = std::str::from_utf8(&key)
                .ok()
                .and_then(|k| k.rsplit(':').next())
                .and_then(|id| id.parse::<u64>().ok())
                .unwrap_or(0);
            origin.load(id).await
        }
    };
    let r = shared.cache.warm(keys, concurrency, load, |p| bar.set_position(p.done as u64)).await;
    WarmUp {
        loaded: r.loaded as u64,
        failed: r.failed as u64,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Update the progress display until the duration is over.
async fn progress(
    shared: &Shared,
    handle: &PrometheusHandle,
    args: &DemoArgs,
    tiers: &[String],
    bar: &ProgressBar,
    mut last: CacheFigures,
) {
    let started = tokio::time::Instant::now();
    let deadline = started + args.duration;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_at = Instant::now();
    let mut last_reads = 0u64;
    let mut last_calls = shared.origin.calls.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tick.tick() => {}
        }
        bar.set_position(started.elapsed().as_millis() as u64);
        if bar.is_hidden() {
            handle.run_upkeep();
            continue;
        }
        let now = figures(handle, &args.cache);
        let window = now.since(&last);
        let secs = last_at.elapsed().as_secs_f64().max(1e-3);
        let reads = shared.counters.reads.load(Ordering::Relaxed);
        let calls = shared.origin.calls.load(Ordering::Relaxed);
        let mut msg = format!("reads {}", report::rate((reads - last_reads) as f64 / secs));
        for t in tiers {
            let f = window.tiers.get(t).cloned().unwrap_or_default();
            let ratio = f.hit_ratio().map_or_else(|| "-".into(), |r| format!("{:.0}%", r * 100.0));
            msg.push_str(&format!(" · {t} {ratio} of {}", report::rate(f.lookups() / secs)));
        }
        msg.push_str(&format!(
            " · origin {} · stale served {}",
            report::rate((calls - last_calls) as f64 / secs),
            report::count(window.stale_served.round() as u64)
        ));
        if let Ok(q) = shared.cache.write_behind_status() {
            msg.push_str(&format!(
                " · write-behind queue {} (oldest {}), dead letters {}",
                report::count(q.pending as u64),
                q.oldest_age.map_or_else(|| "-".into(), crate::duration::short),
                report::count(q.dead_letters as u64)
            ));
        }
        bar.set_message(msg);
        last = now;
        last_at = Instant::now();
        last_reads = reads;
        last_calls = calls;
    }
}

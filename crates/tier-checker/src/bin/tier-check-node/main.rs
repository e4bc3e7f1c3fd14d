//! `tier-check-node`: one instance of the coherence checker's fleet. It builds a hierarchy
//! (memory → disk → Redis, backplane and Redis generations, fail-safe on), prints `ready`, runs
//! its seeded workload — writing the origin before each write or invalidation, loading from it
//! on a miss — and appends one JSON line per operation to its history file, until its standard
//! input closes (or `--max-ops`). Started by the orchestrator (`tier-check`, `tests/coherence.rs`);
//! not meant to be run by hand.

mod answered;
mod cache;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tier_checker::history::{now_us, HistoryWriter, Op, Outcome, Record};
use tier_checker::origin::Origin;
use tier_checker::space::{outcome_of, value, KeySpace};
use tier_checker::workload::{Mix, Step, Workload};

/// One node of the coherence checker.
#[derive(Parser, Debug)]
struct Args {
    /// This node's id (its writer name in the origin; stable across restarts).
    #[arg(long)]
    id: String,
    /// Which life this is (0 at the first start): the workload's seed is `seed + life`.
    #[arg(long, default_value_t = 0)]
    life: u32,
    /// The workload's seed.
    #[arg(long)]
    seed: u64,
    /// The history file (appended to).
    #[arg(long)]
    history: PathBuf,
    /// The disk tier's directory.
    #[arg(long)]
    disk: PathBuf,
    /// The origin server's URL.
    #[arg(long)]
    origin: String,
    /// The cache Redis: a URL, or with `--cluster` the nodes' URLs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    redis: Vec<String>,
    /// The cache Redis is a Cluster.
    #[arg(long)]
    cluster: bool,
    /// Keys in the key space.
    #[arg(long, default_value_t = 200)]
    keys: u32,
    /// Keys per tag.
    #[arg(long, default_value_t = 10)]
    tag_size: u32,
    /// Stop after this many operations (0: when standard input closes).
    #[arg(long, default_value_t = 0)]
    max_ops: u64,
    /// How long to keep trying to build the cache (the cache Redis may be restarting).
    #[arg(long, default_value_t = 30)]
    build_timeout_s: u64,
}

fn main() {
    let args = Args::parse();
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(r) => r,
            Err(e) => fail(&format!("start the runtime: {e}")),
        };
    if let Err(e) = runtime.block_on(run(args)) {
        fail(&e);
    }
    // The thread reading standard input may still be blocked in it.
    std::process::exit(0);
}

fn fail(why: &str) -> ! {
    eprintln!("tier-check-node: {why}");
    std::process::exit(1);
}

async fn run(args: Args) -> Result<(), String> {
    cache::count_stale_reads()?;
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::{filter, EnvFilter, Layer};
        let log = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_filter(
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
            );
        // The read spans only (target `tier`), for `Record::via`.
        let reads = answered::Answered.with_filter(filter::filter_fn(|m| m.target() == "tier"));
        let _ = tracing_subscriber::registry().with(log).with(reads).try_init();
    }
    let space = KeySpace { keys: args.keys, tag_size: args.tag_size };
    let origin = Origin::connect(&args.origin).await.map_err(|e| e.to_string())?;
    let config =
        cache::Config { redis: args.redis.clone(), cluster: args.cluster, disk: args.disk.clone() };
    let deadline = Instant::now() + Duration::from_secs(args.build_timeout_s);
    let cache = loop {
        match cache::build(&config).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("tier-check-node {}: {e}; trying again", args.id);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let mut history = HistoryWriter::append(&args.history).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = stop.clone();
    std::thread::spawn(move || stop_when_stdin_closes(stopper));
    println!("ready");

    let mut workload =
        Workload::new(args.seed.wrapping_add(args.life.into()), space, Mix::default());
    let mut ops = 0u64;
    while !stop.load(Ordering::Relaxed) && (args.max_ops == 0 || ops < args.max_ops) {
        let step = workload.next_step();
        let record = run_step(&args, space, &cache, &origin, step).await?;
        history.write(&record).map_err(|e| e.to_string())?;
        ops += 1;
    }
    Ok(())
}

/// Set `stop` when standard input closes (the orchestrator's signal), on a thread of its own.
fn stop_when_stdin_closes(stop: Arc<AtomicBool>) {
    use std::io::Read;
    let mut buf = [0u8; 64];
    let mut stdin = std::io::stdin();
    while let Ok(n) = stdin.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
}

/// Run one step: for a write, the origin first, then the cache call, timed.
async fn run_step(
    args: &Args,
    space: KeySpace,
    cache: &cache::NodeCache,
    origin: &Origin,
    step: Step,
) -> Result<Record, String> {
    let mut record = Record {
        node: args.id.clone(),
        life: args.life,
        op: Op::Read,
        key: None,
        tag: None,
        start_us: 0,
        end_us: 0,
        outcome: Outcome::Ok,
        stale: false,
        writes: Vec::new(),
        via: None,
    };
    let keys: Vec<u32> = match step {
        Step::Read(_) => Vec::new(),
        Step::Insert(k) | Step::Invalidate(k) => vec![k],
        Step::InvalidateTag(t) => space.keys_of(t).collect(),
        Step::InvalidateNamespace | Step::Clear => space.all().collect(),
    };
    if !keys.is_empty() {
        record.writes = origin.write(&keys, &args.id).await.map_err(|e| e.to_string())?;
    }
    let stale_before = cache::stale_served();
    let _ = answered::take();
    record.start_us = now_us();
    let done = match step {
        Step::Read(k) => {
            record.key = Some(k);
            let got = cache.read(k, space.tag_of(k), origin).await;
            record.end_us = now_us();
            record.stale = cache::stale_served() > stale_before;
            record.via = answered::take();
            record.outcome = match got {
                Ok(v) => outcome_of(k, v.as_deref()),
                Err(e) => Outcome::Error(e),
            };
            return Ok(record);
        }
        Step::Insert(k) => {
            record.op = Op::Insert;
            record.key = Some(k);
            let version = record.writes.first().map_or(0, |w| w.1);
            cache.insert(k, space.tag_of(k), value(k, version, &args.id)).await
        }
        Step::Invalidate(k) => {
            record.op = Op::Invalidate;
            record.key = Some(k);
            cache.invalidate(k).await
        }
        Step::InvalidateTag(t) => {
            record.op = Op::InvalidateTag;
            record.tag = Some(t);
            cache.invalidate_tag(t).await
        }
        Step::InvalidateNamespace => {
            record.op = Op::InvalidateNamespace;
            cache.invalidate_namespace().await
        }
        Step::Clear => {
            record.op = Op::Clear;
            cache.clear().await
        }
    };
    record.end_us = now_us();
    record.outcome = match done {
        Ok(()) => Outcome::Ok,
        Err(e) => Outcome::Error(e),
    };
    Ok(record)
}

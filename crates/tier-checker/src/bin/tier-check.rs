//! `tier-check`: the coherence checker's long form, by hand:
//! `cargo run --release -p tier-checker --bin tier-check -- --ops 200000`.
//! Prints the figure line and the details of each run; exits 1 on a harness error, and with
//! `--enforce` also when a run has violations or failed reads.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tier_checker::space::KeySpace;
use tier_checker::{run, RunConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Standalone,
    Cluster,
    Both,
}

/// The coherence checker: a fleet of hierarchies under faults, their histories checked.
#[derive(Parser, Debug)]
struct Args {
    /// Record at least this many operations (per mode).
    #[arg(long, default_value_t = 200_000)]
    ops: u64,
    /// Which cache Redis.
    #[arg(long, value_enum, default_value_t = Mode::Standalone)]
    mode: Mode,
    /// Node processes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Faults of each kind per round (rounds go on until --ops are recorded).
    #[arg(long, default_value_t = 5)]
    faults_per_kind: usize,
    /// Pause before each fault, in ms.
    #[arg(long, default_value_t = 300)]
    fault_gap_ms: u64,
    /// Keys in the key space.
    #[arg(long, default_value_t = 200)]
    keys: u32,
    /// Keys per tag.
    #[arg(long, default_value_t = 10)]
    tag_size: u32,
    /// Seed of the workloads and the fault order.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep the histories and node logs in this directory.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Exit 1 when there are violations or failed reads.
    #[arg(long)]
    enforce: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let node = match std::env::current_exe() {
        Ok(me) => me.with_file_name("tier-check-node"),
        Err(e) => {
            eprintln!("tier-check: where am I? {e}");
            std::process::exit(1);
        }
    };
    let modes: &[bool] = match args.mode {
        Mode::Standalone => &[false],
        Mode::Cluster => &[true],
        Mode::Both => &[false, true],
    };
    let mut failed = false;
    for &cluster in modes {
        let mut config = RunConfig::new(&node);
        config.cluster = cluster;
        config.nodes = args.nodes;
        config.ops = args.ops;
        config.faults_per_kind = args.faults_per_kind;
        config.fault_gap = Duration::from_millis(args.fault_gap_ms);
        config.space = KeySpace { keys: args.keys, tag_size: args.tag_size };
        config.seed = args.seed;
        config.deadline = Duration::from_secs(3600);
        config.keep_dir =
            args.keep.as_ref().map(|d| d.join(if cluster { "cluster" } else { "standalone" }));
        let started = Instant::now();
        let name = if cluster { "cluster" } else { "standalone" };
        match run(&config).await {
            Ok(report) => {
                println!("[{name}, {:.1?}] {report}", started.elapsed());
                failed |=
                    args.enforce && (!report.violations.is_empty() || report.failed_reads > 0);
            }
            Err(e) => {
                eprintln!("tier-check ({name}): harness error: {e}");
                std::process::exit(1);
            }
        }
    }
    std::process::exit(i32::from(failed));
}

//! One run of the checker: the origin and the cache Redis (standalone or Cluster, behind the
//! proxies), the fleet of nodes, rounds of faults until enough operations are recorded, then
//! the nodes stopped, the histories merged and checked. Everything started is stopped by PID
//! when the run ends, also on failure: the fleet, the servers and the proxies are guards that
//! do it when dropped, and the run's directory goes with them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::check::{check, CheckReport};
use crate::error::{Context, HarnessError};
use crate::faults::{schedule, Injector};
use crate::history::read_history;
use crate::nodes::{Fleet, NodeArgs};
use crate::origin::Origin;
use crate::servers::{self, CacheRedis};
use crate::space::KeySpace;

/// What a run is made of.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The node binary (`tier-check-node`).
    pub node_binary: PathBuf,
    /// A 3-master Cluster (else one standalone server).
    pub cluster: bool,
    /// How many nodes. Default: 3.
    pub nodes: usize,
    /// Go on until at least this many operations are recorded. Default: 20 000.
    pub ops: u64,
    /// Faults of each kind in a round; rounds go on until `ops` are recorded. Default: 5.
    pub faults_per_kind: usize,
    /// The pause before each fault. Default: 300 ms.
    pub fault_gap: Duration,
    /// The key space. Default: 200 keys in tags of 10.
    pub space: KeySpace,
    /// Seeds the workloads and the fault order. Default: 1.
    pub seed: u64,
    /// The propagation bound δ. Default: 100 ms.
    pub delta: Duration,
    /// A run that has not recorded `ops` by then is a harness error. Default: 10 min.
    pub deadline: Duration,
    /// Keep the run's files (histories, node logs) here instead of a removed temporary
    /// directory.
    pub keep_dir: Option<PathBuf>,
}

impl RunConfig {
    /// The defaults, with the node binary at `node_binary`.
    pub fn new(node_binary: impl Into<PathBuf>) -> Self {
        Self {
            node_binary: node_binary.into(),
            cluster: false,
            nodes: 3,
            ops: 20_000,
            faults_per_kind: 5,
            fault_gap: Duration::from_millis(300),
            space: KeySpace { keys: 200, tag_size: 10 },
            seed: 1,
            delta: Duration::from_millis(100),
            deadline: Duration::from_secs(600),
            keep_dir: None,
        }
    }
}

/// Run it; a harness failure (a server or node that does not start or dies on its own) is the
/// error, findings about the cache are the report. Needs a multi-threaded tokio runtime.
pub async fn run(config: &RunConfig) -> Result<CheckReport, HarnessError> {
    let started = Instant::now();
    let temp;
    let dir = match &config.keep_dir {
        Some(d) => {
            std::fs::create_dir_all(d).context(|| format!("create {}", d.display()))?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("tier-check-")
                .tempdir()
                .context(|| "create the run's directory".into())?;
            temp.path().to_path_buf()
        }
    };
    let origin_server = servers::origin()?;
    let origin = Origin::connect(&origin_server.url()).await?;
    let all: Vec<u32> = config.space.all().collect();
    origin.write(&all, "seed").await?;
    let mut redis = if config.cluster {
        CacheRedis::cluster(3).await?
    } else {
        CacheRedis::standalone().await?
    };
    let args = NodeArgs {
        binary: config.node_binary.clone(),
        origin: origin_server.url(),
        redis: redis.node_urls(),
        cluster: redis.is_cluster(),
        keys: config.space.keys,
        tag_size: config.space.tag_size,
        seed: config.seed,
    };
    let ports: Vec<String> = (0..redis.len())
        .zip(redis.node_urls())
        .map(|(i, url)| format!("server port {} behind proxy {url}\n", redis.port(i)))
        .collect();
    std::fs::write(dir.join("servers.txt"), ports.concat())
        .context(|| "write servers.txt".into())?;
    let mut fleet = Fleet::start(args, &dir, config.nodes).await?;

    let mut injector = Injector::new();
    let mut round = 0u64;
    let mut last_progress = Instant::now();
    loop {
        for kind in schedule(config.faults_per_kind, config.seed.wrapping_add(round)) {
            tokio::time::sleep(config.fault_gap).await;
            fleet.check_alive()?;
            injector.inject(kind, &mut fleet, &mut redis).await?;
            if last_progress.elapsed() > Duration::from_secs(10) {
                last_progress = Instant::now();
                eprintln!(
                    "tier-check: {} ops, {} faults, {:.0?}",
                    fleet.ops()?,
                    injector.faults().len(),
                    started.elapsed()
                );
            }
            if round > 0 && fleet.ops()? >= config.ops {
                break;
            }
        }
        round += 1;
        if fleet.ops()? >= config.ops {
            break;
        }
        if started.elapsed() > config.deadline {
            return Err(HarnessError::new(format!(
                "{} of {} operations after {:?}",
                fleet.ops()?,
                config.ops,
                config.deadline
            )));
        }
    }
    // Let the last fault's effects be read before stopping.
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.check_alive()?;
    fleet.stop().await?;

    let faults: Vec<String> = injector
        .faults()
        .iter()
        .map(|f| serde_json::to_string(f).map(|line| line + "\n"))
        .collect::<Result<_, _>>()
        .context(|| "encode the faults".into())?;
    std::fs::write(dir.join("faults.jsonl"), faults.concat())
        .context(|| "write faults.jsonl".into())?;
    let versions = origin.versions(config.space).await?;
    let mut records = Vec::new();
    for path in fleet.histories() {
        records.extend(read_history(&path)?);
    }
    Ok(check(&records, injector.faults(), &versions, config.delta.as_micros() as u64))
}

//! The fleet: the node processes of a run, each with its disk directory, history file and log
//! (its standard error) under the run's directory. A node is stopped by closing its standard
//! input; `kill -9` is a fault; a node that exits on its own is a harness error. Every child is
//! killed by PID when the fleet is dropped (tokio's `kill_on_drop`), also on failure.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::error::{Context, HarnessError};

/// What every node is started with.
#[derive(Debug, Clone)]
pub struct NodeArgs {
    /// The node binary (`tier-check-node`).
    pub binary: PathBuf,
    /// The origin's URL.
    pub origin: String,
    /// The cache Redis URLs (the proxies').
    pub redis: Vec<String>,
    /// Whether they are a Cluster's.
    pub cluster: bool,
    /// Keys in the key space.
    pub keys: u32,
    /// Keys per tag.
    pub tag_size: u32,
    /// The run's seed (node `i` uses `seed + 1000 i`).
    pub seed: u64,
}

struct Node {
    id: String,
    life: u32,
    child: Option<Child>,
    history: PathBuf,
    log: PathBuf,
    /// History bytes counted so far, and the lines in them.
    counted: (u64, u64),
}

/// The running nodes.
pub struct Fleet {
    args: NodeArgs,
    dir: PathBuf,
    nodes: Vec<Node>,
}

/// How long a node may take from start to `ready`.
const READY_WITHIN: Duration = Duration::from_secs(40);

impl Fleet {
    /// Start `n` nodes under `dir`, and wait until each is ready.
    pub async fn start(args: NodeArgs, dir: &Path, n: usize) -> Result<Self, HarnessError> {
        let mut fleet = Self { args, dir: dir.to_path_buf(), nodes: Vec::new() };
        for i in 0..n {
            let id = format!("n{i}");
            fleet.nodes.push(Node {
                history: dir.join(format!("{id}.history.jsonl")),
                log: dir.join(format!("{id}.log")),
                id,
                life: 0,
                child: None,
                counted: (0, 0),
            });
        }
        for i in 0..n {
            fleet.spawn(i).await?;
        }
        Ok(fleet)
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The id of node `i`.
    pub fn id(&self, i: usize) -> &str {
        &self.nodes[i % self.nodes.len()].id
    }

    /// The history files.
    pub fn histories(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|n| n.history.clone()).collect()
    }

    async fn spawn(&mut self, i: usize) -> Result<(), HarnessError> {
        let a = &self.args;
        let node = &mut self.nodes[i];
        let disk = self.dir.join(format!("{}.disk", node.id));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .context(|| format!("open {}", node.log.display()))?;
        let mut cmd = Command::new(&a.binary);
        cmd.arg("--id")
            .arg(&node.id)
            .arg("--life")
            .arg(node.life.to_string())
            .arg("--seed")
            .arg((a.seed + 1000 * i as u64).to_string())
            .arg("--history")
            .arg(&node.history)
            .arg("--disk")
            .arg(&disk)
            .arg("--origin")
            .arg(&a.origin)
            .arg("--redis")
            .arg(a.redis.join(","))
            .arg("--keys")
            .arg(a.keys.to_string())
            .arg("--tag-size")
            .arg(a.tag_size.to_string());
        if a.cluster {
            cmd.arg("--cluster");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context(|| format!("start {}", a.binary.display()))?;
        let stdout = child.stdout.take();
        node.child = Some(child);
        let Some(stdout) = stdout else {
            return Err(HarnessError::new("a node without standard output"));
        };
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(READY_WITHIN, lines.next_line()).await;
        match ready {
            Ok(Ok(Some(line))) if line == "ready" => Ok(()),
            _ => Err(HarnessError::new(format!(
                "node {} (life {}) was not ready within {READY_WITHIN:?}: {}",
                node.id,
                node.life,
                tail(&node.log)
            ))),
        }
    }

    /// `kill -9` node `i` and start it again on the same directory (its next life); returns
    /// once it is ready.
    pub async fn kill_and_restart(&mut self, i: usize) -> Result<(), HarnessError> {
        let i = i % self.nodes.len();
        if let Some(mut child) = self.nodes[i].child.take() {
            child.start_kill().context(|| format!("kill -9 node {}", self.nodes[i].id))?;
            let _ = child.wait().await;
        }
        self.nodes[i].life += 1;
        self.spawn(i).await
    }

    /// A harness error when a node exited on its own.
    pub fn check_alive(&mut self) -> Result<(), HarnessError> {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(HarnessError::new(format!(
                        "node {} (life {}) exited on its own ({status}): {}",
                        node.id,
                        node.life,
                        tail(&node.log)
                    )));
                }
            }
        }
        Ok(())
    }

    /// Operations recorded so far (lines in the history files).
    pub fn ops(&mut self) -> Result<u64, HarnessError> {
        use std::io::{Read, Seek, SeekFrom};
        let mut total = 0;
        for node in &mut self.nodes {
            let Ok(mut f) = std::fs::File::open(&node.history) else { continue };
            f.seek(SeekFrom::Start(node.counted.0)).context(|| "seek a history".into())?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).context(|| "read a history".into())?;
            node.counted.0 += buf.len() as u64;
            node.counted.1 += buf.iter().filter(|b| **b == b'\n').count() as u64;
            total += node.counted.1;
        }
        Ok(total)
    }

    /// Stop every node (close its standard input) and wait for it; a node that does not stop
    /// within 10 s, or fails, is a harness error.
    pub async fn stop(&mut self) -> Result<(), HarnessError> {
        let mut first_error = None;
        for node in &mut self.nodes {
            let Some(mut child) = node.child.take() else { continue };
            drop(child.stdin.take());
            let status = match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                Ok(Ok(status)) => status,
                _ => {
                    let _ = child.start_kill();
                    first_error.get_or_insert_with(|| {
                        HarnessError::new(format!("node {} did not stop within 10 s", node.id))
                    });
                    continue;
                }
            };
            if !status.success() {
                first_error.get_or_insert_with(|| {
                    HarnessError::new(format!(
                        "node {} (life {}) ended with {status}: {}",
                        node.id,
                        node.life,
                        tail(&node.log)
                    ))
                });
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The last lines of a node's log, on one line.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(5);
    let tail = lines[from..].join(" | ");
    if tail.is_empty() {
        "its log is empty".into()
    } else {
        format!("log: {tail}")
    }
}

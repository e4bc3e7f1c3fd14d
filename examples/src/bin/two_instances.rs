//! Two instances of a service sharing Redis: an invalidation or an insert on one is seen by
//! the other, whose copy in its own memory tier is dropped through the backplane.
//!
//! ```text
//! cargo run -p tier-examples --bin two_instances -- --redis redis://127.0.0.1:6379/
//! ```
//!
//! The program starts itself twice (two OS processes, `--node a` and `--node b`, each
//! memory → Redis with the backplane and Redis tag generations) and drives them through their
//! stdin and stdout, one command a line. It exits 0 once B has seen A's invalidation and A's
//! insert, and says how long each took to reach B; non-zero with the reason otherwise.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tier::{Cache, MemoryTier, TierPolicy};
use tier_examples::{ready, say, Fleet, DEFAULT_REDIS_URL};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(about = "Two instances sharing Redis: an invalidation on one is seen by the other")]
struct Args {
    /// The Redis server both instances share.
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    redis: String,
    /// The prefix of every Redis key (default: one of this run's own).
    #[arg(long)]
    prefix: Option<String>,
    /// Run as one instance, reading commands on stdin (the driver starts these itself).
    #[arg(long, hide = true)]
    node: Option<String>,
}

/// How long B may take to see what A did: far above the propagation bound (100 ms), so that a
/// loaded machine does not fail the run; the time it took is printed.
const DEADLINE: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let prefix = args.prefix.unwrap_or_else(|| format!("tier-example-{}:", std::process::id()));
    match args.node {
        Some(name) => node(&name, &args.redis, &prefix).await,
        None => drive(&args.redis, &prefix).await,
    }
}

// ---- one instance ----------------------------------------------------------------------------

/// One instance: memory → Redis; its origin answers what the driver told it (`origin K V`).
/// Commands: `origin K V`, `read K` (answers `value V reads N`, N the origin reads so far, or
/// `none`), `insert K V`, `invalidate K`, `quit`.
async fn node(name: &str, url: &str, prefix: &str) -> Result<(), Error> {
    let fleet = Fleet::connect(url, prefix).await?;
    if !fleet.connected(DEADLINE).await {
        return Err(format!("{name}: Redis at {url} not reachable within {DEADLINE:?}").into());
    }
    let builder = Cache::builder("users")
        .tier(MemoryTier::builder().build(), TierPolicy::fresh(Duration::from_secs(60)));
    let cache: Cache<String> =
        fleet.mount(builder, TierPolicy::fresh(Duration::from_secs(600))).build()?;
    ready(&cache, DEADLINE).await?;
    let origin: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>> = Arc::default();
    let reads = Arc::new(AtomicU64::new(0));
    say(format!("ready {name}"));

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["origin", k, v] => {
                origin
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(k.to_string(), v.to_string());
                "ok".to_string()
            }
            ["read", k] => {
                let (origin, reads_) = (origin.clone(), reads.clone());
                let id = k.to_string();
                let value = cache
                    .get_or_load(cache.key(k), move || async move {
                        reads_.fetch_add(1, Ordering::Relaxed);
                        let value =
                            origin.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned();
                        Ok::<_, std::convert::Infallible>(value)
                    })
                    .await?;
                match value {
                    Some(v) => format!("value {v} reads {}", reads.load(Ordering::Relaxed)),
                    None => "none".to_string(),
                }
            }
            ["insert", k, v] => {
                cache.insert(cache.key(k), v.to_string()).await?;
                "ok".to_string()
            }
            ["invalidate", k] => {
                cache.invalidate(cache.key(k)).await?;
                "ok".to_string()
            }
            ["quit"] => break,
            _ => format!("unknown command: {line}"),
        };
        say(answer);
    }
    Ok(())
}

// ---- the driver ------------------------------------------------------------------------------

/// An instance started as a child process, spoken to line by line.
struct Node {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Node {
    async fn start(name: &'static str, url: &str, prefix: &str) -> Result<Self, Error> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["--node", name, "--redis", url, "--prefix", prefix])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let mut node = Self { name, child, stdin, stdout };
        let ready = node.line().await?;
        if ready != format!("ready {name}") {
            return Err(format!("{name} did not start: {ready}").into());
        }
        Ok(node)
    }

    async fn line(&mut self) -> Result<String, Error> {
        let line = tokio::time::timeout(DEADLINE, self.stdout.next_line()).await;
        match line {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => Err(format!("{} exited", self.name).into()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(format!("{} did not answer within {DEADLINE:?}", self.name).into()),
        }
    }

    /// Send one command and return its answer.
    async fn ask(&mut self, command: &str) -> Result<String, Error> {
        self.stdin.write_all(format!("{command}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        self.line().await
    }

    /// Read `key` until it is `expected`; how long that took.
    async fn read_until(&mut self, key: &str, expected: &str) -> Result<Duration, Error> {
        let started = Instant::now();
        loop {
            let answer = self.ask(&format!("read {key}")).await?;
            if answer.starts_with(&format!("value {expected} ")) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > DEADLINE {
                return Err(
                    format!("{} still reads {answer:?} after {DEADLINE:?}", self.name).into()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn quit(mut self) -> Result<(), Error> {
        self.stdin.write_all(b"quit\n").await?;
        let status = tokio::time::timeout(DEADLINE, self.child.wait()).await??;
        if !status.success() {
            return Err(format!("{} exited with {status}", self.name).into());
        }
        Ok(())
    }
}

fn expect(answer: &str, expected: &str, what: &str) -> Result<(), Error> {
    if answer != expected {
        return Err(format!("{what}: expected {expected:?}, got {answer:?}").into());
    }
    Ok(())
}

async fn drive(url: &str, prefix: &str) -> Result<(), Error> {
    let mut a = Node::start("a", url, prefix).await?;
    let mut b = Node::start("b", url, prefix).await?;
    say("two instances up: a and b, each memory → Redis with the backplane");

    // A's insert is written through to Redis before it returns: B's first read finds it there.
    expect(&a.ask("insert user:1 Ada").await?, "ok", "a's insert")?;
    say("a inserted user:1 = Ada");
    expect(&b.ask("read user:1").await?, "value Ada reads 0", "b's first read")?;
    say("b read user:1 = Ada from Redis (its origin not called)");

    // The origin changes; until someone invalidates, both serve their cached copy.
    for node in [&mut a, &mut b] {
        expect(&node.ask("origin user:1 Grace").await?, "ok", "origin")?;
    }
    expect(&b.ask("read user:1").await?, "value Ada reads 0", "b before the invalidation")?;
    say("the origin now says Grace; b still serves Ada from its memory tier");

    expect(&a.ask("invalidate user:1").await?, "ok", "a's invalidation")?;
    let took = b.read_until("user:1", "Grace").await?;
    say(format!("a invalidated user:1; b read Grace {} ms later", took.as_millis()));

    expect(&a.ask("insert user:1 Linus").await?, "ok", "a's insert")?;
    let took = b.read_until("user:1", "Linus").await?;
    say(format!("a inserted user:1 = Linus; b read it {} ms later", took.as_millis()));

    a.quit().await?;
    b.quit().await?;
    say("ok: b saw a's invalidation and a's insert");
    Ok(())
}

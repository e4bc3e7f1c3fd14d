//! The write-behind invariant under `kill -9`: **an acknowledged write is never lost, and an
//! older value never overwrites a newer one at the origin.**
//!
//! A child process (this test binary, re-run with `TIER_WB_CRASH_CHILD=<dir>`) writes behind as
//! fast as it can — a disk tier and a cache whose origin writer sends each write over TCP to a
//! fake origin on loopback, which records what it received in order — and prints each write it
//! had acknowledged. It is killed 40 times on the same directory: at random moments (SIGKILL
//! from here) and at injected points (`TIER_FAULT`: before and after the queue append, after
//! the origin said ok but before the queue knew; and in the middle of a batch, by the child's
//! own writer after half of it reached the origin). Each run replays what the last left. A
//! last child drains the queue and exits. Then, over the whole run: every acknowledged value of
//! a key reached the origin or was followed there by a newer one, and per key the values the
//! origin received never go down.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::{Rng, SeedableRng};
use tier_core::{Cache, OriginWrite, OriginWriter, TierPolicy, WriteBehind};
use tier_disk::DiskTier;

const ENV: &str = "TIER_WB_CRASH_CHILD";
const TEST: &str = "sigkill_never_loses_an_acknowledged_write_nor_writes_older_over_newer";
const KEYS: u64 = 40;
const RUNS: u64 = 40;

/// The child's origin writer: one line per write (`w key value seq`), each answered `ok`.
struct TcpOrigin {
    conn: Mutex<(BufReader<TcpStream>, TcpStream)>,
    /// Kill this process after half of the n-th batch reached the origin (0: never).
    mid_batch: u32,
    batches: AtomicU32,
}

fn kill_self() -> ! {
    // SAFETY: kill(2) of this process; no memory is touched.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    std::process::abort()
}

#[async_trait]
impl OriginWriter<u64> for TcpOrigin {
    type Error = std::io::Error;

    async fn write_batch(&self, batch: &[OriginWrite<u64>]) -> Result<(), std::io::Error> {
        let n = self.batches.fetch_add(1, Ordering::SeqCst) + 1;
        let cut = (n == self.mid_batch).then(|| batch.len().div_ceil(2));
        // Blocking I/O on loopback, in a test child: short, and the runtime has two workers.
        let mut conn = self.conn.lock().unwrap();
        for (i, w) in batch.iter().enumerate() {
            if cut == Some(i) {
                kill_self();
            }
            let key = std::str::from_utf8(&w.key).unwrap();
            writeln!(conn.1, "w {key} {} {}", w.value, w.seq)?;
            let mut ok = String::new();
            conn.0.read_line(&mut ok)?;
            if ok.trim() != "ok" {
                return Err(std::io::Error::other(format!("origin answered {ok:?}")));
            }
        }
        if cut.is_some() {
            kill_self();
        }
        Ok(())
    }
}

fn child(dir: &str) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let rt = rt.unwrap();
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let port = env("TIER_WB_PORT").unwrap();
    let base = env("TIER_WB_BASE").unwrap_or(0);
    let stream = TcpStream::connect(("127.0.0.1", port as u16)).unwrap();
    stream.set_nodelay(true).unwrap();
    let origin = TcpOrigin {
        conn: Mutex::new((BufReader::new(stream.try_clone().unwrap()), stream)),
        mid_batch: env("TIER_WB_MID_BATCH").unwrap_or(0) as u32,
        batches: AtomicU32::new(0),
    };
    rt.block_on(async move {
        let tier = DiskTier::builder(dir).segment_size(256 << 10).capacity_bytes(4 << 20).build();
        let opts = WriteBehind::default()
            .max_delay(Duration::from_millis(1))
            .max_batch(8)
            .backoff(Duration::from_millis(1), Duration::from_millis(20));
        let cache: Cache<u64> = Cache::builder("crash")
            .tier(tier.unwrap(), TierPolicy::fresh(Duration::from_secs(600)))
            .write_behind(origin, opts)
            .build()
            .unwrap();
        let mut out = std::io::stdout();
        if std::env::var("TIER_WB_DRAIN").is_ok() {
            cache.flush_write_behind().await.unwrap();
            let status = cache.write_behind_status().unwrap();
            writeln!(out, "drained pending={} dead={}", status.pending, status.dead_letters)
                .unwrap();
            drop(cache);
            std::process::exit(0);
        }
        for i in 0..20_000u64 {
            let key = format!("k{}", (i * 7919) % KEYS);
            let value = base + i;
            cache.write_behind(&key, value).await.unwrap();
            writeln!(out, "ack {key} {value}").unwrap();
            if i == 0 {
                writeln!(out, "ready").unwrap();
            }
            out.flush().unwrap();
        }
        // Bounded: the parent kills it long before.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    std::process::exit(0)
}

/// What the fake origin received, in order: (key, value, seq).
type Received = Arc<Mutex<Vec<(String, u64, u64)>>>;

/// The fake origin: a thread accepting connections on loopback; each connection's lines are
/// recorded in order and answered `ok`. Returns its port.
fn origin(received: &Received) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::clone(received);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            conn.set_nodelay(true).unwrap();
            let received = Arc::clone(&received);
            std::thread::spawn(move || {
                let mut reply = conn.try_clone().unwrap();
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { return };
                    let parts: Vec<&str> = line.split(' ').collect();
                    // A line cut short by a kill is no write (it was never answered).
                    if let ["w", key, value, seq] = parts[..] {
                        let (Ok(value), Ok(seq)) = (value.parse(), seq.parse()) else { return };
                        received.lock().unwrap().push((key.to_string(), value, seq));
                        if reply.write_all(b"ok\n").is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

/// How a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kill {
    /// SIGKILL from here, at a random moment after the first acknowledgement.
    Random,
    /// A crash point of the queue (`TIER_FAULT`).
    Point(&'static str),
    /// The child's writer, after half of a batch reached the origin.
    MidBatch,
}

const KINDS: [Kill; 5] = [
    Kill::Random,
    Kill::Point("write-behind.before-append"),
    Kill::Point("write-behind.after-append"),
    Kill::Point("write-behind.after-batch"),
    Kill::MidBatch,
];

fn spawn(exe: &Path, dir: &Path, port: u16, base: u64, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(exe);
    cmd.args([TEST, "--exact", "--nocapture"])
        .env(ENV, dir)
        .env("TIER_WB_PORT", port.to_string())
        .env("TIER_WB_BASE", base.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Read the child's acknowledgements into `acked` until its stdout closes; `ready` is told
/// the first one.
fn read_acks(
    child: &mut Child,
    acked: &Arc<Mutex<Vec<(String, u64)>>>,
) -> std::sync::mpsc::Receiver<()> {
    let (ready, rx) = std::sync::mpsc::channel();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let acked = Arc::clone(acked);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line == "ready" {
                let _ = ready.send(());
            } else if let Some(rest) = line.strip_prefix("ack ") {
                let (key, value) = rest.split_once(' ').unwrap();
                acked.lock().unwrap().push((key.to_string(), value.parse().unwrap()));
            }
        }
    });
    rx
}

#[test]
fn sigkill_never_loses_an_acknowledged_write_nor_writes_older_over_newer() {
    if let Ok(dir) = std::env::var(ENV) {
        child(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let received: Received = Arc::default();
    let port = origin(&received);
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let seed: u64 =
        std::env::var("TIER_WB_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x00C0_FFEE);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut by_kind: HashMap<Kill, (u32, u32)> = HashMap::new(); // (runs, killed where meant)
    for run in 0..RUNS {
        let kind = KINDS[(run % KINDS.len() as u64) as usize];
        let n = rng.random_range(1..40u32);
        let env: Vec<(&str, String)> = match kind {
            Kill::Random => vec![],
            Kill::Point(point) => vec![("TIER_FAULT", format!("{point}:{n}"))],
            Kill::MidBatch => vec![("TIER_WB_MID_BATCH", n.to_string())],
        };
        let mut child = spawn(&exe, dir.path(), port, (run + 1) * 1_000_000, &env);
        let ready = read_acks(&mut child, &acked);
        let entry = by_kind.entry(kind).or_default();
        entry.0 += 1;
        match kind {
            Kill::Random => {
                // Killed at a random moment (the randomness is the point; nothing waits on it).
                let _ = ready.recv_timeout(Duration::from_secs(30));
                std::thread::sleep(Duration::from_millis(rng.random_range(1..150)));
                child.kill().unwrap();
                entry.1 += 1;
            }
            _ => {
                // The child kills itself at its point; one that has not after 10 s is killed.
                let deadline = Instant::now() + Duration::from_secs(10);
                while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if child.try_wait().unwrap().is_none() {
                    child.kill().unwrap();
                } else {
                    entry.1 += 1;
                }
            }
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "run {run} ({kind:?}) ended by itself: {status:?}");
    }
    // The last run drains what is owed and exits.
    let mut last =
        spawn(&exe, dir.path(), port, (RUNS + 1) * 1_000_000, &[("TIER_WB_DRAIN", "1".into())]);
    let out = BufReader::new(last.stdout.take().unwrap()).lines().map_while(Result::ok);
    let drained: Vec<String> = out.filter(|l| l.starts_with("drained")).collect();
    assert!(last.wait().unwrap().success());
    assert_eq!(drained, vec!["drained pending=0 dead=0".to_string()]);

    let received = received.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    // Never older over newer: per key, what the origin received never goes down (a value
    // received again after a crash is the at-least-once resend of the same write).
    let mut newest: HashMap<&str, (u64, u64)> = HashMap::new();
    let mut resent = 0u64;
    for (key, value, seq) in &received {
        if let Some(&(v, s)) = newest.get(key.as_str()) {
            assert!(*value >= v && *seq >= s, "{key}: {value} (seq {seq}) after {v} (seq {s})");
            resent += u64::from(*value == v);
        }
        newest.insert(key, (*value, *seq));
    }
    // Never lost: every acknowledged value reached the origin, or a newer one of its key did.
    for (key, value) in &acked {
        let got = newest.get(key.as_str()).map(|(v, _)| *v);
        assert!(got.is_some_and(|v| v >= *value), "{key}={value} acknowledged, origin has {got:?}");
    }
    let hit: u32 = by_kind.values().map(|(_, hit)| hit).sum();
    assert!(hit >= 30, "only {hit} runs were killed where meant: {by_kind:?}");
    eprintln!(
        "{RUNS} kills in {:?} (seed {seed}; per kind: runs, killed where meant: {by_kind:?}): \
         {} writes acknowledged, {} received by the origin ({resent} resent after a crash), \
         none lost, none older over newer",
        started.elapsed(),
        acked.len(),
        received.len(),
    );
}

//! Test helpers (cargo feature `test-util`): Redis servers and a Redis Cluster of a test's own,
//! on free loopback ports, killed by PID when dropped — for fault tests (kill, pause, restart a
//! server) and benches that must not disturb a shared server. For tests, not for production:
//! these functions panic when a server cannot be started.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (the kernel's choice; a server that loses it to a race is
/// started again on another).
///
/// # Panics
/// When no loopback socket can be bound.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    l.local_addr().expect("a bound address").port()
}

/// The master ports a Cluster node's `CLUSTER SLOTS` names (what the masters announce: e.g. the
/// ports of proxies in front of them), one per slot range.
pub async fn announced_ports<C>(conn: &mut C) -> redis::RedisResult<Vec<u16>>
where
    C: redis::aio::ConnectionLike + Send,
{
    let slots: Vec<Vec<redis::Value>> =
        redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    Ok(slots
        .iter()
        .filter_map(|range| match range.get(2) {
            Some(redis::Value::Array(node)) => match node.get(1) {
                Some(redis::Value::Int(p)) => u16::try_from(*p).ok(),
                _ => None,
            },
            _ => None,
        })
        .collect())
}

/// The server binary servers of a test's own are started with: `TIER_TEST_REDIS_SERVER`
/// (`scripts/redis-env` exports the flavour's: `redis-server` or `valkey-server`), else
/// `redis-server` on PATH.
pub fn server_binary() -> String {
    std::env::var("TIER_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// A Redis server of a test's own (for killing, pausing and restarting), on a free loopback
/// port, with its data in a directory of its own; killed by PID when dropped.
pub struct OwnRedis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: std::path::PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl OwnRedis {
    /// Start one.
    ///
    /// # Panics
    /// When no server could be started ([`server_binary`] missing, no free port).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Start one with these extra server arguments (kept for [`OwnRedis::restart`]).
    ///
    /// # Panics
    /// As [`OwnRedis::start`].
    pub fn start_with(args: &[&str]) -> Self {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        for _ in 0..20 {
            // A Cluster node also listens on port + 10000 (its bus), which must be a port too.
            let port = std::iter::repeat_with(free_port).find(|p| *p <= 55_535).unwrap_or(6379);
            // A directory of each attempt's own: a failed attempt leaves nothing (a cluster
            // config file) that the next one would load.
            let mut me = Self { port, dir: data_dir(), args: args.clone(), child: None };
            if me.spawn() {
                return me;
            }
        }
        panic!("could not start an own {} (is it on PATH?)", server_binary());
    }

    /// Start one on `port` (e.g. one a client was told of before the server existed), with
    /// these extra server arguments.
    ///
    /// # Panics
    /// When it does not start on that port within 5 s.
    pub fn start_on(port: u16, args: &[&str]) -> Self {
        let dir = data_dir();
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut me = Self { port, dir, args, child: None };
        for _ in 0..50 {
            if me.spawn() {
                return me;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("could not start {} on port {port}", server_binary());
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new(server_binary())
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} (is it on PATH?): {e}", server_binary()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false; // exited: port taken
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                if s.write_all(b"PING\r\n").is_ok() {
                    // A server started with `--requirepass` answers NOAUTH: it is up too.
                    let mut buf = [0u8; 7];
                    if s.read_exact(&mut buf).is_ok()
                        && (&buf == b"+PONG\r\n" || buf.starts_with(b"-NOAUTH"))
                    {
                        return true;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        false
    }

    /// SIGSTOP the server (by PID): its connections stay open and nothing answers, as with a
    /// host that is cut off without a reset.
    ///
    /// # Panics
    /// When the server does not run or `kill` fails.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT the server paused by [`OwnRedis::pause`].
    ///
    /// # Panics
    /// As [`OwnRedis::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("the server runs").id();
        let status = Command::new("kill").arg(sig).arg(pid.to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {sig} {pid} failed");
    }

    /// SIGKILL the server (by PID) and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port (same directory: a Cluster node keeps its `nodes.conf`).
    ///
    /// # Panics
    /// When it does not start within 5 s.
    pub fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("could not restart {} on port {}", server_binary(), self.port);
    }
}

/// A new directory for a server's data.
fn data_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tier-redis-test-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server arguments of a node of an [`own_cluster`]: cluster-enabled, a 500 ms node
/// timeout, `cluster-require-full-coverage no` (for a node started apart, e.g. to join as a
/// replica).
pub const CLUSTER_NODE_ARGS: &[&str] = &[
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "500",
    "--cluster-require-full-coverage",
    "no",
];

/// `n` cluster-enabled servers of the test's own (masters, no replicas), each holding its share
/// of the slots ([`slot_range`]), with `cluster-require-full-coverage no` (the masters left
/// keep serving their slots when one is lost) and a 500 ms node timeout.
///
/// # Panics
/// When a server does not start or the cluster is not `ok` on every node within 20 s.
pub async fn own_cluster(n: usize) -> Vec<OwnRedis> {
    own_cluster_with(n, &[]).await
}

/// [`own_cluster`] with these extra server arguments on every node (kept for
/// [`OwnRedis::restart`]), e.g. `["--appendonly", "yes"]` for a Cluster whose restarts keep data.
///
/// # Panics
/// As [`own_cluster`].
pub async fn own_cluster_with(n: usize, extra: &[&str]) -> Vec<OwnRedis> {
    let mut args = CLUSTER_NODE_ARGS.to_vec();
    args.extend_from_slice(extra);
    let nodes: Vec<OwnRedis> = (0..n).map(|_| OwnRedis::start_with(&args)).collect();
    let mut first_node = raw(&nodes[0].url()).await;
    for (i, node) in nodes.iter().enumerate() {
        let mut c = raw(&node.url()).await;
        let (first, last) = slot_range(i, n);
        let _: () = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(first)
            .arg(last)
            .query_async(&mut c)
            .await
            .expect("CLUSTER ADDSLOTSRANGE");
        if i > 0 {
            let _: () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(node.port)
                .query_async(&mut first_node)
                .await
                .expect("CLUSTER MEET");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in &nodes {
        while !cluster_ok(&node.url()).await {
            assert!(Instant::now() < deadline, "{} never reached cluster_state:ok", node.url());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    nodes
}

/// The slots of master `i` of `n` in an [`own_cluster`] of `n`: `(first, last)`.
pub fn slot_range(i: usize, n: usize) -> (u16, u16) {
    const SLOTS: usize = 16384;
    let share = SLOTS / n;
    let first = share * i;
    let last = if i + 1 == n { SLOTS - 1 } else { first + share - 1 };
    (first as u16, last as u16)
}

async fn cluster_ok(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else { return false };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else { return false };
    let info: redis::RedisResult<String> =
        redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await;
    info.is_ok_and(|i| i.contains("cluster_state:ok"))
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("a node URL")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot reach the node at {url}: {e}"))
}

//! Shared helpers of the Redis integration tests: where the servers are, unique prefixes,
//! envelopes, a fault-injecting TCP proxy; servers of the test's own are `tier_redis::testing`'s.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tier_core::spi::{Codec, Entry, Meta};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use tier_redis::testing::{free_port, own_cluster, server_binary, slot_range, OwnRedis};

/// A RedisTier on `conn` storing its entries under `{prefix}data:` (the rest of the prefix is
/// left to the test's lock, generations or backplane).
pub async fn data_tier(conn: &tier_redis::RedisConnection, prefix: &str) -> tier_redis::RedisTier {
    tier_redis::RedisTier::builder(conn.clone())
        .prefix(format!("{prefix}data:"))
        .build()
        .await
        .unwrap()
}

/// The standalone server of the test run (scripts/redis-env). Panics when missing: Redis tests
/// never skip silently.
pub fn standalone_url() -> String {
    std::env::var("TIER_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "TIER_TEST_REDIS_URL is not set: run the tests through scripts/test, or start servers \
             with `scripts/redis-env start DIR` and `source DIR/env`"
        )
    })
}

/// The cluster nodes of the test run.
pub fn cluster_urls() -> Vec<String> {
    let urls = std::env::var("TIER_TEST_REDIS_CLUSTER_URLS").unwrap_or_else(|_| {
        panic!(
            "TIER_TEST_REDIS_CLUSTER_URLS is not set: run the tests through scripts/test, or \
             start servers with `scripts/redis-env start DIR` and `source DIR/env`"
        )
    });
    urls.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// A prefix no other test (or run) uses.
pub fn unique_prefix(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "t{}:{}:{}:{}:",
        std::process::id(),
        rand::random::<u32>(),
        N.fetch_add(1, Ordering::Relaxed),
        name
    )
}

/// A plain redis-rs connection for looking behind the tier's back.
pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot reach Redis at {url}: {e}"))
}

/// `CLIENT KILL TYPE normal SKIPME yes` on the server at `url`: drops every client connection
/// but the one asking (the backplanes' readers among them); returns how many were killed.
pub async fn kill_normal_clients(url: &str) -> i64 {
    let mut admin = raw(url).await;
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut admin)
        .await
        .unwrap()
}

pub async fn raw_cluster(urls: &[String]) -> redis::cluster_async::ClusterConnection {
    redis::cluster::ClusterClient::new(urls.to_vec())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot reach the Redis Cluster at {urls:?}: {e}"))
}

/// The connect timeout of [`connect_quick`].
pub const QUICK_CONNECT: Duration = Duration::from_millis(100);
/// The response timeout of [`connect_quick`].
pub const QUICK_RESPONSE: Duration = Duration::from_millis(200);

/// Connect with the short timeouts of the fault tests: an operation of the connection is
/// bounded by `QUICK_CONNECT + QUICK_RESPONSE`.
pub async fn connect_quick(
    builder: tier_redis::RedisConnectionBuilder,
) -> tier_redis::RedisConnection {
    builder.connect_timeout(QUICK_CONNECT).response_timeout(QUICK_RESPONSE).connect().await.unwrap()
}

/// How many times a test's loader ran.
#[derive(Clone, Default)]
pub struct Loads(Arc<AtomicUsize>);

impl Loads {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// `get_or_load` of `id` with a loader that counts its calls in `loads` and returns `v:<id>`.
pub async fn get(cache: &tier_core::Cache<String>, loads: &Loads, id: &str) -> String {
    let key = cache.key(id);
    let (loads, value) = (loads.clone(), format!("v:{id}"));
    let got = cache
        .get_or_load(&key, move || async move {
            loads.0.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Some(value))
        })
        .await
        .unwrap_or_else(|e| panic!("the hierarchy must answer: {e}"));
    got.expect("a value").as_ref().clone()
}

/// An envelope entry fresh for `fresh_ms` then stale until `stale_ms` from now, written by an
/// insert (it wins a `created_at` tie: a test's writes of one millisecond replace each other).
pub fn entry(value: &str, fresh_ms: i64, stale_ms: i64) -> Entry {
    let now = tier_core::spi::now_ms() as i64;
    let meta = Meta {
        created_at: now as u64,
        fresh_until: (now + fresh_ms).max(0) as u64,
        stale_until: (now + stale_ms).max(0) as u64,
        insert: true,
        ..Meta::default()
    };
    Entry::from_envelope(Codec::default().encode(&meta, Some(&value.to_string())).unwrap()).unwrap()
}

/// The string value of an envelope entry.
pub fn value_of(entry: &Entry) -> String {
    let bytes = entry.envelope().expect("envelope");
    let (meta, at) = tier_core::spi::envelope::decode_meta(bytes).unwrap();
    tier_core::spi::envelope::decode_value::<String>(bytes, &meta, at).unwrap().unwrap()
}

pub fn key(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Poll `check` every millisecond until it holds or `within` passes; returns how long it took.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A TCP proxy in front of a server: adds a delay to every chunk going to the client and can cut
/// every connection (and refuse new ones until restored). Stops with its runtime.
pub struct Proxy {
    pub addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let (d, c, g) = (delay_ms.clone(), cut.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream).await else { continue };
                let gen = g.load(Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, Arc::new(AtomicU64::new(0)), g.clone(), gen));
                tokio::spawn(pipe(sr, cw, d.clone(), g.clone(), gen));
            }
        });
        Self { addr, delay_ms, cut, generation }
    }

    /// A proxy in front of the test run's standalone server.
    pub async fn to_standalone() -> Self {
        let url = standalone_url();
        let upstream = url.trim_start_matches("redis://").trim_end_matches('/').parse().unwrap();
        Self::start(upstream).await
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Delay every server→client chunk by `d`.
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Close every connection and refuse new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Accept connections again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<AtomicU64>,
    generation: Arc<AtomicU64>,
    gen: u64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
            _ = wait_cut(&generation, gen) => return,
        };
        let d = delay_ms.load(Ordering::SeqCst);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        if generation.load(Ordering::SeqCst) != gen || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn wait_cut(generation: &AtomicU64, gen: u64) {
    while generation.load(Ordering::SeqCst) == gen {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

//! Larger than RAM: the disk tier beside foyer's `HybridCache` (block engine on an `FsDevice`,
//! buffered I/O, its memory part one byte so that hits are disk hits), one run, the same
//! device, the same capacity, the same values, one engine at a time (its data deleted before
//! the next one writes).
//!
//! The page cache the bench may use is limited by a cgroup v1 memory limit: the bench moves
//! itself into a group of its own below the one it runs in (`memory.limit_in_bytes`; as root)
//! and leaves it at the end. Where it cannot, it says so and relies on dropping the data from
//! the page cache (`fdatasync`, then `POSIX_FADV_DONTNEED`), which it also does before every
//! read phase. The data is at least 8 times the limit by default.
//!
//! Phases, for 1 KiB and 16 KiB values:
//! - **insert**: 8 tasks write the data set; insert calls per second (foyer's
//!   `storage().wait()` after every 1 MiB a task inserts, so that its queue neither drops
//!   entries nor outgrows the memory limit) and the p50/p99 of one call;
//! - **cold hits** with 1, 8 and 64 concurrent readers of uniformly random keys: hits per
//!   second, p50/p99, misses (foyer aligns entries to 4 KiB, so the same capacity holds fewer
//!   small ones), device bytes read per hit (`/proc/self/io` `read_bytes`) beside the record
//!   size, and how the disk tier's reads went (`tier_disk_reads_total`: inline, pool, refused); meanwhile, on the same 2-worker runtime, the latency of an L1 hit (a moka
//!   `get` in a task spawned every 0.5 ms, from spawn to its answer) against the same probe
//!   with nothing else running;
//! - **warm hits** of a set that fits the page cache: the median `get` against a raw `pread`
//!   and a copy from a mapping of the same record bytes (the physical limits), interleaved key
//!   by key, the CRC of those bytes (which every tier read checks, `verify_on_read`), and
//!   foyer's `get`.
//!
//! Then **reopen**: a directory of `TIER_COLD_REOPEN_RECORDS` small records (128-byte values),
//! opened with the page cache dropped (under a larger limit, so that the index fits), with the
//! index bytes per entry; and opened again, with what the page cache kept.
//!
//! Knobs (environment): `TIER_COLD_LIMIT_MIB` (256), `TIER_COLD_DATA_MIB` (2304),
//! `TIER_COLD_SECONDS` per read phase (4), `TIER_COLD_DIR` (the system's temporary
//! directory), `TIER_COLD_PHASES` (`cold,reopen`), `TIER_COLD_REOPEN_RECORDS` (10,000,000),
//! `TIER_COLD_REOPEN_LIMIT_MIB` (1536).
//!
//! Run: `scripts/bench-disk-cold` (builds, runs this as root, cleans up).

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foyer::HybridCache;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tier_benches::envelope_of_len as envelope;
use tier_core::spi::{Entry, Tier, TierContext};
use tier_disk::{DiskTier, FlushPolicy, READS};
use tokio::runtime::Runtime;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Knobs {
    limit: u64,
    data: u64,
    secs: f64,
    dir: PathBuf,
    phases: String,
    reopen_records: u64,
    reopen_limit: u64,
}

impl Knobs {
    fn from_env() -> Self {
        Self {
            limit: env_u64("TIER_COLD_LIMIT_MIB", 256) << 20,
            data: env_u64("TIER_COLD_DATA_MIB", 2304) << 20,
            secs: env_u64("TIER_COLD_SECONDS", 4) as f64,
            dir: std::env::var_os("TIER_COLD_DIR").map_or_else(std::env::temp_dir, PathBuf::from),
            phases: std::env::var("TIER_COLD_PHASES").unwrap_or_else(|_| "cold,reopen".into()),
            reopen_records: env_u64("TIER_COLD_REOPEN_RECORDS", 10_000_000),
            reopen_limit: env_u64("TIER_COLD_REOPEN_LIMIT_MIB", 1536) << 20,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The page cache limit and the figures of the process

/// A cgroup v1 memory group of the bench's own; the process leaves it on drop.
struct MemGroup {
    path: PathBuf,
    parent: PathBuf,
}

impl MemGroup {
    fn enter(limit: u64) -> Option<Self> {
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let own = cgroups.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers.split(',').any(|c| c == "memory").then(|| path.to_string())
        })?;
        let parent = PathBuf::from(format!("/sys/fs/cgroup/memory{own}"));
        let path = parent.join(format!("tier-bench-disk-cold-{}", std::process::id()));
        let made = std::fs::create_dir(&path)
            .and_then(|()| std::fs::write(path.join("memory.limit_in_bytes"), limit.to_string()))
            .and_then(|()| {
                std::fs::write(path.join("cgroup.procs"), std::process::id().to_string())
            });
        match made {
            Ok(()) => Some(Self { path, parent }),
            Err(e) => {
                eprintln!("no memory cgroup ({e}): only POSIX_FADV_DONTNEED limits the page cache");
                let _ = std::fs::remove_dir(&path);
                None
            }
        }
    }

    fn set_limit(&self, limit: u64) {
        std::fs::write(self.path.join("memory.limit_in_bytes"), limit.to_string()).unwrap();
    }

    fn read(&self, name: &str) -> u64 {
        std::fs::read_to_string(self.path.join(name))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemGroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.parent.join("cgroup.procs"), std::process::id().to_string());
        if let Err(e) = std::fs::remove_dir(&self.path) {
            eprintln!("could not remove {}: {e}", self.path.display());
        }
    }
}

/// Bytes this process made the kernel read from storage.
fn device_read_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("read_bytes: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// `fdatasync` then `POSIX_FADV_DONTNEED` every file under `dir`: nothing of it stays cached.
fn drop_cached(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            drop_cached(&p);
        } else if let Ok(f) = File::open(&p) {
            let _ = f.sync_data();
            // SAFETY: a plain fadvise on an open descriptor.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_bytes(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Values, keys, statistics

fn key(i: u64) -> Bytes {
    Bytes::from(format!("key:{i:012}"))
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// p50 and p99 of latencies in ns, as µs.
fn pcts(v: &mut [u64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_unstable();
    let at = |p: f64| v[((v.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    (at(0.50), at(0.99))
}

/// The disk tier's lookups since the last call, by path (`tier_disk_reads_total`).
#[derive(Default)]
struct Paths {
    page_cache: u64,
    pool: u64,
    rejected: u64,
}

static SNAPSHOTTER: std::sync::OnceLock<Snapshotter> = std::sync::OnceLock::new();

impl Paths {
    fn take() -> Self {
        let mut p = Self::default();
        let Some(s) = SNAPSHOTTER.get() else { return p };
        for (k, _, _, v) in s.snapshot().into_vec() {
            let (DebugValue::Counter(n), true) = (v, k.key().name() == READS) else { continue };
            match k.key().labels().find(|l| l.key() == "path").map(|l| l.value().to_string()) {
                Some(path) if path == "page_cache" => p.page_cache += n,
                Some(path) if path == "pool" => p.pool += n,
                Some(path) if path == "rejected" => p.rejected += n,
                _ => {}
            }
        }
        p
    }
}

impl std::fmt::Display for Paths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.page_cache + self.pool + self.rejected == 0 {
            return Ok(());
        }
        write!(
            f,
            " [reads: {} inline, {} pool, {} refused]",
            self.page_cache, self.pool, self.rejected
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The two engines behind one face

#[derive(Clone)]
enum Engine {
    Tier(Arc<DiskTier>),
    Foyer(HybridCache<u64, Vec<u8>>),
}

impl Engine {
    async fn open(name: &str, dir: &Path, capacity: u64) -> Self {
        if name == "tier-disk" {
            let tier = DiskTier::builder(dir)
                .capacity_bytes(capacity)
                .segment_size(64 << 20)
                .flush(FlushPolicy::None)
                // Staged inserts are opt-in (TIER_COLD_STAGE=1 measures them).
                .stage_inserts(std::env::var_os("TIER_COLD_STAGE").is_some())
                .build()
                .unwrap();
            tier.attach(&TierContext::new("bench", "disk"));
            return Self::Tier(Arc::new(tier));
        }
        let cache = tier_benches::foyer_disk_cache(dir, capacity as usize).await;
        Self::Foyer(cache)
    }

    async fn insert(&self, i: u64, e: &Entry, raw: &[u8]) {
        match self {
            Self::Tier(t) => t.insert(key(i), e.clone()).await.unwrap(),
            Self::Foyer(f) => {
                f.insert(i, raw.to_vec());
            }
        }
    }

    /// `Ok(true)` a hit, `Ok(false)` a miss, `Err(())` an error (the tier's read pool full).
    async fn get(&self, i: u64) -> Result<bool, ()> {
        self.get_key(i, &key(i)).await
    }

    /// [`Engine::get`] with the disk tier's key already made (`key(i)`).
    async fn get_key(&self, i: u64, k: &[u8]) -> Result<bool, ()> {
        match self {
            Self::Tier(t) => t.get(k).await.map(|l| l.is_hit()).map_err(|_| ()),
            Self::Foyer(f) => f.get(&i).await.map(|e| e.is_some()).map_err(|_| ()),
        }
    }

    /// Wait until every insert is written (foyer writes in the background).
    async fn settle(&self) {
        match self {
            Self::Tier(t) => t.flush().unwrap(),
            Self::Foyer(f) => f.storage().wait().await,
        }
    }

    async fn close(self) {
        match self {
            Self::Tier(t) => drop(t),
            Self::Foyer(f) => f.close().await.unwrap(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Phases

const ENGINES: [&str; 2] = ["tier-disk", "foyer"];

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The L1 probe: every 0.5 ms a task is spawned that does one moka `get`; its latency from
/// spawn to answer, until `stop`.
async fn probe(l1: moka::future::Cache<u64, Bytes>, stop: Arc<AtomicBool>) -> Vec<u64> {
    let mut lat = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_micros(500)).await;
        let (l1, k) = (l1.clone(), i % 1000);
        let started = Instant::now();
        let hit = tokio::spawn(async move { l1.get(&k).await.is_some() }).await.unwrap();
        lat.push(started.elapsed().as_nanos() as u64);
        assert!(hit);
        i += 1;
    }
    lat
}

async fn l1() -> moka::future::Cache<u64, Bytes> {
    let l1 = moka::future::Cache::new(10_000);
    for k in 0..1000u64 {
        l1.insert(k, Bytes::from(vec![7u8; 256])).await;
    }
    l1
}

async fn idle_probe(secs: f64) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(probe(l1().await, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    pcts(&mut task.await.unwrap())
}

struct Loaded {
    records: u64,
    secs: f64,
    p50: f64,
    p99: f64,
}

async fn load(engine: &Engine, records: u64, len: usize) -> Loaded {
    let values: Arc<Vec<(Entry, Vec<u8>)>> = Arc::new(
        (0..64)
            .map(|i| {
                let e = envelope(len, i);
                let raw = e.envelope().unwrap().to_vec();
                (e, raw)
            })
            .collect(),
    );
    let settle_every = ((1 << 20) / len).max(1);
    let started = Instant::now();
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let (engine, values) = (engine.clone(), Arc::clone(&values));
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity((records / 8 + 1) as usize);
                let mut i = t;
                while i < records {
                    let (e, raw) = &values[(i % 64) as usize];
                    let s = Instant::now();
                    engine.insert(i, e, raw).await;
                    lat.push(s.elapsed().as_nanos() as u64);
                    // foyer writes in the background: at most ~1 MiB per task in flight.
                    if matches!(engine, Engine::Foyer(_)) && lat.len() % settle_every == 0 {
                        engine.settle().await;
                    }
                    i += 8;
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    engine.settle().await;
    let secs = started.elapsed().as_secs_f64();
    let (p50, p99) = pcts(&mut lat);
    Loaded { records, secs, p50, p99 }
}

struct ColdRun {
    readers: usize,
    hits: u64,
    misses: u64,
    errors: u64,
    secs: f64,
    p50: f64,
    p99: f64,
    bytes_per_hit: f64,
    l1: (f64, f64),
    paths: Paths,
}

async fn cold_reads(
    engine: &Engine,
    dir: &Path,
    records: u64,
    readers: usize,
    secs: f64,
) -> ColdRun {
    drop_cached(dir);
    let stop = Arc::new(AtomicBool::new(false));
    let prober = tokio::spawn(probe(l1().await, Arc::clone(&stop)));
    let io0 = device_read_bytes();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..readers)
        .map(|r| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((r as u64 + 1) * 0x1234_5678_9ABC));
                let (mut lat, mut misses, mut errors) = (Vec::new(), 0u64, 0u64);
                while Instant::now() < deadline {
                    let i = rng.below(records);
                    let s = Instant::now();
                    match engine.get(i).await {
                        Ok(true) => lat.push(s.elapsed().as_nanos() as u64),
                        Ok(false) => misses += 1,
                        Err(()) => errors += 1,
                    }
                }
                (lat, misses, errors)
            })
        })
        .collect();
    let (mut lat, mut misses, mut errors) = (Vec::new(), 0, 0);
    for t in tasks {
        let (l, m, e) = t.await.unwrap();
        lat.extend(l);
        misses += m;
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    let io = device_read_bytes() - io0;
    stop.store(true, Ordering::Relaxed);
    let l1 = pcts(&mut prober.await.unwrap());
    let hits = lat.len() as u64;
    let (p50, p99) = pcts(&mut lat);
    ColdRun {
        readers,
        hits,
        misses,
        errors,
        secs,
        p50,
        p99,
        bytes_per_hit: io as f64 / hits.max(1) as f64,
        l1,
        paths: Paths::take(),
    }
}

/// Warm hits: `get` of keys whose records the page cache holds, against a raw `pread` and a
/// copy from a mapping of the same bytes, interleaved key by key (so that the machine's noise
/// falls on all three alike). Median ns of one read (each timed alone; the timer costs all
/// three the same).
struct Warm {
    get: f64,
    paths: Paths,
    device_bytes: u64,
    pread: Option<f64>,
    mmap: Option<f64>,
    crc: Option<f64>,
}

fn median(v: &mut [u64]) -> f64 {
    v.sort_unstable();
    v.get(v.len() / 2).map_or(f64::NAN, |n| *n as f64)
}

async fn warm(engine: &Engine, dir: &Path, keys: u64, rounds: u64) -> Warm {
    for _ in 0..2 {
        for i in 0..keys {
            let _ = engine.get(i).await;
        }
    }
    // The same records' bytes, for the raw reads (the disk tier only).
    let mut files: HashMap<u32, (File, memmap2::Mmap)> = HashMap::new();
    let mut at = Vec::new();
    if let Engine::Tier(tier) = engine {
        for i in 0..keys {
            let info = tier.get_raw(&key(i)).unwrap().info;
            files.entry(info.segment).or_insert_with(|| {
                let f = File::open(dir.join(format!("{:08x}.seg", info.segment))).unwrap();
                // SAFETY: read-only; the tier only appends to and unlinks its segments, never
                // truncates them, and nothing is written while this bench reads.
                let m = unsafe { memmap2::Mmap::map(&f).unwrap() };
                (f, m)
            });
            at.push((info.segment, info.offset, info.record_len as usize));
        }
    }
    Paths::take();
    let io0 = device_read_bytes();
    let (mut get, mut pread, mut mmap, mut crc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Made before: the raw reads are not timed with a key's formatting either.
    let names: Vec<Bytes> = (0..keys).map(key).collect();
    for _ in 0..rounds {
        for i in 0..keys {
            let s = Instant::now();
            std::hint::black_box(engine.get_key(i, &names[i as usize]).await.unwrap());
            get.push(s.elapsed().as_nanos() as u64);
            let Some((seg, offset, len)) = at.get(i as usize) else { continue };
            let s = Instant::now();
            let mut buf = vec![0u8; *len];
            files[seg].0.read_exact_at(&mut buf, *offset).unwrap();
            std::hint::black_box(&buf);
            pread.push(s.elapsed().as_nanos() as u64);
            // What checking the record's CRC costs (the tier does it on every read).
            let s = Instant::now();
            std::hint::black_box(crc32fast::hash(std::hint::black_box(&buf[4..])));
            crc.push(s.elapsed().as_nanos() as u64);
            let s = Instant::now();
            let o = *offset as usize;
            std::hint::black_box(files[seg].1[o..o + len].to_vec());
            mmap.push(s.elapsed().as_nanos() as u64);
        }
    }
    let (paths, device_bytes) = (Paths::take(), device_read_bytes() - io0);
    let raw = |v: &mut Vec<u64>| (!v.is_empty()).then(|| median(v));
    Warm {
        get: median(&mut get),
        paths,
        device_bytes,
        pread: raw(&mut pread),
        mmap: raw(&mut mmap),
        crc: raw(&mut crc),
    }
}

fn cold(rt: &Runtime, k: &Knobs, group: Option<&MemGroup>, len: usize, label: &str) {
    let record = len + 120; // envelope, key and record headers, roughly
    let records = k.data / record as u64;
    let capacity = (k.data * 5 / 4).div_ceil(64 << 20) * (64 << 20);
    println!(
        "\n== {label} values: {records} records (~{} MiB), capacity {} MiB, page cache limit {} \
         MiB, {} s per read phase",
        k.data >> 20,
        capacity >> 20,
        k.limit >> 20,
        k.secs
    );
    let idle = rt.block_on(idle_probe(k.secs));
    println!("L1 probe alone: p50 {:.1} µs, p99 {:.1} µs", idle.0, idle.1);
    let mut table: Vec<(String, Vec<ColdRun>, Loaded, Warm, u64)> = Vec::new();
    for name in ENGINES {
        let dir = tempfile::tempdir_in(&k.dir).unwrap();
        let engine = rt.block_on(Engine::open(name, dir.path(), capacity));
        let loaded = rt.block_on(load(&engine, records, len));
        let on_disk = dir_bytes(dir.path());
        println!(
            "{name}: insert {:.0}/s ({:.1} MiB/s), p50 {:.1} µs, p99 {:.1} µs; {} MiB on disk",
            loaded.records as f64 / loaded.secs,
            (loaded.records * len as u64) as f64 / loaded.secs / (1 << 20) as f64,
            loaded.p50,
            loaded.p99,
            on_disk >> 20
        );
        let mut runs = Vec::new();
        for readers in [1, 8, 64] {
            let r = rt.block_on(cold_reads(&engine, dir.path(), records, readers, k.secs));
            println!(
                "{name} cold x{readers}: {:.0} hits/s, p50 {:.0} µs, p99 {:.0} µs, {} misses \
                 ({:.1} %), {} refused, {:.0} device bytes/hit ({:.2}x the record's pages); L1 \
                 p50 {:.1} µs, p99 {:.1} µs ({:.2}x idle){}",
                r.hits as f64 / r.secs,
                r.p50,
                r.p99,
                r.misses,
                100.0 * r.misses as f64 / (r.hits + r.misses).max(1) as f64,
                r.errors,
                r.bytes_per_hit,
                r.bytes_per_hit / (record.div_ceil(4096) * 4096) as f64,
                r.l1.0,
                r.l1.1,
                r.l1.1 / idle.1,
                r.paths
            );
            runs.push(r);
        }
        let warm_keys = (8u64 << 20) / record as u64;
        let w = rt.block_on(warm(&engine, dir.path(), warm_keys, 20));
        match (w.pread, w.mmap, w.crc) {
            (Some(p), Some(m), Some(c)) => println!(
                "{name} warm (median): get {:.0} ns; raw pread {:.0} ns, mmap copy {:.0} ns, \
                 crc32 of the record {:.0} ns (get/pread {:.2}x, (get - crc)/pread {:.2}x)",
                w.get,
                p,
                m,
                c,
                w.get / p,
                (w.get - c) / p
            ),
            _ => println!("{name} warm (median): get {:.0} ns", w.get),
        }
        println!("{name} warm: {} device bytes read{}", w.device_bytes, w.paths);
        if let Some(g) = group {
            println!(
                "{name}: cgroup max usage {} MiB, limit hit {} times",
                g.read("memory.max_usage_in_bytes") >> 20,
                g.read("memory.failcnt")
            );
        }
        rt.block_on(engine.close());
        drop(dir); // delete before the next engine writes
        table.push((name.to_string(), runs, loaded, w, on_disk));
    }
    let (t, f) = (&table[0], &table[1]);
    println!("-- {label}: tier-disk / foyer");
    println!(
        "insert/s {:.2}x, insert p99 {:.2}x",
        (t.2.records as f64 / t.2.secs) / (f.2.records as f64 / f.2.secs),
        t.2.p99 / f.2.p99
    );
    for (a, b) in t.1.iter().zip(&f.1) {
        println!(
            "x{}: hits/s {:.2}x, p50 {:.2}x, p99 {:.2}x, device bytes/hit {:.2}x, L1 p99 {:.2}x",
            a.readers,
            (a.hits as f64 / a.secs) / (b.hits as f64 / b.secs),
            a.p50 / b.p50,
            a.p99 / b.p99,
            a.bytes_per_hit / b.bytes_per_hit,
            a.l1.1 / b.l1.1
        );
    }
    println!("warm get {:.2}x", t.3.get / f.3.get);
}

fn reopen(rt: &Runtime, k: &Knobs) {
    let records = k.reopen_records;
    let dir = tempfile::tempdir_in(&k.dir).unwrap();
    let capacity = (records * 200 * 5 / 4).div_ceil(64 << 20) * (64 << 20) + (128 << 20);
    let build = || {
        DiskTier::builder(dir.path())
            .capacity_bytes(capacity)
            .segment_size(64 << 20)
            .flush(FlushPolicy::None)
            .build()
            .unwrap()
    };
    let started = Instant::now();
    let tier = Arc::new(build());
    rt.block_on(async {
        let values: Arc<Vec<Entry>> = Arc::new((0..64).map(|i| envelope(128, i)).collect());
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let (tier, values) = (Arc::clone(&tier), Arc::clone(&values));
                tokio::spawn(async move {
                    let mut i = t;
                    while i < records {
                        tier.insert(key(i), values[(i % 64) as usize].clone()).await.unwrap();
                        i += 8;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    tier.flush().unwrap();
    let written = tier.disk_stats().written_bytes;
    println!(
        "\n== reopen: {records} records of 128-byte values, {} MiB written in {:.1} s",
        written >> 20,
        started.elapsed().as_secs_f64()
    );
    drop(tier);
    for round in ["cold (page cache dropped)", "again (what the page cache kept)"] {
        if round.starts_with("cold") {
            drop_cached(dir.path());
        }
        let io0 = device_read_bytes();
        let started = Instant::now();
        let tier = build();
        let took = started.elapsed();
        let entries = tier.recovery_report().entries;
        println!(
            "reopen {round}: {:.2} s for {entries} entries ({:.0} MiB/s, {} MiB read from the \
             device); index {} bytes = {:.1} bytes/entry",
            took.as_secs_f64(),
            (written >> 20) as f64 / took.as_secs_f64(),
            (device_read_bytes() - io0) >> 20,
            tier.index_bytes(),
            tier.index_bytes() as f64 / entries.max(1) as f64
        );
        assert_eq!(entries, records);
        assert_eq!(tier.recovery_report().corrupt, 0);
    }
}

fn main() {
    // `cargo bench` passes `--bench`; anything else is a filter this bench does not take.
    let recorder = DebuggingRecorder::new();
    SNAPSHOTTER.set(recorder.snapshotter()).ok();
    recorder.install().unwrap();
    let k = Knobs::from_env();
    let group = MemGroup::enter(k.limit);
    if let Some(g) = &group {
        println!("memory cgroup {} limited to {} MiB", g.path.display(), k.limit >> 20);
    }
    let rt = runtime();
    if k.phases.contains("cold") {
        cold(&rt, &k, group.as_ref(), 1 << 10, "1KiB");
        cold(&rt, &k, group.as_ref(), 16 << 10, "16KiB");
    }
    if k.phases.contains("reopen") {
        if let Some(g) = &group {
            g.set_limit(k.reopen_limit);
            println!(
                "\nmemory limit raised to {} MiB so that the index fits",
                k.reopen_limit >> 20
            );
        }
        reopen(&rt, &k);
    }
    drop(rt);
    drop(group);
}

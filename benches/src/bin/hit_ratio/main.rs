//! Hit-ratio bench: replays generated traces through the hierarchy's L1 (`Cache::get_or_load`
//! over one `MemoryTier`) and through raw moka in the same run, at 1 %, 5 %, 10 % and 20 % of the
//! objects, with equal and with varied (byte-weighted) value sizes; writes the traces for
//! libCacheSim's simulators (`scripts/hit-ratio` runs them and prints the whole table).
//!
//! ```text
//! hit-ratio [--ci] [--disk] [--only NAME,...] [--objects N] [--requests N] [--json FILE]
//!           [--traces DIR]
//! ```
//! - `--only`: the traces named (`zipf-1.0`, `scan+zipf`, ...) and no others.
//! - `--disk`: also replay each trace through a `DiskTier` of the same share of the objects'
//!   record bytes, FIFO and with hot re-insertion (slow: a write per miss); with re-insertion
//!   also the records and bytes its reclaim copied forward, per request (`copies/r`,
//!   `copyB/r`).
//! - `--ci`: a run of a few seconds (Zipf traces only, smaller), which fails (exit 1) when the
//!   L1's miss ratio is more than 0.02 above raw moka's on any row.
//! - `--traces DIR`: also write each trace in libCacheSim's `oracleGeneral` format (object size =
//!   the weight the memory tier gives the object) and `DIR/manifest.json` naming them.
//! - `--json FILE`: the rows measured.
//!
//! Every trace is drawn from a fixed seed: the same requests every run. What still moves a
//! figure from one run to the next is moka's (randomly seeded) key hashing, which decides the
//! collisions of its frequency sketch: about ±0.002.
#![allow(missing_docs, clippy::unwrap_used)]

mod replay;
mod traces;

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use traces::{Kind, Sizes, Trace};

/// The shares of the objects each cache is sized to.
const SHARES: [f64; 4] = [0.01, 0.05, 0.10, 0.20];
/// The worst the L1 may be behind raw moka on a Zipf row in `--ci`.
const CI_MARGIN: f64 = 0.02;

struct Args {
    ci: bool,
    disk: bool,
    only: Option<Vec<String>>,
    objects: u64,
    requests: usize,
    json: Option<PathBuf>,
    traces: Option<PathBuf>,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        ci: false,
        disk: false,
        only: None,
        objects: 0,
        requests: 0,
        json: None,
        traces: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--ci" => args.ci = true,
            "--disk" => args.disk = true,
            "--only" => args.only = Some(value()?.split(',').map(String::from).collect()),
            "--objects" => {
                args.objects = value()?.parse().map_err(|e| format!("--objects: {e}"))?
            }
            "--requests" => {
                args.requests = value()?.parse().map_err(|e| format!("--requests: {e}"))?
            }
            "--json" => args.json = Some(value()?.into()),
            "--traces" => args.traces = Some(value()?.into()),
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let (objects, requests) = if args.ci { (20_000, 200_000) } else { (100_000, 1_000_000) };
    if args.objects == 0 {
        args.objects = objects;
    }
    if args.requests == 0 {
        args.requests = requests;
    }
    Ok(args)
}

/// One measured row: a trace at one cache size.
#[derive(Serialize)]
struct Row {
    trace: String,
    sizes: &'static str,
    share: f64,
    /// Entries (unit-weight moka's capacity).
    entries: u64,
    /// Bytes (the memory tier's and byte-weighted moka's capacity).
    budget: u64,
    /// Miss ratios.
    tier: f64,
    moka_unit: f64,
    moka_bytes: f64,
    /// The disk tier (`--disk`), FIFO and with hot re-insertion.
    disk: Option<f64>,
    disk_reinsert: Option<f64>,
    /// What the disk tier with re-insertion copied forward, per request.
    disk_copied: Option<replay::Copied>,
}

impl Row {
    /// The peer the L1 is held to: unit-weight moka with equal sizes (what the issue's table
    /// compares with), moka with the same byte budget with varied sizes.
    fn peer(&self) -> f64 {
        if self.sizes == "equal" {
            self.moka_unit
        } else {
            self.moka_bytes
        }
    }
}

#[derive(Serialize)]
struct ManifestTrace {
    file: String,
    trace: String,
    sizes: &'static str,
    requests: usize,
    /// Per cache size: the share, its byte budget and its entries.
    rows: Vec<(f64, u64, u64)>,
}

fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hit-ratio: {e}");
            std::process::exit(2);
        }
    };
    let kinds: Vec<Kind> = if args.ci {
        vec![Kind::Zipf(0.8), Kind::Zipf(1.0), Kind::Zipf(1.2)]
    } else {
        vec![
            Kind::Zipf(0.6),
            Kind::Zipf(0.8),
            Kind::Zipf(1.0),
            Kind::Zipf(1.2),
            Kind::ScanZipf,
            Kind::Loop,
            Kind::Shifting,
        ]
    };
    let kinds: Vec<Kind> = match &args.only {
        Some(names) => kinds.into_iter().filter(|k| names.contains(&k.name())).collect(),
        None => kinds,
    };
    let sizes: &[Sizes] = if args.ci { &[Sizes::Equal] } else { &[Sizes::Equal, Sizes::Varied] };
    let shares: &[f64] = if args.ci { &[0.01, 0.10] } else { &SHARES };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut rows = Vec::new();
    let mut manifest = Vec::new();
    println!(
        "{:<10} {:<6} {:>5} {:>8} {:>11}  {:>7} {:>9} {:>10} {:>7} {:>7} {:>8} {:>9}",
        "trace",
        "sizes",
        "share",
        "entries",
        "bytes",
        "tier",
        "moka",
        "moka-bytes",
        "disk",
        "disk+re",
        "copies/r",
        "copyB/r"
    );
    for (t, kind) in kinds.iter().enumerate() {
        let trace = Trace::generate(*kind, args.objects, args.requests, 0x7469_6572 + t as u64);
        for &size in sizes {
            let weights = replay::Weights::new(args.objects, size);
            let total = weights.total(args.objects);
            let disk_total: u64 =
                (0..args.objects).map(|id| replay::disk_record(&weights, id)).sum();
            let mut file_rows = Vec::new();
            for &share in shares {
                let entries = (args.objects as f64 * share).round() as u64;
                let budget = (total as f64 * share).round() as u64;
                let disk_budget = (disk_total as f64 * share).round() as u64;
                let disk = |reinsert| {
                    args.disk
                        .then(|| replay::disk(&trace, size, disk_budget, reinsert, &rt))
                        .flatten()
                };
                let reinsert = disk(true);
                let row = Row {
                    trace: kind.name(),
                    sizes: size.name(),
                    share,
                    entries,
                    budget,
                    tier: replay::tier(&trace, size, budget, &rt),
                    moka_unit: replay::moka_unit(&trace, entries),
                    moka_bytes: replay::moka_bytes(&trace, &weights, budget),
                    disk: disk(false).map(|(misses, _)| misses),
                    disk_reinsert: reinsert.map(|(misses, _)| misses),
                    disk_copied: reinsert.map(|(_, copied)| copied),
                };
                let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
                let copied = |f: fn(&replay::Copied) -> f64| {
                    row.disk_copied.as_ref().map_or("-".into(), |c| format!("{:.4}", f(c)))
                };
                println!(
                    "{:<10} {:<6} {:>4.0}% {:>8} {:>11}  {:>7.4} {:>9.4} {:>10.4} {:>7} {:>7} {:>8} {:>9}",
                    row.trace,
                    row.sizes,
                    share * 100.0,
                    entries,
                    budget,
                    row.tier,
                    row.moka_unit,
                    row.moka_bytes,
                    opt(row.disk),
                    opt(row.disk_reinsert),
                    copied(|c| c.records),
                    copied(|c| c.bytes)
                );
                file_rows.push((share, budget, entries));
                rows.push(row);
            }
            if let Some(dir) = &args.traces {
                let file = format!("{}-{}.oracleGeneral", kind.name(), size.name());
                write_trace(&dir.join(&file), &trace, &weights).unwrap();
                manifest.push(ManifestTrace {
                    file,
                    trace: kind.name(),
                    sizes: size.name(),
                    requests: trace.requests.len(),
                    rows: file_rows,
                });
            }
        }
    }
    if let Some(dir) = &args.traces {
        let out = std::fs::File::create(dir.join("manifest.json")).unwrap();
        serde_json::to_writer_pretty(out, &manifest).unwrap();
    }
    if let Some(path) = &args.json {
        let out = std::fs::File::create(path).unwrap();
        serde_json::to_writer_pretty(out, &rows).unwrap();
    }
    if args.ci {
        let behind: Vec<&Row> = rows
            .iter()
            .filter(|r| r.trace.starts_with("zipf") && r.tier > r.peer() + CI_MARGIN)
            .collect();
        for r in &behind {
            eprintln!(
                "hit-ratio: the L1 misses {:.4} of {} at {:.0}% ({} sizes), raw moka {:.4}: more than {CI_MARGIN} behind",
                r.tier,
                r.trace,
                r.share * 100.0,
                r.sizes,
                r.peer()
            );
        }
        if !behind.is_empty() {
            std::process::exit(1);
        }
        println!("hit-ratio: the L1 is within {CI_MARGIN} of raw moka on every Zipf row");
    }
}

/// `trace` in libCacheSim's `oracleGeneral` format: per request a little-endian u32 timestamp,
/// u64 object id, u32 size and i64 index of the object's next request (-1: none).
fn write_trace(
    path: &std::path::Path,
    trace: &Trace,
    weights: &replay::Weights,
) -> std::io::Result<()> {
    let mut next = vec![-1i64; trace.requests.len()];
    let mut seen = vec![-1i64; 2 * trace.objects as usize];
    for (i, &id) in trace.requests.iter().enumerate().rev() {
        next[i] = seen[id as usize];
        seen[id as usize] = i as i64;
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (i, &id) in trace.requests.iter().enumerate() {
        out.write_all(&((i / 1000) as u32).to_le_bytes())?;
        out.write_all(&(id + 1).to_le_bytes())?;
        out.write_all(&weights.of(id).to_le_bytes())?;
        out.write_all(&next[i].to_le_bytes())?;
    }
    out.flush()
}

//! `tier disk stats|ls|get|verify|queue DIR`: read-only inspection of a disk tier directory through
//! [`DiskInspector`], which takes no lock and writes nothing, so it works on a directory a live
//! service holds.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use tier_core::seal::Place;
use tier_disk::{
    DiskInspector, RecordInfo, RecordKind, SegmentDamage, StateReport, StrayFile, LOCK_FILE,
};

use crate::cli::{DiskCommand, Unseal};
use crate::demo::report::count;
use crate::envelope::{relative, view, EnvelopeView, Opener};
use crate::error::{chain, CliError, Result};
use crate::keyring;

fn open(dir: &Path) -> Result<DiskInspector> {
    match std::fs::metadata(dir) {
        Err(e) => {
            return Err(CliError::runtime(format!("disk tier directory {}: {e}", dir.display())))
        }
        Ok(m) if !m.is_dir() => {
            return Err(CliError::runtime(format!("{} is not a directory", dir.display())))
        }
        Ok(_) => {}
    }
    let inspector = DiskInspector::open(dir)
        .map_err(|e| CliError::runtime(format!("inspect {}: {}", dir.display(), chain(&e))))?;
    let empty = inspector.stats().segments == 0
        && inspector.strays().is_empty()
        && inspector.state().is_none()
        && std::fs::symlink_metadata(dir.join(LOCK_FILE)).is_err();
    if empty {
        return Err(CliError::runtime(format!(
            "{} is not a disk tier directory (no segment files, no {LOCK_FILE} file)",
            dir.display()
        )));
    }
    Ok(inspector)
}

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| CliError::runtime(format!("encode JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

fn kind_name(k: RecordKind) -> &'static str {
    match k {
        RecordKind::Value => "value",
        RecordKind::Tombstone => "tombstone",
        RecordKind::Clear => "clear",
        RecordKind::Suspect => "suspect",
        _ => "other",
    }
}

/// The key prefix entries are grouped by: up to the second `:` (`namespace:version`).
pub fn key_group(key: &[u8]) -> String {
    let text = String::from_utf8_lossy(key);
    let mut parts = text.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(ns), Some(v), Some(_)) => format!("{ns}:{v}:"),
        _ => "(other)".into(),
    }
}

/// `tier disk stats --json`.
#[derive(Debug, Serialize)]
struct StatsOut {
    dir: String,
    owner_pid: Option<u32>,
    segments: u32,
    oldest_segment: Option<u32>,
    newest_segment: Option<u32>,
    file_bytes: u64,
    written_bytes: u64,
    live_bytes: u64,
    dead_bytes: u64,
    entries: u64,
    expired_entries: u64,
    suspect_entries: u64,
    oldest_created_at: Option<u64>,
    newest_created_at: Option<u64>,
    damage: Vec<DamageOut>,
    strays: Vec<StrayOut>,
    state: Option<StateOut>,
    by_prefix: BTreeMap<String, PrefixOut>,
}

#[derive(Debug, Default, Serialize)]
struct PrefixOut {
    entries: u64,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct DamageOut {
    segment: u32,
    offset: u64,
    reason: String,
    /// Entries written before this point are served only as stale.
    suspect: bool,
}

impl From<&SegmentDamage> for DamageOut {
    fn from(d: &SegmentDamage) -> Self {
        Self { segment: d.segment, offset: d.offset, reason: d.reason.clone(), suspect: d.suspect }
    }
}

#[derive(Debug, Serialize)]
struct StrayOut {
    name: String,
    reason: String,
}

impl From<&StrayFile> for StrayOut {
    fn from(s: &StrayFile) -> Self {
        Self { name: s.name.clone(), reason: s.reason.clone() }
    }
}

/// The state file (`DiskState`) of the directory.
#[derive(Debug, Serialize)]
struct StateOut {
    entries: u64,
    live_bytes: u64,
    file_bytes: u64,
    lost: bool,
    problem: Option<String>,
    intact: bool,
}

impl From<&StateReport> for StateOut {
    fn from(s: &StateReport) -> Self {
        Self {
            entries: s.entries,
            live_bytes: s.live_bytes,
            file_bytes: s.file_bytes,
            lost: s.lost,
            problem: s.problem.clone(),
            intact: !s.lost && (s.problem.is_none() || s.interrupted_write),
        }
    }
}

/// One line about the state file.
fn state_line(s: &Option<StateOut>) -> String {
    match s {
        None => "none".into(),
        Some(s) => {
            let mut line =
                format!("{} keys, {} bytes of file", count(s.entries), count(s.file_bytes));
            if s.lost {
                line.push_str(", LOST (entries on disk are suspect until the owner clears it)");
            }
            if let Some(p) = &s.problem {
                line.push_str(&format!(", {p}"));
            }
            line
        }
    }
}

#[derive(Debug, Serialize)]
struct RecordOut {
    key: String,
    kind: &'static str,
    live: bool,
    segment: u32,
    offset: u64,
    record_bytes: u32,
    value_bytes: u32,
    stale_until: u64,
    compressed: bool,
    negative: bool,
    suspect: bool,
}

impl From<&RecordInfo> for RecordOut {
    fn from(r: &RecordInfo) -> Self {
        Self {
            key: String::from_utf8_lossy(&r.key).into_owned(),
            kind: kind_name(r.kind),
            live: r.live,
            segment: r.segment,
            offset: r.offset,
            record_bytes: r.record_len,
            value_bytes: r.value_len,
            stale_until: r.stale_until,
            compressed: r.envelope_flags & 1 != 0,
            negative: r.envelope_flags & 2 != 0,
            suspect: r.suspect,
        }
    }
}

#[derive(Debug, Serialize)]
struct GetOut {
    key: String,
    segment: u32,
    offset: u64,
    record_bytes: u32,
    envelope: Option<EnvelopeView>,
    envelope_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct VerifyOut {
    dir: String,
    clean: bool,
    segments: u32,
    records: u64,
    bytes: u64,
    damage: Vec<DamageOut>,
    suspect_entries: u64,
    strays: Vec<StrayOut>,
    state: Option<StateOut>,
}

/// Run a `tier disk` subcommand.
pub fn run(cmd: DiskCommand) -> Result<()> {
    match cmd {
        DiskCommand::Stats { dir, json } => stats(&dir, json),
        DiskCommand::Ls { dir, prefix, all, limit, json } => ls(&dir, &prefix, all, limit, json),
        DiskCommand::Get { dir, key, json, unseal } => get(&dir, &key, json, &unseal),
        DiskCommand::Verify { dir, json } => verify(&dir, json),
        DiskCommand::Queue { dir, limit, json, unseal } => {
            crate::queue::show(&open(&dir)?, &dir, limit, json, &unseal)
        }
    }
}

fn stats(dir: &Path, json: bool) -> Result<()> {
    let ins = open(dir)?;
    let s = ins.stats();
    let mut by_prefix: BTreeMap<String, PrefixOut> = BTreeMap::new();
    for r in ins.records() {
        let r =
            r.map_err(|e| CliError::runtime(format!("read {}: {}", dir.display(), chain(&e))))?;
        if r.live {
            let p = by_prefix.entry(key_group(&r.key)).or_default();
            p.entries += 1;
            p.bytes += u64::from(r.record_len);
        }
    }
    let out = StatsOut {
        dir: dir.display().to_string(),
        owner_pid: ins.owner_pid(),
        segments: s.segments,
        oldest_segment: s.oldest_segment,
        newest_segment: s.newest_segment,
        file_bytes: s.file_bytes,
        written_bytes: s.written_bytes,
        live_bytes: s.live_bytes,
        dead_bytes: s.dead_bytes,
        entries: s.entries,
        expired_entries: s.expired_entries,
        suspect_entries: s.suspect_entries,
        oldest_created_at: s.oldest_created_at,
        newest_created_at: s.newest_created_at,
        damage: ins.damage().iter().map(DamageOut::from).collect(),
        strays: ins.strays().iter().map(StrayOut::from).collect(),
        state: ins.state().map(StateOut::from),
        by_prefix,
    };
    if json {
        return print_json(&out);
    }
    println!("directory     {}", out.dir);
    if let Some(pid) = out.owner_pid {
        println!("owner         pid {pid} (the last process that opened it for writing)");
    }
    println!(
        "segments      {} ({})",
        out.segments,
        match (out.oldest_segment, out.newest_segment) {
            (Some(a), Some(b)) => format!("ids {a:08x}..{b:08x}"),
            _ => "none".into(),
        }
    );
    println!("file bytes    {}", count(out.file_bytes));
    println!(
        "written       {} bytes: live {}, dead {} ({:.1}% dead)",
        count(out.written_bytes),
        count(out.live_bytes),
        count(out.dead_bytes),
        if out.written_bytes > 0 {
            out.dead_bytes as f64 * 100.0 / out.written_bytes as f64
        } else {
            0.0
        }
    );
    println!(
        "entries       {} ({} past stale_until, {} suspect: served only as stale)",
        count(out.entries),
        count(out.expired_entries),
        count(out.suspect_entries)
    );
    println!("state file    {}", state_line(&out.state));
    if let (Some(a), Some(b)) = (out.oldest_created_at, out.newest_created_at) {
        println!("created       oldest {}, newest {}", relative(a), relative(b));
    }
    if !out.by_prefix.is_empty() {
        println!("by prefix");
        for (p, f) in &out.by_prefix {
            println!("  {p:<30} {:>10} entries {:>14} bytes", count(f.entries), count(f.bytes));
        }
    }
    if out.damage.is_empty() {
        println!("damage        none found");
    } else {
        println!("damage        {} place(s) (run `tier disk verify`)", out.damage.len());
        print_damage(&out.damage, "  ");
    }
    for st in &out.strays {
        println!("stray file    {}: {}", st.name, st.reason);
    }
    Ok(())
}

fn print_damage(damage: &[DamageOut], indent: &str) {
    for d in damage {
        let suspect =
            if d.suspect { " (entries written before it: served only as stale)" } else { "" };
        println!("{indent}segment {:08x} at offset {}: {}{suspect}", d.segment, d.offset, d.reason);
    }
}

fn ls(dir: &Path, prefix: &str, all: bool, limit: usize, json: bool) -> Result<()> {
    let ins = open(dir)?;
    let mut rows = Vec::new();
    let mut more = 0usize;
    for r in ins.records() {
        let r =
            r.map_err(|e| CliError::runtime(format!("read {}: {}", dir.display(), chain(&e))))?;
        if (!all && !r.live) || !r.key.starts_with(prefix.as_bytes()) {
            continue;
        }
        if rows.len() < limit {
            rows.push(RecordOut::from(&r));
        } else {
            more += 1;
        }
    }
    if json {
        return print_json(&serde_json::json!({ "records": rows, "more": more }));
    }
    println!(
        "{:<40} {:>9} {:>10} {:>8} {:>14}  flags",
        "key", "segment", "offset", "bytes", "stale until"
    );
    for r in &rows {
        let mut flags = Vec::new();
        if r.kind != "value" {
            flags.push(r.kind);
        }
        if all && r.live {
            flags.push("live");
        }
        if r.compressed {
            flags.push("lz4");
        }
        if r.negative {
            flags.push("negative");
        }
        if r.suspect {
            flags.push("suspect");
        }
        let until = if r.kind == "value" { relative(r.stale_until) } else { "-".into() };
        println!(
            "{:<40} {:>9} {:>10} {:>8} {:>14}  {}",
            r.key,
            format!("{:08x}", r.segment),
            r.offset,
            r.record_bytes,
            until,
            flags.join(",")
        );
    }
    if more > 0 {
        println!("… and {more} more (raise --limit)");
    }
    Ok(())
}

fn get(dir: &Path, key: &str, json: bool, unseal: &Unseal) -> Result<()> {
    let keyring = keyring::load(unseal)?;
    let ins = open(dir)?;
    let rec = ins
        .get(key.as_bytes())
        .map_err(|e| {
            CliError::runtime(format!("read {key:?} in {}: {}", dir.display(), chain(&e)))
        })?
        .ok_or_else(|| {
            CliError::runtime(format!("no entry for key {key:?} in {}", dir.display()))
        })?;
    let opener = Opener {
        keyring: keyring.as_ref(),
        place: Place { cache: keyring::cache_of(unseal, key), key: key.as_bytes() },
    };
    let (envelope, envelope_error) = match view(&rec.envelope, opener) {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e)),
    };
    let out = GetOut {
        key: key.to_string(),
        segment: rec.info.segment,
        offset: rec.info.offset,
        record_bytes: rec.info.record_len,
        envelope,
        envelope_error,
    };
    if json {
        return print_json(&out);
    }
    println!("key          {}", out.key);
    println!(
        "record       segment {:08x}, offset {}, {} bytes",
        out.segment, out.offset, out.record_bytes
    );
    match (&out.envelope, &out.envelope_error) {
        (Some(v), _) => print!("{}", v.to_text()),
        (None, Some(e)) => println!("envelope     not valid: {e}"),
        (None, None) => {}
    }
    Ok(())
}

fn verify(dir: &Path, json: bool) -> Result<()> {
    let ins = open(dir)?;
    let r = ins
        .verify()
        .map_err(|e| CliError::runtime(format!("verify {}: {}", dir.display(), chain(&e))))?;
    let out = VerifyOut {
        dir: dir.display().to_string(),
        clean: r.is_clean(),
        segments: r.segments,
        records: r.records,
        bytes: r.bytes,
        damage: r.damage.iter().map(DamageOut::from).collect(),
        suspect_entries: r.suspect_entries,
        strays: r.strays.iter().map(StrayOut::from).collect(),
        state: r.state.as_ref().map(StateOut::from),
    };
    if json {
        print_json(&out)?;
    } else {
        println!(
            "checked {} segments, {} records, {} bytes",
            out.segments,
            count(out.records),
            count(out.bytes)
        );
        print_damage(&out.damage, "damage: ");
        for st in &out.strays {
            println!("stray: {}: {}", st.name, st.reason);
        }
        if out.suspect_entries > 0 {
            println!("suspect: {} entries are served only as stale", count(out.suspect_entries));
        }
        println!("state file: {}", state_line(&out.state));
        if out.clean {
            println!("ok: every record's CRC matches, no segment is missing");
        }
    }
    if out.clean {
        return Ok(());
    }
    let mut what = Vec::new();
    if let Some(d) = out.damage.first() {
        what.push(format!(
            "{} damaged or missing place(s), first: segment {:08x} at offset {}: {}",
            out.damage.len(),
            d.segment,
            d.offset,
            d.reason
        ));
    }
    if out.suspect_entries > 0 {
        what.push(format!("{} suspect entries", out.suspect_entries));
    }
    if !out.strays.is_empty() {
        what.push(format!("{} stray file(s)", out.strays.len()));
    }
    if out.state.as_ref().is_some_and(|s| !s.intact) {
        what.push("state file lost or damaged".into());
    }
    Err(CliError::damage(format!("{} in {}: {}", "damage", dir.display(), what.join("; "))))
}

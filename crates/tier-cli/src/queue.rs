//! `tier disk queue DIR`: the write-behind queue of a disk tier directory (the `QUEUE` file),
//! read-only through [`DiskInspector::queue`]: the writes still owed to the origin, the dead
//! letters, and any damage (exit code 3, as `verify`). A write sealed by a cache with a
//! keyring is shown as "encrypted, key N"; with a keyring (`--keyring-file` or `TIER_KEYRING`,
//! as `tier disk get`) its value is opened, under the cache `--cache` names (default: the
//! key's namespace).

use std::path::Path;

use serde::Serialize;
use tier_core::seal::{open_queued, Keyring};
use tier_core::spi::QueuedWrite;
use tier_disk::{DiskInspector, QueueReport};

use crate::cli::Unseal;
use crate::envelope::relative;
use crate::error::{CliError, Result};
use crate::keyring;

#[derive(Serialize)]
struct WriteOut {
    seq: u64,
    key: String,
    queued_at_ms: u64,
    /// The value as JSON, when its MessagePack maps to JSON (and, sealed, when it opened).
    value: Option<serde_json::Value>,
    value_bytes: usize,
    /// The value is sealed (a cache with a keyring queued it).
    encrypted: bool,
    /// The id of the key it is sealed with.
    key_id: Option<u32>,
    /// Why a sealed value is not shown (no keyring, or it does not open).
    value_error: Option<String>,
}

#[derive(Serialize)]
struct DeadOut {
    #[serde(flatten)]
    write: WriteOut,
    attempts: u32,
    reason: String,
}

#[derive(Serialize)]
struct QueueOut {
    dir: String,
    present: bool,
    pending: usize,
    dead_letters: usize,
    next_seq: u64,
    file_bytes: u64,
    records: u64,
    damage: Vec<String>,
    interrupted_write: bool,
    /// The first `--limit` pending writes, oldest first.
    pending_writes: Vec<WriteOut>,
    /// The first `--limit` dead letters, oldest first.
    dead: Vec<DeadOut>,
}

/// How the values of sealed writes are opened: the keyring, and the cache `--cache` names.
struct Opener<'a> {
    keyring: Option<Keyring>,
    unseal: &'a Unseal,
}

fn write_out(w: &QueuedWrite, opener: &Opener<'_>) -> WriteOut {
    let plain = match (&w.sealing, &opener.keyring) {
        (None, _) => Ok(w.value.to_vec()),
        (Some(_), None) => Err(format!(
            "encrypted: supply the keyring with --keyring-file or {}",
            keyring::KEYRING_ENV
        )),
        (Some(_), Some(k)) => {
            let key = String::from_utf8_lossy(&w.key);
            let cache = keyring::cache_of(opener.unseal, &key);
            open_queued(k, cache, w).map_err(|e| format!("does not open for cache {cache:?}: {e}"))
        }
    };
    let (value, value_error) = match plain {
        Ok(plain) => (rmp_serde::from_slice(&plain).ok(), None),
        Err(e) => (None, Some(e)),
    };
    WriteOut {
        seq: w.seq,
        key: String::from_utf8_lossy(&w.key).into_owned(),
        queued_at_ms: w.queued_at_ms,
        value,
        value_bytes: w.value.len(),
        encrypted: w.sealing.is_some(),
        key_id: w.key_id(),
        value_error,
    }
}

fn value_text(w: &WriteOut) -> String {
    let sealed = match (w.encrypted, w.key_id) {
        (false, _) => String::new(),
        (true, Some(id)) => format!("(encrypted, key {id}) "),
        (true, None) => "(encrypted) ".to_string(),
    };
    let shown = match (&w.value, &w.value_error) {
        (Some(v), _) => {
            let s = v.to_string();
            if s.chars().count() <= 60 {
                s
            } else {
                s.chars().take(57).chain("...".chars()).collect()
            }
        }
        (None, Some(e)) => format!("({} bytes: {e})", w.value_bytes),
        (None, None) => format!("({} bytes, not JSON-like)", w.value_bytes),
    };
    format!("{sealed}{shown}")
}

/// Show the queue of `dir` (opened by the caller).
pub fn show(
    ins: &DiskInspector,
    dir: &Path,
    limit: usize,
    json: bool,
    unseal: &Unseal,
) -> Result<()> {
    let opener = Opener { keyring: keyring::load(unseal)?, unseal };
    let present = ins.queue();
    let r = present.clone().unwrap_or_default();
    let out = QueueOut {
        dir: dir.display().to_string(),
        present: present.is_some(),
        pending: r.pending.len(),
        dead_letters: r.dead.len(),
        next_seq: r.next_seq,
        file_bytes: r.file_bytes,
        records: r.records,
        damage: r.damage.clone(),
        interrupted_write: r.interrupted_write,
        pending_writes: r.pending.iter().take(limit).map(|w| write_out(w, &opener)).collect(),
        dead: r
            .dead
            .iter()
            .take(limit)
            .map(|d| DeadOut {
                write: write_out(&d.write, &opener),
                attempts: d.attempts,
                reason: d.reason.clone(),
            })
            .collect(),
    };
    if json {
        let text = serde_json::to_string_pretty(&out)
            .map_err(|e| CliError::runtime(format!("encode JSON: {e}")))?;
        println!("{text}");
    } else {
        print_text(&out, &r);
    }
    match out.damage.first() {
        None => Ok(()),
        Some(first) => Err(CliError::damage(format!(
            "the write-behind queue in {} is damaged ({} place(s), first: {first}); the good records are kept",
            dir.display(),
            out.damage.len()
        ))),
    }
}

fn print_text(out: &QueueOut, r: &QueueReport) {
    if !out.present {
        println!("no write-behind queue (no QUEUE file: no cache has written behind here)");
        return;
    }
    let oldest = r.pending.first().map(|w| relative(w.queued_at_ms));
    println!(
        "write-behind queue: {} pending{}, {} dead letters; next seq {}; {} records, {} bytes",
        out.pending,
        oldest.map(|o| format!(" (oldest queued {o})")).unwrap_or_default(),
        out.dead_letters,
        out.next_seq,
        out.records,
        out.file_bytes
    );
    if out.interrupted_write {
        println!("an interrupted last write (never acknowledged) was dropped");
    }
    for d in &out.damage {
        println!("damage: {d}");
    }
    for w in &out.pending_writes {
        let ago = relative(w.queued_at_ms);
        println!("pending  seq {:>8}  {}  queued {ago}  {}", w.seq, w.key, value_text(w));
    }
    for d in &out.dead {
        let w = &d.write;
        println!(
            "dead     seq {:>8}  {}  {} attempts: {}  {}",
            w.seq,
            w.key,
            d.attempts,
            d.reason,
            value_text(w)
        );
    }
    let shown = out.pending_writes.len() + out.dead.len();
    if shown < out.pending + out.dead_letters {
        println!("… and {} more (raise --limit)", out.pending + out.dead_letters - shown);
    }
}

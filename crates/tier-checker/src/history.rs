//! The history: one JSON line per operation a node ran (its history file), and the faults the
//! orchestrator injected. Both are what the checker reads; nothing else is shared between the
//! processes of a run.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Context, HarnessError};

/// Wall-clock microseconds since the Unix epoch (every process of a run is on one host, so one
/// clock orders them all).
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// What a node did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `get_or_load` of one key (the loader reads the origin).
    Read,
    /// The origin's version of a key moved on, then `insert` of the new value.
    Insert,
    /// The origin's version of a key moved on, then `invalidate` of the key.
    Invalidate,
    /// Every key of a tag moved on in the origin, then `invalidate_tag`.
    InvalidateTag,
    /// Every key moved on in the origin, then `invalidate_namespace`.
    InvalidateNamespace,
    /// Every key moved on in the origin, then `clear`.
    Clear,
}

impl Op {
    /// The name used in the history and the report.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Insert => "insert",
            Op::Invalidate => "invalidate",
            Op::InvalidateTag => "invalidate_tag",
            Op::InvalidateNamespace => "invalidate_namespace",
            Op::Clear => "clear",
        }
    }
}

/// What the cache call answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A write or invalidation returned `Ok`.
    Ok,
    /// A read returned a value of this origin version, written by `writer`.
    Value {
        /// The origin version the value carries.
        version: u64,
        /// Who wrote that version to the origin (a node id, or `seed`).
        writer: String,
    },
    /// A read returned no value (the origin always has one: never right).
    None,
    /// A read returned a value that is not `key|version|writer` of the key read.
    Garbled(String),
    /// The call failed.
    Error(String),
}

/// One operation of one node: a line of its history file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The node (stable across its restarts).
    pub node: String,
    /// The node's life: 0 at the first start, +1 at every restart.
    pub life: u32,
    /// What was done.
    pub op: Op,
    /// The key read or written (index in the key space), for single-key operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<u32>,
    /// The tag invalidated, for `invalidate_tag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<u32>,
    /// Wall-clock µs just before the cache call.
    pub start_us: u64,
    /// Wall-clock µs just after it returned.
    pub end_us: u64,
    /// What it returned.
    pub outcome: Outcome,
    /// For reads: whether the hierarchy served a stale value (fail-safe), as the node could tell
    /// (`cache_stale_served_total` moved during the call; a node runs one call at a time).
    #[serde(default)]
    pub stale: bool,
    /// For writes: the origin versions this operation assigned before the call, `(key, version)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writes: Vec<(u32, u64)>,
    /// For reads: how the hierarchy answered, as its `get_or_load` span told the node
    /// (`result@tier`, e.g. `hit@memory`, `loaded@origin`); diagnostics only, not judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// A kind of fault the orchestrator injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// `kill -9` of a node, restarted on the same disk directory.
    Kill,
    /// `CLIENT KILL TYPE pubsub` and `CLIENT KILL TYPE normal` on every cache Redis server.
    ClientKill,
    /// A cache Redis server killed and restarted with its data (its AOF).
    RedisRestart,
    /// A cache Redis server killed and restarted without its data.
    RedisRestartNopersist,
    /// Every generation key (`tier-gen:*`) deleted.
    GenDelete,
    /// The proxies in front of the cache Redis delay every reply for a while.
    ProxyLatency,
    /// The proxies drop every connection (and refuse new ones for a moment).
    ProxyDrop,
}

impl FaultKind {
    /// Every kind, in the order of the figure line.
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Kill,
        FaultKind::ClientKill,
        FaultKind::RedisRestart,
        FaultKind::RedisRestartNopersist,
        FaultKind::GenDelete,
        FaultKind::ProxyLatency,
        FaultKind::ProxyDrop,
    ];

    /// The name used in the figure line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::ClientKill => "client_kill",
            FaultKind::RedisRestart => "redis_restart",
            FaultKind::RedisRestartNopersist => "redis_restart_nopersist",
            FaultKind::GenDelete => "gen_delete",
            FaultKind::ProxyLatency => "proxy_latency",
            FaultKind::ProxyDrop => "proxy_drop",
        }
    }
}

/// A fault as injected: what, on what, when (wall-clock µs around the injection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// What kind.
    pub kind: FaultKind,
    /// On what (a node id, a server's port, `all`).
    pub target: String,
    /// When the injection began.
    pub start_us: u64,
    /// When it was over (the node or server back, the latency lifted).
    pub end_us: u64,
}

/// Append-only writer of a history file: one line per record, written with one `write` call
/// as soon as the operation ends, so that a `kill -9` loses at most the operation in flight.
pub struct HistoryWriter {
    file: std::fs::File,
    line: Vec<u8>,
}

impl HistoryWriter {
    /// Open `path` for appending (a restarted node goes on with the same file).
    pub fn append(path: &Path) -> Result<Self, HarnessError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .context(|| format!("open history {}", path.display()))?;
        Ok(Self { file, line: Vec::with_capacity(256) })
    }

    /// Write one record.
    pub fn write(&mut self, record: &Record) -> Result<(), HarnessError> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record).context(|| "encode a record".into())?;
        self.line.push(b'\n');
        self.file.write_all(&self.line).context(|| "write the history".into())
    }
}

/// Read the records of a history file. A last line cut short (a node killed while writing it)
/// is skipped; any other line that is not a record is an error.
pub fn read_history(path: &Path) -> Result<Vec<Record>, HarnessError> {
    let file = std::fs::File::open(path).context(|| format!("open history {}", path.display()))?;
    let lines: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .context(|| format!("read history {}", path.display()))?;
    let mut records = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<Record>(line) {
            Ok(r) => records.push(r),
            Err(_) if i + 1 == lines.len() => {}
            Err(e) => {
                return Err(HarnessError::new(format!(
                    "{} line {}: not a record: {e}",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let mut w = HistoryWriter::append(&path).unwrap();
        let r = Record {
            node: "n0".into(),
            life: 1,
            op: Op::Read,
            key: Some(3),
            tag: None,
            start_us: 10,
            end_us: 20,
            outcome: Outcome::Value { version: 4, writer: "n1".into() },
            stale: true,
            writes: vec![],
            via: None,
        };
        w.write(&r).unwrap();
        w.write(&Record {
            op: Op::Insert,
            writes: vec![(3, 5)],
            via: None,
            outcome: Outcome::Ok,
            ..r.clone()
        })
        .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"node\":\"n0\",\"li")
            .unwrap();
        let got = read_history(&path).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], r);
        assert_eq!(got[1].writes, vec![(3, 5)]);
    }
}

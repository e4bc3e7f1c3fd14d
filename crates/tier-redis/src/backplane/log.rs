//! The invalidation log in Redis: a Stream of backplane messages and the epoch key beside it.
//!
//! - A position is a stream id (`ms-seq`) and the epoch it belongs to: `LogPosition` bytes
//!   `"ms-seq@epoch"`. The epoch is a random id written once (`SET NX`) under `stream + ":epoch"`;
//!   a position of another epoch, or an epoch key that is missing, means the log was lost
//!   (`FLUSHALL`, a restart without persistence, an eviction): what followed the position
//!   cannot be replayed.
//! - What followed a position was trimmed (or deleted) when the stream's
//!   `max-deleted-entry-id` (Redis 7, Valkey) is past it, or its first entry is (the position
//!   itself was trimmed: conservatively, what followed too). A stream whose last id is before a
//!   position went back (a restart that lost writes).

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;
use redis::Value;
use tier_core::spi::LogPosition;
use tier_core::{TierError, TierErrorKind};

use crate::commands;
use crate::connection::RedisConnection;
use crate::error::reply_error;

/// A Redis Stream entry id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct StreamId {
    pub(crate) ms: u64,
    pub(crate) seq: u64,
}

impl StreamId {
    pub(crate) const ZERO: Self = Self { ms: 0, seq: 0 };

    /// `"ms-seq"` (or `"ms"`, seq 0).
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-').unwrap_or((text, "0"));
        Some(Self { ms: ms.parse().ok()?, seq: seq.parse().ok()? })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Where an instance is in the log: a stream id of one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) id: StreamId,
    pub(crate) epoch: String,
}

impl Position {
    pub(crate) fn to_log(&self) -> LogPosition {
        LogPosition(Bytes::from(format!("{}@{}", self.id, self.epoch)))
    }

    /// The position in `log`; `None` when it is not one of ours (then nothing can be replayed).
    pub(crate) fn from_log(log: &LogPosition) -> Option<Self> {
        let text = std::str::from_utf8(&log.0).ok()?;
        let (id, epoch) = text.split_once('@')?;
        Some(Self { id: StreamId::parse(id)?, epoch: epoch.to_string() })
    }
}

/// The stream's key and its epoch key.
#[derive(Debug, Clone)]
pub(crate) struct LogKeys {
    pub(crate) stream: String,
    pub(crate) epoch: Vec<u8>,
}

impl LogKeys {
    /// The stream `stream` and its epoch key, in the stream's hash slot and starting with the
    /// stream's name (so an ACL key pattern of the stream covers it): `stream + ":epoch"` when
    /// the name has a hash tag (`{…}`), else `stream + "{" + stream + "}:epoch"` (its tag is the
    /// whole name, so it hashes as the stream does). In one slot, a Cluster master that loses
    /// its data loses both — and the reader, which reads the epoch with every poll, sees it
    /// even when the client reconnected under it without an error. (A name with a brace but no
    /// tag keeps `stream + ":epoch"`, which may be in another slot.)
    pub(crate) fn new(stream: &str) -> Self {
        let epoch = if has_hash_tag(stream) || stream.contains(['{', '}']) {
            format!("{stream}:epoch")
        } else {
            format!("{stream}{{{stream}}}:epoch")
        };
        Self { stream: stream.to_string(), epoch: epoch.into_bytes() }
    }
}

/// Does `key` have a Redis Cluster hash tag (a `{` followed later by a `}`, not empty
/// between them)?
fn has_hash_tag(key: &str) -> bool {
    key.find('{').is_some_and(|open| key[open + 1..].find('}').is_some_and(|close| close > 0))
}

/// What `XINFO STREAM` tells about trimming.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StreamInfo {
    pub(crate) last: StreamId,
    pub(crate) first: Option<StreamId>,
    /// `None` before Redis 7.
    pub(crate) max_deleted: Option<StreamId>,
}

impl StreamInfo {
    /// Were entries after `after` removed (trimmed, deleted), or did the stream go back
    /// before it?
    pub(crate) fn lost_after(&self, after: StreamId) -> bool {
        if self.last < after {
            return true;
        }
        // `max-deleted-entry-id` tells deletions exactly; a first entry past the position tells
        // that the position itself was trimmed, and most likely what followed it with it.
        self.max_deleted.is_some_and(|deleted| deleted > after)
            || (after > StreamId::ZERO && self.first.is_some_and(|f| f > after))
    }
}

/// The current epoch: the one in Redis, or `candidate` when there was none (then written).
/// Answers whether it was created now.
pub(crate) async fn epoch(
    conn: &RedisConnection,
    keys: &LogKeys,
) -> Result<(String, bool), TierError> {
    let candidate = format!("{:016x}", rand::random::<u64>());
    let before: Option<String> =
        conn.query("backplane epoch", &commands::set_nx_get(&keys.epoch, &candidate)).await?;
    Ok(match before {
        Some(e) => (e, false),
        None => (candidate, true),
    })
}

/// `XINFO STREAM`; `None` when the stream does not exist.
pub(crate) async fn info(
    conn: &RedisConnection,
    keys: &LogKeys,
) -> Result<Option<StreamInfo>, TierError> {
    match conn.query::<Value>("backplane xinfo", &commands::xinfo_stream(&keys.stream)).await {
        Ok(v) => parse_info(v).map(Some),
        Err(e) if e.to_string().contains("no such key") => Ok(None),
        Err(e) => Err(e),
    }
}

fn pairs(v: Value) -> Result<Vec<(String, Value)>, TierError> {
    let items: Vec<(Value, Value)> = match v {
        Value::Map(m) => m,
        Value::Array(a) => {
            let mut out = Vec::with_capacity(a.len() / 2);
            let mut it = a.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((k, v));
            }
            out
        }
        other => return Err(reply_error("XINFO STREAM", format!("unexpected reply {other:?}"))),
    };
    Ok(items
        .into_iter()
        .filter_map(|(k, v)| redis::from_redis_value::<String>(k).ok().map(|k| (k, v)))
        .collect())
}

fn id_of(v: Value) -> Option<StreamId> {
    redis::from_redis_value::<String>(v).ok().and_then(|s| StreamId::parse(&s))
}

pub(crate) fn parse_info(v: Value) -> Result<StreamInfo, TierError> {
    let mut fields: HashMap<String, Value> = pairs(v)?.into_iter().collect();
    let last = fields
        .remove("last-generated-id")
        .and_then(id_of)
        .ok_or_else(|| reply_error("XINFO STREAM", "no last-generated-id"))?;
    let first = match fields.remove("first-entry") {
        Some(Value::Array(entry)) => entry.into_iter().next().and_then(id_of),
        _ => None,
    };
    let max_deleted = fields.remove("max-deleted-entry-id").and_then(id_of);
    Ok(StreamInfo { last, first, max_deleted })
}

/// One entry of the stream: its id and its message bytes (`None`: no `m` field).
pub(crate) type RawEntry = (StreamId, Option<Vec<u8>>);

/// The entries of an `XRANGE` reply (or of one stream of an `XREAD` reply).
pub(crate) fn parse_entries(v: Value) -> Result<Vec<RawEntry>, TierError> {
    let Value::Array(items) = v else {
        return Err(reply_error("stream entries", format!("unexpected reply {v:?}")));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(parts) = item else {
            return Err(reply_error("stream entry", "not an array"));
        };
        let mut parts = parts.into_iter();
        let id =
            parts.next().and_then(id_of).ok_or_else(|| reply_error("stream entry", "no id"))?;
        let message = match parts.next() {
            Some(fields) => pairs(fields)?
                .into_iter()
                .find(|(k, _)| k == "m")
                .and_then(|(_, v)| redis::from_redis_value::<Vec<u8>>(v).ok()),
            None => None,
        };
        out.push((id, message));
    }
    Ok(out)
}

/// The entries of an `XREAD` reply of one stream (nil: none came within the block).
pub(crate) fn parse_read(v: Value) -> Result<Vec<RawEntry>, TierError> {
    let streams: Vec<(Value, Value)> = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(m) => m,
        Value::Array(a) => a
            .into_iter()
            .map(|s| match s {
                Value::Array(kv) if kv.len() == 2 => {
                    let mut kv = kv.into_iter();
                    match (kv.next(), kv.next()) {
                        (Some(k), Some(v)) => Ok((k, v)),
                        _ => Err(reply_error("XREAD", "short stream reply")),
                    }
                }
                _ => Err(reply_error("XREAD", "unexpected stream reply")),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(reply_error("XREAD", format!("unexpected reply {other:?}"))),
    };
    match streams.into_iter().next() {
        Some((_, entries)) => parse_entries(entries),
        None => Ok(Vec::new()),
    }
}

/// Why what follows a position cannot be replayed, or the stream's state when it can.
#[derive(Debug)]
pub(crate) enum Check {
    /// Everything after the position is in the stream (of this epoch).
    Intact,
    /// Lost: the epoch changed or is new, or entries after the position were trimmed. The
    /// position to go on from: the stream's head now.
    Lost(Position),
}

/// Can what follows `after` be read? (Epoch first: a position of another epoch is lost
/// whatever the stream holds.)
pub(crate) async fn check(
    conn: &RedisConnection,
    keys: &LogKeys,
    after: &Position,
) -> Result<Check, TierError> {
    let (epoch, _) = epoch(conn, keys).await?;
    let info = info(conn, keys).await?;
    let head =
        Position { id: info.as_ref().map_or(StreamId::ZERO, |i| i.last), epoch: epoch.clone() };
    if epoch != after.epoch {
        return Ok(Check::Lost(head));
    }
    let lost = match &info {
        Some(i) => i.lost_after(after.id),
        None => after.id > StreamId::ZERO,
    };
    Ok(if lost { Check::Lost(head) } else { Check::Intact })
}

/// The head of the log: the stream's last id in the current epoch (created when missing).
pub(crate) async fn head(conn: &RedisConnection, keys: &LogKeys) -> Result<Position, TierError> {
    let (epoch, _) = epoch(conn, keys).await?;
    let id = info(conn, keys).await?.map_or(StreamId::ZERO, |i| i.last);
    Ok(Position { id, epoch })
}

/// Entries per `XRANGE` page of a replay.
pub(crate) const PAGE: usize = 1000;

/// Everything after `after`, in pages; `None` when it cannot be replayed (checked after the
/// first page, so that a trim racing with the read is seen).
pub(crate) async fn replay(
    conn: &RedisConnection,
    keys: &LogKeys,
    after: &Position,
) -> Result<Option<Vec<RawEntry>>, TierError> {
    let mut out = Vec::new();
    let mut from = after.id;
    let mut first_page = true;
    loop {
        let cmd = commands::xrange_after(&keys.stream, &from.to_string(), PAGE);
        let page = parse_entries(conn.query::<Value>("backplane replay", &cmd).await?)?;
        if first_page {
            first_page = false;
            if matches!(check(conn, keys, after).await?, Check::Lost(_)) {
                return Ok(None);
            }
        }
        let full = page.len() == PAGE;
        if let Some((last, _)) = page.last() {
            from = *last;
        }
        out.extend(page);
        if !full {
            return Ok(Some(out));
        }
    }
}

/// An error for a position that is not one of this backplane's.
pub(crate) fn foreign_position(log: &LogPosition) -> TierError {
    TierError::new(
        TierErrorKind::Rejected,
        format!("not a position of the Redis backplane: {:?}", String::from_utf8_lossy(&log.0)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_positions_round_trip() {
        let id = StreamId::parse("1700000000000-7").expect("an id");
        assert_eq!(id, StreamId { ms: 1_700_000_000_000, seq: 7 });
        assert_eq!(StreamId::parse("12"), Some(StreamId { ms: 12, seq: 0 }));
        assert!(StreamId::parse("x-1").is_none() && StreamId::parse("").is_none());
        assert!(StreamId { ms: 2, seq: 0 } > StreamId { ms: 1, seq: 9 });
        let p = Position { id, epoch: "00ff".into() };
        assert_eq!(Position::from_log(&p.to_log()), Some(p));
        assert_eq!(Position::from_log(&LogPosition(Bytes::from_static(b"1-0"))), None);
    }

    #[test]
    fn the_epoch_key_shares_the_streams_hash_slot() {
        let slot = crate::connection::slot;
        for stream in ["tier-log:invalidations", "{svc}:log", "log"] {
            let keys = LogKeys::new(stream);
            assert_eq!(slot(&keys.epoch), slot(stream.as_bytes()), "{stream}");
            assert!(keys.epoch.starts_with(stream.as_bytes()), "{stream}: an ACL prefix covers it");
        }
        assert_eq!(LogKeys::new("{svc}:log").epoch, b"{svc}:log:epoch");
        assert_eq!(LogKeys::new("log").epoch, b"log{log}:epoch");
        assert_eq!(LogKeys::new("x{y").epoch, b"x{y:epoch", "a brace without a tag: as before");
    }

    #[test]
    fn trimming_is_told_by_the_deleted_id_or_the_first_entry() {
        let at = |ms| StreamId { ms, seq: 0 };
        let info = StreamInfo { last: at(10), first: Some(at(5)), max_deleted: Some(at(4)) };
        assert!(!info.lost_after(at(5)) && !info.lost_after(at(7)));
        assert!(info.lost_after(at(3)), "entry 4 was removed after 3");
        assert!(info.lost_after(at(4)), "the first entry is past the position");
        assert!(info.lost_after(at(11)), "the stream went back");
        let old = StreamInfo { max_deleted: None, ..info };
        assert!(old.lost_after(at(3)) && !old.lost_after(at(5)) && !old.lost_after(StreamId::ZERO));
    }

    #[test]
    fn replies_parse_in_both_protocols() {
        let s = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        let entry = Value::Array(vec![s("5-1"), Value::Array(vec![s("m"), s("payload")])]);
        let read =
            Value::Array(vec![Value::Array(vec![s("stream"), Value::Array(vec![entry.clone()])])]);
        let want = vec![(StreamId { ms: 5, seq: 1 }, Some(b"payload".to_vec()))];
        assert_eq!(parse_read(read).expect("RESP2"), want);
        let map = Value::Map(vec![(s("stream"), Value::Array(vec![entry]))]);
        assert_eq!(parse_read(map).expect("RESP3"), want);
        assert!(parse_read(Value::Nil).expect("nil").is_empty());
        let info = Value::Array(vec![
            s("length"),
            Value::Int(1),
            s("last-generated-id"),
            s("9-0"),
            s("max-deleted-entry-id"),
            s("3-0"),
            s("first-entry"),
            Value::Array(vec![s("4-0"), Value::Array(vec![])]),
        ]);
        let got = parse_info(info).expect("info");
        assert_eq!(got.last, StreamId { ms: 9, seq: 0 });
        assert_eq!(got.first, Some(StreamId { ms: 4, seq: 0 }));
        assert_eq!(got.max_deleted, Some(StreamId { ms: 3, seq: 0 }));
    }
}

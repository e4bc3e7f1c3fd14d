//! Redis Cluster topology: hash slots, the masters (from `CLUSTER SLOTS`), grouping keys by
//! slot, and where a per-node command goes.

use std::collections::HashMap;

use redis::Value;

/// Where a command that concerns one node (`SCAN`, `INFO`, `DBSIZE`, a pipeline of keys found
/// on it) is sent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Route {
    /// The standalone server.
    Server,
    /// One master of a Cluster, by address.
    Master { host: String, port: u16 },
}

impl Route {
    /// `host:port` of a master; `None` for the standalone server.
    pub(crate) fn address(&self) -> Option<String> {
        match self {
            Self::Server => None,
            Self::Master { host, port } => Some(format!("{host}:{port}")),
        }
    }
}

/// Hash slots of a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;

/// The Redis Cluster hash slot of `key` (CRC16/XMODEM of the key or of its `{hash tag}`, mod 16384).
pub(crate) fn slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key).unwrap_or(key)) % SLOTS
}

fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &rest[..close])
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// `items` grouped by the hash slot of their Redis key (`key_of`), each group in the order of
/// `items`.
pub(crate) fn by_slot<T>(items: Vec<T>, key_of: impl Fn(&T) -> u16) -> Vec<Vec<T>> {
    let mut groups: HashMap<u16, Vec<T>> = HashMap::new();
    for item in items {
        groups.entry(key_of(&item)).or_default().push(item);
    }
    groups.into_values().collect()
}

/// The slot ranges of a `CLUSTER SLOTS` reply with the master serving each: `(first, last,
/// master)`, in the order of the reply. Ranges that are not well formed (a slot past 16383, a
/// port past 65535, a missing master) are left out. A master announced without a host (an
/// empty string or nil: "the endpoint this request went to", as a node that never met another
/// says of itself) is on `asked_host`.
pub(crate) fn slot_ranges(slots: Value, asked_host: &str) -> Vec<(u16, u16, Route)> {
    let mut out = Vec::new();
    let Value::Array(ranges) = slots else { return out };
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let slot_at = |i: usize| match parts.get(i) {
            Some(Value::Int(n)) => u16::try_from(*n).ok().filter(|s| *s < SLOTS),
            _ => None,
        };
        let (Some(first), Some(last)) = (slot_at(0), slot_at(1)) else { continue };
        let Some(Value::Array(master)) = parts.get(2) else { continue };
        let host = match master.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            Some(Value::Nil) => String::new(),
            _ => continue,
        };
        let host = if host.is_empty() { asked_host.to_string() } else { host };
        let Some(Value::Int(port)) = master.get(1) else { continue };
        let Ok(port) = u16::try_from(*port) else { continue };
        if first <= last {
            out.push((first, last, Route::Master { host, port }));
        }
    }
    out
}

/// The masters of `ranges` ([`slot_ranges`]), each once, sorted.
pub(crate) fn masters(ranges: Vec<(u16, u16, Route)>) -> Vec<Route> {
    let mut masters: Vec<Route> = ranges.into_iter().map(|(_, _, m)| m).collect();
    masters.sort();
    masters.dedup();
    masters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` (and the Redis Cluster spec's CRC16 test vector).
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(hash_tag(b"foo{}{bar}"), None);
        assert_eq!(hash_tag(b"foo{{bar}}zap"), Some(&b"{bar"[..]));
    }

    #[test]
    fn masters_of_a_slots_reply() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![Value::BulkString(host.as_bytes().to_vec()), Value::Int(port)])
        };
        let range = |from: i64, to: i64, master: Value| {
            Value::Array(vec![Value::Int(from), Value::Int(to), master, node("10.0.0.9", 1)])
        };
        let reply = Value::Array(vec![
            range(0, 99, node("10.0.0.2", 7001)),
            range(100, 199, node("10.0.0.1", 7000)),
            range(200, 299, node("10.0.0.2", 7001)),
            Value::Nil,
            range(300, 399, node("10.0.0.3", 70000)),
        ]);
        assert_eq!(
            masters(slot_ranges(reply, "")),
            [
                Route::Master { host: "10.0.0.1".into(), port: 7000 },
                Route::Master { host: "10.0.0.2".into(), port: 7001 },
            ]
        );
        assert!(masters(slot_ranges(Value::Nil, "")).is_empty());
    }

    #[test]
    fn slot_ranges_of_a_slots_reply() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![Value::BulkString(host.as_bytes().to_vec()), Value::Int(port)])
        };
        let range = |from: i64, to: i64, master: Value| {
            Value::Array(vec![Value::Int(from), Value::Int(to), master])
        };
        let reply = Value::Array(vec![
            range(0, 99, node("10.0.0.2", 7001)),
            range(100, 16383, node("10.0.0.1", 7000)),
            range(5, 16384, node("10.0.0.1", 7000)), // past the last slot
            range(9, 3, node("10.0.0.1", 7000)),     // backwards
            range(-1, 3, node("10.0.0.1", 7000)),    // negative
            Value::Array(vec![Value::Int(0), Value::Int(1)]), // no master
            range(200, 299, node("", 7002)),         // "the node you asked"
            range(300, 399, Value::Array(vec![Value::Nil, Value::Int(7003)])),
        ]);
        let m = |host: &str, port| Route::Master { host: host.into(), port };
        assert_eq!(
            slot_ranges(reply, "10.0.0.7"),
            [
                (0, 99, m("10.0.0.2", 7001)),
                (100, 16383, m("10.0.0.1", 7000)),
                (200, 299, m("10.0.0.7", 7002)),
                (300, 399, m("10.0.0.7", 7003)),
            ]
        );
    }

    #[test]
    fn groups_keep_order() {
        let groups = by_slot(vec![1, 2, 3, 4, 5], |n| (n % 2) as u16);
        let mut groups: Vec<Vec<i32>> = groups;
        groups.sort();
        assert_eq!(groups, [vec![1, 3, 5], vec![2, 4]]);
    }
}

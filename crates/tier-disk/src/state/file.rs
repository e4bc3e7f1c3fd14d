//! The state file's format and the rule that replays it.
//!
//! ```text
//! STATE  = header (16 bytes) | record | record | ...
//! header = magic b"TIERSTA1" | reserved u32 (0) | crc32 of bytes 0..12
//! record = crc32 u32 (over bytes 4.. of the record) | body length u32 | kind u8 | body
//! kinds  : 1 batch    body = op* ; op = kind u8 (0 put, 1 remove) | key length u32
//!                             | value length u32 (0 for remove) | key | value
//!          2 lost     (the state was found missing or damaged; sticky until 3)
//!          3 found    (the loss was taken into account by the owner)
//!          4 segment  body = u32, the newest segment id the tier ever created
//! ```
//! Integers are little endian. A batch is applied whole or not at all (one CRC), in order; the
//! last write of a key wins. Replay stops at the first record that is incomplete or fails its
//! CRC: an incomplete record at the very end of a file whose length is a multiple of 4096 is a
//! write cut short by a crash (a write is cut only between pages), which was never acknowledged;
//! anything else may have lost acknowledged writes.

use std::collections::HashMap;

use bytes::Bytes;

/// The state's keys and values (seeded per process: keys come from the application).
pub(crate) type Map = HashMap<Bytes, Bytes, foldhash::fast::RandomState>;

/// The state file's name.
pub(crate) const STATE_FILE: &str = "STATE";
/// Where a new state file is written before it is renamed over the old one.
pub(crate) const STATE_TMP: &str = "STATE.tmp";
/// Bytes of the file header.
pub(crate) const FILE_HEADER_LEN: usize = 16;
/// Bytes of a record header.
pub(crate) const RECORD_HEADER_LEN: usize = 9;
/// Bytes a key/value pair takes in a batch, besides its key and value.
pub(crate) const PAIR_OVERHEAD: usize = 9;
/// The longest key of the state, in bytes.
pub const MAX_STATE_KEY_LEN: usize = 64 << 10;
/// The longest value of the state, in bytes.
pub const MAX_STATE_VALUE_LEN: usize = 64 << 10;
/// The most bytes the live keys and values of the state may take (as written in a batch).
pub const MAX_STATE_BYTES: u64 = 64 << 20;
/// A state file longer than this is not read (compaction keeps a file under ~4× its live size).
pub(crate) const MAX_FILE_BYTES: u64 = 8 * MAX_STATE_BYTES;

const MAGIC: &[u8; 8] = b"TIERSTA1";
const PAGE: u64 = 4096;

/// Record kinds.
pub(crate) const BATCH: u8 = 1;
pub(crate) const LOST: u8 = 2;
pub(crate) const FOUND: u8 = 3;
pub(crate) const SEGMENT: u8 = 4;

const OP_PUT: u8 = 0;
const OP_REMOVE: u8 = 1;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The file header.
pub(crate) fn header() -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    let crc = crc32fast::hash(&h[..12]);
    h[12..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Append one record of `kind` whose body `body` writes, to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, kind: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    out.push(kind);
    body(out);
    let len = u32::try_from(out.len() - start - RECORD_HEADER_LEN).unwrap_or(u32::MAX);
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Append one pair (a put with a value, a remove without) to a batch body.
pub(crate) fn encode_pair(out: &mut Vec<u8>, key: &[u8], value: Option<&[u8]>) {
    out.push(if value.is_some() { OP_PUT } else { OP_REMOVE });
    let v = value.unwrap_or_default();
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(v);
}

/// Bytes `key` and `value` take in a batch.
pub(crate) fn pair_len(key: &[u8], value: &[u8]) -> u64 {
    (PAIR_OVERHEAD + key.len() + value.len()) as u64
}

/// Why replay stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// Where the valid part ends.
    pub offset: u64,
    /// What was wrong.
    pub reason: String,
    /// A write cut short by a crash (never acknowledged): nothing was lost.
    pub torn: bool,
}

/// What a state file holds.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub map: Map,
    /// Bytes the live pairs take in a batch.
    pub live: u64,
    /// The sticky "lost" mark is set.
    pub lost: bool,
    pub high_water: Option<u32>,
    /// Where the valid records end.
    pub valid_end: u64,
    pub problem: Option<Problem>,
}

impl Parsed {
    fn stop(&mut self, offset: usize, reason: String, torn: bool) {
        self.problem = Some(Problem { offset: offset as u64, reason, torn });
    }

    /// Apply a put (`Some` value) or a remove of `key`.
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.apply_bytes(Bytes::copy_from_slice(key), value.map(Bytes::copy_from_slice));
    }

    /// [`apply`](Self::apply), taking the key and value as they are (slices of the file read).
    fn apply_bytes(&mut self, key: Bytes, value: Option<Bytes>) {
        let key_len = key.len();
        let old = match value {
            Some(v) => {
                self.live += pair_len(&key, &v);
                self.map.insert(key, v)
            }
            None => self.map.remove(&key),
        };
        if let Some(old) = old {
            self.live = self.live.saturating_sub((PAIR_OVERHEAD + key_len + old.len()) as u64);
        }
    }
}

/// A key and its new value (`None`: removed).
pub(crate) type Op<'a> = (&'a [u8], Option<&'a [u8]>);

/// The pairs of a batch body, or `None` when it is malformed.
fn batch(body: &[u8]) -> Option<Vec<Op<'_>>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < body.len() {
        let head = body.get(at..at + PAIR_OVERHEAD)?;
        let (op, klen, vlen) = (head[0], u32_at(head, 1) as usize, u32_at(head, 5) as usize);
        if klen > MAX_STATE_KEY_LEN || vlen > MAX_STATE_VALUE_LEN {
            return None;
        }
        at += PAIR_OVERHEAD;
        let key = body.get(at..at + klen)?;
        let value = body.get(at + klen..at + klen + vlen)?;
        at += klen + vlen;
        match op {
            OP_PUT => out.push((key, Some(value))),
            OP_REMOVE if vlen == 0 => out.push((key, None)),
            _ => return None,
        }
    }
    Some(out)
}

/// Replay a whole state file's bytes. Keys and values are slices of `file` (no copy each).
pub(crate) fn parse(file: Bytes) -> Parsed {
    let bytes = &file[..];
    let mut p = Parsed::default();
    let len = bytes.len();
    let cut_by_crash = (len as u64).is_multiple_of(PAGE);
    match bytes.get(..FILE_HEADER_LEN) {
        None => {
            p.stop(0, format!("{len} bytes, shorter than the state file header"), false);
            return p;
        }
        Some(h) if h != header() => {
            p.stop(0, "not a tier state file (bad header)".into(), false);
            return p;
        }
        Some(_) => {}
    }
    let mut at = FILE_HEADER_LEN;
    while at < len {
        let Some(head) = bytes.get(at..at + RECORD_HEADER_LEN) else {
            p.stop(at, "incomplete record header at the end".into(), cut_by_crash);
            break;
        };
        let body_len = u32_at(head, 4) as usize;
        if body_len as u64 > MAX_STATE_BYTES + 1024 {
            p.stop(at, format!("record claims {body_len} bytes"), false);
            break;
        }
        let Some(rec) = bytes.get(at..at + RECORD_HEADER_LEN + body_len) else {
            let reason = format!("incomplete record at the end ({body_len} bytes claimed)");
            p.stop(at, reason, cut_by_crash);
            break;
        };
        if crc32fast::hash(&rec[4..]) != u32_at(rec, 0) {
            p.stop(at, "record checksum mismatch".into(), false);
            break;
        }
        let body = &rec[RECORD_HEADER_LEN..];
        match (rec[8], body.len()) {
            (BATCH, _) => match batch(body) {
                Some(pairs) => {
                    let view = |part: &[u8]| file.slice_ref(part);
                    for (k, v) in pairs {
                        p.apply_bytes(view(k), v.map(view));
                    }
                }
                None => {
                    p.stop(at, "malformed batch record".into(), false);
                    break;
                }
            },
            (LOST, 0) => p.lost = true,
            (FOUND, 0) => p.lost = false,
            (SEGMENT, 4) => p.high_water = Some(u32_at(body, 0)),
            (kind, n) => {
                p.stop(at, format!("unknown record kind {kind} ({n} bytes)"), false);
                break;
            }
        }
        at += rec.len();
        p.valid_end = at as u64;
    }
    if p.problem.is_none() {
        p.valid_end = len as u64;
    }
    p.valid_end = p.valid_end.max(FILE_HEADER_LEN as u64);
    p
}

/// A whole file holding `map` (one batch), the "lost" mark and the high-water segment id.
pub(crate) fn image(map: &Map, lost: bool, high_water: Option<u32>) -> Vec<u8> {
    let mut out = header().to_vec();
    if lost {
        encode(&mut out, LOST, |_| {});
    }
    if let Some(id) = high_water {
        encode(&mut out, SEGMENT, |b| b.extend_from_slice(&id.to_le_bytes()));
    }
    if !map.is_empty() {
        encode(&mut out, BATCH, |b| {
            for (k, v) in map {
                encode_pair(b, k, Some(v));
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(ops: &[Op<'_>]) -> Vec<u8> {
        let mut out = header().to_vec();
        for (k, v) in ops {
            encode(&mut out, BATCH, |b| encode_pair(b, k, *v));
        }
        out
    }

    #[test]
    fn last_write_wins_and_removes_stick() {
        let f = file(&[(b"a", Some(b"1")), (b"b", Some(b"2")), (b"a", Some(b"3")), (b"b", None)]);
        let p = parse(f.clone().into());
        assert_eq!(p.problem, None);
        assert_eq!(p.map.len(), 1);
        assert_eq!(p.map.get(&b"a"[..]).map(|v| &v[..]), Some(&b"3"[..]));
        assert_eq!(p.live, pair_len(b"a", b"3"));
        assert_eq!(p.valid_end, f.len() as u64);
        let again = parse(image(&p.map, true, Some(7)).into());
        assert_eq!((again.map, again.lost, again.high_water), (p.map, true, Some(7)));
    }

    #[test]
    fn every_cut_and_flip_is_a_problem_never_a_panic() {
        let ops: [Op<'_>; 3] =
            [(b"key", Some(b"value")), (b"k2", Some(&[9u8; 300])), (b"key", None)];
        let f = file(&ops);
        let mut ends = vec![FILE_HEADER_LEN];
        for n in 1..=ops.len() {
            ends.push(file(&ops[..n]).len());
        }
        for cut in 0..f.len() {
            let p = parse(Bytes::copy_from_slice(&f[..cut]));
            assert_eq!(p.problem.is_none(), ends.contains(&cut), "cut at {cut}");
            assert!(p.valid_end <= cut.max(FILE_HEADER_LEN) as u64);
        }
        for at in 0..f.len() {
            for bit in 0..8 {
                let mut g = f.clone();
                g[at] ^= 1 << bit;
                let p = parse(g.into());
                assert!(p.problem.as_ref().is_some_and(|pr| !pr.torn), "flip at {at}");
            }
        }
    }
}

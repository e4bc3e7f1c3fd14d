//! On-disk format: segment header, record header, key hash, and a scanner over a segment's bytes.
//!
//! ```text
//! segment file  = segment header (32 bytes) | record | record | ... | zeros
//! segment header: 0 magic b"TIERSEG1" | 8 segment id u32 | 12 segment size u32
//!                 | 16 crc32 of bytes 0..16 | 20 previous segment id u32 | 24 crc32 of bytes 0..24
//!                 | 28 zero padding to 32
//! record        = record header (32 bytes) | key | value | zero padding to a multiple of 8
//! record header:
//!    0  4 crc32 over header bytes 4..32 + key + value
//!    4  1 marker 0xD5 (a zero byte here is the end of the written part)
//!    5  1 flags: bits 0-1 kind (0 value, 1 tombstone, 2 clear, 3 suspect), bits 2-3 envelope flags
//!    6  2 key length (u16)
//!    8  4 value length (u32)
//!   12  4 reserved (0)
//!   16  8 key hash (u64)
//!   24  8 stale_until (Unix ms; 0 for tombstones, clear and suspect records)
//! ```
//! All integers are little endian. The previous segment id (bytes 20..28) names the segment
//! that was the newest when this one was created (its own id when there was none), so that a
//! skipped id is not mistaken for a missing segment; segments written before it existed have
//! zeros there, and a gap before one of them is not judged (the version that wrote them left
//! gaps where it deleted an empty segment). A suspect record's value is
//! the position (segment id u32, offset u32) before which every record is suspect.

/// Bytes of the segment header; the first record starts here.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Bytes of a record header.
pub const RECORD_HEADER_LEN: usize = 32;
/// Records start at multiples of this.
pub const RECORD_ALIGN: usize = 8;
/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = u16::MAX as usize;

const SEGMENT_MAGIC: &[u8; 8] = b"TIERSEG1";
const RECORD_MARKER: u8 = 0xD5;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RecordKind {
    /// A key and its envelope.
    Value,
    /// The key was removed.
    Tombstone,
    /// Everything written before this record is gone (`clear`).
    Clear,
    /// Damage was found when the directory was opened: every record before the position this
    /// record names may have been replaced or removed by a record that was lost, and is served
    /// only as stale (the record makes that survive later opens).
    Suspect,
}

impl RecordKind {
    fn bits(self) -> u8 {
        match self {
            Self::Value => 0,
            Self::Tombstone => 1,
            Self::Clear => 2,
            Self::Suspect => 3,
        }
    }
    fn from_bits(b: u8) -> Self {
        match b & 0b11 {
            0 => Self::Value,
            1 => Self::Tombstone,
            2 => Self::Clear,
            _ => Self::Suspect,
        }
    }
}

/// A parsed record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    /// The envelope's flags (compressed, negative), copied for inspection.
    pub envelope_flags: u8,
    pub key_len: u16,
    pub value_len: u32,
    pub key_hash: u64,
    pub stale_until: u64,
}

impl RecordHeader {
    /// Bytes the whole record takes in the segment, padding included.
    pub fn record_len(&self) -> usize {
        align(RECORD_HEADER_LEN + self.key_len as usize + self.value_len as usize)
    }
}

/// `n` rounded up to [`RECORD_ALIGN`].
pub fn align(n: usize) -> usize {
    n.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// The key hash stored in record headers and used by the index. Stable across processes and
/// versions (it is on disk): 8-byte words folded with multiply-rotate, then the murmur3 finalizer.
pub fn key_hash(key: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = 0x2545_F491_4F6C_DD1D ^ (key.len() as u64).wrapping_mul(K);
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    fmix64(h)
}

/// The murmur3 64-bit finalizer (a bijection with good avalanche).
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// A place in the log: records are ordered by segment id, then offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// The segment id.
    pub seg: u32,
    /// Byte offset in the segment.
    pub offset: u32,
}

impl Pos {
    /// The start of segment `seg`.
    pub fn start(seg: u32) -> Self {
        Self { seg, offset: 0 }
    }

    /// `offset` in segment `seg` (offsets past 4 GiB, which segments never reach, saturate).
    pub fn at(seg: u32, offset: u64) -> Self {
        Self { seg, offset: u32::try_from(offset).unwrap_or(u32::MAX) }
    }

    /// The 8 bytes of a suspect record's value.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.seg.to_le_bytes());
        b[4..].copy_from_slice(&self.offset.to_le_bytes());
        b
    }

    /// Parse a suspect record's value.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        (b.len() == 8).then(|| Self { seg: u32_at(b, 0), offset: u32_at(b, 4) })
    }
}

/// What a segment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment id.
    pub id: u32,
    /// The segment's size in bytes.
    pub size: u32,
    /// The segment that was the newest when this one was created, when the header says so.
    pub prev: Option<u32>,
}

/// The segment header of segment `id`, `size` bytes long, created after segment `prev`.
pub fn segment_header(id: u32, size: u32, prev: Option<u32>) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&id.to_le_bytes());
    h[12..16].copy_from_slice(&size.to_le_bytes());
    let crc = crc32fast::hash(&h[..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h[20..24].copy_from_slice(&prev.unwrap_or(id).to_le_bytes());
    let crc = crc32fast::hash(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Check a segment header.
pub fn parse_segment_header(bytes: &[u8]) -> Result<SegmentHeader, String> {
    let h = bytes.get(..SEGMENT_HEADER_LEN).ok_or("file shorter than a segment header")?;
    if &h[..8] != SEGMENT_MAGIC {
        return Err("not a tier segment (bad magic)".into());
    }
    if crc32fast::hash(&h[..16]) != u32_at(h, 16) {
        return Err("segment header checksum mismatch".into());
    }
    let id = u32_at(h, 8);
    let prev = if h[20..32].iter().all(|b| *b == 0) {
        None // written before the header named its predecessor
    } else if crc32fast::hash(&h[..24]) != u32_at(h, 24) || h[28..32].iter().any(|b| *b != 0) {
        return Err("segment header checksum mismatch (previous segment id)".into());
    } else {
        Some(u32_at(h, 20)).filter(|p| *p != id)
    };
    Ok(SegmentHeader { id, size: u32_at(h, 12), prev })
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Encode a whole record (header, key, value, padding) into `out` (cleared first).
/// The caller checked the lengths: `key.len() <= MAX_KEY_LEN`, `value.len() <= u32::MAX`.
pub fn encode_record(
    out: &mut Vec<u8>,
    kind: RecordKind,
    envelope_flags: u8,
    key: &[u8],
    value: &[u8],
    stale_until: u64,
) {
    out.clear();
    let total = align(RECORD_HEADER_LEN + key.len() + value.len());
    out.reserve(total);
    out.extend_from_slice(&[0u8; 4]);
    out.push(RECORD_MARKER);
    out.push(kind.bits() | ((envelope_flags & 0b11) << 2));
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&key_hash(key).to_le_bytes());
    out.extend_from_slice(&stale_until.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = crc32fast::hash(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out.resize(total, 0);
}

/// Why a scan stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Offset of the bad record.
    pub offset: usize,
    /// What was wrong.
    pub reason: String,
}

/// The whole length (padding included) the record header at the start of `h` claims, when
/// its marker and kind are valid; `None` for anything else (zeros, garbage, too short).
pub fn claimed_len(h: &[u8]) -> Option<usize> {
    let h = h.get(..RECORD_HEADER_LEN)?;
    if h[4] != RECORD_MARKER {
        return None;
    }
    Some(align(RECORD_HEADER_LEN + u16_at(h, 6) as usize + u32_at(h, 8) as usize))
}

/// Parse the record header at `offset` of `seg` (the readable part of a segment) and check the
/// record: lengths inside `seg`, and with `verify` its CRC and key hash. `Ok(None)` is the clean
/// end of the written part (a zero marker byte, or no room for another header).
pub fn check_record(
    seg: &[u8],
    offset: usize,
    verify: bool,
) -> Result<Option<RecordHeader>, Damage> {
    let damage = |reason: String| Damage { offset, reason };
    let Some(h) = seg.get(offset..offset + RECORD_HEADER_LEN) else {
        // Not even a header fits: the tail of the segment. Non-zero bytes there are a torn header.
        return match seg.get(offset..) {
            Some(tail) if tail.iter().any(|b| *b != 0) => {
                Err(damage(format!("torn record header ({} bytes)", tail.len())))
            }
            _ => Ok(None),
        };
    };
    if h[4] == 0 && h.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    if h[4] != RECORD_MARKER {
        return Err(damage(format!("bad record marker {:#04x}", h[4])));
    }
    if h[5] >> 4 != 0 || u32_at(h, 12) != 0 {
        return Err(damage(format!("bad record flags {:#04x}", h[5])));
    }
    let kind = RecordKind::from_bits(h[5]);
    let header = RecordHeader {
        kind,
        envelope_flags: (h[5] >> 2) & 0b11,
        key_len: u16_at(h, 6),
        value_len: u32_at(h, 8),
        key_hash: u64_at(h, 16),
        stale_until: u64_at(h, 24),
    };
    let body = RECORD_HEADER_LEN + header.key_len as usize + header.value_len as usize;
    let Some(rec) = seg.get(offset..).and_then(|s| s.get(..body)) else {
        return Err(damage(format!(
            "torn record: {body} bytes claimed, {} left in the segment",
            seg.len().saturating_sub(offset)
        )));
    };
    if !verify {
        return Ok(Some(header));
    }
    let padded = header.record_len().min(seg.len() - offset);
    if seg[offset + body..offset + padded].iter().any(|b| *b != 0) {
        return Err(damage("non-zero record padding".into()));
    }
    if crc32fast::hash(&rec[4..]) != u32_at(h, 0) {
        return Err(damage("record checksum mismatch".into()));
    }
    let key = &rec[RECORD_HEADER_LEN..RECORD_HEADER_LEN + header.key_len as usize];
    if key_hash(key) != header.key_hash {
        return Err(damage("record key hash mismatch".into()));
    }
    Ok(Some(header))
}

/// One record found by [`scan`].
#[derive(Debug, Clone, Copy)]
pub struct Scanned {
    pub offset: usize,
    pub header: RecordHeader,
}

/// Walk the records of a segment's bytes (header included) from the first record, in memory
/// (the validated, readable part of a live segment). Yields valid records; after the iterator
/// ends, [`Scan::damage`] says whether it ended on a torn or corrupt record.
pub struct Scan<'a> {
    seg: &'a [u8],
    at: usize,
    verify: bool,
    done: bool,
    /// Set when the scan stopped on a bad record.
    pub damage: Option<Damage>,
}

/// Scan `seg` (a whole segment's bytes); `verify` checks every CRC (off only for bytes that
/// were verified before, such as the readable part of a live segment).
pub fn scan(seg: &[u8], verify: bool) -> Scan<'_> {
    Scan { seg, at: SEGMENT_HEADER_LEN, verify, done: seg.len() < SEGMENT_HEADER_LEN, damage: None }
}

impl Iterator for Scan<'_> {
    type Item = Scanned;
    fn next(&mut self) -> Option<Scanned> {
        if self.done {
            return None;
        }
        match check_record(self.seg, self.at, self.verify) {
            Ok(Some(header)) => {
                let item = Scanned { offset: self.at, header };
                self.at += header.record_len();
                Some(item)
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(d) => {
                self.done = true;
                self.damage = Some(d);
                None
            }
        }
    }
}

/// The key of a record checked by [`check_record`] at `offset`.
pub fn record_key<'a>(seg: &'a [u8], offset: usize, h: &RecordHeader) -> &'a [u8] {
    let start = offset + RECORD_HEADER_LEN;
    &seg[start..start + h.key_len as usize]
}

/// The value of a record checked by [`check_record`] at `offset`.
pub fn record_value<'a>(seg: &'a [u8], offset: usize, h: &RecordHeader) -> &'a [u8] {
    let start = offset + RECORD_HEADER_LEN + h.key_len as usize;
    &seg[start..start + h.value_len as usize]
}

/// `created_at` of an envelope (bytes 8..16 of its header), when it is long enough.
pub fn envelope_created_at(value: &[u8]) -> Option<u64> {
    (value.len() >= 16).then(|| u64_at(value, 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrip_and_damage() {
        let mut seg = segment_header(7, 4096, Some(6)).to_vec();
        let mut rec = Vec::new();
        encode_record(&mut rec, RecordKind::Value, 2, b"key", b"value bytes", 99);
        assert_eq!(rec.len() % RECORD_ALIGN, 0);
        seg.extend_from_slice(&rec);
        encode_record(&mut rec, RecordKind::Tombstone, 0, b"key", b"", 0);
        seg.extend_from_slice(&rec);
        seg.extend_from_slice(&[0u8; 100]);
        assert_eq!(
            parse_segment_header(&seg),
            Ok(SegmentHeader { id: 7, size: 4096, prev: Some(6) })
        );
        let first = segment_header(0, 4096, None);
        assert_eq!(parse_segment_header(&first).map(|h| h.prev), Ok(None));
        let mut old = first;
        old[20..].fill(0); // a header written before the predecessor was named
        assert_eq!(parse_segment_header(&old).map(|h| h.prev), Ok(None));
        old[22] = 1;
        assert!(parse_segment_header(&old).is_err());
        let mut s = scan(&seg, true);
        let items: Vec<_> = s.by_ref().collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].header.kind, RecordKind::Value);
        assert_eq!(items[0].header.envelope_flags, 2);
        assert_eq!(items[0].header.stale_until, 99);
        assert_eq!(record_key(&seg, items[0].offset, &items[0].header), b"key");
        assert_eq!(record_value(&seg, items[0].offset, &items[0].header), b"value bytes");
        assert_eq!(items[1].header.kind, RecordKind::Tombstone);
        assert!(s.damage.is_none());
        // Flip one bit of the first value: the scan stops there, damaged.
        let at = items[0].offset + RECORD_HEADER_LEN + 4;
        seg[at] ^= 1;
        let mut s = scan(&seg, true);
        assert_eq!(s.by_ref().count(), 0);
        assert_eq!(s.damage.as_ref().map(|d| d.offset), Some(SEGMENT_HEADER_LEN));
        // Truncation inside a record is damage, not a panic.
        seg[at] ^= 1;
        for cut in SEGMENT_HEADER_LEN..seg.len() {
            let mut s = scan(&seg[..cut], true);
            let n = s.by_ref().count();
            assert!(n <= 2);
        }
    }

    #[test]
    fn hash_is_stable() {
        assert_eq!(key_hash(b""), key_hash(b""));
        assert_ne!(key_hash(b"a"), key_hash(b"b"));
        assert_ne!(key_hash(b"abcdefgh"), key_hash(b"abcdefgh\0"));
    }
}

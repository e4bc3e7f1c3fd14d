//! The write-behind queue file's format and the rule that reads it back.
//!
//! ```text
//! QUEUE  = header (16 bytes) | record | record | ...
//! header = magic b"TIERWBQ1" | reserved u32 (0) | crc32 of bytes 0..12
//! record = crc32 u32 (over bytes 4.. of the record) | body length u32 | kind u8 | body
//! kinds  : 1 write   body = seq u64 | queued_at u64 (Unix ms) | key length u32 | key | value
//!          2 done    body = seq u64 *
//!          3 dead    body = seq u64 | attempts u32 | reason (UTF-8)
//!          4 revive  body = seq u64 *
//!          5 next    body = the next sequence number u64 (written by a rewrite)
//!          6 sealed  body = seq u64 | queued_at u64 | key length u32 | key
//!                           | sealing length u8 | sealing (key id u32, nonce) | sealed value
//! ```
//! A sealed write (a cache with a keyring) holds its value encrypted, tag last; the key id and
//! nonce are in clear (tier-core's `seal::open_queued` opens it, bound to the cache, the key,
//! the sequence number and the record's purpose).
//! Integers are little endian. Records are replayed in order through tier-core's `QueueBook`
//! (the one rule: a write supersedes the older writes of its key; done ends a write).
//!
//! **Damage.** A record that is incomplete at the very end of a file whose length is a multiple
//! of 4096 is a write cut short by a crash, never acknowledged: dropped silently. Any other bad
//! record (a failed CRC, a length that does not fit, an unknown kind) is damage: its bytes are
//! skipped up to the next offset where a whole record with a good CRC starts, so the good
//! records after it are kept, and the skipped ranges are reported.

use bytes::Bytes;
use tier_core::spi::{QueueBook, QueueOp, QueuedWrite};

use crate::state::file::{encode, RECORD_HEADER_LEN};

/// The queue file's name.
pub(crate) const QUEUE_FILE: &str = "QUEUE";
/// Where a rewritten queue file is written before it is renamed over the old one.
pub(crate) const QUEUE_TMP: &str = "QUEUE.tmp";
/// Bytes of the file header.
pub(crate) const FILE_HEADER_LEN: usize = 16;
/// The longest key of a queued write.
pub const MAX_QUEUE_KEY_LEN: usize = 64 << 10;
/// The longest value of a queued write (MessagePack bytes).
pub const MAX_QUEUE_VALUE_LEN: usize = 64 << 20;
/// The longest record body.
const MAX_BODY: usize = 20 + MAX_QUEUE_KEY_LEN + MAX_QUEUE_VALUE_LEN;

const MAGIC: &[u8; 8] = b"TIERWBQ1";
const PAGE: u64 = 4096;

const WRITE: u8 = 1;
const DONE: u8 = 2;
const DEAD: u8 = 3;
const REVIVE: u8 = 4;
const NEXT: u8 = 5;
const SEALED: u8 = 6;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// The file header.
pub(crate) fn header() -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    let crc = crc32fast::hash(&h[..12]);
    h[12..].copy_from_slice(&crc.to_le_bytes());
    h
}

fn seqs(out: &mut Vec<u8>, seqs: &[u64]) {
    for s in seqs {
        out.extend_from_slice(&s.to_le_bytes());
    }
}

/// Append the record of `op` to `out`.
pub(crate) fn encode_op(out: &mut Vec<u8>, op: &QueueOp) {
    match op {
        QueueOp::Write(w) => encode(out, if w.sealing.is_some() { SEALED } else { WRITE }, |b| {
            b.extend_from_slice(&w.seq.to_le_bytes());
            b.extend_from_slice(&w.queued_at_ms.to_le_bytes());
            b.extend_from_slice(&(w.key.len() as u32).to_le_bytes());
            b.extend_from_slice(&w.key);
            if let Some(sealing) = &w.sealing {
                // `check` bounds it to a byte's worth.
                b.push(sealing.len() as u8);
                b.extend_from_slice(sealing);
            }
            b.extend_from_slice(&w.value);
        }),
        QueueOp::Done(s) => encode(out, DONE, |b| seqs(b, s)),
        QueueOp::Revive(s) => encode(out, REVIVE, |b| seqs(b, s)),
        QueueOp::Dead { seq, attempts, reason } => encode(out, DEAD, |b| {
            b.extend_from_slice(&seq.to_le_bytes());
            b.extend_from_slice(&attempts.to_le_bytes());
            b.extend_from_slice(reason.as_bytes());
        }),
    }
}

/// The record setting the next sequence number.
pub(crate) fn encode_next(out: &mut Vec<u8>, next: u64) {
    encode(out, NEXT, |b| b.extend_from_slice(&next.to_le_bytes()));
}

/// Is `op` within the limits of a record? The reason when not.
pub(crate) fn check(op: &QueueOp) -> Result<(), String> {
    match op {
        QueueOp::Write(w) if w.key.len() > MAX_QUEUE_KEY_LEN || w.value.len() > MAX_QUEUE_VALUE_LEN => {
            Err(format!(
                "a queued write of a {}-byte key and a {}-byte value: at most {MAX_QUEUE_KEY_LEN} and {MAX_QUEUE_VALUE_LEN}",
                w.key.len(),
                w.value.len()
            ))
        }
        QueueOp::Write(QueuedWrite { sealing: Some(s), .. }) if s.len() > u8::MAX as usize => {
            Err(format!("a queued write's sealing item of {} bytes: at most 255", s.len()))
        }
        _ => Ok(()),
    }
}

/// What one record says: an op, the next sequence number, or nothing readable.
enum Decoded {
    Op(QueueOp),
    Next(u64),
}

fn seq_list(body: &[u8]) -> Option<Vec<u64>> {
    body.len().is_multiple_of(8).then(|| (0..body.len() / 8).map(|i| u64_at(body, i * 8)).collect())
}

fn decode(file: &Bytes, kind: u8, body: &[u8]) -> Option<Decoded> {
    Some(match kind {
        WRITE | SEALED => {
            let head = body.get(..20)?;
            let key_len = u32_at(head, 16) as usize;
            if key_len > MAX_QUEUE_KEY_LEN || body.len() - 20 < key_len {
                return None;
            }
            let key = &body[20..20 + key_len];
            let mut rest = &body[20 + key_len..];
            let mut sealing = None;
            if kind == SEALED {
                let (&n, after) = rest.split_first()?;
                let item = after.get(..n as usize)?;
                sealing = Some(file.slice_ref(item));
                rest = &after[n as usize..];
            }
            Decoded::Op(QueueOp::Write(QueuedWrite {
                seq: u64_at(head, 0),
                queued_at_ms: u64_at(head, 8),
                key: file.slice_ref(key),
                value: file.slice_ref(rest),
                sealing,
            }))
        }
        DONE => Decoded::Op(QueueOp::Done(seq_list(body)?)),
        REVIVE => Decoded::Op(QueueOp::Revive(seq_list(body)?)),
        DEAD => {
            let head = body.get(..12)?;
            let reason = std::str::from_utf8(&body[12..]).ok()?.to_string();
            Decoded::Op(QueueOp::Dead { seq: u64_at(head, 0), attempts: u32_at(head, 8), reason })
        }
        NEXT if body.len() == 8 => Decoded::Next(u64_at(body, 0)),
        _ => return None,
    })
}

/// A stretch of the file that was not read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// Where it starts.
    pub offset: u64,
    /// How many bytes were skipped.
    pub len: u64,
    /// What was wrong.
    pub reason: String,
    /// A write cut short by a crash (never acknowledged): nothing was lost.
    pub torn: bool,
}

/// What a queue file holds.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub book: QueueBook,
    /// Records read back.
    pub records: u64,
    pub problems: Vec<Problem>,
}

/// The record at `at`, when a whole one with a good CRC and a readable body starts there: its
/// length and what it says.
fn record_at(file: &Bytes, at: usize) -> Result<(usize, Decoded), String> {
    let bytes = &file[..];
    let head = bytes.get(at..at + RECORD_HEADER_LEN).ok_or("incomplete record header")?;
    let body_len = u32_at(head, 4) as usize;
    if body_len > MAX_BODY {
        return Err(format!("record claims {body_len} bytes"));
    }
    if !(WRITE..=SEALED).contains(&head[8]) {
        return Err(format!("unknown record kind {}", head[8]));
    }
    let rec = bytes
        .get(at..at + RECORD_HEADER_LEN + body_len)
        .ok_or_else(|| format!("incomplete record ({body_len} bytes claimed)"))?;
    if crc32fast::hash(&rec[4..]) != u32_at(rec, 0) {
        return Err("record checksum mismatch".into());
    }
    let decoded = decode(file, rec[8], &rec[RECORD_HEADER_LEN..])
        .ok_or_else(|| format!("malformed record of kind {}", rec[8]))?;
    Ok((rec.len(), decoded))
}

/// Replay a whole queue file's bytes. Keys and values are slices of `file` (no copy each).
pub(crate) fn parse(file: Bytes) -> Parsed {
    let mut p = Parsed::default();
    let len = file.len();
    match file.get(..FILE_HEADER_LEN) {
        Some(h) if h == header() => {}
        _ => {
            let reason = "not a write-behind queue file (bad header)".to_string();
            p.problems.push(Problem { offset: 0, len: len as u64, reason, torn: false });
            return p;
        }
    }
    let mut at = FILE_HEADER_LEN;
    while at < len {
        match record_at(&file, at) {
            Ok((n, decoded)) => {
                p.records += 1;
                match decoded {
                    Decoded::Op(op) => {
                        p.book.apply(op);
                    }
                    Decoded::Next(next) => p.book.raise_next_seq(next),
                }
                at += n;
            }
            Err(reason) => {
                // The next offset where a whole, good record starts; none: the rest is bad.
                let next = (at + 1..len).find(|&o| record_at(&file, o).is_ok()).unwrap_or(len);
                let torn = next == len
                    && (len as u64).is_multiple_of(PAGE)
                    && reason.starts_with("incomplete");
                let skipped = (next - at) as u64;
                p.problems.push(Problem { offset: at as u64, len: skipped, reason, torn });
                at = next;
            }
        }
    }
    p
}

/// A whole file holding what `book` holds (the next sequence number, then each write, and the
/// dead mark of each dead letter).
pub(crate) fn image(book: &QueueBook) -> Vec<u8> {
    let mut out = header().to_vec();
    encode_next(&mut out, book.next_seq());
    let mut dead: Vec<_> = book.dead().collect();
    let mut writes: Vec<QueuedWrite> = book.pending().cloned().collect();
    writes.extend(dead.iter().map(|d| d.write.clone()));
    writes.sort_by_key(|w| w.seq);
    for w in writes {
        encode_op(&mut out, &QueueOp::Write(w));
    }
    for d in dead.drain(..) {
        let op = QueueOp::Dead { seq: d.write.seq, attempts: d.attempts, reason: d.reason };
        encode_op(&mut out, &op);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(seq: u64, key: &'static str, value: &[u8]) -> QueueOp {
        QueueOp::Write(QueuedWrite {
            seq,
            key: Bytes::from_static(key.as_bytes()),
            value: Bytes::copy_from_slice(value),
            queued_at_ms: 1000 + seq,
            sealing: None,
        })
    }

    fn file(ops: &[QueueOp]) -> Vec<u8> {
        let mut out = header().to_vec();
        for op in ops {
            encode_op(&mut out, op);
        }
        out
    }

    fn pending(p: &Parsed) -> Vec<u64> {
        p.book.pending().map(|w| w.seq).collect()
    }

    #[test]
    fn replay_coalesces_and_an_image_reads_back_the_same() {
        let ops = [
            write(1, "a", b"1"),
            write(2, "b", b"2"),
            write(3, "a", b"3"),
            QueueOp::Done(vec![2]),
            write(4, "c", &[7; 300]),
            QueueOp::Dead { seq: 4, attempts: 5, reason: "origin down".into() },
        ];
        let p = parse(file(&ops).into());
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert_eq!(pending(&p), vec![3]);
        assert_eq!(
            p.book.dead().map(|d| (d.write.seq, d.attempts)).collect::<Vec<_>>(),
            vec![(4, 5)]
        );
        let again = parse(image(&p.book).into());
        assert!(again.problems.is_empty());
        assert_eq!(pending(&again), vec![3]);
        assert_eq!(again.book.dead_len(), 1);
        assert_eq!(again.book.next_seq(), 5);
        // The next number survives a rewrite of an empty book.
        let mut empty = p.book.clone();
        empty.apply(QueueOp::Done(vec![3, 4]));
        assert_eq!(parse(image(&empty).into()).book.next_seq(), 5);
    }

    #[test]
    fn a_sealed_write_reads_back_with_its_sealing_also_after_a_rewrite() {
        let sealed = QueuedWrite {
            seq: 9,
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"ciphertext-and-tag"),
            queued_at_ms: 5,
            sealing: Some(Bytes::from_static(&[2, 0, 0, 0, 7, 7, 7])),
        };
        let f = file(&[write(1, "a", b"clear"), QueueOp::Write(sealed.clone())]);
        let p = parse(f.into());
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        let got: Vec<QueuedWrite> = p.book.pending().cloned().collect();
        assert_eq!(got[0].sealing, None);
        assert_eq!(got[1], sealed);
        assert_eq!(got[1].key_id(), Some(2));
        let again = parse(image(&p.book).into());
        assert_eq!(again.book.pending().nth(1), Some(&sealed));
        // A sealing item that claims more than the record holds: damage, not a panic.
        let mut short = header().to_vec();
        encode(&mut short, SEALED, |b| {
            b.extend_from_slice(&[0; 20]);
            b.push(200);
        });
        assert_eq!(parse(short.into()).problems.len(), 1);
    }

    #[test]
    fn every_cut_keeps_the_whole_records_before_it_and_every_flip_keeps_the_others() {
        let ops = [write(1, "a", b"one"), write(2, "b", &[9; 200]), write(3, "c", b"three")];
        let f = file(&ops);
        for cut in FILE_HEADER_LEN..f.len() {
            let p = parse(Bytes::copy_from_slice(&f[..cut]));
            let whole = (1..=ops.len()).filter(|n| file(&ops[..*n]).len() <= cut).count();
            assert_eq!(p.book.pending_len(), whole, "cut at {cut}");
        }
        // One flipped bit in the middle record: the first and the last are kept.
        let middle = file(&ops[..1]).len() + 30;
        for bit in 0..8 {
            let mut g = f.clone();
            g[middle] ^= 1 << bit;
            let p = parse(g.into());
            assert_eq!(pending(&p), vec![1, 3], "bit {bit}");
            assert_eq!(p.problems.len(), 1);
            assert!(!p.problems[0].torn);
        }
        // Any flip anywhere: never a panic, never a record that was not written.
        for at in 0..f.len() {
            let mut g = f.clone();
            g[at] ^= 0x5a;
            let p = parse(g.into());
            assert!(pending(&p).iter().all(|s| [1, 2, 3].contains(s)));
        }
    }
}

//! Damage to a directory never brings back what a later write replaced or removed: an entry
//! that a lost record could have superseded is served only as stale (or dropped), never fresh.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;
use common::{check_value, decoded, entry, value_for};
use tier_core::{Lookup, Tier};
use tier_disk::{DiskInspector, DiskTier, RecordKind};

const KEYS: usize = 300;
const REMOVED: usize = 100;

fn builder(dir: &Path) -> tier_disk::DiskTierBuilder {
    DiskTier::builder(dir).segment_size(64 << 10).capacity_bytes(8 << 20)
}

fn key(i: usize) -> String {
    format!("key-{i}")
}

/// Every key at version 1, then every key at version 2, then keys `0..REMOVED` removed.
fn history(dir: &Path) {
    let rt = common::runtime();
    let tier = builder(dir).build().unwrap();
    rt.block_on(async {
        for seq in 1..=2 {
            for i in 0..KEYS {
                let v = value_for(&key(i), seq, 600);
                tier.insert(Bytes::from(key(i)), entry(&v, 600_000)).await.unwrap();
            }
        }
        for i in 0..REMOVED {
            tier.remove(key(i).as_bytes()).await.unwrap();
        }
    });
}

/// What the reopened tier serves: (fresh hits that are not the last write, removed keys served
/// fresh, values that were never written).
fn violations(dir: &Path) -> (usize, usize, usize) {
    let rt = common::runtime();
    let tier = builder(dir).build().unwrap();
    rt.block_on(async {
        let (mut older, mut resurrected, mut wrong) = (0, 0, 0);
        for i in 0..KEYS {
            let got = tier.get(key(i).as_bytes()).await.unwrap();
            let Some(v) = decoded(&got) else { continue };
            let Some(seq) = check_value(&key(i), &v) else {
                wrong += 1;
                continue;
            };
            if matches!(got, Lookup::Hit(_)) {
                if i < REMOVED {
                    resurrected += 1;
                } else if seq != 2 {
                    older += 1;
                }
            }
        }
        (older, resurrected, wrong)
    })
}

fn segment_path(dir: &Path, id: u32) -> std::path::PathBuf {
    dir.join(format!("{id:08x}.seg"))
}

#[test]
fn a_bit_flip_in_the_newest_segment_never_brings_removed_keys_back_fresh() {
    let dir = tempfile::tempdir().unwrap();
    history(dir.path());
    let first_tombstone = DiskInspector::open(dir.path())
        .unwrap()
        .records()
        .map(|r| r.unwrap())
        .find(|r| r.kind == RecordKind::Tombstone)
        .unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(segment_path(dir.path(), first_tombstone.segment))
        .unwrap();
    let at = first_tombstone.offset + 20; // inside its key hash: the CRC no longer matches
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
    drop(f);
    assert_eq!(violations(dir.path()), (0, 0, 0), "(older fresh, removed fresh, wrong)");
}

#[test]
fn a_deleted_segment_never_brings_older_versions_back_fresh() {
    let dir = tempfile::tempdir().unwrap();
    history(dir.path());
    // A segment that holds version-2 records (and so replaced version-1 records before it).
    let v2 = DiskInspector::open(dir.path())
        .unwrap()
        .records()
        .map(|r| r.unwrap())
        .filter(|r| r.kind == RecordKind::Value && r.live)
        .map(|r| r.segment)
        .min()
        .unwrap();
    std::fs::remove_file(segment_path(dir.path(), v2 + 1)).unwrap();
    assert_eq!(violations(dir.path()), (0, 0, 0), "(older fresh, removed fresh, wrong)");
}

//! Corruption: flip random bytes and truncate segment files at random offsets (seeded), reopen,
//! read every key: no panic, no corrupt value returned, the damage counted.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;
use common::{decoded, entry, segment_files, value_for};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use tier_core::spi::{Lookup, Tier};
use tier_disk::{DiskError, DiskInspector, DiskTier, RecoveryMode};

const KEYS: usize = 1500;

fn builder(dir: &Path) -> tier_disk::DiskTierBuilder {
    DiskTier::builder(dir).segment_size(64 << 10).capacity_bytes(64 << 20)
}

fn key(i: usize) -> String {
    format!("key:{i}")
}

/// Exactly one value per key, so a served value must equal this.
fn value(i: usize) -> String {
    value_for(&key(i), i as u64, 40 + (i * 37) % 900)
}

fn pristine(dir: &Path) -> Vec<u64> {
    let rt = common::runtime();
    let tier = builder(dir).build().expect("open");
    rt.block_on(async {
        for i in 0..KEYS {
            tier.insert(Bytes::from(key(i)), entry(&value(i), 3_600_000)).await.expect("insert");
        }
    });
    drop(tier);
    // Where the written part of each segment ends (what damage must be detected within).
    let insp = DiskInspector::open(dir).expect("inspect");
    assert!(insp.damage().is_empty());
    let mut ends = Vec::new();
    let mut last: Option<(u32, u64)> = None;
    for rec in insp.records() {
        let rec = rec.expect("record");
        if last.is_some_and(|(s, _)| s != rec.segment) {
            ends.push(last.map(|(_, e)| e).unwrap_or(0));
        }
        last = Some((rec.segment, rec.offset + u64::from(rec.record_len)));
    }
    ends.extend(last.map(|(_, e)| e));
    ends
}

fn copy_dir(from: &Path, to: &Path) {
    for f in segment_files(from) {
        std::fs::copy(&f, to.join(f.file_name().expect("name"))).expect("copy");
    }
}

/// Reopen and read every key; every served value must be exactly the one written.
fn check_all(dir: &Path) -> (tier_disk::RecoveryReport, usize) {
    let tier = builder(dir).build().expect("reopen a damaged directory");
    let report = tier.recovery_report().clone();
    let rt = common::runtime();
    let served = rt.block_on(async {
        let mut served = 0;
        for i in 0..KEYS {
            let got = tier.get(key(i).as_bytes()).await.expect("get never errors on damage");
            match decoded(&got) {
                Some(v) => {
                    assert_eq!(v, value(i), "a corrupt value was served for {}", key(i));
                    served += 1;
                }
                None => assert!(matches!(got, Lookup::Miss)),
            }
        }
        served
    });
    (report, served)
}

#[test]
fn random_flips_and_truncations_are_caught_and_counted() {
    let clean = tempfile::tempdir().expect("tempdir");
    let ends = pristine(clean.path());
    let files = segment_files(clean.path());
    // The last file is the empty active segment of the writer; damage the written ones.
    assert!(files.len() >= 10 && ends.len() + 1 >= files.len() - 1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xC022_0D15);
    let (mut damaged_rounds, mut total_corrupt) = (0, 0);
    for round in 0..60 {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(clean.path(), dir.path());
        let files = segment_files(dir.path());
        let mut expect_damage = false;
        let victims = rng.random_range(1..4);
        for _ in 0..victims {
            let n = rng.random_range(0..ends.len());
            let path = &files[n];
            let end = ends[n];
            let f = OpenOptions::new().read(true).write(true).open(path).expect("open segment");
            if rng.random_bool(0.3) {
                let at = rng.random_range(0..end + 64);
                f.set_len(at).expect("truncate");
                expect_damage = true;
            } else {
                for _ in 0..rng.random_range(1..8) {
                    let at = rng.random_range(0..end);
                    let mut b = [0u8];
                    f.read_exact_at(&mut b, at).expect("read byte");
                    b[0] ^= 1 << rng.random_range(0..8);
                    f.write_all_at(&b, at).expect("flip byte");
                    expect_damage = true;
                }
            }
        }
        let (report, served) = check_all(dir.path());
        if expect_damage {
            assert!(report.corrupt >= 1, "round {round}: damage not counted: {report:?}");
            damaged_rounds += 1;
        }
        let (again, served_again) = check_all(dir.path());
        assert_eq!((again.corrupt, served_again), (0, served), "round {round}: counted once");
        total_corrupt += report.corrupt;
        assert!(served <= KEYS);
        // The inspector sees the same damaged directory without panicking.
        let insp = DiskInspector::open(dir.path()).expect("inspect");
        let verify = insp.verify().expect("verify");
        assert_eq!(verify.is_clean(), insp.damage().is_empty());
    }
    eprintln!("{damaged_rounds} damaged reopenings, {total_corrupt} bad records/segments counted");
}

#[test]
fn strict_mode_refuses_a_damaged_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ends = pristine(dir.path());
    let files = segment_files(dir.path());
    let f = OpenOptions::new().write(true).open(&files[1]).expect("open");
    f.write_all_at(&[0xFF; 3], ends[1] / 2).expect("scribble");
    drop(f);
    let err = builder(dir.path()).recovery(RecoveryMode::Strict).build().expect_err("strict");
    assert!(matches!(err, DiskError::Corrupt { .. }), "{err}");
    let (report, served) = check_all(dir.path());
    assert_eq!(report.corrupt, 1);
    assert!(served < KEYS && served > KEYS / 2);
    // Counted once: the next open finds the segment sealed at the damage, and the same keys.
    let (again, served_again) = check_all(dir.path());
    assert_eq!(again.corrupt, 0, "{again:?}");
    assert_eq!(served_again, served);
    builder(dir.path()).recovery(RecoveryMode::Strict).build().expect("clean now");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any garbage at any offset of any file: reopen never panics and never serves a wrong value.
    #[test]
    fn garbage_anywhere_is_never_served(
        file in 0usize..8,
        at in 0u64..(64 << 10),
        garbage in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = common::runtime();
        {
            let tier = builder(dir.path()).build().expect("open");
            rt.block_on(async {
                for i in 0..300 {
                    tier.insert(Bytes::from(key(i)), entry(&value(i), 3_600_000)).await.expect("insert");
                }
            });
        }
        let files = segment_files(dir.path());
        let path = &files[file % files.len()];
        let f = OpenOptions::new().write(true).open(path).expect("open");
        f.write_all_at(&garbage, at).expect("write garbage");
        drop(f);
        let tier = builder(dir.path()).build().expect("reopen");
        rt.block_on(async {
            for i in 0..300 {
                let got = tier.get(key(i).as_bytes()).await.expect("get");
                if let Some(v) = decoded(&got) {
                    prop_assert_eq!(v, value(i));
                }
            }
            Ok(())
        })?;
    }
}

//! The hard way: a child process writing as fast as it can is killed with SIGKILL at a random
//! moment, 50 times in a row on the same directory. After each kill the directory is reopened:
//! every value served equals a value written for that key, and every indexed record passes its
//! CRC.
//!
//! The child is this very test binary, re-run with `TIER_DISK_CRASH_WRITER=<dir>`.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use bytes::Bytes;
use common::{check_value, decoded, entry, value_for};
use rand::{Rng, SeedableRng};
use tier_core::spi::Tier;
use tier_disk::{DiskInspector, DiskTier, FlushPolicy};

const ENV: &str = "TIER_DISK_CRASH_WRITER";
const KEYS: u64 = 400;
const READY_AFTER: u64 = 300;

fn builder(dir: &std::path::Path) -> tier_disk::DiskTierBuilder {
    // Small segments and capacity: the writer rotates and reclaims all the time, so kills land
    // in appends, rotations and reclaims alike.
    DiskTier::builder(dir).segment_size(128 << 10).capacity_bytes(1 << 20).flush(FlushPolicy::None)
}

fn key(i: u64) -> String {
    format!("k{i}")
}

/// Child mode: write forever; say "ready" on stdout after `READY_AFTER` writes.
fn writer(dir: &str) -> ! {
    let rt = common::runtime();
    rt.block_on(async {
        let tier = builder(std::path::Path::new(dir)).build().expect("child open");
        let start: u64 =
            std::env::var("TIER_DISK_CRASH_SEQ").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut out = std::io::stdout();
        for seq in start.. {
            let k = key(seq.wrapping_mul(0x9E37_79B9) % KEYS);
            if seq % 11 == 0 {
                tier.remove(k.as_bytes()).await.expect("child remove");
            } else {
                let len = 64 + (seq % 3000) as usize;
                tier.insert(Bytes::from(k.clone()), entry(&value_for(&k, seq, len), 3_600_000))
                    .await
                    .expect("child insert");
            }
            if seq == start + READY_AFTER {
                writeln!(out, "ready").expect("stdout");
                out.flush().expect("flush stdout");
            }
        }
    });
    unreachable!("the writer loop never ends")
}

#[test]
fn sigkill_at_random_moments_never_serves_a_torn_value() {
    if let Ok(dir) = std::env::var(ENV) {
        writer(&dir);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED_C0DE);
    let started = Instant::now();
    let (mut served, mut corrupt_seen, mut suspect_rounds) = (0u64, 0u64, 0u64);
    for round in 0..50u64 {
        let mut child = Command::new(&exe)
            .args(["sigkill_at_random_moments_never_serves_a_torn_value", "--exact", "--nocapture"])
            .env(ENV, dir.path())
            .env("TIER_DISK_CRASH_SEQ", (round * 1_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.trim() == "ready" => break,
                Some(Ok(_)) => continue, // the test harness's own lines
                other => panic!("writer ended before it was ready: {other:?}, {:?}", child.wait()),
            }
        }
        // A random moment while it writes as fast as it can (the randomness is the point; no
        // ordering depends on this pause).
        std::thread::sleep(std::time::Duration::from_micros(rng.random_range(0..20_000)));
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("reap");
        assert!(!status.success());

        let tier = builder(dir.path()).build().expect("reopen after SIGKILL");
        let report = tier.recovery_report().clone();
        corrupt_seen += report.corrupt;
        // A kill loses no acknowledged record: nothing is suspect unless a kill cut a write short
        // (now or in an earlier round), which is treated as damage: it cannot be told from
        // damage for sure.
        if report.corrupt == 0 && report.known_damage == 0 {
            assert_eq!(report.suspect, 0, "round {round}: {report:?}");
        } else {
            suspect_rounds += u64::from(report.suspect > 0);
        }
        let rt = common::runtime();
        rt.block_on(async {
            for i in 0..KEYS {
                let k = key(i);
                let got = tier.get(k.as_bytes()).await.expect("get");
                if let Some(v) = decoded(&got) {
                    assert!(check_value(&k, &v).is_some(), "round {round}: bad value for {k}");
                    served += 1;
                }
                // Every indexed record passes its CRC (get_raw re-checks it).
                if got.entry().is_some() {
                    assert!(tier.get_raw(k.as_bytes()).is_some(), "round {round}: {k}");
                }
            }
        });
        assert!(report.entries > 0, "round {round}: {report:?}");
        drop(tier);
        // The read-only inspector agrees: nothing live fails its CRC.
        let insp = DiskInspector::open(dir.path()).expect("inspect");
        for rec in insp.records() {
            let rec = rec.expect("record");
            if rec.live {
                let raw = insp.get(&rec.key).expect("read").expect("live record");
                let k = std::str::from_utf8(&rec.key).expect("utf8 key");
                let v = common::decode_string(&raw.envelope).expect("value");
                assert!(check_value(k, &v).is_some());
            }
        }
    }
    eprintln!(
        "50 SIGKILLs in {:?}: {served} values served and checked, {corrupt_seen} writes cut short \
         (never served; {suspect_rounds} reopenings with suspect entries, none otherwise)",
        started.elapsed()
    );
    assert!(served > 0);
}

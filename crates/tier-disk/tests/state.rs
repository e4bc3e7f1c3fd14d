//! The disk tier's durable small state (`DiskState`): what `put` returned survives a `kill -9`
//! (a child process killed at random moments, foyer-style), `put_many` is all or nothing,
//! damage to the file is never replayed and is reported as a loss only when acknowledged writes
//! may be gone, a `STATE` that is a link or not a regular file is refused, and the file stays
//! bounded.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use common::entry;
use rand::{Rng, SeedableRng};
use tier_core::spi::Tier;
use tier_disk::{DiskError, DiskTier, FlushPolicy, MAX_STATE_VALUE_LEN};

const CHILD: &str = "TIER_DISK_STATE_WRITER";
const KEYS: u64 = 64;

fn builder(dir: &Path) -> tier_disk::DiskTierBuilder {
    DiskTier::builder(dir).segment_size(64 << 10).capacity_bytes(1 << 20)
}

fn state_path(dir: &Path) -> std::path::PathBuf {
    dir.join("STATE")
}

/// A value that says which key and sequence number it was written for, padded to `len`.
fn value(key: u64, seq: u64, len: usize) -> Vec<u8> {
    let mut v = format!("{key}:{seq}:").into_bytes();
    v.resize(len.max(v.len()), b'.');
    v
}

/// The sequence number in a value written by [`value`] for `key`.
fn seq_of(key: u64, v: &[u8]) -> u64 {
    let text = std::str::from_utf8(v).unwrap();
    let mut parts = text.split(':');
    assert_eq!(parts.next().unwrap().parse::<u64>().unwrap(), key, "a value of another key");
    parts.next().unwrap().parse().unwrap()
}

fn key(k: u64) -> Vec<u8> {
    format!("gen:{k}").into_bytes()
}

#[test]
fn puts_and_removes_survive_reopen_and_last_write_wins() {
    let dir = tempfile::tempdir().unwrap();
    {
        let tier = builder(dir.path()).build().unwrap();
        let st = tier.state();
        assert!(st.is_empty() && !st.was_lost());
        for k in 0..100 {
            st.put(&key(k), &value(k, 1, 20)).unwrap();
        }
        st.put_many(&[(&key(1), &value(1, 2, 20)), (&key(2), &value(2, 2, 20))]).unwrap();
        st.remove(&key(3)).unwrap();
        st.remove(b"never there").unwrap();
        st.put(b"", b"").unwrap(); // empty key and value are fine
        assert_eq!(st.get(&key(1)).map(|v| seq_of(1, &v)), Some(2));
    }
    let tier = builder(dir.path()).build().unwrap();
    let st = tier.state();
    assert!(!st.was_lost());
    assert_eq!(st.len(), 100);
    assert_eq!(st.get(&key(1)).map(|v| seq_of(1, &v)), Some(2));
    assert_eq!(st.get(&key(2)).map(|v| seq_of(2, &v)), Some(2));
    assert_eq!(st.get(&key(4)).map(|v| seq_of(4, &v)), Some(1));
    assert_eq!(st.get(&key(3)), None);
    assert_eq!(st.get(b"").as_deref(), Some(&b""[..]));
    let mut all: Vec<_> = st.entries().into_iter().map(|(k, _)| k).collect();
    all.sort();
    assert_eq!(all.len(), 100);
    assert!(tier.recovery_report().state.present);
    assert_eq!(tier.recovery_report().state.entries, 100);
}

/// Child mode: put forever (single keys, and pairs with `put_many`), printing each
/// acknowledged write; on a tier whose flush policy is never to sync.
fn writer(dir: &str) -> ! {
    let tier = builder(Path::new(dir)).flush(FlushPolicy::None).build().expect("child open");
    let st = tier.state();
    let start: u64 = std::env::var("TIER_DISK_STATE_SEQ").unwrap().parse().unwrap();
    let mut out = std::io::stdout().lock();
    for seq in start.. {
        let k = seq.wrapping_mul(0x9E37_79B9) % KEYS;
        if seq.is_multiple_of(5) {
            // A pair that must move together: keys k and k + KEYS, same sequence number.
            let (a, b) = (value(k, seq, 100), value(k + KEYS, seq, 5000));
            st.put_many(&[(&key(k), &a), (&key(k + KEYS), &b)]).expect("child put_many");
        } else {
            st.put(&key(k), &value(k, seq, 40 + (seq % 400) as usize)).expect("child put");
        }
        writeln!(out, "ack {k} {seq}").expect("stdout");
        out.flush().expect("flush stdout");
    }
    unreachable!("the writer never ends")
}

#[test]
fn kill_9_during_puts_never_loses_an_acknowledged_put() {
    if let Ok(dir) = std::env::var(CHILD) {
        writer(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    // A few segments, so that a missing state file would be a loss.
    {
        let rt = common::runtime();
        let tier = builder(dir.path()).build().unwrap();
        rt.block_on(async {
            for i in 0..50 {
                tier.insert(Bytes::from(format!("e{i}")), entry("e|0|", 600_000)).await.unwrap();
            }
        });
    }
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x57A7E);
    let mut acked: HashMap<u64, u64> = HashMap::new();
    let (mut total_acked, mut rounds) = (0u64, 0u64);
    for round in 0..30u64 {
        let mut child = Command::new(&exe)
            .args(["kill_9_during_puts_never_loses_an_acknowledged_put", "--exact", "--nocapture"])
            .env(CHILD, dir.path())
            .env("TIER_DISK_STATE_SEQ", (round * 1_000_000 + 1).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let wanted = rng.random_range(50..3000);
        let mut seen = 0;
        let mut note = |line: &str| {
            let mut w = line.split_whitespace();
            if w.next() == Some("ack") {
                let k: u64 = w.next().unwrap().parse().unwrap();
                let seq: u64 = w.next().unwrap().parse().unwrap();
                acked.insert(k, seq);
                if seq.is_multiple_of(5) {
                    acked.insert(k + KEYS, seq);
                }
                total_acked += 1;
                true
            } else {
                false
            }
        };
        for line in lines.by_ref() {
            if note(&line.unwrap()) {
                seen += 1;
                if seen >= wanted {
                    break;
                }
            }
        }
        child.kill().unwrap();
        // What it printed before it died was acknowledged too.
        for line in lines {
            let Ok(line) = line else { break };
            note(&line);
        }
        assert!(!child.wait().unwrap().success());
        rounds += 1;

        let tier = builder(dir.path()).build().expect("reopen after kill -9");
        let st = tier.state();
        assert!(!st.was_lost(), "round {round}: {:?}", tier.recovery_report().state);
        for (k, want) in &acked {
            let got = st.get(&key(*k)).unwrap_or_else(|| panic!("round {round}: key {k} lost"));
            assert!(seq_of(*k, &got) >= *want, "round {round}: key {k} went back");
        }
        for k in 0..KEYS {
            // Pairs move together: the second key is never behind the last pair of the first.
            if let (Some(a), Some(b)) = (st.get(&key(k)), st.get(&key(k + KEYS))) {
                let (sa, sb) = (seq_of(k, &a), seq_of(k + KEYS, &b));
                assert!(
                    sb <= sa && (!sa.is_multiple_of(5) || sa == sb),
                    "round {round}: pair {k} torn"
                );
            }
        }
    }
    eprintln!(
        "{rounds} kill -9 rounds, {total_acked} acknowledged puts, every one found after reopen"
    );
}

/// A state file with a few keys (and a segment, so that its loss matters), closed.
fn with_state(n: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let tier = builder(dir.path()).build().unwrap();
    let rt = common::runtime();
    rt.block_on(tier.insert(Bytes::from_static(b"e"), entry("e|0|", 600_000))).unwrap();
    for k in 0..n {
        tier.state().put(&key(k), &value(k, 1, 30)).unwrap();
    }
    dir
}

fn reopen_state(dir: &Path) -> (bool, usize, tier_disk::StateReport) {
    let tier = builder(dir)
        .build()
        .unwrap_or_else(|e| panic!("a damaged state file never stops the open: {e}"));
    let st = tier.state();
    for (k, v) in st.entries() {
        let text = std::str::from_utf8(&k).unwrap();
        let k: u64 = text.strip_prefix("gen:").unwrap().parse().unwrap();
        assert_eq!(seq_of(k, &v), 1, "a value that was never written");
    }
    (st.was_lost(), st.len(), tier.recovery_report().state.clone())
}

#[test]
fn every_bit_flip_of_the_state_file_is_a_loss_never_a_panic_nor_a_wrong_value() {
    let clean = with_state(8);
    let bytes = std::fs::read(state_path(clean.path())).unwrap();
    let (mut cases, mut lost) = (0, 0);
    for at in (0..bytes.len()).step_by(3) {
        let dir = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(clean.path()).unwrap() {
            let p = f.unwrap().path();
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
        let mut b = bytes.clone();
        b[at] ^= 1 << (at % 8);
        std::fs::write(state_path(dir.path()), &b).unwrap();
        let (was_lost, n, report) = reopen_state(dir.path());
        assert!(was_lost, "flip at {at} not reported: {report:?}");
        assert!(n <= 8);
        cases += 1;
        lost += usize::from(was_lost);
        // Rewritten with what survived: the next open finds it intact, still marked lost.
        let (again, n2, report) = reopen_state(dir.path());
        assert!(again && n2 == n && report.problem.is_none(), "{report:?}");
    }
    eprintln!("{cases} bit flips of the state file: {lost} reported as lost, 0 panics");
}

#[test]
fn truncation_is_a_loss_unless_it_is_a_write_cut_short_by_a_crash() {
    let dir = with_state(200); // more than 4 KiB of records
    let path = state_path(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 8192);
    // Cut at a page boundary inside a record: what a kill -9 in the middle of a write leaves
    // (a write is cut only between pages). Never acknowledged, so not a loss.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(8192).unwrap();
    drop(f);
    let (lost, n, report) = reopen_state(dir.path());
    assert!(!lost && report.interrupted_write, "{report:?}");
    assert!(n > 100 && n < 200);
    // Anywhere else: acknowledged writes may be gone.
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);
    let (lost, n2, report) = reopen_state(dir.path());
    assert!(lost, "{report:?}");
    assert_eq!(n2, n - 1);
}

#[test]
fn a_foreign_or_missing_state_file_is_a_loss_only_when_there_is_something_to_lose() {
    let dir = with_state(5);
    std::fs::write(state_path(dir.path()), br#"{"json": "from somewhere else"}"#).unwrap();
    let (lost, n, report) = reopen_state(dir.path());
    assert!(lost && n == 0, "{report:?}");
    // The loss stays reported until the owner says it took it into account.
    {
        let tier = builder(dir.path()).build().unwrap();
        assert!(tier.state().was_lost());
        tier.state().clear_lost().unwrap();
        assert!(!tier.state().was_lost());
    }
    assert!(!reopen_state(dir.path()).0);
    // Missing while segments exist: lost.
    std::fs::remove_file(state_path(dir.path())).unwrap();
    assert!(reopen_state(dir.path()).0);
    // A new directory: nothing to lose.
    let fresh = tempfile::tempdir().unwrap();
    let (lost, _, report) = reopen_state(fresh.path());
    assert!(!lost && report.problem.is_none(), "{report:?}");
}

#[test]
fn a_state_file_that_is_a_link_or_not_a_regular_file_is_refused() {
    let dir = with_state(3);
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("target");
    std::fs::write(&target, b"not yours").unwrap();
    std::fs::remove_file(state_path(dir.path())).unwrap();
    std::os::unix::fs::symlink(&target, state_path(dir.path())).unwrap();
    let err = builder(dir.path()).build().expect_err("a symlinked STATE is refused");
    assert!(matches!(err, DiskError::Unsafe { .. }), "{err}");
    assert!(err.to_string().contains("STATE") && err.to_string().contains("symbolic link"));
    assert_eq!(std::fs::read(&target).unwrap(), b"not yours");
    std::fs::remove_file(state_path(dir.path())).unwrap();
    std::fs::create_dir(state_path(dir.path())).unwrap();
    let err = builder(dir.path()).build().expect_err("a directory STATE is refused");
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

#[test]
fn bounds_are_errors_that_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tier = builder(dir.path()).build().unwrap();
    let st = tier.state();
    let big = vec![7u8; MAX_STATE_VALUE_LEN + 1];
    assert!(matches!(st.put(b"k", &big), Err(DiskError::TooLarge(_))));
    assert!(matches!(st.put(&big, b"v"), Err(DiskError::TooLarge(_))));
    assert!(st.get(b"k").is_none());
    // 64 MiB of live state at most.
    let v = vec![1u8; MAX_STATE_VALUE_LEN];
    let mut n = 0u64;
    let err = loop {
        match st.put(format!("{n:06}").as_bytes(), &v) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 2000, "no bound");
    };
    assert!(matches!(err, DiskError::TooLarge(_)), "{err}");
    assert!(st.get(format!("{n:06}").as_bytes()).is_none());
    assert_eq!(st.len() as u64, n);
    // Removing makes room again.
    st.remove(b"000000").unwrap();
    st.put(format!("{n:06}").as_bytes(), &v).unwrap();
    drop(tier);
    assert_eq!(builder(dir.path()).build().unwrap().state().len() as u64, n);
}

#[test]
fn the_file_is_compacted_and_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = state_path(dir.path());
    {
        let tier = builder(dir.path()).build().unwrap();
        let mut largest = 0;
        for i in 0..200_000u64 {
            tier.state().put(&key(i % 10), &value(i % 10, i, 50)).unwrap();
            if i % 1000 == 0 {
                largest = largest.max(std::fs::metadata(&path).unwrap().len());
            }
        }
        assert!(largest < 2 << 20, "the state file grew to {largest} bytes");
    }
    let tier = builder(dir.path()).build().unwrap();
    assert_eq!(tier.state().len(), 10);
    assert_eq!(seq_of(9, &tier.state().get(&key(9)).unwrap()), 199_999);
    assert!(!tier.state().was_lost());
}

#[test]
fn every_flush_policy_keeps_the_state() {
    for policy in [
        FlushPolicy::Always,
        FlushPolicy::OnClose,
        FlushPolicy::None,
        FlushPolicy::Periodic(std::time::Duration::from_millis(1)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        {
            let tier = builder(dir.path()).flush(policy).build().unwrap();
            tier.state().put(b"a", b"1").unwrap();
            tier.flush().unwrap();
            tier.state().put(b"b", b"2").unwrap();
        }
        let tier = builder(dir.path()).build().unwrap();
        assert_eq!(tier.state().len(), 2, "{policy:?}");
        // Discarding the entries keeps the state.
        drop(tier);
        let tier = builder(dir.path()).recovery(tier_disk::RecoveryMode::Discard).build().unwrap();
        assert_eq!(tier.state().len(), 2, "{policy:?}");
        assert!(!tier.state().was_lost());
    }
}

#[test]
fn a_damaged_state_file_is_reported_by_the_inspector() {
    let dir = with_state(4);
    let path = state_path(dir.path());
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, 40).unwrap();
    f.write_all_at(&[b[0] ^ 0x20], 40).unwrap();
    drop(f);
    let insp = tier_disk::DiskInspector::open(dir.path()).unwrap();
    let state = insp.state().expect("a state file");
    assert!(state.problem.is_some() && !state.interrupted_write, "{state:?}");
    assert!(!insp.verify().unwrap().is_clean());
}

//! The checker on hand-made histories: clean ones pass, each kind of violation is flagged, and
//! what is allowed (within δ, stale under fail-safe, overlapping inserts, failed writes) is not.
#![allow(clippy::unwrap_used)]

use super::*;

const DELTA: u64 = 100_000;

fn write(node: &str, op: Op, start: u64, end: u64, writes: &[(u32, u64)]) -> Record {
    Record {
        node: node.into(),
        life: 0,
        op,
        key: (writes.len() == 1).then(|| writes[0].0),
        tag: None,
        start_us: start,
        end_us: end,
        outcome: Outcome::Ok,
        stale: false,
        writes: writes.to_vec(),
        via: None,
    }
}

fn read(node: &str, key: u32, start: u64, got: Outcome) -> Record {
    Record {
        node: node.into(),
        life: 0,
        op: Op::Read,
        key: Some(key),
        tag: None,
        start_us: start,
        end_us: start + 50,
        outcome: got,
        stale: false,
        writes: vec![],
        via: None,
    }
}

fn v(version: u64, writer: &str) -> Outcome {
    Outcome::Value { version, writer: writer.into() }
}

fn kinds(report: &CheckReport) -> Vec<ViolationKind> {
    report.violations.iter().map(|v| v.kind).collect()
}

#[test]
fn a_clean_history_has_no_violations() {
    let h = vec![
        read("a", 0, 1_000, v(1, "seed")),
        write("a", Op::Insert, 2_000, 3_000, &[(0, 2)]),
        read("b", 0, 500_000, v(2, "a")),
        write("b", Op::Invalidate, 600_000, 601_000, &[(0, 3)]),
        read("a", 0, 800_000, v(3, "b")),
    ];
    let report = check(&h, &[], &[3], DELTA);
    assert_eq!(report.violations, vec![]);
    assert_eq!((report.ops, report.reads, report.failed_reads), (5, 3, 0));
    assert!(report.figure_line().contains("violations=0 stale=0 failed_reads=0"));
}

#[test]
fn an_older_value_after_an_acknowledged_invalidation_is_flagged() {
    let h = vec![
        write("a", Op::Insert, 1_000, 2_000, &[(0, 2)]),
        write("a", Op::Invalidate, 10_000, 11_000, &[(0, 3)]),
        read("b", 0, 300_000, v(2, "a")),
    ];
    let report = check(&h, &[], &[3], DELTA);
    assert_eq!(kinds(&report), vec![ViolationKind::Older]);
    let (cause, version) = report.violations[0].cause.clone().unwrap();
    assert_eq!((cause.op, version), (Op::Invalidate, 3));
    assert!(report.to_string().contains("older after no fault / invalidate"));
    assert_eq!(report.lags(), [0, 1, 0], "289 ms after the acknowledgement");
}

#[test]
fn within_delta_an_older_value_is_allowed() {
    let h = vec![
        write("a", Op::Insert, 1_000, 2_000, &[(0, 2)]),
        write("a", Op::Invalidate, 10_000, 11_000, &[(0, 3)]),
        read("b", 0, 11_000 + DELTA, v(2, "a")),
    ];
    assert_eq!(check(&h, &[], &[3], DELTA).violations, vec![]);
}

#[test]
fn a_stale_flagged_older_read_is_counted_apart() {
    let mut r = read("b", 0, 300_000, v(2, "a"));
    r.stale = true;
    let h = vec![
        write("a", Op::Insert, 1_000, 2_000, &[(0, 2)]),
        write("a", Op::Invalidate, 10_000, 11_000, &[(0, 3)]),
        r,
    ];
    let report = check(&h, &[], &[3], DELTA);
    assert_eq!(report.violations, vec![]);
    assert_eq!((report.stale, report.stale_older), (1, 1));
}

#[test]
fn an_insert_that_overlapped_the_newer_write_is_excused_one_that_ended_before_is_not() {
    // Insert of v2 still running when the invalidation of v3 started: either order is right.
    let overlapping = vec![
        write("a", Op::Insert, 1_000, 20_000, &[(0, 2)]),
        write("b", Op::Invalidate, 10_000, 11_000, &[(0, 3)]),
        read("c", 0, 300_000, v(2, "a")),
    ];
    assert_eq!(check(&overlapping, &[], &[3], DELTA).violations, vec![]);
    // It ended before the invalidation started: serving it after is a violation.
    let before = vec![
        write("a", Op::Insert, 1_000, 9_000, &[(0, 2)]),
        write("b", Op::Invalidate, 10_000, 11_000, &[(0, 3)]),
        read("c", 0, 300_000, v(2, "a")),
    ];
    assert_eq!(kinds(&check(&before, &[], &[3], DELTA)), vec![ViolationKind::Older]);
}

#[test]
fn a_loaded_value_older_than_an_acknowledged_insert_is_flagged_even_when_overlapping() {
    // v2 reached the cache through a load (its writer invalidated); a load that read the origin
    // before the insert of v3 and landed after it is what must not happen.
    let h = vec![
        write("a", Op::Invalidate, 1_000, 20_000, &[(0, 2)]),
        write("b", Op::Insert, 10_000, 11_000, &[(0, 3)]),
        read("c", 0, 300_000, v(2, "a")),
    ];
    assert_eq!(kinds(&check(&h, &[], &[3], DELTA)), vec![ViolationKind::Older]);
}

#[test]
fn tag_namespace_and_clear_invalidations_cover_each_of_their_keys() {
    for op in [Op::InvalidateTag, Op::InvalidateNamespace, Op::Clear] {
        let h = vec![
            write("a", op, 10_000, 11_000, &[(0, 2), (1, 2), (2, 2)]),
            read("b", 0, 300_000, v(2, "a")),
            read("b", 1, 300_000, v(1, "seed")),
            read("b", 2, 300_000, v(2, "a")),
        ];
        let report = check(&h, &[], &[2, 2, 2], DELTA);
        assert_eq!(kinds(&report), vec![ViolationKind::Older], "{op:?}");
        assert_eq!(report.violations[0].read.key, Some(1));
    }
}

#[test]
fn a_failed_invalidation_promises_nothing() {
    let mut x = write("a", Op::Invalidate, 10_000, 11_000, &[(0, 2)]);
    x.outcome = Outcome::Error("backplane: unavailable".into());
    let h = vec![x, read("b", 0, 300_000, v(1, "seed"))];
    let report = check(&h, &[], &[2], DELTA);
    assert_eq!(report.violations, vec![]);
    assert_eq!(report.failed_writes, 1);
}

#[test]
fn values_never_written_none_and_garbled_are_flagged() {
    let h = vec![
        write("a", Op::Insert, 1_000, 2_000, &[(0, 2)]),
        read("b", 0, 10_000, v(7, "a")), // above the origin's counter
        read("b", 0, 11_000, v(2, "b")), // v2 was written by a, not b
        read("b", 0, 12_000, v(0, "a")), // never a version
        read("b", 0, 13_000, Outcome::None), // the origin always has a value
        read("b", 0, 14_000, Outcome::Garbled("k9|2|a".into())),
    ];
    let report = check(&h, &[], &[2], DELTA);
    assert_eq!(
        kinds(&report),
        vec![
            ViolationKind::NeverWritten,
            ViolationKind::NeverWritten,
            ViolationKind::NeverWritten,
            ViolationKind::None,
            ViolationKind::Garbled
        ]
    );
}

#[test]
fn failed_reads_are_counted_and_unrecorded_versions_not_judged() {
    let h = vec![
        read("b", 0, 10_000, Outcome::Error("tier generations failed: unavailable".into())),
        read("b", 0, 15_000, Outcome::Error("master 127.0.0.1:7001 is open".into())),
        // v2 is in the origin but no record names it (its writer was killed mid-operation).
        read("b", 0, 20_000, v(2, "a")),
    ];
    let report = check(&h, &[], &[2], DELTA);
    assert_eq!(report.violations, vec![]);
    assert_eq!((report.failed_reads, report.unrecorded), (2, 1));
    assert_eq!(
        report.read_errors,
        vec![
            ("master #.#.#.#:# is open".into(), 1),
            ("tier generations failed: unavailable".into(), 1)
        ]
    );
    assert!(report.figure_line().ends_with("failed_reads=2"));
}

#[test]
fn a_violation_is_attributed_to_the_fault_before_it() {
    let faults = vec![
        Fault { kind: FaultKind::GenDelete, target: "all".into(), start_us: 5_000, end_us: 6_000 },
        Fault { kind: FaultKind::Kill, target: "b".into(), start_us: 400_000, end_us: 450_000 },
    ];
    let h = vec![
        write("a", Op::InvalidateTag, 10_000, 11_000, &[(0, 2)]),
        read("b", 0, 300_000, v(1, "seed")),
        read("b", 0, 500_000, v(1, "seed")),
    ];
    let report = check(&h, &faults, &[2], DELTA);
    let buckets: Vec<String> = report.violations.iter().map(Violation::bucket).collect();
    assert_eq!(
        buckets,
        vec!["older after gen_delete / invalidate_tag", "older after kill / invalidate_tag"]
    );
    assert_eq!(report.breakdown().len(), 2);
    assert!(report.figure_line().contains("faults{kill=1,client_kill=0,redis_restart=0,"));
    assert!(report.to_string().contains("last fault kill 100 ms before"));
}

//! The checker: what the merged histories of a run show.
//!
//! Every value carries the origin version it was read or written as, so "written before" is
//! "a lower version". Over all records:
//!
//! - **older** — a read R of key k that started more than δ after an acknowledged (`Ok`) write
//!   or invalidation X of k (directly, or through k's tag, the namespace or a clear) returned,
//!   and returned a version lower than the one X set in the origin. Not counted when R was
//!   flagged stale (fail-safe: counted in `stale_older`), nor when the value R returned was
//!   written by an `insert` that did not end before X started (the two writes overlapped, and
//!   either order is a right outcome). A value R returned that a *load* wrote is never excused:
//!   a load that read the origin before X and landed after it is exactly what must not happen;
//! - **never_written** — a version the origin never had for k (0, above its final counter, or
//!   recorded with another writer); **none** — no value (the origin always has one);
//!   **garbled** — not `k|version|writer` of the key read;
//! - **failed reads** — a read that returned an error (the origin is never faulted: no read
//!   should fail), counted.
//!
//! A version the origin had but no record names (the node was killed between writing the
//! origin and recording the operation) is counted as `unrecorded` and not judged.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::history::{Fault, FaultKind, Op, Outcome, Record};

/// What makes a read a violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViolationKind {
    /// Older than an acknowledged write or invalidation that ended more than δ before it.
    Older,
    /// A version the origin never had.
    NeverWritten,
    /// No value.
    None,
    /// Not a value of the key read.
    Garbled,
}

impl ViolationKind {
    fn name(self) -> &'static str {
        match self {
            ViolationKind::Older => "older",
            ViolationKind::NeverWritten => "never_written",
            ViolationKind::None => "none",
            ViolationKind::Garbled => "garbled",
        }
    }
}

/// One read that broke the promise, and what preceded it.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// Which rule.
    pub kind: ViolationKind,
    /// The read.
    pub read: Record,
    /// For `Older`: the acknowledged operation it is older than (the one with the highest
    /// version), and the version that operation set for the key.
    pub cause: Option<(Record, u64)>,
    /// The last fault injected before the read started, and how long before (µs).
    pub fault: Option<(FaultKind, u64)>,
}

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckReport {
    /// Operations recorded.
    pub ops: usize,
    /// Reads recorded.
    pub reads: usize,
    /// Faults injected, per kind.
    pub faults: BTreeMap<FaultKind, usize>,
    /// Every violation, in read start order.
    pub violations: Vec<Violation>,
    /// Reads flagged stale (fail-safe).
    pub stale: usize,
    /// Of those, reads older than an acknowledged operation (would be `Older` unflagged).
    pub stale_older: usize,
    /// Reads that returned an error.
    pub failed_reads: usize,
    /// The failed reads by error (digits as `#`, cut at 100 characters), most first.
    pub read_errors: Vec<(String, usize)>,
    /// Writes and invalidations whose cache call failed (not acknowledged: no promise).
    pub failed_writes: usize,
    /// The failed writes by operation and error (as `read_errors`), most first.
    pub write_errors: Vec<(String, usize)>,
    /// Reads of a version no record names (its writer was killed before recording it).
    pub unrecorded: usize,
}

/// A fault is named as a violation's cause when it started at most this long before the read.
pub const FAULT_WINDOW_US: u64 = 5_000_000;

/// Check `records` (every node's, in any order) against the origin's final `versions` (per
/// key), with propagation bound `delta_us`.
pub fn check(records: &[Record], faults: &[Fault], versions: &[u64], delta_us: u64) -> CheckReport {
    let mut report = CheckReport { ops: records.len(), ..CheckReport::default() };
    for f in faults {
        *report.faults.entry(f.kind).or_default() += 1;
    }
    let mut faults: Vec<&Fault> = faults.iter().collect();
    faults.sort_by_key(|f| f.start_us);

    // Who wrote each (key, version); the acknowledged operations of each key, by end.
    let mut writer_of: HashMap<(u32, u64), &Record> = HashMap::new();
    let mut acked: HashMap<u32, Vec<(&Record, u64)>> = HashMap::new();
    let mut write_errors: HashMap<String, usize> = HashMap::new();
    for r in records.iter().filter(|r| r.op != Op::Read) {
        let ok = r.outcome == Outcome::Ok;
        if let Outcome::Error(e) = &r.outcome {
            report.failed_writes += 1;
            *write_errors
                .entry(format!("{}: {}", r.op.name(), error_class_within(e, 240)))
                .or_default() += 1;
        }
        for &(k, v) in &r.writes {
            writer_of.insert((k, v), r);
            if ok {
                acked.entry(k).or_default().push((r, v));
            }
        }
    }
    for list in acked.values_mut() {
        list.sort_by_key(|(r, _)| r.end_us);
    }

    let mut reads: Vec<&Record> = records.iter().filter(|r| r.op == Op::Read).collect();
    reads.sort_by_key(|r| r.start_us);
    report.reads = reads.len();
    let mut read_errors: HashMap<String, usize> = HashMap::new();
    for read in reads {
        if read.stale {
            report.stale += 1;
        }
        let Some(key) = read.key else { continue };
        let found = match &read.outcome {
            Outcome::Error(e) => {
                report.failed_reads += 1;
                *read_errors.entry(error_class(e)).or_default() += 1;
                continue;
            }
            Outcome::Ok => Some(ViolationKind::Garbled),
            Outcome::None => Some(ViolationKind::None),
            Outcome::Garbled(_) => Some(ViolationKind::Garbled),
            Outcome::Value { version, writer } => {
                let newest = versions.get(key as usize).copied().unwrap_or(0);
                let recorded = writer_of.get(&(key, *version)).copied();
                if *version == 0 || *version > newest || recorded.is_some_and(|w| &w.node != writer)
                {
                    Some(ViolationKind::NeverWritten)
                } else if recorded.is_none() && !(*version == 1 && writer == "seed") {
                    report.unrecorded += 1;
                    None
                } else {
                    let excuse = recorded.filter(|w| w.op == Op::Insert);
                    let newer = acked.get(&key).and_then(|list| {
                        list.iter()
                            .take_while(|(x, _)| x.end_us + delta_us < read.start_us)
                            .filter(|(x, v)| {
                                *v > *version && excuse.is_none_or(|y| y.end_us <= x.start_us)
                            })
                            .max_by_key(|(_, v)| *v)
                    });
                    match newer {
                        Some(_) if read.stale => {
                            report.stale_older += 1;
                            None
                        }
                        Some(&(x, v)) => {
                            report.violations.push(Violation {
                                kind: ViolationKind::Older,
                                read: read.clone(),
                                cause: Some((x.clone(), v)),
                                fault: last_fault(&faults, read.start_us),
                            });
                            None
                        }
                        None => None,
                    }
                }
            }
        };
        if let Some(kind) = found {
            report.violations.push(Violation {
                kind,
                read: read.clone(),
                cause: None,
                fault: last_fault(&faults, read.start_us),
            });
        }
    }
    report.read_errors = most_first(read_errors);
    report.write_errors = most_first(write_errors);
    report
}

/// An error text with its numbers (ports, counts) as `#`, cut at 100 characters.
fn error_class(e: &str) -> String {
    error_class_within(e, 100)
}

/// [`error_class`] cut at `limit` characters.
fn error_class_within(e: &str, limit: usize) -> String {
    let mut class = String::new();
    for c in e.chars().take(limit) {
        if !c.is_ascii_digit() {
            class.push(c);
        } else if !class.ends_with('#') {
            class.push('#');
        }
    }
    class
}

/// Counts, most first (ties by name).
fn most_first(counts: HashMap<String, usize>) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts
}

/// The last fault that started before `at`, and how long before.
fn last_fault(faults: &[&Fault], at: u64) -> Option<(FaultKind, u64)> {
    let i = faults.partition_point(|f| f.start_us <= at);
    let f = faults.get(i.checked_sub(1)?)?;
    Some((f.kind, at - f.start_us))
}

impl Violation {
    /// The cause bucket of the breakdown: the fault just before (within [`FAULT_WINDOW_US`]) and
    /// the operation it is older than.
    pub fn bucket(&self) -> String {
        let fault = match self.fault {
            Some((kind, age)) if age <= FAULT_WINDOW_US => kind.name(),
            _ => "no fault",
        };
        match &self.cause {
            Some((x, _)) => format!("{} after {fault} / {}", self.kind.name(), x.op.name()),
            None => format!("{} after {fault}", self.kind.name()),
        }
    }
}

impl CheckReport {
    /// The one figure line: `coherence: ops=… faults{…} violations=… stale=… failed_reads=…`.
    pub fn figure_line(&self) -> String {
        let faults: Vec<String> = FaultKind::ALL
            .iter()
            .map(|k| format!("{}={}", k.name(), self.faults.get(k).copied().unwrap_or(0)))
            .collect();
        format!(
            "coherence: ops={} faults{{{}}} violations={} stale={} failed_reads={}",
            self.ops,
            faults.join(","),
            self.violations.len(),
            self.stale,
            self.failed_reads
        )
    }

    /// `Older` violations by how long after the acknowledgement the read started: up to
    /// 250 ms (slow propagation), up to 1 s, longer (the old value stayed).
    pub fn lags(&self) -> [usize; 3] {
        let mut lags = [0; 3];
        for v in &self.violations {
            if let Some((x, _)) = &v.cause {
                let lag = v.read.start_us.saturating_sub(x.end_us);
                lags[usize::from(lag > 250_000) + usize::from(lag > 1_000_000)] += 1;
            }
        }
        lags
    }

    /// Violations per cause bucket, most first.
    pub fn breakdown(&self) -> Vec<(String, usize)> {
        let mut by: HashMap<String, usize> = HashMap::new();
        for v in &self.violations {
            *by.entry(v.bucket()).or_default() += 1;
        }
        most_first(by)
    }
}

impl fmt::Display for CheckReport {
    /// The figure line, then the details: counts, the breakdown and a few examples.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.figure_line())?;
        writeln!(
            f,
            "  reads={} writes={} (failed {}) stale_older={} unrecorded={}",
            self.reads,
            self.ops - self.reads,
            self.failed_writes,
            self.stale_older,
            self.unrecorded
        )?;
        let [near, mid, far] = self.lags();
        writeln!(
            f,
            "  older reads by time since the acknowledgement: <=250 ms {near}, <=1 s {mid}, \
             >1 s {far}"
        )?;
        for (bucket, n) in self.breakdown() {
            writeln!(f, "  {n:>6}  {bucket}")?;
        }
        for v in self.examples(5) {
            writeln!(f, "  e.g. {}", v.describe())?;
        }
        for (error, n) in self.read_errors.iter().take(5) {
            writeln!(f, "  {n:>6}  failed reads: {error}")?;
        }
        for (error, n) in self.write_errors.iter().take(8) {
            writeln!(f, "  {n:>6}  failed writes: {error}")?;
        }
        Ok(())
    }
}

impl CheckReport {
    /// Up to `n` examples, one of each bucket first.
    pub fn examples(&self, n: usize) -> Vec<&Violation> {
        let mut seen = std::collections::HashSet::new();
        let mut out: Vec<&Violation> =
            self.violations.iter().filter(|v| seen.insert(v.bucket())).take(n).collect();
        for v in &self.violations {
            if out.len() >= n {
                break;
            }
            if !out.iter().any(|o| std::ptr::eq(*o, v)) {
                out.push(v);
            }
        }
        out
    }
}

impl Violation {
    /// One line: the read, what it returned, and what it is older than.
    pub fn describe(&self) -> String {
        let r = &self.read;
        let got = match &r.outcome {
            Outcome::Value { version, writer } => format!("v{version} by {writer}"),
            other => format!("{other:?}"),
        };
        let mut s = format!(
            "{}: {}/{} read k{} at {} got {got}",
            self.kind.name(),
            r.node,
            r.life,
            r.key.unwrap_or(u32::MAX),
            r.start_us
        );
        if let Some(via) = &r.via {
            s += &format!(" ({via})");
        }
        if let Some((x, v)) = &self.cause {
            s += &format!(
                "; {} by {}/{} set v{v}, acknowledged {} ms before the read",
                x.op.name(),
                x.node,
                x.life,
                r.start_us.saturating_sub(x.end_us) / 1000
            );
        }
        if let Some((kind, age)) = self.fault {
            s += &format!("; last fault {} {} ms before", kind.name(), age / 1000);
        }
        s
    }
}

#[cfg(test)]
mod tests;

//! Crash points for kill tests (feature `test-util`; none exist without it).

/// A crash point for kill tests: when the environment variable `TIER_FAULT` is `name:n`, the
/// `n`-th pass (from 1) through the point `name` kills the process with `SIGKILL` (no
/// destructor runs, nothing is flushed: a `kill -9` there). Points: `write-behind.before-append`,
/// `write-behind.after-append` (durable, not yet acknowledged), `write-behind.after-batch`
/// (the origin said `Ok`, the queue does not know yet). Without the feature, no point exists.
pub fn fault_point(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static PASSES: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        let v = std::env::var("TIER_FAULT").ok()?;
        let (point, n) = v.rsplit_once(':')?;
        Some((point.to_string(), n.parse().ok()?))
    });
    if let Some((point, n)) = armed {
        if point == name && PASSES.fetch_add(1, Ordering::Relaxed) + 1 == *n {
            // SAFETY: kill(2) of this process; no memory is touched.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            std::process::abort();
        }
    }
}

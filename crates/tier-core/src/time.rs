//! Wall-clock time as Unix milliseconds (the unit of every instant in an envelope), a monotonic
//! clock, and a cheap random generator.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, as Unix milliseconds. A clock before 1970 reads as 0.
///
/// On Linux this reads `CLOCK_REALTIME_COARSE` (a few ns, resolution of one kernel tick, at
/// most 4 ms): every read of every tier classifies entries with it, and lifetimes are
/// milliseconds to hours. Elsewhere it is `SystemTime::now()`.
#[inline]
pub fn now_ms() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_REALTIME_COARSE exists on every
        // Linux since 2.6.32. On failure (never seen) we fall back to the precise clock.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
        if rc == 0 && ts.tv_sec >= 0 {
            return ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000;
        }
    }
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// How far [`now_ms`] may be behind the true time, in ms: the coarse clock's resolution (one
/// kernel tick, read once with `clock_getres`) plus the millisecond it is truncated to. A bound
/// that must hold in true time (the lease) subtracts it.
pub fn now_ms_lag() -> u64 {
    static LAG: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LAG.get_or_init(|| {
        #[cfg(target_os = "linux")]
        {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: `ts` is a valid, writable timespec (as in `now_ms`).
            let rc = unsafe { libc::clock_getres(libc::CLOCK_REALTIME_COARSE, &mut ts) };
            if rc == 0 && ts.tv_sec == 0 && ts.tv_nsec >= 0 {
                return (ts.tv_nsec as u64).div_ceil(1_000_000) + 1;
            }
            // An unknown resolution: the largest a Linux tick is (HZ = 100).
            11
        }
        #[cfg(not(target_os = "linux"))]
        {
            1
        }
    })
}

/// Milliseconds on a monotonic clock with an arbitrary origin (the breaker's clock).
///
/// On Linux this reads `CLOCK_MONOTONIC_COARSE` (a few ns, one-tick resolution): the breaker
/// reads it on every call it lets through, and its windows are seconds long.
pub(crate) fn monotonic_ms() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC_COARSE exists on every
        // Linux since 2.6.32. On failure (never seen) we fall back to `Instant`.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        if rc == 0 && ts.tv_sec >= 0 {
            return ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000;
        }
    }
    use std::sync::OnceLock;
    static BASE: OnceLock<std::time::Instant> = OnceLock::new();
    BASE.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

/// `now + d` in Unix milliseconds, saturating.
pub fn after_ms(now: u64, d: Duration) -> u64 {
    now.saturating_add(d.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// A cheap thread-local pseudo-random number generator (xorshift64*), for jitter, sampling and
/// XFetch. Not for anything secret.
#[inline]
pub(crate) fn rand_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0x9E37);
            let addr = &t as *const u64 as u64;
            (t ^ addr.rotate_left(32)) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// A uniform float in `(0, 1]`.
pub(crate) fn rand_unit() -> f64 {
    ((rand_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_is_in_range() {
        for _ in 0..10_000 {
            let u = rand_unit();
            assert!(u > 0.0 && u <= 1.0);
        }
    }
}

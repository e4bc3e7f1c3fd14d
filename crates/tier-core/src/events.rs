//! Log events that could flood (one per read while a tier holds damaged bytes, while the origin
//! is down, while a connection is lost) are said at most once per interval from one place;
//! the ones held back are counted and the next one that is said carries the count
//! (`suppressed`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The default interval of an [`EventLimit`]: one event a second from one place.
pub const EVENT_INTERVAL: Duration = Duration::from_secs(1);

/// At most one event per interval: [`admit`](Self::admit) says whether to emit this one, and how
/// many were held back since the last.
///
/// ```
/// use tier_core::spi::EventLimit;
///
/// let limit = EventLimit::new(std::time::Duration::from_secs(60));
/// assert_eq!(limit.admit(), Some(0)); // the first is said
/// assert_eq!(limit.admit(), None); // held back
/// assert_eq!(limit.admit(), None);
/// ```
#[derive(Debug)]
pub struct EventLimit {
    interval_ms: u64,
    /// Milliseconds since the process's first use of a limit before which events are held
    /// back; 0: none said yet.
    next_ms: AtomicU64,
    held: AtomicU64,
}

impl Default for EventLimit {
    fn default() -> Self {
        Self::new(EVENT_INTERVAL)
    }
}

/// Milliseconds since the first call (monotonic), from 1.
fn elapsed_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl EventLimit {
    /// One event per `interval` at most.
    pub fn new(interval: Duration) -> Self {
        let interval_ms = interval.as_millis().min(u128::from(u64::MAX)) as u64;
        Self { interval_ms, next_ms: AtomicU64::new(0), held: AtomicU64::new(0) }
    }

    /// `Some(n)`: emit this event, `n` having been held back since the last; `None`: hold this
    /// one back (it is counted).
    pub fn admit(&self) -> Option<u64> {
        let now = elapsed_ms();
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_interval_and_the_next_says_how_many_were_held_back() {
        let limit = EventLimit::new(Duration::from_millis(30));
        assert_eq!(limit.admit(), Some(0));
        assert_eq!((limit.admit(), limit.admit()), (None, None));
        // The interval passing is what is under test here.
        std::thread::sleep(Duration::from_millis(35));
        assert_eq!(limit.admit(), Some(2));
        assert_eq!(limit.admit(), None);
    }
}

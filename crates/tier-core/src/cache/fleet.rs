//! The fleet state's parts as the hierarchy uses them: each under a timeout and a breaker of
//! its own ([`Guard`]: generations, namespace, floor, lock, backplane — a part that is down
//! never takes the cache down, it is counted in `tier_fleet_state_unavailable_total`), and
//! what the hierarchy keeps of the fleet locally ([`Kept`]: the last applied log position,
//! written at most every [`POSITION_EVERY`], and the suspect floor, in the local tiers'
//! [`StateStore`]).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backplane::LogPosition;
use crate::breaker::BreakerConfig;
use crate::breaker::{CircuitBreaker, Outcome};
use crate::error::{TierError, TierErrorKind};
use crate::metrics::FLEET_STATE_UNAVAILABLE;
use crate::state::{get_u64, position_name, suspect_name, StateStore};

/// The applied log position is written at most this often (replay is idempotent).
pub(super) const POSITION_EVERY: Duration = Duration::from_millis(50);

/// How long a part's open breaker refuses calls before one probe.
pub(super) const GUARD_COOLDOWN: Duration = Duration::from_millis(250);

/// A part of the fleet state (the `part` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    Generations,
    Namespace,
    Floor,
    Lock,
    Backplane,
}

impl Part {
    fn label(self) -> &'static str {
        match self {
            Self::Generations => "generations",
            Self::Namespace => "namespace",
            Self::Floor => "floor",
            Self::Lock => "lock",
            Self::Backplane => "backplane",
        }
    }
}

/// One part's timeout and breaker.
pub(super) struct Guard {
    part: Part,
    timeout: Duration,
    breaker: CircuitBreaker,
    unavailable: metrics::Counter,
}

impl Guard {
    fn new(cache: &str, part: Part, timeout: Duration) -> Self {
        // Opens after 5 failures in a row (or half of 20 calls); one probe after GUARD_COOLDOWN
        // closes it again. Each call is bounded by the timeout already: the breaker only spares
        // the callers of an outage that wait, so it may probe often — an outage costs one
        // timed-out call per cooldown, and the part is back within a cooldown of its return
        // (with 1 s and three probes, the checker's writes failed for a second after every
        // 300 ms proxy drop).
        let cfg = BreakerConfig { cooldown: GUARD_COOLDOWN, probes: 1, ..BreakerConfig::default() };
        let breaker = CircuitBreaker::new(cfg);
        // Its log lines say whose it is (they said `cache="" tier=""`).
        breaker.set_labels(cache, format!("fleet state: {}", part.label()));
        Self {
            part,
            timeout,
            breaker,
            unavailable: metrics::counter!(FLEET_STATE_UNAVAILABLE, "cache" => cache.to_string(), "part" => part.label()),
        }
    }

    /// Run `call` under the part's timeout and breaker; an error (also a timeout or an open
    /// breaker) is counted.
    pub async fn run<T>(
        &self,
        call: impl Future<Output = Result<T, TierError>>,
    ) -> Result<T, TierError> {
        let permit = self.breaker.try_acquire();
        if !permit.is_granted() {
            self.unavailable.increment(1);
            let why = format!("{} unavailable (its breaker is open)", self.part.label());
            return Err(TierError::new(TierErrorKind::CircuitOpen, why));
        }
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(TierError::new(
                TierErrorKind::Timeout,
                format!("{} did not answer within {:?}", self.part.label(), self.timeout),
            )),
        };
        let outcome = match &result {
            Err(e) if e.is_tier_failure() => Outcome::Failure,
            _ => Outcome::Success,
        };
        self.breaker.record(permit, outcome);
        if result.is_err() {
            self.unavailable.increment(1);
        }
        result
    }
}

/// The guards of every part.
pub(super) struct Guards {
    pub generations: Guard,
    pub namespace: Guard,
    pub floor: Guard,
    pub lock: Guard,
    pub backplane: Guard,
}

impl Guards {
    pub fn new(cache: &str, timeout: Duration) -> Self {
        Self {
            generations: Guard::new(cache, Part::Generations, timeout),
            namespace: Guard::new(cache, Part::Namespace, timeout),
            floor: Guard::new(cache, Part::Floor, timeout),
            lock: Guard::new(cache, Part::Lock, timeout),
            backplane: Guard::new(cache, Part::Backplane, timeout),
        }
    }
}

/// A position applied and not yet written.
struct Pending {
    position: Option<LogPosition>,
    written_at: Instant,
}

/// What the hierarchy keeps of the fleet in the local tiers' state store (nothing without one).
pub(super) struct Kept {
    cache: String,
    state: Option<Arc<dyn StateStore>>,
    pending: Mutex<Pending>,
}

impl Kept {
    pub fn new(cache: &str, state: Option<Arc<dyn StateStore>>) -> Self {
        let pending = Pending { position: None, written_at: Instant::now() };
        Self { cache: cache.to_string(), state, pending: Mutex::new(pending) }
    }

    /// The state store, if the local tiers keep one.
    pub fn state(&self) -> Option<&Arc<dyn StateStore>> {
        self.state.as_ref()
    }

    /// The last applied log position recorded.
    pub fn position(&self) -> Option<LogPosition> {
        let state = self.state.as_ref()?;
        match state.get(&position_name(&self.cache)) {
            Ok(p) => p.map(LogPosition),
            Err(e) => {
                tracing::warn!(cache = %self.cache, error = %e, "the applied log position could not be read");
                None
            }
        }
    }

    /// The suspect floor recorded.
    pub fn suspect_before(&self) -> u64 {
        let Some(state) = &self.state else { return 0 };
        get_u64(&**state, &suspect_name(&self.cache)).ok().flatten().unwrap_or(0)
    }

    /// Record the suspect floor (durably when it returns `Ok`).
    pub fn keep_suspect_before(&self, at: u64) -> Result<(), TierError> {
        match &self.state {
            Some(state) => state.put(&suspect_name(&self.cache), &at.to_le_bytes()),
            None => Ok(()),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A poisoned position is still a position: every write replaces it whole.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `position` was applied: write it when the last write is older than [`POSITION_EVERY`],
    /// else leave it for [`flush`](Self::flush).
    pub fn applied(&self, position: LogPosition) {
        if self.state.is_none() {
            return;
        }
        let due = {
            let mut p = self.pending();
            p.position = Some(position);
            p.written_at.elapsed() >= POSITION_EVERY
        };
        if due {
            self.flush();
        }
    }

    /// Write the last applied position, if one is pending.
    pub fn flush(&self) {
        let Some(state) = &self.state else { return };
        let position = {
            let mut p = self.pending();
            p.written_at = Instant::now();
            p.position.take()
        };
        if let Some(position) = position {
            if let Err(e) = state.put(&position_name(&self.cache), &position.0) {
                tracing::warn!(cache = %self.cache, error = %e, "the applied log position could not be written (replay from an older one is harmless)");
            }
        }
    }
}

/// The reads of the namespace version after writes (`Cache::settle_namespace`), shared by
/// concurrent writers: a read answers for every write that had landed when it started. Each
/// write takes a number once landed; a read records, when it starts, how many numbers were
/// taken (it covers those). One read at a time: a writer that finds the last read covering it
/// takes its answer, else it reads — so concurrent writers of one instance make at most two
/// reads per round trip, not one each (the namespace key is one key of one Redis master for
/// the whole fleet).
pub(super) struct AfterWrites {
    /// Numbers taken by landed writes.
    landed: std::sync::atomic::AtomicU64,
    /// The last read: the numbers below the first field are covered by it; its answer.
    last: tokio::sync::Mutex<(u64, Result<u64, TierError>)>,
}

impl Default for AfterWrites {
    fn default() -> Self {
        Self { landed: Default::default(), last: tokio::sync::Mutex::new((0, Ok(0))) }
    }
}

impl AfterWrites {
    /// The version as a read started after the caller's write landed answers it: the last
    /// read's if it started after, else `read`'s (polled only then).
    pub(super) async fn version_after(
        &self,
        read: impl Future<Output = Result<u64, TierError>>,
    ) -> Result<u64, TierError> {
        use std::sync::atomic::Ordering;
        let mine = self.landed.fetch_add(1, Ordering::AcqRel);
        let mut last = self.last.lock().await;
        if last.0 > mine {
            return last.1.clone();
        }
        // Every number below this was taken by a write that had landed before this read starts.
        let covers = self.landed.load(Ordering::Acquire);
        let got = read.await;
        *last = (covers, got.clone());
        got
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::AfterWrites;

    // One thread: the writers run once the test awaits them, all landed while the first reads.
    #[tokio::test]
    async fn concurrent_writers_share_reads_and_each_gets_one_started_after_it_landed() {
        let checks = Arc::new(AfterWrites::default());
        // The store's version moves on at every read; each writer records the reads started
        // before it landed, and must get an answer of a read started after.
        let reads = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..64)
            .map(|_| {
                let (checks, reads) = (checks.clone(), reads.clone());
                tokio::spawn(async move {
                    let before = reads.load(Ordering::SeqCst);
                    let got = checks
                        .version_after(async {
                            let n = reads.fetch_add(1, Ordering::SeqCst) + 1;
                            tokio::task::yield_now().await;
                            Ok(n)
                        })
                        .await
                        .expect("the read answers");
                    assert!(got > before, "an answer of a read started before the write landed");
                })
            })
            .collect();
        for w in writers {
            w.await.expect("a writer panicked");
        }
        let n = reads.load(Ordering::SeqCst);
        // The first writer's read, and one for the 63 that landed during it.
        assert!((1..=2).contains(&n), "{n} reads for 64 writers");
        // Alone, a writer reads: the last read started before it landed.
        let before = reads.load(Ordering::SeqCst);
        let got = checks.version_after(async { Ok(reads.fetch_add(1, Ordering::SeqCst) + 1) });
        assert_eq!(got.await.expect("the read answers"), before + 1);
    }
}
